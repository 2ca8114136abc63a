//! The learner side of one group: committed entries, applied in slot order exactly once.
//!
//! Applied entries leave the log: the state machine (RocksDB in production) is the snapshot,
//! with the group's [`GroupState`]. What stays in memory is bounded:
//! - `pending`: committed entries above the applied slot that wait for a gap to fill (a
//!   follower that missed a commit). Bounded by bytes; beyond the bound new entries are
//!   dropped and fetched again once the gap is filled (the next slot is always taken).
//! - `retained`: the most recently applied entries, so a peer a little behind catches up
//!   with entries instead of a snapshot. Bounded by a byte budget the node hands out.
//! - the de-duplication window ([`Dedup`]), bounded by what origins have outstanding.
//!
//! A peer behind the retained window gets `compacted` from `range` and asks for a snapshot.

use std::collections::{BTreeMap, VecDeque};

use super::ballot::{CommandId, Slot};
use super::codec::{CodecError, Reader, Writer};
use super::command::{Command, CommandOp};
use super::dedup::{Dedup, Seen};

/// A group's state as of its applied slot: persisted in the same batch as the data it
/// describes, carried by snapshots, recovered at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    pub applied: Slot,
    /// The highest configuration epoch the group is known sealed at (an applied seal).
    pub sealed: u64,
    pub dedup: Dedup,
}

impl GroupState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::versioned();
        w.u64(self.applied);
        w.u64(self.sealed);
        self.dedup.encode(&mut w);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupState, CodecError> {
        let mut r = Reader::versioned(bytes)?;
        let state = GroupState {
            applied: r.u64()?,
            sealed: r.u64()?,
            dedup: Dedup::decode(&mut r)?,
        };
        r.finish()?;
        Ok(state)
    }
}

/// One applied entry, as `take_applicable` hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyEntry {
    pub slot: Slot,
    pub command: Command,
    /// A copy of an applied command, or a stale one: the state machine skips it.
    pub duplicate: bool,
    /// Applied before (not stale): its waiters may be told it is written.
    pub written: bool,
}

/// Most bytes of committed entries waiting above a gap, per group.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Log {
    pending: BTreeMap<Slot, Command>,
    pending_bytes: usize,
    retained: VecDeque<(Slot, Command)>,
    retained_bytes: usize,
    state: GroupState,
    /// The highest slot known to be committed somewhere (from heartbeats and promises).
    known: Slot,
}

/// Why `range` could not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compacted {
    /// The entries asked for left the log; this node's state is at `applied`.
    Below { applied: Slot },
}

impl Log {
    /// The log of a group whose state machine is at `state`.
    pub fn restore(state: GroupState) -> Log {
        Log {
            known: state.applied,
            state,
            ..Log::default()
        }
    }

    pub fn applied(&self) -> Slot {
        self.state.applied
    }

    pub fn state(&self) -> &GroupState {
        &self.state
    }

    pub fn sealed(&self) -> u64 {
        self.state.sealed
    }

    pub fn known(&self) -> Slot {
        self.known
    }

    pub fn note_known(&mut self, slot: Slot) {
        self.known = self.known.max(slot);
    }

    /// A committed entry this node still holds (retained or pending).
    pub fn get(&self, slot: Slot) -> Option<&Command> {
        if slot > self.state.applied {
            return self.pending.get(&slot);
        }
        let first = self.retained.front()?.0;
        let index = usize::try_from(slot.checked_sub(first)?).ok()?;
        self.retained.get(index).map(|(_, c)| c)
    }

    pub fn check(&self, id: &CommandId) -> Seen {
        self.state.dedup.check(id)
    }

    /// Committed entries above the applied slot.
    pub fn pending(&self) -> impl Iterator<Item = (&Slot, &Command)> {
        self.pending.iter()
    }

