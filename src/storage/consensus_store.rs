//! RocksDB persistence of the consensus core: the acceptor state (family `acceptor`) and the
//! committed log (family `log`). Every write is synced, whatever the store's `durability`:
//! a promise or an acceptance that is lost in a crash breaks Paxos, not just a write.
//!
//! Keys (`group` as a u16 BE length and its bytes, slots as u64 BE so they sort):
//!
//! | family | key | value |
//! |---|---|---|
//! | `acceptor` | `P` group | the promised ballot (counter, node: u64 BE each) |
//! | `acceptor` | `A` group slot | versioned: accepted ballot, then the command |
//! | `acceptor` | `D` group | the applied slot (u64 BE) |
//! | `acceptor` | `I` | the incarnation counter (u64 BE) |
//! | `log` | group slot | a committed command (versioned encoding) |

use std::collections::BTreeMap;

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use super::{CF_ACCEPTOR, CF_LOG, StorageError, Store};
use crate::consensus::codec::{Reader, Writer};
use crate::consensus::{
    Ballot, Command, GroupId, PersistOp, Recovered, RecoveredGroup, Slot, codec,
};

const PROMISE: u8 = b'P';
const ACCEPTED: u8 = b'A';
const APPLIED: u8 = b'D';
const INCARNATION: &[u8] = b"I";

/// The consensus view of a [`Store`].
pub struct ConsensusStore<'a> {
    store: &'a Store,
    synced: WriteOptions,
}

fn group_key(tag: Option<u8>, group: &str, slot: Option<Slot>) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + 11);
    key.extend(tag);
    let len = u16::try_from(group.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&group.as_bytes()[..len as usize]);
    if let Some(slot) = slot {
        key.extend_from_slice(&slot.to_be_bytes());
    }
    key
}

/// Splits `[len][group][slot?]` (after any tag byte).
fn parse_group_key(bytes: &[u8]) -> Result<(GroupId, Option<Slot>), StorageError> {
    let corrupt = || StorageError::Corrupt("consensus key".into());
    let len = bytes
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or_else(corrupt)? as usize;
    let group = bytes.get(2..2 + len).ok_or_else(corrupt)?;
    let group = String::from_utf8(group.to_vec()).map_err(|_| corrupt())?;
    let slot = match bytes.get(2 + len..) {
        Some([]) | None => None,
        Some(rest) => Some(u64::from_be_bytes(rest.try_into().map_err(|_| corrupt())?)),
    };
    Ok((group, slot))
}

fn encode_ballot(b: Ballot) -> Vec<u8> {
    let mut v = b.counter.to_be_bytes().to_vec();
    v.extend_from_slice(&b.node.to_be_bytes());
    v
}

fn decode_ballot(bytes: &[u8]) -> Result<Ballot, StorageError> {
    let corrupt = || StorageError::Corrupt("ballot".into());
    let counter = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    let node = bytes
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(corrupt)?;
    Ok(Ballot::new(
        u64::from_be_bytes(counter),
        u64::from_be_bytes(node),
    ))
}

fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::Corrupt("u64".into()))
}

fn codec_error(e: codec::CodecError) -> StorageError {
    StorageError::Corrupt(format!("consensus record: {e}"))
}

