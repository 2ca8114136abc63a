//! Message-level tests of one node, with the other nodes played by hand.

use std::collections::BTreeMap;

use super::*;
use crate::consensus::message::{AcceptedEntry, ForwardOutcome, SlotEntry};
use crate::consensus::{
    ClientOp, CommandId, CommandOp, MigrationMode, Outcome, PersistOp, Tolerances,
};

pub(super) fn three_nodes() -> Membership {
    Membership::new((1..=3).map(|n| (n, "z".to_string())))
}

pub(super) fn settings() -> Settings {
    Settings {
        tolerances: Tolerances { nodes: 1, zones: 0 },
        // No leases: no quiet period after the restart these tests start from.
        migration: MigrationMode::Immediate,
        ..Settings::default()
    }
}

pub(super) fn put(origin: u64, seq: u64, key: &str) -> Command {
    Command {
        id: CommandId { origin, seq },
        floor: 0,
        op: CommandOp::Put {
            key: key.into(),
            value: vec![seq as u8].into(),
        },
    }
}

/// What the driver does with a node's output when storage is not the point: votes for this
/// node are stepped back in (as after the durable write); everything else is collected.
pub(super) fn drain(node: &mut Node, now: u64) -> Ready {
    let mut all = Ready::default();
    loop {
        let mut ready = node.take_ready();
        if ready.is_empty() {
            return all;
        }
        let votes = std::mem::take(&mut ready.after_persist);
        all.persist.extend(ready.persist);
        all.messages.extend(ready.messages);
        all.apply.extend(ready.apply);
        all.completions.extend(ready.completions);
        all.snapshots.extend(ready.snapshots);
        for vote in votes {
            if vote.to == node.id() {
                node.step(now, vote.to, vote.message);
            } else {
                all.after_persist.push(vote);
            }
        }
    }
}

pub(super) fn promise(ballot: Ballot, accepted: Vec<AcceptedEntry>) -> Message {
    Message::Promise {
        group: "users".into(),
        ballot,
        token: 0,
        applied: 0,
        accepted,
        sealed: 0,
        page: 0,
        pages: 1,
    }
}

pub(super) fn prepare_ballot(ready: &Ready) -> Ballot {
    ready
        .messages
        .iter()
        .find_map(|m| match &m.message {
            Message::Prepare { ballot, .. } => Some(*ballot),
            _ => None,
        })
        .expect("a prepare")
}

pub(super) fn accepts_to(ready: &Ready, to: NodeId) -> BTreeMap<Slot, Command> {
    ready
        .messages
        .iter()
        .filter(|m| m.to == to)
        .filter_map(|m| match &m.message {
            Message::Accept { entries, .. } => Some(entries.clone()),
            _ => None,
        })
        .flatten()
        .map(|SlotEntry { slot, command }| (slot, command))
        .collect()
}

