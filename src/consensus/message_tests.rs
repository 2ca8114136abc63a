use super::*;
use crate::consensus::command::CommandOp;
use proptest::prelude::*;

pub(crate) fn samples() -> Vec<Message> {
    let g = "users".to_string();
    let b = Ballot::new(3, 7);
    let id = CommandId { origin: 7, seq: 9 };
    let cmd = Command {
        id,
        floor: 8,
        op: CommandOp::Put {
            key: "users.alice".into(),
            value: vec![1, 2, 3].into(),
        },
    };
    vec![
        Message::Prepare {
            group: g.clone(),
            ballot: b,
            token: 5,
            handoff_from: Some(Ballot::new(2, 1)),
            epoch: 3,
        },
        Message::Promise {
            group: g.clone(),
            ballot: b,
            token: 5,
            applied: 4,
            accepted: vec![AcceptedEntry {
                slot: 5,
                ballot: Ballot::new(2, 1),
                command: cmd.clone(),
            }],
            sealed: 3,
            page: 1,
            pages: 2,
        },
        Message::Accept {
            group: g.clone(),
            ballot: b,
            entries: vec![SlotEntry {
                slot: 6,
                command: cmd.clone(),
            }],
            epoch: 2,
        },
        Message::Accepted {
            group: g.clone(),
            ballot: b,
            slots: vec![6, 7],
            applied: 5,
        },
        Message::Reject {
            group: g.clone(),
            ballot: b,
            promised: Ballot::new(4, 1),
            epoch: 1,
        },
        Message::Commit {
            group: g.clone(),
            ballot: b,
            slots: vec![2, 3],
            entries: vec![SlotEntry {
                slot: 1,
                command: Command::noop(id),
            }],
        },
        Message::Heartbeat {
            group: g.clone(),
            ballot: b,
            applied: 8,
        },
        Message::CatchUp {
            group: g.clone(),
            from: 2,
            to: 9,
        },
        Message::CatchUpReply {
            group: g.clone(),
            entries: vec![SlotEntry {
                slot: 3,
                command: Command {
                    id,
                    floor: 0,
                    op: CommandOp::LeaveJoint { epoch: 3 },
                },
            }],
            compacted: None,
        },
        Message::CatchUpReply {
            group: g.clone(),
            entries: vec![SlotEntry {
                slot: 4,
                command: Command {
                    id,
                    floor: 0,
                    op: CommandOp::Seal { epoch: 6 },
                },
            }],
            compacted: Some(9),
        },
        Message::LeaseRenew {
            group: g.clone(),
            ballot: b,
            token: 1,
            epoch: 4,
        },
        Message::LeaseGrant {
            group: g.clone(),
            ballot: b,
            token: 1,
        },
        Message::Forward {
            group: g.clone(),
            id,
            floor: 3,
            op: ClientOp::delete("users.bob"),
        },
        Message::Forward {
            group: g.clone(),
            id,
            floor: 4,
            op: ClientOp::put("users.ann", vec![1, 2]),
        },
        Message::Forward {
            group: g.clone(),
            id,
            floor: 0,
            op: ClientOp::Get {
                key: "users.ann".into(),
            },
        },
        Message::Forward {
            group: "atlas".into(),
            id,
            floor: 0,
            op: ClientOp::add_node(4, "eu"),
        },
        Message::Forward {
            group: "atlas".into(),
            id,
            floor: 0,
            op: ClientOp::remove_node(4),
        },
        Message::ForwardReply {
            group: g.clone(),
            id,
            outcome: ForwardOutcome::NotOwner {
                hint: Some(3),
                ballot: b,
            },
        },
        Message::ForwardReply {
            group: g.clone(),
            id,
            outcome: ForwardOutcome::ReadIndex { slot: 4 },
        },
        Message::Handoff { group: g, from: b },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        assert_eq!(Message::decode(&m.encode()).as_ref(), Ok(&m));
        let shared = bytes::Bytes::from(m.encode());
        assert_eq!(Message::decode_shared(&shared).as_ref(), Ok(&m));
        assert!(m.size_hint() >= 64);
    }
}

#[test]
fn a_forward_carrying_an_owners_entry_is_refused() {
    // Tags 5 (leave joint) and 6 (seal) are log operations no client may send.
    for op in [
        CommandOp::LeaveJoint { epoch: 1 },
        CommandOp::Seal { epoch: 1 },
    ] {
        let m = Message::Forward {
            group: "t".into(),
            id: CommandId { origin: 1, seq: 1 },
            floor: 0,
            op: ClientOp::Write(op),
        };
        assert!(Message::decode(&m.encode()).is_err());
    }
}

#[test]
fn shared_decoding_does_not_copy_values() {
    let value = bytes::Bytes::from(vec![7u8; crate::consensus::codec::SHARED_VALUE_BYTES]);
    let m = Message::Forward {
        group: "t".into(),
        id: CommandId { origin: 1, seq: 1 },
        floor: 0,
        op: ClientOp::put("t.k", value),
    };
    let frame = bytes::Bytes::from(m.encode());
    let Ok(Message::Forward {
        op: ClientOp::Write(CommandOp::Put { value, .. }),
        ..
    }) = Message::decode_shared(&frame)
    else {
        panic!("not a forward");
    };
    let inside = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    assert!(inside.contains(&(value.as_ptr() as usize)));
}

#[test]
fn a_lying_count_fails_without_allocating() {
    // An Accepted claiming 2^40 slots in a few bytes.
    let mut w = crate::consensus::codec::Writer::versioned();
    w.u8(4);
    w.str("t");
    w.ballot(Ballot::new(1, 1));
    w.u64(1 << 40);
    assert!(matches!(
        Message::decode(&w.finish()),
        Err(CodecError::TooLong(_))
    ));
}

#[test]
fn another_version_is_refused_clearly() {
    let mut bytes = samples()[0].encode();
    bytes[0] = 1;
    let err = Message::decode(&bytes).unwrap_err();
    assert_eq!(
        err,
        CodecError::Version {
            found: 1,
            expected: 2
        }
    );
    assert!(err.to_string().contains("version 1 is not supported"));
}

proptest! {
    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn truncations_are_errors(cut in 0usize..60) {
        for m in samples() {
            let bytes = m.encode();
            if cut < bytes.len() {
                prop_assert!(Message::decode(&bytes[..cut]).is_err());
            }
        }
    }
}
