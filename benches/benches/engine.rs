//! The engine path without the socket: RocksDB puts (relaxed and strict) and gets.

use std::sync::Arc;

use atlas::config::Durability;
use atlas::protocol::Key;
use atlas::storage::{Change, StorageError, Store};
use criterion::{Criterion, black_box, criterion_group, criterion_main};

fn put(store: &Store, key: &Key, value: &[u8]) {
    store
        .update(key, 0, |_| {
            Ok::<_, StorageError>((
                Change::PutInline {
                    value: value.to_vec(),
                    worm_until_ms: None,
                    expires_ms: None,
                },
                (),
            ))
        })
        .expect("put");
}

fn engine(c: &mut Criterion) {
    let value = vec![b'v'; 100];
    for durability in [Durability::Relaxed, Durability::Strict] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), durability).expect("open"));
        let keys: Vec<Key> = (0..1000)
            .map(|i| Key::parse(format!("bench.k{i}").as_bytes()).expect("key"))
            .collect();
        let mut i = 0;
        c.bench_function(&format!("put_100b_{durability}"), |b| {
            b.iter(|| {
                put(&store, &keys[i % keys.len()], &value);
                i += 1;
            })
        });
        c.bench_function(&format!("get_100b_{durability}"), |b| {
            b.iter(|| black_box(store.read(&keys[i % keys.len()], 0).expect("get")));
            i += 1;
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = engine
}
criterion_main!(benches);
