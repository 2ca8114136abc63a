//! Clusters of real processes on loopback: join over HTTPS, replication, failover under
//! kill -9, SIGSTOP and partitions, late joiners; every history is checked for
//! linearizability and no acknowledged write may be lost.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use atlas_tests::cluster::{
    CREDENTIALS, History, TestCluster, Worker, acknowledged_writes, assert_linearizable,
    final_reads, node_yaml, run_workload, signal, start_expecting_failure,
};
use atlas_tests::{Node, free_port};

/// How long `SOAK_SECONDS` (set by `make soak`) stretches each nemesis phase.
fn phase(default_ms: u64) -> Duration {
    let scale = std::env::var("ATLAS_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(1, |s| (s / 10).max(1));
    Duration::from_millis(default_ms * scale)
}

fn keys() -> Vec<String> {
    ["acct.a", "acct.b", "acct.c", "cart.x", "cart.y"]
        .iter()
        .map(|k| k.to_string())
        .collect()
}

fn workers(cluster: &TestCluster, keys: &[String]) -> Vec<Worker> {
    (0..cluster.len())
        .map(|i| Worker {
            socket: cluster.nodes[i].socket_path(),
            client_id: i as u64 + 1,
            keys: keys.to_vec(),
        })
        .collect()
}

/// Starts the workload, runs `nemesis`, stops the workload, checks the history.
fn with_workload(cluster: &mut TestCluster, nemesis: impl FnOnce(&mut TestCluster)) -> History {
    let keys = keys();
    let history = History::default();
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let handles = run_workload(
        workers(cluster, &keys),
        history.clone(),
        epoch,
        stop.clone(),
    );
    nemesis(cluster);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker");
    }
    final_reads(cluster, &keys, &history, epoch);
    assert_linearizable(&history);
    history
}

/// After 1.5 s of workload, kill -9 the owner of `acct` (as node 0 sees it), keep it down
/// for `down_ms`, restart it and let it settle for 1 s; returns its index.
fn crash_owner(cluster: &mut TestCluster, down_ms: u64) -> usize {
    thread::sleep(phase(1_500));
    let owner = cluster.owner_of(0, "acct").unwrap_or(0);
    cluster.nodes[owner].kill9();
    thread::sleep(phase(down_ms));
    cluster.nodes[owner].restart();
    thread::sleep(phase(1_000));
    owner
}

/// SIGSTOP node `i` for `ms`, then SIGCONT, then 1 s to settle.
fn pause(cluster: &TestCluster, i: usize, ms: u64) {
    signal(&cluster.nodes[i], libc::SIGSTOP);
    thread::sleep(phase(ms));
    signal(&cluster.nodes[i], libc::SIGCONT);
    thread::sleep(phase(1_000));
}

#[test]
fn three_regions_replicate_and_survive_kill9_sigstop_and_partitions() {
    let mut cluster = TestCluster::start(&["us", "eu", "ap"], "fz: 1\n");
    // Every node serves every key, and reports the real cluster.
    cluster.nodes[0].client().put("boot.a", "zero");
    for node in &cluster.nodes {
        assert_eq!(node.client().get("boot.a").as_deref(), Some("zero"));
    }
    let list = cluster.nodes[2].client().request_ok("NODE LIST");
    assert_eq!(list.len(), 3, "{list:?}");
    assert!(list.iter().all(|l| l.contains("status=ACTIVE")), "{list:?}");
    assert!(
        list.iter()
            .any(|l| l.contains("region=eu") && l.contains(&format!("port={}", cluster.port(1)))),
        "{list:?}"
    );
    let quorum = cluster.nodes[0].client().request_ok("QUORUM INFO acct");
    assert_eq!(quorum[0], "Q1 size=2", "fn=1 fz=1 on 3×1: {quorum:?}");
    // TABLE INFO has the spec's five keys first, as on a single node; the owner reports
    // when its lease ends, the others that they hold none.
    let owner = cluster.owner_of(0, "boot").expect("an owner of BOOT");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let info = node.client().request_ok("TABLE INFO boot");
        let names: Vec<&str> = info.iter().map(|l| l.split('=').next().unwrap()).collect();
        assert_eq!(
            names[..5],
            ["owner", "ballot", "region", "lease_until", "last_slot"],
            "{info:?}"
        );
        assert_eq!(info[0], format!("owner={}", owner + 1), "{info:?}");
        let lease = &info[3]["lease_until=".len()..];
        if i == owner {
            assert!(lease.ends_with('Z') && lease.contains('T'), "{info:?}");
        } else {
            assert_eq!(lease, "none", "{info:?}");
        }
    }

    let history = with_workload(&mut cluster, |cluster| {
        // kill -9 the owner of a busy table; the others take it over within seconds.
        let owner = crash_owner(cluster, 2_500);
        // SIGSTOP a node for longer than the failure detector's patience.
        pause(cluster, (owner + 1) % 3, 2_000);
        // Partition one node away, then heal.
        let cut = (owner + 2) % 3;
        cluster.isolate(cut, true);
        thread::sleep(phase(2_000));
        cluster.isolate(cut, false);
        thread::sleep(phase(1_500));
    });
    assert!(
        acknowledged_writes(&history) > 20,
        "the workload barely ran: {} acknowledged writes",
        acknowledged_writes(&history)
    );

    // A late joiner copies a snapshot of the data before it becomes a member, then follows
    // the log, and serves linearizable reads.
    let late = cluster.add("eu");
    let log = cluster.nodes[late].stderr_text();
    assert!(
        log.contains("copied a snapshot of the cluster's data")
            && log.contains("installed the snapshot copied from the cluster"),
        "{log}"
    );
    let mut client = cluster.nodes[late].client();
    assert_eq!(client.get("boot.a").as_deref(), Some("zero"));
    let scan = client.request_ok("SCAN ACCT.");
    assert!(scan.len() >= 2, "{scan:?}");
}

