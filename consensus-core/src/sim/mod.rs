//! Deterministic fault simulator (being written).
