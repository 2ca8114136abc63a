//! The cluster runtime: one thread owns the node's [`Replica`] and is the only place its
//! consensus state changes (see `worker.rs`). Everything else talks to it through a
//! [`ClusterHandle`]: client sessions submit writes and read barriers and wait for the
//! answer, the transport delivers peers' messages, the pinger reports round trips, the
//! snapshot endpoint exports groups. Memory is bounded at the doors: writes in flight
//! through this node and peers' messages waiting for the thread are both limited by bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, oneshot};

use super::directory::{self, NodeRecord};
use super::error::{Answer, ClusterError};
use super::health::{HealthPolicy, PeerHealth, PeerStatus};
use super::placement::{MOVE_PATIENCE, PlacementRecord, placement_op};
use super::replica::{Replica, group_tables, node_record_op};
use super::worker::Worker;
use crate::consensus::{
    ClientOp, GroupId, Membership, Message, NodeId, Settings, Tolerances, Zone,
};
use crate::kv::Write;
use crate::storage::Store;
use crate::storage::consensus_store::ConsensusStore;
use crate::storage::snapshot::Installed;
use crate::storage::stream::SnapshotError;

pub use super::view::{ClusterView, Counters, GroupView};

/// Bytes of client writes in flight through one node (taken in, not yet answered). A write
/// larger than this still goes, alone.
const WRITE_BUDGET_BYTES: usize = 256 * 1024 * 1024;
/// Bytes of peers' messages waiting for the runtime thread. A delivery beyond it waits for
/// room (holding the sender's POST, so the sender's own bounded queue fills and drops), and
/// is refused after `PEER_INPUT_WAIT` (the sender drops it; consensus resends).
const PEER_INPUT_BUDGET_BYTES: usize = 32 * 1024 * 1024;
const PEER_INPUT_WAIT: Duration = Duration::from_secs(1);

/// Carries messages to peers and snapshots from them.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for `to`; never blocks. Messages beyond the peer's queue budget are
    /// dropped (and returned as a count): consensus resends what matters.
    fn send(&self, to: &NodeRecord, messages: Vec<Message>) -> usize;
    /// One authenticated round trip to `to` (an empty batch); its time, or why it failed.
    fn ping(&self, to: &NodeRecord) -> PingFuture;
    /// Downloads a snapshot of `groups` from `from` into the file `into`, verified whole.
    fn fetch_snapshot(&self, from: &NodeRecord, groups: Vec<GroupId>, into: PathBuf)
    -> FetchFuture;
}

pub type PingFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Duration, String>> + Send>>;
pub type FetchFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

pub(super) enum Input {
    Write {
        write: Box<Write>,
        reply: oneshot::Sender<Answer>,
    },
    Barrier {
        tables: Vec<String>,
        reply: oneshot::Sender<Answer>,
    },
    System {
        op: ClientOp,
        reply: oneshot::Sender<Answer>,
    },
    Peer {
        from: NodeId,
        messages: Vec<Message>,
        bytes: usize,
    },
    ZoneRtt {
        zone: Zone,
        rtt_us: u64,
    },
    /// A snapshot fetch and install ended.
    SnapshotDone {
        group: GroupId,
        result: Result<Vec<Installed>, String>,
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
    /// Where snapshots being fetched from peers are kept until installed.
    pub snapshot_dir: PathBuf,
}

/// The runtime's front door; cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    inner: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) id: NodeId,
    zone: Zone,
    inputs: Mutex<Sender<Input>>,
    pub(super) view: RwLock<ClusterView>,
    pub(super) counters: Mutex<Counters>,
    health: Mutex<BTreeMap<NodeId, PeerHealth>>,
    policy: HealthPolicy,
    configured: Tolerances,
    pub(super) transport: Arc<dyn Transport>,
    bootstrap: Membership,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    write_budget: Arc<Semaphore>,
    /// Bytes of peer messages queued for the thread, and a wake-up when it takes some.
    pub(super) peer_input: AtomicUsize,
    pub(super) peer_input_taken: tokio::sync::Notify,
    pub(super) settings: Settings,
    pub(super) store: Arc<Store>,
    pub(super) snapshot_dir: PathBuf,
    /// Where fetches run (the server's tokio runtime); none in plain threads.
    pub(super) tasks: Option<tokio::runtime::Handle>,
}

