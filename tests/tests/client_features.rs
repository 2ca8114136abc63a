//! Versions, compare-and-set, conditional deletes, single-table transactions, expiring keys
//! and paged scans: on a real single node across a restart, and in a three-node cluster
//! across nodes and through the failover of the table's owner.

use std::thread;
use std::time::{Duration, Instant};

use atlas_tests::cluster::TestCluster;
use atlas_tests::{Node, explain};

#[test]
fn versions_cas_and_transactions_survive_a_restart() {
    let mut node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request_ok("KEY VERSION cfg.mode"), ["VERSION:0"]);
    c.request_ok("KEY CAS cfg.mode 0 blue");
    c.request_err(
        "KEY CAS cfg.mode 0 green",
        "ERROR WARN version mismatch: CFG.MODE is at version 1",
    );
    c.request_ok("TXN BEGIN");
    c.request_ok("TXN IF cfg.mode VERSION 1");
    c.request_ok("TXN IF cfg.size ABSENT");
    c.request_ok("TXN PUT cfg.mode green");
    c.request_ok("TXN PUT cfg.size 3");
    c.request_ok("TXN COMMIT");
    c.request_ok("KEY PUT cfg.tmp TTL 1h kept");
    node.kill9();
    node.restart();
    let mut c = node.client();
    assert_eq!(c.request_ok("KEY VERSION cfg.mode"), ["VERSION:2"]);
    assert_eq!(
        c.request_ok("SCAN cfg. VALUES"),
        [
            "KEYS:3",
            "CFG.MODE VALUE:green",
            "CFG.SIZE VALUE:3",
            "CFG.TMP VALUE:kept"
        ]
    );
    c.request_err(
        "KEY DEL cfg.mode IF VERSION 1",
        "ERROR WARN version mismatch: CFG.MODE is at version 2",
    );
    c.request_ok("KEY DEL cfg.mode IF VERSION 2");
    assert_eq!(c.get("cfg.mode"), None);
    // Bad input: clear errors, the connection stays usable.
    c.request_err("KEY CAS cfg.mode x v", "ERROR WARN invalid version");
    c.request_err("TXN COMMIT", "ERROR WARN no transaction");
    c.request_err("SCAN cfg. LIMIT 0", "ERROR WARN invalid limit");
    c.assert_usable();
    c.put("logs.a", "x");
    let list = c.request_ok("TABLE LIST");
    assert_eq!(list.len(), 2, "system tables are left out: {list:?}");
    assert!(
        list[0].starts_with(
            "TABLE CFG owner=1 region=local group=- replication=global pinned=- last_slot="
        ),
        "{list:?}"
    );
    assert!(list[1].starts_with("TABLE LOGS owner=1 "), "{list:?}");
}

