//! KEY GET/PUT/DEL, KEY BLOB SET/GET, SCAN and COUNT.

use crate::protocol::{Key, Reply, Worm};
use crate::storage::{Body, Change, Current};

use super::{CommandError, Engine, now_ms, shown_principal};

fn check_writable(key: &Key) -> Result<(), CommandError> {
    if key.is_system() {
        return Err(CommandError::SystemTable(key.table().to_string()));
    }
    Ok(())
}

/// Write rules shared by PUT, BLOB SET and DEL: permission, then the WORM lock.
fn check_write(current: &Current, principal: Option<&str>, now: i64) -> Result<(), CommandError> {
    if !current.acl.may_write(principal) {
        return Err(CommandError::PermissionDenied {
            principal: shown_principal(principal),
            what: "write",
        });
    }
    if let Some(until_ms) = current.record.as_ref().and_then(|r| r.worm_until_ms)
        && until_ms > now
    {
        return Err(CommandError::Locked { until_ms });
    }
    Ok(())
}

fn worm_deadline(worm: Option<Worm>, now: i64) -> Option<i64> {
    worm.map(|w| match w {
        Worm::Ttl(ttl) => now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)),
        Worm::ExpiresAt(at) => at,
    })
}

impl Engine {
    pub(super) fn get(&self, key: &Key, principal: Option<&str>) -> Result<Reply, CommandError> {
        let current = self.store.read(key, now_ms())?;
        match current.record {
            Some(record) if current.acl.may_read(principal) => match record.body {
                Body::Inline(value) => {
                    let mut line = b"VALUE:".to_vec();
                    line.extend_from_slice(&value);
                    Ok(Reply::line(line))
                }
                Body::Blob { .. } => Err(CommandError::HoldsBlob(key.to_string())),
            },
            // Existence is not leaked to those who may not read.
            _ => Ok(Reply::line("NOT_FOUND")),
        }
    }

    pub(super) fn blob_get(
        &self,
        key: &Key,
        principal: Option<&str>,
    ) -> Result<Reply, CommandError> {
        let current = self.store.read(key, now_ms())?;
        match current.record {
            Some(record) if current.acl.may_read(principal) => {
                Ok(Reply::Blob(self.store.read_body(&record.body)?))
            }
            _ => Ok(Reply::line("EMPTY")),
        }
    }

    pub(super) fn put(
        &self,
        key: &Key,
        principal: Option<&str>,
        worm: Option<Worm>,
        value: Vec<u8>,
    ) -> Result<Reply, CommandError> {
        check_writable(key)?;
        let now = now_ms();
        self.store.update(key, now, |current| {
            check_write(current, principal, now)?;
            let worm_until_ms = worm_deadline(worm, now);
            Ok((
                Change::PutInline {
                    value,
                    worm_until_ms,
                },
                Reply::Ok,
            ))
        })
    }

    pub(super) fn blob_set(
        &self,
        key: &Key,
        principal: Option<&str>,
        bytes: Vec<u8>,
    ) -> Result<Reply, CommandError> {
        check_writable(key)?;
        let now = now_ms();
        self.store.update(key, now, |current| {
            check_write(current, principal, now)?;
            Ok((
                Change::PutBlob {
                    bytes,
                    worm_until_ms: None,
                },
                Reply::Ok,
            ))
        })
    }

    pub(super) fn delete(&self, key: &Key, principal: Option<&str>) -> Result<Reply, CommandError> {
        check_writable(key)?;
        let now = now_ms();
        self.store.update(key, now, |current| {
            check_write(current, principal, now)?;
            let change = if current.record.is_some() {
                Change::Delete
            } else {
                Change::Keep
            };
            Ok((change, Reply::Ok))
        })
    }

    fn readable_keys(
        &self,
        prefix: &str,
        principal: Option<&str>,
    ) -> Result<Vec<String>, CommandError> {
        Ok(self
            .store
            .scan(prefix, now_ms())?
            .into_iter()
            .filter(|(_, _, acl)| acl.may_read(principal))
            .map(|(key, _, _)| key)
            .collect())
    }

    pub(super) fn scan(
        &self,
        prefix: &str,
        principal: Option<&str>,
    ) -> Result<Reply, CommandError> {
        Ok(Reply::Keys(self.readable_keys(prefix, principal)?))
    }

    pub(super) fn count(
        &self,
        prefix: &str,
        principal: Option<&str>,
    ) -> Result<Reply, CommandError> {
        let n = self.readable_keys(prefix, principal)?.len();
        Ok(Reply::line(format!("COUNT:{n}")))
    }
}
