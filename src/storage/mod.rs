//! RocksDB storage: values, chunked blobs, ACL metadata, and the column families consensus
//! persists into.
//!
//! Mutations of one key are serialised by a striped lock and applied as one write batch
//! (record, blob chunks, ACL and the table's slot counter together). With `durability:
//! strict` every batch is written with a synced WAL; concurrent writers on different keys
//! reach RocksDB at the same time and its write-group leader syncs them together (group
//! commit), so N concurrent clients share syncs instead of queueing N of them.

pub mod acl;
pub mod backup;
pub mod batch;
pub mod consensus_store;
pub mod feed;
mod read;
pub mod record;
pub mod snapshot;
pub mod stream;
pub mod upload;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode, MergeOperands, Options,
    ReadOptions, ReadTier, WriteBatch, WriteOptions,
};

pub use acl::Acl;
pub use batch::Batch;
pub use record::{Body, Record};

use crate::config::Durability;
use crate::protocol::Key;

/// Column families. `acceptor` holds the consensus state (votes, group states).
pub const CF_VALUES: &str = "values";
pub const CF_BLOBS: &str = "blobs";
pub const CF_ACL: &str = "acl";
pub const CF_META: &str = "meta";
pub const CF_ACCEPTOR: &str = "acceptor";
const COLUMN_FAMILIES: [&str; 5] = [CF_VALUES, CF_BLOBS, CF_ACL, CF_META, CF_ACCEPTOR];
/// Every memtable of the store together stays within this (RocksDB's write buffer
/// manager): memory and the WAL replayed at start do not grow with the write rate.
const MEMTABLE_BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// The block cache every family shares.
const BLOCK_CACHE_BYTES: usize = 32 * 1024 * 1024;
/// WAL files are recycled once they exceed this (their memtables are flushed first).
const MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;

/// Blobs are stored in chunks of this size, so no RocksDB value is ever larger.
pub const BLOB_CHUNK_BYTES: usize = 1024 * 1024;
const LOCK_STRIPES: usize = 1024;
/// The id of every empty blob (real ids start at 1).
const EMPTY_BLOB_ID: u64 = 0;
const META_SLOT_PREFIX: &[u8] = b"slot/";
/// History the change feed keeps until `limits.watch_history_bytes` is applied.
const DEFAULT_FEED_BYTES: usize = crate::config::DEFAULT_WATCH_HISTORY_BYTES as usize;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage error: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("storage corruption: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    pub live_data_bytes: u64,
    pub sst_files_bytes: u64,
    pub memtable_bytes: u64,
    pub pending_compaction_bytes: u64,
    pub block_cache_hits: u64,
    pub block_cache_misses: u64,
}

/// What the owner of a key found under the lock.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// The live record (an expired one reads as absent).
    pub record: Option<Record>,
    /// The key's ACL (from `Store::read`: only when a live record may have one).
    pub acl: Acl,
}

/// What to do with a key, decided under its lock.
#[derive(Debug)]
pub enum Change {
    Keep,
    PutInline {
        value: Vec<u8>,
        worm_until_ms: Option<i64>,
        /// Gone after this instant, writable before it.
        expires_ms: Option<i64>,
    },
    PutBlob {
        bytes: Vec<u8>,
        worm_until_ms: Option<i64>,
    },
    /// A blob staged chunk by chunk (`upload.rs`), complete, becomes the key's value.
    PutStaged {
        upload: upload::UploadId,
        len: u64,
    },
    Delete,
    SetAcl(Acl),
}

pub struct Store {
    db: DB,
    /// Kept for its statistics (block-cache tickers, when on).
    options: Options,
    statistics: bool,
    /// `durability: strict`: single-node writes are synced.
    strict: bool,
    synced: WriteOptions,
    unsynced: WriteOptions,
    /// Reads from anywhere (memtables, block cache, files).
    from_anywhere: ReadOptions,
    /// Reads from memory only: an answer that needs the files is `Incomplete`.
    from_memory: ReadOptions,
    locks: Vec<Mutex<()>>,
    next_blob_id: AtomicU64,
    /// Committed changes, for `WATCH`.
    feed: feed::Feed,
}

fn add_u64(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let decode = |b: &[u8]| b.try_into().map(u64::from_be_bytes).unwrap_or(0);
    let mut total = existing.map(decode).unwrap_or(0);
    for op in operands {
        total = total.wrapping_add(decode(op));
    }
    Some(total.to_be_bytes().to_vec())
}

impl Store {
    pub fn open(dir: &Path, durability: Durability) -> Result<Store, StorageError> {
        Store::open_with(dir, durability, false)
    }

