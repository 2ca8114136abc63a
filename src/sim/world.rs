//! The simulated world: nodes, network, faults, and what nodes persist.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::{Report, SimConfig};
use super::machine::SimMachine;
use crate::check::Operation;
use crate::cluster::driver::{self, Outbox};
use crate::consensus::{Command, GroupId, Membership, Message, Node, NodeId, Slot, Zone};

/// Node ticks every this many milliseconds of global time.
const TICK_MS: u64 = 10;
/// A client gives up on a request after this long (beyond the node's own timeout).
pub(super) const CLIENT_TIMEOUT_MS: u64 = 12_000;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Vec<u8>,
    },
    Tick(NodeId),
    ClientNext(usize),
    ClientGiveUp {
        client: usize,
        request: u64,
    },
    Crash(NodeId),
    Restart(NodeId),
    Partition,
    Heal,
    /// The `i`th configured membership change.
    Change(usize),
    /// The `i`th configured placement change.
    Place(usize),
    /// `to` asked `from` for a snapshot of `group`; it arrives (or the transfer failed).
    Snapshot {
        to: NodeId,
        group: GroupId,
        stream: Option<Vec<u8>>,
    },
}

/// Messages a node sent during one `driver::process`.
#[derive(Default)]
struct Sent(Vec<(NodeId, Message)>);

impl Outbox for Sent {
    fn send(&mut self, to: NodeId, message: Message) {
        self.0.push((to, message));
    }
}

pub(super) struct SimNode {
    pub(super) zone: Zone,
    pub(super) node: Option<Node>,
    pub(super) machine: SimMachine,
    pub(super) incarnation: u64,
    pub(super) clock_offset: u64,
    pub(super) drift_ppm: i64,
}

impl SimNode {
    /// A node not started yet, with its own clock offset and drift (drawn from `rng`).
    pub(super) fn new(zone: Zone, rng: &mut StdRng, drift_bound_ppm: i64) -> SimNode {
        let clock_offset = rng.random_range(0..1_000_000);
        let drift_ppm = rng.random_range(-drift_bound_ppm..=drift_bound_ppm);
        SimNode {
            zone,
            node: None,
            machine: SimMachine::default(),
            incarnation: 0,
            clock_offset,
            drift_ppm,
        }
    }
}

pub(super) struct Client {
    pub(super) node: NodeId,
    pub(super) retired: bool,
    pub(super) waiting: Option<u64>,
    pub(super) counter: u64,
}

pub(super) struct Pending {
    pub(super) client: usize,
    pub(super) op_index: usize,
}

pub struct Sim {
    pub(super) config: SimConfig,
    pub(super) rng: StdRng,
    pub(super) now: u64,
    pub(super) seq: u64,
    pub(super) queue: BTreeMap<(u64, u64), Event>,
    pub(super) nodes: BTreeMap<NodeId, SimNode>,
    pub(super) membership: Membership,
    /// Blocked directed links (from, to).
    pub(super) blocked: BTreeSet<(NodeId, NodeId)>,
    pub(super) clients: Vec<Client>,
    pub(super) requests: BTreeMap<u64, Pending>,
    pub(super) next_request: u64,
    pub(super) history: Vec<Operation>,
    /// Global times of call and return of each history entry.
    pub(super) times: Vec<(u64, Option<u64>)>,
    /// One order of events for the checker's call/return stamps.
    pub(super) stamp: u64,
    pub(super) chosen: BTreeMap<(GroupId, Slot), Command>,
    pub(super) owners: BTreeMap<GroupId, Option<NodeId>>,
    pub(super) report: Report,
    /// Prints every delivered message (ATLAS_SIM_TRACE=1), for replaying a failing seed.
    pub(super) trace: bool,
}

impl Sim {
    pub fn run(config: SimConfig) -> Report {
        let mut sim = Sim::new(config);
        sim.run_to_end();
        sim.finish()
    }

