//! What clients ask for, and what the log holds.
//!
//! Values are `Bytes`: a log entry is cloned into the acceptor, the pipeline, the commit
//! broadcast and the apply list, and a blob may be 128 MiB, so clones share the bytes.

use bytes::Bytes;

use super::ballot::{CommandId, NodeId, Zone};

/// A client's request, as the cluster layer hands it to the node that received it: a read,
/// or the operation a write puts in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Get {
        key: String,
    },
    /// A client's write: `Put`, `Delete`, or a membership change (`AddNode`/`RemoveNode` of
    /// the `atlas` group). Never `Noop`, `Seal` or `LeaveJoint`: only owners propose those.
    Write(CommandOp),
}

impl ClientOp {
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> ClientOp {
        ClientOp::Write(CommandOp::Put {
            key: key.into(),
            value: value.into(),
        })
    }

    pub fn delete(key: impl Into<String>) -> ClientOp {
        ClientOp::Write(CommandOp::Delete { key: key.into() })
    }

    pub fn add_node(node: NodeId, zone: impl Into<Zone>) -> ClientOp {
        ClientOp::Write(CommandOp::AddNode {
            node,
            zone: zone.into(),
        })
    }

    pub fn remove_node(node: NodeId) -> ClientOp {
        ClientOp::Write(CommandOp::RemoveNode { node })
    }

    /// The table the request belongs to: the first key segment, or `atlas` for membership.
    pub fn table(&self) -> &str {
        match self {
            ClientOp::Get { key } => table_of(key),
            ClientOp::Write(op) => op.table(),
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, ClientOp::Get { .. })
    }

    /// Bytes the request holds (what it costs to keep it in memory or send it).
    pub fn size(&self) -> usize {
        match self {
            ClientOp::Get { key } => ENTRY_OVERHEAD + key.len(),
            ClientOp::Write(op) => op.size(),
        }
    }

    /// The log entry of a write; a read has none (it goes through a lease or a barrier).
    /// `floor` is the origin's promise that every command id of its below it is finished
    /// (see [`super::dedup`]).
    pub fn to_command(&self, id: CommandId, floor: u64) -> Command {
        let op = match self {
            ClientOp::Get { .. } => CommandOp::Noop,
            ClientOp::Write(op) => op.clone(),
        };
        Command { id, floor, op }
    }
}

fn table_of(key: &str) -> &str {
    key.split('.').next().unwrap_or(key)
}

/// Splits `items` into runs of about `max_bytes` by `size`, in order; an item larger than
/// that goes alone. No run is empty (none at all for no items).
pub fn split_by_bytes<T>(
    items: Vec<T>,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        match out.last_mut() {
            Some(run) if bytes + n <= max_bytes => run.push(item),
            _ => {
                bytes = 0;
                out.push(vec![item]);
            }
        }
        bytes += n;
    }
    out
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
    /// The table the entry belongs to: the first key segment, or `atlas` for membership
    /// changes and the entries only owners propose.
    pub fn table(&self) -> &str {
        match self {
            CommandOp::Put { key, .. } | CommandOp::Delete { key } => table_of(key),
            _ => super::membership::SYSTEM_GROUP,
        }
    }

    /// Bytes the entry holds (memory and wire budgets count entries with this).
    pub fn size(&self) -> usize {
        ENTRY_OVERHEAD
            + match self {
                CommandOp::Put { key, value } => key.len() + value.len(),
                CommandOp::Delete { key } => key.len(),
                CommandOp::AddNode { zone, .. } => zone.len(),
                CommandOp::Noop
                | CommandOp::RemoveNode { .. }
                | CommandOp::LeaveJoint { .. }
                | CommandOp::Seal { .. } => 0,
            }
    }

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
        self.op.size()
    }
}
