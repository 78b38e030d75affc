//! `quorate kv txn`: a transaction written as JSON (inline or in a file), run as one atomic write,
//! printed as the branch that ran and what each of its ops did.
//!
//! ```json
//! {"compare": [{"key": "a", "version": 0}, {"key": "b", "value": "x", "op": "!="}],
//!  "success": [{"put": {"key": "a", "value": "1"}}, {"get": "b"}, {"delete": "c"}],
//!  "failure": [{"get": "a"}]}
//! ```
//! A compare names exactly one of `value`, `version`, `create_revision`, `mod_revision`, and
//! `op` one of `=` (default), `!=`, `<`, `>`; `version: 0` means "absent".

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use super::output::{kv_json, text};
use super::{CliError, Outcome};
use crate::client::Client;
use crate::proto::{Compare, CompareOp, CompareTarget, TxnOp, TxnOpResult};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnIn {
    #[serde(default)]
    compare: Vec<CompareIn>,
    #[serde(default)]
    success: Vec<OpIn>,
    #[serde(default)]
    failure: Vec<OpIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareIn {
    key: String,
    #[serde(default)]
    op: Option<String>,
    value: Option<String>,
    version: Option<u64>,
    create_revision: Option<u64>,
    mod_revision: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum OpIn {
    Put { key: String, value: String },
    Delete(String),
    Get(String),
}

fn usage(message: String) -> CliError {
    CliError::Usage(format!("kv txn: {message}"))
}

fn compare(c: CompareIn) -> Result<Compare, CliError> {
    let op = match c.op.as_deref().unwrap_or("=") {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        other => {
            return Err(usage(format!(
                "compare op {other:?} on key {:?}: expected =, !=, < or >",
                c.key
            )))
        }
    };
    let targets = [
        c.value.map(|v| CompareTarget::Value(Bytes::from(v))),
        c.version.map(CompareTarget::Version),
        c.create_revision.map(CompareTarget::CreateRevision),
        c.mod_revision.map(CompareTarget::ModRevision),
    ];
    let mut given = targets.into_iter().flatten();
    let (Some(target), None) = (given.next(), given.next()) else {
        return Err(usage(format!(
            "compare on key {:?} must name exactly one of value, version, create_revision, mod_revision",
            c.key
        )));
    };
    Ok(Compare {
        key: Bytes::from(c.key),
        target,
        op,
    })
}

fn op(o: OpIn) -> TxnOp {
    match o {
        OpIn::Put { key, value } => TxnOp::Put {
            key: key.into(),
            value: value.into(),
        },
        OpIn::Delete(key) => TxnOp::Delete { key: key.into() },
        OpIn::Get(key) => TxnOp::Get { key: key.into() },
    }
}

/// A parsed transaction: compares, success ops, failure ops.
type Txn = (Vec<Compare>, Vec<TxnOp>, Vec<TxnOp>);

/// Reads the transaction from its JSON text.
pub(super) fn parse(json_text: &str) -> Result<Txn, CliError> {
    let input: TxnIn =
        serde_json::from_str(json_text).map_err(|e| usage(format!("not a transaction: {e}")))?;
    let compares = input
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<_, _>>()?;
    Ok((
        compares,
        input.success.into_iter().map(op).collect(),
        input.failure.into_iter().map(op).collect(),
    ))
}

/// `kv txn JSON` / `kv txn --file FILE`.
pub(super) async fn run(
    client: &Client,
    inline: Option<String>,
    file: Option<std::path::PathBuf>,
    json: bool,
) -> Result<Outcome, CliError> {
    let source = match (inline, file) {
        (Some(text), None) => text,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| usage(format!("reading {}: {e}", path.display())))?,
        _ => {
            return Err(usage(
                "give the transaction as JSON text or with --file".into(),
            ))
        }
    };
    let (compares, success, failure) = parse(&source)?;
    let outcome = client
        .txn(compares, success.clone(), failure.clone())
        .await?;
    let ops = if outcome.succeeded { success } else { failure };
    if json {
        let results: Vec<_> = ops
            .iter()
            .zip(&outcome.results)
            .map(|(op, result)| {
                let key = text(op.key());
                match result {
                    TxnOpResult::Put => json!({ "op": "put", "key": key }),
                    TxnOpResult::Delete { deleted } => {
                        json!({ "op": "delete", "key": key, "deleted": deleted })
                    }
                    TxnOpResult::Get { kv } => {
                        json!({ "op": "get", "key": key, "kv": kv.as_ref().map(kv_json) })
                    }
                }
            })
            .collect();
        println!(
            "{}",
            json!({
                "succeeded": outcome.succeeded,
                "revision": outcome.revision,
                "results": results,
            })
        );
    } else {
        println!(
            "{} (revision {})",
            if outcome.succeeded {
                "SUCCESS"
            } else {
                "FAILURE"
            },
            outcome.revision
        );
        for (op, result) in ops.iter().zip(&outcome.results) {
            let key = text(op.key());
            match result {
                TxnOpResult::Put => println!("put {key:?}: OK"),
                TxnOpResult::Delete { deleted: true } => println!("delete {key:?}: deleted"),
                TxnOpResult::Delete { deleted: false } => println!("delete {key:?}: not found"),
                TxnOpResult::Get { kv: Some(kv) } => println!("get {key:?}: {}", text(&kv.value)),
                TxnOpResult::Get { kv: None } => println!("get {key:?}: <absent>"),
            }
        }
    }
    Ok(if outcome.succeeded {
        Outcome::Success
    } else {
        Outcome::ConditionFailed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_parses_from_json_and_malformed_ones_are_usage_errors() {
        let (compares, success, failure) = parse(
            r#"{"compare": [{"key": "a", "version": 0}, {"key": "b", "value": "x", "op": "!="}],
                "success": [{"put": {"key": "a", "value": "1"}}, {"get": "b"}, {"delete": "c"}],
                "failure": [{"get": "a"}]}"#,
        )
        .expect("parses");
        assert_eq!(
            compares,
            vec![
                Compare {
                    key: "a".into(),
                    target: CompareTarget::Version(0),
                    op: CompareOp::Equal
                },
                Compare {
                    key: "b".into(),
                    target: CompareTarget::Value("x".into()),
                    op: CompareOp::NotEqual
                },
            ]
        );
        assert_eq!(success.len(), 3);
        assert_eq!(failure, vec![TxnOp::Get { key: "a".into() }]);
        for bad in [
            "not json",
            r#"{"compare": [{"key": "a"}]}"#,
            r#"{"compare": [{"key": "a", "version": 1, "value": "x"}]}"#,
            r#"{"compare": [{"key": "a", "version": 1, "op": "~"}]}"#,
            r#"{"success": [{"increment": "a"}]}"#,
        ] {
            assert!(matches!(parse(bad), Err(CliError::Usage(_))), "{bad}");
        }
    }
}
