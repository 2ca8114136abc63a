//! The proposer side of a group: taking ownership (phase 1 with re-proposal), committing
//! (phase 2, pipelined within a byte window, batched by bytes), leases, read index,
//! forwarding answers, sealing and handoff.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::ballot::{Ballot, CommandId, NodeId, Slot};
use super::command::{ClientOp, Command, CommandOp};
use super::dedup::Seen;
use super::group::{Ctx, Group};
use super::lease::LeaseGrants;
use super::membership::SYSTEM_GROUP;
use super::message::{AcceptedEntry, ForwardOutcome, Message, SlotEntry};
use super::migration::AccessWindow;
use super::quorum::JointQuorums;
use super::settings::{MigrationMode, Settings};

pub enum Role {
    Follower,
    Preparing(Preparing),
    Leading(Box<Leader>),
}

pub struct Preparing {
    pub ballot: Ballot,
    started_at: u64,
    last_sent: u64,
    handoff_from: Option<Ballot>,
    /// Per acceptor: how far it applied, and which of its promise's pages arrived.
    promises: BTreeMap<NodeId, PromiseProgress>,
    /// The highest-ballot accepted value per slot reported so far. Values from acceptors
    /// whose promise is not complete yet are safe to consider too: every one of them was
    /// accepted below this ballot, and the highest one at or above a chosen ballot is the
    /// chosen value.
    best: BTreeMap<Slot, (Ballot, Command)>,
    /// The highest seal epoch a promise reported.
    sealed: u64,
}

struct PromiseProgress {
    applied: Slot,
    pages: u32,
    seen: BTreeSet<u32>,
}

impl PromiseProgress {
    fn complete(&self) -> bool {
        self.seen.len() as u64 >= u64::from(self.pages.max(1))
    }
}

/// What one page of an acceptor's promise reports besides the ballot.
pub(super) struct PromiseReport {
    pub applied: Slot,
    pub accepted: Vec<AcceptedEntry>,
    pub sealed: u64,
    pub page: u32,
    pub pages: u32,
}

/// Who waits for a slot: the node that forwarded the request (maybe this one).
struct Waiter {
    origin: NodeId,
    id: CommandId,
    read: bool,
}

struct Inflight {
    command: Command,
    acks: BTreeSet<NodeId>,
    sent_at: u64,
}

pub struct Leader {
    pub ballot: Ballot,
    next_slot: Slot,
    /// The last slot phase 1 found (re-proposed or caught up). Reads never use an index
    /// below it: earlier owners may have acknowledged writes up to there.
    recovery_end: Slot,
    inflight: BTreeMap<Slot, Inflight>,
    inflight_bytes: usize,
    inflight_ids: BTreeMap<CommandId, Slot>,
    /// Proposals waiting for room in the window (`Settings::max_inflight_bytes`).
    queued: VecDeque<(Waiter, Command)>,
    queued_bytes: usize,
    queued_ids: BTreeSet<CommandId>,
    waiters: BTreeMap<Slot, Vec<Waiter>>,
    batch: Vec<SlotEntry>,
    batch_bytes: usize,
    grants: LeaseGrants,
    last_heartbeat: u64,
    last_renew: u64,
    access: AccessWindow,
    /// Membership changes that wait for the one under way (owner of `atlas` only): one
    /// change at a time, in arrival order.
    parked: Vec<(Waiter, ClientOp)>,
    /// How far each acceptor reported it has applied (durably), at this ballot.
    reported: BTreeMap<NodeId, Slot>,
    /// Sealing under an epoch: `(epoch, through, seal_proposed)`.
    sealing: Option<(u64, Slot, bool)>,
    last_probe: u64,
}

impl Leader {
    fn config_change_inflight(&self) -> bool {
        self.inflight
            .values()
            .map(|i| &i.command)
            .chain(self.queued.iter().map(|(_, c)| c))
            .any(|c| c.op.is_config_change())
    }
}

