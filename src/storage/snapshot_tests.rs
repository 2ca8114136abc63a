use super::*;
use crate::config::Durability;
use crate::consensus::{CommandId, Membership};
use crate::storage::{Acl, Change};

fn tables_of(group: &str) -> Vec<String> {
    if group == SYSTEM_GROUP {
        vec!["ATLAS".into()]
    } else {
        vec![group.to_string()]
    }
}

fn key(text: &str) -> Key {
    Key::parse(text.as_bytes()).unwrap()
}

fn put(store: &Store, k: &str, change: Change) {
    store.change_for_test(k, change);
}

fn set_state(store: &Store, group: &str, state: &GroupState, config: Option<&Config>) {
    let cs = ConsensusStore::new(store);
    let mut batch = WriteBatch::default();
    cs.stage_state(&mut batch, group, state);
    if let Some(config) = config {
        cs.stage_config(&mut batch, config);
    }
    store.db.write(batch).unwrap();
}

fn body(store: &Store, k: &str) -> Option<Vec<u8>> {
    let current = store.read(&key(k), 0).unwrap();
    current.record.map(|r| store.read_body(&r.body).unwrap())
}

fn state(applied: u64) -> GroupState {
    let mut state = GroupState {
        applied,
        sealed: 1,
        dedup: Default::default(),
    };
    state.dedup.record(&CommandId { origin: 2, seq: 7 }, 3);
    state
}

#[test]
fn a_group_snapshot_carries_records_blobs_acls_and_state_but_not_votes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let source = Store::open(a.path(), Durability::Relaxed).unwrap();
    let blob: Vec<u8> = (0..(2 * BLOB_CHUNK_BYTES + 77)).map(|i| i as u8).collect();
    put(
        &source,
        "T.INLINE",
        Change::PutInline {
            value: b"hello".to_vec(),
            worm_until_ms: Some(i64::MAX),
            expires_ms: None,
        },
    );
    put(
        &source,
        "T.BLOB",
        Change::PutBlob {
            bytes: blob.clone(),
            worm_until_ms: None,
        },
    );
    let mut acl = Acl::default();
    acl.grant("alice", crate::protocol::Perm::Owner);
    put(&source, "T.INLINE", Change::SetAcl(acl.clone()));
    put(
        &source,
        "OTHER.K",
        Change::PutInline {
            value: b"not in the group".to_vec(),
            worm_until_ms: None,
            expires_ms: None,
        },
    );
    let config = Config::new(Membership::new([(1, "a".to_string())]));
    set_state(&source, "T", &state(9), None);
    set_state(&source, SYSTEM_GROUP, &state(4), Some(&config));
    // A vote of the source's own: it stays home.
    let cs = ConsensusStore::new(&source);
    let mut votes = WriteBatch::default();
    cs.stage(
        &mut votes,
        &[crate::consensus::PersistOp::Promise {
            group: "T".into(),
            ballot: crate::consensus::Ballot::new(5, 1),
        }],
    );
    source.db.write(votes).unwrap();

    let mut stream = Vec::new();
    let groups = vec![
        ("T".to_string(), tables_of("T")),
        (SYSTEM_GROUP.to_string(), tables_of(SYSTEM_GROUP)),
    ];
    source.export_groups(&groups, &mut stream).unwrap();
    assert_eq!(
        crate::storage::stream::verify(&stream[..]).unwrap(),
        vec!["T".to_string(), SYSTEM_GROUP.to_string()]
    );

    let target = Store::open(b.path(), Durability::Relaxed).unwrap();
    // Something of the group that the snapshot replaces.
    put(
        &target,
        "T.STALE",
        Change::PutBlob {
            bytes: vec![1; 10],
            worm_until_ms: None,
        },
    );
    let installed = target.install_groups(&stream[..], &tables_of).unwrap();
    assert_eq!(installed.len(), 2);
    assert_eq!(installed[0].state, state(9));
    assert_eq!(installed[1].config, Some(config.clone()));
    assert_eq!(body(&target, "T.INLINE").as_deref(), Some(&b"hello"[..]));
    assert_eq!(body(&target, "T.BLOB"), Some(blob));
    assert_eq!(body(&target, "T.STALE"), None);
    assert_eq!(
        body(&target, "OTHER.K"),
        None,
        "another group's key stays out"
    );
    assert_eq!(target.read(&key("T.INLINE"), 0).unwrap().acl, acl);
    assert_eq!(
        target
            .read(&key("T.INLINE"), 0)
            .unwrap()
            .record
            .unwrap()
            .worm_until_ms,
        Some(i64::MAX)
    );
    assert_eq!(
        target.table_slot("T").unwrap(),
        source.table_slot("T").unwrap()
    );
    let tcs = ConsensusStore::new(&target);
    assert_eq!(tcs.state("T").unwrap(), state(9));
    assert_eq!(tcs.config().unwrap(), Some(config));
    let (recovered, interrupted) = tcs.recover().unwrap();
    assert!(interrupted.is_empty());
    assert!(recovered.groups["T"].promised.is_zero(), "votes stay home");

    // The same snapshot again is not newer: nothing is replaced.
    put(
        &target,
        "T.LATER",
        Change::PutInline {
            value: b"x".to_vec(),
            worm_until_ms: None,
            expires_ms: None,
        },
    );
    assert!(
        target
            .install_groups(&stream[..], &tables_of)
            .unwrap()
            .is_empty()
    );
    assert!(body(&target, "T.LATER").is_some());
}