/// Node 1 restarts with slots 1 and 2 accepted at ballot 1.2 (node 2 owned the table); node 2
/// promises with slot 1 at the higher ballot 1.3 (node 3 owned it later) and slot 4 at 1.2. The new owner must re-propose the
/// highest-ballot value per slot, fill hole 3 with a no-op, and put new commands after them.
#[test]
fn phase1_reproposes_the_highest_ballot_per_slot_and_fills_holes() {
    let mut recovered = Recovered::default();
    let group = recovered.groups.entry("users".to_string()).or_default();
    group.promised = Ballot::new(1, 2);
    group
        .accepted
        .insert(1, (Ballot::new(1, 2), put(2, 1, "users.x")));
    group
        .accepted
        .insert(2, (Ballot::new(1, 2), put(2, 2, "users.y")));
    let mut node = Node::recover(1, "z".into(), three_nodes(), settings(), recovered, 2, 1, 0);
    node.client_request(0, 77, ClientOp::put("users.new", vec![1]));
    let ballot = prepare_ballot(&drain(&mut node, 0));
    assert_eq!(ballot, Ballot::new(2, 1));
    let accepted = [
        AcceptedEntry {
            slot: 1,
            ballot: Ballot::new(1, 3),
            command: put(3, 1, "users.a"),
        },
        AcceptedEntry {
            slot: 4,
            ballot: Ballot::new(1, 2),
            command: put(2, 4, "users.d"),
        },
    ];
    // The entries arrive in two pages: the promise counts once both did.
    let (first, second) = accepted.split_at(1);
    let mut page = promise(ballot, first.to_vec());
    if let Message::Promise { pages, .. } = &mut page {
        *pages = 2;
    }
    node.step(1, 2, page.clone());
    assert!(
        !node.is_owner("users"),
        "one page of two is not a promise yet"
    );
    node.step(1, 2, page);
    assert!(!node.is_owner("users"), "a page twice is still one");
    let mut page = promise(ballot, second.to_vec());
    if let Message::Promise { page: n, pages, .. } = &mut page {
        *n = 1;
        *pages = 2;
    }
    node.step(1, 2, page);
    assert!(node.is_owner("users"));
    let ready = drain(&mut node, 1);
    let proposed = accepts_to(&ready, 2);
    assert_eq!(
        proposed.get(&1),
        Some(&put(3, 1, "users.a")),
        "higher ballot wins slot 1"
    );
    assert_eq!(
        proposed.get(&2),
        Some(&put(2, 2, "users.y")),
        "own accepted entry kept"
    );
    assert_eq!(
        proposed.get(&3).map(|c| &c.op),
        Some(&CommandOp::Noop),
        "hole filled"
    );
    assert_eq!(proposed.get(&4), Some(&put(2, 4, "users.d")));
    let new = proposed
        .get(&5)
        .expect("the new command after the recovered slots");
    assert!(matches!(&new.op, CommandOp::Put { key, .. } if key == "users.new"));
    assert!(
        ready.completions.is_empty(),
        "nothing acknowledged before a Q2 accepted"
    );

    // Node 2 accepts everything: with node 1 itself that is a Q2; the write is acknowledged
    // only once applied, after slots 1..4.
    let slots = proposed.keys().copied().collect();
    node.step(
        2,
        2,
        Message::Accepted {
            group: "users".into(),
            ballot,
            slots,
            applied: 0,
        },
    );
    let ready = drain(&mut node, 2);
    let applied: Vec<Slot> = ready.apply.iter().map(|a| a.slot).collect();
    assert_eq!(applied, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        ready.completions,
        vec![Completion {
            request: 77,
            outcome: Outcome::Written
        }]
    );
}

/// An owner that learns a higher ballot before its write reaches a Q2 never acknowledges it,
/// even if an acceptance for its old ballot arrives later.
#[test]
fn a_deposed_owner_never_acknowledges_a_write_it_did_not_commit() {
    let mut node = Node::new(1, "z".into(), three_nodes(), settings(), 1, 1, 0);
    node.client_request(0, 5, ClientOp::put("users.k", vec![1]));
    let ballot = prepare_ballot(&drain(&mut node, 0));
    node.step(1, 2, promise(ballot, vec![]));
    let proposed = accepts_to(&drain(&mut node, 1), 2);
    assert_eq!(proposed.len(), 1);
    // Node 3 takes over: its prepare reaches node 1, which promises and steps down.
    let higher = Ballot::new(ballot.counter + 1, 3);
    node.step(
        2,
        3,
        Message::Prepare {
            group: "users".into(),
            ballot: higher,
            token: 0,
            handoff_from: None,
            epoch: 0,
        },
    );
    assert!(!node.is_owner("users"));
    node.step(
        3,
        2,
        Message::Accepted {
            group: "users".into(),
            ballot,
            slots: vec![1],
            applied: 0,
        },
    );
    let ready = drain(&mut node, 3);
    assert!(ready.completions.is_empty(), "{:?}", ready.completions);
    assert!(ready.apply.is_empty());
}

