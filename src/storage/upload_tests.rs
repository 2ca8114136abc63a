//! Uploads staged fragment by fragment: adopted whole, refused when incomplete, dropped on
//! abort or when abandoned, carried by snapshots mid-way.

use super::*;
use crate::config::Durability;
use crate::consensus::{GroupState, SYSTEM_GROUP};
use crate::protocol::Key;
use crate::storage::Change;
use crate::storage::consensus_store::ConsensusStore;

const CHUNK: usize = BLOB_CHUNK_BYTES;

fn key(k: &str) -> Key {
    Key::parse(k.as_bytes()).unwrap()
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
    (dir, store)
}

const UP: UploadId = UploadId { origin: 1, id: 42 };

fn fragment(upload: UploadId, index: u32, total: usize, at_ms: i64) -> Fragment {
    Fragment {
        upload,
        index,
        total: total as u64,
        at_ms,
    }
}

/// Stages the chunks `indices` of `bytes`, one batch each.
fn stage(store: &Store, upload: UploadId, bytes: &[u8], indices: &[u32], at_ms: i64) {
    for &index in indices {
        let start = index as usize * CHUNK;
        let end = (start + CHUNK).min(bytes.len());
        let mut batch = store.batch(std::iter::empty::<&Key>());
        batch
            .stage_fragment(
                "T",
                &fragment(upload, index, bytes.len(), at_ms),
                &bytes[start..end],
            )
            .unwrap();
        batch.write(false).unwrap();
    }
}

fn complete(store: &Store, upload: UploadId, len: usize) -> bool {
    store
        .batch(std::iter::empty::<&Key>())
        .upload_complete("T", upload, len as u64)
        .unwrap()
}

fn adopt(store: &Store, k: &str, upload: UploadId, len: usize) {
    let k = key(k);
    let mut batch = store.batch([&k]);
    let change = Change::PutStaged {
        upload,
        len: len as u64,
    };
    batch.change(&k, 0, change).unwrap();
    batch.write(false).unwrap();
}

fn body(store: &Store, k: &str) -> Option<Vec<u8>> {
    let record = store.read(&key(k), 0).unwrap().record?;
    Some(store.read_body(&record.body).unwrap())
}

fn chunks_stored(store: &Store) -> usize {
    store
        .db
        .iterator_cf(store.cf(CF_BLOBS), IteratorMode::Start)
        .count()
}

#[test]
fn fragments_in_any_order_and_repeated_make_the_blob_adopted_whole() {
    let (_dir, store) = open();
    let bytes = blob(3 * CHUNK + 5, 1);
    stage(&store, UP, &bytes, &[2, 0], 10);
    assert!(!complete(&store, UP, bytes.len()));
    // A repeated fragment changes nothing; one of another length or size is skipped.
    stage(&store, UP, &bytes, &[0], 11);
    let mut batch = store.batch(std::iter::empty::<&Key>());
    batch
        .stage_fragment("T", &fragment(UP, 1, bytes.len(), 12), &bytes[..10])
        .unwrap();
    batch
        .stage_fragment(
            "T",
            &fragment(UP, 1, 2 * CHUNK, 12),
            &bytes[CHUNK..2 * CHUNK],
        )
        .unwrap();
    batch
        .stage_fragment("T", &fragment(UP, 9, bytes.len(), 12), &bytes[..5])
        .unwrap();
    batch.write(false).unwrap();
    assert!(!complete(&store, UP, bytes.len()));
    stage(&store, UP, &bytes, &[3, 1], 13);
    assert!(complete(&store, UP, bytes.len()));
    assert!(!complete(&store, UP, bytes.len() + 1), "another length");
    // The old value's chunks go when the upload replaces it; the upload's chunks stay.
    store.change_for_test(
        "T.k",
        Change::PutBlob {
            bytes: blob(2 * CHUNK, 9),
            worm_until_ms: None,
        },
    );
    adopt(&store, "T.k", UP, bytes.len());
    assert_eq!(body(&store, "T.k").as_deref(), Some(bytes.as_slice()));
    assert_eq!(chunks_stored(&store), 4);
    assert!(
        !complete(&store, UP, bytes.len()),
        "adopted uploads are gone"
    );
    // Adopted chunks are the record's: a delete takes them.
    store.change_for_test("T.k", Change::Delete);
    assert_eq!(chunks_stored(&store), 0);
}

