//! The proposer side of a group: taking ownership (phase 1 with re-proposal), committing
//! (phase 2, pipelined and batched), leases, read index, forwarding answers and handoff.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::{Ballot, CommandId, NodeId, Slot};
use super::command::{ClientOp, Command, CommandOp};
use super::group::{Ctx, Group};
use super::lease::LeaseGrants;
use super::membership::SYSTEM_GROUP;
use super::message::{AcceptedEntry, ForwardOutcome, Message, SlotEntry};
use super::migration::AccessWindow;
use super::settings::MigrationMode;

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
    /// Per acceptor: how far it applied, and its accepted-but-uncommitted entries.
    promises: BTreeMap<NodeId, (Slot, Vec<AcceptedEntry>)>,
    /// The highest seal epoch a promise reported.
    sealed: u64,
}

/// What an acceptor's promise reports besides the ballot.
pub(super) struct PromiseReport {
    pub applied: Slot,
    pub accepted: Vec<AcceptedEntry>,
    pub sealed: u64,
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
    inflight_ids: BTreeMap<CommandId, Slot>,
    waiters: BTreeMap<Slot, Vec<Waiter>>,
    batch: Vec<SlotEntry>,
    grants: LeaseGrants,
    last_heartbeat: u64,
    last_renew: u64,
    access: AccessWindow,
    /// Membership changes that wait for the one under way (owner of `atlas` only): one
    /// change at a time, in arrival order.
    parked: Vec<(Waiter, ClientOp)>,
    /// Sealing under an epoch: `(epoch, copied_through, seal_proposed)`.
    sealing: Option<(u64, Slot, bool)>,
}

impl Leader {
    fn config_change_inflight(&self) -> bool {
        self.inflight
            .values()
            .any(|i| i.command.op.is_config_change())
    }
}

/// Whether a membership change must wait: a joint configuration is in force, this owner has
/// not applied what phase 1 found, or a change is proposed or committed but not applied.
fn change_busy(l: &Leader, log: &super::log::Log, joint: bool) -> bool {
    joint
        || log.applied() < l.recovery_end
        || l.config_change_inflight()
        || log
            .committed_after(log.applied())
            .any(|(_, c)| c.op.is_config_change())
}

