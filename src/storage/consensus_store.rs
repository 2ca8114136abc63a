//! RocksDB persistence of the consensus core, in the `acceptor` column family. Votes are
//! written in the same atomic batch as the data of the entries applied with them (see
//! `consensus::ready`); the caller syncs the batch when it holds votes.
//!
//! Keys (`group` as a u16 BE length and its bytes, slots as u64 BE so they sort):
//!
//! | key | value |
//! |---|---|
//! | `P` group | the promised ballot (counter, node: u64 BE each) |
//! | `A` group slot | versioned: accepted ballot, then the command (until applied) |
//! | `S` group | the group's state: applied slot, seal epoch, de-duplication window |
//! | `C` | the configuration applied from the `atlas` group |
//! | `N` group | a snapshot of the group is being installed: its data is torn until the mark goes |
//! | `I` | the incarnation counter (u64 BE) |
//!
//! Nothing of the applied history is kept: restart reads the votes and the states, so its
//! time and memory do not depend on how much was ever written.

use rocksdb::{IteratorMode, WriteBatch};

use super::{CF_ACCEPTOR, StorageError, Store};
use crate::consensus::codec::{Reader, Writer};
use crate::consensus::{
    Ballot, Command, Config, GroupId, GroupState, PersistOp, Recovered, Slot, codec,
};

const PROMISE: u8 = b'P';
const ACCEPTED: u8 = b'A';
const STATE: u8 = b'S';
const CONFIG: &[u8] = b"C";
const INSTALLING: u8 = b'N';
const INCARNATION: &[u8] = b"I";

/// The consensus view of a [`Store`].
pub struct ConsensusStore<'a> {
    store: &'a Store,
}

fn group_key(tag: u8, group: &str, slot: Option<Slot>) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + 11);
    key.push(tag);
    let len = u16::try_from(group.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&group.as_bytes()[..len as usize]);
    if let Some(slot) = slot {
        key.extend_from_slice(&slot.to_be_bytes());
    }
    key
}

