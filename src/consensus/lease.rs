//! The owner's view of its lease.
//!
//! Each grant is stamped with the owner's own clock at the moment it *sent* the request
//! (prepare or renewal), so it undercounts: the acceptor started its lease later. The lease
//! holds until the latest stamp `t` such that the grants stamped at or after `t` form a Q2,
//! plus the lease length, minus the drift margin. A Q2 of grants is required (not only a Q1)
//! because a Q2 meets every Q1: no other proposer can gather its promises in time, even with
//! tolerances where two Q1s need not intersect (e.g. `fn = 0`). While a membership change is
//! joint, the grants must form a Q2 of both configurations.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::NodeId;
use super::quorum::JointQuorums;

#[derive(Debug, Clone, Default)]
pub struct LeaseGrants {
    stamps: BTreeMap<NodeId, u64>,
}

impl LeaseGrants {
    pub fn grant(&mut self, from: NodeId, stamp: u64) {
        let entry = self.stamps.entry(from).or_insert(stamp);
        *entry = (*entry).max(stamp);
    }

    /// The owner-clock instant the lease ends, if grants form a Q2.
    pub fn valid_until(
        &self,
        quorums: &JointQuorums,
        lease_ms: u64,
        margin_ms: u64,
    ) -> Option<u64> {
        let mut stamps: Vec<u64> = self.stamps.values().copied().collect();
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        stamps.dedup();
        for t in stamps {
            let set: BTreeSet<NodeId> = self
                .stamps
                .iter()
                .filter(|(_, s)| **s >= t)
                .map(|(n, _)| *n)
                .collect();
            if quorums.is_q2(&set) {
                return Some(t.saturating_add(lease_ms).saturating_sub(margin_ms));
            }
        }
        None
    }

    pub fn is_valid(
        &self,
        quorums: &JointQuorums,
        lease_ms: u64,
        margin_ms: u64,
        now: u64,
    ) -> bool {
        self.valid_until(quorums, lease_ms, margin_ms)
            .is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::membership::Membership;
    use crate::consensus::quorum::{QuorumSystem, Tolerances};

    #[test]
    fn lease_needs_a_q2_of_recent_grants() {
        let m = Membership::new((1..=3).map(|n| (n, "z".to_string())));
        let q = JointQuorums::single(QuorumSystem::new(&m, Tolerances { nodes: 1, zones: 0 }));
        let mut g = LeaseGrants::default();
        g.grant(1, 100);
        assert_eq!(g.valid_until(&q, 1000, 50), None);
        g.grant(2, 40);
        assert_eq!(g.valid_until(&q, 1000, 50), Some(990));
        g.grant(3, 200);
        // {1,3} granted at >= 100.
        assert_eq!(g.valid_until(&q, 1000, 50), Some(1050));
        assert!(g.is_valid(&q, 1000, 50, 1049) && !g.is_valid(&q, 1000, 50, 1050));
        // While joint with a fourth node in another zone (fn reduces to 0 there), {1,3} is
        // no longer enough: the new configuration's Q2 is all of a zone.
        let mut m2 = m.clone();
        m2.add(4, "y".into());
        let joint = JointQuorums {
            current: q.current.clone(),
            next: Some(QuorumSystem::new(&m2, Tolerances { nodes: 1, zones: 0 })),
            past: Vec::new(),
        };
        assert_eq!(g.valid_until(&joint, 1000, 50), Some(990));
        g.grant(4, 150);
        assert_eq!(g.valid_until(&joint, 1000, 50), Some(1050));
    }
}
