//! The client requests a node took in: where each goes (to the owner, here or forwarded),
//! what the owner's answer means, and when it completes — a read once its index is applied
//! here, a write once this node applied it too.

use super::ballot::{CommandId, GroupId, Slot};
use super::command::ClientOp;
use super::dedup::Seen;
use super::message::{ForwardOutcome, Message};
use super::node::Node;
use super::ready::{Completion, Outcome, RequestId};
use super::settings::MigrationMode;

/// A client request this node took in and has not answered yet.
pub(super) struct Outstanding {
    pub(super) request: RequestId,
    pub(super) group: GroupId,
    pub(super) op: ClientOp,
    pub(super) next_try: u64,
    pub(super) deadline: u64,
    /// For a read: the slot to apply before answering it.
    pub(super) read_index: Option<Slot>,
    /// Handed to this node as owner (so it need not be routed again when it becomes one).
    pub(super) at_owner_here: bool,
    /// For a write: the owner reported it applied. It completes once this node has applied
    /// it too, so the machine here has its verdict (a conditional write's answer depends on
    /// the state it met) and a read here right after sees it.
    pub(super) written: bool,
    /// Completes once the owner reports it committed, without waiting to apply it here
    /// (`client_write_committed`).
    pub(super) on_commit: bool,
}

impl Node {
    /// A client request received by this node.
    pub fn client_request(&mut self, now: u64, request: RequestId, op: ClientOp) {
        self.take_request(now, request, op, false);
    }

    /// A write whose answer does not depend on this node's state machine (a fragment of a
    /// large blob: the state machine judges the whole later): completed `Written` as soon as
    /// the owner reports it committed, not once this node has applied it, so a node behind
    /// in applying does not slow it.
    pub fn client_write_committed(&mut self, now: u64, request: RequestId, op: ClientOp) {
        self.take_request(now, request, op, true);
    }

    fn take_request(&mut self, now: u64, request: RequestId, op: ClientOp, on_commit: bool) {
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
                on_commit,
            },
        );
        self.route(id);
        self.unsettled = true;
    }

    /// Sends a request where it can be served: this node if it owns the group, else the
    /// owner; with no live owner known, this node takes the group (phase 1).
    pub(super) fn route(&mut self, id: CommandId) {
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

    pub(super) fn on_forward_reply(&mut self, group: &str, id: CommandId, outcome: ForwardOutcome) {
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

    /// After the groups settled: routes the requests waiting for this node to take their
    /// group (true: settle again), answers reads whose index is applied here and writes
    /// applied here.
    pub(super) fn complete_requests(&mut self) -> bool {
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
            return true;
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
                    && (o.on_commit
                        || self
                            .groups
                            .get(&o.group)
                            .is_some_and(|g| g.log.check(id) != Seen::Fresh))
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
        false
    }
}
