//! Handshake, line framing, key commands, cluster information commands and error handling.

use std::thread;
use std::time::Duration;

use atlas_tests::{Client, Node, WELCOME};

// ---------------------------------------------------------------- handshake

#[test]
fn handshake_welcome_then_ready() {
    let node = Node::start();
    let mut c = Client::connect(&node.socket_path());
    assert_eq!(c.read_line(), WELCOME);
    c.send_line("HELLO 1.0 test");
    assert_eq!(c.read_line(), "READY");
    c.assert_usable();
}

/// A connection once the server has room: a slot frees when the server has seen an earlier
/// connection (the start-up probe's, one just dropped) close, which takes a moment.
fn connect_when_room(node: &Node) -> Client {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect(&node.socket_path());
        let first = c.read_line();
        if first == WELCOME {
            c.send_line("HELLO 1.0 test");
            assert_eq!(c.read_line(), "READY");
            return c;
        }
        assert_eq!(first, "ERROR FATAL too many connections");
        assert!(std::time::Instant::now() < deadline, "no room within 5 s");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn connections_beyond_the_cap_are_refused_and_idle_ones_closed() {
    let node = Node::start_with("limits: {max_connections: 2, idle_timeout_ms: 1500}");
    let mut first = connect_when_room(&node);
    let second = connect_when_room(&node);
    let mut third = Client::connect(&node.socket_path());
    assert_eq!(third.read_line(), "ERROR FATAL too many connections");
    third.expect_closed();
    // Served ones keep working; one that leaves makes room.
    first.assert_usable();
    drop(second);
    let mut second = connect_when_room(&node);
    second.assert_usable();
    drop(second);
    // Silence for longer than the idle timeout ends a connection, handshake or not.
    let mut silent = {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = Client::connect(&node.socket_path());
            if c.read_line() == WELCOME {
                break c;
            }
            assert!(std::time::Instant::now() < deadline, "no room within 5 s");
            thread::sleep(Duration::from_millis(50));
        }
    };
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(500));
        first.assert_usable();
    }
    silent.expect_closed();
    thread::sleep(Duration::from_millis(1_700));
    assert_eq!(first.read_line(), "ERROR FATAL idle timeout");
    first.expect_closed();
}

#[test]
fn handshake_of_wrong_shape_is_fatal() {
    let node = Node::start();
    for hello in ["HELLO 1.0", "HI there you", "KEY GET a.b", "HELLO 1.0 a b"] {
        let mut c = Client::connect(&node.socket_path());
        assert_eq!(c.read_line(), WELCOME);
        c.send_line(hello);
        assert_eq!(
            c.read_line(),
            "ERROR FATAL invalid handshake",
            "hello {hello:?}"
        );
        c.expect_closed();
    }
}

#[test]
fn handshake_with_other_version_is_fatal() {
    let node = Node::start();
    let mut c = Client::connect(&node.socket_path());
    assert_eq!(c.read_line(), WELCOME);
    c.send_line("HELLO 2.0 x");
    assert_eq!(c.read_line(), "ERROR FATAL invalid protocol version");
    c.expect_closed();
}

#[test]
fn bare_newline_ends_lines_too() {
    let node = Node::start();
    let mut c = Client::connect(&node.socket_path());
    assert_eq!(c.read_line(), WELCOME);
    c.send(b"HELLO 1.0 test\n");
    assert_eq!(c.read_line(), "READY");
    c.send(b"KEY PUT nl.key bare\n");
    assert_eq!(c.read_response(), ["OK"]);
    c.send(b"KEY GET nl.key\n");
    assert_eq!(c.read_response(), ["VALUE:bare", "OK"]);
}

// ---------------------------------------------------------------- lines and words

#[test]
fn empty_and_blank_lines_get_no_response() {
    let node = Node::start();
    let mut c = node.client();
    c.send(b"\r\n\n   \r\n \t \n");
    // The first response must belong to this request: the blank lines produced nothing.
    assert_eq!(c.request("KEY GET blank.none"), ["NOT_FOUND", "OK"]);
}