/// Tables of one group share the ballot and the owner.
#[test]
fn grouped_tables_move_together() {
    let mut s = settings();
    s.groups.insert("orders".into(), "shop".into());
    s.groups.insert("items".into(), "shop".into());
    let one = Membership::new([(1, "z".to_string())]);
    let mut node = Node::new(1, "z".into(), one, s, 1, 1, 0);
    node.client_request(0, 1, ClientOp::put("orders.1", vec![1]));
    let mut ready = drain(&mut node, 0);
    node.client_request(1, 2, ClientOp::put("items.1", vec![2]));
    let later = drain(&mut node, 1);
    ready.completions.extend(later.completions);
    ready.apply.extend(later.apply);
    assert_eq!(ready.completions.len(), 2);
    assert!(ready.apply.iter().all(|a| a.group == "shop"));
    assert_eq!(node.group_of("orders"), node.group_of("items"));
    assert!(node.is_owner("shop"));
    assert_eq!(node.applied("shop"), 2);
}

/// A message from a newer configuration epoch is not answered and does not change this node's
/// configuration: the node fetches the `atlas` log from the sender instead. A request of an
/// older epoch is refused with this node's epoch.
#[test]
fn a_newer_epoch_in_a_message_is_never_adopted() {
    let mut node = Node::new(1, "z".into(), three_nodes(), settings(), 1, 1, 0);
    let prepare = |epoch| Message::Prepare {
        group: "users".into(),
        ballot: Ballot::new(5, 2),
        token: 0,
        handoff_from: None,
        epoch,
    };
    node.step(1_000, 2, prepare(7));
    let ready = drain(&mut node, 1_000);
    assert!(ready.persist.is_empty(), "no promise for another epoch");
    assert!(
        ready
            .messages
            .iter()
            .chain(&ready.after_persist)
            .all(|m| !matches!(m.message, Message::Promise { .. }))
    );
    assert!(ready.messages.iter().any(|m| m.to == 2
        && matches!(&m.message, Message::CatchUp { group, from: 1, .. } if group == SYSTEM_GROUP)));
    assert_eq!(node.config().epoch, 0);
    assert_eq!(node.membership().len(), 3);
    // Committed `atlas` entries do change it: joint first, then the new membership.
    let add = Command {
        id: CommandId { origin: 2, seq: 1 },
        floor: 0,
        op: CommandOp::AddNode {
            node: 4,
            zone: "y".into(),
        },
    };
    let commit = |slot, command| Message::Commit {
        group: SYSTEM_GROUP.into(),
        ballot: Ballot::new(1, 2),
        slots: vec![],
        entries: vec![SlotEntry { slot, command }],
    };
    node.step(1_001, 2, commit(1, add));
    // The new configuration is persisted with the group's state.
    let ready = drain(&mut node, 1_001);
    assert!(
        ready
            .persist
            .iter()
            .any(|op| matches!(op, PersistOp::Config(c) if c.epoch == 1))
    );
    assert_eq!(node.config().epoch, 1);
    assert!(node.config().is_joint() && node.joint_quorums().is_joint());
    assert_eq!(node.membership().len(), 4);
    // Now an epoch-0 request is refused, with the epoch.
    node.step(1_002, 2, prepare(0));
    let ready = drain(&mut node, 1_002);
    assert!(
        ready
            .messages
            .iter()
            .any(|m| m.to == 2 && matches!(m.message, Message::Reject { epoch: 1, .. }))
    );
    let leave = |epoch| Command {
        id: CommandId { origin: 2, seq: 0 },
        floor: 0,
        op: CommandOp::LeaveJoint { epoch },
    };
    // A `LeaveJoint` of another epoch changes nothing; the joint one's does.
    node.step(1_003, 2, commit(2, leave(0)));
    drain(&mut node, 1_003);
    assert!(node.config().is_joint());
    node.step(1_003, 2, commit(3, leave(1)));
    drain(&mut node, 1_003);
    assert_eq!(node.config().epoch, 2);
    assert!(!node.config().is_joint());
    assert_eq!(
        node.config().current.zone_of(4).map(String::as_str),
        Some("y")
    );
}