impl<'a> ConsensusStore<'a> {
    pub fn new(store: &'a Store) -> ConsensusStore<'a> {
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        ConsensusStore { store, synced }
    }

    /// Makes a `Ready`'s persistence writes durable, in one synced batch.
    pub fn write(&self, ops: &[PersistOp]) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let acceptor = self.store.cf(CF_ACCEPTOR);
        let log = self.store.cf(CF_LOG);
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                PersistOp::Promise { group, ballot } => {
                    batch.put_cf(
                        acceptor,
                        group_key(Some(PROMISE), group, None),
                        encode_ballot(*ballot),
                    );
                }
                PersistOp::Accept {
                    group,
                    slot,
                    ballot,
                    command,
                } => {
                    let mut w = Writer::versioned();
                    w.ballot(*ballot);
                    w.command(command);
                    batch.put_cf(
                        acceptor,
                        group_key(Some(ACCEPTED), group, Some(*slot)),
                        w.finish(),
                    );
                }
                PersistOp::Commit {
                    group,
                    slot,
                    command,
                } => {
                    batch.put_cf(
                        log,
                        group_key(None, group, Some(*slot)),
                        codec::encode_command(command),
                    );
                }
            }
        }
        self.store.db.write_opt(batch, &self.synced)?;
        Ok(())
    }

    /// Records how far a group has been applied to the data, and drops accepted entries up
    /// to there (they are in the log). Call after applying; a crash in between re-applies
    /// entries, which is harmless since the log replays in the same order.
    pub fn mark_applied(&self, group: &str, slot: Slot) -> Result<(), StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        let mut batch = WriteBatch::default();
        batch.put_cf(
            acceptor,
            group_key(Some(APPLIED), group, None),
            slot.to_be_bytes(),
        );
        batch.delete_range_cf(
            acceptor,
            group_key(Some(ACCEPTED), group, Some(0)),
            group_key(Some(ACCEPTED), group, Some(slot.saturating_add(1))),
        );
        self.store.db.write_opt(batch, &self.synced)?;
        Ok(())
    }

    /// Bumps and returns the incarnation (command ids stay unique across restarts).
    pub fn next_incarnation(&self) -> Result<u64, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        let current = match self.store.db.get_cf(acceptor, INCARNATION)? {
            Some(bytes) => decode_u64(&bytes)?,
            None => 0,
        };
        let next = current + 1;
        self.store
            .db
            .put_cf_opt(acceptor, INCARNATION, next.to_be_bytes(), &self.synced)?;
        Ok(next)
    }

    /// Everything a restarting node needs: promises, accepted entries, the log and the
    /// applied slot of every group.
    pub fn recover(&self) -> Result<Recovered, StorageError> {
        let mut groups: BTreeMap<GroupId, RecoveredGroup> = BTreeMap::new();
        let acceptor = self.store.cf(CF_ACCEPTOR);
        for item in self.store.db.iterator_cf(acceptor, IteratorMode::Start) {
            let (key, value) = item?;
            let Some((tag, rest)) = key.split_first() else {
                continue;
            };
            match *tag {
                PROMISE => {
                    let (group, _) = parse_group_key(rest)?;
                    groups.entry(group).or_default().promised = decode_ballot(&value)?;
                }
                ACCEPTED => {
                    let (group, slot) = parse_group_key(rest)?;
                    let slot = slot.ok_or_else(|| StorageError::Corrupt("accepted slot".into()))?;
                    let mut r = Reader::versioned(&value).map_err(codec_error)?;
                    let ballot = r.ballot().map_err(codec_error)?;
                    let command: Command = r.command().map_err(codec_error)?;
                    groups
                        .entry(group)
                        .or_default()
                        .accepted
                        .insert(slot, (ballot, command));
                }
                APPLIED => {
                    let (group, _) = parse_group_key(rest)?;
                    groups.entry(group).or_default().applied = decode_u64(&value)?;
                }
                _ => {}
            }
        }
        let log = self.store.cf(CF_LOG);
        for item in self
            .store
            .db
            .iterator_cf(log, IteratorMode::From(&[], Direction::Forward))
        {
            let (key, value) = item?;
            let (group, slot) = parse_group_key(&key)?;
            let slot = slot.ok_or_else(|| StorageError::Corrupt("log slot".into()))?;
            let command = codec::decode_command(&value).map_err(codec_error)?;
            groups.entry(group).or_default().log.insert(slot, command);
        }
        // A promise is at least the highest ballot accepted.
        for g in groups.values_mut() {
            if let Some(max) = g.accepted.values().map(|(b, _)| *b).max() {
                g.promised = g.promised.max(max);
            }
        }
        Ok(Recovered { groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::consensus::{ClientOp, CommandId, CommandOp, Membership, Node, Outcome, Settings};

    fn command(seq: u64) -> Command {
        Command {
            id: CommandId { origin: 1, seq },
            op: CommandOp::Put {
                key: format!("users.k{seq}"),
                value: vec![seq as u8],
            },
        }
    }

    #[test]
    fn writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
            let cs = ConsensusStore::new(&store);
            cs.write(&[
                PersistOp::Promise {
                    group: "users".into(),
                    ballot: Ballot::new(3, 2),
                },
                PersistOp::Accept {
                    group: "users".into(),
                    slot: 1,
                    ballot: Ballot::new(3, 2),
                    command: command(1),
                },
                PersistOp::Accept {
                    group: "users".into(),
                    slot: 2,
                    ballot: Ballot::new(3, 2),
                    command: command(2),
                },
                PersistOp::Commit {
                    group: "users".into(),
                    slot: 1,
                    command: command(1),
                },
                PersistOp::Promise {
                    group: "shop".into(),
                    ballot: Ballot::new(1, 1),
                },
            ])
            .unwrap();
            cs.mark_applied("users", 1).unwrap();
            assert_eq!(cs.next_incarnation().unwrap(), 1);
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let cs = ConsensusStore::new(&store);
        let r = cs.recover().unwrap();
        let users = &r.groups["users"];
        assert_eq!(users.promised, Ballot::new(3, 2));
        assert_eq!(users.applied, 1);
        assert_eq!(users.log.get(&1), Some(&command(1)));
        // Slot 1 is applied, so only slot 2 stays accepted.
        assert_eq!(users.accepted.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(r.groups["shop"].promised, Ballot::new(1, 1));
        assert_eq!(cs.next_incarnation().unwrap(), 2);
    }

    /// Drives a one-node cluster through RocksDB, restarts it, and checks it recovers its
    /// promise, accepted entries and applied slot, then keeps serving with a higher ballot.
    #[test]
    fn restarted_node_recovers_from_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let membership = Membership::new([(1, "z".to_string())]);
        let settings = Settings::default();
        let mut applied_before = 0;
        let promised_before;
        {
            let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
            let cs = ConsensusStore::new(&store);
            let incarnation = cs.next_incarnation().unwrap();
            let mut node = Node::new(
                1,
                "z".into(),
                membership.clone(),
                settings.clone(),
                incarnation,
                7,
                0,
            );
            let mut written = 0;
            for i in 0..5u64 {
                let op = ClientOp::Put {
                    key: format!("users.k{i}"),
                    value: vec![i as u8],
                };
                node.client_request(i, i, op);
                let ready = node.take_ready();
                cs.write(&ready.persist).unwrap();
                for a in &ready.apply {
                    cs.mark_applied(&a.group, a.slot).unwrap();
                    applied_before = a.slot;
                }
                written += ready
                    .completions
                    .iter()
                    .filter(|c| c.outcome == Outcome::Written)
                    .count();
            }
            assert_eq!(written, 5);
            promised_before = cs.recover().unwrap().groups["users"].promised;
            assert!(!promised_before.is_zero());
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let cs = ConsensusStore::new(&store);
        let recovered = cs.recover().unwrap();
        assert_eq!(recovered.groups["users"].applied, applied_before);
        assert_eq!(recovered.groups["users"].promised, promised_before);
        let incarnation = cs.next_incarnation().unwrap();
        let start = 10_000;
        let mut node = Node::recover(
            1,
            "z".into(),
            membership,
            settings.clone(),
            recovered,
            incarnation,
            8,
            start,
        );
        assert_eq!(node.applied("users"), applied_before);
        // Quiet for one lease after a restart, then it takes the table again.
        let mut now = start;
        node.client_request(
            now,
            100,
            ClientOp::Put {
                key: "users.k9".into(),
                value: vec![9],
            },
        );
        let mut done = false;
        while now < start + 3 * settings.lease_ms && !done {
            now += 10;
            node.tick(now);
            let ready = node.take_ready();
            cs.write(&ready.persist).unwrap();
            done = ready
                .completions
                .iter()
                .any(|c| c.request == 100 && c.outcome == Outcome::Written);
        }
        assert!(done, "the restarted node serves writes again");
        assert_eq!(node.applied("users"), applied_before + 1);
        let after = cs.recover().unwrap().groups["users"].promised;
        assert!(after > promised_before);
    }
}