#[test]
fn command_words_are_case_insensitive() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("key put case.word lower"), ["OK"]);
    assert_eq!(c.request("Key Get case.word"), ["VALUE:lower", "OK"]);
    assert_eq!(c.request("key get case.word"), ["VALUE:lower", "OK"]);
    assert_eq!(c.request("scan case"), ["KEYS:1", "CASE.WORD", "OK"]);
}

#[test]
fn keys_are_upper_cased() {
    let node = Node::start();
    let mut c = node.client();
    c.put("users.alice", "a1");
    assert_eq!(c.get("USERS.ALICE").as_deref(), Some("a1"));
    c.put("USERS.ALICE", "a2");
    assert_eq!(c.get("users.Alice").as_deref(), Some("a2"));
    assert_eq!(c.request("SCAN users"), ["KEYS:1", "USERS.ALICE", "OK"]);
}

#[test]
fn invalid_keys_are_refused() {
    let node = Node::start();
    let mut c = node.client();
    let too_long = format!("t.{}", "k".repeat(1023)); // 1025 bytes
    for key in ["nodot", ".row", "table.", ".", too_long.as_str()] {
        c.request_err(&format!("KEY GET {key}"), "ERROR WARN invalid key");
        c.request_err(&format!("KEY PUT {key} v"), "ERROR WARN invalid key");
        c.request_err(&format!("KEY DEL {key}"), "ERROR WARN invalid key");
    }
    c.assert_usable();
}

#[test]
fn key_of_1024_bytes_is_accepted() {
    let node = Node::start();
    let mut c = node.client();
    let key = format!("t.{}", "k".repeat(1022));
    assert_eq!(key.len(), 1024);
    c.put(&key, "long");
    assert_eq!(c.get(&key).as_deref(), Some("long"));
}

#[test]
fn system_tables_are_read_only() {
    let node = Node::start();
    let mut c = node.client();
    c.request_err("KEY PUT ATLAS.NODES.1 x", "ERROR WARN system table");
    c.request_err("KEY SET atlas.custom.k x", "ERROR WARN system table");
    c.request_err("KEY DEL ATLAS.NODES.1", "ERROR WARN system table");
    // Length 0: whatever the server does with a payload, there is none to misread.
    c.request_err("KEY BLOB SET ATLAS.BLOB.K 0", "ERROR WARN system table");
    c.request_err(
        "ACL GRANT ATLAS.NODES.1 bob PERMS READ",
        "ERROR WARN system table",
    );
    c.request_err("KEY PUT ATLASX.ROW v", "ERROR WARN system table");
    // Reads are allowed.
    let lines = c.request("KEY GET ATLAS.NODES.1");
    assert!(
        lines.len() == 2
            && lines[1] == "OK"
            && (lines[0] == "NOT_FOUND" || lines[0].starts_with("VALUE:")),
        "KEY GET ATLAS.NODES.1 answered {lines:?}"
    );
}

// ---------------------------------------------------------------- KEY PUT / GET / DEL

#[test]
fn put_get_del_round_trip() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.get("kv.one"), None);
    c.put("kv.one", "first");
    assert_eq!(c.get("kv.one").as_deref(), Some("first"));
    c.put("kv.one", "second");
    assert_eq!(c.get("kv.one").as_deref(), Some("second"));
    assert_eq!(c.request("KEY DEL kv.one"), ["OK"]);
    assert_eq!(c.get("kv.one"), None);
    assert_eq!(
        c.request("KEY DEL kv.one"),
        ["OK"],
        "deleting an absent key"
    );
    assert_eq!(
        c.request("KEY DEL kv.never"),
        ["OK"],
        "deleting a never-set key"
    );
}

