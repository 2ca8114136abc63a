//! What a node takes in from peers (`inbound.rs`) and the span bound of accepted slots.

use super::tests::{accepts_to, drain, prepare_ballot, promise, put, settings, three_nodes};
use super::*;
use crate::consensus::acceptor::MAX_SLOTS_AHEAD;
use crate::consensus::inbound::{MAX_GROUP_NAME_BYTES, Refused};
use crate::consensus::message::{AcceptedEntry, SlotEntry};
use crate::consensus::{ClientOp, CommandOp};

fn node() -> Node {
    Node::new(1, "z".into(), three_nodes(), settings(), 1, 1, 0)
}

fn prepare(group: &str, ballot: Ballot, epoch: u64) -> Message {
    Message::Prepare {
        group: group.into(),
        ballot,
        token: 0,
        handoff_from: None,
        epoch,
    }
}

/// A commit of `command` in slot 1 of `users` at `ballot`.
fn commit(ballot: Ballot, command: Command) -> Message {
    Message::Commit {
        group: "users".into(),
        ballot,
        slots: Vec::new(),
        entries: vec![SlotEntry { slot: 1, command }],
    }
}

fn refused(node: &Node, why: Refused) -> u64 {
    node.refused_messages().get(&why).copied().unwrap_or(0)
}

fn promised_to(ready: &Ready, to: NodeId) -> bool {
    let promises = ready.after_persist.iter().chain(&ready.messages);
    promises
        .filter(|m| m.to == to)
        .any(|m| matches!(m.message, Message::Promise { .. }))
}

#[test]
fn a_node_that_is_not_a_member_is_not_heard() {
    let mut node = node();
    // Node 9 is no member (a removed node, or one that holds a certificate and no seat).
    node.step(1, 9, prepare("users", Ballot::new(5, 9), 0));
    assert!(!promised_to(&drain(&mut node, 1), 9));
    assert_eq!(refused(&node, Refused::NotAMember), 1);
    node.step(2, 9, commit(Ballot::new(5, 9), put(9, 1, "users.forged")));
    drain(&mut node, 2);
    assert_eq!(
        node.applied("users"),
        0,
        "a non-member's commit is not learned"
    );
    // A member is heard.
    node.step(3, 2, prepare("users", Ballot::new(5, 2), 0));
    assert!(promised_to(&drain(&mut node, 3), 2));
}

#[test]
fn a_member_cannot_speak_for_another_nodes_ballot() {
    let mut node = node();
    // Node 2 sends a prepare and a commit in node 3's name.
    node.step(1, 2, prepare("users", Ballot::new(5, 3), 0));
    let ready = drain(&mut node, 1);
    assert!(!promised_to(&ready, 2) && !promised_to(&ready, 3));
    node.step(2, 2, commit(Ballot::new(5, 3), put(2, 1, "users.forged")));
    drain(&mut node, 2);
    assert_eq!(node.applied("users"), 0);
    assert_eq!(refused(&node, Refused::SpeaksForAnotherNode), 2);
    // The same commit from the ballot's own node is learned.
    node.step(3, 3, commit(Ballot::new(5, 3), put(3, 1, "users.real")));
    drain(&mut node, 3);
    assert_eq!(node.applied("users"), 1);
}

#[test]
fn replies_about_unknown_groups_and_long_names_make_no_state() {
    let mut node = node();
    let before = node.groups().count();
    for i in 0..1_000u64 {
        let group = format!("ghost{i}");
        let messages = [
            promise(Ballot::new(1, 1), Vec::new()),
            Message::Accepted {
                group: group.clone(),
                ballot: Ballot::new(1, 1),
                slots: vec![1],
                applied: 0,
            },
            Message::CatchUp {
                group: group.clone(),
                from: 1,
                to: 10,
            },
            Message::CatchUpReply {
                group: group.clone(),
                entries: Vec::new(),
                compacted: Some(1_000_000),
            },
            Message::LeaseGrant {
                group,
                ballot: Ballot::new(1, 1),
                token: 0,
            },
        ];
        for mut m in messages {
            if let Message::Promise { group, .. } = &mut m {
                *group = format!("ghost{i}");
            }
            node.step(1, 2, m);
        }
    }
    let ready = drain(&mut node, 1);
    assert!(
        ready.snapshots.is_empty(),
        "no snapshot fetched for a ghost"
    );
    assert_eq!(node.groups().count(), before);
    assert_eq!(refused(&node, Refused::UnknownGroup), 5_000);
    let long = "g".repeat(MAX_GROUP_NAME_BYTES + 1);
    node.step(2, 2, prepare(&long, Ballot::new(5, 2), 0));
    assert_eq!(refused(&node, Refused::GroupNameTooLong), 1);
    assert_eq!(node.groups().count(), before);
    // A member's prepare of a new table does make the group.
    node.step(3, 2, prepare("orders", Ballot::new(5, 2), 0));
    assert_eq!(node.groups().count(), before + 1);
}

