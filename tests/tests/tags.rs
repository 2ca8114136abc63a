//! Tagged requests (`[ID:<token>] <command>`): pipelining, framing, ordering, principals.

use std::collections::BTreeMap;

use atlas_tests::{Client, Node, is_terminal, split_tag};

/// Reads lines until `terminals` responses have ended (an `OK` or `ERROR` frame each).
fn read_frames(c: &mut Client, terminals: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut ended = 0;
    while ended < terminals {
        let line = c.read_line();
        if is_terminal(split_tag(&line).1) {
            ended += 1;
        }
        lines.push(line);
    }
    lines
}

/// Groups response lines by tag (untagged lines under ""), keeping order within each group.
fn by_tag(lines: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in lines {
        let (tag, body) = split_tag(line);
        groups
            .entry(tag.unwrap_or("").to_string())
            .or_default()
            .push(body.to_string());
    }
    groups
}

#[test]
fn tagged_response_carries_the_tag() {
    let node = Node::start();
    let mut c = node.client();
    c.send_line("[ID:q1] KEY PUT tag.one v1");
    assert_eq!(c.read_line(), "[ID:q1] OK");
    c.send_line("[ID:q2] KEY GET tag.one");
    assert_eq!(c.read_line(), "[ID:q2] VALUE:v1");
    assert_eq!(c.read_line(), "[ID:q2] OK");
    c.send_line("[ID:q3] KEY GET tag.none");
    assert_eq!(c.read_line(), "[ID:q3] NOT_FOUND");
    assert_eq!(c.read_line(), "[ID:q3] OK");
    c.send_line("[ID:q4] FOO");
    assert_eq!(
        c.read_line(),
        "[ID:q4] ERROR WARN command expected, got FOO"
    );
    c.assert_usable();
}

#[test]
fn pipelined_tagged_puts_store_their_own_values() {
    let node = Node::start();
    let mut c = node.client();
    const N: usize = 200;
    let mut batch = String::new();
    for i in 0..N {
        batch.push_str(&format!("[ID:p{i}] KEY PUT pipe.k{i} value number {i}\r\n"));
    }
    c.send(batch.as_bytes());
    let lines = read_frames(&mut c, N);
    let groups = by_tag(&lines);
    assert_eq!(groups.len(), N, "one response per tag: {groups:?}");
    for i in 0..N {
        assert_eq!(
            groups.get(&format!("p{i}")).map(Vec::as_slice),
            Some(&["OK".to_string()][..]),
            "response to [ID:p{i}]"
        );
    }
    for i in 0..N {
        assert_eq!(
            c.get(&format!("pipe.k{i}")),
            Some(format!("value number {i}")),
            "value stored by tagged PUT {i}"
        );
    }
}

#[test]
fn pipelined_tagged_gets_answer_each_key() {
    let node = Node::start();
    let mut c = node.client();
    const N: usize = 50;
    for i in 0..N {
        c.put(&format!("tget.k{i}"), &format!("v{i}"));
    }
    let mut batch = String::new();
    for i in 0..N {
        batch.push_str(&format!("[ID:g{i}] KEY GET tget.k{i}\r\n"));
    }
    c.send(batch.as_bytes());
    let groups = by_tag(&read_frames(&mut c, N));
    for i in 0..N {
        assert_eq!(
            groups[&format!("g{i}")],
            [format!("VALUE:v{i}"), "OK".to_string()],
            "response to [ID:g{i}]"
        );
    }
}

#[test]
fn tagged_blob_framing() {
    let node = Node::start();
    let mut c = node.client();
    let payload = b"line1\r\nOK\r\n\0[ID:b] OK\r\n".to_vec();
    let mut request = format!("[ID:s1] KEY BLOB SET tblob.k {}\r\n", payload.len()).into_bytes();
    request.extend_from_slice(&payload);
    c.send(&request);
    assert_eq!(c.read_line(), "[ID:s1] OK");

    c.send_line("[ID:b] KEY BLOB GET tblob.k");
    assert_eq!(c.read_line(), format!("[ID:b] BLOB {}", payload.len()));
    assert_eq!(
        c.read_exact(payload.len()),
        payload,
        "payload is not prefixed"
    );
    assert_eq!(c.read_line(), "[ID:b] OK");

    c.send_line("[ID:e] KEY BLOB GET tblob.none");
    assert_eq!(c.read_line(), "[ID:e] EMPTY");
    assert_eq!(c.read_line(), "[ID:e] OK");
    c.assert_usable();
}