#[test]
fn key_set_is_an_alias_of_put() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("KEY SET kv.alias via set"), ["OK"]);
    assert_eq!(c.get("kv.alias").as_deref(), Some("via set"));
}

#[test]
fn value_keeps_its_raw_spacing() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("KEY PUT a.b   two  spaces"), ["OK"]);
    assert_eq!(c.request("KEY GET a.b"), ["VALUE:  two  spaces", "OK"]);
    assert_eq!(c.request("KEY PUT a.c mIxEd Case:;=[]"), ["OK"]);
    assert_eq!(c.request("KEY GET a.c"), ["VALUE:mIxEd Case:;=[]", "OK"]);
}

#[test]
fn put_without_value_is_a_usage_error() {
    let node = Node::start();
    let mut c = node.client();
    c.request_err("KEY PUT a.b", "ERROR WARN usage: KEY PUT");
    assert_eq!(c.get("a.b"), None);
    c.assert_usable();
}

#[test]
fn put_principal_clause_is_not_part_of_the_value() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("KEY PUT audit.k PRINCIPAL alice hello"), ["OK"]);
    assert_eq!(c.get("audit.k").as_deref(), Some("hello"));
    // The clause is audit only: the session stays anonymous.
    assert_eq!(c.request_ok("PRINCIPAL WHOAMI"), ["PRINCIPAL (none)"]);
}

#[test]
fn incomplete_worm_clause_is_part_of_the_value() {
    let node = Node::start();
    let mut c = node.client();
    c.put("w.plain", "worm");
    assert_eq!(c.get("w.plain").as_deref(), Some("worm"));
    c.put("w.bad", "WORM TTL notaduration x");
    assert_eq!(c.get("w.bad").as_deref(), Some("WORM TTL notaduration x"));
    // Neither value is locked.
    c.put("w.bad", "changed");
    assert_eq!(c.get("w.bad").as_deref(), Some("changed"));
}

#[test]
fn worm_value_is_locked_until_it_expires() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("KEY PUT w.locked WORM TTL 1h kept"), ["OK"]);
    assert_eq!(c.get("w.locked").as_deref(), Some("kept"));
    for attempt in ["KEY PUT w.locked other", "KEY DEL w.locked"] {
        let err = c.request_err(attempt, "ERROR WARN write-once value is locked until ");
        let until = &err["ERROR WARN write-once value is locked until ".len()..];
        assert!(
            looks_like_rfc3339(until),
            "lock time {until:?} in {err:?} is not RFC 3339"
        );
    }
    assert_eq!(c.get("w.locked").as_deref(), Some("kept"));
}

#[test]
fn worm_with_principal_clause() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(
        c.request("KEY PUT w.both PRINCIPAL alice WORM TTL 1h v"),
        ["OK"]
    );
    assert_eq!(c.get("w.both").as_deref(), Some("v"));
    c.request_err("KEY PUT w.both x", "ERROR WARN write-once value is locked");
}

#[test]
fn worm_value_disappears_after_its_ttl() {
    let node = Node::start();
    let mut c = node.client();
    // 3 s leaves the reads before expiry room on a loaded machine.
    assert_eq!(c.request("KEY PUT ttl.short WORM TTL 3s gone soon"), ["OK"]);
    c.put("ttl.stays", "here");
    assert_eq!(c.get("ttl.short").as_deref(), Some("gone soon"));
    assert_eq!(c.request_ok("COUNT ttl"), ["COUNT:2"]);
    thread::sleep(Duration::from_millis(3500));
    assert_eq!(c.get("ttl.short"), None);
    assert_eq!(c.request_ok("SCAN ttl"), ["KEYS:1", "TTL.STAYS"]);
    assert_eq!(c.request_ok("COUNT ttl"), ["COUNT:1"]);
    // No longer locked either.
    c.put("ttl.short", "new");
    assert_eq!(c.get("ttl.short").as_deref(), Some("new"));
}

