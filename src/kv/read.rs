//! Reads: KEY GET, KEY VERSION, KEY BLOB GET, SCAN and COUNT, from local storage.
//! Existence is not leaked to principals who may not read a key.

use super::Refusal;
use crate::config::DEFAULT_MAX_SCAN_KEYS;
use crate::protocol::{Command, Key, Reply, Scan};
use crate::storage::{Body, Current, StorageError, Store};

/// Answers a read command from `store` (judged at `now_ms`); `None` for a command that is
/// not a read.
pub fn read(
    store: &Store,
    principal: Option<&str>,
    command: &Command,
    now_ms: i64,
) -> Result<Option<Result<Reply, Refusal>>, StorageError> {
    Ok(Some(match command {
        Command::Get(key) => get(key, store.read(key, now_ms)?, principal),
        Command::BlobGet(key) => Ok(blob_get(store, key, principal, now_ms)?),
        Command::Version(key) => Ok(version(store.read(key, now_ms)?, principal)),
        Command::Scan(scan) => Ok(scan_page(store, scan, principal, now_ms)?),
        Command::Count(prefix) => {
            let mut n = 0u64;
            store.visit(prefix, None, now_ms, |_, _, acl| {
                n += u64::from(acl.may_read(principal));
                true
            })?;
            Ok(Reply::line(format!("COUNT:{n}")))
        }
        _ => return Ok(None),
    }))
}

/// `read` for what memory alone can answer: `KEY GET` and `KEY VERSION` of a key whose
/// record (and ACL) sit in a memtable or the block cache. Never waits for the disk, so it
/// may run on an async thread; `None` for every other command and when the disk is needed.
pub fn read_cached(
    store: &Store,
    principal: Option<&str>,
    command: &Command,
    now_ms: i64,
) -> Result<Option<Result<Reply, Refusal>>, StorageError> {
    let (Command::Get(key) | Command::Version(key)) = command else {
        return Ok(None);
    };
    let Some(current) = store.read_cached(key, now_ms)? else {
        return Ok(None);
    };
    Ok(Some(match command {
        Command::Get(_) => get(key, current, principal),
        _ => Ok(version(current, principal)),
    }))
}

fn version(current: Current, principal: Option<&str>) -> Reply {
    let version = if current.acl.may_read(principal) {
        super::version_of(&current)
    } else {
        0
    };
    Reply::line(format!("VERSION:{version}"))
}

fn get(key: &Key, current: Current, principal: Option<&str>) -> Result<Reply, Refusal> {
    match current.record {
        Some(record) if current.acl.may_read(principal) => match record.body {
            Body::Inline(value) => Ok(Reply::Value(value)),
            Body::Blob { .. } => Err(Refusal::HoldsBlob(key.to_string())),
        },
        _ => Ok(Reply::line("NOT_FOUND")),
    }
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

/// One page of a scan: at most `limit` readable keys after `after`; `more` names the last
/// one when another readable key follows.
fn scan_page(
    store: &Store,
    scan: &Scan,
    principal: Option<&str>,
    now_ms: i64,
) -> Result<Reply, StorageError> {
    let limit = scan.limit.unwrap_or(DEFAULT_MAX_SCAN_KEYS);
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut last = String::new();
    let mut cut = false;
    store.visit(
        &scan.prefix,
        scan.after.as_deref(),
        now_ms,
        |key, record, acl| {
            if !acl.may_read(principal) {
                return true;
            }
            if lines.len() == limit {
                cut = true;
                return false;
            }
            let mut line = key.to_vec();
            if scan.values {
                match &record.body {
                    Body::Inline(value) => {
                        line.extend_from_slice(b" VALUE:");
                        line.extend_from_slice(value);
                    }
                    Body::Blob { len, .. } => {
                        line.extend_from_slice(format!(" BLOB {len}").as_bytes());
                    }
                }
            }
            // Stored keys were validated (UTF-8) when they were written.
            last = String::from_utf8_lossy(key).into_owned();
            lines.push(line);
            true
        },
    )?;
    Ok(Reply::Page {
        lines,
        more: cut.then_some(last),
    })
}
