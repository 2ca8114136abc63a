//! Snapshots of groups' state machines: exported from one RocksDB snapshot (so records,
//! blobs and each group's state agree) as a stream of bounded frames
//! (`storage::stream`), and installed in bounded batches. The acceptor's own promises
//! and accepted entries never travel: they are that node's votes, not data.
//!
//! Data items, after each group's `Group` item:
//! - `[1][key len: u32][key][record len: u32][record][acl len: u32][acl]`: one key (the
//!   record's blob id is the sender's; the receiver gives the blob a new one);
//! - `[2][bytes]`: the next chunk of the blob of the record before it;
//! - `[3][table len: u32][table][u64]`: a table's write counter;
//! - `[4][table len: u32][table][origin: u64][id: u64][state len: u32][state]`: a blob
//!   upload in progress (`upload.rs`; the receiver gives it a new blob id);
//! - `[5][index: u32][bytes]`: a chunk that upload received.
//!
//! Installing a group marks it first (a synced `N` mark in the acceptor family), wipes its
//! tables, writes the records, then writes the group's state (and configuration), removes
//! the mark and syncs, in one last batch. A node that crashes midway finds the mark at
//! start and wipes the group again ([`Store::wipe_interrupted_installs`]): its state is
//! then the empty one, and it catches up again. Until the last batch the consensus core
//! applies nothing of the group and reads of it wait, so nobody sees it torn.

use std::io::{Read, Write};

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::consensus_store::ConsensusStore;
use super::record::{Body, Record};
use super::upload::{UploadId, UploadState, chunk_count};
use super::{
    BLOB_CHUNK_BYTES, CF_ACL, CF_BLOBS, CF_META, CF_VALUES, StorageError, Store, blob_chunk_key,
    slot_key,
};
use crate::consensus::{Config, GroupId, GroupState, SYSTEM_GROUP};
use crate::protocol::Key;
use crate::storage::stream::{FrameReader, FrameWriter, SnapshotError, SnapshotItem};

const RECORD: u8 = 1;
const CHUNK: u8 = 2;
const COUNTER: u8 = 3;
const UPLOAD: u8 = 4;
const UPLOAD_CHUNK: u8 = 5;
/// Bytes of records gathered before an install batch is written.
const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A group that an install replaced, as the consensus core must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub group: GroupId,
    pub state: GroupState,
    pub config: Option<Config>,
}

fn snapshot_error(e: StorageError) -> SnapshotError {
    SnapshotError::Io(std::io::Error::other(e.to_string()))
}

fn rocks(e: rocksdb::Error) -> SnapshotError {
    snapshot_error(StorageError::Rocks(e))
}

fn put_sized(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_sized<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let malformed = SnapshotError::Malformed("record item");
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or(malformed)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(SnapshotError::Malformed("record item"));
    }
    let (head, tail) = rest.split_at(len);
    *bytes = tail;
    Ok(head)
}

fn table_prefix(table: &str) -> Vec<u8> {
    let mut prefix = table.as_bytes().to_vec();
    prefix.push(b'.');
    prefix
}