#[test]
fn worm_expiring_in_the_past_is_gone_at_once() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(
        c.request("KEY PUT w.past WORM EXPIRES 2000-01-01T00:00:00Z v"),
        ["OK"]
    );
    assert_eq!(c.get("w.past"), None);
    assert_eq!(
        c.request("KEY PUT w.future WORM EXPIRES 2999-01-01T00:00:00Z v"),
        ["OK"]
    );
    c.request_err(
        "KEY DEL w.future",
        "ERROR WARN write-once value is locked until 2999-01-01",
    );
}

fn looks_like_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (text.ends_with('Z') || text[19..].contains(['+', '-']))
}

// ---------------------------------------------------------------- SCAN / COUNT

#[test]
fn scan_lists_sorted_keys_by_raw_prefix() {
    let node = Node::start();
    let mut c = node.client();
    for key in ["usersx.c", "users.bob", "other.z", "users.alice"] {
        c.put(key, "v");
    }
    assert_eq!(
        c.request_ok("SCAN users."),
        ["KEYS:2", "USERS.ALICE", "USERS.BOB"]
    );
    assert_eq!(
        c.request_ok("SCAN users"),
        ["KEYS:3", "USERS.ALICE", "USERS.BOB", "USERSX.C"]
    );
    assert_eq!(c.request_ok("SCAN USERS.A"), ["KEYS:1", "USERS.ALICE"]);
    assert_eq!(c.request_ok("SCAN nomatch"), ["EMPTY"]);
    assert_eq!(c.request_ok("COUNT users."), ["COUNT:2"]);
    assert_eq!(c.request_ok("COUNT Users"), ["COUNT:3"]);
    assert_eq!(c.request_ok("COUNT nomatch"), ["COUNT:0"]);
    c.request("KEY DEL users.bob");
    assert_eq!(c.request_ok("SCAN users."), ["KEYS:1", "USERS.ALICE"]);
    assert_eq!(c.request_ok("COUNT users."), ["COUNT:1"]);
}

// ---------------------------------------------------------------- PRINCIPAL

#[test]
fn principal_assume_and_whoami() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request_ok("PRINCIPAL WHOAMI"), ["PRINCIPAL (none)"]);
    assert_eq!(c.request("PRINCIPAL ASSUME alice"), ["OK"]);
    assert_eq!(c.request_ok("PRINCIPAL WHOAMI"), ["PRINCIPAL alice"]);
    assert_eq!(c.request("PRINCIPAL ASSUME    bob  "), ["OK"]);
    assert_eq!(c.request_ok("principal whoami"), ["PRINCIPAL bob"]);
    assert_eq!(c.request("PRINCIPAL ASSUME john smith"), ["OK"]);
    assert_eq!(c.request_ok("PRINCIPAL WHOAMI"), ["PRINCIPAL john smith"]);
    // Another connection has its own (anonymous) session.
    let mut other = node.client();
    assert_eq!(other.request_ok("PRINCIPAL WHOAMI"), ["PRINCIPAL (none)"]);
}

#[test]
fn principal_name_length_is_checked() {
    let node = Node::start();
    let mut c = node.client();
    let longest = "p".repeat(256);
    assert_eq!(c.request(&format!("PRINCIPAL ASSUME {longest}")), ["OK"]);
    assert_eq!(
        c.request_ok("PRINCIPAL WHOAMI"),
        [format!("PRINCIPAL {longest}")]
    );
    let usage = "ERROR WARN usage: PRINCIPAL ASSUME <name>";
    c.request_err(&format!("PRINCIPAL ASSUME {}", "p".repeat(257)), usage);
    c.request_err("PRINCIPAL ASSUME", usage);
    c.request_err("PRINCIPAL ASSUME    ", usage);
    // A refused name leaves the previous principal in place.
    assert_eq!(
        c.request_ok("PRINCIPAL WHOAMI"),
        [format!("PRINCIPAL {longest}")]
    );
}