    /// `open`, with RocksDB's statistics on or off (`atlas.rocksdb_statistics`).
    pub fn open_with(
        dir: &Path,
        durability: Durability,
        statistics: bool,
    ) -> Result<Store, StorageError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_keep_log_file_num(4);
        options.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        options.set_max_total_wal_size(MAX_WAL_BYTES);
        // When asked for, tickers only (the block-cache hit and miss counts the metrics
        // report): histograms and timers cost every read and write and nothing reads them.
        if statistics {
            options.enable_statistics();
            options.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        }
        // One block cache for every family (RocksDB's default is one per family).
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let descriptors = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_options = Options::default();
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            cf_options.set_block_based_table_factory(&table);
            if *name == CF_META {
                cf_options.set_merge_operator_associative("u64_add", add_u64);
            }
            ColumnFamilyDescriptor::new(*name, cf_options)
        });
        refuse_unknown_families(&options, dir)?;
        let db = DB::open_cf_descriptors(&options, dir, descriptors)?;
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        let mut from_memory = ReadOptions::default();
        from_memory.set_read_tier(ReadTier::BlockCache);
        let mut store = Store {
            db,
            options,
            statistics,
            strict: durability == Durability::Strict,
            synced,
            unsynced: WriteOptions::default(),
            from_anywhere: ReadOptions::default(),
            from_memory,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            next_blob_id: AtomicU64::new(0),
            feed: feed::Feed::new(DEFAULT_FEED_BYTES, 0),
        };
        // A single node numbers its changes above every change made before (each one raised
        // its table's counter by one).
        store.feed = feed::Feed::new(DEFAULT_FEED_BYTES, store.changes_so_far()?);
        let next = store.last_blob_id()?.map_or(1, |id| id + 1);
        store.next_blob_id.store(next, Ordering::Relaxed);
        Ok(store)
    }

    /// The change feed `WATCH` reads.
    pub fn feed(&self) -> &feed::Feed {
        &self.feed
    }

    /// The sum of every table's write counter.
    fn changes_so_far(&self) -> Result<u64, StorageError> {
        let mut total = 0u64;
        let mode = IteratorMode::From(META_SLOT_PREFIX, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_META), mode) {
            let (key, value) = item?;
            if !key.starts_with(META_SLOT_PREFIX) {
                break;
            }
            let n = value
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            total = total.saturating_add(n);
        }
        Ok(total)
    }

    /// Whether single-node writes are synced (`durability: strict`).
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // The families are created at open; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn last_blob_id(&self) -> Result<Option<u64>, StorageError> {
        match self
            .db
            .iterator_cf(self.cf(CF_BLOBS), IteratorMode::End)
            .next()
        {
            None => Ok(None),
            Some(item) => {
                let (key, _) = item?;
                let id = key
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes);
                id.map(Some)
                    .ok_or_else(|| StorageError::Corrupt("blob chunk key".into()))
            }
        }
    }

    fn stripe(&self, key: &Key) -> usize {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        (hasher.finish() as usize) % LOCK_STRIPES
    }

    /// Reads `key` under its lock, lets `decide` choose a change, and applies it atomically
    /// (and durably, per the configured durability) before returning.
    pub fn update<T, E>(
        &self,
        key: &Key,
        now_ms: i64,
        decide: impl FnOnce(&Current) -> Result<(Change, T), E>,
    ) -> Result<T, E>
    where
        E: From<StorageError>,
    {
        let mut batch = self.batch([key]);
        let current = batch.read(key, now_ms)?;
        let (change, result) = decide(&current)?;
        batch.change(key, now_ms, change)?;
        batch.write(self.strict)?;
        Ok(result)
    }

    /// An id no blob on this node has (ids are recovered from the chunks at start).
    fn new_blob_id(&self) -> u64 {
        self.next_blob_id.fetch_add(1, Ordering::Relaxed)
    }

    fn delete_blob_chunks(&self, batch: &mut WriteBatch, blob_id: u64) {
        if blob_id == EMPTY_BLOB_ID {
            return;
        }
        batch.delete_range_cf(
            self.cf(CF_BLOBS),
            blob_id.to_be_bytes(),
            blob_id.wrapping_add(1).to_be_bytes(),
        );
    }

    /// Number of writes applied to `table` so far (its last log position on a single node).
    pub fn table_slot(&self, table: &str) -> Result<u64, StorageError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META), slot_key(table))?
            .and_then(|b| b.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Names of tables that hold at least one record.
    pub fn tables(&self) -> Result<Vec<String>, StorageError> {
        let mut tables: Vec<String> = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(CF_VALUES));
        it.seek_to_first();
        while let Some(key) = it.key() {
            let name = key.split(|&b| b == b'.').next().unwrap_or(key);
            // Past every key of this table: its name followed by the byte after `.`.
            let mut next = name.to_vec();
            next.push(b'.' + 1);
            tables.push(String::from_utf8_lossy(name).into_owned());
            it.seek(&next);
        }
        it.status()?;
        Ok(tables)
    }

    /// Up to `limit` keys of `tables` whose value has expired at `now_ms`.
    pub fn expired_keys(
        &self,
        tables: &[String],
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Key>, StorageError> {
        let mut out = Vec::new();
        for table in tables {
            let prefix = format!("{table}.");
            let mode = IteratorMode::From(prefix.as_bytes(), Direction::Forward);
            for item in self.db.iterator_cf(self.cf(CF_VALUES), mode) {
                let (key, bytes) = item?;
                if !key.starts_with(prefix.as_bytes()) || out.len() >= limit {
                    break;
                }
                if Record::decode(&bytes).is_some_and(|r| r.is_expired(now_ms))
                    && let Ok(key) = Key::parse(&key)
                {
                    out.push(key);
                }
            }
        }
        Ok(out)
    }

    /// Deletes expired WORM records (reads already hide them); returns how many.
    pub fn purge_expired(&self, now_ms: i64) -> Result<usize, StorageError> {
        let mut expired = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_VALUES), IteratorMode::Start) {
            let (key, bytes) = item?;
            if Record::decode(&bytes).is_some_and(|r| r.is_expired(now_ms)) {
                expired.push(key);
            }
        }
        let mut purged = 0;
        for raw in expired {
            let Ok(text) = std::str::from_utf8(&raw) else {
                continue;
            };
            let key = Key::system(text);
            self.update(&key, now_ms, |current| {
                purged += usize::from(current.record.is_none());
                Ok::<_, StorageError>((Change::Keep, ()))
            })?;
        }
        Ok(purged)
    }

    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_META), name.as_bytes())?)
    }

    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), name.as_bytes(), value);
        Ok(self.db.write_opt(batch, &self.synced)?)
    }

    /// Writes a record the server itself owns (system tables), bypassing client rules.
    pub fn put_system(&self, key: &Key, value: Vec<u8>, now_ms: i64) -> Result<(), StorageError> {
        self.update(key, now_ms, |_| {
            Ok::<_, StorageError>((
                Change::PutInline {
                    value,
                    worm_until_ms: None,
                    expires_ms: None,
                },
                (),
            ))
        })
    }

    /// A RocksDB property, e.g. `rocksdb.estimate-live-data-size`, summed over families.
    pub fn property_sum(&self, name: &str) -> u64 {
        COLUMN_FAMILIES
            .iter()
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
            })
            .sum()
    }

    /// Figures an operator graphs (exported as Prometheus gauges by the edge).
    pub fn stats(&self) -> StorageStats {
        use rocksdb::statistics::Ticker;
        StorageStats {
            live_data_bytes: self.property_sum("rocksdb.estimate-live-data-size"),
            sst_files_bytes: self.property_sum("rocksdb.total-sst-files-size"),
            memtable_bytes: self.property_sum("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: self
                .property_sum("rocksdb.estimate-pending-compaction-bytes"),
            block_cache_hits: self.ticker(Ticker::BlockCacheHit),
            block_cache_misses: self.ticker(Ticker::BlockCacheMiss),
        }
    }

    /// A statistics ticker; 0 when statistics are off (RocksDB has none to read then).
    fn ticker(&self, ticker: rocksdb::statistics::Ticker) -> u64 {
        if self.statistics {
            self.options.get_ticker_count(ticker)
        } else {
            0
        }
    }

    /// Flushes memtables and the WAL and stops background work: a clean close.
    pub fn close(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true)?;
        for cf in COLUMN_FAMILIES {
            self.db.flush_cf(self.cf(cf))?;
        }
        self.db.cancel_all_background_work(true);
        Ok(())
    }
}