#[test]
fn fragments_and_their_adoption_work_within_one_batch() {
    let (_dir, store) = open();
    let bytes = blob(2 * CHUNK + 1, 2);
    let k = key("T.one");
    let mut batch = store.batch([&k]);
    for index in 0..3u32 {
        let start = index as usize * CHUNK;
        let end = (start + CHUNK).min(bytes.len());
        batch
            .stage_fragment(
                "T",
                &fragment(UP, index, bytes.len(), 1),
                &bytes[start..end],
            )
            .unwrap();
    }
    assert!(batch.upload_complete("T", UP, bytes.len() as u64).unwrap());
    let change = Change::PutStaged {
        upload: UP,
        len: bytes.len() as u64,
    };
    batch.change(&k, 0, change).unwrap();
    batch.write(false).unwrap();
    assert_eq!(body(&store, "T.one").as_deref(), Some(bytes.as_slice()));
    assert!(store.stored_uploads("T").unwrap().is_empty());
}

#[test]
fn an_abort_and_an_abandoned_upload_leave_nothing() {
    let (_dir, store) = open();
    let bytes = blob(2 * CHUNK, 3);
    stage(&store, UP, &bytes, &[0], 1_000);
    let mut batch = store.batch(std::iter::empty::<&Key>());
    batch
        .stage_fragment("T", &fragment(UP, ABORT_INDEX, bytes.len(), 1_001), &[])
        .unwrap();
    batch.write(false).unwrap();
    assert_eq!(chunks_stored(&store), 0);
    assert!(store.stored_uploads("T").unwrap().is_empty());

    // Abandoned: a later upload to the table, long after, drops it; a recent one stays.
    let old = UploadId { origin: 2, id: 1 };
    let recent = UploadId { origin: 3, id: 1 };
    stage(&store, old, &bytes, &[0], 1_000);
    stage(&store, recent, &bytes, &[0], 1_000 + UPLOAD_IDLE_MS);
    stage(&store, UP, &bytes, &[1], 1_001 + UPLOAD_IDLE_MS);
    let left: Vec<UploadId> = store
        .stored_uploads("T")
        .unwrap()
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    assert_eq!(left, vec![UP, recent]);
    assert_eq!(chunks_stored(&store), 2);
}

#[test]
fn a_snapshot_carries_an_upload_midway_and_it_completes_at_the_receiver() {
    let (_a, source) = open();
    let (_b, target) = open();
    let bytes = blob(3 * CHUNK + 11, 4);
    stage(&source, UP, &bytes, &[0, 2], 5);
    let cs = ConsensusStore::new(&source);
    let mut state = rocksdb::WriteBatch::default();
    cs.stage_state(
        &mut state,
        "T",
        &GroupState {
            applied: 7,
            ..GroupState::default()
        },
    );
    source.db.write(state).unwrap();
    // Something of another upload at the target, which the snapshot replaces.
    stage(&target, UploadId { origin: 9, id: 9 }, &bytes, &[1], 5);
    let mut stream = Vec::new();
    source
        .export_groups(&[("T".to_string(), vec!["T".to_string()])], &mut stream)
        .unwrap();
    let tables = |g: &str| {
        if g == SYSTEM_GROUP {
            vec!["ATLAS".to_string()]
        } else {
            vec![g.to_string()]
        }
    };
    let installed = target.install_groups(&stream[..], &tables).unwrap();
    assert_eq!(installed.len(), 1);
    let uploads = target.stored_uploads("T").unwrap();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0].0, UP);
    assert!(!complete(&target, UP, bytes.len()));
    stage(&target, UP, &bytes, &[1, 3], 6);
    assert!(complete(&target, UP, bytes.len()));
    adopt(&target, "T.big", UP, bytes.len());
    assert_eq!(body(&target, "T.big").as_deref(), Some(bytes.as_slice()));
    assert_eq!(
        chunks_stored(&target),
        4,
        "the replaced upload's chunk is gone"
    );

    // A wipe of the table takes its uploads with it.
    stage(&target, UploadId { origin: 5, id: 5 }, &bytes, &[0], 6);
    target.wipe_tables(&["T".to_string()]).unwrap();
    assert!(target.stored_uploads("T").unwrap().is_empty());
    assert_eq!(chunks_stored(&target), 0);
}