#[test]
fn a_crashed_owner_is_replaced_and_rejoins_with_its_id() {
    let mut cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    cluster.nodes[1].client().put("orders.1", "first");
    let owner = cluster.owner_of(1, "orders").expect("an owner");
    cluster.nodes[owner].kill9();
    let other = (owner + 1) % 3;
    let started = Instant::now();
    cluster.nodes[other].client().put("orders.2", "second");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "takeover took {:?}",
        started.elapsed()
    );
    // The report is refreshed every 100 ms: wait (bounded) for it to name the new owner.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.owner_of(other, "orders") == Some(owner) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let new_owner = cluster.owner_of(other, "orders").expect("a new owner");
    assert_ne!(new_owner, owner);
    cluster.nodes[owner].restart();
    // The restarted node keeps its id (no new member) and catches up.
    let list = cluster.nodes[owner].client().request_ok("NODE LIST");
    assert_eq!(list.len(), 3, "{list:?}");
    let mut client = cluster.nodes[owner].client();
    assert_eq!(client.get("orders.2").as_deref(), Some("second"));
    assert_eq!(client.get("orders.1").as_deref(), Some("first"));
    let info = client.request_ok(&format!("NODE INFO {}", owner + 1));
    assert!(info.contains(&format!("id={}", owner + 1)), "{info:?}");
}

#[test]
fn three_zones_of_three_nodes_keep_serving_through_failures() {
    let regions = ["z1", "z1", "z1", "z2", "z2", "z2", "z3", "z3", "z3"];
    let mut cluster = TestCluster::start(&regions, "fn: 1\nfz: 0\n");
    let quorum = cluster.nodes[0].client().request_ok("QUORUM INFO cart");
    // fn=1 fz=0: Q1 = 2 nodes in each of 3 zones, Q2 = 2 nodes of the owner's zone.
    assert_eq!(quorum[0], "Q1 size=6", "{quorum:?}");
    assert!(quorum.contains(&"Q2 size=2".to_string()), "{quorum:?}");
    let history = with_workload(&mut cluster, |cluster| {
        let owner = crash_owner(cluster, 3_000);
        // A follower in another zone stops and comes back.
        pause(cluster, (owner + 4) % 9, 1_500);
    });
    assert!(acknowledged_writes(&history) > 10);
}