/// Two candidates at the same ballot counter: the one in the higher zone wins even against a
/// higher node id (it retries one counter up at once), the other gives way.
#[test]
fn concurrent_steals_break_ties_on_zone_then_node() {
    let members = Membership::new([
        (1, "b".to_string()),
        (2, "a".to_string()),
        (3, "a".to_string()),
    ]);
    let s = Settings {
        tolerances: Tolerances { nodes: 0, zones: 1 },
        ..settings()
    };
    // Node 1 (zone b) is taking the group with counter 1.
    let mut node = Node::new(1, "b".into(), members.clone(), s.clone(), 1, 1, 0);
    node.client_request(0, 1, ClientOp::put("users.k", vec![1]));
    let mine = prepare_ballot(&drain(&mut node, 0));
    assert_eq!(mine, Ballot::new(1, 1));
    // Node 3 (zone a, higher id) prepares at the same counter: node 1's acceptor promises
    // it (ballots order by id), but node 1 wins the tie on zone and goes one counter up.
    node.step(
        1,
        3,
        Message::Prepare {
            group: "users".into(),
            ballot: Ballot::new(1, 3),
            token: 0,
            handoff_from: None,
            epoch: 0,
        },
    );
    assert_eq!(prepare_ballot(&drain(&mut node, 1)), Ballot::new(2, 1));
    // Node 3 in turn gives way when it hears node 1's prepare at its own counter.
    let mut other = Node::new(3, "a".into(), members, s, 1, 1, 0);
    other.client_request(0, 1, ClientOp::put("users.k", vec![1]));
    assert_eq!(prepare_ballot(&drain(&mut other, 0)), Ballot::new(1, 3));
    other.step(
        1,
        1,
        Message::Prepare {
            group: "users".into(),
            ballot: Ballot::new(1, 1),
            token: 0,
            handoff_from: None,
            epoch: 0,
        },
    );
    drain(&mut other, 1);
    // Its own acceptor promised 1.3, so node 1's 1.1 is refused, but node 3 stopped its
    // candidacy: a promise from node 2 no longer makes it owner.
    other.step(2, 2, promise(Ballot::new(1, 3), vec![]));
    assert!(!other.is_owner("users"));
}

/// After the membership grew, a new table's first owner has nothing to recover: it seals the
/// group under the new configuration in the slot before the first write, so the write's
/// commit commits the seal, and a takeover right after it needs no quorum of a membership
/// that ended (which may need a node that is gone; found by a real 3-region test).
#[test]
fn a_new_owner_with_nothing_to_recover_seals_before_the_first_write() {
    // Regions a and b, then c joins; each region one node, `fz: 1`.
    let two = Membership::new([(1, "a".to_string()), (2, "b".to_string())]);
    let settings = Settings {
        tolerances: Tolerances { nodes: 0, zones: 1 },
        ..settings()
    };
    let mut node = Node::new(1, "a".into(), two, settings, 1, 1, 0);
    let commit = |slot, op| Message::Commit {
        group: SYSTEM_GROUP.into(),
        ballot: Ballot::new(1, 2),
        slots: vec![],
        entries: vec![SlotEntry {
            slot,
            command: Command {
                id: CommandId {
                    origin: 2,
                    seq: slot,
                },
                floor: 0,
                op,
            },
        }],
    };
    node.step(
        1_000,
        2,
        commit(
            1,
            CommandOp::AddNode {
                node: 3,
                zone: "c".into(),
            },
        ),
    );
    node.step(1_000, 2, commit(2, CommandOp::LeaveJoint { epoch: 1 }));
    drain(&mut node, 1_000);
    assert_eq!(node.config().epoch, 2);
    node.client_request(2_000, 7, ClientOp::put("users.a", b"v".to_vec()));
    let ready = drain(&mut node, 2_000);
    let ballot = prepare_ballot(&ready);
    node.step(2_001, 2, promise(ballot, vec![]));
    let ready = drain(&mut node, 2_001);
    let accepts = accepts_to(&ready, 2);
    assert!(
        matches!(
            accepts.get(&1).map(|c| &c.op),
            Some(CommandOp::Seal { epoch: 2 })
        ),
        "{accepts:?}"
    );
    assert!(
        matches!(accepts.get(&2).map(|c| &c.op), Some(CommandOp::Put { .. })),
        "{accepts:?}"
    );
}