/// Whether a membership change must wait: a joint configuration is in force, this owner has
/// not applied what phase 1 found, or a change is proposed or committed but not applied.
fn change_busy(l: &Leader, log: &super::log::Log, joint: bool) -> bool {
    joint
        || log.applied() < l.recovery_end
        || l.config_change_inflight()
        || log.pending().any(|(_, c)| c.op.is_config_change())
}

/// Sequence number used in the ids of entries no client asked for (hole-filling no-ops,
/// seals, `LeaveJoint`): they are never de-duplicated.
const FILLER_SEQ: u64 = 0;

impl Group {
    pub fn is_leading(&self) -> bool {
        matches!(self.role, Role::Leading(_))
    }

    pub fn is_preparing(&self) -> bool {
        matches!(self.role, Role::Preparing(_))
    }

    /// Whether the owner's lease is valid now (for reporting and tests).
    pub fn lease_valid(&self, ctx: &Ctx<'_>) -> bool {
        match &self.role {
            Role::Leading(_) if ctx.settings.inject.ignore_lease_expiry => true,
            Role::Leading(l) => {
                ctx.settings.leases_enabled()
                    && l.grants.is_valid(
                        ctx.quorums,
                        ctx.settings.lease_ms,
                        ctx.settings.drift_margin_ms,
                        ctx.now,
                    )
            }
            _ => false,
        }
    }

    /// The node-clock instant the owner's lease ends, while this node leads with one (for
    /// reports; serving decisions use `lease_valid`).
    pub fn lease_until(&self, quorums: &JointQuorums, settings: &Settings) -> Option<u64> {
        match &self.role {
            Role::Leading(l) if settings.leases_enabled() => {
                l.grants
                    .valid_until(quorums, settings.lease_ms, settings.drift_margin_ms)
            }
            _ => None,
        }
    }

    /// Phase 1a: ask every member to promise a ballot above any seen.
    pub(super) fn start_phase1(&mut self, ctx: &mut Ctx<'_>, handoff_from: Option<Ballot>) {
        if !matches!(self.role, Role::Follower) {
            return;
        }
        if handoff_from.is_none() && ctx.now < self.not_before {
            return;
        }
        let ballot = Ballot::next_after(self.seen.max(self.acceptor.promised()), ctx.id);
        self.role = Role::Preparing(Preparing {
            ballot,
            started_at: ctx.now,
            last_sent: ctx.now,
            handoff_from,
            promises: BTreeMap::new(),
            best: BTreeMap::new(),
            sealed: 0,
        });
        let group = self.name.clone();
        ctx.broadcast(Message::Prepare {
            group,
            ballot,
            token: ctx.now,
            handoff_from,
            epoch: ctx.epoch,
        });
    }

    /// The node applied a new configuration: a candidate or owner of this group started
    /// under the old one, so it takes the group again under the new one (phase 1 with the
    /// new quorums; its own lease does not block it). Acceptors refuse the old epoch.
    pub(super) fn on_epoch_change(&mut self, ctx: &mut Ctx<'_>) {
        if matches!(self.role, Role::Follower) {
            return;
        }
        self.role = Role::Follower;
        self.not_before = 0;
        self.start_phase1(ctx, None);
    }

