//! WPaxos grid quorums.
//!
//! Q1 (phase 1) = `fn+1` nodes in each of `Z-fz` zones; Q2 (phase 2) = `l_z-fn` nodes in each
//! of `fz+1` zones (the owner's nearest when targeting). Any Q1 meets any Q2: they share a zone
//! because `(Z-fz)+(fz+1) > Z`, and in that zone `(fn+1)+(l_z-fn) > l_z`.
//!
//! The predicates are safe for any tolerances (a zone's Q2 share is at least one node, and a
//! zone smaller than `fn+1` cannot be part of a Q1). Tolerances only decide whether quorums can
//! still be formed after failures, so a cluster too small for the configured ones uses the
//! largest feasible pair, reducing `fz` first and then `fn`; the search is two bounded loops.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::{NodeId, Zone};
use super::membership::Membership;

/// Failures to tolerate: `nodes` per zone (`fn`) and whole `zones` (`fz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tolerances {
    pub nodes: usize,
    pub zones: usize,
}

/// The quorums of one membership.
#[derive(Debug, Clone)]
pub struct QuorumSystem {
    zones: BTreeMap<Zone, BTreeSet<NodeId>>,
    configured: Tolerances,
    effective: Tolerances,
}

impl QuorumSystem {
    pub fn new(membership: &Membership, configured: Tolerances) -> QuorumSystem {
        let zones = membership.zones();
        let effective = effective_tolerances(&zones, configured);
        QuorumSystem {
            zones,
            configured,
            effective,
        }
    }

    pub fn effective(&self) -> Tolerances {
        self.effective
    }

    /// True when the cluster is too small for the configured tolerances (report it).
    pub fn is_reduced(&self) -> bool {
        self.effective != self.configured
    }

    fn zones_with(&self, set: &BTreeSet<NodeId>, need: impl Fn(usize) -> usize) -> usize {
        self.zones
            .values()
            .filter(|members| {
                let need = need(members.len());
                need <= members.len() && members.intersection(set).count() >= need
            })
            .count()
    }

    /// `fn+1` nodes in each of `Z-fz` zones.
    pub fn is_q1(&self, set: &BTreeSet<NodeId>) -> bool {
        if self.zones.is_empty() {
            return false;
        }
        let Tolerances { nodes, zones } = self.effective;
        let needed_zones = self.zones.len().saturating_sub(zones).max(1);
        self.zones_with(set, |_| nodes + 1) >= needed_zones
    }

    /// `l_z-fn` (at least one) nodes in each of `fz+1` zones.
    pub fn is_q2(&self, set: &BTreeSet<NodeId>) -> bool {
        if self.zones.is_empty() {
            return false;
        }
        let Tolerances { nodes, zones } = self.effective;
        self.zones_with(set, |size| size.saturating_sub(nodes).max(1)) > zones
    }

    /// Every zone, nearest the owner first: its own zone, then by RTT (ties by name).
    fn zones_by_distance(&self, owner_zone: &str, zone_rtt: &BTreeMap<Zone, u64>) -> Vec<&Zone> {
        let mut zones: Vec<&Zone> = self.zones.keys().collect();
        zones.sort_by_key(|z| {
            let own = z.as_str() != owner_zone;
            (
                own,
                zone_rtt.get(*z).copied().unwrap_or(u64::MAX),
                (*z).clone(),
            )
        });
        zones
    }

    /// The `fz+1` zones a Q2 is asked from: the owner's zone first, then by RTT (ties by name).
    pub fn q2_zones(&self, owner_zone: &str, zone_rtt: &BTreeMap<Zone, u64>) -> Vec<Zone> {
        self.zones_by_distance(owner_zone, zone_rtt)
            .into_iter()
            .take(self.effective.zones + 1)
            .cloned()
            .collect()
    }