impl Store {
    /// Writes a snapshot of `groups` (each with the tables whose keys it holds) to `out`.
    pub fn export_groups(
        &self,
        groups: &[(GroupId, Vec<String>)],
        out: impl Write,
    ) -> Result<(), SnapshotError> {
        let snapshot = self.db.snapshot();
        let consensus = ConsensusStore::new(self);
        let mut w = FrameWriter::new(out);
        for (group, tables) in groups {
            let state = consensus
                .state_in(&snapshot, group)
                .map_err(snapshot_error)?;
            let config = if group == SYSTEM_GROUP {
                consensus.config_in(&snapshot).map_err(snapshot_error)?
            } else {
                None
            };
            w.item(&SnapshotItem::Group {
                group: group.clone(),
                state,
                config,
            })?;
            for table in tables {
                let prefix = table_prefix(table);
                let mode = IteratorMode::From(&prefix, Direction::Forward);
                for item in snapshot.iterator_cf(self.cf(CF_VALUES), mode) {
                    let (key, value) = item.map_err(rocks)?;
                    if !key.starts_with(&prefix) {
                        break;
                    }
                    let acl = snapshot
                        .get_cf(self.cf(CF_ACL), &key)
                        .map_err(rocks)?
                        .unwrap_or_default();
                    let mut data = vec![RECORD];
                    put_sized(&mut data, &key);
                    put_sized(&mut data, &value);
                    put_sized(&mut data, &acl);
                    w.item(&SnapshotItem::Data(Bytes::from(data)))?;
                    let record = Record::decode(&value)
                        .ok_or(SnapshotError::Malformed("a stored record does not decode"))?;
                    if let Body::Blob { blob_id, len } = record.body
                        && len > 0
                    {
                        let start = blob_id.to_be_bytes();
                        let mode = IteratorMode::From(&start, Direction::Forward);
                        for chunk in snapshot.iterator_cf(self.cf(CF_BLOBS), mode) {
                            let (chunk_key, chunk) = chunk.map_err(rocks)?;
                            if !chunk_key.starts_with(&start) {
                                break;
                            }
                            let mut data = Vec::with_capacity(chunk.len() + 1);
                            data.push(CHUNK);
                            data.extend_from_slice(&chunk);
                            w.item(&SnapshotItem::Data(Bytes::from(data)))?;
                        }
                    }
                }
                let counter = snapshot
                    .get_cf(self.cf(CF_META), slot_key(table))
                    .map_err(rocks)?;
                if let Some(counter) = counter.filter(|c| c.len() == 8) {
                    let mut data = vec![COUNTER];
                    put_sized(&mut data, table.as_bytes());
                    data.extend_from_slice(&counter);
                    w.item(&SnapshotItem::Data(Bytes::from(data)))?;
                }
                let start = Store::uploads_start(table);
                let mode = IteratorMode::From(&start, Direction::Forward);
                let uploads = self
                    .uploads_of(table, snapshot.iterator_cf(self.cf(CF_META), mode))
                    .map_err(snapshot_error)?;
                for (upload, state) in uploads {
                    let mut data = vec![UPLOAD];
                    put_sized(&mut data, table.as_bytes());
                    data.extend_from_slice(&upload.origin.to_be_bytes());
                    data.extend_from_slice(&upload.id.to_be_bytes());
                    put_sized(&mut data, &state.encode());
                    w.item(&SnapshotItem::Data(Bytes::from(data)))?;
                    for index in 0..chunk_count(state.total) as u32 {
                        let key = blob_chunk_key(state.blob_id, index);
                        if let Some(chunk) =
                            snapshot.get_cf(self.cf(CF_BLOBS), key).map_err(rocks)?
                        {
                            let mut data = Vec::with_capacity(chunk.len() + 5);
                            data.push(UPLOAD_CHUNK);
                            data.extend_from_slice(&index.to_be_bytes());
                            data.extend_from_slice(&chunk);
                            w.item(&SnapshotItem::Data(Bytes::from(data)))?;
                        }
                    }
                }
            }
        }
        w.finish()?;
        Ok(())
    }

