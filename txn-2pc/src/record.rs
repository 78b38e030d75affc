//! Encoding of durable records: one version byte, then postcard.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{RecordError, RecoveryError};

/// The record format version this build writes and reads.
pub const RECORD_VERSION: u8 = 1;

/// A record an engine asks to be made durable; the embedder stores its bytes.
pub trait DurableRecord: Serialize + DeserializeOwned + Sized {
    /// The bytes to store.
    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![RECORD_VERSION];
        // Serialising plain enums of integers and vectors into a Vec cannot fail.
        bytes.extend(postcard::to_allocvec(self).unwrap_or_default());
        bytes
    }

    /// Parses stored bytes; anything else than a whole record of this build is an error.
    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let (record, rest) =
            postcard::take_from_bytes(body).map_err(|e| RecordError::Body(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RecordError::Body(format!("{} trailing bytes", rest.len())));
        }
        Ok(record)
    }
}

/// Decodes every stored record, naming the first one that does not parse.
pub fn decode_all<R: DurableRecord, B: AsRef<[u8]>>(
    stored: impl IntoIterator<Item = B>,
) -> Result<Vec<R>, RecoveryError> {
    stored
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| {
            R::decode(bytes.as_ref()).map_err(|source| RecoveryError::Unparsable { index, source })
        })
        .collect()
}
