use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn cmd(line: &str) -> Command {
    parse_request(line.as_bytes()).unwrap().command
}

fn err(line: &str) -> String {
    parse_request(line.as_bytes()).unwrap_err().message
}

fn key(k: &str) -> Key {
    Key::parse(k.as_bytes()).unwrap()
}

#[test]
fn key_commands() {
    assert_eq!(cmd("key get users.alice"), Command::Get(key("USERS.ALICE")));
    assert_eq!(
        cmd("KEY DEL a.b"),
        Command::Del {
            key: key("a.b"),
            if_version: None
        }
    );
    assert_eq!(
        cmd("KEY PUT a.b   two  spaces"),
        Command::Put {
            key: key("a.b"),
            principal: None,
            worm: None,
            expires: None,
            value: b"  two  spaces".to_vec()
        }
    );
    assert_eq!(
        cmd("KEY SET a.b v"),
        Command::Put {
            key: key("a.b"),
            principal: None,
            worm: None,
            expires: None,
            value: b"v".to_vec()
        }
    );
    assert_eq!(
        cmd("KEY BLOB SET a.b 12"),
        Command::BlobSet {
            key: key("a.b"),
            len: 12
        }
    );
    assert_eq!(cmd("KEY BLOB GET a.b"), Command::BlobGet(key("a.b")));
}

#[test]
fn put_clauses() {
    let Command::Put {
        principal,
        worm,
        value,
        ..
    } = cmd("KEY PUT a.b PRINCIPAL bob WORM TTL 1h30m hello world")
    else {
        panic!()
    };
    assert_eq!(principal.as_deref(), Some("bob"));
    assert_eq!(worm, Some(Deadline::Ttl(Duration::from_secs(5400))));
    assert_eq!(value, b"hello world");

    let Command::Put { worm, value, .. } = cmd("KEY PUT a.b worm expires 2030-01-01T00:00:00Z v")
    else {
        panic!()
    };
    assert_eq!(worm, Some(Deadline::ExpiresAt(1_893_456_000_000)));
    assert_eq!(value, b"v");

    // Incomplete clauses are values.
    for (line, value) in [
        ("KEY PUT a.b worm", "worm"),
        (
            "KEY PUT a.b WORM TTL notaduration x",
            "WORM TTL notaduration x",
        ),
        ("KEY PUT a.b WORM TTL 1h", "WORM TTL 1h"),
        ("KEY PUT a.b PRINCIPAL bob", "PRINCIPAL bob"),
        ("KEY PUT a.b TTL 1h", "TTL 1h"),
        ("KEY PUT a.b TTL forever x", "TTL forever x"),
        ("KEY PUT a.b  PRINCIPAL bob x", " PRINCIPAL bob x"),
    ] {
        let Command::Put {
            worm,
            expires,
            principal,
            value: v,
            ..
        } = cmd(line)
        else {
            panic!()
        };
        assert_eq!(
            (worm, expires, principal, v),
            (None, None, None, value.as_bytes().to_vec()),
            "{line}"
        );
    }
}

#[test]
fn expiring_puts_are_not_write_once() {
    let Command::Put {
        worm,
        expires,
        value,
        principal,
        ..
    } = cmd("KEY PUT a.b PRINCIPAL p TTL 30s hello")
    else {
        panic!()
    };
    assert_eq!(
        (worm, expires, principal.as_deref()),
        (
            None,
            Some(Deadline::Ttl(Duration::from_secs(30))),
            Some("p")
        )
    );
    assert_eq!(value, b"hello");
    let Command::Put { worm, expires, .. } = cmd("KEY PUT a.b EXPIRES 2030-01-01T00:00:00Z v")
    else {
        panic!()
    };
    assert_eq!(
        (worm, expires),
        (None, Some(Deadline::ExpiresAt(1_893_456_000_000)))
    );
}

#[test]
fn versions_cas_and_conditional_deletes() {
    assert_eq!(cmd("key version a.b"), Command::Version(key("A.B")));
    assert_eq!(
        cmd("KEY CAS a.b 0 first value"),
        Command::Cas {
            key: key("a.b"),
            version: 0,
            value: b"first value".to_vec()
        }
    );
    assert_eq!(
        cmd("KEY DEL a.b IF VERSION 7"),
        Command::Del {
            key: key("a.b"),
            if_version: Some(7)
        }
    );
    assert_eq!(
        err("KEY CAS a.b x v"),
        "invalid version: expected a whole number"
    );
    assert_eq!(
        err("KEY CAS a.b -1 v"),
        "invalid version: expected a whole number"
    );
    for line in [
        "KEY CAS a.b 1",
        "KEY CAS a.b",
        "KEY DEL a.b IF",
        "KEY DEL a.b IF VERSION",
        "KEY DEL a.b IF VERSION 1 2",
        "KEY DEL a.b WHEN VERSION 1",
        "KEY VERSION",
        "KEY VERSION a.b c",
    ] {
        assert_eq!(
            parse_request(line.as_bytes()).unwrap_err().kind,
            ParseErrorKind::Usage,
            "{line}"
        );
    }
}

