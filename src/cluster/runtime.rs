//! The cluster runtime: one thread owns the node's [`Replica`] and is the only place its
//! consensus state changes. Everything else talks to it through a [`ClusterHandle`]: client
//! sessions submit writes and read barriers and wait for the answer, the transport delivers
//! peers' messages, the pinger reports round trips. The thread ticks the consensus core every
//! few milliseconds, persists and applies what it produces (RocksDB calls block, which is why
//! this is a thread and not a task), hands messages for peers to the [`Transport`], and
//! publishes a [`ClusterView`] for `NODE`/`QUORUM`/`TABLE` commands and metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::directory::{self, NodeRecord};
use super::health::{HealthPolicy, PeerHealth, PeerStatus};
use super::replica::{Replica, node_record_op};
use crate::command::{Engine, Write};
use crate::consensus::{
    ClientOp, GroupId, Membership, Message, NodeId, RequestId, Settings, Slot, Tolerances, Zone,
};
use crate::protocol::Reply;

/// How often the consensus core gets a timer tick.
const TICK: Duration = Duration::from_millis(5);
/// How often the published view is refreshed.
const VIEW_EVERY: Duration = Duration::from_millis(100);
/// Inputs handled before the core is processed (keeps batches large under load and ticks
/// on time).
const INPUT_BATCH: usize = 4096;

/// Carries messages to peers. `send` must not block: it queues.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, to: &NodeRecord, messages: Vec<Message>);
    /// One authenticated round trip to `to` (an empty batch); its time, or why it failed.
    fn ping(&self, to: &NodeRecord) -> PingFuture;
}

pub type PingFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, String>> + Send>>;

/// What the runtime knows about one group, as of the last published view.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    pub owner: Option<NodeId>,
    pub ballot: Option<crate::consensus::Ballot>,
    pub is_owner: bool,
    pub applied: Slot,
}

/// Cumulative consensus counts since the runtime started (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Phase-1 ballots this node started.
    pub ballots: u64,
    /// Ballots started while another node was believed to own the group.
    pub steals: u64,
    /// Client requests sent on to an owner.
    pub forwards: u64,
    /// Entries applied while this node owned their group.
    pub commits: u64,
    /// Requests that got no quorum's answer in time.
    pub quorum_failures: u64,
}

/// A snapshot of the cluster for reports and metrics.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub members: Membership,
    pub joint: bool,
    pub epoch: u64,
    pub directory: BTreeMap<NodeId, NodeRecord>,
    pub groups: BTreeMap<GroupId, GroupView>,
    pub effective: Option<Tolerances>,
    pub pending_requests: usize,
    /// Nodes that were members and are no more (removed).
    pub removed: std::collections::BTreeSet<NodeId>,
}

enum Input {
    Write {
        write: Box<Write>,
        reply: oneshot::Sender<Reply>,
    },
    Barrier {
        tables: Vec<String>,
        reply: oneshot::Sender<Reply>,
    },
    System {
        op: ClientOp,
        reply: oneshot::Sender<Reply>,
    },
    Peer {
        from: NodeId,
        messages: Vec<Message>,
    },
    ZoneRtt {
        zone: Zone,
        rtt_us: u64,
    },
    Stop,
}

/// How to start a runtime.
pub struct RuntimeConfig {
    pub id: NodeId,
    pub zone: Zone,
    /// The membership the cluster started from (node 1 alone); the `atlas` log says the rest.
    pub bootstrap: Membership,
    pub settings: Settings,
    pub health: HealthPolicy,
}

/// The runtime's front door; cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Shared>,
}

