//! Bounded duplicate detection of retried client commands.
//!
//! A request keeps its command id `(origin, seq)` across retries, so a retried write may be
//! committed twice; the second copy must not be applied. Keeping every id ever applied grows
//! without bound, so each command also carries its origin's **floor**: every sequence number
//! of that origin below it is finished at the origin (answered, or given up with "may or may
//! not have happened"), so nobody waits for them any more. Per origin a group then keeps the
//! highest floor seen and the sequence numbers applied at or above it, which is at most what
//! the origin had outstanding. A copy below the floor is *stale*: skipped, like a duplicate
//! (its client was already told the outcome is unknown, or that it was written).
//!
//! Sequence numbers carry the origin's incarnation in their high bits (see `node.rs`), so a
//! restarted origin's floor passes everything of its earlier runs.
//!
//! The state is derived from the log alone (floors travel in the entries), so every replica
//! decides alike; it is part of a group's persisted state and of its snapshots.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::{CommandId, NodeId};
use super::codec::{CodecError, Reader, Writer};

/// Most sequence numbers kept per origin above its floor. An origin never has this many
/// requests outstanding (its client limits are far lower); if one did, the oldest are
/// forgotten deterministically (the floor rises), which makes late copies of them stale.
pub const MAX_PER_ORIGIN: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dedup {
    origins: BTreeMap<NodeId, Window>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Window {
    floor: u64,
    applied: BTreeSet<u64>,
}

/// What a command id is to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never applied: apply it.
    Fresh,
    /// Applied before: skip it, it is written.
    Applied,
    /// Below its origin's floor: finished at the origin already; skip it.
    Stale,
}

impl Dedup {
    pub fn check(&self, id: &CommandId) -> Seen {
        match self.origins.get(&id.origin) {
            None => Seen::Fresh,
            Some(w) if w.applied.contains(&id.seq) => Seen::Applied,
            Some(w) if id.seq < w.floor => Seen::Stale,
            Some(_) => Seen::Fresh,
        }
    }

    /// Records an applied command and its origin's floor.
    pub fn record(&mut self, id: &CommandId, floor: u64) {
        let w = self.origins.entry(id.origin).or_default();
        w.applied.insert(id.seq);
        if floor > w.floor {
            w.floor = floor;
            w.applied = w.applied.split_off(&floor);
        }
        while w.applied.len() > MAX_PER_ORIGIN {
            if let Some(oldest) = w.applied.pop_first() {
                w.floor = w.floor.max(oldest + 1);
            }
        }
    }

    /// Sequence numbers kept (for tests and metrics).
    pub fn len(&self) -> usize {
        self.origins.values().map(|w| w.applied.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn encode(&self, w: &mut Writer) {
        w.u64(self.origins.len() as u64);
        for (origin, window) in &self.origins {
            w.u64(*origin);
            w.u64(window.floor);
            w.u64(window.applied.len() as u64);
            for seq in &window.applied {
                w.u64(*seq);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Dedup, CodecError> {
        let mut origins = BTreeMap::new();
        for _ in 0..r.count(16)? {
            let origin = r.u64()?;
            let floor = r.u64()?;
            let mut applied = BTreeSet::new();
            for _ in 0..r.count(8)? {
                applied.insert(r.u64()?);
            }
            origins.insert(origin, Window { floor, applied });
        }
        Ok(Dedup { origins })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(origin: NodeId, seq: u64) -> CommandId {
        CommandId { origin, seq }
    }

    #[test]
    fn duplicates_are_found_and_the_floor_bounds_what_is_kept() {
        let mut d = Dedup::default();
        assert_eq!(d.check(&id(1, 5)), Seen::Fresh);
        d.record(&id(1, 5), 5);
        d.record(&id(1, 7), 5);
        assert_eq!(d.check(&id(1, 5)), Seen::Applied);
        assert_eq!(d.check(&id(1, 6)), Seen::Fresh);
        assert_eq!(d.check(&id(2, 5)), Seen::Fresh);
        // The origin finished everything below 7: 5 is forgotten, late copies are stale.
        d.record(&id(1, 8), 7);
        assert_eq!(d.check(&id(1, 5)), Seen::Stale);
        assert_eq!(d.check(&id(1, 6)), Seen::Stale);
        assert_eq!(d.check(&id(1, 7)), Seen::Applied);
        assert_eq!(d.len(), 2);
        // A lower floor from an older copy never lowers it.
        d.record(&id(1, 9), 3);
        assert_eq!(d.check(&id(1, 6)), Seen::Stale);
    }

    #[test]
    fn an_origin_that_never_raises_its_floor_stays_bounded() {
        let mut d = Dedup::default();
        for seq in 0..(MAX_PER_ORIGIN as u64 + 10) {
            d.record(&id(3, seq), 0);
        }
        assert_eq!(d.len(), MAX_PER_ORIGIN);
        assert_eq!(d.check(&id(3, 0)), Seen::Stale);
        assert_eq!(d.check(&id(3, MAX_PER_ORIGIN as u64)), Seen::Applied);
    }

    #[test]
    fn the_state_round_trips_and_garbage_never_panics() {
        let mut d = Dedup::default();
        d.record(&id(1, 5), 2);
        d.record(&id(9, 1 << 41), 1 << 40);
        let mut w = Writer::versioned();
        d.encode(&mut w);
        let bytes = w.finish();
        let mut r = Reader::versioned(&bytes).unwrap();
        assert_eq!(Dedup::decode(&mut r).unwrap(), d);
        for cut in 0..bytes.len() {
            if let Ok(mut r) = Reader::versioned(&bytes[..cut]) {
                let _ = Dedup::decode(&mut r);
            }
        }
        let mut lying = Writer::versioned();
        lying.u64(u64::MAX);
        let lying = lying.finish();
        let mut r = Reader::versioned(&lying).unwrap();
        assert!(Dedup::decode(&mut r).is_err());
    }
}
