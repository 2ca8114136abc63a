//! Versions, compare-and-set, conditional deletes, transactions, expiring keys and paged
//! scans, through a connection.

use super::tests::{Harness, exchange, ready, send_and_read};
use crate::config::Limits;

/// Like `exchange`, for answers whose lines may come in any order (a watch's events
/// race the answers to the writes that made them).
async fn exchange_unordered(h: &mut Harness, input: &[u8], expect: &[u8]) {
    let got = send_and_read(h, input, expect.len()).await;
    let lines = |b: &[u8]| {
        let mut v: Vec<String> = String::from_utf8_lossy(b)
            .split("\r\n")
            .map(str::to_string)
            .collect();
        v.sort();
        v
    };
    assert_eq!(lines(&got), lines(expect));
}

#[tokio::test]
async fn versions_count_writes_and_cas_checks_them() {
    let mut h = ready(Limits::default()).await;
    exchange(&mut h, b"KEY VERSION a.k\r\n", b"VERSION:0\r\nOK\r\n").await;
    exchange(
        &mut h,
        b"KEY CAS a.k 1 x\r\n",
        b"ERROR WARN version mismatch: A.K is at version 0\r\n",
    )
    .await;
    exchange(&mut h, b"KEY CAS a.k 0 first\r\n", b"OK\r\n").await;
    exchange(&mut h, b"KEY VERSION a.k\r\n", b"VERSION:1\r\nOK\r\n").await;
    exchange(
        &mut h,
        b"KEY CAS a.k 0 again\r\n",
        b"ERROR WARN version mismatch: A.K is at version 1\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"KEY PUT a.k second\r\nKEY CAS a.k 2 third\r\n",
        b"OK\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"KEY GET a.k\r\nKEY VERSION a.k\r\n",
        b"VALUE:third\r\nOK\r\nVERSION:3\r\nOK\r\n",
    )
    .await;
    // A refused write changes neither the value nor the version.
    exchange(
        &mut h,
        b"KEY DEL a.k IF VERSION 2\r\nKEY VERSION a.k\r\n",
        b"ERROR WARN version mismatch: A.K is at version 3\r\nVERSION:3\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"KEY DEL a.k IF VERSION 3\r\nKEY GET a.k\r\nKEY VERSION a.k\r\n",
        b"OK\r\nNOT_FOUND\r\nOK\r\nVERSION:0\r\nOK\r\n",
    )
    .await;
    // A key created again starts at version 1.
    exchange(
        &mut h,
        b"KEY CAS a.k 0 back\r\nKEY VERSION a.k\r\n",
        b"OK\r\nVERSION:1\r\nOK\r\n",
    )
    .await;
}

#[tokio::test]
async fn cas_obeys_acls_and_worm_like_put() {
    let mut h = ready(Limits::default()).await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME alice\r\nKEY PUT a.k v\r\nACL GRANT a.k alice PERMS OWNER\r\n",
        b"OK\r\nOK\r\nACL granted to alice for A.K with permissions OWNER\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME mallory\r\nKEY CAS a.k 1 stolen\r\nKEY VERSION a.k\r\n",
        b"OK\r\nERROR WARN permission denied for principal 'mallory': write access denied\r\nVERSION:0\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"KEY PUT a.w WORM TTL 1h locked\r\nKEY CAS a.w 1 changed\r\n",
        b"OK\r\n",
    )
    .await;
    let mut rest = vec![0u8; 46];
    tokio::io::AsyncReadExt::read_exact(&mut h.client, &mut rest)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rest).starts_with("ERROR WARN write-once value is locked until"),
        "{}",
        String::from_utf8_lossy(&rest)
    );
}

