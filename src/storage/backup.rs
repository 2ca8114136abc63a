//! `atlas kv backup`: every client key of the store at one point in time (one RocksDB
//! snapshot), as a stream a client writes to a file and `atlas kv restore` replays as
//! ordinary writes.
//!
//! Format (version 1), lines ended by `\n`:
//!
//! ```text
//! ATLAS-BACKUP 1 <unix-ms>
//! V <KEY> <I|B> <worm-until-ms|-> <expires-ms|-> <length>   then <length> bytes and `\n`
//! A <KEY> <READ|WRITE|OWNER> <principal>
//! END <values> <acl-lines>
//! ```
//!
//! Every `V` comes before every `A` (a restore writes the values while the keys are public,
//! then sets the ACLs). System tables (`ATLAS…`) are left out.

use rocksdb::{Direction, IteratorMode};

use super::{Acl, Body, CF_ACL, CF_BLOBS, CF_VALUES, Record, StorageError, Store};
use crate::protocol::key::is_system_table;

/// Bytes handed to the sink at a time.
pub const BACKUP_CHUNK_BYTES: usize = 64 * 1024;

struct Chunker<'f> {
    buffer: Vec<u8>,
    sink: &'f mut dyn FnMut(Vec<u8>) -> bool,
    open: bool,
}

impl Chunker<'_> {
    /// Adds bytes, handing full chunks of `BACKUP_CHUNK_BYTES` to the sink (a connection
    /// queues a bounded number of frames, so a frame's size bounds what waits there).
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = BACKUP_CHUNK_BYTES - self.buffer.len();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = later;
            if self.buffer.len() == BACKUP_CHUNK_BYTES {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.open && !self.buffer.is_empty() {
            self.open = (self.sink)(std::mem::take(&mut self.buffer));
        }
        self.buffer.clear();
    }
}

fn is_system_key(key: &[u8]) -> bool {
    let table = key.split(|&b| b == b'.').next().unwrap_or(key);
    is_system_table(&String::from_utf8_lossy(table))
}

impl Store {
    /// Streams a backup to `sink` in chunks of at most `BACKUP_CHUNK_BYTES`; stops early
    /// when `sink` returns false. Memory stays at one chunk plus one blob chunk.
    pub fn backup(
        &self,
        now_ms: i64,
        sink: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<(), StorageError> {
        let snapshot = self.db.snapshot();
        let mut out = Chunker {
            buffer: Vec::with_capacity(BACKUP_CHUNK_BYTES),
            sink,
            open: true,
        };
        out.put(format!("ATLAS-BACKUP 1 {now_ms}\n").as_bytes());
        let (mut values, mut acls) = (0u64, 0u64);
        for item in snapshot.iterator_cf(self.cf(CF_VALUES), IteratorMode::Start) {
            let (key, bytes) = item?;
            if is_system_key(&key) {
                continue;
            }
            let record = Record::decode(&bytes)
                .ok_or_else(|| StorageError::Corrupt("record in a backup".into()))?;
            if record.is_expired(now_ms) {
                continue;
            }
            let instant = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
            let (kind, len) = match &record.body {
                Body::Inline(v) => ("I", v.len() as u64),
                Body::Blob { len, .. } => ("B", *len),
            };
            out.put(
                format!(
                    "V {} {kind} {} {} {len}\n",
                    String::from_utf8_lossy(&key),
                    instant(record.worm_until_ms),
                    instant(record.expires_ms)
                )
                .as_bytes(),
            );
            match &record.body {
                Body::Inline(v) => out.put(v),
                Body::Blob { blob_id, len } if *len > 0 => {
                    let start = blob_id.to_be_bytes();
                    let mode = IteratorMode::From(&start, Direction::Forward);
                    let mut written = 0u64;
                    for chunk in snapshot.iterator_cf(self.cf(CF_BLOBS), mode) {
                        let (chunk_key, chunk) = chunk?;
                        if !chunk_key.starts_with(&start) || written >= *len {
                            break;
                        }
                        written += chunk.len() as u64;
                        out.put(&chunk);
                    }
                    if written != *len {
                        return Err(StorageError::Corrupt(format!(
                            "blob {blob_id}: {written} of {len} bytes"
                        )));
                    }
                }
                Body::Blob { .. } => {}
            }
            out.put(b"\n");
            values += 1;
            if !out.open {
                return Ok(());
            }
        }
        for item in snapshot.iterator_cf(self.cf(CF_ACL), IteratorMode::Start) {
            let (key, bytes) = item?;
            if is_system_key(&key) {
                continue;
            }
            let acl = Acl::decode(&bytes).ok_or_else(|| StorageError::Corrupt("acl".into()))?;
            let key = String::from_utf8_lossy(&key);
            for (perm, names) in [
                ("READ", &acl.readers),
                ("WRITE", &acl.writers),
                ("OWNER", &acl.owners),
            ] {
                for name in names {
                    out.put(format!("A {key} {perm} {name}\n").as_bytes());
                    acls += 1;
                }
            }
        }
        out.put(format!("END {values} {acls}\n").as_bytes());
        out.flush();
        Ok(())
    }
}

/// One entry of a backup file, as `atlas kv restore` replays it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupEntry {
    Value {
        key: String,
        blob: bool,
        worm_until_ms: Option<i64>,
        expires_ms: Option<i64>,
        bytes: Vec<u8>,
    },
    Acl {
        key: String,
        perm: String,
        principal: String,
    },
}

