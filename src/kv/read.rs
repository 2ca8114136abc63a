//! Reads: KEY GET, KEY BLOB GET, SCAN and COUNT, from local storage. Existence is not
//! leaked to principals who may not read a key.

use super::Refusal;
use crate::protocol::{Command, Key, Reply};
use crate::storage::{Body, StorageError, Store};

/// Answers a read command from `store` (judged at `now_ms`); `None` for a command that is
/// not a read.
pub fn read(
    store: &Store,
    principal: Option<&str>,
    command: &Command,
    now_ms: i64,
) -> Result<Option<Result<Reply, Refusal>>, StorageError> {
    Ok(Some(match command {
        Command::Get(key) => get(store, key, principal, now_ms)?,
        Command::BlobGet(key) => Ok(blob_get(store, key, principal, now_ms)?),
        Command::Scan(prefix) => Ok(Reply::Keys(readable_keys(
            store, prefix, principal, now_ms,
        )?)),
        Command::Count(prefix) => {
            let n = readable_keys(store, prefix, principal, now_ms)?.len();
            Ok(Reply::line(format!("COUNT:{n}")))
        }
        _ => return Ok(None),
    }))
}

fn get(
    store: &Store,
    key: &Key,
    principal: Option<&str>,
    now_ms: i64,
) -> Result<Result<Reply, Refusal>, StorageError> {
    let current = store.read(key, now_ms)?;
    Ok(match current.record {
        Some(record) if current.acl.may_read(principal) => match record.body {
            Body::Inline(value) => {
                let mut line = b"VALUE:".to_vec();
                line.extend_from_slice(&value);
                Ok(Reply::line(line))
            }
            Body::Blob { .. } => Err(Refusal::HoldsBlob(key.to_string())),
        },
        _ => Ok(Reply::line("NOT_FOUND")),
    })
}

fn blob_get(
    store: &Store,
    key: &Key,
    principal: Option<&str>,
    now_ms: i64,
) -> Result<Reply, StorageError> {
    let current = store.read(key, now_ms)?;
    Ok(match current.record {
        Some(record) if current.acl.may_read(principal) => {
            Reply::Blob(store.read_body(&record.body)?)
        }
        _ => Reply::line("EMPTY"),
    })
}

fn readable_keys(
    store: &Store,
    prefix: &str,
    principal: Option<&str>,
    now_ms: i64,
) -> Result<Vec<String>, StorageError> {
    Ok(store
        .scan(prefix, now_ms)?
        .into_iter()
        .filter(|(_, _, acl)| acl.may_read(principal))
        .map(|(key, _, _)| key)
        .collect())
}
