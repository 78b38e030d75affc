//! `quorate cluster shards`: the shard map as one member knows it — each range, its group, the
//! group's leader and its keys there. `quorate cluster split KEY`: an online split.

use serde_json::json;

use super::output::text;
use super::{CliError, Outcome};
use crate::client::Client;

/// Prints the shard map (fetched fresh from any member).
pub(super) async fn shards(client: &Client, json: bool) -> Result<Outcome, CliError> {
    let map = client.refresh_shard_map().await?;
    let end_text = |end: &Option<bytes::Bytes>| end.as_ref().map(|e| text(e));
    if json {
        let shards: Vec<_> = map
            .shards
            .iter()
            .map(|s| {
                json!({
                    "group": s.group,
                    "start": text(&s.range.start),
                    "end": end_text(&s.range.end),
                    "epoch": s.epoch,
                    "leader": s.leader,
                    "keys": s.keys,
                    "quiet": s.quiet,
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "epoch": map.epoch, "sharded": map.is_sharded(), "shards": shards })
        );
    } else {
        println!(
            "{:<6} {:<16} {:<16} {:<6} {:<7} {:<8} STATE",
            "GROUP", "START", "END", "EPOCH", "LEADER", "KEYS"
        );
        for s in &map.shards {
            println!(
                "{:<6} {:<16} {:<16} {:<6} {:<7} {:<8} {}",
                s.group,
                if s.range.start.is_empty() {
                    "-".to_string()
                } else {
                    text(&s.range.start)
                },
                end_text(&s.range.end).unwrap_or_else(|| "-".into()),
                s.epoch,
                s.leader.map_or("?".to_string(), |l| l.to_string()),
                s.keys,
                if s.quiet { "quiet" } else { "active" }
            );
        }
    }
    Ok(Outcome::Success)
}

/// Splits the range holding `key` at `key` and prints the plan that ran.
pub(super) async fn split(client: &Client, key: String, json: bool) -> Result<Outcome, CliError> {
    let plan = client.split(bytes::Bytes::from(key)).await?;
    let end = plan.end.as_ref().map(|e| text(e));
    if json {
        println!(
            "{}",
            json!({
                "key": text(&plan.key),
                "source": plan.source,
                "group": plan.new_group,
                "end": end,
                "epoch": plan.epoch,
                "map_epoch": plan.map_epoch,
            })
        );
    } else {
        println!(
            "split group {} at {}: group {} serves [{}, {}) at epoch {} (map epoch {})",
            plan.source,
            text(&plan.key),
            plan.new_group,
            text(&plan.key),
            end.unwrap_or_else(|| "-".into()),
            plan.epoch,
            plan.map_epoch
        );
    }
    Ok(Outcome::Success)
}
