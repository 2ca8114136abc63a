//! The learner side of one group: committed entries, applied in slot order exactly once.

use std::collections::{BTreeMap, BTreeSet};

use super::ballot::{CommandId, Slot};
use super::command::Command;

#[derive(Debug, Clone, Default)]
pub struct Log {
    /// Committed entries, applied or not. Kept for catch-up (no truncation yet).
    committed: BTreeMap<Slot, Command>,
    applied: Slot,
    /// The highest slot known to be committed somewhere (from heartbeats and promises).
    known: Slot,
    /// Ids of applied writes: a retried command committed twice applies once. Derived from
    /// the log alone, so every replica decides the same.
    applied_ids: BTreeSet<CommandId>,
}

impl Log {
    /// Rebuilds a log from persisted entries; entries up to `applied` were applied.
    pub fn restore(committed: BTreeMap<Slot, Command>, applied: Slot) -> Log {
        let applied_ids = committed
            .range(..=applied)
            .filter(|(_, c)| c.op.is_deduplicated())
            .map(|(_, c)| c.id)
            .collect();
        let known = committed
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(applied);
        Log {
            committed,
            applied,
            known,
            applied_ids,
        }
    }

    pub fn applied(&self) -> Slot {
        self.applied
    }

    pub fn known(&self) -> Slot {
        self.known
    }

    pub fn note_known(&mut self, slot: Slot) {
        self.known = self.known.max(slot);
    }

    pub fn get(&self, slot: Slot) -> Option<&Command> {
        self.committed.get(&slot)
    }

    pub fn is_applied(&self, id: &CommandId) -> bool {
        self.applied_ids.contains(id)
    }

    pub fn committed_after(&self, slot: Slot) -> impl Iterator<Item = (&Slot, &Command)> {
        self.committed.range(slot + 1..)
    }

    pub fn range(&self, from: Slot, to: Slot, limit: usize) -> Vec<(Slot, Command)> {
        if from > to {
            return Vec::new();
        }
        self.committed
            .range(from..=to)
            .take(limit)
            .map(|(s, c)| (*s, c.clone()))
            .collect()
    }

    /// Records a committed entry; false if it was known already (nothing to persist).
    pub fn commit(&mut self, slot: Slot, command: Command) -> bool {
        if slot == 0 || slot <= self.applied || self.committed.contains_key(&slot) {
            return false;
        }
        self.known = self.known.max(slot);
        self.committed.insert(slot, command);
        true
    }

    /// The entries that can be applied now, in order: `(slot, command, duplicate)`.
    pub fn take_applicable(&mut self) -> Vec<(Slot, Command, bool)> {
        let mut out = Vec::new();
        while let Some(command) = self.committed.get(&(self.applied + 1)) {
            self.applied += 1;
            let duplicate = command.op.is_deduplicated() && !self.applied_ids.insert(command.id);
            out.push((self.applied, command.clone(), duplicate));
        }
        out
    }

    /// The first missing range below what is known to be committed.
    pub fn gap(&self) -> Option<(Slot, Slot)> {
        (self.known > self.applied).then(|| {
            let from = self.applied + 1;
            let to = self
                .committed
                .range(from..)
                .next()
                .map_or(self.known, |(s, _)| s.saturating_sub(1).max(from));
            (from, to)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::command::CommandOp;

    fn put(seq: u64) -> Command {
        Command {
            id: CommandId { origin: 1, seq },
            op: CommandOp::Delete { key: "t.k".into() },
        }
    }

    #[test]
    fn applies_in_order_once_and_marks_duplicates() {
        let mut log = Log::default();
        assert!(log.commit(2, put(2)));
        assert!(log.take_applicable().is_empty());
        assert_eq!(log.gap(), Some((1, 1)));
        assert!(log.commit(1, put(1)));
        assert!(log.commit(3, put(1)));
        let applied = log.take_applicable();
        assert_eq!(
            applied.iter().map(|a| (a.0, a.2)).collect::<Vec<_>>(),
            vec![(1, false), (2, false), (3, true)]
        );
        assert!(!log.commit(2, put(9)));
        assert_eq!(log.gap(), None);
        let restored = Log::restore(log.range(1, 3, 10).into_iter().collect(), 3);
        assert!(restored.is_applied(&put(2).id));
    }
}