    pub(super) fn on_promise(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        report: PromiseReport,
    ) {
        let Role::Preparing(p) = &mut self.role else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        p.sealed = p.sealed.max(report.sealed);
        let progress = p.promises.entry(from).or_insert_with(|| PromiseProgress {
            applied: report.applied,
            pages: report.pages,
            seen: BTreeSet::new(),
        });
        if !progress.seen.insert(report.page) {
            return;
        }
        if !ctx.settings.inject.skip_reproposal {
            for e in report.accepted {
                let better = p.best.get(&e.slot).is_none_or(|(b, _)| e.ballot > *b);
                if better {
                    p.best.insert(e.slot, (e.ballot, e.command));
                }
            }
        }
        let promised: BTreeSet<NodeId> = p
            .promises
            .iter()
            .filter(|(_, progress)| progress.complete())
            .map(|(node, _)| *node)
            .collect();
        // A seal reported by any promiser is real: only an owner that saw a Q2 of the
        // sealing configuration apply what its phase 1 found proposes one, and a Q1 of that
        // configuration meets the Q2 that accepted it.
        if ctx.quorums.is_q1_sealed(&promised, p.sealed) {
            let Role::Preparing(p) = std::mem::replace(&mut self.role, Role::Follower) else {
                return;
            };
            self.take_ownership(ctx, p);
        }
    }

