//! The owner's side of a group once phase 1 is won: committing (phase 2, pipelined within
//! a byte window, batched by bytes), leases, read index, forwarded requests, heartbeats and
//! accept retries. Taking ownership is `proposer.rs`; membership changes of `atlas` and
//! sealing under a new epoch are `reconfig.rs`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::ballot::{Ballot, CommandId, NodeId, Slot};
use super::command::{ClientOp, Command, CommandOp, split_by_bytes};
use super::ctx::Ctx;
use super::dedup::Seen;
use super::group::Group;
use super::lease::LeaseGrants;
use super::membership::SYSTEM_GROUP;
use super::message::{ForwardOutcome, Message, SlotEntry};
use super::migration::AccessWindow;
use super::proposer::Role;

/// Who waits for a slot: the node that forwarded the request (maybe this one).
pub(super) struct Waiter {
    pub(super) origin: NodeId,
    pub(super) id: CommandId,
    pub(super) read: bool,
}

pub(super) struct Inflight {
    pub(super) command: Command,
    pub(super) acks: BTreeSet<NodeId>,
    pub(super) sent_at: u64,
}

pub struct Leader {
    pub ballot: Ballot,
    pub(super) next_slot: Slot,
    /// The last slot phase 1 found (re-proposed or caught up). Reads never use an index
    /// below it: earlier owners may have acknowledged writes up to there.
    pub(super) recovery_end: Slot,
    pub(super) inflight: BTreeMap<Slot, Inflight>,
    pub(super) inflight_bytes: usize,
    pub(super) inflight_ids: BTreeMap<CommandId, Slot>,
    /// Proposals waiting for room in the window (`Settings::max_inflight_bytes`).
    pub(super) queued: VecDeque<(Waiter, Command)>,
    pub(super) queued_bytes: usize,
    pub(super) queued_ids: BTreeSet<CommandId>,
    pub(super) waiters: BTreeMap<Slot, Vec<Waiter>>,
    pub(super) batch: Vec<SlotEntry>,
    pub(super) batch_bytes: usize,
    pub(super) grants: LeaseGrants,
    pub(super) last_heartbeat: u64,
    pub(super) last_renew: u64,
    pub(super) access: AccessWindow,
    /// Membership changes that wait for the one under way (owner of `atlas` only): one
    /// change at a time, in arrival order.
    pub(super) parked: Vec<(Waiter, ClientOp)>,
    /// How far each acceptor reported it has applied (durably), at this ballot.
    pub(super) reported: BTreeMap<NodeId, Slot>,
    /// Sealing under an epoch: `(epoch, through, seal_proposed)`.
    pub(super) sealing: Option<(u64, Slot, bool)>,
    pub(super) last_probe: u64,
}

impl Leader {
    pub(super) fn config_change_inflight(&self) -> bool {
        self.inflight
            .values()
            .map(|i| &i.command)
            .chain(self.queued.iter().map(|(_, c)| c))
            .any(|c| c.op.is_config_change())
    }
}

/// Whether a membership change must wait: a joint configuration is in force, this owner has
/// not applied what phase 1 found, or a change is proposed or committed but not applied.
pub(super) fn change_busy(l: &Leader, log: &super::log::Log, joint: bool) -> bool {
    joint
        || log.applied() < l.recovery_end
        || l.config_change_inflight()
        || log.pending().any(|(_, c)| c.op.is_config_change())
}

impl Group {
    pub(super) fn renew_lease(&mut self, ctx: &mut Ctx<'_>) {
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

    pub(super) fn propose_at(
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
    pub(super) fn propose(&mut self, ctx: &mut Ctx<'_>, command: Command, waiter: Waiter) {
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
    pub(super) fn drain_queue(&mut self, ctx: &mut Ctx<'_>) {
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
    pub(super) fn broadcast_commit(
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

    pub(super) fn heartbeat(&mut self, ctx: &mut Ctx<'_>) {
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
    pub(super) fn retry_accepts(&mut self, ctx: &mut Ctx<'_>) {
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
            for chunk in split_by_bytes(entries, ctx.settings.batch_bytes, |e| e.command.size()) {
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
}