// ---------------------------------------------------------------- NODE / QUORUM / TABLE

fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split_whitespace()
        .filter_map(|token| token.split_once('='))
        .collect()
}

fn field<'a>(pairs: &[(&'a str, &'a str)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("field {name} missing in {pairs:?}"))
}

fn assert_endpoint(pairs: &[(&str, &str)]) {
    assert!(!field(pairs, "addr").is_empty(), "empty addr in {pairs:?}");
    field(pairs, "port")
        .parse::<u16>()
        .unwrap_or_else(|_| panic!("port is not a port number in {pairs:?}"));
}

fn assert_rtt(pairs: &[(&str, &str)]) {
    field(pairs, "rtt_ms")
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("rtt_ms is not a number in {pairs:?}"));
}

#[test]
fn node_list_shows_the_single_node() {
    let node = Node::start();
    let mut c = node.client();
    let lines = c.request_ok("NODE LIST");
    assert_eq!(lines.len(), 1, "NODE LIST answered {lines:?}");
    assert!(
        lines[0].starts_with("NODE id=1 region=local status=ACTIVE rtt_ms="),
        "{:?}",
        lines[0]
    );
    let pairs = fields(&lines[0]);
    let names: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, ["id", "region", "status", "rtt_ms", "addr", "port"]);
    assert_rtt(&pairs);
    assert_endpoint(&pairs);
}

#[test]
fn node_info_and_ping() {
    let node = Node::start();
    let mut c = node.client();
    let lines = c.request_ok("NODE INFO 1");
    let pairs: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not key=value: {l:?}"))
        })
        .collect();
    for name in [
        "id",
        "region",
        "addr",
        "port",
        "status",
        "rtt_ms",
        "owned_tables",
        "last_seen",
    ] {
        field(&pairs, name);
    }
    assert_eq!(field(&pairs, "id"), "1");
    assert_eq!(field(&pairs, "region"), "local");
    assert_eq!(field(&pairs, "status"), "ACTIVE");
    assert_rtt(&pairs);
    assert_endpoint(&pairs);

    assert_eq!(c.request("NODE INFO 99"), ["ERROR WARN unknown node 99"]);

    let pong = c.request_ok("NODE PING 1");
    assert_eq!(pong.len(), 1, "NODE PING 1 answered {pong:?}");
    assert!(pong[0].starts_with("PONG node=1 rtt_ms="), "{:?}", pong[0]);
    assert_rtt(&fields(&pong[0]));
}

#[test]
fn quorum_info_of_a_single_node() {
    let node = Node::start();
    let mut c = node.client();
    c.put("qt.k", "v");
    let lines = c.request_ok("QUORUM INFO qt");
    assert_eq!(lines.len(), 4, "QUORUM INFO answered {lines:?}");
    assert_eq!(lines[0], "Q1 size=1");
    assert_eq!(lines[2], "Q2 size=1");
    for member in [&lines[1], &lines[3]] {
        assert!(member.starts_with("id=1 region=local addr="), "{member:?}");
        assert_endpoint(&fields(member));
    }
}

fn last_slot(c: &mut Client, table: &str) -> u64 {
    let lines = c.request_ok(&format!("TABLE INFO {table}"));
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once('=').map_or(l.as_str(), |(k, _)| k))
        .collect();
    // The spec's five keys come first, in order; reduced tolerances follow.
    assert_eq!(
        names[..5],
        ["owner", "ballot", "region", "lease_until", "last_slot"],
        "TABLE INFO {table} answered {lines:?}"
    );
    assert!(names.contains(&"fn") && names.contains(&"fz"), "{lines:?}");
    assert_eq!(lines[0], "owner=1");
    lines[4]["last_slot=".len()..]
        .parse()
        .unwrap_or_else(|_| panic!("last_slot is not a number: {:?}", lines[4]))
}