#[tokio::test]
async fn transactions_apply_everything_or_nothing() {
    let mut h = ready(Limits::default()).await;
    exchange(
        &mut h,
        b"KEY PUT acct.a 10\r\nKEY PUT acct.b 5\r\n",
        b"OK\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"TXN BEGIN\r\nTXN IF acct.a VERSION 1\r\nTXN IF acct.c ABSENT\r\nTXN PUT acct.a 7\r\nTXN PUT acct.c 3\r\nTXN DEL acct.b\r\nTXN COMMIT\r\n",
        b"OK\r\nOK\r\nOK\r\nOK\r\nOK\r\nOK\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"SCAN acct. VALUES\r\nKEY VERSION acct.a\r\n",
        b"KEYS:2\r\nACCT.A VALUE:7\r\nACCT.C VALUE:3\r\nOK\r\nVERSION:2\r\nOK\r\n",
    )
    .await;
    // A failed condition applies none of the changes, the earlier ones included.
    exchange(
        &mut h,
        b"TXN BEGIN\r\nTXN PUT acct.a 0\r\nTXN IF acct.c VERSION 5\r\nTXN COMMIT\r\nKEY GET acct.a\r\n",
        b"OK\r\nOK\r\nOK\r\nERROR WARN condition failed: ACCT.C is at version 1\r\nVALUE:7\r\nOK\r\n",
    )
    .await;
    // One table only; the refused line leaves the transaction open.
    exchange(
        &mut h,
        b"TXN BEGIN\r\nTXN PUT acct.a 1\r\nTXN PUT other.x 1\r\nTXN ABORT\r\nKEY GET acct.a\r\n",
        b"OK\r\nOK\r\nERROR WARN a transaction stays within one table: OTHER.X is not in ACCT (one owner orders one table's writes)\r\nOK\r\nVALUE:7\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"TXN PUT acct.a 1\r\nTXN COMMIT\r\nTXN ABORT\r\nTXN BEGIN\r\nTXN BEGIN\r\nTXN COMMIT\r\n",
        b"ERROR WARN no transaction: send TXN BEGIN first\r\nERROR WARN no transaction: send TXN BEGIN first\r\nERROR WARN no transaction: send TXN BEGIN first\r\nOK\r\nERROR WARN a transaction is already open: TXN COMMIT or TXN ABORT it first\r\nOK\r\n",
    )
    .await;
    // System tables are read-only inside a transaction too.
    exchange(
        &mut h,
        b"TXN BEGIN\r\nTXN PUT atlas.x 1\r\nTXN COMMIT\r\n",
        b"OK\r\nOK\r\nERROR WARN system table ATLAS is read-only\r\n",
    )
    .await;
}

#[tokio::test]
async fn transactions_are_bounded() {
    let limits = Limits {
        max_txn_ops: 2,
        ..Limits::default()
    };
    let mut h = ready(limits).await;
    exchange(
        &mut h,
        b"TXN BEGIN\r\nTXN PUT t.a 1\r\nTXN DEL t.b\r\nTXN PUT t.c 1\r\nTXN COMMIT\r\nKEY GET t.a\r\n",
        b"OK\r\nOK\r\nOK\r\nERROR WARN transaction too large: at most 2 steps (limits.max_txn_ops)\r\nOK\r\nVALUE:1\r\nOK\r\n",
    )
    .await;
}

#[tokio::test]
async fn expiring_keys_vanish_but_can_be_rewritten_before() {
    let mut h = ready(Limits::default()).await;
    exchange(
        &mut h,
        b"KEY PUT t.e TTL 300ms soon gone\r\nKEY GET t.e\r\nKEY PUT t.e TTL 300ms rewritten\r\nKEY VERSION t.e\r\n",
        b"OK\r\nVALUE:soon gone\r\nOK\r\nOK\r\nVERSION:2\r\nOK\r\n",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(450)).await;
    exchange(
        &mut h,
        b"KEY GET t.e\r\nKEY VERSION t.e\r\nCOUNT t.\r\n",
        b"NOT_FOUND\r\nOK\r\nVERSION:0\r\nOK\r\nCOUNT:0\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"KEY PUT t.p EXPIRES 2000-01-01T00:00:00Z past\r\nKEY GET t.p\r\n",
        b"OK\r\nNOT_FOUND\r\nOK\r\n",
    )
    .await;
}

#[tokio::test]
async fn scans_page_with_a_continuation_line() {
    let limits = Limits {
        max_scan_keys: 3,
        ..Limits::default()
    };
    let mut h = ready(limits).await;
    exchange(
        &mut h,
        b"KEY PUT p.a 1\r\nKEY PUT p.b 2\r\nKEY PUT p.c 3\r\nKEY PUT p.d 4\r\nKEY BLOB SET p.e 2\r\nhi",
        b"OK\r\nOK\r\nOK\r\nOK\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"SCAN p. LIMIT 2\r\n",
        b"KEYS:2\r\nP.A\r\nP.B\r\nMORE AFTER P.B\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"SCAN p. AFTER P.B LIMIT 2 VALUES\r\n",
        b"KEYS:2\r\nP.C VALUE:3\r\nP.D VALUE:4\r\nMORE AFTER P.D\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"[ID:9] SCAN p. AFTER p.d VALUES\r\n",
        b"[ID:9] KEYS:1\r\nP.E BLOB 2\r\n[ID:9] OK\r\n",
    )
    .await;
    // The server cap applies to a plain SCAN and to a larger LIMIT.
    exchange(
        &mut h,
        b"SCAN p\r\nSCAN p LIMIT 100\r\nCOUNT p.\r\n",
        b"KEYS:3\r\nP.A\r\nP.B\r\nP.C\r\nMORE AFTER P.C\r\nOK\r\nKEYS:3\r\nP.A\r\nP.B\r\nP.C\r\nMORE AFTER P.C\r\nOK\r\nCOUNT:5\r\nOK\r\n",
    )
    .await;
    exchange(&mut h, b"SCAN p. AFTER P.E\r\n", b"EMPTY\r\nOK\r\n").await;
}

