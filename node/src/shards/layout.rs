//! The shard layout recorded in a sharded node's data directory (`shards.json`): the split keys it
//! was bootstrapped with and (version 2) every split this node has applied and started the new
//! group of, so a restarted node opens those groups too (version 1 files still read). Beside it, the node's shared log (`shared-wal/`) holds every group's records and `groups/<g>/` each group's snapshot. A restart whose `[shards]`
//! differs, an unsharded config on a sharded directory and a sharded config on an unsharded one
//! are refused, so a node never serves keys under a layout its data was not written for.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::proto::SplitPlan;

/// The layout file in the data directory.
pub(crate) const LAYOUT_FILE: &str = "shards.json";
/// The directory holding one directory per group.
pub(crate) const GROUPS_DIR: &str = "groups";

const VERSION: u32 = 2;

/// Why the data directory's layout cannot be used with this configuration.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The directory was bootstrapped with other shards.
    #[error("{dir} was created with {recorded} shard(s) (split keys {recorded_keys}); the configuration asks for {configured} (split keys {configured_keys}); shards are fixed at bootstrap: use the recorded [shards] or a fresh data directory")]
    Changed {
        /// The data directory.
        dir: PathBuf,
        /// Shards recorded.
        recorded: usize,
        /// Their split keys (hex).
        recorded_keys: String,
        /// Shards configured.
        configured: usize,
        /// Their split keys (hex).
        configured_keys: String,
    },
    /// A sharded directory started without `[shards]`.
    #[error("{dir} holds a sharded node ({shards} shards); start it with the same [shards] (or --shards) it was created with")]
    Sharded {
        /// The data directory.
        dir: PathBuf,
        /// Shards recorded.
        shards: usize,
    },
    /// An unsharded directory started with `[shards]`.
    #[error(
        "{dir} holds an unsharded node's data; [shards] can only bootstrap a fresh data directory"
    )]
    Unsharded {
        /// The data directory.
        dir: PathBuf,
    },
    /// The layout file is unreadable.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct LayoutFile {
    version: u32,
    /// Split keys, hex-encoded (keys are bytes).
    split_keys_hex: Vec<String>,
    /// Splits applied here whose new group is created (version 2), in the order applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    splits: Vec<SplitPlan>,
}

/// What the data directory records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The bootstrap split keys.
    pub(crate) split_keys: Vec<Bytes>,
    /// Splits applied on this node, their new groups created, in the order applied.
    pub(crate) splits: Vec<SplitPlan>,
}

fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Bytes> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}

fn keys_text(keys: &[Bytes]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| hex(k)).collect();
    format!("[{}]", keys.join(", "))
}

