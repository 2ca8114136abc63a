//! Three replicas in one process, each with its own RocksDB, connected by an in-memory network:
//! writes committed through consensus reach every replica's storage, answers carry the rules'
//! verdicts, and reads at any node see acknowledged writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::*;
use crate::cluster::directory;
use crate::config::Durability;
use crate::consensus::SnapshotRequest;
use crate::protocol::parse_request;

/// Messages one replica sent during a `process` call.
#[derive(Default)]
struct Net(Vec<(NodeId, Message)>);

impl Outbox for Net {
    fn send(&mut self, to: NodeId, message: Message) {
        self.0.push((to, message));
    }
}

struct Cluster {
    replicas: BTreeMap<NodeId, Replica>,
    answers: BTreeMap<(NodeId, RequestId), crate::cluster::error::Answer>,
    /// Nodes cut off from everyone (their messages, both ways, are dropped).
    cut: BTreeSet<NodeId>,
    snapshots: u64,
    now: u64,
    membership: Membership,
    settings: Settings,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
}

fn open(
    id: NodeId,
    zone: &str,
    membership: &Membership,
    settings: &Settings,
    dir: &std::path::Path,
) -> Replica {
    let store = Arc::new(Store::open(dir, Durability::Relaxed).unwrap());
    Replica::open(
        id,
        zone.to_string(),
        membership.clone(),
        settings.clone(),
        store,
        id,
        0,
    )
    .unwrap()
}

impl Cluster {
    fn new(nodes: &[(NodeId, &str)]) -> Cluster {
        Cluster::with(nodes, Settings::default())
    }

    fn with(nodes: &[(NodeId, &str)], settings: Settings) -> Cluster {
        let membership = Membership::new(nodes.iter().map(|(id, zone)| (*id, zone.to_string())));
        let mut replicas = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for (id, zone) in nodes {
            let dir = tempfile::tempdir().unwrap();
            replicas.insert(*id, open(*id, zone, &membership, &settings, dir.path()));
            dirs.insert(*id, dir);
        }
        Cluster {
            replicas,
            answers: BTreeMap::new(),
            cut: BTreeSet::new(),
            snapshots: 0,
            now: 0,
            membership,
            settings,
            dirs,
        }
    }

    /// One round: every replica processes, messages are delivered, snapshots copied,
    /// time moves 5 ms and every replica ticks.
    fn round(&mut self) {
        let mut in_flight = Vec::new();
        let mut wanted: Vec<(NodeId, SnapshotRequest)> = Vec::new();
        for (id, replica) in &mut self.replicas {
            let mut net = Net::default();
            let report = replica.process(self.now, &mut net).unwrap();
            for (request, reply) in report.processed.answers {
                self.answers.insert((*id, request), reply);
            }
            wanted.extend(report.processed.snapshots.into_iter().map(|s| (*id, s)));
            in_flight.extend(net.0.into_iter().map(|(to, m)| (*id, to, m)));
        }
        for (from, to, message) in in_flight {
            if self.cut.contains(&from) || self.cut.contains(&to) {
                continue;
            }
            if let Some(target) = self.replicas.get_mut(&to) {
                target.step(self.now, from, message);
            }
        }
        for (to, request) in wanted {
            self.copy_snapshot(to, request);
        }
        self.now += 5;
        for replica in self.replicas.values_mut() {
            replica.tick(self.now);
        }
    }

    /// What the transport and the runtime do for a snapshot request: the stream from the
    /// peer's store, verified, installed into the asker's store, then told to its node.
    fn copy_snapshot(&mut self, to: NodeId, request: SnapshotRequest) {
        let now = self.now;
        let source = &self.replicas[&request.from];
        let mut stream = Vec::new();
        let tables = source.group_tables(&request.group);
        source
            .store()
            .export_groups(&[(request.group.clone(), tables)], &mut stream)
            .unwrap();
        crate::storage::stream::verify(&stream[..]).unwrap();
        let target = self.replicas.get_mut(&to).unwrap();
        let settings = self.settings.clone();
        let installed = target
            .store()
            .install_groups(&stream[..], &|g| group_tables(&settings, g))
            .unwrap();
        if installed.is_empty() {
            target.snapshot_failed(now, &request.group);
        }
        for done in installed {
            self.snapshots += 1;
            target.snapshot_installed(now, done);
        }
    }