struct Shared {
    id: NodeId,
    zone: Zone,
    inputs: Mutex<Sender<Input>>,
    view: RwLock<ClusterView>,
    counters: Mutex<Counters>,
    health: Mutex<BTreeMap<NodeId, PeerHealth>>,
    policy: HealthPolicy,
    configured: Tolerances,
    transport: Arc<dyn Transport>,
    bootstrap: Membership,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ClusterHandle {
    /// Recovers the replica from storage and starts the runtime thread.
    pub fn start(
        config: RuntimeConfig,
        engine: Arc<Engine>,
        transport: Arc<dyn Transport>,
    ) -> Result<ClusterHandle, crate::storage::StorageError> {
        let clock = Instant::now();
        let seed = config.id ^ (std::process::id() as u64) << 20;
        let configured = config.settings.tolerances;
        let replica = Replica::open(
            config.id,
            config.zone.clone(),
            config.bootstrap.clone(),
            config.settings,
            engine.clone(),
            seed,
            0,
        )?;
        let directory = directory::load(engine.store())?;
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            id: config.id,
            zone: config.zone,
            inputs: Mutex::new(tx),
            view: RwLock::new(ClusterView::default()),
            counters: Mutex::new(Counters::default()),
            health: Mutex::new(BTreeMap::new()),
            policy: config.health,
            configured,
            transport: transport.clone(),
            bootstrap: config.bootstrap.clone(),
            thread: Mutex::new(None),
        });
        let worker = Worker {
            replica,
            engine,
            transport,
            directory,
            clock,
            waiting: HashMap::new(),
            barriers: HashMap::new(),
            shared: shared.clone(),
        };
        worker.publish();
        let thread = std::thread::Builder::new()
            .name("atlas-consensus".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| crate::storage::StorageError::Corrupt(format!("thread: {e}")))?;
        *shared.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(ClusterHandle { inner: shared })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn zone(&self) -> &str {
        &self.inner.zone
    }

    /// The membership the cluster started from (what a joining node must start from too).
    pub fn bootstrap(&self) -> &Membership {
        &self.inner.bootstrap
    }

    pub fn configured(&self) -> Tolerances {
        self.inner.configured
    }