#[test]
fn joins_with_wrong_credentials_an_unverified_seed_or_a_taken_address_are_refused() {
    let cluster = TestCluster::start(&["a", "b"], "fz: 1\n");
    let seed_port = cluster.port(0);
    let seed_ca = cluster.nodes[0].ca_path();
    let bound = Duration::from_secs(60);

    let wrong = node_yaml(free_port(), "c", Some((seed_port, &seed_ca)), "")
        .replace(CREDENTIALS, "not-the-cluster-secret");
    let stderr = start_expecting_failure(&wrong, bound);
    assert!(
        stderr.contains("refused the cluster credentials"),
        "{stderr}"
    );

    // A CA that did not sign the seed's certificate: the seed cannot be verified.
    let stranger = Node::start();
    let unverified = node_yaml(free_port(), "c", Some((seed_port, &stranger.ca_path())), "");
    let stderr = start_expecting_failure(&unverified, bound);
    assert!(stderr.contains("cannot verify the seed"), "{stderr}");

    // A second node announcing node 2's address is refused.
    let taken = node_yaml(
        free_port(),
        "c",
        Some((seed_port, &seed_ca)),
        &format!("advertise: 127.0.0.1:{}\n", cluster.port(1)),
    );
    let stderr = start_expecting_failure(&taken, bound);
    assert!(stderr.contains("already belongs to node 2"), "{stderr}");

    // A pinned CA fingerprint instead of a CA file: a wrong one is refused, the right one
    // (as `atlas ca show` prints it) joins.
    let shown = std::process::Command::new(atlas_tests::atlas_bin())
        .args(["ca", "show", "-c"])
        .arg(cluster.nodes[0].config_path())
        .output()
        .expect("atlas ca show");
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    let fingerprint = shown
        .lines()
        .find_map(|l| l.strip_prefix("SHA-256 fingerprint: "))
        .expect("fingerprint line")
        .to_string();
    let pinned = |pin: &str| {
        format!(
            "{}connect: https://127.0.0.1:{seed_port}\npeer_ca_sha256: \"{pin}\"\n",
            node_yaml(free_port(), "c", None, "")
        )
    };
    let wrong_pin = "00:".repeat(31) + "00";
    let stderr = start_expecting_failure(&pinned(&wrong_pin), bound);
    assert!(
        stderr.contains("does not match atlas.peer_ca_sha256"),
        "{stderr}"
    );
    let joined = Node::start_with(&pinned(&fingerprint));
    assert_eq!(joined.client().request_ok("NODE LIST").len(), 3);

    // The refused ones left the cluster unchanged.
    let list = cluster.nodes[0].client().request_ok("NODE LIST");
    assert_eq!(list.len(), 3, "{list:?}");
}

#[test]
fn blobs_acls_and_scans_replicate() {
    let cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    let payload = atlas_tests::random_bytes(3 * 1024 * 1024, 7);
    cluster.nodes[0].client().blob_set("files.big", &payload);
    let got = cluster.nodes[2]
        .client()
        .blob_get("files.big")
        .expect("blob");
    atlas_tests::assert_same_bytes(&got, &payload, "blob read at another node");

    let mut alice = cluster.nodes[1].client();
    alice.request_ok("PRINCIPAL ASSUME alice");
    alice.request_ok("ACL GRANT docs.plan alice PERMS OWNER");
    alice.put("docs.plan", "v1");
    let mut mallory = cluster.nodes[2].client();
    mallory.request_ok("PRINCIPAL ASSUME mallory");
    mallory.request_err("KEY PUT docs.plan evil", "ERROR WARN permission denied");
    assert_eq!(mallory.get("docs.plan"), None, "hidden from mallory");

    for i in 0..5 {
        cluster.nodes[i % 3].client().put(&format!("inv.k{i}"), "x");
    }
    // The consensus families count real work.
    let metrics = atlas_tests::https::curl(
        &cluster.nodes[0].ca_path(),
        &format!("https://{}/metrics", cluster.nodes[0].https_addr()),
        &[],
    );
    let value = |name: &str| -> f64 {
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{}", metrics.body))
    };
    assert!(value("atlas_consensus_commits_total") >= 1.0);
    assert!(value("atlas_consensus_ballots_total") >= 1.0);
    assert!(value("atlas_consensus_messages_sent_total") >= 1.0);
    if value("atlas_consensus_owned_tables") < 1.0 {
        let tables: Vec<String> = ["files", "docs", "inv"]
            .iter()
            .flat_map(|t| {
                let line = format!("TABLE INFO {t}");
                cluster
                    .nodes
                    .iter()
                    .map(move |n| n.client().request_ok(&line).join(" "))
            })
            .collect();
        panic!("node 1 owns no table:\n{}", tables.join("\n"));
    }
    for node in &cluster.nodes {
        let count = node.client().request_ok("COUNT INV");
        assert_eq!(count, ["COUNT:5"], "COUNT at another node");
        let scan = node.client().request_ok("SCAN INV");
        assert_eq!(scan.len(), 6, "KEYS:5 and five keys: {scan:?}");
    }
}

/// POSTs `body` to `node`'s consensus transport with the credential and, if given, a client
/// certificate and its key.
fn post_consensus(
    node: &Node,
    cert: Option<(&Path, &Path)>,
    body: &[u8],
) -> atlas_tests::https::CurlResponse {
    post_as(node, cert, "/atlas/v1/consensus", body)
}

