//! `[shards]`: key-range shards, each its own replication group on every member.
//!
//! ```toml
//! [shards]                         # absent: one group holds every key (the default)
//! split_keys = ["g", "n"]          # shards [.., "g"), ["g", "n"), ["n", ..) — groups 1, 2, 3
//! # or: count = 4                  # the first key byte divided evenly (at most 256 shards)
//! quiesce = true                   # idle groups stop ticking and heartbeating (default)
//! ```
//!
//! Every group's records go to the node's one shared log (`crate::store::SharedLog`).
//!
//! Group 0 is then the meta group: it holds the shard map and no keys. Every member must be
//! configured the same. The layout is recorded in the data directory when it is created; a
//! restart with another layout is refused. `quorate serve --shards N` is `count = N`.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::proto::ShardMap;

/// The `[shards]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShardsConfig {
    /// The keys where a shard starts (strictly increasing, non-empty, UTF-8 in TOML).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split_keys: Vec<String>,
    /// Shards dividing the first key byte evenly (instead of `split_keys`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Idle groups stop ticking and heartbeating (default true; never with lease reads).
    #[serde(default = "yes")]
    pub quiesce: bool,
}

fn yes() -> bool {
    true
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            split_keys: Vec::new(),
            count: None,
            quiesce: true,
        }
    }
}

impl ShardsConfig {
    /// `count` even shards.
    pub fn count(count: usize) -> Self {
        ShardsConfig {
            count: Some(count),
            ..ShardsConfig::default()
        }
    }

    /// Shards starting at `split_keys`.
    pub fn split(split_keys: Vec<String>) -> Self {
        ShardsConfig {
            split_keys,
            ..ShardsConfig::default()
        }
    }

    /// Checks the section alone.
    pub fn validate(&self) -> Result<(), String> {
        self.map().map(|_| ())
    }

    /// The split keys the section names.
    pub fn split_keys(&self) -> Result<Vec<Bytes>, String> {
        match (self.count, self.split_keys.is_empty()) {
            (Some(_), false) => Err("[shards] takes `split_keys` or `count`, not both".to_string()),
            (Some(count), true) => {
                ShardMap::even_split_keys(count).map_err(|e| format!("[shards] count: {e}"))
            }
            (None, _) => Ok(self
                .split_keys
                .iter()
                .map(|k| Bytes::from(k.clone().into_bytes()))
                .collect()),
        }
    }

    /// The bootstrap shard map.
    pub fn map(&self) -> Result<ShardMap, String> {
        let split = self.split_keys()?;
        ShardMap::from_split_keys(&split).map_err(|e| format!("[shards]: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keys_or_count_but_not_both() {
        let both = ShardsConfig {
            count: Some(2),
            ..ShardsConfig::split(vec!["g".into()])
        };
        assert!(both.validate().unwrap_err().contains("not both"));
        assert_eq!(ShardsConfig::count(4).map().unwrap().shards.len(), 4);
        let split = ShardsConfig::split(vec!["n".into(), "g".into()]);
        assert!(split.validate().unwrap_err().contains("increasing"));
        assert!(ShardsConfig::count(0).validate().is_err());
    }
}
