//! The state machine against a model: random writes (PUT, CAS, DEL, DEL IF VERSION,
//! transactions) and reads (GET, VERSION) on real RocksDB, every answer and every version
//! compared with a map of (value, version).

use std::collections::HashMap;

use proptest::prelude::*;

use super::{Write, WriteOp, apply, read};
use crate::config::Durability;
use crate::protocol::{Command, Key, Reply, TxnStep};
use crate::storage::Store;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8),
    Cas(usize, u64, u8),
    Del(usize, Option<u64>),
    Txn(Vec<(u8, usize, u64, u8)>),
    Get(usize),
    Version(usize),
}

const KEYS: [&str; 3] = ["t.a", "t.b", "t.c"];

fn key(i: usize) -> Key {
    Key::parse(KEYS[i].as_bytes()).unwrap()
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..KEYS.len();
    prop_oneof![
        (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        (k.clone(), 0..4u64, any::<u8>()).prop_map(|(k, n, v)| Op::Cas(k, n, v)),
        (k.clone(), proptest::option::of(0..4u64)).prop_map(|(k, n)| Op::Del(k, n)),
        proptest::collection::vec((0..3u8, k.clone(), 0..3u64, any::<u8>()), 1..5)
            .prop_map(Op::Txn),
        k.clone().prop_map(Op::Get),
        k.prop_map(Op::Version),
    ]
}

type Model = HashMap<usize, (Vec<u8>, u64)>;

fn version(model: &Model, k: usize) -> u64 {
    model.get(&k).map_or(0, |(_, v)| *v)
}

fn put(model: &mut Model, k: usize, value: Vec<u8>) {
    let next = version(model, k) + 1;
    model.insert(k, (value, next));
}

fn write(store: &Store, key: Key, op: WriteOp) -> Reply {
    let write = Write {
        key,
        principal: None,
        at_ms: 1,
        op,
    };
    let mut batch = store.batch(write.keys());
    let verdict = apply(&mut batch, &write).unwrap();
    batch.write(false).unwrap();
    verdict.unwrap_or_else(|refusal| Reply::warn(refusal.to_string()))
}

fn mismatch(k: usize, at: u64) -> Reply {
    Reply::warn(format!(
        "version mismatch: {} is at version {at}",
        KEYS[k].to_uppercase()
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn writes_and_reads_follow_the_versioned_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let mut model = Model::new();
        for op in ops {
            let (got, want) = match op {
                Op::Put(k, v) => {
                    put(&mut model, k, vec![v]);
                    let op = WriteOp::Put { value: vec![v], worm_until_ms: None, expires_ms: None, if_version: None };
                    (write(&store, key(k), op), Reply::Ok)
                }
                Op::Cas(k, n, v) => {
                    let at = version(&model, k);
                    let want = if at == n { put(&mut model, k, vec![v]); Reply::Ok } else { mismatch(k, at) };
                    let op = WriteOp::Put { value: vec![v], worm_until_ms: None, expires_ms: None, if_version: Some(n) };
                    (write(&store, key(k), op), want)
                }
                Op::Del(k, n) => {
                    let at = version(&model, k);
                    let want = match n {
                        Some(n) if n != at => mismatch(k, at),
                        _ => { model.remove(&k); Reply::Ok }
                    };
                    (write(&store, key(k), WriteOp::Delete { if_version: n }), want)
                }
                Op::Txn(raw) => {
                    let steps: Vec<TxnStep> = raw.iter().map(|&(kind, k, n, v)| match kind {
                        0 => TxnStep::IfVersion { key: key(k), version: n },
                        1 => TxnStep::Put { key: key(k), value: vec![v] },
                        _ => TxnStep::Del(key(k)),
                    }).collect();
                    let failed = raw.iter().find(|&&(kind, k, n, _)| kind == 0 && version(&model, k) != n);
                    let want = match failed {
                        Some(&(_, k, _, _)) => Reply::warn(format!(
                            "condition failed: {} is at version {}", KEYS[k].to_uppercase(), version(&model, k))),
                        None => {
                            for &(kind, k, _, v) in &raw {
                                match kind {
                                    1 => put(&mut model, k, vec![v]),
                                    2 => { model.remove(&k); }
                                    _ => {}
                                }
                            }
                            Reply::Ok
                        }
                    };
                    (write(&store, steps[0].key().clone(), WriteOp::Txn(steps)), want)
                }
                Op::Get(k) => {
                    let want = match model.get(&k) {
                        Some((value, _)) => Reply::Value(value.clone()),
                        None => Reply::line("NOT_FOUND"),
                    };
                    (read(&store, None, &Command::Get(key(k)), 1).unwrap().unwrap().unwrap(), want)
                }
                Op::Version(k) => {
                    let want = Reply::line(format!("VERSION:{}", version(&model, k)));
                    (read(&store, None, &Command::Version(key(k)), 1).unwrap().unwrap().unwrap(), want)
                }
            };
            prop_assert_eq!(got, want);
        }
    }
}
