//! The runtime thread: it owns the [`Replica`] (RocksDB calls block, which is why this is a
//! thread and not a task), takes every input queued since its last round, ticks the core
//! every few milliseconds, runs the driver (messages leave for peers while the batch is
//! written), answers client requests, starts snapshot fetches and publishes the view.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::directory::{self, NodeRecord};
use super::driver::Outbox;
use super::error::{Answer, ClusterError};
use super::placement::Placements;
use super::replica::{Replica, group_tables};
use super::runtime::{Input, Shared};
use super::view::ClusterView;
use crate::consensus::{Ballot, GroupId, Message, NodeId, RequestId, SnapshotRequest};
use crate::protocol::Reply;

/// How often the consensus core gets a timer tick.
const TICK: Duration = Duration::from_millis(5);
/// How often the published view is refreshed when nothing changed.
pub(super) const VIEW_EVERY: Duration = Duration::from_millis(100);
/// The least time between two publications of a changed view (building one walks every
/// group): a change is published before the answers of the round that made it, unless the
/// last publication is younger than this, and then on the next loop (at most one tick later).
const VIEW_MIN_GAP: Duration = Duration::from_millis(1);
/// Inputs handled before the core is processed (keeps batches large under load and ticks
/// on time).
const INPUT_BATCH: usize = 4096;

/// A read barrier over several tables: answered when every table's barrier is.
struct MultiBarrier {
    remaining: usize,
    failure: Option<ClusterError>,
    reply: oneshot::Sender<Answer>,
}

pub(super) struct Worker {
    replica: Replica,
    directory: BTreeMap<NodeId, NodeRecord>,
    clock: Instant,
    waiting: HashMap<RequestId, oneshot::Sender<Answer>>,
    /// Request of one table's barrier → the multi-table barrier it belongs to.
    barriers: HashMap<RequestId, u64>,
    multi: HashMap<u64, MultiBarrier>,
    next_multi: u64,
    /// Groups whose snapshot is being fetched or installed.
    fetching: BTreeSet<GroupId>,
    shared: Arc<Shared>,
    /// Pins and planned moves (`placement.rs`).
    placements: Placements,
    /// Something the view shows may have changed since it was last published.
    view_dirty: bool,
    last_view: Instant,
}

/// Messages of one `process` call, handed to the transport per peer on each flush.
struct TransportOutbox<'a> {
    shared: &'a Shared,
    directory: &'a BTreeMap<NodeId, NodeRecord>,
    queued: BTreeMap<NodeId, Vec<Message>>,
    /// Phase-1 ballots seen going out (counted once per group and ballot).
    prepares: BTreeSet<(GroupId, Ballot, bool)>,
    forwards: u64,
    dropped: u64,
    /// Messages handed to the outbox this round.
    sent: usize,
}

impl Outbox for TransportOutbox<'_> {
    fn send(&mut self, to: NodeId, message: Message) {
        self.sent += 1;
        match &message {
            Message::Prepare {
                group,
                ballot,
                handoff_from,
                ..
            } => {
                self.prepares
                    .insert((group.clone(), *ballot, handoff_from.is_some()));
            }
            Message::Forward { .. } => self.forwards += 1,
            _ => {}
        }
        self.queued.entry(to).or_default().push(message);
    }

    fn flush(&mut self) {
        for (to, messages) in std::mem::take(&mut self.queued) {
            match self.directory.get(&to) {
                Some(peer) => {
                    self.dropped += self.shared.transport.send(peer, messages) as u64;
                }
                None => tracing::debug!(to, "no address for a peer yet; messages dropped"),
            }
        }
    }
}

