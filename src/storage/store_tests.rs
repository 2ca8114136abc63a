use super::*;

fn key(k: &str) -> Key {
    Key::parse(k.as_bytes()).unwrap()
}

fn put_blob(store: &Store, k: &Key, bytes: Vec<u8>) {
    let change = Change::PutBlob {
        bytes,
        worm_until_ms: None,
    };
    store.change_for_test(&k.to_string(), change);
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn blobs_round_trip_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    for (name, len) in [
        ("t.small", 0),
        ("t.three", 3 * 1024 * 1024 + 17),
        ("t.big", 64 * 1024 * 1024),
    ] {
        let bytes = pseudo_random(len, len as u64);
        let k = key(name);
        put_blob(&store, &k, bytes.clone());
        let record = store.read(&k, 0).unwrap().record.unwrap();
        assert_eq!(store.read_body(&record.body).unwrap(), bytes, "{name}");
    }
    // No stored chunk is larger than the chunk size.
    for item in store
        .db
        .iterator_cf(store.cf(CF_BLOBS), IteratorMode::Start)
    {
        assert!(item.unwrap().1.len() <= BLOB_CHUNK_BYTES);
    }
}

#[test]
fn replacing_a_blob_frees_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    let k = key("t.b");
    put_blob(&store, &k, vec![1; 3 * BLOB_CHUNK_BYTES]);
    put_blob(&store, &k, vec![2; 10]);
    let chunks = store
        .db
        .iterator_cf(store.cf(CF_BLOBS), IteratorMode::Start)
        .count();
    assert_eq!(chunks, 1);
    store
        .update(&k, 0, |_| Ok::<_, StorageError>((Change::Delete, ())))
        .unwrap();
    assert_eq!(
        store
            .db
            .iterator_cf(store.cf(CF_BLOBS), IteratorMode::Start)
            .count(),
        0
    );
}

#[test]
fn expired_records_read_as_absent_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    let k = key("t.w");
    store
        .update(&k, 0, |_| {
            Ok::<_, StorageError>((
                Change::PutInline {
                    value: b"v".to_vec(),
                    worm_until_ms: Some(1000),
                    expires_ms: None,
                },
                (),
            ))
        })
        .unwrap();
    assert!(store.read(&k, 999).unwrap().record.is_some());
    assert!(store.read(&k, 1000).unwrap().record.is_none());
    assert_eq!(store.scan("T.", 999).unwrap().len(), 1);
    assert_eq!(store.scan("T.", 1000).unwrap().len(), 0);
    assert_eq!(store.purge_expired(1000).unwrap(), 1);
    assert!(store.read_record(k.as_bytes()).unwrap().is_none());
}

#[test]
fn data_acl_and_slots_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("users.alice");
    {
        let store = Store::open(dir.path(), Durability::Strict).unwrap();
        store.put_system(&k, b"hello".to_vec(), 0).unwrap();
        let mut acl = Acl::default();
        acl.grant("alice", crate::protocol::Perm::Owner);
        store
            .update(&k, 0, |_| Ok::<_, StorageError>((Change::SetAcl(acl), ())))
            .unwrap();
        put_blob(&store, &key("users.pic"), vec![7; 2 * BLOB_CHUNK_BYTES + 1]);
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Durability::Strict).unwrap();
    let current = store.read(&k, 0).unwrap();
    assert_eq!(
        current.record.unwrap().body,
        Body::Inline(b"hello".to_vec())
    );
    assert!(current.acl.owners.contains("alice"));
    assert_eq!(store.table_slot("USERS").unwrap(), 3);
    assert_eq!(store.tables().unwrap(), vec!["USERS".to_string()]);
    // Blob ids keep growing after a reopen, so a new blob never reuses live chunks.
    put_blob(&store, &key("users.pic2"), vec![8; 5]);
    let pic = store.read(&key("users.pic"), 0).unwrap().record.unwrap();
    assert_eq!(
        store.read_body(&pic.body).unwrap(),
        vec![7; 2 * BLOB_CHUNK_BYTES + 1]
    );
}

