//! The shard layout recorded in a sharded node's data directory (`shards.json`): the split keys it
//! was bootstrapped with. Beside it, the node's shared log (`shared-wal/`) holds every group's records and `groups/<g>/` each group's snapshot. A restart whose `[shards]`
//! differs, an unsharded config on a sharded directory and a sharded config on an unsharded one
//! are refused, so a node never serves keys under a layout its data was not written for.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The layout file in the data directory.
pub(crate) const LAYOUT_FILE: &str = "shards.json";
/// The directory holding one directory per group.
pub(crate) const GROUPS_DIR: &str = "groups";

const VERSION: u32 = 1;

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

fn read(data_dir: &Path) -> Result<Option<Vec<Bytes>>, LayoutError> {
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
    if file.version != VERSION {
        return Err(unreadable(format!(
            "unknown layout version {}",
            file.version
        )));
    }
    file.split_keys_hex
        .iter()
        .map(|k| unhex(k).ok_or_else(|| unreadable(format!("split key {k:?} is not hex"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Refuses an unsharded start on a sharded data directory.
pub(crate) fn check_unsharded(data_dir: &Path) -> Result<(), LayoutError> {
    match read(data_dir)? {
        Some(split) => Err(LayoutError::Sharded {
            dir: data_dir.to_path_buf(),
            shards: split.len() + 1,
        }),
        None => Ok(()),
    }
}

/// Checks (or, on a fresh directory, records durably) that the data directory is laid out for
/// `split`.
pub(crate) fn check_or_record(data_dir: &Path, split: &[Bytes]) -> Result<(), LayoutError> {
    if let Some(recorded) = read(data_dir)? {
        if recorded != split {
            return Err(LayoutError::Changed {
                dir: data_dir.to_path_buf(),
                recorded: recorded.len() + 1,
                recorded_keys: keys_text(&recorded),
                configured: split.len() + 1,
                configured_keys: keys_text(split),
            });
        }
        return Ok(());
    }
    for unsharded in [crate::store::WAL_DIR, "snapshot", "peer-wal", "manager"] {
        if data_dir.join(unsharded).exists() {
            return Err(LayoutError::Unsharded {
                dir: data_dir.to_path_buf(),
            });
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
    let file = LayoutFile {
        version: VERSION,
        split_keys_hex: split.iter().map(|k| hex(k)).collect(),
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
    fn hex_round_trips_and_bad_hex_is_none() {
        assert_eq!(
            unhex(&hex(b"\x00a\xff")).unwrap(),
            Bytes::from_static(b"\x00a\xff")
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
