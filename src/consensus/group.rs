//! One group at one node: its acceptor, its log (learner) and its proposer role. This file
//! holds the acceptor and learner handlers; `proposer.rs` holds phase 1, phase 2 and the
//! owner's duties.

use rand::Rng;

use super::acceptor::Acceptor;
use super::ballot::{Ballot, GroupId, NodeId, Slot};
use super::command::{Command, CommandOp, split_by_bytes};
use super::ctx::Ctx;
use super::log::{Compacted, GroupState, Log};
use super::membership::SYSTEM_GROUP;
use super::message::{AcceptedEntry, Message, SlotEntry};
use super::proposer::Role;
use super::ready::{Applied, PersistOp, SnapshotRequest};

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
    /// Pinned (`TABLE PIN`): the adaptive policy never moves the group; the cluster layer
    /// hands it to a node of the pinned zone when its owner is elsewhere.
    pub(super) pinned: bool,
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
            pinned: false,
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
                entries,
                ..
            } => self.on_commit(ctx, ballot, slots, entries),
            Message::Heartbeat {
                ballot, applied, ..
            } => {
                self.observe(ctx, ballot, true);
                if ballot == self.seen {
                    self.log.note_known(applied);
                }
            }
            Message::CatchUp { from: lo, to, .. } => self.on_catch_up(ctx, from, lo, to),
            Message::CatchUpReply {
                entries, compacted, ..
            } => self.on_catch_up_reply(ctx, from, entries, compacted),
            Message::LeaseRenew {
                ballot,
                token,
                epoch,
                ..
            } => self.on_lease_renew(ctx, from, ballot, token, epoch),
            Message::LeaseGrant { ballot, token, .. } => self.on_lease_grant(from, ballot, token),
            Message::Forward { id, floor, op, .. } => self.on_forward(ctx, from, id, floor, op),
            Message::Handoff { from: released, .. } => self.on_handoff(ctx, released),
            // Handled by the node (client requests it forwarded).
            Message::ForwardReply { .. } => {}
        }
    }

    fn on_commit(
        &mut self,
        ctx: &mut Ctx<'_>,
        ballot: Ballot,
        slots: Vec<Slot>,
        mut entries: Vec<SlotEntry>,
    ) {
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

    /// A peer asks for committed entries `lo..=to`: what the log still holds, or where it
    /// was compacted (the peer then fetches a snapshot).
    fn on_catch_up(&mut self, ctx: &mut Ctx<'_>, from: NodeId, lo: Slot, to: Slot) {
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

    fn on_catch_up_reply(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        entries: Vec<SlotEntry>,
        compacted: Option<Slot>,
    ) {
        let paged = !entries.is_empty();
        self.learn(ctx, entries);
        // A page came: ask for the next one now, not a retry interval later, so a learner
        // behind catches up at the network's pace (a page per round trip), not a page per
        // `retry_ms` (1 MiB per 200 ms is slower than the owner writes under load).
        if paged {
            self.last_catch_up = 0;
            self.fill_gaps(ctx);
        }
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

    fn on_lease_renew(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        token: u64,
        epoch: u64,
    ) {
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
    let mut pages = split_by_bytes(entries, page_bytes, |e| e.command.size());
    if pages.is_empty() {
        pages.push(Vec::new());
    }
    pages
}
