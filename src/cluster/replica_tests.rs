//! Three replicas in one process, each with its own RocksDB, connected by an in-memory network:
//! writes committed through consensus reach every replica's storage, answers carry the rules'
//! verdicts, and reads at any node see acknowledged writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::command::{NodeIdentity, Write};
use crate::config::Durability;
use crate::protocol::{Key, parse_request};
use crate::storage::Store;

struct Cluster {
    replicas: BTreeMap<NodeId, Replica>,
    answers: BTreeMap<(NodeId, RequestId), Reply>,
    now: u64,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    fn new(nodes: &[(NodeId, &str)]) -> Cluster {
        let membership = Membership::new(nodes.iter().map(|(id, zone)| (*id, zone.to_string())));
        let mut replicas = BTreeMap::new();
        let mut dirs = Vec::new();
        for (id, zone) in nodes {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(Store::open(dir.path(), Durability::Relaxed).unwrap());
            let identity = NodeIdentity {
                id: *id,
                region: zone.to_string(),
                host: "127.0.0.1".into(),
                port: 0,
                configured_fn: 1,
                configured_fz: 0,
            };
            let engine = Arc::new(Engine::new(store, identity).unwrap());
            let replica = Replica::open(
                *id,
                zone.to_string(),
                membership.clone(),
                Settings::default(),
                engine,
                *id,
                0,
            )
            .unwrap();
            replicas.insert(*id, replica);
            dirs.push(dir);
        }
        Cluster {
            replicas,
            answers: BTreeMap::new(),
            now: 0,
            _dirs: dirs,
        }
    }

    /// Runs the network until `(node, request)` is answered (bounded in virtual time).
    fn run_until_answered(&mut self, node: NodeId, request: RequestId) -> Reply {
        for _ in 0..2_000 {
            if let Some(reply) = self.answers.remove(&(node, request)) {
                return reply;
            }
            let mut in_flight = Vec::new();
            for (id, replica) in &mut self.replicas {
                let processed = replica.process(self.now).unwrap();
                for (request, reply) in processed.answers {
                    self.answers.insert((*id, request), reply);
                }
                in_flight.extend(processed.messages.into_iter().map(|m| (*id, m)));
            }
            for (from, outgoing) in in_flight {
                if let Some(target) = self.replicas.get_mut(&outgoing.to) {
                    target.step(self.now, from, outgoing.message);
                }
            }
            self.now += 5;
            for replica in self.replicas.values_mut() {
                replica.tick(self.now);
            }
        }
        panic!("request {request} at node {node} was not answered");
    }

    fn write(&mut self, node: NodeId, principal: Option<&str>, line: &str) -> Reply {
        let command = parse_request(line.as_bytes()).unwrap().command;
        let write =
            Write::from_command(command, principal.map(str::to_string), None, 1_000).unwrap();
        let now = self.now;
        let request = self
            .replicas
            .get_mut(&node)
            .unwrap()
            .submit_write(now, &write);
        self.run_until_answered(node, request)
    }

    fn read(&mut self, node: NodeId, principal: Option<&str>, line: &str) -> Reply {
        let command = parse_request(line.as_bytes()).unwrap().command;
        let now = self.now;
        let request = self.replicas.get_mut(&node).unwrap().submit_read(
            now,
            principal.map(str::to_string),
            command,
        );
        self.run_until_answered(node, request)
    }

    fn stored(&self, node: NodeId, key: &str) -> Option<Vec<u8>> {
        let replica = &self.replicas[&node];
        let current = replica
            .engine
            .store()
            .read(&Key::parse(key.as_bytes()).unwrap(), 0)
            .unwrap();
        current
            .record
            .map(|r| replica.engine.store().read_body(&r.body).unwrap())
    }
}

#[test]
fn a_write_at_one_node_reaches_every_replica_and_reads_anywhere_see_it() {
    let mut cluster = Cluster::new(&[(1, "a"), (2, "b"), (3, "c")]);
    assert_eq!(
        cluster.write(1, None, "KEY PUT users.alice hello"),
        Reply::Ok
    );
    assert_eq!(
        cluster.read(3, None, "KEY GET users.alice"),
        Reply::line("VALUE:hello")
    );
    // Give learners a moment, then every replica's storage holds the value.
    let _ = cluster.read(2, None, "KEY GET users.alice");
    for node in [1, 2, 3] {
        assert_eq!(
            cluster.stored(node, "users.alice"),
            Some(b"hello".to_vec()),
            "node {node}"
        );
    }
}

#[test]
fn rules_are_judged_alike_on_every_replica_and_answered_to_the_origin() {
    let mut cluster = Cluster::new(&[(1, "a"), (2, "a"), (3, "a")]);
    let granted = cluster.write(1, Some("alice"), "ACL GRANT docs.plan alice PERMS OWNER");
    assert_eq!(
        granted,
        Reply::line("ACL granted to alice for DOCS.PLAN with permissions OWNER")
    );
    assert_eq!(
        cluster.write(2, Some("alice"), "KEY PUT docs.plan v1"),
        Reply::Ok
    );
    let denied = cluster.write(3, Some("mallory"), "KEY PUT docs.plan evil");
    assert_eq!(
        denied,
        Reply::warn("permission denied for principal 'mallory': write access denied")
    );
    assert_eq!(
        cluster.read(3, Some("mallory"), "KEY GET docs.plan"),
        Reply::line("NOT_FOUND")
    );
    assert_eq!(
        cluster.read(1, Some("alice"), "KEY GET docs.plan"),
        Reply::line("VALUE:v1")
    );
    let _ = cluster.read(2, None, "COUNT DOCS");
    for node in [1, 2, 3] {
        assert_eq!(
            cluster.stored(node, "docs.plan"),
            Some(b"v1".to_vec()),
            "node {node}"
        );
    }
}

#[test]
fn proposals_round_trip_and_foreign_entries_are_refused() {
    let write = Write::from_command(
        parse_request(b"KEY DEL t.k").unwrap().command,
        None,
        None,
        7,
    )
    .unwrap();
    let bytes = encode_proposal(9, 42, &write);
    assert_eq!(decode_proposal(&bytes), Some((9, 42, write)));
    assert_eq!(decode_proposal(b"plain value"), None);
    assert_eq!(decode_proposal(&bytes[..10]), None);
}

#[test]
fn node_records_and_membership_changes_commit_and_reach_the_directory() {
    let mut cluster = Cluster::new(&[(1, "a")]);
    let record = NodeRecord {
        id: 2,
        region: "b".into(),
        host: "127.0.0.1".into(),
        port: 4002,
    };
    let now = cluster.now;
    let replica = cluster.replicas.get_mut(&1).unwrap();
    let request = replica.submit_system(now, node_record_op(&record));
    assert_eq!(cluster.run_until_answered(1, request), Reply::Ok);
    let now = cluster.now;
    let replica = cluster.replicas.get_mut(&1).unwrap();
    let request = replica.submit_barrier(now, "USERS");
    assert_eq!(cluster.run_until_answered(1, request), Reply::Ok);
    let directory = directory::load(cluster.replicas[&1].engine.store()).unwrap();
    assert_eq!(directory.get(&2), Some(&record));
    let now = cluster.now;
    let replica = cluster.replicas.get_mut(&1).unwrap();
    let request = replica.submit_system(
        now,
        ClientOp::AddNode {
            node: 2,
            zone: "b".into(),
        },
    );
    assert_eq!(cluster.run_until_answered(1, request), Reply::Ok);
    assert!(cluster.replicas[&1].node().config().members().contains(2));
}
