//! The acceptor of one group: its promise, its accepted entries and the lease it honours.
//!
//! Accepted entries stay until the log applies them (then they are committed and in the
//! state machine). They are bounded by bytes: an acceptor that holds `MAX_ACCEPTED_BYTES`
//! of entries it cannot apply yet (a gap, a snapshot being installed) refuses further ones
//! except the next slot it needs, which holds its owner back instead of growing memory.
//! They are also bounded in span: no slot more than `MAX_SLOTS_AHEAD` past the applied one
//! is accepted, so a promise that reports one farther is not an honest acceptor's (a new
//! owner does not count it, and never fills more than that many holes).

use std::collections::BTreeMap;

use super::ballot::{Ballot, Slot};
use super::command::{Command, ENTRY_OVERHEAD};
use super::message::AcceptedEntry;

/// Most bytes of accepted, not yet applied entries one group's acceptor holds.
pub const MAX_ACCEPTED_BYTES: usize = 64 * 1024 * 1024;

/// Most slots past the applied one an acceptor accepts in: as many entries as it could
/// hold (an owner's window of in-flight entries is smaller: it never needs more).
pub const MAX_SLOTS_AHEAD: Slot = (MAX_ACCEPTED_BYTES / ENTRY_OVERHEAD) as Slot;

#[derive(Debug, Clone, Default)]
pub struct Acceptor {
    promised: Ballot,
    accepted: BTreeMap<Slot, (Ballot, Command)>,
    accepted_bytes: usize,
    /// The owner ballot this acceptor granted a lease to, and when (local clock) it ends.
    lease: Option<(Ballot, u64)>,
}

/// Why a prepare was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The acceptor promised a higher ballot.
    Promised(Ballot),
    /// Another owner's lease (or the quiet period after a restart) is in force.
    Leased(Ballot),
}

/// The result of a prepare: the promise and whether it changed (must be persisted).
pub struct Promised {
    pub changed: bool,
    pub accepted: Vec<AcceptedEntry>,
}

impl Acceptor {
    pub fn restore(promised: Ballot, accepted: BTreeMap<Slot, (Ballot, Command)>) -> Acceptor {
        let accepted_bytes = accepted.values().map(|(_, c)| c.size()).sum();
        Acceptor {
            promised,
            accepted,
            accepted_bytes,
            lease: None,
        }
    }

    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Phase 1b. A promise does not grant a lease by itself: a proposer that loses the
    /// contest must not block the winner, so the lease starts with the owner's first renewal
    /// (sent as soon as phase 1 succeeds). `quiet_until` covers leases granted before a restart (they were not
    /// persisted): until then no new ballot is promised. `handoff_from` is a lease the owner
    /// released by handing the group over.
    pub fn prepare(
        &mut self,
        ballot: Ballot,
        handoff_from: Option<Ballot>,
        now: u64,
        quiet_until: u64,
    ) -> Result<Promised, Refusal> {
        if ballot < self.promised {
            return Err(Refusal::Promised(self.promised));
        }
        let changed = ballot > self.promised;
        if changed {
            if now < quiet_until {
                return Err(Refusal::Leased(self.promised));
            }
            if let Some((holder, until)) = self.lease
                && now < until
                && holder.node != ballot.node
                && Some(holder) != handoff_from
            {
                return Err(Refusal::Leased(holder));
            }
            self.promised = ballot;
        }
        let accepted = self
            .accepted
            .iter()
            .map(|(slot, (b, c))| AcceptedEntry {
                slot: *slot,
                ballot: *b,
                command: c.clone(),
            })
            .collect();
        Ok(Promised { changed, accepted })
    }

    /// Lease renewal by the owner of the promised ballot.
    pub fn renew(&mut self, ballot: Ballot, now: u64, lease_ms: u64) -> bool {
        if ballot != self.promised {
            return false;
        }
        self.lease = Some((ballot, now.saturating_add(lease_ms)));
        true
    }

    /// Phase 2b for one entry. Returns `None` if refused (a higher promise, a slot more than
    /// `MAX_SLOTS_AHEAD` past `next`, or no room: `next` is the slot after the applied one,
    /// always taken), else whether the promise rose (and must be persisted with the entry).
    pub fn accept(
        &mut self,
        ballot: Ballot,
        slot: Slot,
        command: &Command,
        next: Slot,
    ) -> Option<bool> {
        if ballot < self.promised || slot > next.saturating_add(MAX_SLOTS_AHEAD) {
            return None;
        }
        let size = command.size();
        let replaced = self.accepted.get(&slot).map_or(0, |(_, c)| c.size());
        // Full: only the next slot, or an entry that replaces one at least as large.
        let grows = size > replaced;
        if slot != next && grows && self.accepted_bytes - replaced + size > MAX_ACCEPTED_BYTES {
            return None;
        }
        let raised = ballot > self.promised;
        self.promised = ballot;
        self.accepted_bytes = self.accepted_bytes - replaced + size;
        self.accepted.insert(slot, (ballot, command.clone()));
        Some(raised)
    }