    pub fn new(config: SimConfig) -> Sim {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let mut members = Vec::new();
        let mut id = 0;
        for (z, size) in config.zones.iter().enumerate() {
            for _ in 0..*size {
                id += 1;
                members.push((id, format!("z{z}")));
            }
        }
        let membership = Membership::new(members.clone());
        let mut nodes = BTreeMap::new();
        for (id, zone) in &members {
            nodes.insert(*id, SimNode::new(zone.clone(), &mut rng, config.drift_ppm));
        }
        let mut clients = Vec::new();
        for (zone, count) in &config.clients {
            let zone_nodes: Vec<NodeId> = members
                .iter()
                .filter(|(_, z)| *z == format!("z{zone}"))
                .map(|(n, _)| *n)
                .collect();
            for _ in 0..*count {
                if zone_nodes.is_empty() {
                    continue;
                }
                let node = zone_nodes[rng.random_range(0..zone_nodes.len())];
                clients.push(Client {
                    node,
                    retired: false,
                    waiting: None,
                    counter: 0,
                });
            }
        }
        let mut sim = Sim {
            report: Report {
                seed: config.seed,
                shape: format!(
                    "zones {:?}, fn {} fz {}, {:?}, loss {:.3}, dup {:.3}, {} partitions, {} crashes, changes {:?}, slow {:?}, retain {} B, batch {} B, window {} B",
                    config.zones,
                    config.settings.tolerances.nodes,
                    config.settings.tolerances.zones,
                    config.settings.migration,
                    config.loss,
                    config.duplication,
                    config.partitions,
                    config.crashes,
                    config.changes,
                    config.slow,
                    config.settings.retain_bytes,
                    config.settings.batch_bytes,
                    config.settings.max_inflight_bytes,
                ),
                ..Report::default()
            },
            config,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            membership,
            blocked: BTreeSet::new(),
            clients,
            requests: BTreeMap::new(),
            next_request: 1,
            history: Vec::new(),
            times: Vec::new(),
            stamp: 0,
            chosen: BTreeMap::new(),
            owners: BTreeMap::new(),
            trace: std::env::var_os("ATLAS_SIM_TRACE").is_some(),
        };
        let ids: Vec<NodeId> = sim.nodes.keys().copied().collect();
        for id in &ids {
            sim.start_node(*id);
            let phase = sim.rng.random_range(0..TICK_MS);
            sim.schedule(phase, Event::Tick(*id));
        }
        for c in 0..sim.clients.len() {
            let at = sim.rng.random_range(0..50);
            sim.schedule(at, Event::ClientNext(c));
        }
        for i in 0..sim.config.changes.len() {
            let at = sim.config.changes[i].0;
            sim.schedule_at(at, Event::Change(i));
        }
        for i in 0..sim.config.placements.len() {
            let at = sim.config.placements[i].0;
            sim.schedule_at(at, Event::Place(i));
        }
        sim.plan_faults(&ids);
        sim
    }

    pub(super) fn schedule(&mut self, after: u64, event: Event) {
        self.schedule_at(self.now + after, event);
    }