    /// With a Q1 of promises: re-propose what may have been chosen, fill holes, catch up.
    fn take_ownership(&mut self, ctx: &mut Ctx<'_>, mut p: Preparing) {
        // Slots up to `caught` are committed (some promiser applied them): fetch, never
        // re-propose, since their acceptors no longer hold them.
        let (caught_by, caught) = p
            .promises
            .iter()
            .map(|(node, progress)| (*node, progress.applied))
            .max_by_key(|(node, applied)| (*applied, *node))
            .unwrap_or((ctx.id, 0));
        let caught = caught.max(self.log.applied());
        // Above it, the highest ballot wins per slot.
        let mut best = p.best.split_off(&(caught + 1));
        // Entries this node already knows committed are the chosen values.
        for (slot, command) in self.log.pending().filter(|(s, _)| **s > caught) {
            best.insert(*slot, (Ballot::new(u64::MAX, u64::MAX), command.clone()));
        }
        let end = best.keys().next_back().copied().unwrap_or(0).max(caught);
        // How far each promiser had applied (durably: promises leave after their sync) is
        // what sealing needs to know; a group whose phase 1 found nothing can seal at once.
        let reported: BTreeMap<NodeId, Slot> = p
            .promises
            .iter()
            .map(|(node, progress)| (*node, progress.applied))
            .collect();
        self.seen = self.seen.max(p.ballot);
        self.owner_hint = Some(ctx.id);
        self.last_heard = ctx.now;
        self.role = Role::Leading(Box::new(Leader {
            ballot: p.ballot,
            next_slot: end + 1,
            recovery_end: end,
            inflight: BTreeMap::new(),
            inflight_bytes: 0,
            inflight_ids: BTreeMap::new(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            queued_ids: BTreeSet::new(),
            waiters: BTreeMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            grants: LeaseGrants::default(),
            last_heartbeat: ctx.now,
            last_renew: ctx.now,
            access: AccessWindow::starting(ctx.now),
            parked: Vec::new(),
            reported,
            sealing: None,
            last_probe: 0,
        }));
        self.log.note_known(caught);
        if self.log.applied() < caught && caught_by != ctx.id {
            let group = self.name.clone();
            let from = self.log.applied() + 1;
            ctx.send(
                caught_by,
                Message::CatchUp {
                    group,
                    from,
                    to: caught,
                },
            );
        }
        for slot in caught + 1..=end {
            let command = match best.remove(&slot) {
                Some((_, command)) => command,
                None => Command::noop(CommandId {
                    origin: ctx.id,
                    seq: FILLER_SEQ,
                }),
            };
            self.propose_at(ctx, slot, command, None);
        }
        // Seal before any client write is proposed when nothing needs recovering (a new
        // group, or one sealed earlier under another configuration): the first write's
        // commit then commits the seal too, so a takeover right after it needs only the
        // current configuration's quorums, not those of memberships that ended.
        self.seal(ctx);
        self.heartbeat(ctx);
        self.renew_lease(ctx);
        self.flush(ctx);
    }

    fn renew_lease(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if !ctx.settings.leases_enabled() {
            return;
        }
        l.last_renew = ctx.now;
        let message = Message::LeaseRenew {
            group: self.name.clone(),
            ballot: l.ballot,
            token: ctx.now,
            epoch: ctx.epoch,
        };
        ctx.broadcast(message);
    }

    fn propose_at(
        &mut self,
        ctx: &mut Ctx<'_>,
        slot: Slot,
        command: Command,
        waiter: Option<Waiter>,
    ) {
        let size = command.size();
        // A batch stays within `batch_bytes`; an entry larger than that goes alone.
        if let Role::Leading(l) = &self.role
            && !l.batch.is_empty()
            && l.batch_bytes + size > ctx.settings.batch_bytes
        {
            self.flush(ctx);
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.inflight_ids.insert(command.id, slot);
        l.batch.push(SlotEntry {
            slot,
            command: command.clone(),
        });
        l.batch_bytes += size;
        l.inflight_bytes += size;
        let replaced = l.inflight.insert(
            slot,
            Inflight {
                command,
                acks: BTreeSet::new(),
                sent_at: ctx.now,
            },
        );
        if let Some(old) = replaced {
            l.inflight_bytes -= old.command.size();
        }
        if let Some(w) = waiter {
            l.waiters.entry(slot).or_default().push(w);
        }
        if l.batch_bytes >= ctx.settings.batch_bytes {
            self.flush(ctx);
        }
    }

    /// Gives `command` the next slot, or queues it while the window is full (a request
    /// beyond the queue too is dropped: its origin retries).
    fn propose(&mut self, ctx: &mut Ctx<'_>, command: Command, waiter: Waiter) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let size = command.size();
        let window = ctx.settings.max_inflight_bytes;
        let room = l.inflight.is_empty() || l.inflight_bytes + size <= window;
        if !room || !l.queued.is_empty() {
            if l.queued.is_empty() || l.queued_bytes + size <= window {
                l.queued_bytes += size;
                l.queued_ids.insert(command.id);
                l.queued.push_back((waiter, command));
            }
            return;
        }
        let slot = l.next_slot;
        l.next_slot += 1;
        self.propose_at(ctx, slot, command, Some(waiter));
    }

    /// Proposes queued commands while the window has room.
    fn drain_queue(&mut self, ctx: &mut Ctx<'_>) {
        loop {
            let Role::Leading(l) = &mut self.role else {
                return;
            };
            let Some(size) = l.queued.front().map(|(_, c)| c.size()) else {
                return;
            };
            if !l.inflight.is_empty() && l.inflight_bytes + size > ctx.settings.max_inflight_bytes {
                return;
            }
            let Some((waiter, command)) = l.queued.pop_front() else {
                return;
            };
            l.queued_bytes -= size;
            l.queued_ids.remove(&command.id);
            let slot = l.next_slot;
            l.next_slot += 1;
            self.propose_at(ctx, slot, command, Some(waiter));
        }
    }

    /// Sends the batched accepts to the Q2 zones (this node's acceptor included).
    pub(super) fn flush(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.batch.is_empty() {
            return;
        }
        let entries = std::mem::take(&mut l.batch);
        l.batch_bytes = 0;
        // Leaving a joint configuration needs a Q1 of the old one as well (below): ask all.
        let everyone = entries
            .iter()
            .any(|e| matches!(e.command.op, CommandOp::LeaveJoint { .. }));
        let message = Message::Accept {
            group: self.name.clone(),
            ballot: l.ballot,
            entries,
            epoch: ctx.epoch,
        };
        if everyone {
            ctx.broadcast(message);
            return;
        }
        for to in ctx.quorums.q2_targets(ctx.zone, ctx.zone_rtt) {
            ctx.send(to, message.clone());
        }
    }

    pub(super) fn on_accepted(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        ballot: Ballot,
        slots: Vec<Slot>,
        applied: Slot,
    ) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        let reported = l.reported.entry(from).or_default();
        *reported = (*reported).max(applied);
        let mut chosen = Vec::new();
        for slot in slots {
            let Some(inflight) = l.inflight.get_mut(&slot) else {
                continue;
            };
            inflight.acks.insert(from);
            // `LeaveJoint` is chosen only once a Q1 of the old configuration has accepted it
            // (so has applied the joint entry and refuses the old epoch): no Q2 of the old
            // configuration can decide anything in any group afterwards.
            let fenced = !matches!(inflight.command.op, CommandOp::LeaveJoint { .. })
                || ctx.quorums.is_q1_of_current(&inflight.acks);
            if ctx.quorums.is_q2(&inflight.acks)
                && fenced
                && let Some(done) = l.inflight.remove(&slot)
            {
                l.inflight_bytes -= done.command.size();
                l.inflight_ids.remove(&done.command.id);
                chosen.push((
                    SlotEntry {
                        slot,
                        command: done.command,
                    },
                    done.acks,
                ));
            }
        }
        if chosen.is_empty() {
            return;
        }
        self.broadcast_commit(ctx, ballot, &chosen);
        for (entry, _) in chosen {
            self.commit(entry.slot, entry.command);
        }
        self.apply(ctx);
        self.drain_queue(ctx);
    }

    /// Tells every other member about chosen entries: by slot to those that accepted them
    /// (they hold the value), whole (in batches of bounded bytes) to the rest.
    fn broadcast_commit(
        &self,
        ctx: &mut Ctx<'_>,
        ballot: Ballot,
        chosen: &[(SlotEntry, BTreeSet<NodeId>)],
    ) {
        let others: Vec<NodeId> = ctx.membership.nodes().filter(|n| *n != ctx.id).collect();
        for to in others {
            let mut slots = Vec::new();
            let mut entries = Vec::new();
            let mut bytes = 0;
            for (entry, acks) in chosen {
                if acks.contains(&to) {
                    slots.push(entry.slot);
                    continue;
                }
                let size = entry.command.size();
                if !entries.is_empty() && bytes + size > ctx.settings.batch_bytes {
                    let message = Message::Commit {
                        group: self.name.clone(),
                        ballot,
                        slots: std::mem::take(&mut slots),
                        entries: std::mem::take(&mut entries),
                    };
                    ctx.send(to, message);
                    bytes = 0;
                }
                bytes += size;
                entries.push(entry.clone());
            }
            if !slots.is_empty() || !entries.is_empty() {
                let message = Message::Commit {
                    group: self.name.clone(),
                    ballot,
                    slots,
                    entries,
                };
                ctx.send(to, message);
            }
        }
    }

    pub(super) fn on_lease_grant(&mut self, from: NodeId, ballot: Ballot, token: u64) {
        if let Role::Leading(l) = &mut self.role
            && l.ballot == ballot
        {
            l.grants.grant(from, token);
        }
    }

    /// A slot was applied here: answer whoever waits on it, if it holds their command
    /// (`written`: not a stale copy, whose origin stopped waiting long ago).
    pub(super) fn on_applied(
        &mut self,
        ctx: &mut Ctx<'_>,
        slot: Slot,
        command: &Command,
        written: bool,
    ) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if let Some(inflight) = l.inflight.remove(&slot) {
            l.inflight_bytes -= inflight.command.size();
            l.inflight_ids.remove(&inflight.command.id);
        }
        let Some(waiters) = l.waiters.remove(&slot) else {
            return;
        };
        let group = self.name.clone();
        for w in waiters.into_iter().filter(|w| w.id == command.id) {
            let outcome = if w.read {
                ForwardOutcome::ReadIndex { slot }
            } else if written {
                ForwardOutcome::Written
            } else {
                continue;
            };
            let message = Message::ForwardReply {
                group: group.clone(),
                id: w.id,
                outcome,
            };
            ctx.send(w.origin, message);
        }
    }

