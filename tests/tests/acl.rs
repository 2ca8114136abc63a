//! Principals and per-key ACLs: owners, readers, writers, and what everyone else sees.

use atlas_tests::{Client, Node};

fn denied(principal: &str) -> String {
    format!("ERROR WARN permission denied for principal '{principal}': write access denied")
}

fn as_principal(node: &Node, name: &str) -> Client {
    let mut c = node.client();
    assert_eq!(c.request(&format!("PRINCIPAL ASSUME {name}")), ["OK"]);
    c
}

/// A node with `doc.a` = `secret`, owned by alice. Returns (node, alice's client).
fn owned_by_alice() -> (Node, Client) {
    let node = Node::start();
    let mut alice = as_principal(&node, "alice");
    alice.put("doc.a", "secret");
    assert_eq!(
        alice.request_ok("ACL GRANT doc.a alice PERMS OWNER"),
        ["ACL granted to alice for DOC.A with permissions OWNER"]
    );
    (node, alice)
}

#[test]
fn key_without_owners_is_public() {
    let node = Node::start();
    let mut anonymous = node.client();
    let mut bob = as_principal(&node, "bob");
    anonymous.put("pub.k", "from anonymous");
    assert_eq!(bob.get("pub.k").as_deref(), Some("from anonymous"));
    bob.put("pub.k", "from bob");
    assert_eq!(anonymous.get("pub.k").as_deref(), Some("from bob"));
    assert_eq!(bob.request("KEY DEL pub.k"), ["OK"]);
    assert_eq!(anonymous.get("pub.k"), None);
}

#[test]
fn owner_reads_and_writes() {
    let (_node, mut alice) = owned_by_alice();
    assert_eq!(alice.get("doc.a").as_deref(), Some("secret"));
    alice.put("doc.a", "updated");
    assert_eq!(alice.get("DOC.A").as_deref(), Some("updated"));
    alice.blob_set("doc.a", b"blob by owner");
    assert_eq!(
        alice.blob_get("doc.a").as_deref(),
        Some(&b"blob by owner"[..])
    );
}

#[test]
fn others_see_nothing_and_cannot_write() {
    let (node, _alice) = owned_by_alice();
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.request("KEY GET doc.a"), ["NOT_FOUND", "OK"]);
    assert_eq!(bob.request("KEY BLOB GET doc.a"), ["EMPTY", "OK"]);
    assert_eq!(bob.request("KEY PUT doc.a mine"), [denied("bob")]);
    assert_eq!(bob.request("KEY DEL doc.a"), [denied("bob")]);
    // Length 0: no payload that the server might or might not read.
    assert_eq!(bob.request("KEY BLOB SET doc.a 0"), [denied("bob")]);
    bob.assert_usable();

    let mut anonymous = node.client();
    assert_eq!(anonymous.request("KEY GET doc.a"), ["NOT_FOUND", "OK"]);
    assert_eq!(anonymous.request("KEY PUT doc.a mine"), [denied("(none)")]);

    let mut alice = as_principal(&node, "alice");
    assert_eq!(alice.get("doc.a").as_deref(), Some("secret"));
}

#[test]
fn denied_blob_set_still_consumes_its_payload() {
    let (node, mut alice) = owned_by_alice();
    let mut bob = as_principal(&node, "bob");
    // The payload looks like a command: it must never be executed as one.
    let payload = b"KEY PUT inject.k x\r\n";
    let mut request = format!("KEY BLOB SET doc.a {}\r\n", payload.len()).into_bytes();
    request.extend_from_slice(payload);
    bob.send(&request);
    assert_eq!(bob.read_response(), [denied("bob")]);
    bob.assert_usable();
    assert_eq!(bob.get("inject.k"), None, "payload was run as a command");
    assert_eq!(alice.get("doc.a").as_deref(), Some("secret"));
}