    /// One phase-1 and one phase-2 quorum for an owner in `owner_zone`, as reports show
    /// them: Q1 is `fn+1` nodes of each of the `Z-fz` zones nearest the owner, Q2 is
    /// `l_z-fn` (at least one) nodes of each of the `fz+1` zones of [`Self::q2_zones`]; in
    /// each zone the nodes come in the order of `rank` (lowest first).
    pub fn choose<K: Ord>(
        &self,
        owner_zone: &str,
        zone_rtt: &BTreeMap<Zone, u64>,
        rank: impl Fn(NodeId) -> K,
    ) -> (Vec<NodeId>, Vec<NodeId>) {
        let Tolerances { nodes, zones } = self.effective;
        let ordered = self.zones_by_distance(owner_zone, zone_rtt);
        let pick = |zone: &Zone, need: usize| -> Vec<NodeId> {
            let mut members: Vec<NodeId> = self.zones[zone].iter().copied().collect();
            members.sort_by_key(|n| rank(*n));
            members.truncate(need);
            members
        };
        let q1_zones = self.zones.len().saturating_sub(zones).max(1);
        let q1 = ordered
            .iter()
            .take(q1_zones)
            .flat_map(|z| pick(z, nodes + 1))
            .collect();
        let q2 = ordered
            .iter()
            .take(zones + 1)
            .flat_map(|z| pick(z, self.zones[*z].len().saturating_sub(nodes).max(1)))
            .collect();
        (q1, q2)
    }

    /// All members of the zones a Q2 is asked from.
    pub fn q2_targets(&self, owner_zone: &str, zone_rtt: &BTreeMap<Zone, u64>) -> Vec<NodeId> {
        self.q2_zones(owner_zone, zone_rtt)
            .iter()
            .filter_map(|z| self.zones.get(z))
            .flat_map(|members| members.iter().copied())
            .collect()
    }
}

/// The quorums of the configuration in force: one quorum system, or two while a membership
/// change is joint. While joint, a phase-1 set must be a Q1 of both configurations and a
/// phase-2 (or lease) set a Q2 of both, so it meets every quorum of either.
#[derive(Debug, Clone)]
pub struct JointQuorums {
    pub current: QuorumSystem,
    pub next: Option<QuorumSystem>,
    /// Every configuration in force before `current` (`Config::past`), with the last epoch
    /// it was in force: phase 1 needs a Q1 of each of them as well, unless the group was
    /// sealed after it ended.
    pub past: Vec<(QuorumSystem, u64)>,
}

impl JointQuorums {
    pub fn single(current: QuorumSystem) -> JointQuorums {
        JointQuorums {
            current,
            next: None,
            past: Vec::new(),
        }
    }

    pub fn is_joint(&self) -> bool {
        self.next.is_some()
    }

    /// Phase 1: a Q1 of every configuration a value may have been chosen under (the current
    /// one, the next while joint, and every earlier one: a membership change copies no
    /// group's state to new members, so only the Q2 that chose a value holds it).
    pub fn is_q1(&self, set: &BTreeSet<NodeId>) -> bool {
        self.is_q1_sealed(set, 0)
    }

    /// Phase 1 of a group sealed at epoch `sealed`: configurations that ended before it
    /// hold nothing the sealed configuration's quorums do not.
    pub fn is_q1_sealed(&self, set: &BTreeSet<NodeId>, sealed: u64) -> bool {
        self.current.is_q1(set)
            && self.next.as_ref().is_none_or(|n| n.is_q1(set))
            && self
                .past
                .iter()
                .filter(|(_, last)| *last >= sealed)
                .all(|(p, _)| p.is_q1(set))
    }

    pub fn is_q2(&self, set: &BTreeSet<NodeId>) -> bool {
        self.current.is_q2(set) && self.next.as_ref().is_none_or(|n| n.is_q2(set))
    }

    /// A Q1 of the configuration being left (used to fence it when leaving a joint one).
    pub fn is_q1_of_current(&self, set: &BTreeSet<NodeId>) -> bool {
        self.current.is_q1(set)
    }

