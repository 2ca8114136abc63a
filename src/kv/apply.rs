//! The write rules, applied into a storage batch: system tables are read-only, then ACLs,
//! then WORM locks.

use super::write::{Write, WriteOp};
use super::{Refusal, shown_principal};
use crate::protocol::Reply;
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
        } => {
            check_write(current, principal, now)?;
            let change = Change::PutInline {
                value: value.clone(),
                worm_until_ms: *worm_until_ms,
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
        WriteOp::Delete => {
            check_write(current, principal, now)?;
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
    }
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
