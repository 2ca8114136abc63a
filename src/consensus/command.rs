//! What clients ask for, and what the log holds.
//!
//! Values are `Bytes`: a log entry is cloned into the acceptor, the pipeline, the commit
//! broadcast and the apply list, and a blob may be 128 MiB, so clones share the bytes.

use bytes::Bytes;

use super::ballot::{CommandId, NodeId, Zone};

/// A client's request, as the cluster layer hands it to the node that received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Bytes,
    },
    Delete {
        key: String,
    },
    /// Changes of the system table `atlas.nodes` (the `atlas` group).
    AddNode {
        node: NodeId,
        zone: Zone,
    },
    RemoveNode {
        node: NodeId,
    },
}

impl ClientOp {
    /// The table the request belongs to: the first key segment, or `atlas` for membership.
    pub fn table(&self) -> &str {
        match self {
            ClientOp::Get { key } | ClientOp::Put { key, .. } | ClientOp::Delete { key } => {
                key.split('.').next().unwrap_or(key)
            }
            ClientOp::AddNode { .. } | ClientOp::RemoveNode { .. } => {
                super::membership::SYSTEM_GROUP
            }
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, ClientOp::Get { .. })
    }

    /// Bytes the request holds (what it costs to keep it in memory or send it).
    pub fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                ClientOp::Get { key } | ClientOp::Delete { key } => key.len(),
                ClientOp::Put { key, value } => key.len() + value.len(),
                ClientOp::AddNode { zone, .. } => zone.len(),
                ClientOp::RemoveNode { .. } => 0,
            }
    }

    /// The log entry of a write; a read has none (it goes through a lease or a barrier).
    /// `floor` is the origin's promise that every command id of its below it is finished
    /// (see [`super::dedup`]).
    pub fn to_command(&self, id: CommandId, floor: u64) -> Command {
        let op = match self {
            ClientOp::Get { .. } => CommandOp::Noop,
            ClientOp::Put { key, value } => CommandOp::Put {
                key: key.clone(),
                value: value.clone(),
            },
            ClientOp::Delete { key } => CommandOp::Delete { key: key.clone() },
            ClientOp::AddNode { node, zone } => CommandOp::AddNode {
                node: *node,
                zone: zone.clone(),
            },
            ClientOp::RemoveNode { node } => CommandOp::RemoveNode { node: *node },
        };
        Command { id, floor, op }
    }
}

/// Fixed cost counted for every entry on top of its key and value (ids, tags, lengths).
pub const ENTRY_OVERHEAD: usize = 64;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: CommandId,
    /// Every command of `id.origin` with a lower sequence number is finished at the origin
    /// (answered, or given up): a copy of one that arrives later is stale.
    pub floor: u64,
    pub op: CommandOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOp {
    /// Fills a hole found in phase 1, or serves as a read barrier.
    Noop,
    Put {
        key: String,
        value: Bytes,
    },
    Delete {
        key: String,
    },
    AddNode {
        node: NodeId,
        zone: Zone,
    },
    RemoveNode {
        node: NodeId,
    },
    /// Ends the joint configuration of epoch `epoch` (entered by a committed
    /// `AddNode`/`RemoveNode`): the new membership becomes the only one. Proposed by the
    /// owner of the `atlas` group; a copy that names another epoch changes nothing, so a
    /// retried one can never end a later change's joint configuration.
    LeaveJoint {
        epoch: u64,
    },
    /// Proposed by an owner whose phase 1 ran under configuration `epoch` (not joint) with a
    /// Q1 of every earlier configuration, once a Q2 of `epoch` has applied everything that
    /// phase 1 found: from then on the group's chosen values are all known to that
    /// configuration's quorums, so later phase 1s need no Q1 of configurations that ended
    /// before `epoch`. A no-op for the state machine.
    Seal {
        epoch: u64,
    },
}

impl CommandOp {
    /// Whether a second copy of this entry (same command id) is skipped when applied: true
    /// for client commands; no-ops, seals and `LeaveJoint` carry no client's id.
    pub fn is_deduplicated(&self) -> bool {
        !matches!(
            self,
            CommandOp::Noop | CommandOp::Seal { .. } | CommandOp::LeaveJoint { .. }
        )
    }

    /// Whether the entry changes the configuration when applied in the `atlas` group.
    pub fn is_config_change(&self) -> bool {
        matches!(
            self,
            CommandOp::AddNode { .. } | CommandOp::RemoveNode { .. } | CommandOp::LeaveJoint { .. }
        )
    }
}

impl Command {
    pub fn noop(id: CommandId) -> Command {
        Command {
            id,
            floor: 0,
            op: CommandOp::Noop,
        }
    }

    /// Bytes the entry holds (memory and wire budgets count entries with this).
    pub fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match &self.op {
                CommandOp::Put { key, value } => key.len() + value.len(),
                CommandOp::Delete { key } => key.len(),
                CommandOp::AddNode { zone, .. } => zone.len(),
                CommandOp::Noop
                | CommandOp::RemoveNode { .. }
                | CommandOp::LeaveJoint { .. }
                | CommandOp::Seal { .. } => 0,
            }
    }
}
