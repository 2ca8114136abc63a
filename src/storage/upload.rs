//! Blobs staged through the log in chunks (a cluster's large `KEY BLOB SET`).
//!
//! A large blob does not travel as one log entry: its origin proposes it as fragments of a
//! few chunks of [`BLOB_CHUNK_BYTES`] each, a few at a time, so small writes to the same table interleave with
//! them, and then a small entry that names the upload and adopts it as the key's value. Each
//! applied fragment is written straight into its final place (chunks of a blob id allocated
//! for the upload), and an upload record under `upload/<table>\0<origin><id>` in the meta
//! column family keeps which chunks arrived. Every replica applies the same fragments in the
//! same order and snapshots carry upload records with their chunks, so every replica holds
//! the same uploads at the same slot, and adopting one is judged alike everywhere.
//!
//! An upload left behind (its origin failed before adopting or aborting it) is dropped when
//! a later upload to the same table starts and the old one received nothing for
//! [`UPLOAD_IDLE_MS`] by the clocks of the origins (times travel in the fragments, so every
//! replica drops it at the same entry).

use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::batch::Batch;
use super::{BLOB_CHUNK_BYTES, CF_BLOBS, CF_META, StorageError, Store, blob_chunk_key};

const UPLOAD_PREFIX: &[u8] = b"upload/";
/// An upload without a fragment for this long is abandoned.
pub const UPLOAD_IDLE_MS: i64 = 10 * 60 * 1000;
/// The largest upload a fragment may announce (what a chunk bitmap can hold sensibly).
const MAX_UPLOAD_BYTES: u64 = 1 << 40;

/// Which upload: the node that took the client's request and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UploadId {
    pub origin: u64,
    pub id: u64,
}

/// One fragment of an upload, as the log carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub upload: UploadId,
    /// The chunk this is (`u32::MAX`: the origin gave the upload up).
    pub index: u32,
    /// The blob's whole length.
    pub total: u64,
    /// The origin's clock when it sent the fragment (Unix milliseconds).
    pub at_ms: i64,
}

/// Index of the fragment that aborts an upload.
pub const ABORT_INDEX: u32 = u32::MAX;

/// What a replica keeps of an upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UploadState {
    pub blob_id: u64,
    pub total: u64,
    pub last_at_ms: i64,
    /// One bit per chunk, set once it arrived.
    pub received: Vec<u8>,
}

/// Chunks a blob of `total` bytes has.
pub fn chunk_count(total: u64) -> u64 {
    total.div_ceil(BLOB_CHUNK_BYTES as u64)
}

impl UploadState {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.received.len());
        out.extend_from_slice(&self.blob_id.to_be_bytes());
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&self.last_at_ms.to_be_bytes());
        out.extend_from_slice(&self.received);
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<UploadState> {
        let (blob_id, rest) = bytes.split_first_chunk::<8>()?;
        let (total, rest) = rest.split_first_chunk::<8>()?;
        let (last_at_ms, received) = rest.split_first_chunk::<8>()?;
        let total = u64::from_be_bytes(*total);
        if total > MAX_UPLOAD_BYTES || received.len() as u64 != chunk_count(total).div_ceil(8) {
            return None;
        }
        Some(UploadState {
            blob_id: u64::from_be_bytes(*blob_id),
            total,
            last_at_ms: i64::from_be_bytes(*last_at_ms),
            received: received.to_vec(),
        })
    }

    fn has(&self, index: u64) -> bool {
        self.received
            .get((index / 8) as usize)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    fn complete(&self) -> bool {
        (0..chunk_count(self.total)).all(|i| self.has(i))
    }
}

/// The meta key of an upload's record.
pub(super) fn upload_key(table: &str, upload: UploadId) -> Vec<u8> {
    let mut key = upload_table_prefix(table);
    key.extend_from_slice(&upload.origin.to_be_bytes());
    key.extend_from_slice(&upload.id.to_be_bytes());
    key
}

fn upload_table_prefix(table: &str) -> Vec<u8> {
    let mut key = UPLOAD_PREFIX.to_vec();
    key.extend_from_slice(table.as_bytes());
    key.push(0);
    key
}

