//! What clients ask for, and what the log holds.

use super::ballot::{CommandId, NodeId, Zone};

/// A client's request, as the cluster layer hands it to the node that received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Get {
        key: String,
    },
    Put {
        key: String,
        value: Vec<u8>,
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

    /// The log entry of a write; a read has none (it goes through a lease or a barrier).
    pub fn to_command(&self, id: CommandId) -> Command {
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
        Command { id, op }
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: CommandId,
    pub op: CommandOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOp {
    /// Fills a hole found in phase 1, or serves as a read barrier.
    Noop,
    Put {
        key: String,
        value: Vec<u8>,
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
    /// Ends the joint configuration a committed `AddNode`/`RemoveNode` entered: the new
    /// membership becomes the only one. Proposed by the owner of the `atlas` group.
    LeaveJoint,
    /// Proposed by an owner whose phase 1 ran under configuration `epoch` (not joint) with a
    /// Q1 of every earlier configuration, once what that phase 1 found is committed: from
    /// then on the group's chosen values are all known to that configuration's quorums, so
    /// later phase 1s need no Q1 of configurations that ended before `epoch`. A no-op for
    /// the state machine.
    Seal {
        epoch: u64,
    },
}

impl CommandOp {
    /// Whether a second copy of this entry (same command id) is skipped when applied: true
    /// for client commands; no-ops and seals carry no client's id.
    pub fn is_deduplicated(&self) -> bool {
        !matches!(self, CommandOp::Noop | CommandOp::Seal { .. })
    }

    /// Whether the entry changes the configuration when applied in the `atlas` group.
    pub fn is_config_change(&self) -> bool {
        matches!(
            self,
            CommandOp::AddNode { .. } | CommandOp::RemoveNode { .. } | CommandOp::LeaveJoint
        )
    }
}

impl Command {
    pub fn noop(id: CommandId) -> Command {
        Command {
            id,
            op: CommandOp::Noop,
        }
    }
}
