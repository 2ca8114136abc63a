//! One atomic RocksDB write of many changes: the keys it changes are locked (their stripes,
//! in order, so two batches never deadlock) until it is written, and a change sees the
//! changes made before it in the same batch (a key written twice, a blob replaced twice).
//! The consensus layer adds its own records (votes, group states) to the same batch, so
//! the data of applied entries, the applied slot and the votes reach the disk together.

use std::collections::HashMap;
use std::sync::MutexGuard;

use rocksdb::WriteBatch;

use super::feed::{ChangeKind, Published};
use super::upload::UploadState;
use super::{
    Acl, Body, CF_ACL, CF_BLOBS, CF_META, CF_VALUES, Change, Current, EMPTY_BLOB_ID, Record,
    StorageError, Store, blob_chunk_key, slot_key,
};
use crate::protocol::Key;

pub struct Batch<'a> {
    pub(super) store: &'a Store,
    pub(super) batch: WriteBatch,
    _locks: Vec<MutexGuard<'a, ()>>,
    /// The stored record (expired or not) and ACL of every key this batch changed.
    overlay: HashMap<Vec<u8>, (Option<Record>, Acl)>,
    /// The value changes made, for the change feed once written.
    published: Vec<Published>,
    /// The log slot of the changes being added (a cluster), or none (a single node).
    revision: Option<u64>,
    /// Blob uploads this batch read or changed, by record key (`upload.rs`).
    pub(super) uploads: HashMap<Vec<u8>, Option<UploadState>>,
}

impl Store {
    /// A batch that may change `keys` (and only those: they are locked until it is written).
    pub fn batch<'a, 'k>(&'a self, keys: impl IntoIterator<Item = &'k Key>) -> Batch<'a> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let locks = stripes
            .into_iter()
            // A poisoned stripe only means another writer panicked; the data is in RocksDB.
            .map(|s| self.locks[s].lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        Batch {
            store: self,
            batch: WriteBatch::default(),
            _locks: locks,
            overlay: HashMap::new(),
            published: Vec::new(),
            revision: None,
            uploads: HashMap::new(),
        }
    }
}