/// Reads a backup file's entries; `Err` names what is wrong (and where).
pub fn read_backup(mut input: impl std::io::BufRead) -> Result<Vec<BackupEntry>, String> {
    let mut line = Vec::new();
    let mut next_line = |input: &mut dyn std::io::BufRead| -> Result<String, String> {
        line.clear();
        input
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read: {e}"))?;
        if line.pop() != Some(b'\n') {
            return Err("truncated: no END line".into());
        }
        String::from_utf8(line.clone()).map_err(|_| "a line is not UTF-8".to_string())
    };
    let header = next_line(&mut input)?;
    if !header.starts_with("ATLAS-BACKUP 1 ") {
        return Err(format!("not an Atlas backup (version 1): {header:.60}"));
    }
    let mut entries = Vec::new();
    loop {
        let text = next_line(&mut input)?;
        let words: Vec<&str> = text.split(' ').collect();
        let instant = |w: &str| -> Result<Option<i64>, String> {
            if w == "-" {
                Ok(None)
            } else {
                w.parse()
                    .map(Some)
                    .map_err(|_| format!("bad instant in {text:.80}"))
            }
        };
        match words.as_slice() {
            ["V", key, kind @ ("I" | "B"), worm, expires, len] => {
                let len: usize = len
                    .parse()
                    .map_err(|_| format!("bad length in {text:.80}"))?;
                let mut bytes = vec![0; len];
                input
                    .read_exact(&mut bytes)
                    .map_err(|_| format!("truncated value of {key}"))?;
                let mut end = [0u8];
                input
                    .read_exact(&mut end)
                    .map_err(|_| format!("truncated after {key}"))?;
                if end != *b"\n" {
                    return Err(format!("malformed value of {key}"));
                }
                entries.push(BackupEntry::Value {
                    key: key.to_string(),
                    blob: *kind == "B",
                    worm_until_ms: instant(worm)?,
                    expires_ms: instant(expires)?,
                    bytes,
                });
            }
            ["A", key, perm @ ("READ" | "WRITE" | "OWNER"), principal] => {
                entries.push(BackupEntry::Acl {
                    key: key.to_string(),
                    perm: perm.to_string(),
                    principal: principal.to_string(),
                })
            }
            ["END", values, acls] => {
                let count =
                    |kind: fn(&BackupEntry) -> bool| entries.iter().filter(|e| kind(e)).count();
                let v = count(|e| matches!(e, BackupEntry::Value { .. }));
                let a = count(|e| matches!(e, BackupEntry::Acl { .. }));
                if values.parse() != Ok(v) || acls.parse() != Ok(a) {
                    return Err(format!(
                        "END says {values} values and {acls} ACL lines, the file has {v} and {a}"
                    ));
                }
                return Ok(entries);
            }
            _ => return Err(format!("malformed line: {text:.80}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::protocol::Perm;
    use crate::storage::Change;

    #[test]
    fn a_backup_reads_back_every_value_blob_and_acl() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let put = |key: &str, change: Change| store.change_for_test(key, change);
        put(
            "t.a",
            Change::PutInline {
                value: b"two words\r".to_vec(),
                worm_until_ms: Some(i64::MAX),
                expires_ms: None,
            },
        );
        let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        put(
            "t.b",
            Change::PutBlob {
                bytes: blob.clone(),
                worm_until_ms: None,
            },
        );
        let mut acl = Acl::default();
        acl.grant("alice", Perm::Owner);
        acl.grant("bob", Perm::Read);
        put("t.a", Change::SetAcl(acl));
        let mut bytes = Vec::new();
        let mut chunks = 0;
        store
            .backup(5, &mut |chunk| {
                assert!(chunk.len() <= BACKUP_CHUNK_BYTES);
                chunks += 1;
                bytes.extend_from_slice(&chunk);
                true
            })
            .unwrap();
        assert!(chunks > 10, "streamed in chunks: {chunks}");
        let entries = read_backup(&bytes[..]).unwrap();
        assert_eq!(entries.len(), 4, "{:?}", &entries[2..]);
        assert_eq!(
            entries[0],
            BackupEntry::Value {
                key: "T.A".into(),
                blob: false,
                worm_until_ms: Some(i64::MAX),
                expires_ms: None,
                bytes: b"two words\r".to_vec()
            }
        );
        assert!(
            matches!(&entries[1], BackupEntry::Value { key, blob: true, bytes, .. } if key == "T.B" && *bytes == blob)
        );
        assert_eq!(
            &entries[2..],
            [
                BackupEntry::Acl {
                    key: "T.A".into(),
                    perm: "READ".into(),
                    principal: "bob".into()
                },
                BackupEntry::Acl {
                    key: "T.A".into(),
                    perm: "OWNER".into(),
                    principal: "alice".into()
                }
            ]
        );
        // A cut or altered file is refused, naming the problem.
        assert!(read_backup(&bytes[..bytes.len() - 3]).is_err());
        let mut wrong = bytes.clone();
        let at = wrong.len() - 4;
        wrong[at] = b'9';
        assert!(read_backup(&wrong[..]).unwrap_err().contains("END says"));
        assert!(
            read_backup(&b"hello\n"[..])
                .unwrap_err()
                .contains("not an Atlas backup")
        );
    }
}