/// POSTs `body` to `path` on `node` with the credential and, if given, a client certificate.
fn post_as(
    node: &Node,
    cert: Option<(&Path, &Path)>,
    path: &str,
    body: &[u8],
) -> atlas_tests::https::CurlResponse {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let url = format!("https://{}{path}", node.https_addr());
    let bearer = format!("Authorization: Bearer {CREDENTIALS}");
    let data = format!("@{}", file.display());
    let mut args = vec!["-X", "POST", "-H", &bearer, "--data-binary", &data];
    let files = cert.map(|(c, k)| (c.display().to_string(), k.display().to_string()));
    if let Some((c, k)) = &files {
        args.extend(["--cert", c.as_str(), "--key", k.as_str()]);
    }
    atlas_tests::https::curl(&node.ca_path(), &url, &args)
}

/// POSTs `body` to `path` on `node` with `secret` as the bearer credential.
fn post_with(
    node: &Node,
    secret: &str,
    path: &str,
    body: &str,
) -> atlas_tests::https::CurlResponse {
    atlas_tests::https::curl(
        &node.ca_path(),
        &format!("https://{}{path}", node.https_addr()),
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {secret}"),
            "--data-binary",
            body,
        ],
    )
}

/// An envelope of no messages (a ping) that says it is from `from`.
fn ping_from(from: u64) -> Vec<u8> {
    atlas::cluster::envelope::Envelope {
        from,
        messages: Vec::new(),
    }
    .encode()
}

/// The certificate and key files a node presents to its peers.
fn node_cert(node: &Node) -> (PathBuf, PathBuf) {
    let tls = node.dir().join("data").join("tls");
    (tls.join("node.crt"), tls.join("node.key"))
}

/// `peer_mtls` is on by default in a cluster with `tls: internal`: the transport takes only
/// a node's certificate, and an envelope only from the node that certificate names.
#[test]
fn peer_mtls_is_on_by_default_and_binds_the_sender_to_its_certificate() {
    let cluster = TestCluster::start(&["a", "b"], "fz: 1\n");
    cluster.nodes[0].client().put("mtls.k", "v");
    assert_eq!(
        cluster.nodes[1].client().get("mtls.k").as_deref(),
        Some("v")
    );
    // A joined node's data (its identity, the adopted CA and key, the installed snapshot's
    // leftovers) is private like a founder's.
    for node in &cluster.nodes {
        atlas_tests::assert_private_tree(&node.dir().join("data"));
    }
    let node = &cluster.nodes[0];
    let without = post_consensus(node, None, b"x");
    assert_eq!(without.status, 401, "{without:?}");
    assert!(without.body.contains("client certificate"), "{without:?}");
    // Node 2's certificate, issued by the cluster CA, passes (the body is then judged).
    let (cert, key) = node_cert(&cluster.nodes[1]);
    let garbage = post_consensus(node, Some((&cert, &key)), b"x");
    assert_eq!(garbage.status, 400, "{garbage:?}");
    // It names node 2: an envelope in node 2's name is taken, one in node 1's or node 7's
    // name is refused.
    let own = post_consensus(node, Some((&cert, &key)), &ping_from(2));
    assert_eq!(own.status, 204, "{own:?}");
    for other in [1, 7] {
        let forged = post_consensus(node, Some((&cert, &key)), &ping_from(other));
        assert_eq!(forged.status, 403, "{forged:?}");
        assert!(forged.body.contains("node 2's"), "{forged:?}");
    }
    // A client certificate of `client_listen` comes from the same CA, but is no node's.
    let certs = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = (certs.path().join("c.crt"), certs.path().join("c.key"));
    let issued =
        atlas_tests::issue_client_cert(&node.config_path(), "ops", &client_cert, &client_key);
    assert!(issued.status.success(), "{}", atlas_tests::explain(&issued));
    let as_client = post_consensus(node, Some((&client_cert, &client_key)), &ping_from(2));
    assert_eq!(as_client.status, 401, "{as_client:?}");
    assert!(as_client.body.contains("client_listen"), "{as_client:?}");
    // Clients of the other endpoints need no certificate.
    let health = atlas_tests::https::curl(
        &node.ca_path(),
        &format!("https://{}/atlas/v1/health", node.https_addr()),
        &[],
    );
    assert_eq!(health.status, 200);
    // A node that only registers (the first step of a join) gets the CA certificate to
    // verify with, not the CA key: that is for the voting member it becomes.
    let register = format!(
        r#"{{"member": false, "region": "c", "host": "127.0.0.1", "port": {}}}"#,
        free_port()
    );
    let registered = post_with(node, CREDENTIALS, "/atlas/v1/join", &register);
    assert_eq!(registered.status, 200, "{registered:?}");
    let answer = registered.json();
    assert!(
        answer["ca_cert"]
            .as_str()
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
    );
    assert!(answer.get("ca_key").is_none_or(|k| k.is_null()), "{answer}");
    assert!(
        !registered.body.contains("PRIVATE KEY"),
        "{}",
        registered.body
    );
}

