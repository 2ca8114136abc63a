//! One group at one node: its acceptor, its log (learner) and its proposer role. This file
//! holds the acceptor and learner handlers; `proposer.rs` holds phase 1, phase 2 and the
//! owner's duties.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand::rngs::StdRng;

use super::acceptor::Acceptor;
use super::ballot::{Ballot, GroupId, NodeId, Slot, Zone};
use super::command::{Command, CommandOp};
use super::log::{Compacted, GroupState, Log};
use super::membership::{Membership, SYSTEM_GROUP};
use super::message::{AcceptedEntry, Message, SlotEntry};
use super::proposer::Role;
use super::quorum::JointQuorums;
use super::ready::{Applied, Outgoing, PersistOp, Ready, SnapshotRequest};
use super::settings::Settings;

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
    /// Bytes of applied entries this group may keep for catch-up (its share of the node's).
    pub retain_bytes: usize,
    pub rng: &'a mut StdRng,
    pub out: &'a mut Ready,
    /// Messages a node sends itself are handled in the same input, before the batch leaves.
    pub inbox: &'a mut VecDeque<(NodeId, Message)>,
    /// Applied changes of `atlas.nodes`, for the node to fold into its membership.
    pub membership_changes: &'a mut Vec<CommandOp>,
}

impl Ctx<'_> {
    /// Queues a message. Votes wait for the batch they depend on to be durable, also when
    /// this node sends them to itself (an owner counts its own accept only once it is on
    /// disk); other messages to this node are handled within the same input.
    pub fn send(&mut self, to: NodeId, message: Message) {
        if message.is_vote() {
            self.out.after_persist.push(Outgoing { to, message });
        } else if to == self.id {
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
    /// from an accepted or applied seal entry.
    pub(super) sealed: u64,
    /// A snapshot of the group is being fetched and installed: nothing is applied meanwhile.
    pub(super) installing: bool,
}

impl Group {
    pub fn new(name: GroupId, acceptor: Acceptor, log: Log) -> Group {
        let seen = acceptor.promised();
        let sealed = log.sealed();
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
            sealed,
            installing: false,
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
                applied,
                accepted,
                sealed,
                page,
                pages,
                ..
            } => {
                let report = super::proposer::PromiseReport {
                    applied,
                    accepted,
                    sealed,
                    page,
                    pages,
                };
                self.on_promise(ctx, from, ballot, report)
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
            Message::Accepted {
                ballot,
                slots,
                applied,
                ..
            } => self.on_accepted(ctx, from, ballot, slots, applied),
            Message::Reject {
                promised, epoch, ..
            } => {
                if epoch > ctx.epoch {
                    ctx.newer_epoch_at.push(from);
                }
                self.observe(ctx, promised, false);
            }
            Message::Commit {
                ballot,
                slots,
                mut entries,
                ..
            } => {
                self.observe(ctx, ballot, true);
                // Slots named only: the copy this acceptor accepted at that ballot is the
                // chosen value. Without one, the slot is known committed and fetched.
                for slot in slots {
                    match self.acceptor.accepted_at(slot, ballot) {
                        Some(command) => entries.push(SlotEntry {
                            slot,
                            command: command.clone(),
                        }),
                        None => self.log.note_known(slot),
                    }
                }
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
                let group = self.name.clone();
                match self.log.range(lo, to, ctx.settings.batch_bytes) {
                    Ok(entries) if entries.is_empty() => {}
                    Ok(entries) => {
                        let entries = entries
                            .into_iter()
                            .map(|(slot, command)| SlotEntry { slot, command })
                            .collect();
                        let compacted = None;
                        let reply = Message::CatchUpReply {
                            group,
                            entries,
                            compacted,
                        };
                        ctx.send(from, reply);
                    }
                    Err(Compacted::Below { applied }) => {
                        let reply = Message::CatchUpReply {
                            group,
                            entries: Vec::new(),
                            compacted: Some(applied),
                        };
                        ctx.send(from, reply);
                    }
                }
            }
            Message::CatchUpReply {
                entries, compacted, ..
            } => {
                self.learn(ctx, entries);
                // The entries this node needs left the peer's log: fetch its state instead.
                if let Some(slot) = compacted
                    && slot > self.log.applied()
                    && !self.installing
                    && from != ctx.id
                {
                    self.installing = true;
                    ctx.out.snapshots.push(SnapshotRequest {
                        group: self.name.clone(),
                        from,
                        slot,
                    });
                }
            }
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
            Message::Forward { id, floor, op, .. } => self.on_forward(ctx, from, id, floor, op),
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
            // The owner's own message: it is the owner (the hint may have been left on a
            // node that only named this ballot).
            self.owner_hint = Some(ballot.node);
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
                // The candidate this node just promised is the one to wait for (also when it
                // retries with the ballot it failed with before).
                self.observe(ctx, ballot, true);
                let applied = self.log.applied();
                let accepted: Vec<AcceptedEntry> = promised
                    .accepted
                    .into_iter()
                    .filter(|e| e.slot > applied)
                    .collect();
                let pages = pages_of(accepted, ctx.settings.batch_bytes);
                let count = u32::try_from(pages.len()).unwrap_or(u32::MAX);
                for (page, accepted) in pages.into_iter().enumerate() {
                    let promise = Message::Promise {
                        group: group.clone(),
                        ballot,
                        token,
                        applied,
                        accepted,
                        sealed: self.sealed,
                        page: page as u32,
                        pages: count,
                    };
                    ctx.send(from, promise);
                }
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
        let next = self.log.applied() + 1;
        for entry in entries {
            // An applied slot is committed; its value cannot differ, so it is acknowledged.
            if entry.slot > self.log.applied() {
                match self
                    .acceptor
                    .accept(ballot, entry.slot, &entry.command, next)
                {
                    None => continue,
                    Some(raised) => {
                        self.note_seal(&entry.command);
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
        let applied = self.log.applied();
        ctx.send(
            from,
            Message::Accepted {
                group,
                ballot,
                slots,
                applied,
            },
        );
    }

    /// Learns committed entries (commit broadcast, catch-up) and applies what it can.
    pub(super) fn learn(&mut self, ctx: &mut Ctx<'_>, entries: Vec<SlotEntry>) {
        for entry in entries {
            self.commit(entry.slot, entry.command);
        }
        self.apply(ctx);
    }

    /// Records a committed entry (kept in memory until applied: a crash forgets it, and it
    /// is learned again; the chosen value is durable at the acceptors that chose it).
    pub(super) fn commit(&mut self, slot: Slot, command: Command) {
        self.log.commit(slot, command);
    }

    /// Applies committed entries in slot order and tells waiting clients. Nothing is
    /// applied while a snapshot is being installed.
    pub(super) fn apply(&mut self, ctx: &mut Ctx<'_>) {
        if self.installing {
            return;
        }
        let applicable = self.log.take_applicable(ctx.retain_bytes);
        let Some(last) = applicable.last().map(|a| a.slot) else {
            self.log.trim(ctx.retain_bytes);
            return;
        };
        let forgotten = self.acceptor.forget_through(last);
        if !forgotten.is_empty() {
            ctx.persist(PersistOp::Forget {
                group: self.name.clone(),
                slots: forgotten,
            });
        }
        for entry in applicable {
            self.note_seal(&entry.command);
            self.on_applied(ctx, entry.slot, &entry.command, entry.written);
            if self.name == SYSTEM_GROUP && !entry.duplicate {
                ctx.membership_changes.push(entry.command.op.clone());
            }
            ctx.out.apply.push(Applied {
                group: self.name.clone(),
                slot: entry.slot,
                command: entry.command,
                duplicate: entry.duplicate,
            });
        }
        let state = self.log.state().clone();
        ctx.persist(PersistOp::State {
            group: self.name.clone(),
            state,
        });
    }

    /// A snapshot of the group's state machine at `state.applied` is installed (durably):
    /// everything up to there is applied.
    pub(super) fn installed(&mut self, ctx: &mut Ctx<'_>, state: GroupState) {
        self.installing = false;
        if state.applied > self.log.applied() {
            // The install removed the records of accepted entries up to its slot.
            self.acceptor.forget_through(state.applied);
            self.sealed = self.sealed.max(state.sealed);
            self.drop_chosen_through(state.applied);
            self.log.install(state);
        }
        self.apply(ctx);
    }

    /// The snapshot could not be had: catching up starts again.
    pub(super) fn install_failed(&mut self) {
        self.installing = false;
        self.last_catch_up = 0;
    }

    fn note_seal(&mut self, command: &Command) {
        if let CommandOp::Seal { epoch } = command.op {
            self.sealed = self.sealed.max(epoch);
        }
    }

    /// A node this one forwarded to is not the owner: it names the owner (or candidate)
    /// it believes in, and requests follow that hint. Its ballot is heard second hand — it
    /// may be a candidate's that never won — so it deposes nobody and is not taken as the
    /// owner's (`seen` stays the ballot of the owner this node believes in; a phase 1 that
    /// starts too low learns the higher promise from the rejections).
    pub(super) fn not_owner(&mut self, ctx: &mut Ctx<'_>, hint: Option<NodeId>, ballot: Ballot) {
        if self.is_leading() || self.is_preparing() {
            return;
        }
        // A stale answer (below what this node has seen) changes nothing.
        if let Some(owner) = hint.filter(|_| ballot >= self.seen) {
            self.owner_hint = Some(owner);
            self.last_heard = ctx.now;
        }
    }

    /// Asks for missing committed entries, at most once per retry interval.
    pub(super) fn fill_gaps(&mut self, ctx: &mut Ctx<'_>) {
        if self.installing {
            return;
        }
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

/// Splits accepted entries into promise pages of about `page_bytes` (at least one page,
/// at least one entry per page).
fn pages_of(entries: Vec<AcceptedEntry>, page_bytes: usize) -> Vec<Vec<AcceptedEntry>> {
    let mut pages = vec![Vec::new()];
    let mut bytes = 0;
    for entry in entries {
        let size = entry.command.size();
        let last = pages.last().is_some_and(|p| !p.is_empty());
        if last && bytes + size > page_bytes {
            pages.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(page) = pages.last_mut() {
            page.push(entry);
        }
    }
    pages
}
