//! Identifiers of the protocol: nodes, zones, slots, groups and ballots.

use std::fmt;

/// A node's id, unique in the cluster.
pub type NodeId = u64;

/// A position in a group's log. Slot 0 means "nothing": the first entry is slot 1.
pub type Slot = u64;

/// A zone (the configured `region`) a node lives in.
pub type Zone = String;

/// The unit of ownership: a table, or a named group of tables that move together.
pub type GroupId = String;

/// A ballot `(counter, node)`, ordered lexicographically; the node part breaks ties.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot {
    pub counter: u64,
    pub node: NodeId,
}

impl Ballot {
    /// The ballot no one holds: lower than every real one.
    pub const ZERO: Ballot = Ballot {
        counter: 0,
        node: 0,
    };

    pub fn new(counter: u64, node: NodeId) -> Ballot {
        Ballot { counter, node }
    }

    /// The smallest ballot of `node` that is higher than `seen`.
    pub fn next_after(seen: Ballot, node: NodeId) -> Ballot {
        Ballot {
            counter: seen.counter.saturating_add(1),
            node,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Ballot::ZERO
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.counter, self.node)
    }
}

/// Identifies a client command across retries: the node that took it from the client, and
/// that node's sequence number. Re-sending a command keeps its id, so the log applies it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CommandId {
    pub origin: NodeId,
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_counter_then_node() {
        assert!(Ballot::new(2, 1) > Ballot::new(1, 9));
        assert!(Ballot::new(2, 2) > Ballot::new(2, 1));
        assert!(Ballot::next_after(Ballot::new(5, 9), 1) > Ballot::new(5, 9));
        assert!(Ballot::ZERO < Ballot::new(0, 1));
    }
}
