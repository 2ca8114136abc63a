use super::*;
use crate::command::NodeIdentity;
use crate::config::Durability;
use crate::storage::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

pub(super) struct Harness {
    pub(super) client: DuplexStream,
    _dir: tempfile::TempDir,
    pub(super) shutdown: watch::Sender<bool>,
}

pub(super) async fn start(limits: Limits) -> Harness {
    start_as(limits, Peer::Local).await
}

/// A session whose listener established `peer` (as `client_listen` does from a certificate).
pub(super) async fn start_as(limits: Limits, peer: Peer) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Durability::Relaxed).unwrap());
    let node = NodeIdentity::for_test();
    let engine = Arc::new(Engine::new(store, node, crate::command::Backend::Standalone).unwrap());
    let (client, server) = tokio::io::duplex(1 << 20);
    let (tx, rx) = watch::channel(false);
    tokio::spawn(serve(
        server,
        engine,
        limits,
        rx,
        Arc::new(NoObserver),
        peer,
    ));
    Harness {
        client,
        _dir: dir,
        shutdown: tx,
    }
}

/// A session past the handshake.
pub(super) async fn ready(limits: Limits) -> Harness {
    ready_as(limits, Peer::Local).await
}

pub(super) async fn ready_as(limits: Limits, peer: Peer) -> Harness {
    let mut h = start_as(limits, peer).await;
    exchange(
        &mut h,
        b"HELLO 1.0 t\r\n",
        b"WELCOME 1.0 Chronalys/1.0\r\nREADY\r\n",
    )
    .await;
    h
}

/// Sends `input` and reads the next `len` bytes of answer (within 10 s).
pub(super) async fn send_and_read(h: &mut Harness, input: &[u8], len: usize) -> Vec<u8> {
    h.client.write_all(input).await.unwrap();
    let mut got = vec![0u8; len];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        h.client.read_exact(&mut got),
    )
    .await
    .expect("reply in time")
    .unwrap();
    got
}

pub(super) async fn exchange(h: &mut Harness, input: &[u8], expect: &[u8]) {
    let got = send_and_read(h, input, expect.len()).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expect)
    );
}

#[tokio::test]
async fn handshake_then_commands() {
    let mut h = start(Limits::default()).await;
    exchange(&mut h, b"", b"WELCOME 1.0 Chronalys/1.0\r\n").await;
    exchange(&mut h, b"HELLO 1.0 t\r\n", b"READY\r\n").await;
    exchange(
        &mut h,
        b"KEY PUT a.b x y\r\n\r\n  \nKEY GET A.B\n",
        b"OK\r\nVALUE:x y\r\nOK\r\n",
    )
    .await;
    exchange(&mut h, b"KEY BLOB SET a.c 3\r\n\r\n\0", b"OK\r\n").await;
    exchange(&mut h, b"KEY BLOB GET a.c\r\n", b"BLOB 3\r\n\r\n\0OK\r\n").await;
    exchange(
        &mut h,
        b"KEY BLOB SET a.c -1\r\nPRINCIPAL WHOAMI\r\n",
        b"ERROR WARN invalid length\r\nPRINCIPAL (none)\r\nOK\r\n",
    )
    .await;
}

/// Everything the server sends until it closes the connection (within 10 s).
async fn read_until_closed(h: &mut Harness) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        h.client.read_to_end(&mut all),
    )
    .await
    .expect("closed in time")
    .unwrap();
    String::from_utf8_lossy(&all).into_owned()
}

/// Requests the client sent before the server shut down are answered, half a line
/// included; then the goodbye, and the connection closes; a handshake under way still
/// gets its READY.
#[tokio::test]
async fn requests_sent_before_a_shutdown_are_answered_then_the_connection_closes() {
    let mut h = ready(Limits::default()).await;
    h.client
        .write_all(b"KEY PUT t.a 1\r\nKEY PUT t.b 2\r\nKEY GET t.a\r\nKEY PUT t.c")
        .await
        .unwrap();
    h.shutdown.send(true).unwrap();
    h.client.write_all(b" 3\r\n").await.unwrap();
    assert_eq!(
        read_until_closed(&mut h).await,
        "OK\r\nOK\r\nVALUE:1\r\nOK\r\nOK\r\nERROR FATAL server shutting down\r\n"
    );
    // A client whose HELLO comes right after the shutdown.
    let mut h = start(Limits::default()).await;
    exchange(&mut h, b"", b"WELCOME 1.0 Chronalys/1.0\r\n").await;
    h.shutdown.send(true).unwrap();
    h.client
        .write_all(b"HELLO 1.0 t\r\nKEY PUT t.d 4\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_until_closed(&mut h).await,
        "READY\r\nOK\r\nERROR FATAL server shutting down\r\n"
    );
}