/// A data directory written by an older format has column families this build does not
/// know (format 1 kept a `log` family): refuse it clearly instead of failing in RocksDB.
fn refuse_unknown_families(options: &Options, dir: &Path) -> Result<(), StorageError> {
    let Ok(existing) = DB::list_cf(options, dir) else {
        return Ok(()); // a new directory
    };
    let unknown: Vec<String> = existing
        .into_iter()
        .filter(|f| f != "default" && !COLUMN_FAMILIES.contains(&f.as_str()))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(StorageError::Corrupt(format!(
        "{} was written by an older Atlas (column families {}); this build cannot read it: \
         start from an empty data_dir",
        dir.display(),
        unknown.join(", ")
    )))
}

fn blob_chunk_key(blob_id: u64, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&blob_id.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn slot_key(table: &str) -> Vec<u8> {
    let mut key = META_SLOT_PREFIX.to_vec();
    key.extend_from_slice(table.as_bytes());
    key
}

/// What tests of storage and of the layers above share.
#[cfg(test)]
impl Store {
    /// Applies `change` to `key` (at time 0), as one write.
    pub(crate) fn change_for_test(&self, key: &str, change: Change) {
        let key = Key::parse(key.as_bytes()).expect("a valid test key");
        self.update(&key, 0, |_| Ok::<_, StorageError>((change, ())))
            .expect("a test write");
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
