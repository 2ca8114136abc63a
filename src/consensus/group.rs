//! One group at one node: its acceptor, its log (learner) and its proposer role. This file
//! holds the acceptor and learner handlers; `proposer.rs` holds phase 1, phase 2 and the
//! owner's duties.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand::rngs::StdRng;

use super::acceptor::Acceptor;
use super::ballot::{Ballot, GroupId, NodeId, Slot, Zone};
use super::command::{Command, CommandOp};
use super::log::Log;
use super::membership::{Membership, SYSTEM_GROUP};
use super::message::{Message, SlotEntry};
use super::proposer::Role;
use super::quorum::JointQuorums;
use super::ready::{Applied, Outgoing, PersistOp, Ready};
use super::settings::Settings;

/// Most entries in one catch-up reply.
const CATCH_UP_LIMIT: usize = 256;

/// What a handler may use and where its output goes.
pub(super) struct Ctx<'a> {
    pub id: NodeId,
    pub zone: &'a Zone,
    pub now: u64,
    pub settings: &'a Settings,
    /// The quorums of the configuration in force (both configurations while joint).
    pub quorums: &'a JointQuorums,
    /// Every member of the configuration in force (of either while joint).
    pub membership: &'a Membership,
    /// The configuration epoch this node has applied.
    pub epoch: u64,
    /// Nodes that showed a newer configuration epoch: the node fetches the `atlas` log from
    /// them. The epoch in a message is never adopted by itself (it could be a lie or ahead
    /// of what is committed); only applied `atlas` entries change the configuration.
    pub newer_epoch_at: &'a mut Vec<NodeId>,
    pub zone_rtt: &'a BTreeMap<Zone, u64>,
    pub quiet_until: u64,
    pub rng: &'a mut StdRng,
    pub out: &'a mut Ready,
    /// Messages a node sends itself are handled in the same input, before the batch leaves.
    pub inbox: &'a mut VecDeque<(NodeId, Message)>,
    /// Applied changes of `atlas.nodes`, for the node to fold into its membership.
    pub membership_changes: &'a mut Vec<CommandOp>,
}

impl Ctx<'_> {
    pub fn send(&mut self, to: NodeId, message: Message) {
        if to == self.id {
            self.inbox.push_back((to, message));
        } else {
            self.out.messages.push(Outgoing { to, message });
        }
    }

    /// To every member, this node included (its acceptor answers through the inbox).
    pub fn broadcast(&mut self, message: Message) {
        let members: Vec<NodeId> = self.membership.nodes().collect();
        for to in members {
            self.send(to, message.clone());
        }
    }

    pub fn broadcast_others(&mut self, message: Message) {
        let members: Vec<NodeId> = self.membership.nodes().filter(|n| *n != self.id).collect();
        for to in members {
            self.send(to, message.clone());
        }
    }

    pub fn persist(&mut self, op: PersistOp) {
        self.out.persist.push(op);
    }

    pub fn lease_ms(&self) -> u64 {
        if self.settings.leases_enabled() {
            self.settings.lease_ms
        } else {
            0
        }
    }

    pub fn backoff(&mut self) -> u64 {
        let (lo, hi) = (self.settings.backoff_min_ms, self.settings.backoff_max_ms);
        self.now
            + if hi > lo {
                self.rng.random_range(lo..hi)
            } else {
                lo
            }
    }

    /// Whether `a` wins a tie of ballot counters against `b`: zone first, then node id (the
    /// higher wins, as node ids do in ballots). A node of unknown zone ranks lowest.
    pub fn wins_tie(&self, a: NodeId, b: NodeId) -> bool {
        let rank = |n: NodeId| (self.membership.zone_of(n).cloned(), n);
        rank(a) > rank(b)
    }

    /// Tells `to` that its `ballot` lost to our promise (with our epoch, so it can catch up).
    pub fn reject(&mut self, to: NodeId, group: &str, ballot: Ballot, promised: Ballot) {
        let message = Message::Reject {
            group: group.to_string(),
            ballot,
            promised,
            epoch: self.epoch,
        };
        self.send(to, message);
    }

    /// Refuses a request of another configuration epoch: an older sender is told ours (it
    /// catches up); from a newer one nothing is answered, and this node catches up.
    pub fn wrong_epoch(
        &mut self,
        group: &str,
        from: NodeId,
        ballot: Ballot,
        epoch: u64,
        promised: Ballot,
    ) -> bool {
        if epoch == self.epoch {
            return false;
        }
        if epoch < self.epoch {
            self.reject(from, group, ballot, promised);
        } else {
            self.newer_epoch_at.push(from);
        }
        true
    }

    /// A random member other than this node, for gap fill.
    pub fn random_peer(&mut self) -> Option<NodeId> {
        let peers: Vec<NodeId> = self.membership.nodes().filter(|n| *n != self.id).collect();
        if peers.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..peers.len());
        peers.get(i).copied()
    }
}

