//! What a node hands back after each input (like raft-rs's `Ready`).
//!
//! The caller must, in this order:
//! 1. make every `persist` write durable (one batch, synced);
//! 2. send `messages` (none of them may leave before step 1);
//! 3. apply `apply` to the state machine, in order, skipping `duplicate` entries, and record
//!    the group's applied slot with the data;
//! 4. deliver `completions` (a `ReadNow` is answered from the state machine after step 3).

use super::ballot::{Ballot, GroupId, NodeId, Slot};
use super::command::Command;
use super::message::Message;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistOp {
    /// The acceptor's promise for a group.
    Promise { group: GroupId, ballot: Ballot },
    /// An accepted entry.
    Accept {
        group: GroupId,
        slot: Slot,
        ballot: Ballot,
        command: Command,
    },
    /// A committed entry of the log.
    Commit {
        group: GroupId,
        slot: Slot,
        command: Command,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub message: Message,
}

/// A committed entry to apply. `duplicate` marks a command id already applied earlier in the
/// log (a retried request): the caller skips it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub group: GroupId,
    pub slot: Slot,
    pub command: Command,
    pub duplicate: bool,
}

/// The caller's id of a client request.
pub type RequestId = u64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The write is committed and applied.
    Written,
    /// Read the key from the local state machine now (after applying this batch).
    ReadNow { key: String },
    /// No answer in time: the write may or may not have happened.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub request: RequestId,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    pub persist: Vec<PersistOp>,
    pub messages: Vec<Outgoing>,
    pub apply: Vec<Applied>,
    pub completions: Vec<Completion>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.apply.is_empty()
            && self.completions.is_empty()
    }
}
