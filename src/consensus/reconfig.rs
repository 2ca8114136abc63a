//! The owner's duties when the configuration changes: driving the membership changes of
//! `atlas` one at a time (then `LeaveJoint`), and sealing every group under the new epoch.

use std::collections::BTreeSet;

use super::ballot::{CommandId, NodeId};
use super::command::{Command, CommandOp};
use super::ctx::Ctx;
use super::dedup::Seen;
use super::group::Group;
use super::message::{ForwardOutcome, Message};
use super::proposer::{FILLER_SEQ, Role};

impl Group {
    /// Owner of `atlas`: ends a joint configuration (`LeaveJoint`), else starts the next
    /// parked change, when no change is under way.
    pub(super) fn drive_config(&mut self, ctx: &mut Ctx<'_>) {
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
            self.propose_filler(ctx, CommandOp::LeaveJoint { epoch: ctx.epoch });
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
    pub(super) fn seal(&mut self, ctx: &mut Ctx<'_>) {
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
        self.propose_filler(ctx, CommandOp::Seal { epoch: ctx.epoch });
    }

    /// Proposes `op`, an entry no client asked for (never de-duplicated), at the next slot
    /// and sends it at once.
    fn propose_filler(&mut self, ctx: &mut Ctx<'_>, op: CommandOp) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let slot = l.next_slot;
        l.next_slot += 1;
        let id = CommandId {
            origin: ctx.id,
            seq: FILLER_SEQ,
        };
        let command = Command { id, floor: 0, op };
        self.propose_at(ctx, slot, command, None);
        self.flush(ctx);
    }
}