    /// Where accepts go: the Q2 targets of each configuration (union, in order, no repeats).
    pub fn q2_targets(&self, owner_zone: &str, zone_rtt: &BTreeMap<Zone, u64>) -> Vec<NodeId> {
        let mut targets = self.current.q2_targets(owner_zone, zone_rtt);
        if let Some(next) = &self.next {
            for n in next.q2_targets(owner_zone, zone_rtt) {
                if !targets.contains(&n) {
                    targets.push(n);
                }
            }
        }
        targets
    }
}

/// Whether a quorum of each kind can still be formed with `t` failures.
fn feasible(zones: &BTreeMap<Zone, BTreeSet<NodeId>>, t: Tolerances) -> bool {
    // Any fz zones may fail, so every zone must keep fn+1 nodes after fn failures, and the
    // Z-fz zones left must still hold fz+1 zones for a Q2.
    let z = zones.len();
    z > 2 * t.zones && zones.values().all(|m| m.len() > 2 * t.nodes)
}

/// The largest feasible tolerances not above `configured`: `fz` is reduced first, then `fn`.
pub fn effective_tolerances(
    zones: &BTreeMap<Zone, BTreeSet<NodeId>>,
    configured: Tolerances,
) -> Tolerances {
    for nodes in (0..=configured.nodes).rev() {
        for z in (0..=configured.zones).rev() {
            let t = Tolerances { nodes, zones: z };
            if feasible(zones, t) {
                return t;
            }
        }
    }
    Tolerances::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grid(sizes: &[usize]) -> Membership {
        let mut id = 0;
        let mut nodes = Vec::new();
        for (z, size) in sizes.iter().enumerate() {
            for _ in 0..*size {
                id += 1;
                nodes.push((id, format!("z{z}")));
            }
        }
        Membership::new(nodes)
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn three_by_three_fn1_fz0() {
        // Zones z0={1,2,3}, z1={4,5,6}, z2={7,8,9}.
        let q = QuorumSystem::new(&grid(&[3, 3, 3]), Tolerances { nodes: 1, zones: 0 });
        assert!(!q.is_reduced());
        assert!(q.is_q1(&set(&[1, 2, 4, 5, 7, 8])));
        assert!(!q.is_q1(&set(&[1, 2, 4, 5, 7])));
        assert!(q.is_q2(&set(&[1, 2])));
        assert!(!q.is_q2(&set(&[1, 4])));
        assert_eq!(q.q2_zones("z1", &BTreeMap::new()), vec!["z1".to_string()]);
    }

    #[test]
    fn three_by_three_fn1_fz1() {
        let q = QuorumSystem::new(&grid(&[3, 3, 3]), Tolerances { nodes: 1, zones: 1 });
        assert!(q.is_q1(&set(&[1, 2, 4, 5])));
        assert!(!q.is_q1(&set(&[1, 2, 4])));
        assert!(q.is_q2(&set(&[4, 5, 7, 8])));
        assert!(!q.is_q2(&set(&[4, 5])));
        let rtt = BTreeMap::from([("z0".to_string(), 80), ("z2".to_string(), 20)]);
        assert_eq!(
            q.q2_zones("z1", &rtt),
            vec!["z1".to_string(), "z2".to_string()]
        );
    }

    #[test]
    fn one_node_is_its_own_quorum() {
        let q = QuorumSystem::new(&grid(&[1]), Tolerances { nodes: 2, zones: 2 });
        assert_eq!(q.effective(), Tolerances::default());
        assert!(q.is_reduced());
        assert!(q.is_q1(&set(&[1])) && q.is_q2(&set(&[1])));
        assert!(!q.is_q1(&set(&[])) && !q.is_q2(&set(&[])));
    }

    #[test]
    fn small_clusters_reduce_fz_before_fn() {
        // One zone of three: fz must drop to 0; fn=1 stays (majorities of 2).
        let q = QuorumSystem::new(&grid(&[3]), Tolerances { nodes: 1, zones: 1 });
        assert_eq!(q.effective(), Tolerances { nodes: 1, zones: 0 });
        // Three zones of one: fn drops to 0, fz=1 stays: majorities of zones.
        let q = QuorumSystem::new(&grid(&[1, 1, 1]), Tolerances { nodes: 1, zones: 1 });
        assert_eq!(q.effective(), Tolerances { nodes: 0, zones: 1 });
        assert!(q.is_q1(&set(&[1, 3])) && q.is_q2(&set(&[2, 3])));
        // Nothing at all terminates too.
        let q = QuorumSystem::new(&Membership::default(), Tolerances { nodes: 5, zones: 5 });
        assert!(!q.is_q1(&set(&[1])));
    }

    #[test]
    fn joint_quorums_need_both_configurations() {
        // Old: one zone {1,2,3}; new: the same plus a zone {4} of one node. With fn=1 the new
        // configuration reduces to fn=0 (a zone of one), so {1,4} is a Q1 of the new
        // configuration (one node in each zone) but not of the old one (two of {1,2,3}).
        let old = grid(&[3]);
        let mut new = old.clone();
        new.add(4, "z9".into());
        let t = Tolerances { nodes: 1, zones: 0 };
        let (qo, qn) = (QuorumSystem::new(&old, t), QuorumSystem::new(&new, t));
        let joint = JointQuorums {
            current: qo.clone(),
            next: Some(qn.clone()),
            past: Vec::new(),
        };
        assert!(qn.is_q1(&set(&[1, 4])) && !qo.is_q1(&set(&[1, 4])));
        assert!(
            !joint.is_q1(&set(&[1, 4])),
            "a new-only Q1 is refused while joint"
        );
        assert!(joint.is_q1(&set(&[1, 2, 4])));
        // Phase 2: the old config's Q2 {1,2} is not a Q2 of the new one (all of z0 and z9).
        assert!(qo.is_q2(&set(&[1, 2])) && !joint.is_q2(&set(&[1, 2])));
        assert!(joint.is_q2(&set(&[1, 2, 3, 4])));
        assert_eq!(joint.q2_targets("z9", &BTreeMap::new()), vec![1, 2, 3, 4]);
        // Removing a node: old {1..5}, new {1,2,3}; a new Q2 {1,2} misses the old Q1 {4,5}.
        let old = grid(&[5]);
        let new = grid(&[3]);
        let joint = JointQuorums {
            current: QuorumSystem::new(&old, t),
            next: Some(QuorumSystem::new(&new, t)),
            past: Vec::new(),
        };
        assert!(QuorumSystem::new(&new, t).is_q2(&set(&[1, 2])));
        assert!(!joint.is_q2(&set(&[1, 2])));
        assert!(!joint.is_q1(&set(&[4, 5])));
        assert!(joint.is_q2(&set(&[1, 2, 3, 4])) && joint.is_q1(&set(&[1, 2])));
        assert!(!JointQuorums::single(QuorumSystem::new(&new, t)).is_joint());
        // After adding {4}: phase 1 still needs a Q1 of the old configuration, phase 2 not.
        let after = JointQuorums {
            current: qn.clone(),
            next: None,
            past: vec![(qo.clone(), 1)],
        };
        assert!(!after.is_q1(&set(&[1, 4])) && after.is_q1(&set(&[1, 2, 4])));
        assert!(after.is_q2(&set(&[4])));
        // Once the group is sealed under the new configuration (epoch 2), it does not.
        assert!(after.is_q1_sealed(&set(&[1, 4]), 2));
        assert!(!after.is_q1_sealed(&set(&[1, 4]), 1));
    }

    /// The shape of simulator seed 1,554: a value chosen under the bootstrap 3×3 grid by a Q2
    /// of zones z1 and z2; then 102 joins (new zone z3), 101 joins z2, and 9 is removed. While
    /// the third change is joint, {1, 101, 102} is a Q1 of both configurations in force but
    /// misses the bootstrap Q2 that chose the value: every past configuration is required.
    #[test]
    fn phase1_needs_every_past_configuration() {
        let t = Tolerances { nodes: 0, zones: 1 };
        let c0 = grid(&[3, 3, 3]);
        let mut c1 = c0.clone();
        c1.add(102, "z3".into());
        let mut c2 = c1.clone();
        c2.add(101, "z2".into());
        let mut c3 = c2.clone();
        c3.remove(9);
        let q = |m: &Membership| QuorumSystem::new(m, t);
        let stale = set(&[1, 101, 102]);
        assert!(q(&c0).is_q2(&set(&[4, 5, 6, 7, 8, 9])));
        assert!(q(&c2).is_q1(&stale) && q(&c3).is_q1(&stale));
        // The old rule kept only the membership before the last change, and dropped it when
        // the next change began: while joint, nothing else was required.
        let old_rule = JointQuorums {
            current: q(&c2),
            next: Some(q(&c3)),
            past: Vec::new(),
        };
        assert!(old_rule.is_q1(&stale), "the missed intersection");
        let all = JointQuorums {
            current: q(&c2),
            next: Some(q(&c3)),
            past: vec![(q(&c0), 1), (q(&c1), 3)],
        };
        assert!(!all.is_q1(&stale));
        assert!(all.is_q1(&set(&[1, 4, 102])));
        // Sealed under c1 (epoch 2): c0's quorums are no longer needed, c1's still are.
        assert!(!all.is_q1_sealed(&stale, 2));
        assert!(
            all.is_q1_sealed(&set(&[1, 101, 102, 4]), 2) || !q(&c1).is_q1(&set(&[1, 101, 102, 4]))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn every_q1_meets_every_q2(
            sizes in proptest::collection::vec(1usize..5, 1..5),
            nodes in 0usize..3,
            zones in 0usize..3,
        ) {
            let membership = grid(&sizes);
            prop_assume!(membership.len() <= 12);
            let q = QuorumSystem::new(&membership, Tolerances { nodes, zones });
            let all: Vec<NodeId> = membership.nodes().collect();
            let full: BTreeSet<NodeId> = all.iter().copied().collect();
            prop_assert!(q.is_q1(&full) && q.is_q2(&full));
            // The quorums a report shows are quorums, from any zone's point of view.
            for owner_zone in membership.zones().keys() {
                let (q1, q2) = q.choose(owner_zone, &BTreeMap::new(), std::cmp::Reverse);
                prop_assert!(q.is_q1(&q1.iter().copied().collect()), "Q1 {:?}", q1);
                prop_assert!(q.is_q2(&q2.iter().copied().collect()), "Q2 {:?}", q2);
            }
            // Predicates are monotone, so a Q2 disjoint from a Q1 exists iff the Q1's
            // complement is a Q2.
            for mask in 0u32..(1 << all.len()) {
                let s: BTreeSet<NodeId> = all.iter().enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0).map(|(_, n)| *n).collect();
                let rest: BTreeSet<NodeId> = full.difference(&s).copied().collect();
                if q.is_q1(&s) {
                    prop_assert!(!q.is_q2(&rest), "Q1 {:?} misses Q2 {:?}", s, rest);
                }
            }
            // The effective tolerances hold: fail fz zones and fn nodes in every other zone,
            // and both quorums can still be formed.
            let t = q.effective();
            let zs = membership.zones();
            let mut alive = BTreeSet::new();
            for (i, members) in zs.values().enumerate() {
                if i >= t.zones {
                    alive.extend(members.iter().skip(t.nodes).copied());
                }
            }
            prop_assert!(q.is_q1(&alive), "q1 not formable {:?} {:?}", t, alive);
            prop_assert!(q.is_q2(&alive), "q2 not formable {:?} {:?}", t, alive);
        }
    }
}