#[test]
fn an_install_cut_short_is_wiped_at_start() {
    let a = tempfile::tempdir().unwrap();
    let source = Store::open(a.path(), Durability::Relaxed).unwrap();
    for i in 0..50 {
        put(
            &source,
            &format!("T.K{i}"),
            Change::PutBlob {
                bytes: vec![i as u8; 1000],
                worm_until_ms: None,
            },
        );
    }
    set_state(&source, "T", &state(50), None);
    let mut stream = Vec::new();
    source
        .export_groups(&[("T".to_string(), tables_of("T"))], &mut stream)
        .unwrap();
    // The receiver dies halfway through: simulate by installing a stream cut short.
    let b = tempfile::tempdir().unwrap();
    {
        let target = Store::open(b.path(), Durability::Relaxed).unwrap();
        assert!(
            target
                .install_groups(&stream[..stream.len() / 2], &tables_of)
                .is_err()
        );
        assert!(body(&target, "T.K0").is_some(), "half of it was written");
        target.close().unwrap();
    }
    let target = Store::open(b.path(), Durability::Relaxed).unwrap();
    assert_eq!(
        target.wipe_interrupted_installs(&tables_of).unwrap(),
        vec!["T".to_string()]
    );
    assert_eq!(body(&target, "T.K0"), None);
    assert_eq!(
        target
            .db
            .iterator_cf(target.cf(CF_BLOBS), IteratorMode::Start)
            .count(),
        0
    );
    let cs = ConsensusStore::new(&target);
    assert_eq!(cs.state("T").unwrap(), GroupState::default());
    assert!(cs.recover().unwrap().1.is_empty());
    // Installing the whole stream now works.
    assert_eq!(
        target
            .install_groups(&stream[..], &tables_of)
            .unwrap()
            .len(),
        1
    );
    assert!(body(&target, "T.K49").is_some());
}

/// A snapshot install sets each record's ACL flag from the ACL that travels with it, not
/// from the flag the sender stored: a format-2 record (which always claims an ACL) without
/// one becomes flagless, and a record whose flag says none but that comes with an ACL keeps
/// its ACL looked up.
#[test]
fn an_install_sets_the_acl_flag_from_the_acl_that_travels() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let source = Store::open(a.path(), Durability::Relaxed).unwrap();
    // A record written by an older release (format 2: no flag, an ACL always looked up).
    let mut v2 = vec![2u8, 0];
    v2.extend_from_slice(&3u64.to_be_bytes());
    v2.extend_from_slice(b"old");
    source
        .db
        .put_cf(source.cf(CF_VALUES), key("T.OLD").as_bytes(), &v2)
        .unwrap();
    assert!(
        source
            .read_record(key("T.OLD").as_bytes())
            .unwrap()
            .unwrap()
            .has_acl
    );
    // A record with an ACL whose stored flag was lost (claims none).
    let inline = Change::PutInline {
        value: b"shared".to_vec(),
        worm_until_ms: None,
        expires_ms: None,
    };
    put(&source, "T.SHARED", inline);
    let mut acl = Acl::default();
    acl.grant("alice", crate::protocol::Perm::Owner);
    put(&source, "T.SHARED", Change::SetAcl(acl.clone()));
    let mut flagless = source
        .read_record(key("T.SHARED").as_bytes())
        .unwrap()
        .unwrap();
    flagless.has_acl = false;
    source
        .db
        .put_cf(
            source.cf(CF_VALUES),
            key("T.SHARED").as_bytes(),
            flagless.encode(),
        )
        .unwrap();
    set_state(&source, "T", &state(2), None);
    let mut stream = Vec::new();
    source
        .export_groups(&[("T".to_string(), tables_of("T"))], &mut stream)
        .unwrap();

    let target = Store::open(b.path(), Durability::Relaxed).unwrap();
    target.install_groups(&stream[..], &tables_of).unwrap();
    let old = target
        .read_record(key("T.OLD").as_bytes())
        .unwrap()
        .unwrap();
    assert!(!old.has_acl, "no ACL came with it: no lookup");
    assert_eq!(body(&target, "T.OLD").as_deref(), Some(&b"old"[..]));
    let shared = target
        .read_record(key("T.SHARED").as_bytes())
        .unwrap()
        .unwrap();
    assert!(shared.has_acl, "its ACL came with it");
    assert_eq!(target.read(&key("T.SHARED"), 0).unwrap().acl, acl);
}
