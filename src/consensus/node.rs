//! A node: every group's acceptor, learner and proposer, plus the client requests this node
//! took in. Inputs are `client_request`, `step` (a peer's message) and `tick`, each with the
//! node's monotonic time; the output accumulates in a `Ready` taken with `take_ready`.

use std::collections::{BTreeMap, VecDeque};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::acceptor::Acceptor;
use super::ballot::{Ballot, CommandId, GroupId, NodeId, Slot, Zone};
use super::command::{Command, CommandOp};
use super::ctx::Ctx;
use super::group::Group;
use super::inbound::Refused;
use super::log::{GroupState, Log};
use super::membership::{Config, Membership, SYSTEM_GROUP};
use super::message::Message;
use super::quorum::{JointQuorums, QuorumSystem};
use super::ready::{Completion, Outcome, PersistOp, Ready};
use super::requests::Outstanding;
use super::settings::Settings;

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

/// Bits of a command sequence number taken by the per-run counter; the rest is the
/// incarnation, so ids stay unique across restarts.
const SEQ_BITS: u32 = 40;

pub struct Node {
    pub(super) id: NodeId,
    pub(super) zone: Zone,
    pub(super) settings: Settings,
    /// The configuration applied from the `atlas` log (joint while a change is under way).
    pub(super) config: Config,
    /// Every member of `config` (of either membership while joint).
    pub(super) membership: Membership,
    pub(super) quorums: JointQuorums,
    pub(super) zone_rtt: BTreeMap<Zone, u64>,
    pub(super) rng: StdRng,
    pub(super) groups: BTreeMap<GroupId, Group>,
    pub(super) outstanding: BTreeMap<CommandId, Outstanding>,
    pub(super) incarnation: u64,
    pub(super) next_seq: u64,
    pub(super) quiet_until: u64,
    pub(super) now: u64,
    pub(super) out: Ready,
    pub(super) inbox: VecDeque<(NodeId, Message)>,
    pub(super) membership_changes: Vec<CommandOp>,
    /// Peers that showed a newer configuration epoch, and when the `atlas` log was last
    /// fetched because of one.
    pub(super) newer_epoch_at: Vec<NodeId>,
    pub(super) last_epoch_catch_up: u64,
    /// The node last asked for the `atlas` log because it showed a newer epoch: its answer
    /// is heard even if this node does not know it as a member yet (see `inbound.rs`).
    pub(super) config_fetched_from: Option<NodeId>,
    /// Peer messages dropped by `admit_message`, by reason.
    pub(super) refused: BTreeMap<Refused, u64>,
    /// Inputs arrived since the last `settle` (client requests and peer messages settle
    /// once, in `take_ready`: one round's writes go out as one Accept, its acceptances
    /// are counted together, instead of a batch of one per input).
    pub(super) unsettled: bool,
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
            config_fetched_from: None,
            refused: BTreeMap::new(),
            unsettled: false,
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

    pub fn zone(&self) -> &Zone {
        &self.zone
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

    /// Pins `group` (`TABLE PIN`) or unpins it: a pinned group is never moved by the
    /// adaptive policy; the cluster layer moves it to its zone with [`Node::hand_off`].
    pub fn set_pinned(&mut self, group: &str, pinned: bool) {
        if let Some(g) = self.groups.get_mut(group) {
            g.pinned = pinned;
        } else if pinned {
            self.with_group(group, |g, _| g.pinned = true);
        }
    }

    /// Whether `group` is pinned here.
    pub fn is_pinned(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| g.pinned)
    }

    /// Hands `group` to `target` (a member) if this node owns it: `TABLE MOVE`, and the
    /// move of a pinned group to its zone. Returns whether it did.
    pub fn hand_off(&mut self, now: u64, group: &str, target: NodeId) -> bool {
        self.advance(now);
        let handed = self.with_group(group, |g, ctx| match &g.role {
            super::proposer::Role::Leading(l) if target != ctx.id => {
                let ballot = l.ballot;
                g.hand_off(ctx, target, ballot);
                !g.is_leading()
            }
            _ => false,
        });
        self.settle();
        handed
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

    /// Settles the inputs taken since the last call, then takes the output accumulated (a
    /// group's state is written once, as of the last entry applied).
    pub fn take_ready(&mut self) -> Ready {
        if self.unsettled {
            self.settle();
        }
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
    pub(super) fn floor(&self) -> u64 {
        self.outstanding
            .keys()
            .next()
            .map_or(self.next_seq_value(), |id| id.seq)
    }

    pub(super) fn next_seq_value(&self) -> u64 {
        (self.incarnation << SEQ_BITS) | (self.next_seq & ((1 << SEQ_BITS) - 1))
    }

    /// A message from a peer (`from` as the transport authenticated it). Its consequences
    /// (and those of every other input since) are settled by the next [`Node::take_ready`].
    pub fn step(&mut self, now: u64, from: NodeId, message: Message) {
        self.advance(now);
        match self.admit_message(from, &message) {
            Ok(()) => self.dispatch(from, message),
            Err(why) => *self.refused.entry(why).or_default() += 1,
        }
        self.unsettled = true;
    }

    /// Peer messages dropped so far, by reason (see `inbound.rs`).
    pub fn refused_messages(&self) -> &BTreeMap<Refused, u64> {
        &self.refused
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

    pub(super) fn advance(&mut self, now: u64) {
        // A monotonic clock never goes back; guard anyway.
        self.now = self.now.max(now);
    }

    pub(super) fn with_group<R>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Group, &mut Ctx<'_>) -> R,
    ) -> R {
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

    pub(super) fn dispatch(&mut self, from: NodeId, message: Message) {
        if let Message::ForwardReply { group, id, outcome } = message {
            self.on_forward_reply(&group, id, outcome);
            return;
        }
        let name = message.group().to_string();
        self.with_group(&name, |g, ctx| g.on_message(ctx, from, message));
    }

    /// Runs self-addressed messages, flushes accept batches, folds membership changes and
    /// answers reads whose index is applied.
    pub(super) fn settle(&mut self) {
        self.unsettled = false;
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
        if self.complete_requests() {
            self.settle();
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
            self.config_fetched_from = Some(peer);
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

#[cfg(test)]
#[path = "inbound_tests.rs"]
mod inbound_tests;