pub struct Group {
    pub(super) name: GroupId,
    pub(super) acceptor: Acceptor,
    pub(super) log: Log,
    pub(super) role: Role,
    /// The highest ballot seen, and the node believed to own the group.
    pub(super) seen: Ballot,
    pub(super) owner_hint: Option<NodeId>,
    /// When the owner was last heard from (heartbeat, accept, commit).
    pub(super) last_heard: u64,
    /// No phase 1 before this (random back-off after a lost contest).
    pub(super) not_before: u64,
    last_catch_up: u64,
    /// The highest configuration epoch this group is known sealed at (see `CommandOp::Seal`):
    /// from an accepted or committed seal entry.
    pub(super) sealed: u64,
}

impl Group {
    pub fn new(name: GroupId, acceptor: Acceptor, log: Log) -> Group {
        let seen = acceptor.promised();
        Group {
            name,
            acceptor,
            log,
            role: Role::Follower,
            seen,
            owner_hint: (!seen.is_zero()).then_some(seen.node),
            last_heard: 0,
            not_before: 0,
            last_catch_up: 0,
            sealed: 0,
        }
    }

    pub fn applied(&self) -> Slot {
        self.log.applied()
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn owner_hint(&self) -> Option<NodeId> {
        self.owner_hint
    }

    pub fn on_message(&mut self, ctx: &mut Ctx<'_>, from: NodeId, message: Message) {
        match message {
            Message::Prepare {
                ballot,
                token,
                handoff_from,
                epoch,
                ..
            } => {
                let promised = self.acceptor.promised();
                if !ctx.wrong_epoch(&self.name, from, ballot, epoch, promised) {
                    self.on_prepare(ctx, from, ballot, token, handoff_from);
                }
            }
            Message::Promise {
                ballot,
                token,
                applied,
                accepted,
                sealed,
                ..
            } => {
                let report = super::proposer::PromiseReport {
                    applied,
                    accepted,
                    sealed,
                };
                self.on_promise(ctx, from, ballot, token, report)
            }
            Message::Accept {
                ballot,
                entries,
                epoch,
                ..
            } => {
                let promised = self.acceptor.promised();
                if !ctx.wrong_epoch(&self.name, from, ballot, epoch, promised) {
                    self.on_accept(ctx, from, ballot, entries);
                }
            }
            Message::Accepted { ballot, slots, .. } => self.on_accepted(ctx, from, ballot, slots),
            Message::Reject {
                promised, epoch, ..
            } => {
                if epoch > ctx.epoch {
                    ctx.newer_epoch_at.push(from);
                }
                self.observe(ctx, promised, false);
            }
            Message::Commit {
                ballot, entries, ..
            } => {
                self.observe(ctx, ballot, true);
                self.learn(ctx, entries);
            }
            Message::Heartbeat {
                ballot, applied, ..
            } => {
                self.observe(ctx, ballot, true);
                if ballot == self.seen {
                    self.log.note_known(applied);
                }
            }
            Message::CatchUp { from: lo, to, .. } => {
                let entries: Vec<SlotEntry> = self
                    .log
                    .range(lo, to, CATCH_UP_LIMIT)
                    .into_iter()
                    .map(|(slot, command)| SlotEntry { slot, command })
                    .collect();
                if !entries.is_empty() {
                    let group = self.name.clone();
                    ctx.send(from, Message::CatchUpReply { group, entries });
                }
            }
            Message::CatchUpReply { entries, .. } => self.learn(ctx, entries),
            Message::LeaseRenew {
                ballot,
                token,
                epoch,
                ..
            } => {
                let group = self.name.clone();
                let promised = self.acceptor.promised();
                if ctx.wrong_epoch(&group, from, ballot, epoch, promised) {
                    return;
                }
                if self.acceptor.renew(ballot, ctx.now, ctx.lease_ms()) {
                    self.observe(ctx, ballot, true);
                    ctx.send(
                        from,
                        Message::LeaseGrant {
                            group,
                            ballot,
                            token,
                        },
                    );
                } else {
                    ctx.reject(from, &group, ballot, promised);
                }
            }
            Message::LeaseGrant { ballot, token, .. } => self.on_lease_grant(from, ballot, token),
            Message::Forward { id, op, .. } => self.on_forward(ctx, from, id, op),
            Message::Handoff { from: released, .. } => self.on_handoff(ctx, released),
            // Handled by the node (client requests it forwarded).
            Message::ForwardReply { .. } => {}
        }
    }

    /// Raises the highest ballot seen; an owner or candidate with a lower one gives up.
    pub(super) fn observe(&mut self, ctx: &mut Ctx<'_>, ballot: Ballot, from_owner: bool) {
        if ballot > self.seen {
            self.seen = ballot;
            self.owner_hint = Some(ballot.node);
            self.last_heard = ctx.now;
        } else if from_owner && ballot == self.seen {
            self.last_heard = ctx.now;
        }
        let mine = match &self.role {
            Role::Leading(l) => Some(l.ballot),
            Role::Preparing(p) => Some(p.ballot),
            Role::Follower => None,
        };
        if let Some(b) = mine.filter(|b| *b < ballot) {
            // A concurrent steal at the same counter: zone, then node id decides. A candidate
            // that wins on zone retries at once (one counter up); the loser backs off.
            let preparing = matches!(self.role, Role::Preparing(_));
            self.role = Role::Follower;
            if preparing && b.counter == ballot.counter && ctx.wins_tie(ctx.id, ballot.node) {
                self.not_before = ctx.now;
                self.start_phase1(ctx, None);
            } else {
                self.not_before = ctx.backoff();
            }
        }
    }

    fn on_prepare(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        token: u64,
        handoff_from: Option<Ballot>,
    ) {
        let group = self.name.clone();
        // This node's candidacy at the same counter loses on zone to `from`'s: give way.
        if let Role::Preparing(p) = &self.role
            && p.ballot.counter == ballot.counter
            && ballot.node != ctx.id
            && ctx.wins_tie(ballot.node, ctx.id)
        {
            self.role = Role::Follower;
            self.not_before = ctx.backoff();
        }
        match self
            .acceptor
            .prepare(ballot, handoff_from, ctx.now, ctx.quiet_until)
        {
            Ok(promised) => {
                if promised.changed {
                    ctx.persist(PersistOp::Promise {
                        group: group.clone(),
                        ballot,
                    });
                }
                self.observe(ctx, ballot, false);
                let applied = self.log.applied();
                let accepted = promised
                    .accepted
                    .into_iter()
                    .filter(|e| e.slot > applied)
                    .collect();
                ctx.send(
                    from,
                    Message::Promise {
                        group,
                        ballot,
                        token,
                        applied,
                        accepted,
                        sealed: self.sealed,
                    },
                );
            }
            Err(_) => {
                let promised = self.acceptor.promised();
                ctx.reject(from, &group, ballot, promised);
            }
        }
    }

    fn on_accept(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<SlotEntry>,
    ) {
        let group = self.name.clone();
        if ballot < self.acceptor.promised() {
            let promised = self.acceptor.promised();
            ctx.reject(from, &group, ballot, promised);
            return;
        }
        let mut slots = Vec::with_capacity(entries.len());
        for entry in entries {
            self.note_seal(&entry.command);
            // An applied slot is committed; its value cannot differ, so it is acknowledged.
            if entry.slot > self.log.applied() {
                match self.acceptor.accept(ballot, entry.slot, &entry.command) {
                    None => continue,
                    Some(raised) => {
                        if raised {
                            ctx.persist(PersistOp::Promise {
                                group: group.clone(),
                                ballot,
                            });
                        }
                        ctx.persist(PersistOp::Accept {
                            group: group.clone(),
                            slot: entry.slot,
                            ballot,
                            command: entry.command,
                        });
                    }
                }
            }
            slots.push(entry.slot);
        }
        self.observe(ctx, ballot, true);
        ctx.send(
            from,
            Message::Accepted {
                group,
                ballot,
                slots,
            },
        );
    }

    /// Learns committed entries (commit broadcast, catch-up) and applies what it can.
    pub(super) fn learn(&mut self, ctx: &mut Ctx<'_>, entries: Vec<SlotEntry>) {
        for entry in entries {
            self.commit(ctx, entry.slot, entry.command);
        }
        self.apply(ctx);
    }

    pub(super) fn commit(&mut self, ctx: &mut Ctx<'_>, slot: Slot, command: Command) {
        if self.log.commit(slot, command.clone()) {
            ctx.persist(PersistOp::Commit {
                group: self.name.clone(),
                slot,
                command,
            });
        }
    }

    /// Applies committed entries in slot order and tells waiting clients.
    pub(super) fn apply(&mut self, ctx: &mut Ctx<'_>) {
        let applicable = self.log.take_applicable();
        let Some(last) = applicable.last().map(|a| a.0) else {
            return;
        };
        self.acceptor.forget_through(last);
        for (slot, command, duplicate) in applicable {
            self.note_seal(&command);
            self.on_applied(ctx, slot, &command);
            if self.name == SYSTEM_GROUP && !duplicate {
                ctx.membership_changes.push(command.op.clone());
            }
            ctx.out.apply.push(Applied {
                group: self.name.clone(),
                slot,
                command,
                duplicate,
            });
        }
    }

    fn note_seal(&mut self, command: &Command) {
        if let CommandOp::Seal { epoch } = command.op {
            self.sealed = self.sealed.max(epoch);
        }
    }

    /// Asks for missing committed entries, at most once per retry interval.
    pub(super) fn fill_gaps(&mut self, ctx: &mut Ctx<'_>) {
        let Some((from, to)) = self.log.gap() else {
            return;
        };
        if ctx.now < self.last_catch_up.saturating_add(ctx.settings.retry_ms) {
            return;
        }
        self.last_catch_up = ctx.now;
        // The owner first; every other try a random peer, in case the owner is gone.
        let target = match self.owner_hint {
            Some(owner) if owner != ctx.id && ctx.rng.random_bool(0.5) => Some(owner),
            _ => ctx.random_peer(),
        };
        if let Some(target) = target {
            let group = self.name.clone();
            ctx.send(target, Message::CatchUp { group, from, to });
        }
    }
}