#[test]
fn tagged_scan_prefixes_only_the_frames() {
    let node = Node::start();
    let mut c = node.client();
    c.put("tscan.b", "1");
    c.put("tscan.a", "2");
    c.send_line("[ID:s] SCAN tscan");
    assert_eq!(
        read_frames(&mut c, 1),
        ["[ID:s] KEYS:2", "TSCAN.A", "TSCAN.B", "[ID:s] OK"]
    );
    c.send_line("[ID:n] COUNT tscan");
    assert_eq!(read_frames(&mut c, 1), ["[ID:n] COUNT:2", "[ID:n] OK"]);
}

#[test]
fn untagged_requests_stay_in_order_among_tagged_ones() {
    let node = Node::start();
    let mut c = node.client();
    c.send(
        b"KEY PUT mix.a 1\r\n\
          [ID:t1] KEY PUT mix.x 1\r\n\
          KEY GET mix.a\r\n\
          [ID:t2] KEY GET mix.none\r\n\
          KEY PUT mix.b 2\r\n\
          KEY GET mix.b\r\n",
    );
    // 4 untagged responses + 2 tagged ones.
    let groups = by_tag(&read_frames(&mut c, 6));
    assert_eq!(
        groups[""],
        ["OK", "VALUE:1", "OK", "OK", "VALUE:2", "OK"],
        "untagged responses in request order: {groups:?}"
    );
    assert_eq!(groups["t1"], ["OK"]);
    assert_eq!(groups["t2"], ["NOT_FOUND", "OK"]);
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(c.get("mix.x").as_deref(), Some("1"));
}

#[test]
fn tagged_request_uses_the_principal_in_force_when_read() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("PRINCIPAL ASSUME alice"), ["OK"]);
    c.put("tsec.doc", "secret");
    c.request_ok("ACL GRANT tsec.doc alice PERMS OWNER");
    c.send(
        b"PRINCIPAL ASSUME bob\r\n\
          [ID:b] KEY GET tsec.doc\r\n\
          [ID:bw] KEY PUT tsec.doc by bob\r\n\
          PRINCIPAL ASSUME alice\r\n\
          [ID:a] KEY GET tsec.doc\r\n",
    );
    let groups = by_tag(&read_frames(&mut c, 5));
    assert_eq!(groups[""], ["OK", "OK"]);
    assert_eq!(groups["b"], ["NOT_FOUND", "OK"]);
    assert_eq!(
        groups["bw"],
        ["ERROR WARN permission denied for principal 'bob': write access denied"]
    );
    assert_eq!(groups["a"], ["VALUE:secret", "OK"]);
    assert_eq!(c.request_ok("PRINCIPAL WHOAMI"), ["PRINCIPAL alice"]);
}

#[test]
fn malformed_tags_are_refused() {
    let node = Node::start();
    let mut c = node.client();
    let too_long = format!("[ID:{}] KEY GET a.b", "t".repeat(65));
    for bad in [
        "[ID:] KEY GET a.b",
        too_long.as_str(),
        "[ID:abc KEY GET a.b",
    ] {
        c.request_err(bad, "ERROR WARN invalid request id");
        c.assert_usable();
    }
    let longest = "t".repeat(64);
    c.send_line(&format!("[ID:{longest}] KEY GET a.b"));
    assert_eq!(
        read_frames(&mut c, 1),
        [
            format!("[ID:{longest}] NOT_FOUND"),
            format!("[ID:{longest}] OK")
        ]
    );
}
