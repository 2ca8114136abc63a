//! Adaptive migration: the owner counts accesses per zone over a sliding window and hands the
//! group to the zone holding a strict majority of them.
//!
//! The window is kept as `BUCKETS` buckets, so a shift of load is seen within one window
//! plus one bucket, and the decision is taken at most once per bucket.

use std::collections::{BTreeMap, VecDeque};

use super::ballot::{NodeId, Zone};

const BUCKETS: u64 = 10;

#[derive(Debug, Clone, Default)]
struct Bucket {
    start: u64,
    by_zone: BTreeMap<Zone, u64>,
    by_node: BTreeMap<NodeId, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct AccessWindow {
    since: u64,
    buckets: VecDeque<Bucket>,
    last_decision: u64,
}

impl AccessWindow {
    pub fn starting(now: u64) -> AccessWindow {
        AccessWindow {
            since: now,
            buckets: VecDeque::new(),
            last_decision: now,
        }
    }

    fn width(window_ms: u64) -> u64 {
        (window_ms / BUCKETS).max(1)
    }

    fn expire(&mut self, now: u64, window_ms: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|b| b.start.saturating_add(window_ms) <= now)
        {
            self.buckets.pop_front();
        }
    }

    pub fn record(&mut self, now: u64, window_ms: u64, zone: &str, node: NodeId) {
        let width = Self::width(window_ms);
        let start = now - now % width;
        if self.buckets.back().is_none_or(|b| b.start != start) {
            self.buckets.push_back(Bucket {
                start,
                ..Bucket::default()
            });
        }
        if let Some(b) = self.buckets.back_mut() {
            *b.by_zone.entry(zone.to_string()).or_default() += 1;
            *b.by_node.entry(node).or_default() += 1;
        }
        self.expire(now, window_ms);
    }

    /// The node to hand over to, if over the last window another zone than `own_zone` had a
    /// strict majority of at least `min_accesses` accesses (its busiest node; ties by id).
    /// Decides at most once per bucket, and not before the owner has held the group for a
    /// whole window (it has not seen a full window of load before).
    pub fn decide(
        &mut self,
        now: u64,
        window_ms: u64,
        min_accesses: u64,
        own_zone: &str,
        zone_of: impl Fn(NodeId) -> Option<Zone>,
    ) -> Option<NodeId> {
        if now < self.since.saturating_add(window_ms)
            || now < self.last_decision.saturating_add(Self::width(window_ms))
        {
            return None;
        }
        self.last_decision = now;
        self.expire(now, window_ms);
        let mut by_zone: BTreeMap<&Zone, u64> = BTreeMap::new();
        let mut by_node: BTreeMap<NodeId, u64> = BTreeMap::new();
        for b in &self.buckets {
            for (z, c) in &b.by_zone {
                *by_zone.entry(z).or_default() += c;
            }
            for (n, c) in &b.by_node {
                *by_node.entry(*n).or_default() += c;
            }
        }
        let total: u64 = by_zone.values().sum();
        if total < min_accesses {
            return None;
        }
        let zone = by_zone
            .iter()
            .find(|(zone, count)| zone.as_str() != own_zone && **count * 2 > total)
            .map(|(zone, _)| (*zone).clone())?;
        by_node
            .iter()
            .filter(|(node, _)| zone_of(**node).as_deref() == Some(zone.as_str()))
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(node, _)| *node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone_of(n: NodeId) -> Option<Zone> {
        Some(if n < 10 {
            "a".to_string()
        } else {
            "b".to_string()
        })
    }

    #[test]
    fn majority_zone_wins_once_a_window_has_passed() {
        let mut w = AccessWindow::starting(0);
        for t in 0..3 {
            w.record(t, 1000, "a", 1);
        }
        for t in 0..5 {
            w.record(500 + t, 1000, "b", 11);
        }
        w.record(600, 1000, "b", 12);
        assert_eq!(
            w.decide(700, 1000, 4, "a", zone_of),
            None,
            "before a full window"
        );
        assert_eq!(w.decide(1000, 1000, 4, "a", zone_of), Some(11));
    }

    #[test]
    fn old_accesses_age_out_and_splits_keep_the_owner() {
        let mut w = AccessWindow::starting(0);
        for t in 0..20 {
            w.record(t, 1000, "b", 11);
        }
        // Long after, a balanced mix: no majority elsewhere.
        for t in 0..4 {
            w.record(5000 + t, 1000, "a", 1);
            w.record(5000 + t, 1000, "b", 11);
        }
        assert_eq!(w.decide(5100, 1000, 4, "a", zone_of), None);
        assert_eq!(w.decide(5100, 1000, 4, "a", zone_of), None);
    }
}