    /// Runs the network until `(node, request)` is answered (bounded in virtual time).
    fn run_until_answered(&mut self, node: NodeId, request: RequestId) -> Reply {
        for _ in 0..2_000 {
            if let Some(answer) = self.answers.remove(&(node, request)) {
                // As the session renders it.
                return answer.unwrap_or_else(|e| Reply::warn(e.to_string()));
            }
            self.round();
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
            .submit_write(now, write);
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
        let store = self.replicas[&node].store();
        let current = store.read(&Key::parse(key.as_bytes()).unwrap(), 0).unwrap();
        current.record.map(|r| store.read_body(&r.body).unwrap())
    }

    /// Drops a replica without closing anything (as kill -9 leaves it) and opens it again
    /// from its directory.
    fn restart(&mut self, node: NodeId) {
        let zone = self.membership.zone_of(node).cloned().unwrap();
        self.replicas.remove(&node);
        let dir = self.dirs[&node].path().to_path_buf();
        let replica = open(node, &zone, &self.membership, &self.settings, &dir);
        self.replicas.insert(node, replica);
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
        Reply::Value(b"hello".to_vec())
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
        Reply::Value(b"v1".to_vec())
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
    let put = |value: &[u8]| CommandOp::Put {
        key: "t.k".into(),
        value: bytes::Bytes::copy_from_slice(value),
    };
    let bytes = encode_proposal(9, 42, &write);
    assert!(matches!(
        decode_entry(&put(&bytes)),
        Entry::Proposal { origin: 9, request: 42, write: w } if w == write
    ));
    assert!(matches!(decode_entry(&put(b"plain value")), Entry::Nothing));
    assert!(matches!(decode_entry(&put(&bytes[..10])), Entry::Nothing));
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
    let directory = directory::load(cluster.replicas[&1].store()).unwrap();
    assert_eq!(directory.get(&2), Some(&record));
    let now = cluster.now;
    let replica = cluster.replicas.get_mut(&1).unwrap();
    let request = replica.submit_system(now, ClientOp::add_node(2, "b"));
    assert_eq!(cluster.run_until_answered(1, request), Reply::Ok);
    assert!(cluster.replicas[&1].node().config().members().contains(2));
}

/// Applied entries leave the log: with no room to keep any, a replica cut off while the
/// others write catches up from a snapshot of the group (records, ACLs, blobs), then
/// follows the log again; every replica then holds the same data.
#[test]
fn a_replica_behind_the_compacted_log_catches_up_from_a_snapshot() {
    let settings = Settings {
        retain_bytes: 0,
        ..Settings::default()
    };
    let mut cluster = Cluster::with(&[(1, "a"), (2, "a"), (3, "a")], settings);
    assert_eq!(cluster.write(1, None, "KEY PUT users.first 1"), Reply::Ok);
    cluster.cut.insert(3);
    for i in 0..40 {
        let line = format!("KEY PUT users.k{i} v{i}");
        assert_eq!(cluster.write(1, None, &line), Reply::Ok);
    }
    assert_eq!(
        cluster.write(1, Some("alice"), "ACL GRANT users.k0 alice PERMS OWNER"),
        Reply::line("ACL granted to alice for USERS.K0 with permissions OWNER")
    );
    assert_eq!(cluster.snapshots, 0);
    cluster.cut.clear();
    // Node 3 hears the owner's heartbeat, finds its log compacted, installs a snapshot.
    for _ in 0..400 {
        cluster.round();
        if cluster.replicas[&3].node().applied("USERS") >= 42 {
            break;
        }
    }
    assert!(cluster.snapshots >= 1, "no snapshot was installed");
    assert!(cluster.replicas[&3].node().applied("USERS") >= 42);
    assert_eq!(cluster.stored(3, "users.k39"), Some(b"v39".to_vec()));
    assert_eq!(
        cluster.read(3, Some("mallory"), "KEY GET users.k0"),
        Reply::line("NOT_FOUND"),
        "the ACL came with the snapshot"
    );
    // And it follows the log again afterwards.
    assert_eq!(cluster.write(2, None, "KEY PUT users.after yes"), Reply::Ok);
    assert_eq!(
        cluster.read(3, None, "KEY GET users.after"),
        Reply::Value(b"yes".to_vec())
    );
}

/// A replica dropped without closing (as kill -9 leaves it) comes back with its state and
/// no history: nothing of the applied entries is kept or replayed, and it serves again.
#[test]
fn a_restarted_replica_recovers_its_state_without_the_history() {
    let mut cluster = Cluster::new(&[(1, "a"), (2, "a"), (3, "a")]);
    for i in 0..60 {
        let line = format!("KEY PUT users.k{} v{i}", i % 5);
        assert_eq!(cluster.write(1, None, &line), Reply::Ok);
    }
    let _ = cluster.read(2, None, "KEY GET users.k0");
    let applied = cluster.replicas[&2].node().applied("USERS");
    assert!(applied >= 60);
    cluster.restart(2);
    let node = cluster.replicas[&2].node();
    assert_eq!(
        node.applied("USERS"),
        applied,
        "the applied slot is recovered"
    );
    assert_eq!(node.retained_bytes(), 0, "no history is loaded");
    assert_eq!(node.committed("USERS", applied), None);
    assert_eq!(cluster.stored(2, "users.k4"), Some(b"v59".to_vec()));
    // Duplicate detection came back with the state: it stays bounded.
    let dedup = node.group_state("USERS").unwrap().dedup.len();
    assert!(dedup < 60, "{dedup} ids kept");
    assert_eq!(cluster.write(2, None, "KEY PUT users.k0 again"), Reply::Ok);
    assert_eq!(
        cluster.read(3, None, "KEY GET users.k0"),
        Reply::Value(b"again".to_vec())
    );
}

impl Cluster {
    /// Hands `write` to `node` without waiting for its answer.
    fn submit(&mut self, node: NodeId, write: Write) -> RequestId {
        let now = self.now;
        self.replicas
            .get_mut(&node)
            .unwrap()
            .submit_write(now, write)
    }

    /// No replica keeps anything of an upload to the `files` table.
    fn assert_nothing_staged(&self) {
        for (node, replica) in &self.replicas {
            assert!(
                replica.store().uploads_for_test("files.x").is_empty(),
                "node {node} keeps a staged upload"
            );
        }
    }
}

fn large_blob(key: &str, len: usize, seed: u8) -> Write {
    Write {
        key: Key::parse(key.as_bytes()).unwrap(),
        principal: None,
        at_ms: 1_000,
        op: WriteOp::BlobSet {
            bytes: (0..len).map(|i| (i % 251) as u8 ^ seed).collect(),
        },
    }
}

fn blob_bytes(write: &Write) -> Vec<u8> {
    match &write.op {
        WriteOp::BlobSet { bytes } => bytes.clone(),
        _ => unreachable!(),
    }
}

/// A blob larger than one chunk goes through the log in fragments: a small write sent
/// after it to the same table is answered before it, the blob reaches every replica whole,
/// and nothing of the upload is left staged.
#[test]
fn a_large_blob_goes_in_fragments_and_small_writes_pass_it() {
    let mut cluster = Cluster::new(&[(1, "a"), (2, "b"), (3, "c")]);
    assert_eq!(cluster.write(1, None, "KEY PUT files.warm up"), Reply::Ok);
    let blob = large_blob("files.big", 12 * crate::storage::BLOB_CHUNK_BYTES + 99, 7);
    // Taken at a node that does not own the table: its fragments are forwarded.
    let big = cluster.submit(2, blob.clone());
    cluster.round();
    let small_write = Write::from_command(
        parse_request(b"KEY PUT files.small quick").unwrap().command,
        None,
        None,
        1_000,
    )
    .unwrap();
    let small = cluster.submit(3, small_write);
    assert_eq!(cluster.run_until_answered(3, small), Reply::Ok);
    assert!(
        !cluster.answers.contains_key(&(2, big)),
        "the small write waited for the whole blob"
    );
    assert_eq!(cluster.run_until_answered(2, big), Reply::Ok);
    let _ = cluster.read(1, None, "KEY GET files.small");
    let _ = cluster.read(3, None, "KEY GET files.small");
    for node in [1, 2, 3] {
        assert_eq!(
            cluster.stored(node, "files.big").as_deref(),
            Some(blob_bytes(&blob).as_slice()),
            "node {node}"
        );
    }
    cluster.assert_nothing_staged();
}

/// A replica cut off during an upload catches up from a snapshot taken midway (it carries
/// the staged part) and ends with the same blob; an upload whose fragments cannot reach a
/// quorum fails the write and is aborted, leaving nothing staged.
#[test]
fn uploads_survive_snapshots_and_failed_ones_are_aborted() {
    let settings = Settings {
        retain_bytes: 0,
        ..Settings::default()
    };
    let mut cluster = Cluster::with(&[(1, "a"), (2, "a"), (3, "a")], settings);
    assert_eq!(cluster.write(1, None, "KEY PUT files.warm up"), Reply::Ok);
    let blob = large_blob("files.big", 24 * crate::storage::BLOB_CHUNK_BYTES + 1, 3);
    let big = cluster.submit(1, blob.clone());
    // Node 3 hears the first fragments, is cut off for a few, and comes back midway.
    cluster.round();
    cluster.round();
    cluster.cut.insert(3);
    for _ in 0..4 {
        cluster.round();
    }
    cluster.cut.clear();
    assert!(
        !cluster.answers.contains_key(&(1, big)),
        "the blob is still going"
    );
    assert_eq!(cluster.run_until_answered(1, big), Reply::Ok);
    for _ in 0..400 {
        cluster.round();
        if cluster.stored(3, "files.big").is_some() {
            break;
        }
    }
    assert!(
        cluster.snapshots >= 1,
        "node 3 caught up without a snapshot"
    );
    assert_eq!(
        cluster.stored(3, "files.big").as_deref(),
        Some(blob_bytes(&blob).as_slice())
    );

    // Both other nodes cut off: no fragment commits, the write fails, the upload is aborted
    // once they are back, and no replica keeps anything of it.
    cluster.cut.insert(2);
    cluster.cut.insert(3);
    let lost = large_blob("files.lost", 3 * crate::storage::BLOB_CHUNK_BYTES, 5);
    let failing = cluster.submit(1, lost);
    // Past the request timeout (10 s): the fragments in flight fail, and with them the write.
    for _ in 0..2_100 {
        if cluster.answers.contains_key(&(1, failing)) {
            break;
        }
        cluster.round();
    }
    let answer = cluster.run_until_answered(1, failing);
    assert_eq!(answer, Reply::warn(ClusterError::Timeout.to_string()));
    cluster.cut.clear();
    assert_eq!(cluster.write(1, None, "KEY PUT files.after yes"), Reply::Ok);
    for _ in 0..100 {
        cluster.round();
    }
    for node in [1, 2, 3] {
        assert_eq!(cluster.stored(node, "files.lost"), None);
    }
    cluster.assert_nothing_staged();
}