#[test]
fn the_group_name_bound_is_the_key_bound() {
    assert_eq!(MAX_GROUP_NAME_BYTES, crate::protocol::key::MAX_KEY_BYTES);
}

/// A member this node does not know yet (added while it was behind) shows a newer epoch:
/// its prepare is not answered, but this node fetches the `atlas` log from it and hears
/// the answer.
#[test]
fn an_unknown_node_of_a_newer_epoch_is_asked_for_the_configuration() {
    let mut node = node();
    node.step(1_000, 9, prepare("users", Ballot::new(5, 9), 3));
    let ready = drain(&mut node, 1_000);
    assert!(!promised_to(&ready, 9));
    let asked = ready.messages.iter().any(|m| {
        m.to == 9 && matches!(&m.message, Message::CatchUp { group, .. } if group == "atlas")
    });
    assert!(asked, "{:?}", ready.messages);
    let reply = Message::CatchUpReply {
        group: "atlas".into(),
        entries: Vec::new(),
        compacted: None,
    };
    node.step(1_001, 9, reply);
    assert_eq!(
        refused(&node, Refused::NotAMember),
        1,
        "the answer is heard"
    );
    assert_eq!(
        refused(&node, Refused::UnknownGroup),
        0,
        "`atlas` is known before any of its entries arrived"
    );
}

#[test]
fn an_acceptor_refuses_slots_far_past_what_it_applied() {
    let mut node = node();
    let far = MAX_SLOTS_AHEAD + 2;
    let accept = Message::Accept {
        group: "users".into(),
        ballot: Ballot::new(5, 2),
        entries: vec![
            SlotEntry {
                slot: 1,
                command: put(2, 1, "users.a"),
            },
            SlotEntry {
                slot: far,
                command: put(2, 2, "users.b"),
            },
        ],
        epoch: 0,
    };
    node.step(1, 2, accept);
    let ready = drain(&mut node, 1);
    let acked: Vec<Slot> = ready
        .after_persist
        .iter()
        .filter_map(|m| match &m.message {
            Message::Accepted { slots, .. } => Some(slots.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(acked, vec![1]);
    let persisted_far = ready
        .persist
        .iter()
        .any(|op| matches!(op, PersistOp::Accept { slot, .. } if *slot == far));
    assert!(!persisted_far);
}

/// A promise reporting an accepted slot a billion past its applied one is no honest
/// acceptor's: it is not counted, and the owner (elected by the others) fills no holes.
#[test]
fn a_promise_reporting_a_slot_far_ahead_is_not_counted() {
    let mut node = node();
    node.client_request(0, 7, ClientOp::put("users.k", vec![1]));
    let ballot = prepare_ballot(&drain(&mut node, 0));
    let lie = AcceptedEntry {
        slot: 1_000_000_000,
        ballot: Ballot::new(1, 2),
        command: put(2, 1, "users.far"),
    };
    node.step(1, 2, promise(ballot, vec![lie]));
    drain(&mut node, 1);
    assert!(!node.is_owner("users"), "the lying promise did not count");
    node.step(2, 3, promise(ballot, Vec::new()));
    assert!(node.is_owner("users"));
    let proposed = accepts_to(&drain(&mut node, 2), 3);
    assert!(proposed.len() <= 2, "{} entries proposed", proposed.len());
    assert!(proposed.keys().all(|s| *s < 10));
    assert!(
        proposed
            .values()
            .any(|c| matches!(&c.op, CommandOp::Put { key, .. } if key == "users.k"))
    );
}
