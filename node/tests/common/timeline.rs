//! Where a failover's time goes: events read from the nodes' logs and a CLI's debug log, placed
//! on one wall-clock axis relative to the moment the leader was killed.
//!
//! Both `quorate serve` and the CLI (with `QUORATE_LOG` set) log through `tracing`'s default
//! formatter, whose lines start with an RFC 3339 UTC timestamp (microseconds); a line coloured
//! for a terminal carries ANSI escapes first, which are skipped.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch of `time`.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The line without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Days from 1970-01-01 to the civil date `y-m-d` (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The Unix time of a line's leading `YYYY-MM-DDTHH:MM:SS.ffffffZ`, and the rest of the line.
pub fn parse_line(line: &str) -> Option<(f64, String)> {
    let line = strip_ansi(line);
    let stamp = line.split_whitespace().next()?;
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (date.next()??, date.next()??, date.next()??);
    let mut time = time.split(':');
    let h: i64 = time.next()?.parse().ok()?;
    let min: i64 = time.next()?.parse().ok()?;
    let sec: f64 = time.next()?.parse().ok()?;
    let seconds = (days_from_civil(y, m, d) * 86_400 + h * 3_600 + min * 60) as f64 + sec;
    let rest = line[line.find(stamp)? + stamp.len() + 1..]
        .trim()
        .to_string();
    Some((seconds, rest))
}

/// One logged event, `at_ms` after the reference time (negative: before it).
#[derive(Debug, Clone)]
pub struct Event {
    pub at_ms: f64,
    pub source: String,
    pub text: String,
}

/// The events of `log` (from `source`) at or after `since` (Unix seconds) whose text contains
/// one of `needles`.
pub fn events(log: &str, source: &str, since: f64, needles: &[&str]) -> Vec<Event> {
    log.lines()
        .filter_map(parse_line)
        .filter(|(at, text)| *at >= since && needles.iter().any(|n| text.contains(n)))
        .map(|(at, text)| Event {
            at_ms: (at - since) * 1e3,
            source: source.to_string(),
            text,
        })
        .collect()
}

/// The first timestamped line of `log` at or after `since`, in ms after it.
pub fn first_line_ms(log: &str, since: f64) -> Option<f64> {
    log.lines()
        .filter_map(parse_line)
        .map(|(at, _)| (at - since) * 1e3)
        .find(|&ms| ms >= 0.0)
}
