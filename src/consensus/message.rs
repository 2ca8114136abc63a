//! Messages between nodes, and their versioned binary encoding.

use super::ballot::{Ballot, CommandId, GroupId, NodeId, Slot};
use super::codec::{CodecError, MIN_COMMAND_BYTES, Reader, Writer};
use super::command::{ClientOp, Command};

/// An entry an acceptor accepted but has not yet seen committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEntry {
    pub slot: Slot,
    pub ballot: Ballot,
    pub command: Command,
}

/// A slot and the command in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    pub slot: Slot,
    pub command: Command,
}

/// What an owner tells the node that forwarded a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// The write is in the log and applied at the owner.
    Written,
    /// The read may be served once the asking node has applied `slot` of the group.
    ReadIndex { slot: Slot },
    /// This node is not the owner; the hint (if any) is the owner with the highest ballot seen.
    NotOwner {
        hint: Option<NodeId>,
        ballot: Ballot,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Phase 1a. `token` is the proposer's clock at sending; it comes back with the lease.
    /// `handoff_from` names the ballot of an owner that handed the group over (its lease is
    /// released).
    /// `epoch` (here and in `Accept`, `LeaseRenew`, `Reject`) is the sender's configuration
    /// epoch: acceptors answer only requests of their own epoch (see `group.rs`).
    Prepare {
        group: GroupId,
        ballot: Ballot,
        token: u64,
        handoff_from: Option<Ballot>,
        epoch: u64,
    },
    /// Phase 1b: the promise, the acceptor's accepted-but-uncommitted entries and how far it
    /// has applied (durably: a promise leaves only after the batch it depends on is synced).
    /// The entries come in `pages` messages of bounded size, numbered by `page`; the
    /// promise counts once every page arrived.
    Promise {
        group: GroupId,
        ballot: Ballot,
        token: u64,
        applied: Slot,
        accepted: Vec<AcceptedEntry>,
        /// The configuration epoch the acceptor knows the group sealed at (0: never).
        sealed: u64,
        page: u32,
        pages: u32,
    },
    /// Phase 2a, batched.
    Accept {
        group: GroupId,
        ballot: Ballot,
        entries: Vec<SlotEntry>,
        epoch: u64,
    },
    /// Phase 2b, and how far the acceptor has applied (durably), which an owner sealing
    /// the group waits on. An `Accept` without entries asks for this report alone.
    Accepted {
        group: GroupId,
        ballot: Ballot,
        slots: Vec<Slot>,
        applied: Slot,
    },
    /// A refusal of a prepare, accept or lease renewal: the acceptor's promise is higher, or
    /// another owner's lease is in force.
    Reject {
        group: GroupId,
        ballot: Ballot,
        promised: Ballot,
        epoch: u64,
    },
    /// Commit broadcast: `slots` the receiver accepted at `ballot` (it commits its own
    /// copy), and whole `entries` for the others.
    Commit {
        group: GroupId,
        ballot: Ballot,
        slots: Vec<Slot>,
        entries: Vec<SlotEntry>,
    },
    /// The owner is alive and has applied through `applied`; learners fill gaps up to it.
    Heartbeat {
        group: GroupId,
        ballot: Ballot,
        applied: Slot,
    },
    /// Gap fill: send committed entries `from..=to`.
    CatchUp {
        group: GroupId,
        from: Slot,
        to: Slot,
    },
    /// Committed entries (bounded in bytes). `compacted`: the entries asked for left the
    /// replier's log; its state is at that slot, and a snapshot of it is what to fetch.
    CatchUpReply {
        group: GroupId,
        entries: Vec<SlotEntry>,
        compacted: Option<Slot>,
    },
    LeaseRenew {
        group: GroupId,
        ballot: Ballot,
        token: u64,
        epoch: u64,
    },
    LeaseGrant {
        group: GroupId,
        ballot: Ballot,
        token: u64,
    },
    /// A client request sent on to the owner, with the origin's floor (see `dedup.rs`).
    Forward {
        group: GroupId,
        id: CommandId,
        floor: u64,
        op: ClientOp,
    },
    ForwardReply {
        group: GroupId,
        id: CommandId,
        outcome: ForwardOutcome,
    },
    /// The owner asks the receiver to take the group (adaptive migration).
    Handoff { group: GroupId, from: Ballot },
}

