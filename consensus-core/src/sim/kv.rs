//! The simulated application: a key-value register per key with client sessions.
//!
//! Commands travel through the Raft log as bytes. Each carries the client's session id and a sequence
//! number; the state machine applies a given (client, sequence) at most once and answers a retried
//! duplicate with the cached output, so a client that retries after losing an answer does not apply
//! its write twice, and the history it records stays meaningful.

use std::collections::BTreeMap;

use bytes::Bytes;
use thiserror::Error;

use super::history::{Key, KvInput, KvOutput, Value};

/// A client command as stored in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The client's session.
    pub client: u64,
    /// The client's sequence number for this operation (a retry keeps it).
    pub sequence: u64,
    /// What to do.
    pub input: KvInput,
}

/// A command's bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("undecodable simulator command: {0}")]
pub struct DecodeError(&'static str);

const COMMAND_LEN: usize = 8 + 8 + 1 + 8 + 1 + 8 + 8;

impl Command {
    /// Encodes the command (fixed size, little endian).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(COMMAND_LEN);
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        let (tag, key, has_expected, expected, value) = match self.input {
            KvInput::Get { key } => (0u8, key, 0u8, 0, 0),
            KvInput::Put { key, value } => (1, key, 0, 0, value),
            KvInput::CompareAndSet { key, expected, new } => (
                2,
                key,
                u8::from(expected.is_some()),
                expected.unwrap_or(0),
                new,
            ),
            KvInput::Delete { key } => (3, key, 0, 0, 0),
        };
        out.push(tag);
        out.extend_from_slice(&key.to_le_bytes());
        out.push(has_expected);
        out.extend_from_slice(&expected.to_le_bytes());
        out.extend_from_slice(&value.to_le_bytes());
        Bytes::from(out)
    }

    /// Decodes a command encoded by [`Command::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() != COMMAND_LEN {
            return Err(DecodeError("wrong length"));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (client, sequence, tag, key) = (word(0), word(8), bytes[16], word(17));
        let (has_expected, expected, value) = (bytes[25], word(26), word(34));
        let input = match tag {
            0 => KvInput::Get { key },
            1 => KvInput::Put { key, value },
            2 => KvInput::CompareAndSet {
                key,
                expected: match has_expected {
                    0 => None,
                    1 => Some(expected),
                    _ => return Err(DecodeError("bad expected flag")),
                },
                new: value,
            },
            3 => KvInput::Delete { key },
            _ => return Err(DecodeError("unknown operation tag")),
        };
        Ok(Command {
            client,
            sequence,
            input,
        })
    }
}