/// The directory of `group`'s store in a sharded data directory.
pub(crate) fn group_dir(data_dir: &Path, group: u64) -> PathBuf {
    data_dir.join(GROUPS_DIR).join(group.to_string())
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn read(data_dir: &Path) -> Result<Option<Layout>, LayoutError> {
    let path = data_dir.join(LAYOUT_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", &path)(e)),
    };
    let unreadable = |reason: String| LayoutError::Unreadable {
        path: path.clone(),
        reason,
    };
    let file: LayoutFile =
        serde_json::from_str(&text).map_err(|e| unreadable(format!("does not parse: {e}")))?;
    if file.version != 1 && file.version != VERSION {
        return Err(unreadable(format!(
            "unknown layout version {}",
            file.version
        )));
    }
    let split_keys = file
        .split_keys_hex
        .iter()
        .map(|k| unhex(k).ok_or_else(|| unreadable(format!("split key {k:?} is not hex"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Layout {
        split_keys,
        splits: file.splits,
    }))
}

/// Writes `layout` durably (a temporary file renamed over the old one, the directory synced).
fn write(data_dir: &Path, layout: &Layout) -> Result<(), LayoutError> {
    let file = LayoutFile {
        version: VERSION,
        split_keys_hex: layout.split_keys.iter().map(|k| hex(k)).collect(),
        splits: layout.splits.clone(),
    };
    let text = serde_json::to_string_pretty(&file).expect("a layout encodes");
    let tmp = data_dir.join(format!("{LAYOUT_FILE}.tmp"));
    let path = data_dir.join(LAYOUT_FILE);
    let mut out = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io("syncing", data_dir))?;
    Ok(())
}

/// Records durably that `plan` is applied here and its new group created (once).
pub(crate) fn record_split(data_dir: &Path, plan: &SplitPlan) -> Result<(), LayoutError> {
    let mut layout = read(data_dir)?.ok_or_else(|| LayoutError::Unreadable {
        path: data_dir.join(LAYOUT_FILE),
        reason: "missing: a split needs the layout recorded at bootstrap".into(),
    })?;
    if layout.splits.iter().any(|p| p.new_group == plan.new_group) {
        return Ok(());
    }
    layout.splits.push(plan.clone());
    write(data_dir, &layout)
}

/// Refuses an unsharded start on a sharded data directory.
pub(crate) fn check_unsharded(data_dir: &Path) -> Result<(), LayoutError> {
    match read(data_dir)? {
        Some(layout) => Err(LayoutError::Sharded {
            dir: data_dir.to_path_buf(),
            shards: layout.split_keys.len() + 1 + layout.splits.len(),
        }),
        None => Ok(()),
    }
}

/// Checks (or, on a fresh directory, records durably) that the data directory was bootstrapped
/// with `split`; returns what it records.
pub(crate) fn check_or_record(data_dir: &Path, split: &[Bytes]) -> Result<Layout, LayoutError> {
    if let Some(layout) = read(data_dir)? {
        let recorded = &layout.split_keys;
        if recorded != split {
            return Err(LayoutError::Changed {
                dir: data_dir.to_path_buf(),
                recorded: recorded.len() + 1,
                recorded_keys: keys_text(recorded),
                configured: split.len() + 1,
                configured_keys: keys_text(split),
            });
        }
        return Ok(layout);
    }
    for unsharded in [crate::store::WAL_DIR, "snapshot", "peer-wal", "manager"] {
        if data_dir.join(unsharded).exists() {
            return Err(LayoutError::Unsharded {
                dir: data_dir.to_path_buf(),
            });
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
    let layout = Layout {
        split_keys: split.to_vec(),
        splits: Vec::new(),
    };
    write(data_dir, &layout)?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layout_is_recorded_once_and_a_different_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let split = vec![Bytes::from_static(b"g"), Bytes::from_static(&[0xc0])];
        check_or_record(dir.path(), &split).unwrap();
        check_or_record(dir.path(), &split).unwrap();
        let other = vec![Bytes::from_static(b"g")];
        let error = check_or_record(dir.path(), &other).unwrap_err();
        assert!(
            matches!(
                error,
                LayoutError::Changed {
                    recorded: 3,
                    configured: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert!(matches!(
            check_unsharded(dir.path()),
            Err(LayoutError::Sharded { shards: 3, .. })
        ));
    }

    #[test]
    fn an_unsharded_directory_is_not_taken_over_by_shards() {
        let dir = tempfile::tempdir().unwrap();
        check_unsharded(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join(crate::store::WAL_DIR)).unwrap();
        assert!(matches!(
            check_or_record(dir.path(), &[Bytes::from_static(b"g")]),
            Err(LayoutError::Unsharded { .. })
        ));
    }

    #[test]
    fn applied_splits_are_recorded_once_and_a_version_1_file_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{ "version": 1, "split_keys_hex": ["67"] }"#;
        std::fs::write(dir.path().join(LAYOUT_FILE), v1).unwrap();
        let split = vec![Bytes::from_static(b"g")];
        assert_eq!(check_or_record(dir.path(), &split).unwrap().splits, vec![]);
        let map = crate::proto::ShardMap::from_split_keys(&split).unwrap();
        let plan = map.plan_split(b"m").unwrap();
        record_split(dir.path(), &plan).unwrap();
        record_split(dir.path(), &plan).unwrap();
        let layout = check_or_record(dir.path(), &split).unwrap();
        assert_eq!(layout.splits, vec![plan]);
        assert!(matches!(
            check_unsharded(dir.path()),
            Err(LayoutError::Sharded { shards: 3, .. })
        ));
    }

    #[test]
    fn hex_round_trips_and_bad_hex_is_none() {
        assert_eq!(
            unhex(&hex(b"\x00a\xff")).unwrap(),
            Bytes::from_static(b"\x00a\xff")
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