impl Batch<'_> {
    /// The log slot of the changes added from now on (their revision in the change feed).
    pub fn set_revision(&mut self, slot: u64) {
        self.revision = Some(slot);
    }

    /// The stored record (even if expired) and the ACL, as this batch leaves them so far.
    fn stored(&self, key: &Key) -> Result<(Option<Record>, Acl), StorageError> {
        if let Some(entry) = self.overlay.get(key.as_bytes()) {
            return Ok(entry.clone());
        }
        let record = self.store.read_record(key.as_bytes())?;
        // A record without the ACL flag has no ACL for certain; a key without a record may.
        let acl = match &record {
            Some(r) if !r.has_acl => Acl::default(),
            _ => self.store.read_acl(key.as_bytes())?,
        };
        Ok((record, acl))
    }

    /// The live record and the ACL of `key`, seeing this batch's earlier changes.
    pub fn read(&self, key: &Key, now_ms: i64) -> Result<Current, StorageError> {
        let (record, acl) = self.stored(key)?;
        Ok(Current {
            record: record.filter(|r| !r.is_expired(now_ms)),
            acl,
        })
    }

    /// Adds `change` of `key` (judged at `now_ms`: an expired record found is removed).
    pub fn change(&mut self, key: &Key, now_ms: i64, change: Change) -> Result<(), StorageError> {
        let (stored, mut acl) = self.stored(key)?;
        let live = stored.as_ref().is_some_and(|r| !r.is_expired(now_ms));
        let cf = |name| self.store.cf(name);
        let k = key.as_bytes();
        let replaces_record = matches!(
            change,
            Change::PutInline { .. }
                | Change::PutBlob { .. }
                | Change::PutStaged { .. }
                | Change::Delete
        );
        let expired = stored.is_some() && !live;
        let mut record = stored.clone();
        // The version the key reaches if this change writes it: one more than the live
        // record's, 1 for a key that was absent (or expired). A delete of a live value is
        // published with that number too (its place in the key's history).
        let next_version = stored
            .as_ref()
            .filter(|_| live)
            .map_or(0, |r| r.version)
            .saturating_add(1);
        let published_before = self.published.len();
        // A removed expired value is a delete of it (watchers see the key go).
        if let Some(old) = stored.as_ref().filter(|_| expired) {
            self.published.push((
                key.to_string(),
                ChangeKind::Del,
                old.version.saturating_add(1),
                self.revision,
            ));
        }
        let published = match &change {
            Change::PutInline { .. } | Change::PutBlob { .. } | Change::PutStaged { .. } => {
                Some(ChangeKind::Put)
            }
            Change::Delete if live => Some(ChangeKind::Del),
            _ => None,
        };
        if let Some(kind) = published {
            self.published
                .push((key.to_string(), kind, next_version, self.revision));
        }
        let before = self.batch.len();
        if replaces_record || expired {
            if let Some(Record {
                body: Body::Blob { blob_id, .. },
                ..
            }) = &stored
            {
                self.store.delete_blob_chunks(&mut self.batch, *blob_id);
            }
            if expired && !replaces_record {
                self.batch.delete_cf(cf(CF_VALUES), k);
                record = None;
            }
        }
        match change {
            Change::Keep => {}
            Change::PutInline {
                value,
                worm_until_ms,
                expires_ms,
            } => {
                let new = Record {
                    body: Body::Inline(value),
                    worm_until_ms,
                    expires_ms,
                    version: next_version,
                    has_acl: !acl.is_empty(),
                };
                self.batch.put_cf(cf(CF_VALUES), k, new.encode());
                record = Some(new);
            }
            Change::PutBlob {
                bytes,
                worm_until_ms,
            } => {
                // An empty blob has no chunks, so it takes no id (0): ids are recovered from
                // the chunks after a restart, and an id without chunks could be handed out
                // again and its range-delete would then hit another blob.
                let blob_id = if bytes.is_empty() {
                    EMPTY_BLOB_ID
                } else {
                    self.store.new_blob_id()
                };
                for (index, chunk) in bytes.chunks(super::BLOB_CHUNK_BYTES).enumerate() {
                    self.batch
                        .put_cf(cf(CF_BLOBS), blob_chunk_key(blob_id, index as u32), chunk);
                }
                let new = Record {
                    body: Body::Blob {
                        blob_id,
                        len: bytes.len() as u64,
                    },
                    worm_until_ms,
                    expires_ms: None,
                    version: next_version,
                    has_acl: !acl.is_empty(),
                };
                self.batch.put_cf(cf(CF_VALUES), k, new.encode());
                record = Some(new);
            }
            Change::PutStaged { upload, len } => {
                let blob_id = self.adopt_upload(key.table(), upload)?;
                let new = Record {
                    body: Body::Blob { blob_id, len },
                    worm_until_ms: None,
                    expires_ms: None,
                    version: next_version,
                    has_acl: !acl.is_empty(),
                };
                self.batch.put_cf(cf(CF_VALUES), k, new.encode());
                record = Some(new);
            }
            Change::Delete => {
                self.batch.delete_cf(cf(CF_VALUES), k);
                record = None;
            }
            Change::SetAcl(new) => {
                if new.is_empty() {
                    self.batch.delete_cf(cf(CF_ACL), k);
                } else {
                    self.batch.put_cf(cf(CF_ACL), k, new.encode());
                }
                acl = new;
                // The record says whether there is an ACL to look up: keep it true.
                if let Some(r) = record.as_mut().filter(|r| r.has_acl == acl.is_empty()) {
                    r.has_acl = !acl.is_empty();
                    self.batch.put_cf(cf(CF_VALUES), k, r.encode());
                }
            }
        }
        // The table's write counter counts every change that wrote something, and at least
        // every change published (an expired value removed, then a put: two), so the sum of
        // the counters bounds the feed's single-node revisions across restarts.
        let published = (self.published.len() - published_before) as u64;
        let wrote = u64::from(self.batch.len() > before);
        if published.max(wrote) > 0 {
            self.batch.merge_cf(
                cf(CF_META),
                slot_key(key.table()),
                published.max(wrote).to_be_bytes(),
            );
        }
        self.overlay.insert(k.to_vec(), (record, acl));
        Ok(())
    }

    /// The underlying write batch, for records of other layers (consensus state).
    pub fn raw(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Writes the batch atomically: synced (durable on return) or only written (in order
    /// after every earlier write; a later synced one makes it durable too).
    pub fn write(self, sync: bool) -> Result<(), StorageError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let options = if sync {
            &self.store.synced
        } else {
            &self.store.unsynced
        };
        self.store.db.write_opt(self.batch, options)?;
        // Published while the keys are still locked, so the feed has each key's changes in
        // the order they were written.
        self.store.feed.publish(self.published);
        Ok(())
    }
}