    /// A snapshot made slots up to `slot` applied: nothing of them is in flight any more.
    pub(super) fn drop_chosen_through(&mut self, slot: Slot) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let later = l.inflight.split_off(&(slot + 1));
        for (_, done) in std::mem::replace(&mut l.inflight, later) {
            l.inflight_bytes -= done.command.size();
            l.inflight_ids.remove(&done.command.id);
        }
        l.waiters = l.waiters.split_off(&(slot + 1));
    }

    /// A request forwarded by `from` (maybe this node).
    pub(super) fn on_forward(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        id: CommandId,
        floor: u64,
        op: ClientOp,
    ) {
        let group = self.name.clone();
        let lease_valid = self.lease_valid(ctx);
        let applied = self.log.applied();
        let Role::Leading(l) = &mut self.role else {
            // A candidate names itself: it serves once its phase 1 ends.
            let hint = if self.is_preparing() {
                Some(ctx.id)
            } else {
                self.owner_hint.filter(|h| *h != ctx.id)
            };
            let outcome = ForwardOutcome::NotOwner {
                hint,
                ballot: self.seen,
            };
            ctx.send(from, Message::ForwardReply { group, id, outcome });
            return;
        };
        if let Some(zone) = ctx.membership.zone_of(from) {
            l.access
                .record(ctx.now, ctx.settings.migration_window_ms, zone, from);
        }
        let waiter = Waiter {
            origin: from,
            id,
            read: op.is_read(),
        };
        if op.is_read() {
            if lease_valid {
                let slot = applied.max(l.recovery_end);
                let outcome = ForwardOutcome::ReadIndex { slot };
                ctx.send(from, Message::ForwardReply { group, id, outcome });
            } else if !l.queued_ids.contains(&id) && !l.inflight_ids.contains_key(&id) {
                // Read barrier: a no-op committed at this ballot proves ownership now.
                self.propose(ctx, Command::noop(id), waiter);
            }
            return;
        }
        let command = op.to_command(id, floor);
        let busy = self.name == SYSTEM_GROUP
            && command.op.is_config_change()
            && change_busy(l, &self.log, ctx.quorums.is_joint());
        match self.log.check(&id) {
            Seen::Applied => {
                let outcome = ForwardOutcome::Written;
                ctx.send(from, Message::ForwardReply { group, id, outcome });
            }
            // Its origin finished with it long ago: nobody waits.
            Seen::Stale => {}
            Seen::Fresh => {
                if let Some(slot) = l.inflight_ids.get(&id).copied() {
                    l.waiters.entry(slot).or_default().push(waiter);
                } else if l.queued_ids.contains(&id) {
                    // Already waiting for room; its waiter is this same origin.
                } else if busy {
                    // One membership change at a time: this one waits for the one under way.
                    if let Some(parked) = l.parked.iter_mut().find(|(w, _)| w.id == id) {
                        parked.0 = waiter;
                    } else {
                        l.parked.push((waiter, op));
                    }
                } else {
                    self.propose(ctx, command, waiter);
                }
            }
        }
    }

    /// Owner of `atlas`: ends a joint configuration (`LeaveJoint`), else starts the next
    /// parked change, when no change is under way.
    fn drive_config(&mut self, ctx: &mut Ctx<'_>) {
        let joint = ctx.quorums.is_joint();
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.config_change_inflight() || self.log.applied() < l.recovery_end {
            return;
        }
        if self.log.pending().any(|(_, c)| c.op.is_config_change()) {
            return;
        }
        if joint {
            let slot = l.next_slot;
            l.next_slot += 1;
            let command = Command {
                id: CommandId {
                    origin: ctx.id,
                    seq: FILLER_SEQ,
                },
                floor: 0,
                op: CommandOp::LeaveJoint { epoch: ctx.epoch },
            };
            self.propose_at(ctx, slot, command, None);
            self.flush(ctx);
            return;
        }
        if l.parked.is_empty() {
            return;
        }
        let (waiter, op) = l.parked.remove(0);
        match self.log.check(&waiter.id) {
            Seen::Applied => {
                let message = Message::ForwardReply {
                    group: self.name.clone(),
                    id: waiter.id,
                    outcome: ForwardOutcome::Written,
                };
                ctx.send(waiter.origin, message);
            }
            Seen::Stale => {}
            Seen::Fresh => {
                let command = op.to_command(waiter.id, 0);
                self.propose(ctx, command, waiter);
                self.flush(ctx);
            }
        }
    }

    /// Seals the group under the configuration in force (see `CommandOp::Seal`); never while
    /// joint, never needed at epoch 0. Once this owner has applied what its phase 1 found
    /// (through `recovery_end`), it waits until a Q2 of this configuration reports having
    /// applied that far (durably: acceptances leave only after a synced batch), probing
    /// with empty accepts; members behind catch up with entries or a snapshot meanwhile.
    /// Then every value chosen before is held by a Q2 of this configuration, and it
    /// proposes the seal. No history is copied: state is.
    fn seal(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.quorums.is_joint() || self.sealed >= ctx.epoch {
            return;
        }
        let applied = self.log.applied();
        let group = self.name.clone();
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if applied < l.recovery_end {
            return;
        }
        let through = match l.sealing {
            Some((epoch, _, true)) if epoch == ctx.epoch => return,
            Some((epoch, through, false)) if epoch == ctx.epoch => through,
            _ => {
                l.sealing = Some((ctx.epoch, l.recovery_end, false));
                l.last_probe = 0;
                l.recovery_end
            }
        };
        let caught_up: BTreeSet<NodeId> = l
            .reported
            .iter()
            .filter(|(_, a)| **a >= through)
            .map(|(n, _)| *n)
            .collect();
        if !ctx.quorums.is_q2(&caught_up) {
            if ctx.now >= l.last_probe + ctx.settings.retry_ms {
                l.last_probe = ctx.now;
                let probe = Message::Accept {
                    group,
                    ballot: l.ballot,
                    entries: Vec::new(),
                    epoch: ctx.epoch,
                };
                ctx.broadcast(probe);
            }
            return;
        }
        l.sealing = Some((ctx.epoch, through, true));
        let slot = l.next_slot;
        l.next_slot += 1;
        let command = Command {
            id: CommandId {
                origin: ctx.id,
                seq: FILLER_SEQ,
            },
            floor: 0,
            op: CommandOp::Seal { epoch: ctx.epoch },
        };
        self.propose_at(ctx, slot, command, None);
        self.flush(ctx);
    }

    /// The owner handed the group to this node.
    pub(super) fn on_handoff(&mut self, ctx: &mut Ctx<'_>, released: Ballot) {
        if released >= self.seen && !self.is_leading() {
            self.role = Role::Follower;
            self.start_phase1(ctx, Some(released));
        }
    }

    fn heartbeat(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.last_heartbeat = ctx.now;
        let message = Message::Heartbeat {
            group: self.name.clone(),
            ballot: l.ballot,
            applied: self.log.applied(),
        };
        ctx.broadcast_others(message);
    }

    /// Re-sends accepts that were not answered in time, to the members that did not accept
    /// them (in batches of bounded bytes).
    fn retry_accepts(&mut self, ctx: &mut Ctx<'_>) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let members: Vec<NodeId> = ctx.membership.nodes().collect();
        let mut per_member: BTreeMap<NodeId, Vec<SlotEntry>> = BTreeMap::new();
        for (slot, inflight) in l.inflight.iter_mut() {
            if ctx.now < inflight.sent_at + ctx.settings.retry_ms {
                continue;
            }
            inflight.sent_at = ctx.now;
            for to in members.iter().filter(|m| !inflight.acks.contains(m)) {
                per_member.entry(*to).or_default().push(SlotEntry {
                    slot: *slot,
                    command: inflight.command.clone(),
                });
            }
        }
        let ballot = l.ballot;
        for (to, entries) in per_member {
            for chunk in batches(entries, ctx.settings.batch_bytes) {
                let message = Message::Accept {
                    group: self.name.clone(),
                    ballot,
                    entries: chunk,
                    epoch: ctx.epoch,
                };
                ctx.send(to, message);
            }
        }
    }

    /// Timer duties: retries, heartbeats, lease renewal, migration, phase 1 timeouts.
    pub(super) fn tick(&mut self, ctx: &mut Ctx<'_>) {
        self.fill_gaps(ctx);
        match &mut self.role {
            // A joint configuration must be left even when no client asks anything: if
            // nobody has owned `atlas` for a while, take it (after any back-off) so its owner
            // proposes `LeaveJoint`.
            Role::Follower => {
                if self.name == SYSTEM_GROUP
                    && ctx.quorums.is_joint()
                    && ctx.now >= self.last_heard.saturating_add(ctx.settings.suspect_ms)
                {
                    self.start_phase1(ctx, None);
                }
            }
            Role::Preparing(p) => {
                if ctx.now >= p.started_at + 4 * ctx.settings.retry_ms {
                    self.role = Role::Follower;
                    self.not_before = ctx.backoff();
                } else if ctx.now >= p.last_sent + ctx.settings.retry_ms {
                    p.last_sent = ctx.now;
                    let message = Message::Prepare {
                        group: self.name.clone(),
                        ballot: p.ballot,
                        token: ctx.now,
                        handoff_from: p.handoff_from,
                        epoch: ctx.epoch,
                    };
                    let missing: Vec<NodeId> = ctx
                        .membership
                        .nodes()
                        .filter(|n| !p.promises.get(n).is_some_and(PromiseProgress::complete))
                        .collect();
                    for to in missing {
                        ctx.send(to, message.clone());
                    }
                }
            }
            Role::Leading(l) => {
                let ballot = l.ballot;
                let renew = ctx.now >= l.last_renew + ctx.settings.lease_ms / 4;
                let handoff = if ctx.settings.migration == MigrationMode::Adaptive {
                    let membership = ctx.membership;
                    l.access.decide(
                        ctx.now,
                        ctx.settings.migration_window_ms,
                        ctx.settings.migration_min_accesses,
                        ctx.zone,
                        |n| membership.zone_of(n).cloned(),
                    )
                } else {
                    None
                };
                let beat = ctx.now >= l.last_heartbeat + ctx.settings.heartbeat_ms;
                self.retry_accepts(ctx);
                if beat {
                    self.heartbeat(ctx);
                }
                if self.name == SYSTEM_GROUP {
                    self.drive_config(ctx);
                }
                self.seal(ctx);
                self.drain_queue(ctx);
                if renew {
                    self.renew_lease(ctx);
                }
                if let Some(target) = handoff.filter(|t| *t != ctx.id) {
                    // Stop serving (and stop trusting the lease) before the target asks the
                    // acceptors to release it; clients retry at the new owner.
                    self.role = Role::Follower;
                    self.owner_hint = Some(target);
                    self.last_heard = ctx.now;
                    let group = self.name.clone();
                    ctx.send(
                        target,
                        Message::Handoff {
                            group,
                            from: ballot,
                        },
                    );
                }
            }
        }
    }
}

/// Splits entries into batches of about `max_bytes` (an entry larger than that goes alone).
pub(super) fn batches(entries: Vec<SlotEntry>, max_bytes: usize) -> Vec<Vec<SlotEntry>> {
    let mut out: Vec<Vec<SlotEntry>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry.command.size();
        match out.last_mut() {
            Some(batch) if bytes + size <= max_bytes => batch.push(entry),
            _ => {
                bytes = 0;
                out.push(vec![entry]);
            }
        }
        bytes += size;
    }
    out
}