impl Shared {
    /// Status, averaged RTT and last answer of a peer (this node is always ACTIVE with 0).
    pub(super) fn health_of(&self, peer: NodeId) -> (PeerStatus, Option<f64>, Option<Instant>) {
        if peer == self.id {
            return (PeerStatus::Active, Some(0.0), Some(Instant::now()));
        }
        let now = Instant::now();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let entry = health.entry(peer).or_insert_with(|| PeerHealth::new(now));
        entry.tick(now, &self.policy);
        (entry.status(), entry.rtt_ms(), entry.last_success())
    }

    /// The members of `zone` that answer pings now (ACTIVE), nearest first (this node, if
    /// of that zone, first of all).
    pub(super) fn active_in(&self, members: &Membership, zone: &str) -> Vec<NodeId> {
        let mut active: Vec<(f64, NodeId)> = members
            .nodes_in(zone)
            .filter_map(|n| match self.health_of(n) {
                (PeerStatus::Active, rtt, _) => Some((rtt.unwrap_or(f64::MAX), n)),
                _ => None,
            })
            .collect();
        active.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        active.into_iter().map(|(_, n)| n).collect()
    }

    pub(super) fn input(&self, input: Input) {
        let _ = self
            .inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(input);
    }
}

impl ClusterHandle {
    /// Recovers the replica from storage and starts the runtime thread.
    pub fn start(
        config: RuntimeConfig,
        store: Arc<Store>,
        transport: Arc<dyn Transport>,
    ) -> Result<ClusterHandle, crate::storage::StorageError> {
        let seed = config.id ^ (std::process::id() as u64) << 20;
        let configured = config.settings.tolerances;
        let replica = Replica::open(
            config.id,
            config.zone.clone(),
            config.bootstrap.clone(),
            config.settings.clone(),
            store.clone(),
            seed,
            0,
        )?;
        let directory = directory::load(&store)?;
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
            transport,
            bootstrap: config.bootstrap,
            thread: Mutex::new(None),
            write_budget: Arc::new(Semaphore::new(WRITE_BUDGET_BYTES)),
            peer_input: AtomicUsize::new(0),
            peer_input_taken: tokio::sync::Notify::new(),
            settings: config.settings,
            store,
            snapshot_dir: config.snapshot_dir,
            tasks: tokio::runtime::Handle::try_current().ok(),
        });
        let mut worker = Worker::new(replica, directory, shared.clone());
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

    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Answer>) -> Input) -> Answer {
        let (tx, rx) = oneshot::channel();
        self.inner.input(make(tx));
        rx.await.unwrap_or(Err(ClusterError::Stopped))
    }

    /// Commits `write` through the table's owner; the answer is the rules' verdict. Waits
    /// while the writes in flight through this node already hold the write budget.
    pub async fn write(&self, write: Write) -> Answer {
        let size = write.size().clamp(1, WRITE_BUDGET_BYTES) as u32;
        let Ok(_permit) = self.inner.write_budget.acquire_many(size).await else {
            return Err(ClusterError::Stopped);
        };
        self.ask(|reply| Input::Write {
            write: Box::new(write),
            reply,
        })
        .await
    }

    /// Waits until this node has applied everything committed to `tables` before the call:
    /// a read of local storage after it returns is linearizable.
    pub async fn barrier(&self, tables: Vec<String>) -> Result<(), ClusterError> {
        self.ask(|reply| Input::Barrier { tables, reply })
            .await
            .map(drop)
    }

    /// Commits a change of the `atlas` group (a node record or a membership change).
    pub async fn system(&self, op: ClientOp) -> Result<(), ClusterError> {
        self.ask(|reply| Input::System { op, reply })
            .await
            .map(drop)
    }

    /// Commits a node record to the directory.
    pub async fn record_node(&self, record: &NodeRecord) -> Result<(), ClusterError> {
        self.system(node_record_op(record)).await
    }

    /// `TABLE PIN` / `TABLE UNPIN` (`region: None`): committed through `atlas`; from then on
    /// the owner keeps the table in the region (see `placement.rs`).
    pub async fn pin(&self, table: &str, region: Option<Zone>) -> Result<(), ClusterError> {
        if let Some(region) = &region {
            self.check_region(region)?;
        }
        let record = PlacementRecord {
            table: table.to_string(),
            pinned: region,
            move_to: None,
        };
        self.system(placement_op(&record)).await
    }

    /// `TABLE MOVE`: commits a planned move, then waits until a node of `region` owns the
    /// table (as this node sees it), for about [`MOVE_PATIENCE`].
    pub async fn move_table(&self, table: &str, region: &str) -> Result<(), ClusterError> {
        self.check_region(region)?;
        let view = self.view();
        let pinned = view.pins.get(table).cloned();
        if let Some(pin) = pinned.as_ref().filter(|p| p.as_str() != region) {
            return Err(ClusterError::Placement(format!(
                "{table} is pinned to region {pin}; TABLE UNPIN it first"
            )));
        }
        let group = self.inner.settings.group_of(table);
        let owned_in = |view: &ClusterView| {
            let owner = view.groups.get(&group).and_then(|g| g.owner)?;
            view.members.zone_of(owner).cloned()
        };
        if owned_in(&view).is_none() {
            return Err(ClusterError::Placement(format!(
                "{table} has no owner yet (nothing was written to it); write to it first"
            )));
        }
        let record = PlacementRecord {
            table: table.to_string(),
            pinned,
            move_to: Some(region.to_string()),
        };
        self.system(placement_op(&record)).await?;
        let deadline = tokio::time::Instant::now() + MOVE_PATIENCE + Duration::from_secs(2);
        loop {
            if owned_in(&self.view()).as_deref() == Some(region) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Placement(format!(
                    "the move of {table} to region {region} did not complete in time (no \
                     active node there, or its ownership kept changing); TABLE INFO shows \
                     where it is"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A region some member of the cluster is in.
    fn check_region(&self, region: &str) -> Result<(), ClusterError> {
        if self.view().members.nodes_in(region).next().is_none() {
            return Err(ClusterError::Placement(format!(
                "no member of the cluster is in region {region}"
            )));
        }
        Ok(())
    }

    /// Pings `peer` now and records the outcome.
    pub async fn ping(&self, peer: &NodeRecord) -> Result<Duration, String> {
        let result = self.inner.transport.ping(peer).await;
        self.record_ping(peer.id, result.as_ref().ok().copied());
        result
    }

    /// Messages a peer sent. While the runtime is behind by more than its budget this waits
    /// for room (bounded); false if none came (the caller refuses them; the sender's
    /// consensus resends).
    pub async fn deliver(&self, from: NodeId, messages: Vec<Message>) -> bool {
        if messages.is_empty() {
            return true;
        }
        let bytes: usize = messages.iter().map(Message::size_hint).sum();
        let deadline = tokio::time::Instant::now() + PEER_INPUT_WAIT;
        loop {
            let taken = self.inner.peer_input_taken.notified();
            let queued = self.inner.peer_input.load(Ordering::Relaxed);
            // A large message (a blob) needs only half the budget free: it is not starved
            // by a steady stream of small ones.
            let room = if bytes >= PEER_INPUT_BUDGET_BYTES / 2 {
                queued <= PEER_INPUT_BUDGET_BYTES / 2
            } else {
                queued + bytes <= PEER_INPUT_BUDGET_BYTES
            };
            if room {
                break;
            }
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                return false;
            }
        }
        self.inner.peer_input.fetch_add(bytes, Ordering::Relaxed);
        self.inner.input(Input::Peer {
            from,
            messages,
            bytes,
        });
        true
    }

    /// Writes a snapshot of `groups` (every group this node has, when empty) to `out`: one
    /// consistent copy of their state machines, in bounded frames.
    pub fn export_snapshot(
        &self,
        groups: Vec<GroupId>,
        out: impl std::io::Write,
    ) -> Result<(), SnapshotError> {
        let store = &self.inner.store;
        let groups = if groups.is_empty() {
            ConsensusStore::new(store)
                .groups()
                .map_err(|e| SnapshotError::Io(std::io::Error::other(e.to_string())))?
        } else {
            groups
        };
        let specs: Vec<(GroupId, Vec<String>)> = groups
            .into_iter()
            .map(|g| {
                let tables = group_tables(&self.inner.settings, &g);
                (g, tables)
            })
            .collect();
        store.export_groups(&specs, out)
    }

    /// The tables whose keys belong to `group`.
    pub fn group_tables(&self, group: &str) -> Vec<String> {
        group_tables(&self.inner.settings, group)
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
            self.inner.input(Input::ZoneRtt {
                zone,
                rtt_us: (best * 1000.0) as u64,
            });
        }
    }

    /// Status and averaged RTT of a peer (this node is always ACTIVE with 0).
    pub fn peer_health(&self, peer: NodeId) -> (PeerStatus, Option<f64>, Option<Instant>) {
        self.inner.health_of(peer)
    }

    /// Stops the thread (after the server stopped serving).
    pub fn stop(&self) {
        self.inner.input(Input::Stop);
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

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
