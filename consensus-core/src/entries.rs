//! [`Entries`]: a list of log entries held once and shared by every holder.
//!
//! A proposal batch is needed in several places at once — the leader's log, the message to each
//! follower, the storage that keeps it — and none of them changes it. Copying it for each (a
//! clone of every entry, one refcount increment and decrement per entry per copy, and the
//! entries' bytes written again) was most of the cost of replicating small entries in process.
//! `Entries` is one reference-counted vector plus the range of it this holder sees: a clone,
//! or a sub-range ([`Entries::slice`]), costs one refcount operation per batch, not per entry.
//!
//! It is plain data otherwise: it derefs to `[Entry]`, compares and prints as that slice, and
//! serialises exactly as a `Vec<Entry>` would (a message carrying it is a real message: over
//! the wire each receiver decodes its own copy; only holders in one process share the memory).

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::Entry;

/// Log entries, held once and shared (see the module docs). Empty holds no allocation.
#[derive(Clone, Default)]
pub struct Entries {
    /// The shared vector (`None` when empty).
    shared: Option<Arc<Vec<Entry>>>,
    /// The part of it this holder sees (`start..end`); `None`: all of it.
    part: Option<(usize, usize)>,
}

impl Entries {
    /// No entries (no allocation).
    pub fn new() -> Self {
        Entries::default()
    }

    /// The entries at positions `range` of this list, sharing its memory.
    ///
    /// # Panics
    /// If `range` is not within `0 ..= len()` (a programming error, as slicing a slice).
    pub fn slice(&self, range: Range<usize>) -> Entries {
        assert!(
            range.start <= range.end && range.end <= self.len(),
            "Entries::slice {range:?} of {} entries",
            self.len()
        );
        if range.is_empty() {
            return Entries::new();
        }
        let (start, _) = self.bounds();
        Entries {
            shared: self.shared.clone(),
            part: Some((start + range.start, start + range.end)),
        }
    }

    /// Where this holder's entries lie in the shared vector.
    fn bounds(&self) -> (usize, usize) {
        match (self.part, &self.shared) {
            (Some(part), _) => part,
            (None, Some(shared)) => (0, shared.len()),
            (None, None) => (0, 0),
        }
    }

    /// The entries as a vector to change, as `Arc::make_mut`: in place when this is the only
    /// holder of the whole vector, else on a copy of this holder's entries (for a list being
    /// staged before anyone shares it).
    pub fn make_mut(&mut self) -> &mut Vec<Entry> {
        if self.part.is_some() {
            let (start, end) = self.bounds();
            let own = self
                .shared
                .as_ref()
                .map_or_else(Vec::new, |shared| shared[start..end].to_vec());
            self.shared = Some(Arc::new(own));
            self.part = None;
        }
        Arc::make_mut(self.shared.get_or_insert_with(Default::default))
    }

    /// The vector to change in place, as `Arc::get_mut`: only when this is the only holder of
    /// the whole vector (`None` otherwise: someone else may see it).
    pub fn get_mut(&mut self) -> Option<&mut Vec<Entry>> {
        if self.part.is_some() {
            return None;
        }
        Arc::get_mut(self.shared.as_mut()?)
    }

    /// The entries as an owned vector: moved out when this is the only holder of the whole
    /// vector, copied otherwise.
    pub fn into_vec(self) -> Vec<Entry> {
        let (start, end) = self.bounds();
        let Some(shared) = self.shared else {
            return Vec::new();
        };
        if self.part.is_none() {
            return Arc::try_unwrap(shared).unwrap_or_else(|shared| shared.as_ref().clone());
        }
        shared[start..end].to_vec()
    }

    /// Whether `self` and `other` share one allocation (for tests of sharing).
    pub fn shares_memory_with(&self, other: &Entries) -> bool {
        match (&self.shared, &other.shared) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Deref for Entries {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        let (start, end) = self.bounds();
        match &self.shared {
            Some(shared) => &shared[start..end],
            None => &[],
        }
    }
}

impl From<Vec<Entry>> for Entries {
    fn from(entries: Vec<Entry>) -> Self {
        if entries.is_empty() {
            return Entries::new();
        }
        Entries {
            shared: Some(Arc::new(entries)),
            part: None,
        }
    }
}

impl FromIterator<Entry> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Self {
        Entries::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = &'a Entry;
    type IntoIter = std::slice::Iter<'a, Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl IntoIterator for Entries {
    type Item = Entry;
    type IntoIter = std::vec::IntoIter<Entry>;

    fn into_iter(self) -> Self::IntoIter {
        self.into_vec().into_iter()
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Entries) -> bool {
        **self == **other
    }
}

impl Eq for Entries {}

impl PartialEq<Vec<Entry>> for Entries {
    fn eq(&self, other: &Vec<Entry>) -> bool {
        **self == other[..]
    }
}

impl fmt::Debug for Entries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Entries {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Exactly as a `Vec<Entry>` (a sequence), so the wire format does not depend on sharing.
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<Entry>::deserialize(deserializer).map(Entries::from)
    }
}

#[cfg(test)]
mod tests {
    use super::Entries;
    use crate::types::{Entry, EntryPayload};

    fn entries(n: u64) -> Vec<Entry> {
        (1..=n)
            .map(|index| Entry {
                term: 1,
                index,
                payload: EntryPayload::Noop,
            })
            .collect()
    }

    #[test]
    fn clones_and_slices_share_one_allocation_and_see_their_own_range() {
        let all = Entries::from(entries(5));
        let middle = all.slice(1..4);
        assert!(middle.shares_memory_with(&all) && all.clone().shares_memory_with(&all));
        assert_eq!(
            middle.iter().map(|e| e.index).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert_eq!(middle.slice(1..2)[0].index, 3, "a slice of a slice");
        assert!(all.slice(2..2).is_empty());
        assert_eq!(middle.into_vec(), entries(4)[1..].to_vec());
        assert_eq!(all.into_vec(), entries(5), "the last holder moves it out");
    }

    #[test]
    fn make_mut_never_changes_what_another_holder_sees() {
        let mut staged = Entries::new();
        staged.make_mut().extend(entries(3));
        let shared = staged.clone();
        staged.make_mut().push(entries(4)[3].clone());
        assert_eq!(shared.len(), 3, "the other holder keeps its list");
        assert_eq!(staged.len(), 4);
        let mut part = staged.slice(1..3);
        assert!(part.get_mut().is_none(), "a part is never changed in place");
        part.make_mut().clear();
        assert!(part.is_empty() && staged.len() == 4);
        let again = staged.clone();
        assert!(staged.get_mut().is_none(), "shared with `again`");
        drop(again);
        assert!(staged.get_mut().is_some(), "the only holder again");
    }

    #[test]
    fn it_serialises_exactly_as_a_vector_of_entries() {
        let all = Entries::from(entries(4));
        let bytes = postcard::to_allocvec(&all.slice(1..3)).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&entries(3)[1..]).unwrap());
        let back: Entries = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, entries(3)[1..].to_vec());
        let empty: Entries =
            postcard::from_bytes(&postcard::to_allocvec(&Vec::<Entry>::new()).unwrap()).unwrap();
        assert!(empty.is_empty());
    }
}