#[test]
fn reader_reads_but_cannot_write() {
    let (node, mut alice) = owned_by_alice();
    assert_eq!(
        alice.request_ok("ACL GRANT doc.a bob PERMS read"),
        ["ACL granted to bob for DOC.A with permissions READ"]
    );
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.get("doc.a").as_deref(), Some("secret"));
    assert_eq!(bob.request("KEY PUT doc.a mine"), [denied("bob")]);
    assert_eq!(bob.request("KEY DEL doc.a"), [denied("bob")]);
    assert_eq!(bob.get("doc.a").as_deref(), Some("secret"));
}

#[test]
fn writer_writes_but_cannot_read() {
    let (node, mut alice) = owned_by_alice();
    assert_eq!(
        alice.request_ok("ACL GRANT doc.a carol PERMS Write"),
        ["ACL granted to carol for DOC.A with permissions WRITE"]
    );
    let mut carol = as_principal(&node, "carol");
    carol.put("doc.a", "by carol");
    assert_eq!(
        carol.get("doc.a"),
        None,
        "write permission does not grant read"
    );
    assert_eq!(alice.get("doc.a").as_deref(), Some("by carol"));
}

#[test]
fn only_owners_change_the_acl() {
    let (node, mut alice) = owned_by_alice();
    alice.request_ok("ACL GRANT doc.a bob PERMS READ");
    alice.request_ok("ACL GRANT doc.a carol PERMS WRITE");
    let prefix = |p: &str| format!("ERROR WARN permission denied for principal '{p}'");
    let mut bob = as_principal(&node, "bob");
    bob.request_err("ACL GRANT doc.a bob PERMS OWNER", &prefix("bob"));
    let mut carol = as_principal(&node, "carol");
    carol.request_err("ACL GRANT doc.a carol PERMS OWNER", &prefix("carol"));
    carol.request_err("ACL REVOKE doc.a alice PERMS OWNER", &prefix("carol"));
    let mut dave = as_principal(&node, "dave");
    dave.request_err("ACL GRANT doc.a dave PERMS READ", &prefix("dave"));
    let mut anonymous = node.client();
    anonymous.request_err("ACL GRANT doc.a x PERMS READ", &prefix("(none)"));
    // None of that took effect.
    assert_eq!(bob.request("KEY PUT doc.a x"), [denied("bob")]);
    assert_eq!(dave.get("doc.a"), None);
    assert_eq!(alice.get("doc.a").as_deref(), Some("secret"));
}

#[test]
fn second_owner_has_full_rights() {
    let (node, mut alice) = owned_by_alice();
    alice.request_ok("ACL GRANT doc.a erin PERMS OWNER");
    let mut erin = as_principal(&node, "erin");
    assert_eq!(erin.get("doc.a").as_deref(), Some("secret"));
    erin.put("doc.a", "by erin");
    assert_eq!(
        erin.request_ok("ACL GRANT doc.a bob PERMS READ"),
        ["ACL granted to bob for DOC.A with permissions READ"]
    );
    assert_eq!(
        as_principal(&node, "bob").get("doc.a").as_deref(),
        Some("by erin")
    );
}

#[test]
fn revoke_removes_the_permission() {
    let (node, mut alice) = owned_by_alice();
    alice.request_ok("ACL GRANT doc.a bob PERMS READ");
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.get("doc.a").as_deref(), Some("secret"));
    assert_eq!(
        alice.request_ok("ACL REVOKE doc.a bob PERMS read"),
        ["ACL revoked from bob for DOC.A with permissions READ"]
    );
    assert_eq!(bob.get("doc.a"), None);
}

#[test]
fn revoking_the_last_owner_makes_the_key_public() {
    let (node, mut alice) = owned_by_alice();
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.get("doc.a"), None);
    assert_eq!(
        alice.request_ok("ACL REVOKE doc.a alice PERMS OWNER"),
        ["ACL revoked from alice for DOC.A with permissions OWNER"]
    );
    assert_eq!(bob.get("doc.a").as_deref(), Some("secret"));
    bob.put("doc.a", "public now");
    assert_eq!(node.client().get("doc.a").as_deref(), Some("public now"));
}

