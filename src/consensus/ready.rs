//! What a node hands back after each input (like raft-rs's `Ready`).
//!
//! The caller must, in this order:
//! 1. send `messages`: they may leave at once, while step 2 runs (an owner's accepts go
//!    out while its own accept is being made durable);
//! 2. write `persist` and `apply` as **one** atomic batch: the acceptor's votes, the
//!    committed entries applied to the state machine in order (skipping `duplicate`
//!    ones), each group's new state (applied slot, de-duplication window) and the
//!    accepted entries it no longer needs. The batch must be durable (synced)
//!    when [`Ready::needs_sync`] says so; otherwise it only has to be written, in order
//!    after every earlier batch (a later synced batch makes it durable too);
//! 3. then send `after_persist` (the votes: promises and acceptances), handing those
//!    addressed to this node back to it with `Node::step`;
//! 4. deliver `completions` (a `ReadNow` is answered from the state machine after step 2);
//! 5. fetch and install a snapshot for each of `snapshots`, then tell the node with
//!    `Node::snapshot_installed` (or `snapshot_failed`).
//!
//! `cluster::driver::process` is that loop, written once for production and the simulator.

use super::ballot::{Ballot, GroupId, NodeId, Slot};
use super::command::Command;
use super::log::GroupState;
use super::membership::Config;
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
    /// The group's state after this batch's applied entries (written with them).
    State { group: GroupId, state: GroupState },
    /// Accepted entries that are applied now: their records go (point deletes: a range
    /// delete per batch would fill the memtables with range tombstones).
    Forget { group: GroupId, slots: Vec<Slot> },
    /// The configuration after this batch's applied `atlas` entries.
    Config(Config),
}

impl PersistOp {
    /// Whether the op is a vote (its loss in a crash would break Paxos): it must be synced.
    pub fn is_vote(&self) -> bool {
        matches!(self, PersistOp::Promise { .. } | PersistOp::Accept { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: NodeId,
    pub message: Message,
}

/// A committed entry to apply. `duplicate` marks a command id already applied earlier in the
/// log (a retried request), or a stale one: the caller skips it.
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

/// A group this node is too far behind in to catch up entry by entry: fetch a snapshot of
/// its state machine from `from` (whose state is at `slot` or later) and install it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    pub group: GroupId,
    pub from: NodeId,
    pub slot: Slot,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ready {
    pub persist: Vec<PersistOp>,
    pub messages: Vec<Outgoing>,
    pub after_persist: Vec<Outgoing>,
    pub apply: Vec<Applied>,
    pub completions: Vec<Completion>,
    pub snapshots: Vec<SnapshotRequest>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.after_persist.is_empty()
            && self.apply.is_empty()
            && self.completions.is_empty()
            && self.snapshots.is_empty()
    }

    /// The batch must be synced: it holds votes, or votes leave after it (a promise or an
    /// acceptance reports the applied slot, which must then be durable too). Applied
    /// entries alone need not be: they are chosen, so a Q2 holds them durably already.
    pub fn needs_sync(&self) -> bool {
        !self.after_persist.is_empty() || self.persist.iter().any(PersistOp::is_vote)
    }
}
