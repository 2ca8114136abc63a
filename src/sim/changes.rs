//! What a run asks of the cluster besides client requests: membership changes (a fresh
//! node started and added, a member removed) and planned placement changes (moves, pins).

use rand::Rng;

use super::config::Change;
use super::world::{Event, Sim, SimNode};
use crate::consensus::{ClientOp, NodeId};

impl Sim {
    pub(super) fn change(&mut self, i: usize) {
        let Some((_, change)) = self.config.changes.get(i).cloned() else {
            return;
        };
        let op = match change {
            Change::Add { node, zone } => {
                let zone = format!("z{zone}");
                if !self.nodes.contains_key(&node) {
                    let fresh = SimNode::new(zone.clone(), &mut self.rng, self.config.drift_ppm);
                    self.nodes.insert(node, fresh);
                    self.start_node(node);
                    self.schedule(1, Event::Tick(node));
                }
                ClientOp::add_node(node, zone)
            }
            Change::Remove { node } => ClientOp::remove_node(node),
        };
        // Submitted at a running member (as a join is admitted by one): a node that is not
        // one yet is not heard by the others.
        let live: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| {
                n.node
                    .as_ref()
                    .is_some_and(|n| n.membership().contains(**id))
            })
            .map(|(id, _)| *id)
            .collect();
        if live.is_empty() {
            return;
        }
        let at = live[self.rng.random_range(0..live.len())];
        if self.trace {
            eprintln!("{:>6} membership change at node {at}: {op:?}", self.now);
        }
        self.request(at, op);
    }

    /// A planned move or pin: the owner hands the group to a running member of the zone (a
    /// pin also marks it pinned at every running node, as its applied record would).
    pub(super) fn place(&mut self, i: usize) {
        let Some((_, placement)) = self.config.placements.get(i).cloned() else {
            return;
        };
        let zone = format!("z{}", placement.zone);
        if placement.pin {
            for n in self.nodes.values_mut().filter_map(|n| n.node.as_mut()) {
                n.set_pinned(&placement.group, true);
            }
        }
        let Some(owner) = self.owner_of(&placement.group) else {
            return;
        };
        let targets: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| n.zone == zone && n.node.is_some() && **id != owner)
            .map(|(id, _)| *id)
            .collect();
        if targets.is_empty() || self.zone_of(owner).as_deref() == Some(zone.as_str()) {
            return;
        }
        let target = targets[self.rng.random_range(0..targets.len())];
        let now = self.local_time(owner);
        if self.trace {
            eprintln!(
                "{:>6} placement: {} from {owner} to {target}",
                self.now, placement.group
            );
        }
        if self
            .node_mut(owner)
            .is_some_and(|node| node.hand_off(now, &placement.group, target))
        {
            self.report.handoffs += 1;
        }
        self.drain(owner);
    }
}