#[test]
fn scans_take_after_limit_and_values_in_any_order() {
    assert_eq!(
        cmd("SCAN users."),
        Command::Scan(Scan {
            prefix: "USERS.".into(),
            after: None,
            limit: None,
            values: false
        })
    );
    assert_eq!(
        cmd("scan u values limit 10 after u.b"),
        Command::Scan(Scan {
            prefix: "U".into(),
            after: Some("U.B".into()),
            limit: Some(10),
            values: true
        })
    );
    assert_eq!(
        err("SCAN u LIMIT 0"),
        "invalid limit: expected a whole number from 1"
    );
    for line in [
        "SCAN u LIMIT",
        "SCAN u AFTER",
        "SCAN u VALUES VALUES",
        "SCAN u BOGUS",
    ] {
        assert_eq!(
            parse_request(line.as_bytes()).unwrap_err().kind,
            ParseErrorKind::Usage,
            "{line}"
        );
    }
}

#[test]
fn transaction_lines() {
    assert_eq!(cmd("TXN BEGIN"), Command::TxnBegin);
    assert_eq!(cmd("txn commit"), Command::TxnCommit(Vec::new()));
    assert_eq!(cmd("TXN ABORT"), Command::TxnAbort);
    assert_eq!(
        cmd("TXN IF a.b VERSION 3"),
        Command::TxnStep(TxnStep::IfVersion {
            key: key("a.b"),
            version: 3
        })
    );
    assert_eq!(
        cmd("TXN IF a.b ABSENT"),
        Command::TxnStep(TxnStep::IfVersion {
            key: key("a.b"),
            version: 0
        })
    );
    assert_eq!(
        cmd("TXN PUT a.b two words"),
        Command::TxnStep(TxnStep::Put {
            key: key("a.b"),
            value: b"two words".to_vec()
        })
    );
    assert_eq!(
        cmd("TXN DEL a.b"),
        Command::TxnStep(TxnStep::Del(key("a.b")))
    );
    for line in [
        "TXN",
        "TXN BEGIN now",
        "TXN IF a.b",
        "TXN IF a.b ABSENT x",
        "TXN IF a.b PRESENT",
        "TXN PUT a.b",
        "TXN DEL a.b c",
        "TXN FROB",
    ] {
        assert_eq!(
            parse_request(line.as_bytes()).unwrap_err().kind,
            ParseErrorKind::Usage,
            "{line}"
        );
    }
}

#[test]
fn usage_and_unknown() {
    assert_eq!(err("FOO bar"), "command expected, got FOO");
    for line in [
        "KEY",
        "KEY FROB a.b",
        "KEY GET",
        "KEY GET a.b c",
        "KEY PUT a.b",
        "KEY PUT a.b ",
        "SCAN",
        "COUNT a b",
        "NODE",
        "NODE INFO",
        "ACL GRANT a.b",
        "ACL GRANT a.b bob READ",
        "PRINCIPAL",
        "PRINCIPAL ASSUME",
        "QUORUM x",
        "TABLE INFO",
        "KEY BLOB SET a.b",
    ] {
        assert!(err(line).starts_with("usage:"), "{line}: {}", err(line));
    }
    assert_eq!(err("KEY BLOB SET a.b -1"), "invalid length");
    assert_eq!(err("KEY BLOB SET a.b 1e3"), "invalid length");
    assert!(err("ACL GRANT a.b bob PERMS ADMIN").starts_with("invalid permission ADMIN"));
    assert!(err("KEY GET nodot").starts_with("invalid key"));
}

#[test]
fn tags() {
    let r = parse_request(b"[ID:abc] KEY GET a.b").unwrap();
    assert_eq!(r.tag.as_deref(), Some("abc"));
    let e = parse_request(b"[ID:t1] KEY GET").unwrap_err();
    assert_eq!(e.tag.as_deref(), Some("t1"));
    let long = format!("[ID:{}] KEY GET a.b", "x".repeat(65));
    for bad in [
        "[ID:] KEY GET a.b",
        "[ID:abc KEY GET a.b",
        "[ID:a b] KEY GET a.b",
        long.as_str(),
        "[ID:abc]KEY GET a.b",
    ] {
        let e = parse_request(bad.as_bytes()).unwrap_err();
        assert!(e.message.starts_with("invalid request id"), "{bad}");
        assert_eq!(e.tag, None);
    }
}

#[test]
fn principal_and_acl() {
    assert_eq!(
        cmd("PRINCIPAL ASSUME   alice smith  "),
        Command::Assume("alice smith".into())
    );
    assert_eq!(cmd("principal whoami"), Command::WhoAmI);
    assert!(parse_request(format!("PRINCIPAL ASSUME {}", "a".repeat(257)).as_bytes()).is_err());
    assert_eq!(
        cmd("acl grant a.b bob perms read"),
        Command::Grant {
            key: key("A.B"),
            principal: "bob".into(),
            perm: Perm::Read
        }
    );
}

