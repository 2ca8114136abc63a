use super::*;

fn op(client: u64, input: Input, output: Output, call: u64, ret: Option<u64>) -> Operation {
    Operation {
        client,
        key: "t.k".into(),
        input,
        output,
        call,
        ret,
    }
}

fn put(v: &str) -> Input {
    Input::Put(v.as_bytes().to_vec())
}

fn read(v: Option<&str>) -> Output {
    Output::Value(v.map(|v| v.as_bytes().to_vec()))
}

#[test]
fn sequential_history_is_linearizable() {
    let h = vec![
        op(1, Input::Get, read(None), 0, Some(1)),
        op(1, put("a"), Output::Ok, 2, Some(3)),
        op(2, Input::Get, read(Some("a")), 4, Some(5)),
        op(2, Input::Delete, Output::Ok, 6, Some(7)),
        op(1, Input::Get, read(None), 8, Some(9)),
    ];
    assert!(check(&h).is_empty());
}

#[test]
fn concurrent_reads_may_see_either_value() {
    // put b overlaps both reads: one sees a, the other b, in either order of their calls.
    let h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(2, put("b"), Output::Ok, 2, Some(10)),
        op(3, Input::Get, read(Some("b")), 3, Some(4)),
        op(4, Input::Get, read(Some("a")), 3, Some(9)),
    ];
    assert!(check(&h).is_empty());
}

#[test]
fn stale_read_after_acknowledged_write_is_rejected() {
    let h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(1, put("b"), Output::Ok, 2, Some(3)),
        op(2, Input::Get, read(Some("a")), 4, Some(5)),
    ];
    let anomalies = check(&h);
    assert_eq!(anomalies.len(), 1);
    assert!(!anomalies[0].undecided);
    assert!(anomalies[0].witness.len() <= 3);
    assert!(anomalies[0].to_string().contains("not linearizable"));
}

#[test]
fn lost_write_is_rejected() {
    // b was acknowledged, then reads see the old value forever.
    let h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(2, put("b"), Output::Ok, 2, Some(3)),
        op(3, Input::Get, read(Some("a")), 4, Some(5)),
        op(3, Input::Get, read(Some("a")), 6, Some(7)),
    ];
    assert_eq!(check(&h).len(), 1);
}

#[test]
fn read_of_a_never_written_value_is_rejected() {
    let h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(2, Input::Get, read(Some("zz")), 2, Some(3)),
    ];
    let anomalies = check(&h);
    assert_eq!(anomalies.len(), 1);
    // The put is not needed to show it.
    assert_eq!(anomalies[0].witness.len(), 1);
}

#[test]
fn reads_going_back_in_time_are_rejected() {
    // Concurrent put b; one read sees b, a later read sees a again.
    let h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(2, put("b"), Output::Ok, 2, Some(20)),
        op(3, Input::Get, read(Some("b")), 3, Some(4)),
        op(3, Input::Get, read(Some("a")), 5, Some(6)),
    ];
    assert_eq!(check(&h).len(), 1);
}

#[test]
fn unknown_writes_may_or_may_not_happen() {
    // A timed-out put may show up later...
    let h = vec![
        op(1, put("a"), Output::Unknown, 0, None),
        op(2, Input::Get, read(None), 1, Some(2)),
        op(2, Input::Get, read(Some("a")), 50, Some(51)),
    ];
    assert!(check(&h).is_empty());
    // ...or never.
    let h = vec![
        op(1, put("a"), Output::Unknown, 0, None),
        op(2, Input::Get, read(None), 100, Some(101)),
    ];
    assert!(check(&h).is_empty());
    // But not before it was called.
    let h = vec![
        op(2, Input::Get, read(Some("a")), 0, Some(1)),
        op(1, put("a"), Output::Unknown, 5, None),
    ];
    assert_eq!(check(&h).len(), 1);
}

#[test]
fn keys_are_checked_separately() {
    let mut h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(2, Input::Get, read(Some("a")), 2, Some(3)),
    ];
    h.push(Operation {
        key: "t.other".into(),
        ..op(3, Input::Get, read(Some("a")), 4, Some(5))
    });
    let anomalies = check(&h);
    assert_eq!(anomalies.len(), 1);
    assert_eq!(anomalies[0].key, "t.other");
}