/// `peer_mtls: false` turns it off: the credential alone opens the transport.
#[test]
fn peer_mtls_false_opens_the_transport_to_the_credential_alone() {
    let cluster = TestCluster::start(&["a", "b"], "fz: 1\npeer_mtls: false\n");
    cluster.nodes[0].client().put("nomtls.k", "v");
    assert_eq!(
        cluster.nodes[1].client().get("nomtls.k").as_deref(),
        Some("v")
    );
    let ping = post_consensus(&cluster.nodes[0], None, &ping_from(2));
    assert_eq!(ping.status, 204, "{ping:?}");
}

#[test]
fn a_node_gone_for_good_is_removed_and_the_rest_keep_serving() {
    let mut cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    cluster.nodes[0].client().put("rm.k", "before");
    cluster.nodes[2].kill9();
    let node = &cluster.nodes[0];
    let remove = |body: &str| post_with(node, CREDENTIALS, "/atlas/v1/remove", body);
    assert_eq!(remove(r#"{"node_id": 1}"#).status, 400, "not itself");
    assert_eq!(remove(r#"{"node_id": 42}"#).status, 404, "not a member");
    assert_eq!(remove(r#"{"node": 3}"#).status, 400, "field named");
    let removed = remove(r#"{"node_id": 3}"#);
    assert_eq!(removed.status, 200, "{removed:?}");
    let list = node.client().request_ok("NODE LIST");
    assert_eq!(list.len(), 2, "{list:?}");
    // The two left (2 zones: fz reduced to 0) write and read.
    cluster.nodes[1].client().put("rm.k", "after");
    assert_eq!(
        cluster.nodes[0].client().get("rm.k").as_deref(),
        Some("after")
    );
    let info = cluster.nodes[0].client().request_ok("TABLE INFO rm");
    assert!(info.contains(&"fz=0".to_string()), "{info:?}");
    // The removed node's certificate still verifies, but it is no member: a prepare it
    // sends at a huge ballot is not taken in (counted), and the table keeps its owner.
    let metric = |node: &Node| -> f64 {
        let metrics = atlas_tests::https::curl(
            &node.ca_path(),
            &format!("https://{}/metrics", node.https_addr()),
            &[],
        );
        metrics
            .body
            .lines()
            .find_map(|l| {
                l.strip_prefix("atlas_consensus_messages_refused_total")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no refused counter:\n{}", metrics.body))
    };
    let before = metric(&cluster.nodes[0]);
    let steal = atlas::consensus::Message::Prepare {
        group: "rm".into(),
        ballot: atlas::consensus::Ballot::new(1_000_000, 3),
        token: 0,
        handoff_from: None,
        epoch: 0,
    };
    let envelope = atlas::cluster::envelope::Envelope {
        from: 3,
        messages: vec![steal],
    };
    let (cert, key) = node_cert(&cluster.nodes[2]);
    let sent = post_consensus(&cluster.nodes[0], Some((&cert, &key)), &envelope.encode());
    assert_eq!(sent.status, 204, "{sent:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&cluster.nodes[0]) <= before {
        assert!(
            Instant::now() < deadline,
            "the removed node's prepare was not refused"
        );
        thread::sleep(Duration::from_millis(50));
    }
    cluster.nodes[1].client().put("rm.k", "still");
    let info = cluster.nodes[0].client().request_ok("TABLE INFO rm");
    assert!(!info.iter().any(|l| l.contains("1000000")), "{info:?}");
    // Restarted, the removed node cannot rejoin under its id: it is told why and exits.
    let stderr = atlas_tests::cluster::serve_expecting_failure(
        &cluster.nodes[2].config_path(),
        Duration::from_secs(60),
    );
    assert!(stderr.contains("node 3 was removed"), "{stderr}");
}

/// The credential is rotated without downtime, in three rounds of rolling restarts: every
/// node accepts the new secret too, then sends it (accepting the old one too), then drops
/// the old one; writes replicate after every restart, and the old secret is refused at the
/// end.
#[test]
fn the_cluster_credential_rotates_node_by_node() {
    const NEW: &str = "the-rotated-cluster-secret-0001";
    let mut cluster = TestCluster::start(&["a", "b"], "fz: 1\n");
    let replicates = |cluster: &TestCluster, step: &str| replicates(cluster, "rot", step);
    replicates(&cluster, "before");
    let accept_new = format!("accepted_credentials: [{NEW}]\n");
    let accept_old = format!("accepted_credentials: [{CREDENTIALS}]\n");
    let rounds: [&dyn Fn(&str) -> String; 3] = [
        &|yaml| format!("{yaml}{accept_new}"),
        &|yaml| {
            format!(
                "{}{accept_old}",
                yaml.replace(&accept_new, "").replace(CREDENTIALS, NEW)
            )
        },
        &|yaml| yaml.replace(&accept_old, ""),
    ];
    for (round, change) in rounds.iter().enumerate() {
        for i in 0..2 {
            let yaml = change(cluster.nodes[i].extra_yaml());
            cluster.nodes[i].terminate();
            cluster.nodes[i].restart_with(&yaml);
            replicates(&cluster, &format!("r{round}n{i}"));
        }
    }
    let with = |secret: &str| {
        post_with(
            &cluster.nodes[0],
            secret,
            "/atlas/v1/remove",
            r#"{"node_id": 42}"#,
        )
    };
    assert_eq!(with(CREDENTIALS).status, 401, "the old secret is refused");
    assert_eq!(with(NEW).status, 404, "the new one is taken (no node 42)");
}

#[test]
fn malformed_join_and_fault_requests_get_400_naming_the_field() {
    let cluster = TestCluster::start(&["a"], "");
    let node = &cluster.nodes[0];
    let post = |path: &str, body: &str| post_with(node, CREDENTIALS, path, body);
    for (body, field) in [
        ("not json", "join request"),
        (r#"{"region": "a"}"#, "host"),
        (
            r#"{"region": "two words", "host": "127.0.0.1", "port": 9}"#,
            "region",
        ),
        (
            r#"{"region": "b", "host": "127.0.0.1", "port": 0}"#,
            "host/port",
        ),
        // A certificate request: only with the member step, and a real one.
        (
            r#"{"member": false, "region": "b", "host": "127.0.0.1", "port": 9, "csr": "x"}"#,
            "csr",
        ),
        (
            r#"{"region": "b", "host": "127.0.0.1", "port": 9, "csr": "not a request"}"#,
            "csr",
        ),
    ] {
        let answer = post("/atlas/v1/join", body);
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        assert!(answer.body.contains(field), "{body}: {answer:?}");
    }
    let faults = post("/atlas/v1/test/faults", r#"{"blocked": "x"}"#);
    assert_eq!(faults.status, 400, "{faults:?}");
    assert!(faults.body.contains("blocked"), "{faults:?}");
    // Nothing was registered, and the node still serves.
    assert_eq!(node.client().request_ok("NODE LIST").len(), 1);
    node.client().put("still.k", "v");
}

/// The subject of the first certificate in `pem` (`openssl x509 -subject`).
fn subject_of(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaf.crt");
    std::fs::write(&file, pem).unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "sep_multiline",
            "-in",
        ])
        .arg(&file)
        .output()
        .expect("openssl x509");
    assert!(out.status.success(), "{}", atlas_tests::explain(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With `tls: internal` a joiner sends a certificate request and keeps its key: only the
/// founder holds the CA key, signs a leaf with the subject it chooses, and signs one for a
/// member's id only when that member's certificate proves the asker is it. A leaf due for
/// renewal is renewed by asking a holder again.
#[test]
fn joiners_keep_their_key_and_a_members_certificate_is_reissued_only_to_it() {
    let mut cluster = TestCluster::start(&["a", "b"], "fz: 1\n");
    let dirs = tls_dirs(&cluster);
    let tls = |i: usize| dirs[i].clone();
    assert!(
        tls(0).join("ca.key").exists(),
        "the founder holds the CA key"
    );
    assert!(!tls(1).join("ca.key").exists(), "a joiner never gets it");
    let leaf = std::fs::read_to_string(tls(1).join("node.crt")).unwrap();
    assert!(subject_of(&leaf).contains("O=Atlas node 2"), "{leaf}");
    let verified = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(tls(0).join("ca.crt"))
        .arg(tls(1).join("node.crt"))
        .output()
        .expect("openssl verify");
    assert!(
        verified.status.success(),
        "{}",
        atlas_tests::explain(&verified)
    );

    // A request made by someone else, asking for node 1's identity under node 2's id.
    let keys = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-subj",
            "/O=Atlas node 1/CN=evil.example",
            "-keyout",
        ])
        .arg(keys.path().join("k.pem"))
        .arg("-out")
        .arg(keys.path().join("r.csr"))
        .output()
        .expect("openssl req");
    assert!(made.status.success(), "{}", atlas_tests::explain(&made));
    let csr = std::fs::read_to_string(keys.path().join("r.csr")).unwrap();
    let rejoin = serde_json::json!({
        "node_id": 2, "member": true, "region": "b", "host": "127.0.0.1",
        "port": cluster.port(1), "csr": csr,
    })
    .to_string();
    let join = "/atlas/v1/join";
    let founder = &cluster.nodes[0];
    let stranger = post_as(founder, None, join, rejoin.as_bytes());
    assert_eq!(stranger.status, 403, "{stranger:?}");
    assert!(stranger.body.contains("node 2"), "{stranger:?}");
    let (cert1, key1) = node_cert(founder);
    let as_node1 = post_as(founder, Some((&cert1, &key1)), join, rejoin.as_bytes());
    assert_eq!(as_node1.status, 403, "{as_node1:?}");
    // Node 2's own certificate proves it: the leaf names node 2 and 127.0.0.1, not what the
    // request asked for.
    let (cert2, key2) = node_cert(&cluster.nodes[1]);
    let proven = post_as(founder, Some((&cert2, &key2)), join, rejoin.as_bytes());
    assert_eq!(proven.status, 200, "{proven:?}");
    let certificate = proven.json()["certificate"]
        .as_str()
        .expect("a certificate")
        .to_string();
    let subject = subject_of(&certificate);
    assert!(subject.contains("O=Atlas node 2"), "{subject}");
    assert!(!subject.contains("evil"), "{subject}");
    assert!(!proven.body.contains("PRIVATE KEY"), "{}", proven.body);
    // A member without the CA key cannot sign: it says so.
    let joiner = &cluster.nodes[1];
    let no_ca = post_as(joiner, Some((&cert2, &key2)), join, rejoin.as_bytes());
    assert_eq!(no_ca.status, 409, "{no_ca:?}");
    assert!(no_ca.body.contains("not_a_ca_holder"), "{no_ca:?}");

    // A new node joining through a member without the CA key is told so when it registers,
    // before it copies the data.
    let through_node2 = node_yaml(
        free_port(),
        "c",
        Some((cluster.port(1), &cluster.nodes[1].ca_path())),
        "",
    );
    let stderr = start_expecting_failure(&through_node2, Duration::from_secs(60));
    assert!(
        stderr.contains("does not hold the cluster CA key"),
        "{stderr}"
    );

    // A leaf due for renewal (its record says it expires tomorrow) is replaced at restart by
    // one a holder signs; the node keeps its key private and serves on.
    cluster.nodes[1].terminate();
    let record_path = tls(1).join("node.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let tomorrow = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 86_400;
    record["expires_unix"] = tomorrow.into();
    std::fs::write(&record_path, record.to_string()).unwrap();
    cluster.nodes[1].restart();
    let renewed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert!(
        renewed["expires_unix"].as_i64().unwrap() > tomorrow + 80 * 86_400,
        "{renewed}"
    );
    assert_ne!(
        std::fs::read_to_string(tls(1).join("node.crt")).unwrap(),
        leaf
    );
    assert!(!tls(1).join("ca.key").exists());
    atlas_tests::assert_private_tree(&tls(1));
    replicates(&cluster, "renewed", "after");
}

/// `atlas ca rotate …` on node `i`; panics unless it exits 0 (`ok`) or non-zero (`!ok`).
fn rotate(cluster: &TestCluster, i: usize, args: &[&str], ok: bool) -> String {
    let out = std::process::Command::new(atlas_tests::atlas_bin())
        .args(["ca", "rotate"])
        .args(args)
        .arg("-c")
        .arg(cluster.nodes[i].config_path())
        .output()
        .expect("atlas ca rotate");
    assert_eq!(
        out.status.success(),
        ok,
        "{args:?}: {}",
        atlas_tests::explain(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster CA rotates node by node while the cluster serves: every node trusts the new
/// CA, then each gets a certificate of it (the holder issues its own, the other asks the
/// holder), then the old CA is trusted no more.
#[test]
fn the_cluster_ca_rotates_node_by_node() {
    let mut cluster = TestCluster::start(&["a", "b"], "fz: 1\n");
    let tls = tls_dirs(&cluster);
    let replicates = |cluster: &TestCluster, step: &str| replicates(cluster, "carot", step);
    let restart_all = |cluster: &mut TestCluster, round: &str| {
        for i in 0..2 {
            cluster.nodes[i].terminate();
            cluster.nodes[i].restart();
            replicates(cluster, &format!("{round}.n{i}"));
        }
    };
    let verifies = |ca: &Path, leaf: &Path| {
        std::process::Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(leaf)
            .output()
            .expect("openssl verify")
            .status
            .success()
    };
    replicates(&cluster, "before");
    // Node 2's certificate of the old CA, to show it is refused once the rotation ends.
    let kept = tempfile::tempdir().unwrap();
    let (old_cert, old_key) = (kept.path().join("old.crt"), kept.path().join("old.key"));
    std::fs::copy(tls[1].join("node.crt"), &old_cert).unwrap();
    std::fs::copy(tls[1].join("node.key"), &old_key).unwrap();
    let old_ca = kept.path().join("old-ca.crt");
    std::fs::copy(tls[0].join("ca.crt"), &old_ca).unwrap();

    // Round 1: the holder makes the new CA, node 2 trusts it; both still run on the old one.
    rotate(&cluster, 1, &["begin"], false);
    let begun = rotate(&cluster, 0, &["begin"], true);
    assert!(begun.contains("SHA-256 fingerprint"), "{begun}");
    rotate(&cluster, 0, &["begin"], false);
    let new_ca = kept.path().join("new-ca.crt");
    std::fs::copy(tls[0].join("next").join("ca.crt"), &new_ca).unwrap();
    rotate(&cluster, 1, &["trust", new_ca.to_str().unwrap()], true);
    rotate(&cluster, 1, &["end"], false);
    restart_all(&mut cluster, "trust");

    // Round 2: the new CA becomes each node's, the holder's first. Node 2, restarted before
    // its own promote, still runs on its old certificate beside the holder's new one.
    rotate(&cluster, 0, &["promote"], true);
    rotate(&cluster, 0, &["promote"], false);
    restart_all(&mut cluster, "promote-holder");
    assert!(verifies(&old_ca, &tls[1].join("node.crt")));
    rotate(&cluster, 1, &["promote"], true);
    cluster.nodes[1].terminate();
    cluster.nodes[1].restart();
    replicates(&cluster, "promote.n1");
    for dir in &tls {
        assert!(verifies(&new_ca, &dir.join("node.crt")), "{dir:?}");
        assert!(!verifies(&old_ca, &dir.join("node.crt")), "{dir:?}");
    }
    assert!(
        !tls[1].join("ca.key").exists(),
        "the member got a leaf, not the key"
    );
    // Both CAs are trusted still: node 2's old certificate opens the transport.
    let still = post_consensus(
        &cluster.nodes[0],
        Some((&old_cert, &old_key)),
        &ping_from(2),
    );
    assert_eq!(still.status, 204, "{still:?}");

    // Round 3: only the new CA.
    rotate(&cluster, 0, &["end"], true);
    rotate(&cluster, 1, &["end"], true);
    restart_all(&mut cluster, "end");
    let refused = atlas_tests::https::curl_raw(
        &cluster.nodes[0].ca_path(),
        &format!(
            "https://{}/atlas/v1/consensus",
            cluster.nodes[0].https_addr()
        ),
        &[
            "-X",
            "POST",
            "--cert",
            old_cert.to_str().unwrap(),
            "--key",
            old_key.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {CREDENTIALS}"),
            "--data-binary",
            "x",
        ],
    );
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(
        !refused.status.success() || !text.contains("@@204"),
        "the old CA's certificate is refused: {}",
        atlas_tests::explain(&refused)
    );
    assert!(!text.contains("@@204") && !text.contains("@@400"), "{text}");
    replicates(&cluster, "after");
}

/// Each node's `<data_dir>/tls`.
fn tls_dirs(cluster: &TestCluster) -> Vec<PathBuf> {
    cluster
        .nodes
        .iter()
        .map(|n| n.dir().join("data").join("tls"))
        .collect()
}

/// Writes `<prefix>.<step>` at node 1 and waits (bounded) until node 2 reads it.
fn replicates(cluster: &TestCluster, prefix: &str, step: &str) {
    let key = format!("{prefix}.{step}");
    cluster.nodes[0].client().put(&key, step);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.nodes[1].client().get(&key).as_deref() != Some(step) {
        assert!(
            Instant::now() < deadline,
            "{step}: the write did not replicate"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