#[test]
fn handshake() {
    assert_eq!(check_handshake(b"HELLO 1.0 me"), Ok(()));
    assert_eq!(
        check_handshake(b"HELLO 2.0 me"),
        Err("invalid protocol version")
    );
    for bad in [&b"HELLO 1.0"[..], b"HELLO 1.0 a b", b"HI 1.0 me", b""] {
        assert_eq!(check_handshake(bad), Err("invalid handshake"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// No input panics the parser.
    #[test]
    fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_request(&line);
        let _ = check_handshake(&line);
    }

    /// Inputs built from the grammar's own words, in any order, never panic either.
    #[test]
    fn never_panics_on_near_misses(words in proptest::collection::vec(
        prop_oneof![
            Just("KEY"), Just("PUT"), Just("GET"), Just("BLOB"), Just("SET"), Just("WORM"),
            Just("TTL"), Just("EXPIRES"), Just("PRINCIPAL"), Just("ACL"), Just("GRANT"),
            Just("PERMS"), Just("a.b"), Just("1h"), Just("[ID:x]"), Just(" "), Just("\t"),
            Just("18446744073709551616"), Just("\u{0}"), Just("é")
        ], 0..10)) {
        let line = words.join(" ");
        let _ = parse_request(line.as_bytes());
    }

    /// A PUT value round-trips byte-exact, whatever it contains (short of a line end).
    #[test]
    fn put_value_round_trips(value in proptest::collection::vec(any::<u8>().prop_filter("no LF", |b| *b != b'\n'), 1..200)) {
        prop_assume!(!value[0].is_ascii_whitespace());
        let mut line = b"KEY PUT t.k ".to_vec();
        line.extend_from_slice(&value);
        let request = parse_request(&line).unwrap();
        match request.command {
            Command::Put { value: v, principal, worm, .. } => {
                // Either the value is intact, or a clause was recognised at its start.
                if principal.is_none() && worm.is_none() {
                    prop_assert_eq!(v, value);
                } else {
                    prop_assert!(value.ends_with(&v));
                }
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn rejected_blob_set_reports_its_payload() {
    let e = parse_request(b"KEY BLOB SET nodot 5").unwrap_err();
    assert_eq!(e.payload_len, Some(5));
    assert_eq!(
        parse_request(b"KEY BLOB SET a.b -5")
            .unwrap_err()
            .payload_len,
        None
    );
    assert_eq!(
        parse_request(b"KEY GET nodot").unwrap_err().payload_len,
        None
    );
}

#[test]
fn table_list_takes_no_argument() {
    assert_eq!(cmd("table list"), Command::TableList);
    assert!(err("TABLE LIST x").starts_with("usage: TABLE INFO <table> | TABLE LIST"));
    assert_eq!(err("QUORUM LIST"), "usage: QUORUM INFO <table>");
}

#[test]
fn table_moves_and_pins() {
    assert_eq!(
        cmd("TABLE MOVE orders TO eu-west"),
        Command::TableMove {
            table: "ORDERS".into(),
            region: "eu-west".into()
        }
    );
    assert_eq!(
        cmd("table pin orders us"),
        Command::TablePin {
            table: "ORDERS".into(),
            region: "us".into()
        }
    );
    assert_eq!(
        cmd("TABLE UNPIN orders"),
        Command::TableUnpin("ORDERS".into())
    );
    for bad in [
        "TABLE MOVE orders",
        "TABLE MOVE orders eu",
        "TABLE MOVE orders INTO eu",
        "TABLE MOVE orders TO",
        "TABLE MOVE orders TO eu us",
        "TABLE PIN orders",
        "TABLE PIN orders eu us",
        "TABLE UNPIN",
        "TABLE UNPIN orders eu",
    ] {
        assert!(
            err(bad).starts_with("usage: TABLE INFO"),
            "{bad}: {}",
            err(bad)
        );
    }
    assert!(err("TABLE PIN a.b eu").starts_with("invalid table"));
}

#[test]
fn backup_watch_and_unwatch_lines() {
    assert_eq!(cmd("backup"), Command::Backup);
    assert_eq!(err("BACKUP now"), "usage: BACKUP");
    assert_eq!(
        cmd("WATCH users. FROM 7"),
        Command::Watch {
            prefix: "USERS.".into(),
            from: Some(7)
        }
    );
    assert_eq!(
        err("WATCH users. FROM"),
        "usage: WATCH <table>.<prefix> [FROM <revision>]"
    );
    assert_eq!(
        err("WATCH .x"),
        "invalid watch prefix: name one table, as <table>. or <table>.<prefix> (revisions are per table)"
    );
    assert_eq!(cmd("UNWATCH w"), Command::Unwatch("w".into()));
    assert_eq!(err("UNWATCH"), "usage: UNWATCH <tag>");
}