    fn input(&self, input: Input) {
        let _ = self
            .inner
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(input);
    }

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Reply>) -> Input) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.input(make(tx));
        rx.await
            .unwrap_or_else(|_| Reply::warn("unavailable: the cluster runtime stopped"))
    }

    /// Commits `write` through the table's owner; the answer is the rules' verdict.
    pub async fn write(&self, write: Write) -> Reply {
        self.ask(|reply| Input::Write {
            write: Box::new(write),
            reply,
        })
        .await
    }

    /// Waits until this node has applied everything committed to `tables` before the call:
    /// a read of local storage after `OK` is linearizable.
    pub async fn barrier(&self, tables: Vec<String>) -> Reply {
        self.ask(|reply| Input::Barrier { tables, reply }).await
    }

    /// Commits a change of the `atlas` group (a node record or a membership change).
    pub async fn system(&self, op: ClientOp) -> Reply {
        self.ask(|reply| Input::System { op, reply }).await
    }

    /// Commits a node record to the directory.
    pub async fn record_node(&self, record: &NodeRecord) -> Reply {
        self.system(node_record_op(record)).await
    }

    /// Pings `peer` now and records the outcome.
    pub async fn ping(&self, peer: &NodeRecord) -> Result<Duration, String> {
        let result = self.inner.transport.ping(peer).await;
        self.record_ping(peer.id, result.as_ref().ok().copied());
        result
    }

    /// Messages a peer sent.
    pub fn deliver(&self, from: NodeId, messages: Vec<Message>) {
        if !messages.is_empty() {
            self.input(Input::Peer { from, messages });
        }
    }

    pub fn view(&self) -> ClusterView {
        self.inner
            .view
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn counters(&self) -> Counters {
        *self
            .inner
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn health_policy(&self) -> HealthPolicy {
        self.inner.policy
    }

    /// A ping of `peer` answered after `rtt` (or failed, with `None`).
    pub fn record_ping(&self, peer: NodeId, rtt: Option<Duration>) {
        let now = Instant::now();
        let policy = self.inner.policy;
        let mut health = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
        let entry = health.entry(peer).or_insert_with(|| PeerHealth::new(now));
        match rtt {
            Some(rtt) => entry.record_success(rtt, now, &policy),
            None => entry.tick(now, &policy),
        }
        // The nearest zones serve Q2: tell the core each zone's best measured round trip.
        // (The membership is read under the view's lock: no copy of the whole view per ping.)
        let view = self.inner.view.read().unwrap_or_else(|e| e.into_inner());
        let Some(zone) = view.members.zone_of(peer).cloned() else {
            return;
        };
        let best = view
            .members
            .nodes_in(&zone)
            .filter_map(|n| health.get(&n))
            .filter(|h| h.status() != PeerStatus::Down)
            .filter_map(|h| h.rtt_ms())
            .fold(f64::INFINITY, f64::min);
        drop(view);
        drop(health);
        if best.is_finite() && zone != self.inner.zone {
            self.input(Input::ZoneRtt {
                zone,
                rtt_us: (best * 1000.0) as u64,
            });
        }
    }

    /// Status and averaged RTT of a peer (this node is always ACTIVE with 0).
    pub fn peer_health(&self, peer: NodeId) -> (PeerStatus, Option<f64>, Option<Instant>) {
        if peer == self.inner.id {
            return (PeerStatus::Active, Some(0.0), Some(Instant::now()));
        }
        let now = Instant::now();
        let policy = self.inner.policy;
        let mut health = self.inner.health.lock().unwrap_or_else(|e| e.into_inner());
        let entry = health.entry(peer).or_insert_with(|| PeerHealth::new(now));
        entry.tick(now, &policy);
        (entry.status(), entry.rtt_ms(), entry.last_success())
    }

    /// Stops the thread (after the server stopped serving).
    pub fn stop(&self) {
        self.input(Input::Stop);
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

/// A read barrier over several tables: answered when every table's barrier is.
struct MultiBarrier {
    remaining: usize,
    failure: Option<Reply>,
    reply: oneshot::Sender<Reply>,
}

struct Worker {
    replica: Replica,
    engine: Arc<Engine>,
    transport: Arc<dyn Transport>,
    directory: BTreeMap<NodeId, NodeRecord>,
    clock: Instant,
    waiting: HashMap<RequestId, oneshot::Sender<Reply>>,
    /// Request of one table's barrier → the multi-table barrier it belongs to.
    barriers: HashMap<RequestId, u64>,
    shared: Arc<Shared>,
}

impl Worker {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    fn run(mut self, inputs: Receiver<Input>) {
        let mut multi: HashMap<u64, MultiBarrier> = HashMap::new();
        let mut next_multi = 1u64;
        let mut next_tick = Instant::now();
        let mut next_view = Instant::now() + VIEW_EVERY;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match inputs.recv_timeout(wait) {
                Ok(input) => Some(input),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch: Vec<Input> = first.into_iter().collect();
            while batch.len() < INPUT_BATCH {
                match inputs.try_recv() {
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            for input in batch {
                let now = self.now();
                match input {
                    Input::Stop => return,
                    Input::Write { write, reply } => {
                        let request = self.replica.submit_write(now, &write);
                        self.waiting.insert(request, reply);
                    }
                    Input::System { op, reply } => {
                        let request = self.replica.submit_system(now, op);
                        self.waiting.insert(request, reply);
                    }
                    Input::Barrier { tables, reply } => {
                        if tables.is_empty() {
                            let _ = reply.send(Reply::Ok);
                            continue;
                        }
                        let id = next_multi;
                        next_multi += 1;
                        multi.insert(
                            id,
                            MultiBarrier {
                                remaining: tables.len(),
                                failure: None,
                                reply,
                            },
                        );
                        for table in tables {
                            let request = self.replica.submit_barrier(now, &table);
                            self.barriers.insert(request, id);
                        }
                    }
                    Input::Peer { from, messages } => {
                        for message in messages {
                            self.replica.step(now, from, message);
                        }
                    }
                    Input::ZoneRtt { zone, rtt_us } => {
                        self.replica.node_mut().set_zone_rtt(zone, rtt_us)
                    }
                }
            }
            if Instant::now() >= next_tick {
                let now = self.now();
                self.replica.tick(now);
                next_tick = Instant::now() + TICK;
            }
            let now = self.now();
            let processed = match self.replica.process(now) {
                Ok(processed) => processed,
                Err(e) => {
                    // Storage failed under the consensus state: continuing could acknowledge
                    // what is not durable. Stop the process; a restart recovers from disk.
                    tracing::error!(error = %e, "storage failure in the consensus runtime; exiting");
                    eprintln!("atlas: storage failure in the consensus runtime: {e}");
                    std::process::exit(70);
                }
            };
            if processed.directory_changed {
                match directory::load(self.engine.store()) {
                    Ok(directory) => self.directory = directory,
                    Err(e) => tracing::warn!(error = %e, "reloading the node directory failed"),
                }
            }
            self.count(&processed);
            let mut by_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
            for outgoing in processed.messages {
                by_peer
                    .entry(outgoing.to)
                    .or_default()
                    .push(outgoing.message);
            }
            for (to, messages) in by_peer {
                match self.directory.get(&to) {
                    Some(peer) => self.transport.send(peer, messages),
                    None => tracing::debug!(to, "no address for a peer yet; messages dropped"),
                }
            }
            for (request, reply) in processed.answers {
                if let Some(id) = self.barriers.remove(&request) {
                    let Some(m) = multi.get_mut(&id) else {
                        continue;
                    };
                    m.remaining -= 1;
                    if reply != Reply::Ok {
                        m.failure = Some(reply);
                    }
                    if m.remaining == 0
                        && let Some(m) = multi.remove(&id)
                    {
                        let _ = m.reply.send(m.failure.unwrap_or(Reply::Ok));
                    }
                } else if let Some(waiter) = self.waiting.remove(&request) {
                    let _ = waiter.send(reply);
                }
            }
            if Instant::now() >= next_view {
                self.publish();
                next_view = Instant::now() + VIEW_EVERY;
            }
        }
    }

    fn count(&self, processed: &super::replica::Processed) {
        let node = self.replica.node();
        let mut c = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut prepares = std::collections::BTreeSet::new();
        for outgoing in &processed.messages {
            match &outgoing.message {
                Message::Prepare {
                    group,
                    ballot,
                    handoff_from,
                    ..
                } if prepares.insert((group.clone(), *ballot)) => {
                    c.ballots += 1;
                    let other_owner = node
                        .owner_hint(group)
                        .is_some_and(|owner| owner != node.id());
                    if handoff_from.is_none() && other_owner {
                        c.steals += 1;
                    }
                }
                Message::Forward { .. } => c.forwards += 1,
                _ => {}
            }
        }
        c.commits += processed
            .applied_groups
            .iter()
            .filter(|g| node.is_owner(g))
            .count() as u64;
        c.quorum_failures += processed.timeouts;
    }

    fn publish(&self) {
        let node = self.replica.node();
        let mut groups = BTreeMap::new();
        for group in node.groups() {
            groups.insert(
                group.clone(),
                GroupView {
                    owner: if node.is_owner(group) {
                        Some(node.id())
                    } else {
                        node.owner_hint(group)
                    },
                    ballot: node.ballot(group),
                    is_owner: node.is_owner(group),
                    applied: node.applied(group),
                },
            );
        }
        let view = ClusterView {
            members: node.membership().clone(),
            joint: node.config().is_joint(),
            epoch: node.config().epoch,
            directory: self.directory.clone(),
            groups,
            effective: Some(node.quorums().effective()),
            pending_requests: node.pending_requests(),
            removed: node
                .config()
                .past
                .iter()
                .flat_map(|(m, _)| m.nodes())
                .filter(|n| !node.membership().contains(*n))
                .collect(),
        };
        *self.shared.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::NodeIdentity;
    use crate::config::Durability;
    use crate::protocol::parse_request;
    use crate::storage::Store;

    /// A transport for a cluster of one: nothing to send.
    struct Nowhere;
    impl Transport for Nowhere {
        fn send(&self, _: &NodeRecord, _: Vec<Message>) {}
        fn ping(&self, _: &NodeRecord) -> PingFuture {
            Box::pin(async { Err("no peers".to_string()) })
        }
    }

    #[tokio::test]
    async fn a_single_member_runtime_commits_writes_barriers_and_node_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Relaxed).unwrap());
        let identity = NodeIdentity {
            id: 1,
            region: "a".into(),
            host: "127.0.0.1".into(),
            port: 1,
            configured_fn: 1,
            configured_fz: 0,
        };
        let engine = Arc::new(Engine::new(store, identity).unwrap());
        let cluster = ClusterHandle::start(
            RuntimeConfig {
                id: 1,
                zone: "a".into(),
                bootstrap: Membership::new([(1, "a".to_string())]),
                settings: Settings::default(),
                health: HealthPolicy::default(),
            },
            engine.clone(),
            Arc::new(Nowhere),
        )
        .unwrap();
        let limit = Duration::from_secs(10);
        let command = parse_request(b"KEY PUT users.a 1").unwrap().command;
        let write = Write::from_command(command, None, None, 1).unwrap();
        assert_eq!(
            tokio::time::timeout(limit, cluster.write(write))
                .await
                .unwrap(),
            Reply::Ok
        );
        assert_eq!(
            tokio::time::timeout(limit, cluster.barrier(vec!["USERS".into(), "OTHER".into()]))
                .await
                .unwrap(),
            Reply::Ok
        );
        let record = NodeRecord {
            id: 2,
            region: "b".into(),
            host: "127.0.0.2".into(),
            port: 2,
        };
        assert_eq!(
            tokio::time::timeout(limit, cluster.record_node(&record))
                .await
                .unwrap(),
            Reply::Ok
        );
        tokio::time::sleep(VIEW_EVERY * 2).await;
        assert_eq!(cluster.view().directory.get(&2), Some(&record));
        assert!(
            cluster
                .view()
                .groups
                .get("USERS")
                .is_some_and(|g| g.is_owner)
        );
        assert!(cluster.counters().commits >= 2);
        cluster.stop();
    }
}