    /// Installs a snapshot stream (already verified whole by the caller) group by group;
    /// `tables_of` names the tables a group's keys live in. A group the stream holds at a
    /// state not newer than this node's is skipped. Returns the groups installed.
    pub fn install_groups(
        &self,
        input: impl Read,
        tables_of: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<Vec<Installed>, SnapshotError> {
        let mut reader = FrameReader::new(input);
        let mut installed = Vec::new();
        let mut current: Option<Install<'_>> = None;
        let mut skipping = false;
        while let Some(item) = reader.next_item()? {
            match item {
                SnapshotItem::Group {
                    group,
                    state,
                    config,
                } => {
                    if let Some(done) = current.take() {
                        installed.push(done.finish()?);
                    }
                    let have = ConsensusStore::new(self)
                        .state(&group)
                        .map_err(snapshot_error)?;
                    skipping = state.applied <= have.applied;
                    if !skipping {
                        let tables = tables_of(&group);
                        current = Some(Install::begin(self, group, state, config, tables)?);
                    }
                }
                SnapshotItem::Data(data) if !skipping => match current.as_mut() {
                    Some(install) => install.data(&data)?,
                    None => return Err(SnapshotError::Malformed("data before any group")),
                },
                SnapshotItem::Data(_) | SnapshotItem::End { .. } => {}
            }
        }
        if let Some(done) = current.take() {
            installed.push(done.finish()?);
        }
        Ok(installed)
    }

    /// Deletes every record of `tables` (values, ACLs, blob chunks, write counters).
    pub fn wipe_tables(&self, tables: &[String]) -> Result<(), StorageError> {
        for table in tables {
            let prefix = table_prefix(table);
            let mut end = prefix.clone();
            if let Some(last) = end.last_mut() {
                *last += 1; // "T." .. "T/"
            }
            let mut batch = WriteBatch::default();
            let mode = IteratorMode::From(&prefix, Direction::Forward);
            for item in self.db.iterator_cf(self.cf(CF_VALUES), mode) {
                let (key, value) = item?;
                if !key.starts_with(&prefix) {
                    break;
                }
                if let Some(Record {
                    body: Body::Blob { blob_id, .. },
                    ..
                }) = Record::decode(&value)
                {
                    self.delete_blob_chunks(&mut batch, blob_id);
                }
            }
            batch.delete_range_cf(self.cf(CF_VALUES), &prefix, &end);
            batch.delete_range_cf(self.cf(CF_ACL), &prefix, &end);
            batch.delete_cf(self.cf(CF_META), slot_key(table));
            self.wipe_uploads(&mut batch, table)?;
            self.db.write_opt(batch, &self.unsynced)?;
        }
        Ok(())
    }

    /// At start: a group whose install was interrupted holds a mix of old and new records;
    /// wipe it and its state, so it catches up from nothing. Returns the groups wiped.
    pub fn wipe_interrupted_installs(
        &self,
        tables_of: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<Vec<GroupId>, StorageError> {
        let consensus = ConsensusStore::new(self);
        let (_, interrupted) = consensus.recover()?;
        for group in &interrupted {
            self.wipe_tables(&tables_of(group))?;
            let mut batch = WriteBatch::default();
            consensus.stage_state(&mut batch, group, &GroupState::default());
            consensus.stage_installing(&mut batch, group, false);
            self.db.write_opt(batch, &self.synced)?;
            tracing::warn!(group = %group, "a snapshot install was interrupted; the group starts over");
        }
        Ok(interrupted)
    }
}

/// One group being installed.
struct Install<'a> {
    store: &'a Store,
    group: GroupId,
    state: GroupState,
    config: Option<Config>,
    /// Records gathered for the next batch: key, record (with the new blob id), ACL.
    records: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    bytes: usize,
    /// The blob being filled: its new id and next chunk index.
    blob: Option<(u64, u32)>,
    /// The upload being filled: its new blob id and chunk count.
    upload: Option<(u64, u64)>,
    /// The tables the group's keys live in.
    tables: Vec<String>,
}

impl<'a> Install<'a> {
    fn begin(
        store: &'a Store,
        group: GroupId,
        state: GroupState,
        config: Option<Config>,
        tables: Vec<String>,
    ) -> Result<Install<'a>, SnapshotError> {
        let consensus = ConsensusStore::new(store);
        let mut mark = WriteBatch::default();
        consensus.stage_installing(&mut mark, &group, true);
        store.db.write_opt(mark, &store.synced).map_err(rocks)?;
        store.wipe_tables(&tables).map_err(snapshot_error)?;
        Ok(Install {
            store,
            group,
            state,
            config,
            records: Vec::new(),
            bytes: 0,
            blob: None,
            upload: None,
            tables,
        })
    }