#[test]
fn scans_page_through_many_keys() {
    let node = Node::start_with("limits: {max_scan_keys: 50}");
    let mut c = node.client();
    for i in 0..120 {
        c.put(&format!("logs.k{i:03}"), &i.to_string());
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let line = match &after {
            None => "SCAN logs.".to_string(),
            Some(last) => format!("SCAN logs. AFTER {last}"),
        };
        let lines = c.request_ok(&line);
        let n: usize = lines[0]["KEYS:".len()..].parse().expect("KEYS:<n>");
        assert!(n <= 50, "the server cap holds: {n}");
        seen.extend(lines[1..=n].iter().cloned());
        after = lines
            .get(n + 1)
            .and_then(|l| l.strip_prefix("MORE AFTER "))
            .map(str::to_string);
        if after.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (0..120).map(|i| format!("LOGS.K{i:03}")).collect();
    assert_eq!(seen, expected, "every key once, in order");
    assert_eq!(c.request_ok("COUNT logs."), ["COUNT:120"]);
}

/// Retries `line` at `node` until it is answered with `OK` (an owner is being replaced).
fn until_ok(cluster: &TestCluster, node: usize, line: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines = cluster.nodes[node].client().request(line);
        if lines.last().map(String::as_str) == Some("OK") || Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn versions_transactions_and_expiry_agree_across_nodes_and_failover() {
    let mut cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    let mut a = cluster.nodes[0].client();
    a.request_ok("KEY CAS acct.a 0 10");
    assert_eq!(
        cluster.nodes[1].client().request_ok("KEY VERSION acct.a"),
        ["VERSION:1"]
    );
    cluster.nodes[2].client().request_err(
        "KEY CAS acct.a 0 x",
        "ERROR WARN version mismatch: ACCT.A is at version 1",
    );

    let mut b = cluster.nodes[1].client();
    for line in [
        "TXN BEGIN",
        "TXN IF acct.a VERSION 1",
        "TXN PUT acct.a 7",
        "TXN PUT acct.b 3",
        "TXN COMMIT",
    ] {
        b.request_ok(line);
    }
    let mut c = cluster.nodes[2].client();
    for line in ["TXN BEGIN", "TXN IF acct.b ABSENT", "TXN DEL acct.a"] {
        c.request_ok(line);
    }
    c.request_err(
        "TXN COMMIT",
        "ERROR WARN condition failed: ACCT.B is at version 1",
    );
    for node in &cluster.nodes {
        assert_eq!(
            node.client().request_ok("SCAN acct. VALUES"),
            ["KEYS:2", "ACCT.A VALUE:7", "ACCT.B VALUE:3"],
            "the same state at every node"
        );
        let list = node.client().request_ok("TABLE LIST");
        let acct = list
            .iter()
            .find(|l| l.starts_with("TABLE ACCT "))
            .unwrap_or_else(|| panic!("ACCT listed: {list:?}"));
        assert!(
            acct.contains(" group=- replication=global pinned=- last_slot="),
            "{acct}"
        );
        assert!(!acct.contains("owner=none"), "an owner is known: {acct}");
    }

    a.request_ok("KEY PUT sess.x TTL 1500ms v");
    assert_eq!(
        cluster.nodes[2].client().get("sess.x").as_deref(),
        Some("v")
    );
    thread::sleep(Duration::from_millis(2_000));
    for node in &cluster.nodes {
        assert_eq!(node.client().get("sess.x"), None, "expired everywhere");
    }

    // Versions survive the owner's failover; a compare-and-set at the new owner works.
    let owner = cluster.owner_of(0, "acct").expect("an owner");
    cluster.nodes[owner].kill9();
    let other = (owner + 1) % 3;
    assert_eq!(
        until_ok(&cluster, other, "KEY VERSION acct.a"),
        ["VERSION:2", "OK"]
    );
    assert_eq!(until_ok(&cluster, other, "KEY CAS acct.a 2 8"), ["OK"]);
    let third = (owner + 2) % 3;
    assert_eq!(
        cluster.nodes[third]
            .client()
            .request_ok("KEY VERSION acct.a"),
        ["VERSION:3"]
    );
    cluster.nodes[owner].restart();
    let mut back = cluster.nodes[owner].client();
    assert_eq!(back.request_ok("KEY VERSION acct.a"), ["VERSION:3"]);
    assert_eq!(back.get("acct.a").as_deref(), Some("8"));
}

/// Reads `n` watch events (`[ID:<tag>] EVENT …` lines) as (kind, key, version, revision).
fn events(
    client: &mut atlas_tests::Client,
    tag: &str,
    n: usize,
) -> Vec<(String, String, u64, u64)> {
    let prefix = format!("[ID:{tag}] EVENT ");
    (0..n)
        .map(|_| {
            let line = client.read_line();
            let rest = line
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("expected an event, got {line:?}"));
            let parts: Vec<&str> = rest.split(' ').collect();
            (
                parts[0].to_string(),
                parts[1].to_string(),
                parts[2].parse().expect("version"),
                parts[3].parse().expect("revision"),
            )
        })
        .collect()
}

#[test]
fn watches_see_every_change_in_order_at_any_node_through_failover() {
    let mut cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    cluster.nodes[0].client().put("feed.k", "0");
    let owner = cluster.owner_of(0, "feed").expect("an owner");
    // Watch at a node that is not the owner (it survives the owner's kill -9).
    let watcher_node = (owner + 1) % 3;
    let writer_node = (owner + 2) % 3;
    let mut watcher = cluster.nodes[watcher_node].client();
    watcher.set_read_timeout(Duration::from_secs(20));
    watcher.send_line("[ID:w] WATCH feed.");
    let started = watcher.read_line();
    let start: u64 = started
        .strip_prefix("[ID:w] WATCHING ")
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{started:?}"));
    for i in 1..=5 {
        cluster.nodes[i % 3].client().put("feed.k", &i.to_string());
    }
    cluster.nodes[owner].kill9();
    for i in 6..=8 {
        let line = format!("KEY PUT feed.k {i}");
        assert_eq!(until_ok(&cluster, writer_node, &line), ["OK"]);
    }
    until_ok(&cluster, writer_node, "KEY DEL feed.k");
    let seen = events(&mut watcher, "w", 9);
    let versions: Vec<u64> = seen.iter().map(|e| e.2).collect();
    assert_eq!(
        versions,
        (2..=10).collect::<Vec<_>>(),
        "none lost or repeated: {seen:?}"
    );
    assert_eq!(seen[8].0, "DEL");
    let revisions: Vec<u64> = seen.iter().map(|e| e.3).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]) && revisions[0] > start,
        "in commit order after the start: {start} {revisions:?}"
    );
    // Revisions are log slots, the same at every node: a watch FROM the start at another
    // node replays the same changes.
    let mut replay = cluster.nodes[writer_node].client();
    replay.set_read_timeout(Duration::from_secs(20));
    replay.send_line(&format!("[ID:r] WATCH feed.k FROM {start}"));
    let line = replay.read_line();
    if line.starts_with("[ID:r] WATCHING ") {
        assert_eq!(
            events(&mut replay, "r", 9),
            seen,
            "the same history at another node"
        );
    } else {
        // That node may have been behind the retained log and installed a snapshot.
        assert!(
            line.starts_with("[ID:r] ERROR WARN compacted: oldest revision"),
            "{line}"
        );
    }
    watcher.send_line("UNWATCH w");
    assert_eq!(watcher.read_line(), "[ID:w] OK");
}