/// The replicated state machine: a map plus, per client session, the last applied sequence number
/// and its output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    data: BTreeMap<Key, Value>,
    sessions: BTreeMap<u64, (u64, KvOutput)>,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a command; a duplicate of the session's last command returns the cached output, an
    /// older one has no effect and returns `None`.
    pub fn apply(&mut self, command: &Command) -> Option<KvOutput> {
        if let Some(&(last, output)) = self.sessions.get(&command.client) {
            if command.sequence == last {
                return Some(output);
            }
            if command.sequence < last {
                return None;
            }
        }
        let output = self.execute(&command.input);
        self.sessions
            .insert(command.client, (command.sequence, output));
        Some(output)
    }

    /// Runs an input against the map, without sessions.
    fn execute(&mut self, input: &KvInput) -> KvOutput {
        match *input {
            KvInput::Get { key } => KvOutput::Get(self.data.get(&key).copied()),
            KvInput::Put { key, value } => {
                self.data.insert(key, value);
                KvOutput::Put
            }
            KvInput::CompareAndSet { key, expected, new } => {
                if self.data.get(&key).copied() == expected {
                    self.data.insert(key, new);
                    KvOutput::CompareAndSet(true)
                } else {
                    KvOutput::CompareAndSet(false)
                }
            }
            KvInput::Delete { key } => {
                self.data.remove(&key);
                KvOutput::Delete
            }
        }
    }

    /// Reads a key (for reads served outside the log).
    pub fn get(&self, key: Key) -> Option<Value> {
        self.data.get(&key).copied()
    }

    /// A digest of the whole state, equal on two replicas exactly when their states are equal
    /// (up to hash collisions): what state-machine safety compares.
    pub fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |x: u64| {
            h ^= x;
            h = h.wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
        };
        for (k, v) in &self.data {
            mix(*k);
            mix(*v);
        }
        mix(u64::MAX);
        for (client, (seq, _)) in &self.sessions {
            mix(*client);
            mix(*seq);
        }
        h
    }

    /// Serializes the state for a snapshot.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        for (k, v) in &self.data {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(self.sessions.len() as u64).to_le_bytes());
        for (client, (seq, output)) in &self.sessions {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            let (tag, value) = match *output {
                KvOutput::Get(None) => (0u8, 0),
                KvOutput::Get(Some(v)) => (1, v),
                KvOutput::Put => (2, 0),
                KvOutput::CompareAndSet(false) => (3, 0),
                KvOutput::CompareAndSet(true) => (4, 0),
                KvOutput::Delete => (5, 0),
            };
            out.push(tag);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Restores a state serialized by [`KvStore::to_bytes`]; empty bytes give an empty store.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut store = KvStore::new();
        if bytes.is_empty() {
            return Ok(store);
        }
        let mut reader = Reader { bytes, at: 0 };
        for _ in 0..reader.word()? {
            let (k, v) = (reader.word()?, reader.word()?);
            store.data.insert(k, v);
        }
        for _ in 0..reader.word()? {
            let (client, seq) = (reader.word()?, reader.word()?);
            let (tag, value) = (reader.byte()?, reader.word()?);
            let output = match tag {
                0 => KvOutput::Get(None),
                1 => KvOutput::Get(Some(value)),
                2 => KvOutput::Put,
                3 => KvOutput::CompareAndSet(false),
                4 => KvOutput::CompareAndSet(true),
                5 => KvOutput::Delete,
                _ => return Err(DecodeError("bad output tag in snapshot")),
            };
            store.sessions.insert(client, (seq, output));
        }
        if reader.at != bytes.len() {
            return Err(DecodeError("trailing bytes in snapshot"));
        }
        Ok(store)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(DecodeError("truncated snapshot"))?;
        self.at += 1;
        Ok(b)
    }

    fn word(&mut self) -> Result<u64, DecodeError> {
        let chunk = self
            .bytes
            .get(self.at..self.at + 8)
            .ok_or(DecodeError("truncated snapshot"))?;
        self.at += 8;
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        let inputs = [
            KvInput::Get { key: 3 },
            KvInput::Put { key: 1, value: 9 },
            KvInput::CompareAndSet {
                key: 2,
                expected: None,
                new: 4,
            },
            KvInput::CompareAndSet {
                key: 2,
                expected: Some(0),
                new: 4,
            },
            KvInput::Delete { key: 5 },
        ];
        for (i, input) in inputs.into_iter().enumerate() {
            let c = Command {
                client: 7,
                sequence: i as u64,
                input,
            };
            assert_eq!(Command::decode(&c.encode()), Ok(c));
        }
        assert!(Command::decode(b"short").is_err());
        let mut bad = inputs_bytes();
        bad[16] = 9;
        assert!(Command::decode(&bad).is_err());
    }

    fn inputs_bytes() -> Vec<u8> {
        Command {
            client: 1,
            sequence: 1,
            input: KvInput::Get { key: 0 },
        }
        .encode()
        .to_vec()
    }

    #[test]
    fn a_retried_command_applies_once() {
        let mut kv = KvStore::new();
        let cas = Command {
            client: 1,
            sequence: 1,
            input: KvInput::CompareAndSet {
                key: 0,
                expected: None,
                new: 1,
            },
        };
        assert_eq!(kv.apply(&cas), Some(KvOutput::CompareAndSet(true)));
        // The retry sees the first answer, not a failed swap.
        assert_eq!(kv.apply(&cas), Some(KvOutput::CompareAndSet(true)));
        let older = Command { sequence: 0, ..cas };
        assert_eq!(kv.apply(&older), None);
        assert_eq!(kv.get(0), Some(1));
    }

    #[test]
    fn a_snapshot_restores_data_and_sessions() {
        let mut kv = KvStore::new();
        for (seq, input) in [
            KvInput::Put { key: 1, value: 5 },
            KvInput::Get { key: 1 },
            KvInput::CompareAndSet {
                key: 2,
                expected: None,
                new: 3,
            },
        ]
        .into_iter()
        .enumerate()
        {
            kv.apply(&Command {
                client: seq as u64 % 2,
                sequence: seq as u64,
                input,
            });
        }
        let restored = KvStore::from_bytes(&kv.to_bytes()).unwrap();
        assert_eq!(restored, kv);
        assert_eq!(restored.digest(), kv.digest());
        assert!(KvStore::from_bytes(&kv.to_bytes()[..5]).is_err());
        assert_eq!(KvStore::from_bytes(&[]).unwrap(), KvStore::new());
    }
}
