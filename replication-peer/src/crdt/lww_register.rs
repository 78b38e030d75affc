//! Last-writer-wins register by hybrid logical clock: the assignment with the largest
//! timestamp wins (ties, impossible between distinct nodes' clocks, fall to the value bytes).

use serde::{Deserialize, Serialize};

use super::Lattice;
use crate::hlc::Timestamp;

/// An LWW register. Concurrent assignments other than the winner are dropped, by design.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LwwRegister {
    current: Option<(Timestamp, Vec<u8>)>,
}

impl LwwRegister {
    /// Assigns `value` at `at`; ignored if a later assignment is already known.
    pub fn assign(&mut self, value: Vec<u8>, at: Timestamp) {
        self.merge(&LwwRegister {
            current: Some((at, value)),
        });
    }

    /// The winning value.
    pub fn value(&self) -> Option<&[u8]> {
        self.current.as_ref().map(|(_, v)| v.as_slice())
    }

    /// The winning timestamp.
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.current.as_ref().map(|(t, _)| *t)
    }
}

impl Lattice for LwwRegister {
    fn merge(&mut self, other: &Self) {
        if let Some(theirs) = &other.current {
            let replace = match &self.current {
                None => true,
                Some(mine) => (theirs.0, &theirs.1) > (mine.0, &mine.1),
            };
            if replace {
                self.current = Some(theirs.clone());
            }
        }
    }
}
