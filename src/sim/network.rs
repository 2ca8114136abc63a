//! The simulated network and its faults: which links are cut, how long a message takes,
//! and when partitions and crashes happen.

use std::collections::BTreeSet;

use rand::Rng;

use super::world::{Event, Sim};
use crate::consensus::NodeId;

impl Sim {
    pub(super) fn plan_faults(&mut self, ids: &[NodeId]) {
        if let Some((at, node)) = self.config.down {
            self.schedule_at(at, Event::Crash(node));
        }
        let until = self.config.fault_until;
        if until == 0 {
            return;
        }
        for _ in 0..self.config.partitions {
            let start = self.rng.random_range(0..until);
            let (lo, hi) = self.config.partition_ms;
            let end = (start + self.rng.random_range(lo..hi.max(lo + 1))).min(until);
            self.schedule_at(start, Event::Partition);
            self.schedule_at(end, Event::Heal);
        }
        for _ in 0..self.config.crashes {
            let node = ids[self.rng.random_range(0..ids.len())];
            let start = self.rng.random_range(0..until);
            let end = (start + self.rng.random_range(50..2_000)).min(until);
            self.schedule_at(start, Event::Crash(node));
            self.schedule_at(end, Event::Restart(node));
        }
        self.schedule_at(until, Event::Heal);
    }

    pub(super) fn partition(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        if ids.len() < 2 {
            return;
        }
        match self.rng.random_range(0..3) {
            0 => {
                // Isolate one node both ways.
                let victim = ids[self.rng.random_range(0..ids.len())];
                for other in ids.iter().filter(|o| **o != victim) {
                    self.blocked.insert((victim, *other));
                    self.blocked.insert((*other, victim));
                }
            }
            1 => {
                // One-way: a node can send but hears nothing (or the reverse).
                let victim = ids[self.rng.random_range(0..ids.len())];
                let outbound = self.rng.random_bool(0.5);
                for other in ids.iter().filter(|o| **o != victim) {
                    if outbound {
                        self.blocked.insert((victim, *other));
                    } else {
                        self.blocked.insert((*other, victim));
                    }
                }
            }
            _ => {
                // Split the nodes in two random sides.
                let side: BTreeSet<NodeId> = ids
                    .iter()
                    .copied()
                    .filter(|_| self.rng.random_bool(0.5))
                    .collect();
                for a in &ids {
                    for b in &ids {
                        if side.contains(a) != side.contains(b) {
                            self.blocked.insert((*a, *b));
                        }
                    }
                }
            }
        }
    }

    pub(super) fn delay(&mut self, from: NodeId, to: NodeId) -> u64 {
        let zone = |id: NodeId| self.nodes.get(&id).map(|n| n.zone.clone());
        if from == to {
            return 0;
        }
        let (a, b) = (zone(from), zone(to));
        let slow = match self.config.slow {
            Some((node, ms)) if node == from || node == to => self.rng.random_range(0..=ms),
            _ => 0,
        };
        slow + if a == b {
            self.rng.random_range(1..4)
        } else {
            let base = 10
                + 7 * (a.as_deref().map_or(0, |z| z.len() as u64)
                    + b.as_deref().map_or(0, |z| z.len() as u64));
            base + self.rng.random_range(0..30)
        }
    }
}
