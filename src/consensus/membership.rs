//! Who is in the cluster, and in which zone. Membership is data: it changes only by applying
//! committed `AddNode`/`RemoveNode` commands of the `atlas` group (`atlas.nodes`).

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::{NodeId, Zone};

/// The group that holds the system table `atlas.nodes`.
pub const SYSTEM_GROUP: &str = "atlas";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    nodes: BTreeMap<NodeId, Zone>,
}

impl Membership {
    pub fn new(nodes: impl IntoIterator<Item = (NodeId, Zone)>) -> Membership {
        Membership {
            nodes: nodes.into_iter().collect(),
        }
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.nodes.contains_key(&node)
    }

    pub fn zone_of(&self, node: NodeId) -> Option<&Zone> {
        self.nodes.get(&node)
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes by zone, in zone-name order.
    pub fn zones(&self) -> BTreeMap<Zone, BTreeSet<NodeId>> {
        let mut zones: BTreeMap<Zone, BTreeSet<NodeId>> = BTreeMap::new();
        for (node, zone) in &self.nodes {
            zones.entry(zone.clone()).or_default().insert(*node);
        }
        zones
    }

    pub fn nodes_in(&self, zone: &str) -> impl Iterator<Item = NodeId> + '_ {
        let zone = zone.to_string();
        self.nodes
            .iter()
            .filter(move |(_, z)| **z == zone)
            .map(|(n, _)| *n)
    }

    /// Adds a node or moves it to another zone. Returns whether anything changed.
    pub fn add(&mut self, node: NodeId, zone: Zone) -> bool {
        self.nodes.insert(node, zone.clone()) != Some(zone)
    }

    /// Removes a node; the last node is never removed (a cluster of none cannot decide).
    pub fn remove(&mut self, node: NodeId) -> bool {
        if self.nodes.len() <= 1 {
            return false;
        }
        self.nodes.remove(&node).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_node_is_never_removed() {
        let mut m = Membership::new([(1, "a".to_string())]);
        assert!(!m.remove(1));
        assert!(m.add(2, "b".into()));
        assert!(m.remove(1));
        assert_eq!(m.nodes().collect::<Vec<_>>(), vec![2]);
    }
}