#[test]
fn deleting_the_value_keeps_the_acl() {
    let (node, mut alice) = owned_by_alice();
    assert_eq!(alice.request("KEY DEL doc.a"), ["OK"]);
    assert_eq!(alice.get("doc.a"), None);
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.request("KEY PUT doc.a squatter"), [denied("bob")]);
    alice.put("doc.a", "again");
    assert_eq!(bob.get("doc.a"), None);
    assert_eq!(alice.get("doc.a").as_deref(), Some("again"));
}

#[test]
fn scan_and_count_leave_out_unreadable_keys() {
    let (node, mut alice) = owned_by_alice();
    alice.put("doc.b", "public");
    alice.put("doc.c", "private too");
    alice.request_ok("ACL GRANT doc.c alice PERMS OWNER");
    alice.request_ok("ACL GRANT doc.c bob PERMS READ");

    assert_eq!(
        alice.request_ok("SCAN doc."),
        ["KEYS:3", "DOC.A", "DOC.B", "DOC.C"]
    );
    assert_eq!(alice.request_ok("COUNT doc."), ["COUNT:3"]);
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.request_ok("SCAN doc."), ["KEYS:2", "DOC.B", "DOC.C"]);
    assert_eq!(bob.request_ok("COUNT doc."), ["COUNT:2"]);
    let mut anonymous = node.client();
    assert_eq!(anonymous.request_ok("SCAN doc."), ["KEYS:1", "DOC.B"]);
    assert_eq!(anonymous.request_ok("COUNT doc."), ["COUNT:1"]);
    assert_eq!(anonymous.request_ok("SCAN doc.a"), ["EMPTY"]);
}

#[test]
fn owned_blob_is_hidden_from_others() {
    let node = Node::start();
    let mut alice = as_principal(&node, "alice");
    alice.blob_set("files.report", b"\x00\x01 private bytes\r\n");
    alice.request_ok("ACL GRANT files.report alice PERMS OWNER");
    let mut bob = as_principal(&node, "bob");
    assert_eq!(bob.blob_get("files.report"), None);
    assert_eq!(
        alice.blob_get("files.report").as_deref(),
        Some(&b"\x00\x01 private bytes\r\n"[..])
    );
}

#[test]
fn acl_belongs_to_the_session_principal_not_the_connection() {
    let (node, _alice) = owned_by_alice();
    let mut c = as_principal(&node, "bob");
    assert_eq!(c.get("doc.a"), None);
    assert_eq!(c.request("PRINCIPAL ASSUME alice"), ["OK"]);
    assert_eq!(c.get("doc.a").as_deref(), Some("secret"));
    // The PRINCIPAL clause of KEY PUT is audit only: it does not authorise.
    assert_eq!(c.request("PRINCIPAL ASSUME bob"), ["OK"]);
    assert_eq!(
        c.request("KEY PUT doc.a PRINCIPAL alice forged"),
        [denied("bob")]
    );
}

#[test]
fn bad_permission_word_is_refused() {
    let node = Node::start();
    let mut c = node.client();
    c.put("perm.k", "v");
    c.request_err(
        "ACL GRANT perm.k bob PERMS ADMIN",
        "ERROR WARN invalid permission",
    );
    c.request_err(
        "ACL REVOKE perm.k bob PERMS everything",
        "ERROR WARN invalid permission",
    );
    c.request_err("ACL GRANT perm.k", "ERROR WARN usage:");
    c.request_err("ACL FROB perm.k bob PERMS READ", "ERROR WARN usage:");
    // Nothing was granted: the key is still public.
    c.put("perm.k", "still public");
    assert_eq!(
        as_principal(&node, "bob").get("perm.k").as_deref(),
        Some("still public")
    );
}
