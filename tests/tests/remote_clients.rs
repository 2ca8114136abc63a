//! `client_listen`: the socket protocol over TLS on TCP, principals from client certificates
//! of the cluster CA (`atlas ca client-cert`), `atlas repl --connect` and `atlas kv --connect`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use atlas_tests::cluster::TestCluster;
use atlas_tests::{Node, atlas_bin, explain, free_port};

/// Issues a client certificate for `principal` from the CA of the node configured by
/// `config`, into `dir`; returns (certificate, key) and the command's output.
fn client_cert(config: &Path, dir: &Path, principal: &str) -> (PathBuf, PathBuf, Output) {
    let cert = dir.join(format!("{principal}.crt"));
    let key = dir.join(format!("{principal}.key"));
    let out = atlas_tests::issue_client_cert(config, principal, &cert, &key);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    (cert, key, out)
}

struct Identity {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// `atlas repl --connect ADDR … -e LINE…`, retried while the listener is not up yet.
fn remote(addr: &str, who: &Identity, lines: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut command = Command::new(atlas_bin());
        command
            .args(["repl", "--connect", addr, "--cert"])
            .arg(&who.cert)
            .arg("--key")
            .arg(&who.key)
            .arg("--ca")
            .arg(&who.ca);
        for line in lines {
            command.args(["-e", line]);
        }
        let out = command.output().expect("run atlas repl --connect");
        let refused = String::from_utf8_lossy(&out.stderr).contains("Connection refused");
        if !refused || Instant::now() > deadline {
            return out;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn stdout(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn certificates_name_principals_and_acls_hold_off_the_machine() {
    let port = free_port();
    let extra = format!("client_listen: 127.0.0.1:{port}\nclient_admins: [ops]\n");
    let mut node = Node::start_with(&extra);
    let addr = format!("127.0.0.1:{port}");
    let certs = tempfile::tempdir().unwrap();
    let id = |principal: &str| {
        let (cert, key, out) = client_cert(&node.config_path(), certs.path(), principal);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("SHA-256 fingerprint: "), "{text}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key is private");
        let fingerprint = text
            .split("SHA-256 fingerprint: ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_string();
        (
            Identity {
                cert,
                key,
                ca: node.ca_path(),
            },
            fingerprint,
        )
    };
    let (alice, alice_print) = id("alice");
    let (bob, _) = id("bob");
    let (ops, _) = id("ops");

    let out = remote(
        &addr,
        &alice,
        &[
            "PRINCIPAL WHOAMI",
            "ACL GRANT r.k alice PERMS OWNER",
            "KEY PUT r.k secret",
            "KEY GET r.k",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        stdout(&out),
        [
            "PRINCIPAL alice",
            "OK",
            "ACL granted to alice for R.K with permissions OWNER",
            "OK",
            "OK",
            "VALUE:secret",
            "OK"
        ]
    );

    // bob's certificate makes him bob: the key is not his, and he cannot become alice.
    let out = remote(&addr, &bob, &["KEY GET r.k", "KEY PUT r.k mine"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(
        stdout(&out),
        [
            "NOT_FOUND",
            "OK",
            "ERROR WARN permission denied for principal 'bob': write access denied"
        ]
    );
    let out = remote(&addr, &bob, &["PRINCIPAL ASSUME alice"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(
        stdout(&out),
        [
            "ERROR WARN permission denied: bob may not assume another principal on this listener \
          (atlas.client_admins)"
        ]
    );
    let out = remote(&addr, &bob, &["BACKUP"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));

    // An admin may act as another principal.
    let out = remote(
        &addr,
        &ops,
        &["PRINCIPAL ASSUME alice", "KEY GET r.k", "PRINCIPAL WHOAMI"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        stdout(&out),
        ["OK", "VALUE:secret", "OK", "PRINCIPAL alice", "OK"]
    );

    // `atlas kv --connect`, with the CA taken from the node's configuration.
    let out = Command::new(atlas_bin())
        .args(["kv", "--connect", &addr, "--cert"])
        .arg(&alice.cert)
        .arg("--key")
        .arg(&alice.key)
        .arg("-c")
        .arg(node.config_path())
        .args(["get", "r.k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(stdout(&out), ["secret"]);

    // The node's own certificate is signed by the same CA, but it is no client's.
    let node_id = Identity {
        cert: node.dir().join("data/tls/node.crt"),
        key: node.dir().join("data/tls/node.key"),
        ca: node.ca_path(),
    };
    let out = remote(&addr, &node_id, &["KEY GET r.k"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        stderr(&out).contains("not an Atlas client certificate"),
        "{}",
        explain(&out)
    );

    // A certificate of another CA fails the handshake.
    let stranger = Node::start();
    let (cert, key, _) = client_cert(&stranger.config_path(), certs.path(), "mallory");
    let mallory = Identity {
        cert,
        key,
        ca: node.ca_path(),
    };
    let out = remote(&addr, &mallory, &["KEY GET r.k"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stdout(&out).is_empty(), "{}", explain(&out));

    // Without a certificate there is no connection either (clap requires the files, so
    // present an empty pair: the client refuses to start).
    let out = Command::new(atlas_bin())
        .args(["repl", "--connect", &addr, "-e", "KEY GET r.k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        stderr(&out).contains("--cert FILE and --key FILE"),
        "{}",
        explain(&out)
    );

    // A revoked certificate is refused after a restart; others still work. The socket is
    // untouched by all of this.
    node.terminate();
    node.restart_with(&format!("{extra}client_revoked: [\"{alice_print}\"]\n"));
    let out = remote(&addr, &alice, &["KEY GET r.k"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(stderr(&out).contains("revoked"), "{}", explain(&out));
    let out = remote(&addr, &ops, &["PRINCIPAL ASSUME alice", "KEY GET r.k"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        node.client().get("r.k"),
        None,
        "the socket starts anonymous"
    );
}

#[test]
fn client_listen_without_a_cluster_ca_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = atlas_tests::write_config(
        dir.path(),
        "client_listen: 127.0.0.1:1\ntls:\n  cert: /nonexistent.crt\n  key: /nonexistent.key\n",
    );
    let out = Command::new(atlas_bin())
        .args(["serve", "-t", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    assert!(
        stderr(&out).contains("atlas.client_listen: needs the CA that signs client certificates"),
        "{}",
        explain(&out)
    );
}

#[test]
fn remote_clients_reach_every_node_of_a_cluster_through_failover() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut cluster = TestCluster::start_each(&["a", "b", "c"], "fz: 1\n", |i| {
        format!("client_listen: 127.0.0.1:{}\n", ports[i])
    });
    let addr = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let certs = tempfile::tempdir().unwrap();
    // Issued by the founder's CA, which every joiner adopted.
    let who = |principal: &str| {
        let (cert, key, _) = client_cert(&cluster.nodes[0].config_path(), certs.path(), principal);
        Identity {
            cert,
            key,
            ca: cluster.nodes[0].ca_path(),
        }
    };
    let alice = who("alice");
    let bob = who("bob");

    let out = remote(
        &addr(1),
        &alice,
        &["ACL GRANT acct.k alice PERMS OWNER", "KEY CAS acct.k 0 v1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let out = remote(&addr(2), &alice, &["KEY GET acct.k", "KEY VERSION acct.k"]);
    assert_eq!(
        stdout(&out),
        ["VALUE:v1", "OK", "VERSION:1", "OK"],
        "{}",
        explain(&out)
    );
    let out = remote(&addr(0), &bob, &["KEY GET acct.k"]);
    assert_eq!(stdout(&out), ["NOT_FOUND", "OK"], "{}", explain(&out));

    let owner = cluster.owner_of(0, "acct").expect("an owner");
    cluster.nodes[owner].kill9();
    let other = (owner + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = remote(&addr(other), &alice, &["KEY CAS acct.k 1 v2"]);
        // A try that timed out may have committed: the retry then finds version 2.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.code() == Some(0) || text.contains("ACCT.K is at version 2") {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {}", explain(&out));
        thread::sleep(Duration::from_millis(300));
    }
    let third = (owner + 2) % 3;
    let out = remote(&addr(third), &alice, &["KEY GET acct.k"]);
    assert_eq!(stdout(&out), ["VALUE:v2", "OK"], "{}", explain(&out));
    let out = remote(&addr(third), &bob, &["KEY PUT acct.k v3"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
}

#[test]
fn client_cert_refuses_bad_names_days_and_existing_files() {
    let node = Node::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("a.crt"), dir.path().join("a.key"));
    for bad in ["", " alice", "bad\u{7}name"] {
        let out = atlas_tests::issue_client_cert(&node.config_path(), bad, &cert, &key);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", explain(&out));
        assert!(
            stderr(&out).contains("is not a principal name"),
            "{}",
            explain(&out)
        );
    }
    let days = Command::new(atlas_bin())
        .args(["ca", "client-cert", "alice", "--days", "0", "-c"])
        .arg(node.config_path())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(days.status.code(), Some(2), "{}", explain(&days));
    assert!(stderr(&days).contains("--days"), "{}", explain(&days));
    // A name that is no file name needs explicit paths.
    let unnamed = Command::new(atlas_bin())
        .args(["ca", "client-cert", "john smith", "-c"])
        .arg(node.config_path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(unnamed.status.code(), Some(2), "{}", explain(&unnamed));
    assert!(
        stderr(&unnamed).contains("--cert FILE and --key FILE"),
        "{}",
        explain(&unnamed)
    );
    // Nothing is overwritten; nothing was written by the refusals.
    assert!(!cert.exists() && !key.exists());
    let first = atlas_tests::issue_client_cert(&node.config_path(), "alice", &cert, &key);
    assert_eq!(first.status.code(), Some(0), "{}", explain(&first));
    let before = std::fs::read(&key).unwrap();
    let again = atlas_tests::issue_client_cert(&node.config_path(), "alice", &cert, &key);
    assert_eq!(again.status.code(), Some(2), "{}", explain(&again));
    assert!(
        stderr(&again).contains("not overwriting"),
        "{}",
        explain(&again)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
    // Without a CA (a node that never started), nothing is made up.
    let empty = tempfile::tempdir().unwrap();
    let config = atlas_tests::write_config(empty.path(), "");
    let none = atlas_tests::issue_client_cert(
        &config,
        "alice",
        &empty.path().join("c"),
        &empty.path().join("k"),
    );
    assert_eq!(none.status.code(), Some(2), "{}", explain(&none));
    assert!(
        !empty.path().join("data/tls/ca.key").exists(),
        "no CA was created"
    );
}