    /// Committed entries `from..=to` up to about `max_bytes` (at least one), or why not.
    pub fn range(
        &self,
        from: Slot,
        to: Slot,
        max_bytes: usize,
    ) -> Result<Vec<(Slot, Command)>, Compacted> {
        let first_held = self
            .retained
            .front()
            .map_or(self.state.applied + 1, |(s, _)| *s);
        if from < first_held && from <= self.state.applied {
            return Err(Compacted::Below {
                applied: self.state.applied,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for slot in from..=to.min(self.state.applied.max(self.known)) {
            let Some(command) = self.get(slot) else {
                break;
            };
            bytes += command.size();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push((slot, command.clone()));
        }
        Ok(out)
    }

    /// Records a committed entry; false if it was known already or there is no room for it.
    pub fn commit(&mut self, slot: Slot, command: Command) -> bool {
        if slot == 0 || slot <= self.state.applied || self.pending.contains_key(&slot) {
            return false;
        }
        self.known = self.known.max(slot);
        let size = command.size();
        if slot != self.state.applied + 1 && self.pending_bytes + size > MAX_PENDING_BYTES {
            return false;
        }
        self.pending_bytes += size;
        self.pending.insert(slot, command);
        true
    }

    /// Applies what can be applied now, in order; `retain_bytes` bounds the entries kept
    /// for catch-up afterwards.
    pub fn take_applicable(&mut self, retain_bytes: usize) -> Vec<ApplyEntry> {
        let mut out = Vec::new();
        while let Some(command) = self.pending.remove(&(self.state.applied + 1)) {
            self.pending_bytes -= command.size();
            self.state.applied += 1;
            let (duplicate, written) = if command.op.is_deduplicated() {
                match self.state.dedup.check(&command.id) {
                    Seen::Fresh => {
                        self.state.dedup.record(&command.id, command.floor);
                        (false, true)
                    }
                    Seen::Applied => (true, true),
                    Seen::Stale => (true, false),
                }
            } else {
                (false, true)
            };
            if let CommandOp::Seal { epoch } = command.op {
                self.state.sealed = self.state.sealed.max(epoch);
            }
            out.push(ApplyEntry {
                slot: self.state.applied,
                command: command.clone(),
                duplicate,
                written,
            });
            self.retain(self.state.applied, command, retain_bytes);
        }
        self.trim(retain_bytes);
        out
    }

    fn retain(&mut self, slot: Slot, command: Command, retain_bytes: usize) {
        let size = command.size();
        if size > retain_bytes {
            // Too big to keep: a peer that needs it gets a snapshot.
            self.retained.clear();
            self.retained_bytes = 0;
            return;
        }
        self.retained_bytes += size;
        self.retained.push_back((slot, command));
    }

    /// Drops retained entries beyond `retain_bytes` (oldest first).
    pub fn trim(&mut self, retain_bytes: usize) {
        while self.retained_bytes > retain_bytes {
            let Some((_, c)) = self.retained.pop_front() else {
                break;
            };
            self.retained_bytes -= c.size();
        }
    }

    pub fn retained_bytes(&self) -> usize {
        self.retained_bytes
    }

    /// The state machine was replaced by a snapshot at `state.applied`.
    pub fn install(&mut self, state: GroupState) {
        if state.applied <= self.state.applied {
            return;
        }
        self.retained.clear();
        self.retained_bytes = 0;
        self.pending = self.pending.split_off(&(state.applied + 1));
        self.pending_bytes = self.pending.values().map(Command::size).sum();
        self.known = self.known.max(state.applied);
        self.state = state;
    }

    /// The first missing range below what is known to be committed.
    pub fn gap(&self) -> Option<(Slot, Slot)> {
        (self.known > self.state.applied).then(|| {
            let from = self.state.applied + 1;
            let to = self
                .pending
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
            floor: 0,
            op: CommandOp::Delete { key: "t.k".into() },
        }
    }

    const ROOM: usize = 1 << 20;

    #[test]
    fn applies_in_order_once_and_marks_duplicates() {
        let mut log = Log::default();
        assert!(log.commit(2, put(2)));
        assert!(log.take_applicable(ROOM).is_empty());
        assert_eq!(log.gap(), Some((1, 1)));
        assert!(log.commit(1, put(1)));
        assert!(log.commit(3, put(1)));
        let applied = log.take_applicable(ROOM);
        assert_eq!(
            applied
                .iter()
                .map(|a| (a.slot, a.duplicate))
                .collect::<Vec<_>>(),
            vec![(1, false), (2, false), (3, true)]
        );
        assert!(!log.commit(2, put(9)));
        assert_eq!(log.gap(), None);
        let restored = Log::restore(log.state().clone());
        assert_eq!(restored.check(&put(2).id), Seen::Applied);
        assert_eq!(restored.applied(), 3);
    }

    #[test]
    fn applied_entries_leave_the_log_and_old_ranges_are_compacted() {
        let mut log = Log::default();
        let one = put(1).size();
        for slot in 1..=10 {
            log.commit(slot, put(slot));
        }
        // Room for three entries: the oldest leave as new ones apply.
        assert_eq!(log.take_applicable(3 * one).len(), 10);
        assert_eq!(log.retained_bytes(), 3 * one);
        assert_eq!(log.get(7), None);
        assert_eq!(log.get(8), Some(&put(8)));
        assert_eq!(
            log.range(2, 10, ROOM),
            Err(Compacted::Below { applied: 10 })
        );
        let served = log.range(8, 20, ROOM).unwrap();
        assert_eq!(
            served.iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        // A byte budget limits a reply, but one entry always goes.
        assert_eq!(log.range(8, 20, 1).unwrap().len(), 1);
        // A snapshot at slot 20 replaces everything below.
        log.commit(22, put(22));
        log.install(GroupState {
            applied: 20,
            ..GroupState::default()
        });
        assert_eq!(log.applied(), 20);
        assert_eq!(log.gap(), Some((21, 21)));
        assert!(log.commit(21, put(21)));
        assert_eq!(log.take_applicable(ROOM).len(), 2);
    }

    #[test]
    fn waiting_entries_are_bounded_by_bytes() {
        let mut log = Log::default();
        let big = Command {
            id: CommandId { origin: 1, seq: 1 },
            floor: 0,
            op: CommandOp::Put {
                key: "t.k".into(),
                value: vec![0; MAX_PENDING_BYTES / 2].into(),
            },
        };
        assert!(log.commit(3, big.clone()));
        assert!(!log.commit(4, big.clone()), "no room above the gap");
        assert_eq!(log.known(), 4);
        // The next slot is always taken.
        assert!(log.commit(1, big.clone()));
    }

    #[test]
    fn group_state_round_trips() {
        let mut state = GroupState {
            applied: 9,
            sealed: 2,
            dedup: Dedup::default(),
        };
        state.dedup.record(&CommandId { origin: 4, seq: 8 }, 1);
        assert_eq!(GroupState::decode(&state.encode()), Ok(state));
        assert!(GroupState::decode(b"\x02").is_err());
    }
}
