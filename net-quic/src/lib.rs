//! # net-quic
//!
//! An authenticated QUIC transport (quinn + rustls with the `ring` provider, mutual TLS against a
//! cluster CA) that moves typed, length-prefixed postcard frames between node ids, and carries client
//! requests on its own ALPN.
//!
//! It knows nothing of consensus and depends on no other Quorate crate.