#[test]
fn concurrent_updates_of_one_key_are_serialised() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), Durability::Relaxed).unwrap());
    let k = key("t.counter");
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let k = k.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    store
                        .update(&k, 0, |current| {
                            let n = match &current.record {
                                Some(Record {
                                    body: Body::Inline(v),
                                    ..
                                }) => String::from_utf8_lossy(v).parse::<u64>().unwrap(),
                                _ => 0,
                            };
                            Ok::<_, StorageError>((
                                Change::PutInline {
                                    value: (n + 1).to_string().into_bytes(),
                                    worm_until_ms: None,
                                    expires_ms: None,
                                },
                                (),
                            ))
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let record = store.read(&k, 0).unwrap().record.unwrap();
    assert_eq!(record.body, Body::Inline(b"400".to_vec()));
}

#[test]
fn an_empty_blob_never_shares_an_id_with_a_later_blob() {
    let dir = tempfile::tempdir().unwrap();
    let empty = key("t.empty");
    let other = key("t.other");
    {
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        put_blob(&store, &empty, Vec::new());
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    let bytes = vec![9u8; BLOB_CHUNK_BYTES + 5];
    put_blob(&store, &other, bytes.clone());
    // Replacing and deleting the empty blob must leave the other blob intact.
    put_blob(&store, &empty, Vec::new());
    store
        .update(&empty, 0, |_| Ok::<_, StorageError>((Change::Delete, ())))
        .unwrap();
    let record = store.read(&other, 0).unwrap().record.unwrap();
    assert_eq!(store.read_body(&record.body).unwrap(), bytes);
}

/// A single node numbers its feed's changes from the sum of the table counters at open: the
/// counters must grow by at least one per published change, or revisions would repeat
/// after a restart.
#[test]
fn feed_revisions_keep_growing_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("t.k");
    let put = |store: &Store, worm: Option<i64>, now: i64| {
        store
            .update(&k, now, |_| {
                Ok::<_, StorageError>((
                    Change::PutInline {
                        value: b"v".to_vec(),
                        worm_until_ms: worm,
                        expires_ms: None,
                    },
                    (),
                ))
            })
            .unwrap();
    };
    let last_revision = |store: &Store| {
        let mut sub = store.feed().subscribe("T", "T.", None, None).unwrap();
        let _ = sub.rx.try_recv();
        sub.revision
    };
    let before = {
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        put(&store, Some(10), 0);
        // At 20 the value has expired: this put removes it (a DEL) and writes (a PUT).
        put(&store, None, 20);
        last_revision(&store)
    };
    assert_eq!(before, 3, "PUT, DEL of the expired value, PUT");
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    assert!(
        last_revision(&store) >= before,
        "no revision is given out twice"
    );
    assert_eq!(store.table_slot("T").unwrap(), 3);
}

#[test]
fn tables_lists_each_table_once_whatever_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    // Names that sort around `USERS.`: a byte below `.`, digits above it, a prefix.
    for k in [
        "users.a",
        "users.b",
        "users.c",
        "users-x.a",
        "users2.a",
        "user.z",
        "a.1",
        "z.9",
    ] {
        let change = Change::PutInline {
            value: b"v".to_vec(),
            worm_until_ms: None,
            expires_ms: None,
        };
        store.change_for_test(k, change);
    }
    assert_eq!(
        store.tables().unwrap(),
        ["A", "USER", "USERS-X", "USERS", "USERS2", "Z"]
    );
}

/// The block-cache tickers the metrics report count at the statistics level in use when
/// statistics are asked for, and read as 0 (not a crash) when they are off.
#[test]
fn block_cache_tickers_count_reads() {
    let dir = tempfile::tempdir().unwrap();
    let off = Store::open(dir.path(), Durability::Relaxed).unwrap();
    off.change_for_test("t.k", inline(b"v"));
    off.read(&key("t.k"), 0).unwrap();
    assert_eq!(
        off.stats().block_cache_hits + off.stats().block_cache_misses,
        0
    );
    drop(off);
    let store = Store::open_with(dir.path(), Durability::Relaxed, true).unwrap();
    for i in 0..200 {
        let change = Change::PutInline {
            value: vec![i as u8; 100],
            worm_until_ms: None,
            expires_ms: None,
        };
        store.change_for_test(&format!("t.k{i}"), change);
    }
    store.db.flush_cf(store.cf(CF_VALUES)).unwrap();
    for _ in 0..2 {
        for i in 0..200 {
            assert!(
                store
                    .read(&key(&format!("t.k{i}")), 0)
                    .unwrap()
                    .record
                    .is_some()
            );
        }
    }
    let stats = store.stats();
    assert!(
        stats.block_cache_hits > 0 && stats.block_cache_misses > 0,
        "{stats:?}"
    );
}

