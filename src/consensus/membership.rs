//! Who is in the cluster, and in which zone. Membership is data: it changes only by applying
//! committed commands of the `atlas` group (`atlas.nodes`), through a joint configuration:
//! `AddNode`/`RemoveNode` enters the joint configuration (old and new), `LeaveJoint` makes the
//! new one the only one. [`Config`] is that state machine; every replica folds the same log
//! into the same sequence of configurations, numbered by `epoch`.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::{NodeId, Zone};
use super::command::CommandOp;

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

/// The configuration in force: one membership, or two while a change is under way (joint).
/// `epoch` counts the transitions applied (entering and leaving a joint configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub epoch: u64,
    pub current: Membership,
    /// While joint: the membership being moved to. Quorums must then be quorums of both.
    pub next: Option<Membership>,
    /// Every membership that was in force before `current` (the bootstrap one first, no
    /// repeats, none equal to `current`), with the last epoch it was in force. Phase 1 of a
    /// group needs a Q1 of each of them that was in force at or after the group's seal epoch
    /// too: a change copies no group's state to the new members, so a value chosen under an
    /// old membership is held only by that membership's Q2 (accepted or applied) until the
    /// group is sealed under a later one (see `CommandOp::Seal` and `docs/consensus.md`).
    pub past: Vec<(Membership, u64)>,
}

impl Config {
    pub fn new(membership: Membership) -> Config {
        Config {
            epoch: 0,
            current: membership,
            next: None,
            past: Vec::new(),
        }
    }

    pub fn is_joint(&self) -> bool {
        self.next.is_some()
    }

    /// Every node of either configuration (who gets broadcasts, and whose zone is known).
    pub fn members(&self) -> Membership {
        let mut all = self.current.clone();
        if let Some(next) = &self.next {
            for (node, zone) in &next.nodes {
                all.nodes.insert(*node, zone.clone());
            }
        }
        all
    }

    /// Folds one applied command of the `atlas` group. A change that would alter the
    /// membership enters the joint configuration; `LeaveJoint` of that joint epoch ends it. A
    /// change applied while joint (the owner never proposes one, see `proposer.rs`), a
    /// `LeaveJoint` of another epoch and a change that alters nothing are ignored, the same
    /// way at every replica. Returns whether the configuration changed.
    pub fn apply(&mut self, op: &CommandOp) -> bool {
        match op {
            CommandOp::AddNode { node, zone } if self.next.is_none() => {
                let mut next = self.current.clone();
                if next.add(*node, zone.clone()) {
                    self.next = Some(next);
                    self.epoch += 1;
                    return true;
                }
                false
            }
            CommandOp::RemoveNode { node } if self.next.is_none() => {
                let mut next = self.current.clone();
                if next.remove(*node) {
                    self.next = Some(next);
                    self.epoch += 1;
                    return true;
                }
                false
            }
            CommandOp::LeaveJoint { epoch } if *epoch == self.epoch => match self.next.take() {
                Some(next) => {
                    let old = std::mem::replace(&mut self.current, next);
                    // `old` was in force through this (joint) epoch.
                    let last = self.epoch;
                    match self.past.iter_mut().find(|(m, _)| *m == old) {
                        Some(entry) => entry.1 = entry.1.max(last),
                        None => self.past.push((old, last)),
                    }
                    let current = &self.current;
                    self.past.retain(|(m, _)| m != current);
                    self.epoch += 1;
                    true
                }
                None => false,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_go_through_a_joint_configuration_one_at_a_time() {
        let mut c = Config::new(Membership::new([(1, "a".to_string())]));
        let add = |n: NodeId| CommandOp::AddNode {
            node: n,
            zone: "b".into(),
        };
        assert!(c.apply(&add(2)));
        assert!(c.is_joint() && c.epoch == 1);
        assert_eq!(c.members().len(), 2);
        // A second change while joint is ignored; so is a change that alters nothing, and a
        // `LeaveJoint` of another epoch.
        assert!(!c.apply(&add(3)));
        assert!(!c.apply(&CommandOp::LeaveJoint { epoch: 0 }));
        assert!(c.apply(&CommandOp::LeaveJoint { epoch: 1 }));
        assert!(!c.is_joint() && c.epoch == 2 && c.current.len() == 2);
        assert!(!c.apply(&add(2)));
        assert!(!c.apply(&CommandOp::LeaveJoint { epoch: 2 }));
        assert!(c.apply(&CommandOp::RemoveNode { node: 1 }));
        // A retried copy of the first change's LeaveJoint cannot end this one.
        assert!(!c.apply(&CommandOp::LeaveJoint { epoch: 1 }));
        assert!(c.apply(&CommandOp::LeaveJoint { epoch: 3 }));
        assert_eq!(c.current.nodes().collect::<Vec<_>>(), vec![2]);
        assert_eq!(c.epoch, 4);
        // Every earlier membership is kept for phase 1, not only the last one.
        assert_eq!(c.past.len(), 2);
        assert!(c.past[0].0.contains(1) && !c.past[0].0.contains(2));
        assert!(c.past[1].0.contains(1) && c.past[1].0.contains(2));
        // Each remembers the last epoch it was in force (the joint epoch that left it).
        assert_eq!((c.past[0].1, c.past[1].1), (1, 3));
        // Going back to an earlier membership does not keep it twice.
        assert!(c.apply(&CommandOp::AddNode {
            node: 1,
            zone: "a".into()
        }));
        assert_eq!(c.past.len(), 2, "still listed while joint");
        assert!(c.apply(&CommandOp::LeaveJoint { epoch: 5 }));
        assert_eq!(c.past.len(), 2);
        assert!(c.past.iter().all(|(m, _)| *m != c.current));
    }

    #[test]
    fn last_node_is_never_removed() {
        let mut m = Membership::new([(1, "a".to_string())]);
        assert!(!m.remove(1));
        assert!(m.add(2, "b".into()));
        assert!(m.remove(1));
        assert_eq!(m.nodes().collect::<Vec<_>>(), vec![2]);
    }
}