/// The upload a record key names, if it is one of `prefix`'s.
pub(super) fn upload_of(prefix: &[u8], key: &[u8]) -> Option<UploadId> {
    let rest = key.strip_prefix(prefix)?;
    let (origin, id) = rest.split_first_chunk::<8>()?;
    let id: [u8; 8] = id.try_into().ok()?;
    Some(UploadId {
        origin: u64::from_be_bytes(*origin),
        id: u64::from_be_bytes(id),
    })
}

impl Store {
    /// The uploads of `table` in progress, read through `get`/`iter` of a snapshot or the
    /// database itself.
    pub(super) fn uploads_of(
        &self,
        table: &str,
        items: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    ) -> Result<Vec<(UploadId, UploadState)>, StorageError> {
        let prefix = upload_table_prefix(table);
        let mut found = Vec::new();
        for item in items {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (Some(upload), Some(state)) =
                (upload_of(&prefix, &key), UploadState::decode(&value))
            else {
                return Err(StorageError::Corrupt(
                    "an upload record does not decode".into(),
                ));
            };
            found.push((upload, state));
        }
        Ok(found)
    }

    /// Where the uploads of `table` start in the meta column family.
    pub(super) fn uploads_start(table: &str) -> Vec<u8> {
        upload_table_prefix(table)
    }

    /// The uploads of `table` in progress.
    fn stored_uploads(&self, table: &str) -> Result<Vec<(UploadId, UploadState)>, StorageError> {
        let start = upload_table_prefix(table);
        let mode = IteratorMode::From(&start, Direction::Forward);
        self.uploads_of(table, self.db.iterator_cf(self.cf(CF_META), mode))
    }

    /// Deletes every upload of `table` with its chunks (a snapshot replaces the table).
    pub(super) fn wipe_uploads(
        &self,
        batch: &mut WriteBatch,
        table: &str,
    ) -> Result<(), StorageError> {
        for (upload, state) in self.stored_uploads(table)? {
            self.delete_blob_chunks(batch, state.blob_id);
            batch.delete_cf(self.cf(CF_META), upload_key(table, upload));
        }
        Ok(())
    }

    /// A new blob id for an upload being installed from a snapshot, and its record.
    pub(super) fn put_installed_upload(
        &self,
        batch: &mut WriteBatch,
        table: &str,
        upload: UploadId,
        mut state: UploadState,
    ) -> u64 {
        state.blob_id = self.new_blob_id();
        batch.put_cf(self.cf(CF_META), upload_key(table, upload), state.encode());
        state.blob_id
    }
}

