//! A node's data as one byte string, for a joining node: every record of the data families
//! (`values`, `blobs`, `acl`, `meta`), the committed consensus log, and how far each group is
//! applied — read from one RocksDB snapshot, so they agree. The acceptor's own promises and
//! accepted entries are not part of it: they are that node's votes, not data.
//!
//! Format (version 1): `ATLSNAP1`, then records `[family: u8][key len: u32 BE][key]
//! [value len: u32 BE][value]`, then `[0xFF]` and the record count (u64 BE).

use rocksdb::IteratorMode;

use super::{CF_ACCEPTOR, CF_ACL, CF_BLOBS, CF_LOG, CF_META, CF_VALUES, StorageError, Store};

const MAGIC: &[u8; 8] = b"ATLSNAP1";
const END: u8 = 0xFF;
const FAMILIES: [&str; 6] = [CF_VALUES, CF_BLOBS, CF_ACL, CF_META, CF_LOG, CF_ACCEPTOR];
/// Keys of the acceptor family that travel: the applied slot of each group (`D` …).
const APPLIED_TAG: u8 = b'D';

impl Store {
    /// Exports the node's data (see the module documentation).
    pub fn export_snapshot(&self) -> Result<Vec<u8>, StorageError> {
        let snapshot = self.db.snapshot();
        let mut out = MAGIC.to_vec();
        let mut count: u64 = 0;
        for (index, name) in FAMILIES.iter().enumerate() {
            let cf = self.cf(name);
            for item in snapshot.iterator_cf(cf, IteratorMode::Start) {
                let (key, value) = item?;
                if *name == CF_ACCEPTOR && key.first() != Some(&APPLIED_TAG) {
                    continue;
                }
                out.push(index as u8);
                out.extend_from_slice(&(key.len() as u32).to_be_bytes());
                out.extend_from_slice(&key);
                out.extend_from_slice(&(value.len() as u32).to_be_bytes());
                out.extend_from_slice(&value);
                count += 1;
            }
        }
        out.push(END);
        out.extend_from_slice(&count.to_be_bytes());
        Ok(out)
    }

    /// Installs an exported snapshot into this (empty) store; returns the records written.
    /// A malformed snapshot is refused before anything is written.
    pub fn import_snapshot(&self, bytes: &[u8]) -> Result<u64, StorageError> {
        let records = parse(bytes)?;
        let mut batch = rocksdb::WriteBatch::default();
        let mut written = 0u64;
        for (family, key, value) in &records {
            batch.put_cf(self.cf(FAMILIES[*family as usize]), key, value);
            written += 1;
            if batch.size_in_bytes() > 32 * 1024 * 1024 {
                self.db.write(std::mem::take(&mut batch))?;
            }
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        let next = self.last_blob_id()?.map_or(1, |id| id + 1);
        self.next_blob_id
            .store(next, std::sync::atomic::Ordering::Relaxed);
        Ok(written)
    }
}

type SnapshotRecord<'a> = (u8, &'a [u8], &'a [u8]);

fn parse(bytes: &[u8]) -> Result<Vec<SnapshotRecord<'_>>, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("snapshot: {what}"));
    let mut rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt("not a snapshot"))?;
    let mut records = Vec::new();
    loop {
        let (&family, tail) = rest.split_first().ok_or_else(|| corrupt("truncated"))?;
        if family == END {
            let count: [u8; 8] = tail.try_into().map_err(|_| corrupt("bad trailer"))?;
            if u64::from_be_bytes(count) != records.len() as u64 {
                return Err(corrupt("record count does not match"));
            }
            return Ok(records);
        }
        if family as usize >= FAMILIES.len() {
            return Err(corrupt("unknown family"));
        }
        let (key, tail) = take_sized(tail).ok_or_else(|| corrupt("truncated key"))?;
        let (value, tail) = take_sized(tail).ok_or_else(|| corrupt("truncated value"))?;
        records.push((family, key, value));
        rest = tail;
    }
}

fn take_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::protocol::Key;

    #[test]
    fn a_snapshot_carries_data_and_log_but_not_votes() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let source = Store::open(a.path(), Durability::Relaxed).unwrap();
        let key = Key::parse(b"T.K").unwrap();
        source.put_system(&key, b"hello".to_vec(), 0).unwrap();
        let acceptor = source.cf(CF_ACCEPTOR);
        source
            .db
            .put_cf(acceptor, b"Dgroup", 7u64.to_be_bytes())
            .unwrap();
        source.db.put_cf(acceptor, b"Pgroup", b"promise").unwrap();
        source
            .db
            .put_cf(source.cf(CF_LOG), b"entry", b"cmd")
            .unwrap();
        let bytes = source.export_snapshot().unwrap();

        let target = Store::open(b.path(), Durability::Relaxed).unwrap();
        assert!(target.import_snapshot(&bytes).unwrap() >= 3);
        let current = target.read(&key, 0).unwrap();
        let body = target.read_body(&current.record.unwrap().body).unwrap();
        assert_eq!(body, b"hello");
        let acceptor = target.cf(CF_ACCEPTOR);
        assert!(target.db.get_cf(acceptor, b"Dgroup").unwrap().is_some());
        assert!(
            target.db.get_cf(acceptor, b"Pgroup").unwrap().is_none(),
            "votes stay home"
        );
        assert!(
            target
                .db
                .get_cf(target.cf(CF_LOG), b"entry")
                .unwrap()
                .is_some()
        );

        // Damaged snapshots are refused before anything is written.
        let empty = tempfile::tempdir().unwrap();
        let fresh = Store::open(empty.path(), Durability::Relaxed).unwrap();
        assert!(fresh.import_snapshot(&bytes[..bytes.len() - 3]).is_err());
        assert!(fresh.import_snapshot(b"garbage").is_err());
        let mut wrong = bytes.clone();
        wrong[8] = 9;
        assert!(fresh.import_snapshot(&wrong).is_err());
        assert!(fresh.read(&key, 0).unwrap().record.is_none());
    }
}