#[test]
fn many_concurrent_clients_stay_fast() {
    // 8 clients, 60 rounds: each round every client writes its value concurrently, then all
    // read the value of the last writer to return.
    let mut h = Vec::new();
    let mut t = 0;
    for round in 0..60u64 {
        for c in 0..8u64 {
            h.push(op(
                c,
                put(&format!("{round}-{c}")),
                Output::Ok,
                t,
                Some(t + 10),
            ));
        }
        t += 11;
        for c in 0..8u64 {
            h.push(op(
                c,
                Input::Get,
                read(Some(&format!("{round}-7"))),
                t,
                Some(t + 1),
            ));
        }
        t += 2;
    }
    assert!(check(&h).is_empty());
}

#[test]
fn witness_is_minimal_and_keeps_the_writes_reads_saw() {
    let h = vec![
        op(1, put("x"), Output::Ok, 491, Some(492)),
        op(2, put("a"), Output::Ok, 508, Some(509)),
        op(0, put("b"), Output::Ok, 530, Some(531)),
        op(1, Input::Get, read(Some("a")), 675, Some(676)),
    ];
    let anomalies = check(&h);
    assert_eq!(anomalies.len(), 1);
    let witness: Vec<String> = anomalies[0].witness.iter().map(|o| o.to_string()).collect();
    assert_eq!(witness.len(), 3, "{witness:#?}");
}

fn cas(version: u64, v: &str) -> Input {
    Input::Cas {
        version,
        value: v.as_bytes().to_vec(),
    }
}

#[test]
fn versions_and_compare_and_set_follow_the_versioned_register() {
    let h = vec![
        op(1, Input::Version, Output::Version(0), 0, Some(1)),
        op(1, cas(0, "a"), Output::Ok, 2, Some(3)),
        op(2, cas(0, "b"), Output::Mismatch(1), 4, Some(5)),
        op(2, put("c"), Output::Ok, 6, Some(7)),
        op(1, Input::Version, Output::Version(2), 8, Some(9)),
        op(1, cas(2, "d"), Output::Ok, 10, Some(11)),
        op(2, Input::Get, read(Some("d")), 12, Some(13)),
        op(2, Input::Delete, Output::Ok, 14, Some(15)),
        op(1, Input::Version, Output::Version(0), 16, Some(17)),
        op(1, cas(0, "e"), Output::Ok, 18, Some(19)),
    ];
    assert!(check(&h).is_empty());
}

#[test]
fn two_winning_cas_on_one_version_are_rejected() {
    // Both clients compare against version 1 and both are told OK: one must have lost.
    let h = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(1, cas(1, "b"), Output::Ok, 2, Some(10)),
        op(2, cas(1, "c"), Output::Ok, 3, Some(11)),
    ];
    let anomalies = check(&h);
    assert_eq!(anomalies.len(), 1, "{anomalies:?}");
}

#[test]
fn a_wrong_version_or_a_false_mismatch_is_rejected() {
    let stale_version = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(1, put("b"), Output::Ok, 2, Some(3)),
        op(2, Input::Version, Output::Version(1), 4, Some(5)),
    ];
    assert_eq!(check(&stale_version).len(), 1);
    let false_mismatch = vec![
        op(1, put("a"), Output::Ok, 0, Some(1)),
        op(2, cas(1, "b"), Output::Mismatch(1), 2, Some(3)),
    ];
    assert_eq!(check(&false_mismatch).len(), 1);
}

#[test]
fn an_unknown_cas_may_or_may_not_have_happened() {
    for seen in ["a", "b"] {
        let h = vec![
            op(1, put("a"), Output::Ok, 0, Some(1)),
            op(1, cas(1, "b"), Output::Unknown, 2, None),
            op(2, Input::Get, read(Some(seen)), 5, Some(6)),
        ];
        assert!(check(&h).is_empty(), "{seen}");
    }
}