impl Worker {
    pub(super) fn new(
        mut replica: Replica,
        directory: BTreeMap<NodeId, NodeRecord>,
        shared: Arc<Shared>,
    ) -> Worker {
        let placements = Placements::load(&shared.store, replica.node_mut()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading table pins failed; starting without them");
            Placements::empty()
        });
        Worker {
            placements,
            replica,
            directory,
            clock: Instant::now(),
            waiting: HashMap::new(),
            barriers: HashMap::new(),
            multi: HashMap::new(),
            next_multi: 1,
            fetching: BTreeSet::new(),
            shared,
            view_dirty: true,
            last_view: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    pub(super) fn run(mut self, inputs: Receiver<Input>) {
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
                if !self.take(input) {
                    return;
                }
            }
            if Instant::now() >= next_tick {
                let now = self.now();
                self.replica.tick(now);
                let shared = &self.shared;
                self.placements
                    .enforce(now, self.replica.node_mut(), |members, zone| {
                        shared.active_in(members, zone)
                    });
                next_tick = Instant::now() + TICK;
            }
            self.process();
            if self.view_dirty && self.last_view.elapsed() >= VIEW_MIN_GAP
                || Instant::now() >= next_view
            {
                self.publish();
                next_view = Instant::now() + VIEW_EVERY;
            }
        }
    }

    /// Hands one input to the replica; false on `Stop`.
    fn take(&mut self, input: Input) -> bool {
        let now = self.now();
        match input {
            Input::Stop => return false,
            Input::Write { write, reply } => {
                let request = self.replica.submit_write(now, *write);
                self.waiting.insert(request, reply);
            }
            Input::System { op, reply } => {
                let request = self.replica.submit_system(now, op);
                self.waiting.insert(request, reply);
            }
            Input::Barrier { tables, reply } => {
                if tables.is_empty() {
                    let _ = reply.send(Ok(Reply::Ok));
                    return true;
                }
                let id = self.next_multi;
                self.next_multi += 1;
                self.multi.insert(
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
            Input::Peer {
                from,
                messages,
                bytes,
            } => {
                self.shared.peer_input.fetch_sub(bytes, Ordering::Relaxed);
                self.shared.peer_input_taken.notify_waiters();
                for message in messages {
                    self.replica.step(now, from, message);
                }
            }
            Input::ZoneRtt { zone, rtt_us } => self.replica.node_mut().set_zone_rtt(zone, rtt_us),
            Input::SnapshotDone { group, result } => {
                self.fetching.remove(&group);
                self.snapshot_done(now, group, result);
            }
        }
        true
    }

    fn snapshot_done(
        &mut self,
        now: u64,
        group: GroupId,
        result: Result<Vec<crate::storage::snapshot::Installed>, String>,
    ) {
        let mut counters = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(installed) if installed.iter().any(|i| i.group == group) => {
                counters.snapshots_installed += 1;
                drop(counters);
                for done in installed {
                    tracing::info!(group = %done.group, slot = done.state.applied, "installed a snapshot");
                    self.replica.snapshot_installed(now, done);
                }
                // An `atlas` snapshot brings the pins with it.
                if let Err(e) = self
                    .placements
                    .reload(&self.shared.store, self.replica.node_mut())
                {
                    tracing::warn!(error = %e, "reloading table pins failed");
                }
            }
            Ok(_) => {
                drop(counters);
                self.replica.snapshot_failed(now, &group);
            }
            Err(e) => {
                counters.snapshots_failed += 1;
                drop(counters);
                tracing::warn!(group = %group, error = %e, "fetching a snapshot failed; retrying later");
                self.replica.snapshot_failed(now, &group);
            }
        }
    }

    fn process(&mut self) {
        let now = self.now();
        let mut outbox = TransportOutbox {
            shared: &self.shared,
            directory: &self.directory,
            queued: BTreeMap::new(),
            prepares: BTreeSet::new(),
            forwards: 0,
            dropped: 0,
            sent: 0,
        };
        let report = match self.replica.process(now, &mut outbox) {
            Ok(report) => report,
            Err(e) => {
                // Storage failed under the consensus state: continuing could acknowledge
                // what is not durable. Stop the process; a restart recovers from disk.
                tracing::error!(error = %e, "storage failure in the consensus runtime; exiting");
                eprintln!("atlas: storage failure in the consensus runtime: {e}");
                std::process::exit(70);
            }
        };
        let sent = outbox.sent;
        let TransportOutbox {
            prepares,
            forwards,
            dropped,
            ..
        } = outbox;
        self.count(&prepares, forwards, dropped, &report.processed);
        let placed = !report.placements.is_empty();
        if placed {
            self.placements
                .applied(report.placements, self.replica.node_mut());
            self.view_dirty = true;
        }
        if report.directory_changed {
            match directory::load(&self.shared.store) {
                Ok(directory) => self.directory = directory,
                Err(e) => tracing::warn!(error = %e, "reloading the node directory failed"),
            }
        }
        // Whatever answers a client next (TABLE INFO, metrics) sees what this round did:
        // ownership, applied slots and members change only in rounds that send or apply.
        let processed = &report.processed;
        if sent > 0
            || report.directory_changed
            || !processed.applied.is_empty()
            || !processed.answers.is_empty()
        {
            self.view_dirty = true;
        }
        // A pin or unpin is answered only once the view shows it (placements are rare).
        if self.view_dirty && (placed || self.last_view.elapsed() >= VIEW_MIN_GAP) {
            self.publish();
        }
        for request in report.processed.snapshots {
            self.fetch_snapshot(request);
        }
        for (request, reply) in report.processed.answers {
            self.answer(request, reply);
        }
    }

    fn answer(&mut self, request: RequestId, reply: Answer) {
        let Some(id) = self.barriers.remove(&request) else {
            if let Some(waiter) = self.waiting.remove(&request) {
                let _ = waiter.send(reply);
            }
            return;
        };
        let Some(m) = self.multi.get_mut(&id) else {
            return;
        };
        m.remaining -= 1;
        if let Err(failure) = reply {
            m.failure = Some(failure);
        }
        if m.remaining == 0
            && let Some(m) = self.multi.remove(&id)
        {
            let _ = m.reply.send(m.failure.map_or(Ok(Reply::Ok), Err));
        }
    }

    /// Fetches a snapshot of the group from the peer (on the server's tokio runtime), then
    /// installs it on a blocking thread; the outcome comes back as `Input::SnapshotDone`.
    fn fetch_snapshot(&mut self, request: SnapshotRequest) {
        let SnapshotRequest { group, from, .. } = request;
        let peer = self.directory.get(&from).cloned();
        let (Some(tasks), Some(peer)) = (self.shared.tasks.clone(), peer) else {
            let now = self.now();
            self.replica.snapshot_failed(now, &group);
            return;
        };
        if !self.fetching.insert(group.clone()) {
            return;
        }
        let shared = self.shared.clone();
        let file = shared
            .snapshot_dir
            .join(format!("{}.snap", sanitize(&group)));
        tasks.spawn(async move {
            let result = fetch_and_install(&shared, &peer, &group, file).await;
            shared.input(Input::SnapshotDone { group, result });
        });
    }

    fn count(
        &self,
        prepares: &BTreeSet<(GroupId, Ballot, bool)>,
        forwards: u64,
        dropped: u64,
        processed: &super::driver::Processed<(RequestId, Answer)>,
    ) {
        let node = self.replica.node();
        let mut c = self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (group, _, handoff) in prepares {
            c.ballots += 1;
            let other_owner = node
                .owner_hint(group)
                .is_some_and(|owner| owner != node.id());
            if !handoff && other_owner {
                c.steals += 1;
            }
        }
        c.forwards += forwards;
        c.messages_dropped += dropped;
        c.commits += processed
            .applied
            .iter()
            .filter(|a| node.is_owner(&a.group))
            .count() as u64;
        c.quorum_failures += processed.timeouts;
        c.messages_refused = node.refused_messages().values().sum();
    }

    pub(super) fn publish(&mut self) {
        let mut view = ClusterView::of(self.replica.node(), &self.directory, crate::kv::now_ms());
        view.pins = self.placements.pins().clone();
        *self.shared.view.write().unwrap_or_else(|e| e.into_inner()) = view;
        self.view_dirty = false;
        self.last_view = Instant::now();
    }
}

/// A group name as a file name (group names are table names: letters, digits, `_`, `-`).
fn sanitize(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

async fn fetch_and_install(
    shared: &Arc<Shared>,
    peer: &NodeRecord,
    group: &GroupId,
    file: std::path::PathBuf,
) -> Result<Vec<crate::storage::snapshot::Installed>, String> {
    crate::files::private_dir(&shared.snapshot_dir)
        .map_err(|e| format!("{}: {e}", shared.snapshot_dir.display()))?;
    let fetched = shared
        .transport
        .fetch_snapshot(peer, vec![group.clone()], file.clone())
        .await;
    let installed = match fetched {
        Ok(()) => {
            let store = shared.store.clone();
            let settings = shared.settings.clone();
            let path = file.clone();
            tokio::task::spawn_blocking(move || {
                let input = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                store
                    .install_groups(std::io::BufReader::new(input), &|g| {
                        group_tables(&settings, g)
                    })
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&file);
    installed
}