#[test]
fn upload_states_round_trip_and_bad_ones_are_refused() {
    let state = UploadState {
        blob_id: 3,
        total: 9 * CHUNK as u64 + 1,
        last_at_ms: -2,
        received: vec![0b1010_0101, 1],
    };
    assert_eq!(UploadState::decode(&state.encode()), Some(state.clone()));
    let mut short = state.encode();
    short.pop();
    assert_eq!(UploadState::decode(&short), None);
    assert_eq!(UploadState::decode(&[1, 2, 3]), None);
}

#[test]
fn a_fragment_may_carry_several_chunks() {
    let (_dir, store) = open();
    let bytes = blob(4 * CHUNK + 5, 6);
    let mut batch = store.batch(std::iter::empty::<&Key>());
    // Past the end: skipped whole.
    batch
        .stage_fragment("T", &fragment(UP, 3, bytes.len(), 1), &bytes[..3 * CHUNK])
        .unwrap();
    batch
        .stage_fragment("T", &fragment(UP, 2, bytes.len(), 1), &bytes[2 * CHUNK..])
        .unwrap();
    batch
        .stage_fragment("T", &fragment(UP, 0, bytes.len(), 1), &bytes[..2 * CHUNK])
        .unwrap();
    batch.write(false).unwrap();
    assert!(complete(&store, UP, bytes.len()));
    assert_eq!(chunks_stored(&store), 5);
    adopt(&store, "T.multi", UP, bytes.len());
    assert_eq!(body(&store, "T.multi").as_deref(), Some(bytes.as_slice()));
}

/// A snapshot stream whose upload items do not fit is refused, not half installed into
/// another table or beyond the upload's end.
#[test]
fn malformed_upload_items_in_a_snapshot_are_refused() {
    use crate::storage::stream::{FrameWriter, SnapshotItem};
    let state = UploadState {
        blob_id: 1,
        total: 2 * CHUNK as u64,
        last_at_ms: 0,
        received: vec![0],
    };
    let upload_item = |table: &str| {
        let mut data = vec![4u8];
        data.extend_from_slice(&(table.len() as u32).to_be_bytes());
        data.extend_from_slice(table.as_bytes());
        data.extend_from_slice(&7u64.to_be_bytes());
        data.extend_from_slice(&8u64.to_be_bytes());
        let encoded = state.encode();
        data.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        data.extend_from_slice(&encoded);
        data
    };
    let chunk_item = |index: u32| {
        let mut data = vec![5u8];
        data.extend_from_slice(&index.to_be_bytes());
        data.extend_from_slice(b"bytes");
        data
    };
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("another group's table", vec![upload_item("OTHER")]),
        ("a chunk without its upload", vec![chunk_item(0)]),
        (
            "a chunk beyond the end",
            vec![upload_item("T"), chunk_item(2)],
        ),
        ("a truncated upload", vec![upload_item("T")[..20].to_vec()]),
    ];
    for (what, items) in cases {
        let mut stream = FrameWriter::new(Vec::new());
        stream
            .item(&SnapshotItem::Group {
                group: "T".into(),
                state: GroupState {
                    applied: 3,
                    ..GroupState::default()
                },
                config: None,
            })
            .unwrap();
        for data in items {
            stream
                .item(&SnapshotItem::Data(bytes::Bytes::from(data)))
                .unwrap();
        }
        let stream = stream.finish().unwrap();
        let (_dir, target) = open();
        let tables = |g: &str| vec![g.to_string()];
        assert!(
            target.install_groups(&stream[..], &tables).is_err(),
            "{what} was installed"
        );
    }
}