/// Splits `[len][group][slot?]` (after the tag byte).
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
        ConsensusStore { store }
    }

    /// Adds a `Ready`'s persistence ops to `batch` (written by the caller with the data).
    pub fn stage(&self, batch: &mut WriteBatch, ops: &[PersistOp]) {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        for op in ops {
            match op {
                PersistOp::Promise { group, ballot } => {
                    batch.put_cf(
                        acceptor,
                        group_key(PROMISE, group, None),
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
                        group_key(ACCEPTED, group, Some(*slot)),
                        w.finish(),
                    );
                }
                PersistOp::State { group, state } => self.stage_state(batch, group, state),
                PersistOp::Forget { group, slots } => {
                    for slot in slots {
                        batch.delete_cf(acceptor, group_key(ACCEPTED, group, Some(*slot)));
                    }
                }
                PersistOp::Config(config) => self.stage_config(batch, config),
            }
        }
    }

    /// The group's state (applied slot, seal, de-duplication window).
    pub fn stage_state(&self, batch: &mut WriteBatch, group: &str, state: &GroupState) {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        batch.put_cf(acceptor, group_key(STATE, group, None), state.encode());
    }

    /// Every accepted entry of `group` up to `slot` goes (a snapshot installed there: one
    /// range delete, rare).
    pub fn stage_forget_through(&self, batch: &mut WriteBatch, group: &str, slot: Slot) {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        batch.delete_range_cf(
            acceptor,
            group_key(ACCEPTED, group, Some(0)),
            group_key(ACCEPTED, group, Some(slot.saturating_add(1))),
        );
    }

    pub fn stage_config(&self, batch: &mut WriteBatch, config: &Config) {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        batch.put_cf(acceptor, CONFIG, codec::encode_config(config));
    }

    /// Marks (or unmarks) a group whose data a snapshot install is replacing.
    pub fn stage_installing(&self, batch: &mut WriteBatch, group: &str, installing: bool) {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        let key = group_key(INSTALLING, group, None);
        if installing {
            batch.put_cf(acceptor, key, b"1");
        } else {
            batch.delete_cf(acceptor, key);
        }
    }

    /// The state a group's data is at (default when nothing was applied).
    pub fn state(&self, group: &str) -> Result<GroupState, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        match self
            .store
            .db
            .get_cf(acceptor, group_key(STATE, group, None))?
        {
            Some(bytes) => GroupState::decode(&bytes).map_err(codec_error),
            None => Ok(GroupState::default()),
        }
    }

    /// A group's state as `snapshot` saw it.
    pub fn state_in(
        &self,
        snapshot: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
        group: &str,
    ) -> Result<GroupState, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        match snapshot.get_cf(acceptor, group_key(STATE, group, None))? {
            Some(bytes) => GroupState::decode(&bytes).map_err(codec_error),
            None => Ok(GroupState::default()),
        }
    }

    /// The configuration as `snapshot` saw it.
    pub fn config_in(
        &self,
        snapshot: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    ) -> Result<Option<Config>, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        snapshot
            .get_cf(acceptor, CONFIG)?
            .map(|bytes| codec::decode_config(&bytes).map_err(codec_error))
            .transpose()
    }

    /// The configuration applied here, if the `atlas` group ever changed it.
    pub fn config(&self) -> Result<Option<Config>, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        self.store
            .db
            .get_cf(acceptor, CONFIG)?
            .map(|bytes| codec::decode_config(&bytes).map_err(codec_error))
            .transpose()
    }

    /// Every group this node has a state for (what a whole-node snapshot copies).
    pub fn groups(&self) -> Result<Vec<GroupId>, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        let mut groups = Vec::new();
        let start = [STATE];
        let mode = rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward);
        for item in self.store.db.iterator_cf(acceptor, mode) {
            let (key, _) = item?;
            let Some((&STATE, rest)) = key.split_first() else {
                break;
            };
            groups.push(parse_group_key(rest)?.0);
        }
        Ok(groups)
    }

    /// Bumps and returns the incarnation (command ids stay unique across restarts).
    pub fn next_incarnation(&self) -> Result<u64, StorageError> {
        let acceptor = self.store.cf(CF_ACCEPTOR);
        let current = match self.store.db.get_cf(acceptor, INCARNATION)? {
            Some(bytes) => decode_u64(&bytes)?,
            None => 0,
        };
        let next = current + 1;
        self.store.db.put_cf_opt(
            acceptor,
            INCARNATION,
            next.to_be_bytes(),
            &self.store.synced,
        )?;
        Ok(next)
    }

    /// Everything a restarting node needs: promises, accepted entries above the applied
    /// slots, the group states, the configuration, and the groups whose snapshot install
    /// was interrupted (their data must be wiped first).
    pub fn recover(&self) -> Result<(Recovered, Vec<GroupId>), StorageError> {
        let mut recovered = Recovered::default();
        let mut installing = Vec::new();
        let acceptor = self.store.cf(CF_ACCEPTOR);
        for item in self.store.db.iterator_cf(acceptor, IteratorMode::Start) {
            let (key, value) = item?;
            let Some((tag, rest)) = key.split_first() else {
                continue;
            };
            match *tag {
                PROMISE => {
                    let (group, _) = parse_group_key(rest)?;
                    recovered.groups.entry(group).or_default().promised = decode_ballot(&value)?;
                }
                ACCEPTED => {
                    let (group, slot) = parse_group_key(rest)?;
                    let slot = slot.ok_or_else(|| StorageError::Corrupt("accepted slot".into()))?;
                    let mut r = Reader::versioned(&value).map_err(codec_error)?;
                    let ballot = r.ballot().map_err(codec_error)?;
                    let command: Command = r.command().map_err(codec_error)?;
                    recovered
                        .groups
                        .entry(group)
                        .or_default()
                        .accepted
                        .insert(slot, (ballot, command));
                }
                STATE => {
                    let (group, _) = parse_group_key(rest)?;
                    recovered.groups.entry(group).or_default().state =
                        GroupState::decode(&value).map_err(codec_error)?;
                }
                INSTALLING => installing.push(parse_group_key(rest)?.0),
                _ if *key == *CONFIG => {
                    recovered.config = Some(codec::decode_config(&value).map_err(codec_error)?);
                }
                _ => {}
            }
        }
        for g in recovered.groups.values_mut() {
            let applied = g.state.applied;
            g.accepted = g.accepted.split_off(&(applied + 1));
            // A promise is at least the highest ballot accepted.
            if let Some(max) = g.accepted.values().map(|(b, _)| *b).max() {
                g.promised = g.promised.max(max);
            }
        }
        Ok((recovered, installing))
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
            floor: 0,
            op: CommandOp::Put {
                key: format!("users.k{seq}"),
                value: vec![seq as u8].into(),
            },
        }
    }

    fn write(store: &Store, ops: &[PersistOp]) {
        let cs = ConsensusStore::new(store);
        let mut batch = WriteBatch::default();
        cs.stage(&mut batch, ops);
        store.db.write_opt(batch, &store.synced).unwrap();
    }

    #[test]
    fn writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = GroupState {
            applied: 1,
            sealed: 0,
            dedup: Default::default(),
        };
        state.dedup.record(&command(1).id, 0);
        let config = Config::new(Membership::new([(1, "a".to_string())]));
        {
            let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
            write(
                &store,
                &[
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
                    PersistOp::State {
                        group: "users".into(),
                        state: state.clone(),
                    },
                    PersistOp::Promise {
                        group: "shop".into(),
                        ballot: Ballot::new(1, 1),
                    },
                    PersistOp::Config(config.clone()),
                ],
            );
            let cs = ConsensusStore::new(&store);
            assert_eq!(cs.next_incarnation().unwrap(), 1);
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let cs = ConsensusStore::new(&store);
        let (r, installing) = cs.recover().unwrap();
        assert!(installing.is_empty());
        let users = &r.groups["users"];
        assert_eq!(users.promised, Ballot::new(3, 2));
        assert_eq!(users.state, state);
        // Slot 1 is applied, so only slot 2 stays accepted.
        assert_eq!(users.accepted.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!(r.groups["shop"].promised, Ballot::new(1, 1));
        assert_eq!(r.config, Some(config));
        assert_eq!(cs.next_incarnation().unwrap(), 2);
        assert_eq!(cs.state("users").unwrap(), state);
        assert_eq!(cs.state("none").unwrap(), GroupState::default());
    }

    #[test]
    fn an_interrupted_install_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let cs = ConsensusStore::new(&store);
        let mut batch = WriteBatch::default();
        cs.stage_installing(&mut batch, "users", true);
        store.db.write(batch).unwrap();
        assert_eq!(cs.recover().unwrap().1, vec!["users".to_string()]);
        let mut batch = WriteBatch::default();
        cs.stage_installing(&mut batch, "users", false);
        store.db.write(batch).unwrap();
        assert!(cs.recover().unwrap().1.is_empty());
    }

    /// Drives a one-node cluster through RocksDB, restarts it, and checks it recovers its
    /// promise and applied slot, then keeps serving with a higher ballot.
    #[test]
    fn restarted_node_recovers_from_rocksdb() {
        let dir = tempfile::tempdir().unwrap();
        let membership = Membership::new([(1, "z".to_string())]);
        let settings = Settings::default();
        // The core's contract, reduced to what one node needs: persist, then votes to self.
        fn run(node: &mut Node, store: &Store, now: u64) -> Vec<Outcome> {
            let mut outcomes = Vec::new();
            loop {
                let ready = node.take_ready();
                if ready.is_empty() {
                    return outcomes;
                }
                write(store, &ready.persist);
                for out in ready.after_persist {
                    node.step(now, out.to, out.message);
                }
                outcomes.extend(ready.completions.into_iter().map(|c| c.outcome));
            }
        }
        let applied_before;
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
                let op = ClientOp::put(format!("users.k{i}"), vec![i as u8]);
                node.client_request(i, i, op);
                written += run(&mut node, &store, i)
                    .iter()
                    .filter(|o| **o == Outcome::Written)
                    .count();
            }
            assert_eq!(written, 5);
            applied_before = node.applied("users");
            let (recovered, _) = cs.recover().unwrap();
            promised_before = recovered.groups["users"].promised;
            assert_eq!(recovered.groups["users"].state.applied, applied_before);
            assert!(recovered.groups["users"].accepted.is_empty());
            assert!(!promised_before.is_zero());
            store.close().unwrap();
        }
        let store = Store::open(dir.path(), Durability::Relaxed).unwrap();
        let cs = ConsensusStore::new(&store);
        let (recovered, _) = cs.recover().unwrap();
        assert_eq!(recovered.groups["users"].state.applied, applied_before);
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
        node.client_request(now, 100, ClientOp::put("users.k9", vec![9]));
        let mut done = run(&mut node, &store, now).contains(&Outcome::Written);
        while now < start + 3 * settings.lease_ms && !done {
            now += 10;
            node.tick(now);
            done = run(&mut node, &store, now).contains(&Outcome::Written);
        }
        assert!(done, "the restarted node serves writes again");
        assert_eq!(node.applied("users"), applied_before + 1);
        let after = cs.recover().unwrap().0.groups["users"].promised;
        assert!(after > promised_before);
    }
}
