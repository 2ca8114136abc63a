//! A node: every group's acceptor, learner and proposer, plus the client requests this node
//! took in. Inputs are `client_request`, `step` (a peer's message) and `tick`, each with the
//! node's monotonic time; the output accumulates in a `Ready` taken with `take_ready`.

use std::collections::{BTreeMap, VecDeque};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::acceptor::Acceptor;
use super::ballot::{Ballot, CommandId, GroupId, NodeId, Slot, Zone};
use super::command::{ClientOp, Command, CommandOp};
use super::dedup::Seen;
use super::group::{Ctx, Group};
use super::log::{GroupState, Log};
use super::membership::{Config, Membership, SYSTEM_GROUP};
use super::message::{ForwardOutcome, Message};
use super::quorum::{JointQuorums, QuorumSystem};
use super::ready::{Completion, Outcome, PersistOp, Ready, RequestId};
use super::settings::{MigrationMode, Settings};

/// Durable state of one group, as recovered from storage: the acceptor's promise and its
/// accepted entries above the applied slot, and the state machine's group state. Nothing
/// of the applied history: restart time and memory do not depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveredGroup {
    pub promised: Ballot,
    pub accepted: BTreeMap<Slot, (Ballot, Command)>,
    pub state: GroupState,
}

/// Everything a restarted node needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub groups: BTreeMap<GroupId, RecoveredGroup>,
    /// The configuration applied from the `atlas` group (none: the bootstrap one).
    pub config: Option<Config>,
}

/// A client request this node took in and has not answered yet.
struct Outstanding {
    request: RequestId,
    group: GroupId,
    op: ClientOp,
    next_try: u64,
    deadline: u64,
    /// For a read: the slot to apply before answering it.
    read_index: Option<Slot>,
    /// Handed to this node as owner (so it need not be routed again when it becomes one).
    at_owner_here: bool,
    /// For a write: the owner reported it applied. It completes once this node has applied
    /// it too, so the machine here has its verdict (a conditional write's answer depends on
    /// the state it met) and a read here right after sees it.
    written: bool,
}

/// Bits of a command sequence number taken by the per-run counter; the rest is the
/// incarnation, so ids stay unique across restarts.
const SEQ_BITS: u32 = 40;

pub struct Node {
    id: NodeId,
    zone: Zone,
    settings: Settings,
    /// The configuration applied from the `atlas` log (joint while a change is under way).
    config: Config,
    /// Every member of `config` (of either membership while joint).
    membership: Membership,
    quorums: JointQuorums,
    zone_rtt: BTreeMap<Zone, u64>,
    rng: StdRng,
    groups: BTreeMap<GroupId, Group>,
    outstanding: BTreeMap<CommandId, Outstanding>,
    incarnation: u64,
    next_seq: u64,
    quiet_until: u64,
    now: u64,
    out: Ready,
    inbox: VecDeque<(NodeId, Message)>,
    membership_changes: Vec<CommandOp>,
    /// Peers that showed a newer configuration epoch, and when the `atlas` log was last
    /// fetched because of one.
    newer_epoch_at: Vec<NodeId>,
    last_epoch_catch_up: u64,
}

impl Node {
    /// A node with no durable state. `incarnation` must differ on every start of this node id
    /// (e.g. a counter kept in storage); `seed` drives its random back-off.
    pub fn new(
        id: NodeId,
        zone: Zone,
        membership: Membership,
        settings: Settings,
        incarnation: u64,
        seed: u64,
        now: u64,
    ) -> Node {
        let quorums = JointQuorums::single(QuorumSystem::new(&membership, settings.tolerances));
        Node {
            id,
            zone,
            settings,
            config: Config::new(membership.clone()),
            membership,
            quorums,
            zone_rtt: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            groups: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            incarnation,
            next_seq: 1,
            quiet_until: 0,
            now,
            out: Ready::default(),
            inbox: VecDeque::new(),
            membership_changes: Vec::new(),
            newer_epoch_at: Vec::new(),
            last_epoch_catch_up: 0,
        }
    }