#[tokio::test]
async fn watches_stream_changes_under_their_prefix_until_unwatched() {
    // Revisions number this node's changes (the node's own record in ATLAS.NODES is 1).
    let mut h = ready(Limits::default()).await;
    exchange(&mut h, b"KEY PUT w.old 1\r\n", b"OK\r\n").await;
    exchange(&mut h, b"[ID:w] WATCH w.a\r\n", b"[ID:w] WATCHING 2\r\n").await;
    exchange_unordered(
        &mut h,
        b"KEY PUT w.a1 x\r\n",
        b"OK\r\n[ID:w] EVENT PUT W.A1 1 3\r\n",
    )
    .await;
    exchange(&mut h, b"KEY PUT w.b y\r\n", b"OK\r\n").await;
    exchange_unordered(
        &mut h,
        b"KEY PUT w.a1 z\r\n",
        b"OK\r\n[ID:w] EVENT PUT W.A1 2 5\r\n",
    )
    .await;
    exchange_unordered(
        &mut h,
        b"KEY DEL w.a1\r\n",
        b"OK\r\n[ID:w] EVENT DEL W.A1 3 6\r\n",
    )
    .await;
    // A transaction's changes arrive together, in order.
    exchange_unordered(
        &mut h,
        b"TXN BEGIN\r\nTXN PUT w.a2 1\r\nTXN PUT w.a3 1\r\nTXN COMMIT\r\n",
        b"OK\r\nOK\r\nOK\r\nOK\r\n[ID:w] EVENT PUT W.A2 1 7\r\n[ID:w] EVENT PUT W.A3 1 8\r\n",
    )
    .await;
    exchange(&mut h, b"UNWATCH w\r\n", b"[ID:w] OK\r\n").await;
    exchange(
        &mut h,
        b"KEY PUT w.a1 again\r\nUNWATCH w\r\n",
        b"OK\r\nERROR WARN no watch w on this connection\r\n",
    )
    .await;
}

#[tokio::test]
async fn watch_from_replays_history_and_bad_watches_are_refused() {
    let mut h = ready(Limits::default()).await;
    exchange_unordered(
        &mut h,
        b"KEY PUT r.a 1\r\nKEY PUT r.b 1\r\nKEY PUT r.a 2\r\n",
        b"OK\r\nOK\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"[ID:1] WATCH r.a FROM 2\r\n",
        b"[ID:1] WATCHING 4\r\n[ID:1] EVENT PUT R.A 2 4\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"WATCH r.\r\n[ID:2] WATCH r\r\n[ID:3] WATCH r. FROM x\r\n[ID:1] WATCH r.\r\n",
        b"ERROR WARN WATCH needs a tag for its events: [ID:<tag>] WATCH <prefix>\r\n[ID:2] ERROR WARN invalid watch prefix: name one table, as <table>. or <table>.<prefix> (revisions are per table)\r\n[ID:3] ERROR WARN invalid revision: expected a whole number\r\n[ID:1] ERROR WARN a watch with tag 1 is already open\r\n",
    )
    .await;
}

#[tokio::test]
async fn watches_hide_keys_the_principal_may_not_read() {
    let mut h = ready(Limits::default()).await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME alice\r\nKEY PUT s.secret 1\r\nACL GRANT s.secret alice PERMS OWNER\r\n",
        b"OK\r\nOK\r\nACL granted to alice for S.SECRET with permissions OWNER\r\nOK\r\n",
    )
    .await;
    exchange(
        &mut h,
        b"PRINCIPAL ASSUME bob\r\n[ID:b] WATCH s.\r\n",
        b"OK\r\n[ID:b] WATCHING 2\r\n",
    )
    .await;
    exchange_unordered(
        &mut h,
        b"PRINCIPAL ASSUME alice\r\nKEY PUT s.secret 2\r\nKEY PUT s.open 1\r\n",
        b"OK\r\nOK\r\nOK\r\n[ID:b] EVENT PUT S.OPEN 1 4\r\n",
    )
    .await;
}