    /// The entry accepted in `slot` at exactly `ballot` (a commit that names only slots).
    pub fn accepted_at(&self, slot: Slot, ballot: Ballot) -> Option<&Command> {
        self.accepted
            .get(&slot)
            .filter(|(b, _)| *b == ballot)
            .map(|(_, c)| c)
    }

    /// Drops entries the log has applied (they are committed and in the state machine);
    /// returns their slots, whose records the caller deletes.
    pub fn forget_through(&mut self, slot: Slot) -> Vec<Slot> {
        let kept = self.accepted.split_off(&(slot + 1));
        let forgotten = std::mem::replace(&mut self.accepted, kept);
        for (_, c) in forgotten.values() {
            self.accepted_bytes -= c.size();
        }
        forgotten.into_keys().collect()
    }

    pub fn accepted_len(&self) -> usize {
        self.accepted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::ballot::CommandId;

    fn cmd(seq: u64) -> Command {
        Command::noop(CommandId { origin: 1, seq })
    }

    #[test]
    fn promises_only_rise_and_report_accepted_entries() {
        let mut a = Acceptor::default();
        let p = a.prepare(Ballot::new(1, 1), None, 0, 0).ok().unwrap();
        assert!(p.changed && p.accepted.is_empty());
        assert!(a.renew(Ballot::new(1, 1), 1, 100));
        assert!(!a.renew(Ballot::new(1, 2), 1, 100));
        assert_eq!(a.accept(Ballot::new(1, 1), 1, &cmd(1), 1), Some(false));
        assert_eq!(a.accept(Ballot::new(0, 9), 2, &cmd(2), 1), None);
        assert_eq!(a.accepted_at(1, Ballot::new(1, 1)), Some(&cmd(1)));
        assert_eq!(a.accepted_at(1, Ballot::new(1, 2)), None);
        // Lease of node 1 in force: node 2 is refused until it ends.
        assert!(matches!(
            a.prepare(Ballot::new(2, 2), None, 50, 0),
            Err(Refusal::Leased(_))
        ));
        let p = a.prepare(Ballot::new(2, 2), None, 102, 0).ok().unwrap();
        assert_eq!(p.accepted.len(), 1);
        assert!(matches!(
            a.prepare(Ballot::new(1, 5), None, 500, 0),
            Err(Refusal::Promised(_))
        ));
        a.forget_through(1);
        assert_eq!(a.accepted_len(), 0);
    }

    #[test]
    fn accepted_entries_are_bounded_but_the_next_slot_is_always_taken() {
        let big = Command {
            id: crate::consensus::ballot::CommandId { origin: 1, seq: 1 },
            floor: 0,
            op: crate::consensus::command::CommandOp::Put {
                key: "t.k".into(),
                value: vec![0; MAX_ACCEPTED_BYTES / 2].into(),
            },
        };
        let mut a = Acceptor::default();
        let b = Ballot::new(1, 1);
        assert!(a.accept(b, 5, &big, 1).is_some());
        assert!(a.accept(b, 6, &big, 1).is_none(), "full");
        assert!(
            a.accept(b, 1, &big, 1).is_some(),
            "the slot the log needs next"
        );
        // Replacing an entry does not count it twice.
        assert!(a.accept(b, 5, &big, 1).is_some());
        a.forget_through(5);
        assert!(a.accept(b, 6, &big, 6).is_some());
    }

    #[test]
    fn handoff_releases_the_lease_and_restart_is_quiet() {
        let mut a = Acceptor::default();
        assert!(a.prepare(Ballot::new(1, 1), None, 0, 0).is_ok());
        assert!(a.renew(Ballot::new(1, 1), 0, 100));
        assert!(a.prepare(Ballot::new(2, 3), None, 10, 0).is_err());
        assert!(
            a.prepare(Ballot::new(2, 2), Some(Ballot::new(1, 1)), 10, 0)
                .is_ok()
        );
        let mut b = Acceptor::default();
        assert!(b.prepare(Ballot::new(1, 1), None, 10, 50).is_err());
    }
}