    /// A restarted node. Leases it granted before the crash were not persisted, so it
    /// promises no new ballot for one lease length. `membership` is the bootstrap membership,
    /// used when nothing of the `atlas` group was ever applied here.
    #[allow(clippy::too_many_arguments)]
    pub fn recover(
        id: NodeId,
        zone: Zone,
        membership: Membership,
        settings: Settings,
        recovered: Recovered,
        incarnation: u64,
        seed: u64,
        now: u64,
    ) -> Node {
        let mut node = Node::new(id, zone, membership, settings, incarnation, seed, now);
        if node.settings.leases_enabled() {
            node.quiet_until = now.saturating_add(node.settings.lease_ms);
        }
        if let Some(config) = recovered.config {
            node.adopt_config(config);
        }
        for (name, g) in recovered.groups {
            // The seal epoch: applied seals are in the state, accepted ones in the entries.
            let sealed = g
                .accepted
                .values()
                .filter_map(|(_, c)| match c.op {
                    CommandOp::Seal { epoch } => Some(epoch),
                    _ => None,
                })
                .chain([g.state.sealed])
                .max()
                .unwrap_or(0);
            let applied = g.state.applied;
            let accepted = g
                .accepted
                .into_iter()
                .filter(|(s, _)| *s > applied)
                .collect();
            let acceptor = Acceptor::restore(g.promised, accepted);
            let mut group = Group::new(name.clone(), acceptor, Log::restore(g.state));
            group.sealed = sealed;
            node.groups.insert(name, group);
        }
        node
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Every member of the configuration in force (of the old and the new membership while a
    /// change is joint).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The quorums of the configuration in force (the old one while a change is joint; see
    /// `joint_quorums` for both).
    pub fn quorums(&self) -> &QuorumSystem {
        &self.quorums.current
    }

    pub fn joint_quorums(&self) -> &JointQuorums {
        &self.quorums
    }

    /// The configuration applied from the `atlas` log: epoch, membership, and the membership
    /// being moved to while joint.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Measured round trip to a zone, used to choose the Q2 zones.
    pub fn set_zone_rtt(&mut self, zone: Zone, rtt_us: u64) {
        self.zone_rtt.insert(zone, rtt_us);
    }

    /// The group a table belongs to.
    pub fn group_of(&self, table: &str) -> GroupId {
        self.settings.group_of(table)
    }

    /// Whether this node owns the group now (phase 1 done, not deposed as far as it knows).
    pub fn is_owner(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.is_leading())
    }

    pub fn owner_hint(&self, group: &str) -> Option<NodeId> {
        self.groups.get(group).and_then(|g| g.owner_hint())
    }

    /// The highest ballot this node has seen for the group (the owner's, as far as it knows).
    pub fn ballot(&self, group: &str) -> Option<Ballot> {
        self.groups.get(group).map(|g| g.seen)
    }

    pub fn applied(&self, group: &str) -> Slot {
        self.groups.get(group).map_or(0, |g| g.applied())
    }

    /// A committed entry this node still holds in memory (recent, or not yet applied).
    pub fn committed(&self, group: &str, slot: Slot) -> Option<&Command> {
        self.groups.get(group).and_then(|g| g.log().get(slot))
    }

    /// The group's state as of its applied slot.
    pub fn group_state(&self, group: &str) -> Option<&GroupState> {
        self.groups.get(group).map(|g| g.log().state())
    }

    /// How long this node's lease on `group` still holds, if it owns the group with one.
    pub fn lease_left(&self, group: &str) -> Option<u64> {
        self.groups
            .get(group)?
            .lease_until(&self.quorums, &self.settings)
            .filter(|until| *until > self.now)
            .map(|until| until - self.now)
    }

    /// Bytes of applied entries kept for catch-up, over all groups.
    pub fn retained_bytes(&self) -> usize {
        self.groups.values().map(|g| g.log().retained_bytes()).sum()
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupId> {
        self.groups.keys()
    }

    pub fn pending_requests(&self) -> usize {
        self.outstanding.len()
    }

    /// Takes the output accumulated since the last call (a group's state is written once,
    /// as of the last entry applied).
    pub fn take_ready(&mut self) -> Ready {
        let mut ready = std::mem::take(&mut self.out);
        let mut last_state: BTreeMap<GroupId, usize> = BTreeMap::new();
        let mut last_config = None;
        for (i, op) in ready.persist.iter().enumerate() {
            match op {
                PersistOp::State { group, .. } => {
                    last_state.insert(group.clone(), i);
                }
                PersistOp::Config(_) => last_config = Some(i),
                _ => {}
            }
        }
        let mut i = 0;
        ready.persist.retain(|op| {
            let keep = match op {
                PersistOp::State { group, .. } => last_state.get(group) == Some(&i),
                PersistOp::Config(_) => last_config == Some(i),
                _ => true,
            };
            i += 1;
            keep
        });
        ready
    }

    /// A snapshot of `group`'s state machine was installed durably at `state.applied`
    /// (with the configuration it holds, for the `atlas` group).
    pub fn snapshot_installed(
        &mut self,
        now: u64,
        group: &str,
        state: GroupState,
        config: Option<Config>,
    ) {
        self.advance(now);
        if let Some(config) = config
            && config.epoch > self.config.epoch
        {
            self.adopt_config(config);
            self.retake_groups();
        }
        self.with_group(group, |g, ctx| g.installed(ctx, state));
        self.settle();
    }

    /// Fetching or installing the snapshot of `group` failed: catching up starts again.
    pub fn snapshot_failed(&mut self, now: u64, group: &str) {
        self.advance(now);
        self.with_group(group, |g, _| g.install_failed());
        self.settle();
    }

    /// The lowest sequence number of this node's requests still outstanding: everything of
    /// this node below it is finished (see `dedup.rs`).
    fn floor(&self) -> u64 {
        self.outstanding
            .keys()
            .next()
            .map_or(self.next_seq_value(), |id| id.seq)
    }

    fn next_seq_value(&self) -> u64 {
        (self.incarnation << SEQ_BITS) | (self.next_seq & ((1 << SEQ_BITS) - 1))
    }

    /// A client request received by this node.
    pub fn client_request(&mut self, now: u64, request: RequestId, op: ClientOp) {
        self.advance(now);
        let id = CommandId {
            origin: self.id,
            seq: self.next_seq_value(),
        };
        self.next_seq += 1;
        let group = self.settings.group_of(op.table());
        self.outstanding.insert(
            id,
            Outstanding {
                request,
                group,
                op,
                next_try: now,
                deadline: now.saturating_add(self.settings.request_timeout_ms),
                read_index: None,
                at_owner_here: false,
                written: false,
            },
        );
        self.route(id);
        self.settle();
    }

    /// A message from a peer.
    pub fn step(&mut self, now: u64, from: NodeId, message: Message) {
        self.advance(now);
        self.dispatch(from, message);
        self.settle();
    }

    /// Timer tick: call every few milliseconds.
    pub fn tick(&mut self, now: u64) {
        self.advance(now);
        let names: Vec<GroupId> = self.groups.keys().cloned().collect();
        for name in names {
            self.with_group(&name, |g, ctx| g.tick(ctx));
        }
        let due: Vec<CommandId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.read_index.is_none() && !o.written && now >= o.next_try)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.route(id);
        }
        let expired: Vec<CommandId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| now >= o.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(o) = self.outstanding.remove(&id) {
                self.out.completions.push(Completion {
                    request: o.request,
                    outcome: Outcome::Timeout,
                });
            }
        }
        self.settle();
    }

    fn advance(&mut self, now: u64) {
        // A monotonic clock never goes back; guard anyway.
        self.now = self.now.max(now);
    }

    fn with_group<R>(&mut self, name: &str, f: impl FnOnce(&mut Group, &mut Ctx<'_>) -> R) -> R {
        let retain_bytes = self.settings.retain_bytes / self.groups.len().max(1);
        let group = self
            .groups
            .entry(name.to_string())
            .or_insert_with(|| Group::new(name.to_string(), Acceptor::default(), Log::default()));
        let mut ctx = Ctx {
            id: self.id,
            zone: &self.zone,
            now: self.now,
            settings: &self.settings,
            quorums: &self.quorums,
            membership: &self.membership,
            epoch: self.config.epoch,
            newer_epoch_at: &mut self.newer_epoch_at,
            zone_rtt: &self.zone_rtt,
            quiet_until: self.quiet_until,
            retain_bytes,
            rng: &mut self.rng,
            out: &mut self.out,
            inbox: &mut self.inbox,
            membership_changes: &mut self.membership_changes,
        };
        f(group, &mut ctx)
    }

    fn dispatch(&mut self, from: NodeId, message: Message) {
        if let Message::ForwardReply { group, id, outcome } = message {
            self.on_forward_reply(&group, id, outcome);
            return;
        }
        let name = message.group().to_string();
        self.with_group(&name, |g, ctx| g.on_message(ctx, from, message));
    }

    /// Sends a request where it can be served: this node if it owns the group, else the
    /// owner; with no live owner known, this node takes the group (phase 1).
    fn route(&mut self, id: CommandId) {
        let floor = self.floor();
        let Some(o) = self.outstanding.get_mut(&id) else {
            return;
        };
        o.next_try = self.now + self.settings.forward_retry_ms;
        let (name, op) = (o.group.clone(), o.op.clone());
        let me = self.id;
        o.at_owner_here = self.groups.get(&name).is_some_and(|g| g.is_leading());
        let suspect_ms = self.settings.suspect_ms;
        let immediate = self.settings.migration == MigrationMode::Immediate;
        self.with_group(&name, |g, ctx| {
            if g.is_leading() {
                ctx.send(
                    me,
                    Message::Forward {
                        group: name.clone(),
                        id,
                        floor,
                        op,
                    },
                );
                return;
            }
            if g.is_preparing() {
                return;
            }
            let live_owner = g
                .owner_hint
                .filter(|h| *h != me && ctx.now < g.last_heard.saturating_add(suspect_ms));

            match live_owner {
                Some(owner) if !immediate => {
                    ctx.send(
                        owner,
                        Message::Forward {
                            group: name.clone(),
                            id,
                            floor,
                            op,
                        },
                    );
                }
                _ => g.start_phase1(ctx, None),
            }
        });
    }

    fn on_forward_reply(&mut self, group: &str, id: CommandId, outcome: ForwardOutcome) {
        match outcome {
            ForwardOutcome::Written => {
                // Completed by `settle` once applied here.
                if let Some(o) = self.outstanding.get_mut(&id) {
                    o.written = true;
                }
            }
            ForwardOutcome::ReadIndex { slot } => {
                if let Some(o) = self.outstanding.get_mut(&id)
                    && o.read_index.is_none()
                {
                    o.read_index = Some(slot);
                    self.with_group(group, |g, _| g.log.note_known(slot));
                }
            }
            ForwardOutcome::NotOwner { hint, ballot } => {
                let me = self.id;
                self.with_group(group, |g, ctx| {
                    g.not_owner(ctx, hint.filter(|h| *h != me), ballot)
                });
                if let Some(o) = self.outstanding.get_mut(&id) {
                    // Try again soon, through the (maybe new) owner hint.
                    o.next_try = o.next_try.min(self.now + self.settings.retry_ms / 4);
                }
            }
        }
    }

    /// Runs self-addressed messages, flushes accept batches, folds membership changes and
    /// answers reads whose index is applied.
    fn settle(&mut self) {
        let mut budget = 100_000;
        loop {
            while let Some((from, message)) = self.inbox.pop_front() {
                self.dispatch(from, message);
                budget -= 1;
                if budget == 0 {
                    tracing::error!(node = self.id, "self-message loop did not settle");
                    return;
                }
            }
            let names: Vec<GroupId> = self.groups.keys().cloned().collect();
            for name in names {
                self.with_group(&name, |g, ctx| g.flush(ctx));
            }
            // A new configuration restarts phase 1 of the groups this node leads.
            let changed = self.fold_membership();
            if self.inbox.is_empty() && !changed {
                break;
            }
        }
        self.fetch_newer_config();
        // Requests waiting for this node to take their group go in as soon as it has.
        let waiting: Vec<CommandId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| {
                !o.at_owner_here
                    && !o.written
                    && o.read_index.is_none()
                    && self.groups.get(&o.group).is_some_and(|g| g.is_leading())
            })
            .map(|(id, _)| *id)
            .collect();
        if !waiting.is_empty() {
            for id in waiting {
                self.route(id);
            }
            self.settle();
            return;
        }
        let ready: Vec<CommandId> = self
            .outstanding
            .iter()
            .filter(|(_, o)| {
                o.read_index.is_some_and(|slot| {
                    self.groups
                        .get(&o.group)
                        .is_some_and(|g| g.applied() >= slot)
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            if let Some(o) = self.outstanding.remove(&id) {
                let key = match o.op {
                    ClientOp::Get { key } => key,
                    _ => String::new(),
                };
                self.out.completions.push(Completion {
                    request: o.request,
                    outcome: Outcome::ReadNow { key },
                });
            }
        }
        let written: Vec<CommandId> = self
            .outstanding
            .iter()
            .filter(|(id, o)| {
                o.written
                    && self
                        .groups
                        .get(&o.group)
                        .is_some_and(|g| g.log.check(id) != Seen::Fresh)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in written {
            if let Some(o) = self.outstanding.remove(&id) {
                self.out.completions.push(Completion {
                    request: o.request,
                    outcome: Outcome::Written,
                });
            }
        }
    }

    /// Folds applied `atlas` entries into the configuration. When the epoch moved, quorums
    /// follow and every group this node leads or is taking is taken again under the new
    /// configuration. Returns whether the configuration changed.
    fn fold_membership(&mut self) -> bool {
        if self.membership_changes.is_empty() {
            return false;
        }
        let mut config = self.config.clone();
        let mut changed = false;
        for op in std::mem::take(&mut self.membership_changes) {
            changed |= config.apply(&op);
        }
        if !changed {
            return false;
        }
        self.out.persist.push(PersistOp::Config(config.clone()));
        self.adopt_config(config);
        self.retake_groups();
        true
    }

    /// Makes `config` the one in force: quorums and the member list follow.
    fn adopt_config(&mut self, config: Config) {
        self.config = config;
        let t = self.settings.tolerances;
        self.quorums = JointQuorums {
            current: QuorumSystem::new(&self.config.current, t),
            next: self.config.next.as_ref().map(|m| QuorumSystem::new(m, t)),
            past: self
                .config
                .past
                .iter()
                .map(|(m, last)| (QuorumSystem::new(m, t), *last))
                .collect(),
        };
        self.membership = self.config.members();
        if let Some(zone) = self.membership.zone_of(self.id) {
            self.zone = zone.clone();
        }
        tracing::debug!(
            node = self.id,
            epoch = self.config.epoch,
            joint = self.config.is_joint(),
            "configuration changed"
        );
    }

    /// Every group this node leads or is taking runs phase 1 again under the configuration
    /// now in force.
    fn retake_groups(&mut self) {
        let names: Vec<GroupId> = self.groups.keys().cloned().collect();
        for name in names {
            self.with_group(&name, |g, ctx| g.on_epoch_change(ctx));
        }
    }

    /// A peer showed a newer configuration epoch: fetch the `atlas` log from it (at most every
    /// quarter retry interval). The configuration changes only when those entries apply.
    fn fetch_newer_config(&mut self) {
        if self.newer_epoch_at.is_empty() {
            return;
        }
        let peers = std::mem::take(&mut self.newer_epoch_at);
        if self.now < self.last_epoch_catch_up + self.settings.retry_ms / 4 {
            return;
        }
        self.last_epoch_catch_up = self.now;
        let from = self.applied(SYSTEM_GROUP) + 1;
        if let Some(peer) = peers.into_iter().find(|p| *p != self.id) {
            self.out.messages.push(super::ready::Outgoing {
                to: peer,
                message: Message::CatchUp {
                    group: SYSTEM_GROUP.to_string(),
                    from,
                    to: from + 255,
                },
            });
        }
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