/// Node id used in the ids of no-ops that fill holes (no-ops are never de-duplicated).
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
        token: u64,
        report: PromiseReport,
    ) {
        let PromiseReport {
            applied,
            accepted,
            sealed,
        } = report;
        let Role::Preparing(p) = &mut self.role else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        let _ = token;
        p.promises.insert(from, (applied, accepted));
        p.sealed = p.sealed.max(sealed);
        let promised: BTreeSet<NodeId> = p.promises.keys().copied().collect();
        // A seal reported by any promiser is real: only an owner whose recovery under that
        // epoch was committed proposes one, and a Q1 of the sealing configuration meets the
        // Q2 that accepted it.
        if ctx.quorums.is_q1_sealed(&promised, p.sealed) {
            let Role::Preparing(p) = std::mem::replace(&mut self.role, Role::Follower) else {
                return;
            };
            self.take_ownership(ctx, p);
        }
    }

    /// With a Q1 of promises: re-propose what may have been chosen, fill holes, catch up.
    fn take_ownership(&mut self, ctx: &mut Ctx<'_>, p: Preparing) {
        // Slots up to `caught` are committed (some promiser applied them): fetch, never
        // re-propose, since their acceptors no longer report them.
        let (caught_by, caught) = p
            .promises
            .iter()
            .map(|(node, (applied, _))| (*node, *applied))
            .max_by_key(|(node, applied)| (*applied, *node))
            .unwrap_or((ctx.id, 0));
        let caught = caught.max(self.log.applied());
        // Above it, the highest ballot wins per slot.
        let mut best: BTreeMap<Slot, (Ballot, Command)> = BTreeMap::new();
        for (_, accepted) in p.promises.values() {
            if ctx.settings.inject.skip_reproposal {
                break;
            }
            for e in accepted.iter().filter(|e| e.slot > caught) {
                let better = best.get(&e.slot).is_none_or(|(b, _)| e.ballot > *b);
                if better {
                    best.insert(e.slot, (e.ballot, e.command.clone()));
                }
            }
        }
        // Entries this node already knows committed are the chosen values.
        for (slot, command) in self.log.committed_after(caught) {
            best.insert(*slot, (Ballot::new(u64::MAX, u64::MAX), command.clone()));
        }
        let end = best.keys().next_back().copied().unwrap_or(0).max(caught);
        self.seen = self.seen.max(p.ballot);
        self.owner_hint = Some(ctx.id);
        self.last_heard = ctx.now;
        self.role = Role::Leading(Box::new(Leader {
            ballot: p.ballot,
            next_slot: end + 1,
            recovery_end: end,
            inflight: BTreeMap::new(),
            inflight_ids: BTreeMap::new(),
            waiters: BTreeMap::new(),
            batch: Vec::new(),
            grants: LeaseGrants::default(),
            last_heartbeat: ctx.now,
            last_renew: ctx.now,
            access: AccessWindow::starting(ctx.now),
            parked: Vec::new(),
            sealing: None,
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
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.inflight_ids.insert(command.id, slot);
        l.batch.push(SlotEntry {
            slot,
            command: command.clone(),
        });
        l.inflight.insert(
            slot,
            Inflight {
                command,
                acks: BTreeSet::new(),
                sent_at: ctx.now,
            },
        );
        if let Some(w) = waiter {
            l.waiters.entry(slot).or_default().push(w);
        }
        if l.batch.len() >= ctx.settings.batch_max {
            self.flush(ctx);
        }
    }

    fn propose(&mut self, ctx: &mut Ctx<'_>, command: Command, waiter: Waiter) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let slot = l.next_slot;
        l.next_slot += 1;
        self.propose_at(ctx, slot, command, Some(waiter));
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
        // Leaving a joint configuration needs a Q1 of the old one as well (below): ask all.
        let everyone = entries
            .iter()
            .any(|e| e.command.op == CommandOp::LeaveJoint);
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
    ) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        let mut chosen = Vec::new();
        for slot in slots {
            let Some(inflight) = l.inflight.get_mut(&slot) else {
                continue;
            };
            inflight.acks.insert(from);
            // `LeaveJoint` is chosen only once a Q1 of the old configuration has accepted it
            // (so has applied the joint entry and refuses the old epoch): no Q2 of the old
            // configuration can decide anything in any group afterwards.
            let fenced = inflight.command.op != CommandOp::LeaveJoint
                || ctx.quorums.is_q1_of_current(&inflight.acks);
            if ctx.quorums.is_q2(&inflight.acks)
                && fenced
                && let Some(done) = l.inflight.remove(&slot)
            {
                l.inflight_ids.remove(&done.command.id);
                chosen.push(SlotEntry {
                    slot,
                    command: done.command,
                });
            }
        }
        if chosen.is_empty() {
            return;
        }
        for entry in &chosen {
            self.commit(ctx, entry.slot, entry.command.clone());
        }
        let group = self.name.clone();
        ctx.broadcast_others(Message::Commit {
            group,
            ballot,
            entries: chosen,
        });
        self.apply(ctx);
    }

    pub(super) fn on_lease_grant(&mut self, from: NodeId, ballot: Ballot, token: u64) {
        if let Role::Leading(l) = &mut self.role
            && l.ballot == ballot
        {
            l.grants.grant(from, token);
        }
    }

    /// A slot was applied here: answer whoever waits on it, if it holds their command.
    pub(super) fn on_applied(&mut self, ctx: &mut Ctx<'_>, slot: Slot, command: &Command) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if let Some(inflight) = l.inflight.remove(&slot) {
            l.inflight_ids.remove(&inflight.command.id);
        }
        let Some(waiters) = l.waiters.remove(&slot) else {
            return;
        };
        let group = self.name.clone();
        for w in waiters.into_iter().filter(|w| w.id == command.id) {
            let outcome = if w.read {
                ForwardOutcome::ReadIndex { slot }
            } else {
                ForwardOutcome::Written
            };
            let message = Message::ForwardReply {
                group: group.clone(),
                id: w.id,
                outcome,
            };
            ctx.send(w.origin, message);
        }
    }

    /// A request forwarded by `from` (maybe this node).
    pub(super) fn on_forward(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: NodeId,
        id: CommandId,
        op: ClientOp,
    ) {
        let group = self.name.clone();
        let lease_valid = self.lease_valid(ctx);
        let applied = self.log.applied();
        let Role::Leading(l) = &mut self.role else {
            let hint = self.owner_hint.filter(|h| *h != ctx.id);
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
            } else {
                // Read barrier: a no-op committed at this ballot proves ownership now.
                self.propose(ctx, Command::noop(id), waiter);
            }
            return;
        }
        let busy = self.name == SYSTEM_GROUP
            && op.to_command(id).op.is_config_change()
            && change_busy(l, &self.log, ctx.quorums.is_joint());
        if self.log.is_applied(&id) {
            let outcome = ForwardOutcome::Written;
            ctx.send(from, Message::ForwardReply { group, id, outcome });
        } else if let Some(slot) = l.inflight_ids.get(&id).copied() {
            l.waiters.entry(slot).or_default().push(waiter);
        } else if busy {
            // One membership change at a time: this one waits for the one under way.
            if let Some(parked) = l.parked.iter_mut().find(|(w, _)| w.id == id) {
                parked.0 = waiter;
            } else {
                l.parked.push((waiter, op));
            }
        } else {
            self.propose(ctx, op.to_command(id), waiter);
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
        if self
            .log
            .committed_after(self.log.applied())
            .any(|(_, c)| c.op.is_config_change())
        {
            return;
        }
        if joint {
            let slot = l.next_slot;
            l.next_slot += 1;
            // Unique per proposer and joint epoch, so no later change's is a duplicate.
            let id = CommandId {
                origin: ctx.id,
                seq: u64::MAX - ctx.epoch,
            };
            let command = Command {
                id,
                op: CommandOp::LeaveJoint,
            };
            self.propose_at(ctx, slot, command, None);
            self.flush(ctx);
            return;
        }
        if l.parked.is_empty() {
            return;
        }
        let (waiter, op) = l.parked.remove(0);
        if self.log.is_applied(&waiter.id) {
            let message = Message::ForwardReply {
                group: self.name.clone(),
                id: waiter.id,
                outcome: ForwardOutcome::Written,
            };
            ctx.send(waiter.origin, message);
            return;
        }
        let command = op.to_command(waiter.id);
        self.propose(ctx, command, waiter);
        self.flush(ctx);
    }

    /// Seals the group under the configuration in force (see `CommandOp::Seal`); never while
    /// joint, never needed at epoch 0. Once this owner has applied what its phase 1 found,
    /// it re-proposes every committed slot up to there at its ballot (an acceptor that
    /// applied a slot acknowledges it without storing it), so a Q2 of this configuration
    /// holds each slot, accepted or applied: that is the copy of the group's state to the
    /// new members. Only when all of them are committed does it propose the seal.
    fn seal(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.quorums.is_joint() || self.sealed >= ctx.epoch {
            return;
        }
        let applied = self.log.applied();
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if applied < l.recovery_end {
            return;
        }
        match l.sealing {
            Some((epoch, _, true)) if epoch == ctx.epoch => return,
            Some((epoch, through, false)) if epoch == ctx.epoch => {
                if l.inflight.range(..=through).next().is_some() {
                    return;
                }
                l.sealing = Some((epoch, through, true));
            }
            _ => {
                let through = l.recovery_end;
                l.sealing = Some((ctx.epoch, through, false));
                let copies: Vec<(Slot, Command)> = (1..=through)
                    .filter_map(|s| self.log.get(s).map(|c| (s, c.clone())))
                    .collect();
                let empty = copies.is_empty();
                for (slot, command) in copies {
                    self.propose_at(ctx, slot, command, None);
                }
                self.flush(ctx);
                if !empty {
                    return;
                }
                let Role::Leading(l) = &mut self.role else {
                    return;
                };
                l.sealing = Some((ctx.epoch, through, true));
            }
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let slot = l.next_slot;
        l.next_slot += 1;
        let command = Command {
            id: CommandId {
                origin: ctx.id,
                seq: FILLER_SEQ,
            },
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
                        .filter(|n| !p.promises.contains_key(n))
                        .collect();
                    for to in missing {
                        ctx.send(to, message.clone());
                    }
                }
            }
            Role::Leading(l) => {
                let retry: Vec<SlotEntry> = l
                    .inflight
                    .iter_mut()
                    .filter(|(_, i)| ctx.now >= i.sent_at + ctx.settings.retry_ms)
                    .map(|(slot, i)| {
                        i.sent_at = ctx.now;
                        SlotEntry {
                            slot: *slot,
                            command: i.command.clone(),
                        }
                    })
                    .collect();
                let ballot = l.ballot;
                for chunk in retry.chunks(ctx.settings.batch_max.max(1)) {
                    ctx.broadcast(Message::Accept {
                        group: self.name.clone(),
                        ballot,
                        entries: chunk.to_vec(),
                        epoch: ctx.epoch,
                    });
                }
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
                if beat {
                    self.heartbeat(ctx);
                }
                if self.name == SYSTEM_GROUP {
                    self.drive_config(ctx);
                }
                self.seal(ctx);
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
