//! KEY BLOB SET / GET: binary framing, large payloads, length validation.

use atlas_tests::{Node, assert_same_bytes, random_bytes};

const MIB: usize = 1024 * 1024;

#[test]
fn blob_with_line_ends_and_nul_bytes_round_trips() {
    let node = Node::start();
    let mut c = node.client();
    let mut payload = b"OK\r\nBLOB 3\r\nERROR FATAL x\r\n\0\0\n\r".to_vec();
    payload.extend(0..=255u8);
    c.blob_set("bin.k", &payload);
    let got = c.blob_get("bin.k").expect("blob stored");
    assert_same_bytes(&got, &payload, "blob bin.k");
    // Key case does not matter for blobs either.
    assert_same_bytes(
        &c.blob_get("BIN.K").expect("blob stored"),
        &payload,
        "blob BIN.K",
    );
    c.assert_usable();
}

#[test]
fn absent_blob_is_empty() {
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("KEY BLOB GET bin.none"), ["EMPTY", "OK"]);
}

#[test]
fn three_mib_blob_is_byte_exact() {
    let node = Node::start();
    let mut c = node.client();
    let payload = random_bytes(3 * MIB, 3);
    c.blob_set("big.three", &payload);
    let got = c.blob_get("big.three").expect("blob stored");
    assert_same_bytes(&got, &payload, "3 MiB blob");
}

#[test]
fn sixty_four_mib_blob_is_byte_exact() {
    let node = Node::start();
    let mut c = node.client();
    let payload = random_bytes(64 * MIB + 7, 64);
    c.blob_set("big.sixtyfour", &payload);
    let got = c.blob_get("big.sixtyfour").expect("blob stored");
    assert_same_bytes(&got, &payload, "64 MiB blob");
    c.assert_usable();
}

#[test]
fn payload_is_followed_directly_by_the_next_request() {
    let node = Node::start();
    let mut c = node.client();
    // No line end after the payload; the payload itself ends in what looks like a line end.
    c.send(b"KEY BLOB SET pipe.blob 4\r\nab\r\nKEY BLOB GET pipe.blob\r\nKEY GET pipe.none\r\n");
    assert_eq!(c.read_line(), "OK");
    assert_eq!(c.read_line(), "BLOB 4");
    assert_eq!(c.read_exact(4), b"ab\r\n");
    assert_eq!(c.read_line(), "OK");
    assert_eq!(c.read_response(), ["NOT_FOUND", "OK"]);
}

#[test]
fn blob_can_be_replaced_and_deleted() {
    let node = Node::start();
    let mut c = node.client();
    c.blob_set("life.k", b"first version");
    c.blob_set("life.k", b"v2");
    assert_eq!(c.blob_get("life.k").as_deref(), Some(&b"v2"[..]));
    assert_eq!(c.request_ok("SCAN life"), ["KEYS:1", "LIFE.K"]);
    assert_eq!(c.request("KEY DEL life.k"), ["OK"]);
    assert_eq!(c.blob_get("life.k"), None);
    assert_eq!(c.request_ok("COUNT life"), ["COUNT:0"]);
}

#[test]
fn blob_get_returns_a_value_stored_with_put() {
    let node = Node::start();
    let mut c = node.client();
    c.put("mixed.text", "hello  world");
    assert_eq!(
        c.blob_get("mixed.text").as_deref(),
        Some(&b"hello  world"[..])
    );
}

#[test]
fn key_get_of_a_blob_is_a_warning() {
    let node = Node::start();
    let mut c = node.client();
    c.blob_set("mixed.bin", b"raw\r\nbytes\0");
    c.request_err("KEY GET mixed.bin", "ERROR WARN");
    c.assert_usable();
    // The blob is untouched.
    assert_eq!(
        c.blob_get("mixed.bin").as_deref(),
        Some(&b"raw\r\nbytes\0"[..])
    );
}

#[test]
fn bad_length_is_refused_and_no_payload_is_read() {
    let node = Node::start();
    let mut c = node.client();
    for length in [
        "-1",
        "abc",
        "1e3",
        "0x10",
        "18446744073709551616",
        "99999999999999999999999",
    ] {
        // The request after the bad one must be read as a request, not as payload.
        c.send(format!("KEY BLOB SET badlen.k {length}\r\nKEY GET badlen.probe\r\n").as_bytes());
        assert_eq!(
            c.read_response(),
            ["ERROR WARN invalid length"],
            "length {length:?}"
        );
        assert_eq!(
            c.read_response(),
            ["NOT_FOUND", "OK"],
            "after length {length:?}"
        );
    }
    assert_eq!(c.blob_get("badlen.k"), None);
}

#[test]
fn configured_blob_limit_is_enforced() {
    let node = Node::start_with("limits:\n  max_blob_bytes: 1000");
    let mut c = node.client();
    let at_limit = random_bytes(1000, 1000);
    c.blob_set("limit.ok", &at_limit);
    assert_same_bytes(
        &c.blob_get("limit.ok").expect("blob stored"),
        &at_limit,
        "blob at the limit",
    );
    c.send(b"KEY BLOB SET limit.over 1001\r\nKEY GET limit.probe\r\n");
    assert_eq!(c.read_response(), ["ERROR WARN invalid length"]);
    assert_eq!(c.read_response(), ["NOT_FOUND", "OK"]);
    assert_eq!(c.blob_get("limit.over"), None);
}

#[test]
fn refused_blob_set_with_valid_length_consumes_the_payload() {
    let node = Node::start();
    let mut c = node.client();
    // The payload looks like a command: it must never be executed as one.
    let payload = b"KEY PUT inject.k x\r\n";
    let mut request = format!("KEY BLOB SET ATLAS.BLOBS.K {}\r\n", payload.len()).into_bytes();
    request.extend_from_slice(payload);
    c.send(&request);
    let lines = c.read_response();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ERROR WARN system table"),
        "BLOB SET on a system table answered {lines:?}"
    );
    c.assert_usable();
    assert_eq!(c.get("inject.k"), None, "payload was run as a command");
}

/// Virtual memory of process `pid`, in MiB: a zeroed buffer counts here as soon as it is
/// allocated, even before its pages are touched.
fn vm_size_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[test]
fn announced_blob_lengths_are_not_allocated_before_the_bytes_arrive() {
    let node = Node::start();
    let before = vm_size_mib(node.pid());
    // Many connections each announce a 100 MiB blob and send one byte: memory follows the
    // bytes, not the announcements (allocating up front would reserve ~1.6 GiB).
    let mut clients: Vec<_> = (0..16)
        .map(|i| {
            let mut c = node.client();
            c.send(format!("[ID:t{i}] KEY BLOB SET big.k{i} {}\r\nx", 100 * MIB).as_bytes());
            c
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let during = vm_size_mib(node.pid());
    assert!(
        during < before + 600.0,
        "virtual memory grew from {before:.0} to {during:.0} MiB for 16 bytes of payload"
    );
    // The connections still work once the payload is complete.
    let c = &mut clients[0];
    c.send(&vec![b'y'; 100 * MIB - 1]);
    c.set_read_timeout(std::time::Duration::from_secs(60));
    assert_eq!(c.read_line(), "[ID:t0] OK");
    assert_eq!(c.blob_get("big.k0").map(|b| b.len()), Some(100 * MIB));
}