#[test]
fn table_info_slot_grows_with_each_write() {
    let node = Node::start();
    let mut c = node.client();
    c.put("slots.a", "1");
    let first = last_slot(&mut c, "slots");
    c.put("slots.b", "2");
    assert_eq!(last_slot(&mut c, "slots"), first + 1, "after a PUT");
    c.request("KEY DEL slots.a");
    assert_eq!(last_slot(&mut c, "slots"), first + 2, "after a DEL");
    c.blob_set("slots.c", b"xyz");
    assert_eq!(last_slot(&mut c, "SLOTS"), first + 3, "after a BLOB SET");
    c.get("slots.b");
    assert_eq!(
        last_slot(&mut c, "slots"),
        first + 3,
        "a read is not a write"
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn unknown_command_is_a_warning() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(
        c.request("FOO bar"),
        ["ERROR WARN command expected, got FOO"]
    );
    c.assert_usable();
}

#[test]
fn bad_subcommand_or_arity_is_a_usage_warning() {
    let node = Node::start();
    let mut c = node.client();
    for bad in [
        "KEY",
        "KEY FROB a.b",
        "KEY GET",
        "KEY GET a.b c",
        "KEY DEL",
        "SCAN",
        "COUNT",
        "NODE",
        "NODE FROB",
        "ACL GRANT a.b",
        "PRINCIPAL",
        "TABLE",
        "QUORUM",
    ] {
        c.request_err(bad, "ERROR WARN usage:");
        c.assert_usable();
    }
}

#[test]
fn control_characters_never_appear_in_errors() {
    let node = Node::start();
    let mut c = node.client();
    for bad in [
        &b"FO\x01O bar\r\n"[..],
        b"\x1b[2JKEY GET a.b\r\n",
        b"KEY GET a\x01b.c\r\n",
        b"KEY FR\x07OB a.b\r\n",
    ] {
        c.send(bad);
        let lines = c.read_response();
        assert_eq!(lines.len(), 1, "{bad:?} answered {lines:?}");
        assert!(
            lines[0].starts_with("ERROR WARN"),
            "{bad:?} answered {lines:?}"
        );
        assert!(
            !lines[0].chars().any(char::is_control),
            "control character in {:?}",
            lines[0]
        );
        c.assert_usable();
    }
}

#[test]
fn line_over_the_limit_is_fatal() {
    let node = Node::start_with("limits:\n  max_line_bytes: 1024");
    let mut c = node.client();
    // Within the limit still works.
    c.put("lim.ok", &"v".repeat(900));
    let mut line = format!("KEY PUT lim.big {}", "x".repeat(2000)).into_bytes();
    line.extend_from_slice(b"\r\n");
    c.send(&line);
    assert_eq!(c.read_line(), "ERROR FATAL command exceeded maximum length");
    c.expect_closed();
    assert_eq!(node.client().get("lim.big"), None);
}

#[test]
fn line_over_the_limit_is_detected_before_its_end() {
    let node = Node::start_with("limits:\n  max_line_bytes: 1024");
    let mut c = node.client();
    // No line end: the server must not wait for one while buffering without bound.
    c.send("A".repeat(2000).as_bytes());
    assert_eq!(c.read_line(), "ERROR FATAL command exceeded maximum length");
    c.expect_closed();
}

// ---------------------------------------------------------------- concurrency

#[test]
fn sixteen_clients_in_parallel() {
    let node = Node::start();
    let socket = node.socket_path();
    let workers: Vec<_> = (0..16)
        .map(|t| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut c = Client::connect_ready(&socket);
                for i in 0..100 {
                    let key = format!("par{t}.k{i}");
                    let value = format!("thread {t} item {i}");
                    c.put(&key, &value);
                    assert_eq!(c.get(&key), Some(value));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread failed");
    }
    let mut c = node.client();
    for t in 0..16 {
        assert_eq!(c.request_ok(&format!("COUNT par{t}.")), ["COUNT:100"]);
    }
}