    pub(super) fn schedule_at(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), event);
    }

    pub(super) fn local_time(&self, id: NodeId) -> u64 {
        let Some(n) = self.nodes.get(&id) else {
            return self.now;
        };
        let t = self.now as i128;
        (n.clock_offset as i128 + t + t * n.drift_ppm as i128 / 1_000_000) as u64
    }

    pub(super) fn start_node(&mut self, id: NodeId) {
        let now = self.local_time(id);
        let seed = self.rng.random();
        let membership = self.membership.clone();
        let settings = self.config.settings.clone();
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        n.incarnation += 1;
        let node = if n.incarnation == 1 {
            Node::new(
                id,
                n.zone.clone(),
                membership,
                settings,
                n.incarnation,
                seed,
                now,
            )
        } else {
            Node::recover(
                id,
                n.zone.clone(),
                membership,
                settings,
                n.machine.written.consensus.clone(),
                n.incarnation,
                seed,
                now,
            )
        };
        n.node = Some(node);
    }

    pub fn run_to_end(&mut self) {
        let end = self.config.load_until + self.config.drain_ms;
        while let Some(((at, _), event)) = self.queue.pop_first() {
            if at > end {
                break;
            }
            self.now = at;
            self.handle(event);
        }
    }

    /// Runs until `until` (for scenario tests that look at the cluster mid-run).
    pub fn run_until(&mut self, until: u64) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.now = at;
            self.handle(event);
        }
        self.now = self.now.max(until);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, bytes } => {
                if self.blocked.contains(&(from, to)) {
                    return;
                }
                let message = match Message::decode(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        self.report
                            .violations
                            .push(format!("undecodable message: {e}"));
                        return;
                    }
                };
                let now = self.local_time(to);
                if self.trace {
                    eprintln!("{:>6} {from}->{to} {message:?}", self.now);
                }
                if let Some(node) = self.node_mut(to) {
                    node.step(now, from, message);
                    self.drain(to);
                }
            }
            Event::Tick(id) => {
                let now = self.local_time(id);
                if let Some(node) = self.node_mut(id) {
                    node.tick(now);
                    self.drain(id);
                }
                self.schedule(TICK_MS, Event::Tick(id));
            }
            Event::ClientNext(c) => self.client_next(c),
            Event::ClientGiveUp { client, request } => {
                if self.clients[client].waiting == Some(request) {
                    self.requests.remove(&request);
                    self.clients[client].waiting = None;
                    self.schedule(1, Event::ClientNext(client));
                }
            }
            Event::Crash(id) => {
                // Half the crashes are power failures: what was not synced is lost.
                let power = self.rng.random_bool(0.5);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.node = None;
                    if power {
                        n.machine.lose_power();
                    }
                }
            }
            Event::Restart(id) => {
                let gone = self
                    .config
                    .down
                    .is_some_and(|(at, down)| down == id && self.now >= at);
                if !gone && self.nodes.get(&id).is_some_and(|n| n.node.is_none()) {
                    self.start_node(id);
                }
            }
            Event::Partition => self.partition(),
            Event::Heal => self.blocked.clear(),
            Event::Change(i) => self.change(i),
            Event::Place(i) => self.place(i),
            Event::Snapshot { to, group, stream } => self.snapshot_arrives(to, &group, stream),
        }
    }

    /// `to` asked `from` for a snapshot of `group`: `from` exports it now (if it is up and
    /// reachable), and it arrives after a transfer time.
    fn snapshot_requested(&mut self, to: NodeId, from: NodeId, group: GroupId) {
        let reachable = !self.blocked.contains(&(from, to)) && !self.blocked.contains(&(to, from));
        let stream = match self.nodes.get(&from) {
            Some(n) if reachable && n.node.is_some() => {
                n.machine.export(&group, &self.config.settings).ok()
            }
            _ => None,
        };
        if self.trace {
            eprintln!(
                "{:>6} snapshot of {group} {from}->{to}: {:?} bytes",
                self.now,
                stream.as_ref().map(Vec::len)
            );
        }
        self.report.snapshots += u64::from(stream.is_some());
        let transfer = 2 * self.delay(from, to) + 5;
        self.schedule(transfer, Event::Snapshot { to, group, stream });
    }

    fn snapshot_arrives(&mut self, to: NodeId, group: &str, stream: Option<Vec<u8>>) {
        let now = self.local_time(to);
        let settings = self.config.settings.clone();
        let Some(n) = self.nodes.get_mut(&to) else {
            return;
        };
        let Some(node) = n.node.as_mut() else {
            return;
        };
        match stream.map(|s| n.machine.install(&s, &settings)) {
            Some(Ok((group, state, config))) => node.snapshot_installed(now, &group, state, config),
            Some(Err(e)) => {
                self.report
                    .violations
                    .push(format!("snapshot did not install: {e}"));
                node.snapshot_failed(now, group);
            }
            None => node.snapshot_failed(now, group),
        }
        self.drain(to);
    }

    /// Starts a joining node, then asks a random live node for the change.
    pub(super) fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(&id).and_then(|n| n.node.as_mut())
    }

    /// Runs one node's output through the driver production runs (persist, send, apply,
    /// answer), then puts its messages on the simulated network.
    pub(super) fn drain(&mut self, id: NodeId) {
        let now = self.local_time(id);
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(node) = n.node.as_mut() else {
            return;
        };
        let mut sent = Sent::default();
        let processed = match driver::process(node, &mut n.machine, &mut sent, now) {
            Ok(processed) => processed,
            Err(never) => match never {},
        };
        for applied in &processed.applied {
            self.agree(&applied.group, applied.slot, &applied.command, id);
        }
        let faulty = self.now < self.config.fault_until;
        for (to, message) in sent.0 {
            self.report.messages += 1;
            if faulty && self.rng.random_bool(self.config.loss) {
                continue;
            }
            let bytes = message.encode();
            let copies = if faulty && self.rng.random_bool(self.config.duplication) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let d = self.delay(id, to);
                self.schedule(
                    d,
                    Event::Deliver {
                        from: id,
                        to,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
        for (request, output) in processed.answers {
            let Some(pending) = self.requests.remove(&request) else {
                continue;
            };
            self.stamp += 1;
            let op = &mut self.history[pending.op_index];
            if output != crate::check::Output::Unknown {
                op.ret = Some(self.stamp);
                self.times[pending.op_index].1 = Some(self.now);
                self.report.completed += 1;
            }
            op.output = output;
            self.clients[pending.client].waiting = None;
            let think = self.rng.random_range(0..20);
            self.schedule(think, Event::ClientNext(pending.client));
        }
        for request in processed.snapshots {
            self.snapshot_requested(id, request.from, request.group);
        }
        self.watch_owners();
    }

    /// Agreement: every node commits the same command in a slot.
    fn agree(&mut self, group: &str, slot: Slot, command: &Command, by: NodeId) {
        match self.chosen.get(&(group.to_string(), slot)) {
            None => {
                self.chosen.insert((group.to_string(), slot), command.clone());
            }
            Some(c) if c == command => {}
            Some(c) => self.report.violations.push(format!(
                "agreement: group {group} slot {slot}: node {by} committed {command:?}, another {c:?}"
            )),
        }
    }

    fn watch_owners(&mut self) {
        let groups: BTreeSet<GroupId> = self
            .nodes
            .values()
            .filter_map(|n| n.node.as_ref())
            .flat_map(|n| n.groups().cloned().collect::<Vec<_>>())
            .collect();
        for g in groups {
            let owner = self
                .nodes
                .iter()
                .filter(|(_, n)| n.node.as_ref().is_some_and(|n| n.is_owner(&g)))
                .map(|(id, _)| *id)
                .max();
            let previous = self.owners.insert(g.clone(), owner);
            if let (Some(Some(a)), Some(b)) = (previous, owner)
                && a != b
            {
                self.report.owner_changes += 1;
            }
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn owner_of(&self, group: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.node.as_ref().is_some_and(|n| n.is_owner(group)))
            .map(|(id, _)| *id)
            .max()
    }

    pub fn zone_of(&self, id: NodeId) -> Option<Zone> {
        self.nodes.get(&id).map(|n| n.zone.clone())
    }

    pub fn report(&self) -> &Report {
        &self.report
    }
}