fn atlas_kv(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["kv", "--socket", socket.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    atlas_tests::run_with_input(
        std::process::Command::new(atlas_tests::atlas_bin()).args(&all),
        b"",
        Duration::from_secs(60),
    )
}

#[test]
fn kv_backup_and_restore_carry_values_blobs_deadlines_and_acls() {
    use std::os::unix::fs::PermissionsExt;
    let source = Node::start();
    let mut c = source.client();
    c.put("app.plain", "hello world");
    c.request_ok("KEY CAS app.tricky 0 PRINCIPAL bob WORM TTL 1h x");
    c.request_ok("KEY PUT app.locked WORM TTL 1h sealed");
    c.request_ok("KEY PUT app.session TTL 1h temp");
    let blob = atlas_tests::random_bytes(2 * 1024 * 1024 + 17, 3);
    c.blob_set("app.file", &blob);
    c.request_ok("PRINCIPAL ASSUME alice");
    c.put("app.private", "only alice and bob");
    c.request_ok("ACL GRANT app.private bob PERMS READ");
    c.request_ok("ACL GRANT app.private alice PERMS OWNER");
    c.request_ok("ACL GRANT app.private carol PERMS OWNER");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.backup");
    let out = atlas_kv(&source.socket_path(), &["backup", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = atlas_kv(&source.socket_path(), &["backup", file.to_str().unwrap()]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing file is never overwritten"
    );

    let target = Node::start();
    let out = atlas_kv(&target.socket_path(), &["restore", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let mut t = target.client();
    assert_eq!(t.get("app.plain").as_deref(), Some("hello world"));
    assert_eq!(
        t.get("app.tricky").as_deref(),
        Some("PRINCIPAL bob WORM TTL 1h x"),
        "values are restored byte for byte, clause-like text included"
    );
    assert_eq!(t.get("app.session").as_deref(), Some("temp"));
    t.request_err(
        "KEY PUT app.locked changed",
        "ERROR WARN write-once value is locked until",
    );
    atlas_tests::assert_same_bytes(
        &t.blob_get("app.file").expect("blob"),
        &blob,
        "restored blob",
    );
    assert_eq!(t.request_ok("KEY VERSION app.plain"), ["VERSION:1"]);
    assert_eq!(
        t.get("app.private"),
        None,
        "hidden from the anonymous principal"
    );
    t.request_ok("PRINCIPAL ASSUME bob");
    assert_eq!(t.get("app.private").as_deref(), Some("only alice and bob"));
    t.request_err("KEY PUT app.private mine", "ERROR WARN permission denied");
    t.request_ok("PRINCIPAL ASSUME carol");
    t.request_ok("KEY PUT app.private carol owns it too");
    // Restoring onto a node that holds the keys stops at the first one.
    let out = atlas_kv(&target.socket_path(), &["restore", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    // A key with a deadline is not overwritten either (its restore is a PUT, not a CAS).
    let partial = Node::start();
    partial.client().put("app.session", "mine");
    let out = atlas_kv(&partial.socket_path(), &["restore", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(partial.client().get("app.session").as_deref(), Some("mine"));
    // A damaged file is refused before anything is written.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 5);
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &bytes).unwrap();
    let empty = Node::start();
    let out = atlas_kv(&empty.socket_path(), &["restore", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert_eq!(empty.client().request_ok("COUNT app."), ["COUNT:0"]);
}

#[test]
fn a_cluster_backup_holds_every_acknowledged_write() {
    let cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    for i in 0..20 {
        cluster.nodes[i % 3]
            .client()
            .put(&format!("inv.k{i:02}"), &i.to_string());
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let out = atlas_kv(
        &cluster.nodes[1].socket_path(),
        &["backup", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let target = Node::start();
    let out = atlas_kv(&target.socket_path(), &["restore", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        target.client().request_ok("SCAN inv. VALUES"),
        cluster.nodes[0].client().request_ok("SCAN inv. VALUES")
    );
    assert_eq!(target.client().request_ok("COUNT inv."), ["COUNT:20"]);
}

#[test]
fn expired_keys_end_with_a_del_event_single_node_and_cluster() {
    // A single node removes them itself.
    let node = Node::start_with("expiry_sweep_ms: 200");
    let mut watcher = node.client();
    watcher.set_read_timeout(Duration::from_secs(10));
    watcher.send_line("[ID:e] WATCH sess.");
    assert!(watcher.read_line().starts_with("[ID:e] WATCHING "));
    node.client().request_ok("KEY PUT sess.x TTL 300ms v");
    let seen = events(&mut watcher, "e", 2);
    assert_eq!((seen[0].0.as_str(), seen[0].2), ("PUT", 1));
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.as_str(), seen[1].2),
        ("DEL", "SESS.X", 2)
    );

    // In a cluster the owner commits the removal: every node's watchers see the same DEL.
    let cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\nexpiry_sweep_ms: 200\n");
    cluster.nodes[0].client().put("sess.warm", "1");
    let mut watchers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| {
            let mut c = n.client();
            c.set_read_timeout(Duration::from_secs(15));
            c.send_line("[ID:e] WATCH sess.y");
            assert!(c.read_line().starts_with("[ID:e] WATCHING "));
            c
        })
        .collect();
    cluster.nodes[1]
        .client()
        .request_ok("KEY PUT sess.y TTL 400ms v");
    let per_node: Vec<_> = watchers.iter_mut().map(|w| events(w, "e", 2)).collect();
    assert_eq!(per_node[0][1].0, "DEL", "{per_node:?}");
    assert!(
        per_node.iter().all(|e| *e == per_node[0]),
        "the same events everywhere: {per_node:?}"
    );
    for node in &cluster.nodes {
        assert_eq!(node.client().get("sess.y"), None);
    }
}