/// Hostile or corrupted peer input: every sample message, with random bytes of its encoding
/// changed, that still decodes is stepped into a node (as from any node id, member or not),
/// with ticks between. The handler must never panic, and what it answers stays small.
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn mutated_messages_never_panic_the_handler(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            from in 0u64..6,
            now in 0u64..100_000,
        ) {
            let mut node = Node::new(1, "z".into(), three_nodes(), settings(), 1, 1, 0);
            let samples = crate::consensus::message::tests::samples();
            for sample in &samples {
                let mut bytes = sample.encode();
                for (at, value) in &edits {
                    // Past the version header, so most mutations still decode.
                    if bytes.len() > 2 {
                        let i = 2 + at % (bytes.len() - 2);
                        bytes[i] = *value;
                    }
                }
                let Ok(message) = Message::decode(&bytes) else { continue };
                node.step(now, from, message);
                node.tick(now + 10);
                let ready = drain(&mut node, now + 10);
                prop_assert!(
                    ready.messages.len() + ready.after_persist.len() < 10_000,
                    "one message made {} answers",
                    ready.messages.len() + ready.after_persist.len()
                );
            }
        }
    }

    #[test]
    fn every_sample_is_handled_from_every_sender() {
        for from in 0..6 {
            let mut node = Node::new(1, "z".into(), three_nodes(), settings(), 1, 1, 0);
            for message in crate::consensus::message::tests::samples() {
                node.step(1_000, from, message);
                node.tick(1_010);
                drain(&mut node, 1_010);
            }
        }
    }
}

/// A write forwarded to the owner completes at its origin only once the origin has applied
/// it too: the answer must be the verdict of its own application (a compare-and-set's
/// depends on the state it met), not the owner's word that it was committed.
#[test]
fn a_forwarded_write_completes_once_applied_at_its_origin() {
    // Not `Immediate` (which takes the group instead of forwarding to a live owner).
    let settings = Settings {
        migration: MigrationMode::Static,
        ..settings()
    };
    let mut node = Node::new(1, "z".into(), three_nodes(), settings, 1, 1, 0);
    let owner = Ballot {
        counter: 5,
        node: 2,
    };
    let heartbeat = Message::Heartbeat {
        group: "users".into(),
        ballot: owner,
        applied: 0,
    };
    node.step(1, 2, heartbeat);
    drain(&mut node, 1);
    let op = ClientOp::put("users.a", vec![1]);
    node.client_request(2, 9, op.clone());
    let ready = drain(&mut node, 2);
    let (id, floor) = ready
        .messages
        .iter()
        .find_map(|m| match &m.message {
            Message::Forward { id, floor, .. } if m.to == 2 => Some((*id, *floor)),
            _ => None,
        })
        .expect("forwarded to the owner");
    let written = Message::ForwardReply {
        group: "users".into(),
        id,
        outcome: ForwardOutcome::Written,
    };
    node.step(3, 2, written);
    let ready = drain(&mut node, 3);
    assert!(
        ready.completions.is_empty(),
        "not answered before it is applied here: {:?}",
        ready.completions
    );
    let commit = Message::Commit {
        group: "users".into(),
        ballot: owner,
        slots: Vec::new(),
        entries: vec![SlotEntry {
            slot: 1,
            command: op.to_command(id, floor),
        }],
    };
    node.step(4, 2, commit);
    let ready = drain(&mut node, 4);
    assert_eq!(ready.apply.iter().map(|a| a.slot).collect::<Vec<_>>(), [1]);
    assert_eq!(
        ready.completions,
        vec![Completion {
            request: 9,
            outcome: Outcome::Written
        }]
    );
}
