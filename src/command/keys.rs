//! Reads: KEY GET, KEY BLOB GET, SCAN and COUNT (writes are `write::Write`s).

use crate::protocol::{Key, Reply};
use crate::storage::Body;

use super::{CommandError, Engine, now_ms};

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