#[tokio::test]
async fn bad_handshake_is_fatal() {
    let mut h = start(Limits::default()).await;
    exchange(
        &mut h,
        b"HELLO 2.0 t\r\n",
        b"WELCOME 1.0 Chronalys/1.0\r\nERROR FATAL invalid protocol version\r\n",
    )
    .await;
    let mut rest = Vec::new();
    h.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn long_line_is_fatal_and_blob_limit_is_warn() {
    let limits = Limits {
        max_line_bytes: 100,
        max_blob_bytes: 10,
        ..Limits::default()
    };
    let mut h = ready(limits).await;
    exchange(
        &mut h,
        b"KEY BLOB SET a.b 11\r\n",
        b"ERROR WARN invalid length\r\n",
    )
    .await;
    let long = format!("KEY PUT a.b {}\r\n", "x".repeat(200));
    exchange(
        &mut h,
        long.as_bytes(),
        b"ERROR FATAL command exceeded maximum length\r\n",
    )
    .await;
    let mut rest = Vec::new();
    h.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn tagged_requests_carry_their_tag_and_principal() {
    let mut h = ready(Limits::default()).await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME alice\r\n[ID:1] ACL GRANT t.k alice PERMS OWNER\r\n",
        b"OK\r\n[ID:1] ACL granted to alice for T.K with permissions OWNER\r\n[ID:1] OK\r\n",
    )
    .await;
    exchange(&mut h, b"[ID:2] KEY PUT t.k v\r\n", b"[ID:2] OK\r\n").await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME bob\r\n[ID:3] KEY PUT t.k w\r\n",
        b"OK\r\n[ID:3] ERROR WARN permission denied for principal 'bob': write access denied\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"[ID:4] KEY GET t.k\r\n",
        b"[ID:4] NOT_FOUND\r\n[ID:4] OK\r\n",
    )
    .await;
}

fn certified(principal: &str, admin: bool) -> Peer {
    Peer::Certified {
        principal: principal.into(),
        admin,
    }
}

#[tokio::test]
async fn only_administrators_move_or_pin_tables() {
    let mut h = ready_as(Limits::default(), certified("alice", false)).await;
    let refused = b"ERROR WARN permission denied: alice may not move or pin tables on this listener (atlas.client_admins)\r\n";
    for line in [
        &b"TABLE PIN t local\r\n"[..],
        b"TABLE MOVE t TO local\r\n",
        b"TABLE UNPIN t\r\n",
    ] {
        exchange(&mut h, line, refused).await;
    }
    for peer in [certified("ops", true), Peer::Local] {
        let mut h = ready_as(Limits::default(), peer).await;
        exchange(
            &mut h,
            b"TABLE PIN t local\r\nTABLE UNPIN t\r\n",
            b"OK\r\nOK\r\n",
        )
        .await;
    }
}

#[tokio::test]
async fn a_certified_session_starts_as_its_principal_and_cannot_become_another() {
    let mut h = ready_as(Limits::default(), certified("alice", false)).await;
    exchange(
        &mut h,
        b"PRINCIPAL WHOAMI\r\n",
        b"PRINCIPAL alice\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME bob\r\nPRINCIPAL WHOAMI\r\n",
        b"ERROR WARN permission denied: alice may not assume another principal on this listener \
          (atlas.client_admins)\r\nPRINCIPAL alice\r\nOK\r\n",
    )
    .await;
    // Its own name is no change, so it is allowed.
    exchange(&mut h, b"PRINCIPAL ASSUME alice\r\n", b"OK\r\n").await;
    exchange(
        &mut h,
        b"[ID:b] BACKUP\r\n",
        b"[ID:b] ERROR WARN permission denied: alice may not run BACKUP on this listener \
          (atlas.client_admins)\r\n",
    )
    .await;
    // ACLs are judged for the certified principal: alice owns what she grants herself.
    exchange(
        &mut h,
        b"ACL GRANT t.k alice PERMS OWNER\r\nKEY PUT t.k v\r\nKEY GET t.k\r\n",
        b"ACL granted to alice for T.K with permissions OWNER\r\nOK\r\nOK\r\nVALUE:v\r\nOK\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_certified_admin_may_assume_and_back_up_and_a_local_peer_always_may() {
    for peer in [certified("ops", true), Peer::Local] {
        let mut h = ready_as(Limits::default(), peer.clone()).await;
        exchange(
            &mut h,
            b"PRINCIPAL ASSUME bob\r\nPRINCIPAL WHOAMI\r\n",
            b"OK\r\nPRINCIPAL bob\r\nOK\r\n",
        )
        .await;
        // Having become bob, an admin connection may still become someone else: the right
        // belongs to the certificate, not to the current name.
        exchange(&mut h, b"PRINCIPAL ASSUME carol\r\n", b"OK\r\n").await;
        let header = send_and_read(&mut h, b"BACKUP\r\n", 5).await;
        assert_eq!(&header, b"BLOB ", "{peer:?}");
    }
}