impl Batch<'_> {
    /// The upload as this batch leaves it so far.
    fn upload(
        &mut self,
        table: &str,
        upload: UploadId,
    ) -> Result<Option<UploadState>, StorageError> {
        let key = upload_key(table, upload);
        if let Some(state) = self.uploads.get(&key) {
            return Ok(state.clone());
        }
        let stored = self
            .store
            .db
            .get_cf(self.store.cf(CF_META), &key)?
            .map(|v: Vec<u8>| {
                UploadState::decode(&v)
                    .ok_or_else(|| StorageError::Corrupt("an upload record does not decode".into()))
            })
            .transpose()?;
        self.uploads.insert(key, stored.clone());
        Ok(stored)
    }

    fn put_upload(&mut self, table: &str, upload: UploadId, state: Option<UploadState>) {
        let key = upload_key(table, upload);
        let cf = self.store.cf(CF_META);
        match &state {
            Some(state) => self.batch.put_cf(cf, &key, state.encode()),
            None => self.batch.delete_cf(cf, &key),
        }
        self.uploads.insert(key, state);
    }

    /// Applies one fragment of an upload to `table`: its chunks (from `fragment.index` on)
    /// go to the upload's blob. A fragment that does not fit its upload (another length, an
    /// index beyond the end, a chunk of the wrong size) is skipped with an error, alike on
    /// every replica.
    pub fn stage_fragment(
        &mut self,
        table: &str,
        fragment: &Fragment,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        if fragment.index == ABORT_INDEX {
            return self.drop_upload(table, fragment.upload);
        }
        let chunks = chunk_count(fragment.total);
        let first = u64::from(fragment.index);
        let size = |index: u64| {
            if index + 1 == chunks {
                fragment.total - index * BLOB_CHUNK_BYTES as u64
            } else {
                BLOB_CHUNK_BYTES as u64
            }
        };
        let fits = fragment.total <= MAX_UPLOAD_BYTES
            && !bytes.is_empty()
            && bytes
                .chunks(BLOB_CHUNK_BYTES)
                .enumerate()
                .all(|(k, chunk)| {
                    let index = first + k as u64;
                    index < chunks && chunk.len() as u64 == size(index)
                });
        if !fits {
            tracing::error!(
                ?fragment,
                len = bytes.len(),
                "a blob fragment does not fit; skipped"
            );
            return Ok(());
        }
        let mut state = match self.upload(table, fragment.upload)? {
            Some(state) if state.total == fragment.total => state,
            Some(_) => {
                tracing::error!(?fragment, "a blob fragment names another length; skipped");
                return Ok(());
            }
            None => {
                self.drop_idle_uploads(table, fragment.at_ms)?;
                UploadState {
                    blob_id: self.store.new_blob_id(),
                    total: fragment.total,
                    last_at_ms: fragment.at_ms,
                    received: vec![0; chunks.div_ceil(8) as usize],
                }
            }
        };
        for (k, chunk) in bytes.chunks(BLOB_CHUNK_BYTES).enumerate() {
            let index = first + k as u64;
            let key = blob_chunk_key(state.blob_id, index as u32);
            self.batch.put_cf(self.store.cf(CF_BLOBS), key, chunk);
            state.received[(index / 8) as usize] |= 1 << (index % 8);
        }
        state.last_at_ms = state.last_at_ms.max(fragment.at_ms);
        self.put_upload(table, fragment.upload, Some(state));
        Ok(())
    }

    /// Whether `upload` to `table` holds every chunk of a blob of `len` bytes.
    pub fn upload_complete(
        &mut self,
        table: &str,
        upload: UploadId,
        len: u64,
    ) -> Result<bool, StorageError> {
        Ok(self
            .upload(table, upload)?
            .is_some_and(|s| s.total == len && s.complete()))
    }

    /// Removes an upload and its chunks (refused, aborted or abandoned).
    pub fn drop_upload(&mut self, table: &str, upload: UploadId) -> Result<(), StorageError> {
        if let Some(state) = self.upload(table, upload)? {
            self.store
                .delete_blob_chunks(&mut self.batch, state.blob_id);
            self.put_upload(table, upload, None);
        }
        Ok(())
    }

    /// Takes a complete upload's blob id for a record (the upload record goes, the chunks
    /// stay: the record owns them now).
    pub(super) fn adopt_upload(
        &mut self,
        table: &str,
        upload: UploadId,
    ) -> Result<u64, StorageError> {
        let state = self
            .upload(table, upload)?
            .filter(UploadState::complete)
            .ok_or_else(|| StorageError::Corrupt("adopting an incomplete upload".into()))?;
        self.put_upload(table, upload, None);
        Ok(state.blob_id)
    }

    /// Drops the uploads of `table` that received nothing for `UPLOAD_IDLE_MS` before
    /// `now_ms` (their origins' clocks).
    fn drop_idle_uploads(&mut self, table: &str, now_ms: i64) -> Result<(), StorageError> {
        let idle: Vec<UploadId> = self
            .store
            .stored_uploads(table)?
            .into_iter()
            .filter(|(_, s)| s.last_at_ms < now_ms.saturating_sub(UPLOAD_IDLE_MS))
            .map(|(u, _)| u)
            .collect();
        for upload in idle {
            // This batch may have touched it since: judge by what it leaves.
            if let Some(state) = self.upload(table, upload)?
                && state.last_at_ms < now_ms.saturating_sub(UPLOAD_IDLE_MS)
            {
                tracing::warn!(
                    table,
                    origin = upload.origin,
                    id = upload.id,
                    "dropping an abandoned blob upload"
                );
                self.drop_upload(table, upload)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
impl Store {
    /// The uploads staged for the table of `key`.
    pub(crate) fn uploads_for_test(&self, key: &str) -> Vec<UploadId> {
        let key = crate::protocol::Key::parse(key.as_bytes()).expect("a key");
        let uploads = self.stored_uploads(key.table()).expect("uploads");
        uploads.into_iter().map(|(u, _)| u).collect()
    }
}

#[cfg(test)]
#[path = "upload_tests.rs"]
mod tests;
