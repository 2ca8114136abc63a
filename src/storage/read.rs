//! Reads of the store: a key's record and ACL (from anywhere, or from memory only), blob
//! bodies, and prefix visits. Writes go through `batch.rs`.

use rocksdb::{DBPinnableSlice, Direction, IteratorMode, ReadOptions};

use super::{
    Acl, Body, CF_ACL, CF_BLOBS, CF_VALUES, Current, EMPTY_BLOB_ID, Record, StorageError, Store,
};
use crate::protocol::Key;

impl Store {
    /// The live record of `key` and its ACL, for a read: the ACL is looked up only when a
    /// live record may have one (a key without a value reveals nothing to anyone, so its
    /// ACL does not matter to a read; writes see it through their batch).
    pub fn read(&self, key: &Key, now_ms: i64) -> Result<Current, StorageError> {
        self.read_with(key, now_ms, &self.from_anywhere)?
            .ok_or_else(|| StorageError::Corrupt("a read from anywhere was incomplete".into()))
    }

    /// `read` answered from memory only (memtables and the block cache), so it never waits
    /// for the disk and may run on an async thread; `None` when the answer needs the files.
    pub fn read_cached(&self, key: &Key, now_ms: i64) -> Result<Option<Current>, StorageError> {
        self.read_with(key, now_ms, &self.from_memory)
    }

    fn read_with(
        &self,
        key: &Key,
        now_ms: i64,
        options: &ReadOptions,
    ) -> Result<Option<Current>, StorageError> {
        let k = key.as_bytes();
        let Some(found) = self.get_with(CF_VALUES, k, options)? else {
            return Ok(None);
        };
        let record = found
            .map(|bytes| decode_record(k, &bytes))
            .transpose()?
            .filter(|r| !r.is_expired(now_ms));
        let acl = match &record {
            Some(r) if r.has_acl => match self.get_with(CF_ACL, k, options)? {
                None => return Ok(None),
                Some(found) => found.map_or(Ok(Acl::default()), |b| decode_acl(&b))?,
            },
            _ => Acl::default(),
        };
        Ok(Some(Current { record, acl }))
    }

    /// A point lookup; `None` when `options` allow memory only and the value is not there.
    fn get_with(
        &self,
        cf: &str,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Option<Option<DBPinnableSlice<'_>>>, StorageError> {
        match self.db.get_pinned_cf_opt(self.cf(cf), key, options) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn read_record(&self, key: &[u8]) -> Result<Option<Record>, StorageError> {
        match self.db.get_pinned_cf(self.cf(CF_VALUES), key)? {
            None => Ok(None),
            Some(bytes) => decode_record(key, &bytes).map(Some),
        }
    }

    pub(super) fn read_acl(&self, key: &[u8]) -> Result<Acl, StorageError> {
        match self.db.get_pinned_cf(self.cf(CF_ACL), key)? {
            None => Ok(Acl::default()),
            Some(bytes) => decode_acl(&bytes),
        }
    }

    /// The bytes of a record's body, reassembling blob chunks.
    pub fn read_body(&self, body: &Body) -> Result<Vec<u8>, StorageError> {
        match body {
            Body::Inline(bytes) => Ok(bytes.clone()),
            Body::Blob {
                blob_id: EMPTY_BLOB_ID,
                ..
            } => Ok(Vec::new()),
            Body::Blob { blob_id, len } => {
                let mut out = Vec::with_capacity(*len as usize);
                let start = blob_id.to_be_bytes();
                let mode = IteratorMode::From(&start, Direction::Forward);
                for item in self.db.iterator_cf(self.cf(CF_BLOBS), mode) {
                    let (chunk_key, chunk) = item?;
                    if !chunk_key.starts_with(&start) || out.len() as u64 >= *len {
                        break;
                    }
                    out.extend_from_slice(&chunk);
                }
                if out.len() as u64 != *len {
                    return Err(StorageError::Corrupt(format!(
                        "blob {blob_id}: {} of {len} bytes",
                        out.len()
                    )));
                }
                Ok(out)
            }
        }
    }

    /// Live records whose key starts with `prefix`, in key order, with their ACLs.
    pub fn scan(
        &self,
        prefix: &str,
        now_ms: i64,
    ) -> Result<Vec<(String, Record, Acl)>, StorageError> {
        let mut out = Vec::new();
        self.visit(prefix, None, now_ms, |key, record, acl| {
            out.push((String::from_utf8_lossy(key).into_owned(), record, acl));
            true
        })?;
        Ok(out)
    }

    /// Calls `visit` with each live record whose key starts with `prefix` (and sorts after
    /// `after`, when given), in key order, until it returns false. One RocksDB iterator, so
    /// what it sees is one point in time.
    pub fn visit(
        &self,
        prefix: &str,
        after: Option<&str>,
        now_ms: i64,
        mut visit: impl FnMut(&[u8], Record, Acl) -> bool,
    ) -> Result<(), StorageError> {
        let start = match after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => after.as_bytes(),
            _ => prefix.as_bytes(),
        };
        let mode = IteratorMode::From(start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_VALUES), mode) {
            let (key, bytes) = item?;
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            if after.is_some_and(|a| &*key <= a.as_bytes()) {
                continue;
            }
            let record = decode_record(&key, &bytes)?;
            if record.is_expired(now_ms) {
                continue;
            }
            let acl = if record.has_acl {
                self.read_acl(&key)?
            } else {
                Acl::default()
            };
            if !visit(&key, record, acl) {
                break;
            }
        }
        Ok(())
    }
}

fn decode_record(key: &[u8], bytes: &[u8]) -> Result<Record, StorageError> {
    Record::decode(bytes)
        .ok_or_else(|| StorageError::Corrupt(format!("record of {}", String::from_utf8_lossy(key))))
}

fn decode_acl(bytes: &[u8]) -> Result<Acl, StorageError> {
    Acl::decode(bytes).ok_or_else(|| StorageError::Corrupt("acl".into()))
}