impl Message {
    pub fn group(&self) -> &str {
        match self {
            Message::Prepare { group, .. }
            | Message::Promise { group, .. }
            | Message::Accept { group, .. }
            | Message::Accepted { group, .. }
            | Message::Reject { group, .. }
            | Message::Commit { group, .. }
            | Message::Heartbeat { group, .. }
            | Message::CatchUp { group, .. }
            | Message::CatchUpReply { group, .. }
            | Message::LeaseRenew { group, .. }
            | Message::LeaseGrant { group, .. }
            | Message::Forward { group, .. }
            | Message::ForwardReply { group, .. }
            | Message::Handoff { group, .. } => group,
        }
    }

    /// The proposer's ballot the message speaks for: only that ballot's node sends it.
    pub fn sender_ballot(&self) -> Option<Ballot> {
        match self {
            Message::Prepare { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::Commit { ballot, .. }
            | Message::Heartbeat { ballot, .. }
            | Message::LeaseRenew { ballot, .. } => Some(*ballot),
            Message::Handoff { from, .. } => Some(*from),
            _ => None,
        }
    }

    /// The sender's configuration epoch, in the messages that carry one.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Message::Prepare { epoch, .. }
            | Message::Accept { epoch, .. }
            | Message::LeaseRenew { epoch, .. }
            | Message::Reject { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// Whether the message may name a group the receiver has never seen: a proposer's
    /// messages (a new table's owner) and forwarded client requests. Replies and catch-up
    /// requests are only about groups the receiver already has.
    pub fn may_start_group(&self) -> bool {
        matches!(
            self,
            Message::Prepare { .. }
                | Message::Accept { .. }
                | Message::Commit { .. }
                | Message::Heartbeat { .. }
                | Message::LeaseRenew { .. }
                | Message::Handoff { .. }
                | Message::Forward { .. }
        )
    }

    /// A vote: it may leave (or, sent to this node, be handled) only once the batch it
    /// depends on is durable.
    pub fn is_vote(&self) -> bool {
        matches!(self, Message::Promise { .. } | Message::Accepted { .. })
    }

    /// About how many bytes the message takes encoded (budgets of queues and batches).
    pub fn size_hint(&self) -> usize {
        let entries = |e: &[SlotEntry]| e.iter().map(|e| e.command.size() + 8).sum::<usize>();
        64 + self.group().len()
            + match self {
                Message::Promise { accepted, .. } => {
                    accepted.iter().map(|e| e.command.size() + 24).sum()
                }
                Message::Accept { entries: e, .. } | Message::CatchUpReply { entries: e, .. } => {
                    entries(e)
                }
                Message::Commit {
                    slots, entries: e, ..
                } => slots.len() * 8 + entries(e),
                Message::Accepted { slots, .. } => slots.len() * 8,
                Message::Forward { op, .. } => op.size(),
                _ => 0,
            }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::versioned();
        write_message(&mut w, self);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, CodecError> {
        let mut r = Reader::versioned(bytes)?;
        let m = read_message(&mut r)?;
        r.finish()?;
        Ok(m)
    }

    /// Like `decode`, but values share `bytes` instead of being copied.
    pub fn decode_shared(bytes: &bytes::Bytes) -> Result<Message, CodecError> {
        let mut r = Reader::versioned_shared(bytes)?;
        let m = read_message(&mut r)?;
        r.finish()?;
        Ok(m)
    }
}

fn write_entries(w: &mut Writer, entries: &[SlotEntry]) {
    w.seq(entries, |w, e| {
        w.u64(e.slot);
        w.command(&e.command);
    });
}

fn read_entries(r: &mut Reader<'_>) -> Result<Vec<SlotEntry>, CodecError> {
    r.seq(8 + MIN_COMMAND_BYTES, |r| {
        Ok(SlotEntry {
            slot: r.u64()?,
            command: r.command()?,
        })
    })
}

/// A client's request: tag 0 and the key for a read; a write is its log operation, whose
/// tags 1–4 are the client writes (a no-op, seal or leave-joint is no client's to send).
fn write_op(w: &mut Writer, op: &ClientOp) {
    match op {
        ClientOp::Get { key } => {
            w.u8(0);
            w.str(key);
        }
        ClientOp::Write(op) => w.command_op(op),
    }
}

fn read_op(r: &mut Reader<'_>) -> Result<ClientOp, CodecError> {
    Ok(match r.u8()? {
        0 => ClientOp::Get { key: r.string()? },
        tag @ 1..=4 => ClientOp::Write(r.command_op(tag)?),
        tag => {
            return Err(CodecError::UnknownTag {
                what: "client op",
                tag,
            });
        }
    })
}

fn write_message(w: &mut Writer, m: &Message) {
    match m {
        Message::Prepare {
            group,
            ballot,
            token,
            handoff_from,
            epoch,
        } => {
            w.u8(1);
            w.str(group);
            w.ballot(*ballot);
            w.u64(*token);
            w.bool(handoff_from.is_some());
            if let Some(b) = handoff_from {
                w.ballot(*b);
            }
            w.u64(*epoch);
        }
        Message::Promise {
            group,
            ballot,
            token,
            applied,
            accepted,
            sealed,
            page,
            pages,
        } => {
            w.u8(2);
            w.str(group);
            w.ballot(*ballot);
            w.u64(*token);
            w.u64(*applied);
            w.seq(accepted, |w, e| {
                w.u64(e.slot);
                w.ballot(e.ballot);
                w.command(&e.command);
            });
            w.u64(*sealed);
            w.u64(u64::from(*page));
            w.u64(u64::from(*pages));
        }
        Message::Accept {
            group,
            ballot,
            entries,
            epoch,
        } => {
            w.u8(3);
            w.str(group);
            w.ballot(*ballot);
            write_entries(w, entries);
            w.u64(*epoch);
        }
        Message::Accepted {
            group,
            ballot,
            slots,
            applied,
        } => {
            w.u8(4);
            w.str(group);
            w.ballot(*ballot);
            w.seq(slots, |w, s| w.u64(*s));
            w.u64(*applied);
        }
        Message::Reject {
            group,
            ballot,
            promised,
            epoch,
        } => {
            w.u8(5);
            w.str(group);
            w.ballot(*ballot);
            w.ballot(*promised);
            w.u64(*epoch);
        }
        Message::Commit {
            group,
            ballot,
            slots,
            entries,
        } => {
            w.u8(6);
            w.str(group);
            w.ballot(*ballot);
            w.seq(slots, |w, s| w.u64(*s));
            write_entries(w, entries);
        }
        Message::Heartbeat {
            group,
            ballot,
            applied,
        } => {
            w.u8(7);
            w.str(group);
            w.ballot(*ballot);
            w.u64(*applied);
        }
        Message::CatchUp { group, from, to } => {
            w.u8(8);
            w.str(group);
            w.u64(*from);
            w.u64(*to);
        }
        Message::CatchUpReply {
            group,
            entries,
            compacted,
        } => {
            w.u8(9);
            w.str(group);
            write_entries(w, entries);
            w.bool(compacted.is_some());
            w.u64(compacted.unwrap_or(0));
        }
        Message::LeaseRenew {
            group,
            ballot,
            token,
            epoch,
        } => {
            w.u8(10);
            w.str(group);
            w.ballot(*ballot);
            w.u64(*token);
            w.u64(*epoch);
        }
        Message::LeaseGrant {
            group,
            ballot,
            token,
        } => {
            w.u8(11);
            w.str(group);
            w.ballot(*ballot);
            w.u64(*token);
        }
        Message::Forward {
            group,
            id,
            floor,
            op,
        } => {
            w.u8(12);
            w.str(group);
            w.command_id(*id);
            w.u64(*floor);
            write_op(w, op);
        }
        Message::ForwardReply { group, id, outcome } => {
            w.u8(13);
            w.str(group);
            w.command_id(*id);
            match outcome {
                ForwardOutcome::Written => w.u8(0),
                ForwardOutcome::ReadIndex { slot } => {
                    w.u8(1);
                    w.u64(*slot);
                }
                ForwardOutcome::NotOwner { hint, ballot } => {
                    w.u8(2);
                    w.bool(hint.is_some());
                    w.u64(hint.unwrap_or(0));
                    w.ballot(*ballot);
                }
            }
        }
        Message::Handoff { group, from } => {
            w.u8(14);
            w.str(group);
            w.ballot(*from);
        }
    }
}

fn small(n: u64) -> Result<u32, CodecError> {
    u32::try_from(n).map_err(|_| CodecError::TooLong(n))
}

fn read_message(r: &mut Reader<'_>) -> Result<Message, CodecError> {
    let tag = r.u8()?;
    let group = r.string()?;
    Ok(match tag {
        1 => Message::Prepare {
            group,
            ballot: r.ballot()?,
            token: r.u64()?,
            handoff_from: if r.bool()? { Some(r.ballot()?) } else { None },
            epoch: r.u64()?,
        },
        2 => Message::Promise {
            group,
            ballot: r.ballot()?,
            token: r.u64()?,
            applied: r.u64()?,
            accepted: r.seq(24 + MIN_COMMAND_BYTES, |r| {
                Ok(AcceptedEntry {
                    slot: r.u64()?,
                    ballot: r.ballot()?,
                    command: r.command()?,
                })
            })?,
            sealed: r.u64()?,
            page: small(r.u64()?)?,
            pages: small(r.u64()?)?,
        },
        3 => Message::Accept {
            group,
            ballot: r.ballot()?,
            entries: read_entries(r)?,
            epoch: r.u64()?,
        },
        4 => Message::Accepted {
            group,
            ballot: r.ballot()?,
            slots: r.seq(8, |r| r.u64())?,
            applied: r.u64()?,
        },
        5 => Message::Reject {
            group,
            ballot: r.ballot()?,
            promised: r.ballot()?,
            epoch: r.u64()?,
        },
        6 => Message::Commit {
            group,
            ballot: r.ballot()?,
            slots: r.seq(8, |r| r.u64())?,
            entries: read_entries(r)?,
        },
        7 => Message::Heartbeat {
            group,
            ballot: r.ballot()?,
            applied: r.u64()?,
        },
        8 => Message::CatchUp {
            group,
            from: r.u64()?,
            to: r.u64()?,
        },
        9 => Message::CatchUpReply {
            group,
            entries: read_entries(r)?,
            compacted: {
                let some = r.bool()?;
                let slot = r.u64()?;
                some.then_some(slot)
            },
        },
        10 => Message::LeaseRenew {
            group,
            ballot: r.ballot()?,
            token: r.u64()?,
            epoch: r.u64()?,
        },
        11 => Message::LeaseGrant {
            group,
            ballot: r.ballot()?,
            token: r.u64()?,
        },
        12 => Message::Forward {
            group,
            id: r.command_id()?,
            floor: r.u64()?,
            op: read_op(r)?,
        },
        13 => {
            let id = r.command_id()?;
            let outcome = match r.u8()? {
                0 => ForwardOutcome::Written,
                1 => ForwardOutcome::ReadIndex { slot: r.u64()? },
                2 => {
                    let has = r.bool()?;
                    let node = r.u64()?;
                    ForwardOutcome::NotOwner {
                        hint: has.then_some(node),
                        ballot: r.ballot()?,
                    }
                }
                tag => {
                    return Err(CodecError::UnknownTag {
                        what: "outcome",
                        tag,
                    });
                }
            };
            Message::ForwardReply { group, id, outcome }
        }
        14 => Message::Handoff {
            group,
            from: r.ballot()?,
        },
        tag => {
            return Err(CodecError::UnknownTag {
                what: "message",
                tag,
            });
        }
    })
}

#[cfg(test)]
#[path = "message_tests.rs"]
pub(crate) mod tests;