fn inline(value: &[u8]) -> Change {
    Change::PutInline {
        value: value.to_vec(),
        worm_until_ms: None,
        expires_ms: None,
    }
}

fn stored_record(store: &Store, k: &str) -> Option<Record> {
    store.read_record(key(k).as_bytes()).unwrap()
}

/// The record's ACL flag follows the `acl` family through every change that touches either,
/// so a read that skips the ACL lookup for a flagless record never misses an ACL.
#[test]
fn the_record_says_whether_its_key_has_an_acl() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    let acl = Acl {
        owners: ["ALICE".to_string()].into(),
        ..Acl::default()
    };
    // A value written without an ACL has no flag, and reads as public.
    store.change_for_test("t.a", inline(b"1"));
    assert!(!stored_record(&store, "t.a").unwrap().has_acl);
    // An ACL set on a stored value sets the flag (the version does not move).
    store.change_for_test("t.a", Change::SetAcl(acl.clone()));
    let flagged = stored_record(&store, "t.a").unwrap();
    assert!(flagged.has_acl);
    assert_eq!(flagged.version, 1);
    assert_eq!(store.read(&key("t.a"), 0).unwrap().acl, acl);
    // Overwriting the value keeps it; clearing the ACL clears it.
    store.change_for_test("t.a", inline(b"2"));
    assert!(stored_record(&store, "t.a").unwrap().has_acl);
    assert_eq!(store.read(&key("t.a"), 0).unwrap().acl, acl);
    store.change_for_test("t.a", Change::SetAcl(Acl::default()));
    assert!(!stored_record(&store, "t.a").unwrap().has_acl);
    // An ACL set before the key has a value is found by the first write of one; and a
    // deleted value's ACL stays for the next.
    store.change_for_test("t.b", Change::SetAcl(acl.clone()));
    store.change_for_test("t.b", inline(b"1"));
    assert!(stored_record(&store, "t.b").unwrap().has_acl);
    store.change_for_test("t.b", Change::Delete);
    put_blob(&store, &key("t.b"), vec![7; 10]);
    assert!(stored_record(&store, "t.b").unwrap().has_acl);
    assert_eq!(store.read(&key("t.b"), 0).unwrap().acl, acl);
    // A record of the previous format (no flag) still has its ACL looked up.
    let mut old = vec![2u8, 0];
    old.extend_from_slice(&1u64.to_be_bytes());
    old.extend_from_slice(b"old");
    store.db.put_cf(store.cf(CF_VALUES), b"T.C", &old).unwrap();
    store
        .db
        .put_cf(store.cf(CF_ACL), b"T.C", acl.encode())
        .unwrap();
    assert_eq!(store.read(&key("t.c"), 0).unwrap().acl, acl);
    // Writes see the same ACLs through their batch (which also skips the lookup for a
    // record without the flag).
    for (k, has) in [("t.a", false), ("t.b", true), ("t.c", true)] {
        let k = key(k);
        assert_eq!(
            store.batch([&k]).read(&k, 0).unwrap().acl == acl,
            has,
            "{k}"
        );
    }
    let mut seen = Vec::new();
    store
        .visit("T.", None, 0, |k, _, a| {
            seen.push((k.to_vec(), a == acl));
            true
        })
        .unwrap();
    assert_eq!(
        seen,
        [
            (b"T.A".to_vec(), false),
            (b"T.B".to_vec(), true),
            (b"T.C".to_vec(), true)
        ]
    );
}

/// A read from memory answers what a memtable or the block cache holds and declines
/// (`None`) what needs the files, without reading them.
#[test]
fn reads_from_memory_answer_only_what_memory_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        store.change_for_test("t.k", inline(b"v"));
        let cached = store
            .read_cached(&key("t.k"), 0)
            .unwrap()
            .expect("in the memtable");
        assert_eq!(cached.record.unwrap().body, Body::Inline(b"v".to_vec()));
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    assert!(
        store.read_cached(&key("t.k"), 0).unwrap().is_none(),
        "after a restart the value is only in a file"
    );
    assert!(store.read(&key("t.k"), 0).unwrap().record.is_some());
    let cached = store
        .read_cached(&key("t.k"), 0)
        .unwrap()
        .expect("now cached");
    assert_eq!(cached.record.unwrap().body, Body::Inline(b"v".to_vec()));
}
