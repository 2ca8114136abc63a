//! The write rules, applied into a storage batch: system tables are read-only, then ACLs,
//! then WORM locks, then version conditions (CAS, conditional deletes, transactions).

use super::write::{Write, WriteOp};
use super::{Refusal, shown_principal};
use crate::protocol::{Key, Reply, TxnStep};
use crate::storage::{Batch, Change, Current, StorageError};

/// What a write ends as: its answer, or why the rules refused it.
pub type Verdict = Result<Reply, Refusal>;

/// Applies `write` into `batch` (which must lock its key) and returns the verdict. A
/// refused write changes nothing. Only storage failures are errors.
pub fn apply(batch: &mut Batch<'_>, write: &Write) -> Result<Verdict, StorageError> {
    let key = &write.key;
    if key.is_system() {
        return Ok(Err(Refusal::SystemTable(key.table().to_string())));
    }
    if let WriteOp::Txn(steps) = &write.op {
        return apply_txn(batch, write, steps);
    }
    if let WriteOp::Expire = write.op {
        // Reading at the judged instant hides an expired value; changing nothing then
        // removes it (with its `DEL` in the change feed).
        batch.change(key, write.at_ms, Change::Keep)?;
        return Ok(Ok(Reply::Ok));
    }
    let now = write.at_ms;
    let current = batch.read(key, now)?;
    let (change, reply) = match decide(&current, write) {
        Ok(decided) => decided,
        Err(refusal) => return Ok(Err(refusal)),
    };
    batch.change(key, now, change)?;
    Ok(Ok(reply))
}

fn decide(current: &Current, write: &Write) -> Result<(Change, Reply), Refusal> {
    let principal = write.principal.as_deref();
    let now = write.at_ms;
    match &write.op {
        WriteOp::Put {
            value,
            worm_until_ms,
            expires_ms,
            if_version,
        } => {
            check_write(current, principal, now)?;
            check_version(current, &write.key, *if_version)?;
            let change = Change::PutInline {
                value: value.clone(),
                worm_until_ms: *worm_until_ms,
                expires_ms: *expires_ms,
            };
            Ok((change, Reply::Ok))
        }
        WriteOp::BlobSet { bytes } => {
            check_write(current, principal, now)?;
            let change = Change::PutBlob {
                bytes: bytes.clone(),
                worm_until_ms: None,
            };
            Ok((change, Reply::Ok))
        }
        WriteOp::BlobStaged { upload, len } => {
            check_write(current, principal, now)?;
            let change = Change::PutStaged {
                upload: *upload,
                len: *len,
            };
            Ok((change, Reply::Ok))
        }
        WriteOp::Delete { if_version } => {
            check_write(current, principal, now)?;
            check_version(current, &write.key, *if_version)?;
            let change = if current.record.is_some() {
                Change::Delete
            } else {
                Change::Keep
            };
            Ok((change, Reply::Ok))
        }
        WriteOp::Grant { subject, perm } | WriteOp::Revoke { subject, perm } => {
            if !current.acl.may_change_acl(principal) {
                return Err(Refusal::PermissionDenied {
                    principal: shown_principal(principal),
                    what: "owner",
                });
            }
            let key = &write.key;
            let mut acl = current.acl.clone();
            let line = if matches!(write.op, WriteOp::Grant { .. }) {
                acl.grant(subject, *perm);
                format!(
                    "ACL granted to {subject} for {key} with permissions {}",
                    perm.name()
                )
            } else {
                acl.revoke(subject, *perm);
                format!(
                    "ACL revoked from {subject} for {key} with permissions {}",
                    perm.name()
                )
            };
            Ok((Change::SetAcl(acl), Reply::line(line)))
        }
        // Applied by `apply_txn` and above.
        WriteOp::Txn(_) | WriteOp::Expire => Ok((Change::Keep, Reply::Ok)),
    }
}

/// The version a key is at: its live record's, 0 while absent.
pub fn version_of(current: &Current) -> u64 {
    current.record.as_ref().map_or(0, |r| r.version)
}

/// `KEY CAS` / `KEY DEL … IF VERSION`: the key must be at `expected` (0: absent).
fn check_version(current: &Current, key: &Key, expected: Option<u64>) -> Result<(), Refusal> {
    match expected {
        Some(expected) if version_of(current) != expected => Err(Refusal::VersionMismatch {
            key: key.to_string(),
            version: version_of(current),
        }),
        _ => Ok(()),
    }
}

/// A transaction: every rule and condition is judged on the state before it (its own
/// changes neither lock keys nor change ACLs, so that is exact), and only when all hold are
/// the changes added, in order. A refused transaction changes nothing.
fn apply_txn(
    batch: &mut Batch<'_>,
    write: &Write,
    steps: &[TxnStep],
) -> Result<Verdict, StorageError> {
    let principal = write.principal.as_deref();
    let now = write.at_ms;
    let table = write.key.table();
    for step in steps {
        let key = step.key();
        if key.table() != table {
            return Ok(Err(Refusal::SpansTables {
                first: table.to_string(),
                other: key.to_string(),
            }));
        }
        if key.is_system() {
            return Ok(Err(Refusal::SystemTable(key.table().to_string())));
        }
        let current = batch.read(key, now)?;
        let judged = match step {
            TxnStep::IfVersion { version, .. } => {
                if !current.acl.may_read(principal) {
                    Err(Refusal::PermissionDenied {
                        principal: shown_principal(principal),
                        what: "read",
                    })
                } else if version_of(&current) != *version {
                    Err(Refusal::ConditionFailed {
                        key: key.to_string(),
                        version: version_of(&current),
                    })
                } else {
                    Ok(())
                }
            }
            TxnStep::Put { .. } | TxnStep::Del(_) => check_write(&current, principal, now),
        };
        if let Err(refusal) = judged {
            return Ok(Err(refusal));
        }
    }
    for step in steps {
        let change = match step {
            TxnStep::IfVersion { .. } => continue,
            TxnStep::Put { value, .. } => Change::PutInline {
                value: value.clone(),
                worm_until_ms: None,
                expires_ms: None,
            },
            TxnStep::Del(key) => {
                if batch.read(key, now)?.record.is_none() {
                    continue;
                }
                Change::Delete
            }
        };
        batch.change(step.key(), now, change)?;
    }
    Ok(Ok(Reply::Ok))
}

/// Write rules shared by PUT, BLOB SET and DEL: permission, then the WORM lock.
fn check_write(current: &Current, principal: Option<&str>, now: i64) -> Result<(), Refusal> {
    if !current.acl.may_write(principal) {
        return Err(Refusal::PermissionDenied {
            principal: shown_principal(principal),
            what: "write",
        });
    }
    if let Some(until_ms) = current.record.as_ref().and_then(|r| r.worm_until_ms)
        && until_ms > now
    {
        return Err(Refusal::Locked { until_ms });
    }
    Ok(())
}