    fn data(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        let (&tag, mut rest) = data
            .split_first()
            .ok_or(SnapshotError::Malformed("empty data item"))?;
        match tag {
            RECORD => {
                let key = take_sized(&mut rest)?.to_vec();
                let value = take_sized(&mut rest)?;
                let acl = take_sized(&mut rest)?.to_vec();
                let mut record = Record::decode(value)
                    .ok_or(SnapshotError::Malformed("a record does not decode"))?;
                self.blob = None;
                self.upload = None;
                if let Body::Blob { blob_id, len } = &mut record.body
                    && *len > 0
                {
                    let id = self
                        .store
                        .next_blob_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *blob_id = id;
                    self.blob = Some((id, 0));
                }
                // The flag follows the ACL that comes with the record (a record from a
                // node of an older version may lack it).
                record.has_acl = !acl.is_empty();
                self.bytes += key.len() + value.len() + acl.len();
                self.records.push((key, record.encode(), acl));
                // The record goes before its chunks: if an install is cut short, the wipe
                // at start finds the blob through it.
                if self.blob.is_some() || self.bytes >= INSTALL_BATCH_BYTES {
                    self.flush()?;
                }
            }
            CHUNK => {
                let Some((id, index)) = self.blob.as_mut() else {
                    return Err(SnapshotError::Malformed("a blob chunk without its record"));
                };
                if rest.len() > BLOB_CHUNK_BYTES {
                    return Err(SnapshotError::Malformed("a blob chunk is too large"));
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(self.store.cf(CF_BLOBS), blob_chunk_key(*id, *index), rest);
                *index += 1;
                self.store
                    .db
                    .write_opt(batch, &self.store.unsynced)
                    .map_err(rocks)?;
            }
            COUNTER => {
                let table = take_sized(&mut rest)?;
                if rest.len() != 8 {
                    return Err(SnapshotError::Malformed("a counter item"));
                }
                let mut key = b"slot/".to_vec();
                key.extend_from_slice(table);
                let mut batch = WriteBatch::default();
                batch.put_cf(self.store.cf(CF_META), key, rest);
                self.store
                    .db
                    .write_opt(batch, &self.store.unsynced)
                    .map_err(rocks)?;
            }
            UPLOAD => {
                let table = std::str::from_utf8(take_sized(&mut rest)?)
                    .map_err(|_| SnapshotError::Malformed("an upload's table"))?
                    .to_string();
                let (origin, tail) = rest
                    .split_first_chunk::<8>()
                    .ok_or(SnapshotError::Malformed("an upload item"))?;
                let (id, mut tail) = tail
                    .split_first_chunk::<8>()
                    .ok_or(SnapshotError::Malformed("an upload item"))?;
                let state = UploadState::decode(take_sized(&mut tail)?)
                    .ok_or(SnapshotError::Malformed("an upload's state"))?;
                if !self.tables.contains(&table) {
                    return Err(SnapshotError::Malformed(
                        "an upload of another group's table",
                    ));
                }
                let upload = UploadId {
                    origin: u64::from_be_bytes(*origin),
                    id: u64::from_be_bytes(*id),
                };
                // Records first, then the upload record before its chunks (a cut-short
                // install's wipe finds them through it).
                self.flush()?;
                let total = state.total;
                let mut batch = WriteBatch::default();
                let blob_id = self
                    .store
                    .put_installed_upload(&mut batch, &table, upload, state);
                self.store
                    .db
                    .write_opt(batch, &self.store.unsynced)
                    .map_err(rocks)?;
                self.blob = None;
                self.upload = Some((blob_id, chunk_count(total)));
            }
            UPLOAD_CHUNK => {
                let Some((blob_id, chunks)) = self.upload else {
                    return Err(SnapshotError::Malformed(
                        "an upload chunk without its upload",
                    ));
                };
                let (index, bytes) = rest
                    .split_first_chunk::<4>()
                    .ok_or(SnapshotError::Malformed("an upload chunk"))?;
                let index = u32::from_be_bytes(*index);
                if u64::from(index) >= chunks || bytes.len() > BLOB_CHUNK_BYTES {
                    return Err(SnapshotError::Malformed("an upload chunk does not fit"));
                }
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.store.cf(CF_BLOBS),
                    blob_chunk_key(blob_id, index),
                    bytes,
                );
                self.store
                    .db
                    .write_opt(batch, &self.store.unsynced)
                    .map_err(rocks)?;
            }
            _ => return Err(SnapshotError::Malformed("unknown data item")),
        }
        Ok(())
    }

    /// Writes the gathered records, under their keys' locks (a concurrent purge of expired
    /// records reads and writes keys under them too).
    fn flush(&mut self) -> Result<(), SnapshotError> {
        if self.records.is_empty() {
            return Ok(());
        }
        let keys: Vec<Key> = self
            .records
            .iter()
            .filter_map(|(k, _, _)| std::str::from_utf8(k).ok().map(Key::system))
            .collect();
        let mut batch = self.store.batch(keys.iter());
        for (key, record, acl) in self.records.drain(..) {
            batch.raw().put_cf(self.store.cf(CF_VALUES), &key, record);
            if !acl.is_empty() {
                batch.raw().put_cf(self.store.cf(CF_ACL), &key, acl);
            }
        }
        self.bytes = 0;
        batch.write(false).map_err(snapshot_error)
    }

    /// The last batch: the group's state (and configuration), the mark removed, synced.
    fn finish(mut self) -> Result<Installed, SnapshotError> {
        self.flush()?;
        let consensus = ConsensusStore::new(self.store);
        let mut batch = WriteBatch::default();
        consensus.stage_state(&mut batch, &self.group, &self.state);
        consensus.stage_forget_through(&mut batch, &self.group, self.state.applied);
        if let Some(config) = &self.config {
            let newer = consensus
                .config()
                .map_err(snapshot_error)?
                .is_none_or(|have| config.epoch > have.epoch);
            if newer {
                consensus.stage_config(&mut batch, config);
            }
        }
        consensus.stage_installing(&mut batch, &self.group, false);
        self.store
            .db
            .write_opt(batch, &self.store.synced)
            .map_err(rocks)?;
        Ok(Installed {
            group: self.group,
            state: self.state,
            config: self.config,
        })
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
