//! The `atlas serve` process: configuration check, socket file, restart over stale sockets,
//! clean shutdown.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::Duration;

use atlas_tests::{Client, Node, atlas_bin, run_with_input, write_config};

fn check_config(path: &std::path::Path) -> std::process::Output {
    run_with_input(
        Command::new(atlas_bin())
            .arg("serve")
            .arg("-t")
            .arg("-c")
            .arg(path),
        b"",
        Duration::from_secs(30),
    )
}

#[test]
fn config_check_accepts_a_valid_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "");
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "atlas serve -t on a valid file: {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // A check does not start a server.
    assert!(
        !dir.path().join("atlas.sock").exists(),
        "serve -t created the socket"
    );
}

#[test]
fn config_check_names_an_unknown_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "bogus_key: 1");
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "atlas serve -t accepted an unknown key; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("bogus_key"),
        "stderr does not name the key:\n{stderr}"
    );
    assert!(
        stderr.contains(&path.display().to_string()),
        "stderr does not name the file {}:\n{stderr}",
        path.display()
    );
}

#[test]
fn serve_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "bogus_key: 1");
    let out = run_with_input(
        Command::new(atlas_bin()).arg("serve").arg("-c").arg(&path),
        b"",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "atlas serve started with an invalid config"
    );
    assert!(stderr.contains("bogus_key"), "stderr:\n{stderr}");
}

#[test]
fn socket_file_mode_is_0660() {
    let node = Node::start();
    let meta = fs::metadata(node.socket_path()).expect("socket metadata");
    assert!(meta.file_type().is_socket(), "not a socket: {meta:?}");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "socket mode {:o}",
        meta.permissions().mode() & 0o777
    );
}

#[test]
fn the_data_directory_and_everything_in_it_are_private() {
    let node = Node::start();
    // Writes go through RocksDB, the NAS database was created at start, the TLS files too.
    node.client().put("perm.k", "v");
    let data = node.dir().join("data");
    atlas_tests::assert_private_tree(&data);
    assert!(data.join("db").is_dir() && data.join("tls").is_dir());
}

#[test]
fn a_regular_file_at_the_socket_path_is_left_alone_and_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), "");
    let socket = dir.path().join("atlas.sock");
    fs::write(&socket, b"left over by something else").expect("write");
    let out = run_with_input(
        Command::new(atlas_bin()).arg("serve").arg("-c").arg(&path),
        b"",
        Duration::from_secs(30),
    );
    assert!(!out.status.success(), "server started over a regular file");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("atlas.sock") && stderr.contains("not a socket"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(&socket).expect("file kept"),
        b"left over by something else"
    );
}

#[test]
fn stale_socket_without_a_listener_is_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Bind and drop: the socket file stays, nobody listens on it.
    drop(UnixListener::bind(dir.path().join("atlas.sock")).expect("bind"));
    assert!(dir.path().join("atlas.sock").exists());
    let node = Node::start_in(dir.path());
    node.client().assert_usable();
}

#[test]
fn restart_after_kill_9_replaces_the_old_socket() {
    let mut node = Node::start();
    node.client().put("stale.k", "v");
    node.kill9();
    assert!(
        node.socket_path().exists(),
        "a killed server cannot remove its socket"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(node.socket_path()).is_err(),
        "the dead socket still accepts connections"
    );
    node.restart();
    let mut c = node.client();
    assert_eq!(c.get("stale.k").as_deref(), Some("v"));
}

#[test]
fn sigterm_exits_cleanly_with_clients_connected() {
    let mut node = Node::start();
    let mut idle = node.client();
    idle.put("term.k", "v");
    let mut half_open = Client::connect(&node.socket_path()); // no handshake
    let status = node.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    // A session may be told why before the close.
    if let Ok(line) = idle.try_read_line() {
        assert_eq!(line, "ERROR FATAL server shutting down");
        idle.expect_closed();
    }
    // The handshake-less client sees at most the greeting, then the close.
    let line = half_open.try_read_line();
    if let Ok(line) = line {
        assert_eq!(line, atlas_tests::WELCOME);
        half_open.expect_closed();
    }
}

#[test]
fn sigterm_on_an_idle_server_exits_zero() {
    let mut node = Node::start();
    let status = node.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

/// `atlas serve -c config`, which must exit by itself within 30 s: its status and stderr.
fn serve_until_it_stops(config: &std::path::Path) -> (Option<i32>, String) {
    let out = run_with_input(
        Command::new(atlas_bin())
            .env(atlas_tests::ADMIN_PASSWORD_ENV, atlas_tests::ADMIN_PASSWORD)
            .args(["serve", "-c"])
            .arg(config),
        b"",
        Duration::from_secs(30),
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_engine_that_cannot_start_stops_the_server_with_status_2() {
    // Standalone data, then the same directory as a cluster's founder: the data is in no
    // log, so the cluster runtime refuses to start, and the server stops at once.
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start_in(dir.path());
    node.client().put("kept.k", "v");
    node.terminate();
    let clustered = write_config(dir.path(), "credentials: a-long-enough-cluster-secret\n");
    let (status, stderr) = serve_until_it_stops(&clustered);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(
        stderr.contains("holds data written while this node ran without atlas.credentials"),
        "{stderr}"
    );
    // Its storage is untouched: the standalone node starts again with the data.
    node.restart();
    assert_eq!(node.client().get("kept.k").as_deref(), Some("v"));

    // A second server over a data directory that a running one holds: RocksDB's lock.
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("atlas.yaml");
    fs::write(
        &config,
        format!(
            "version: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
             atlas:\n  data_dir: {}\n  socket: {}\n  listen: 127.0.0.1:{}\n",
            dir.path().join("data").display(),
            other.path().join("atlas.sock").display(),
            atlas_tests::free_port()
        ),
    )
    .unwrap();
    let (status, stderr) = serve_until_it_stops(&config);
    assert_eq!(status, Some(2), "{stderr}");
    assert!(stderr.contains("cannot open storage"), "{stderr}");
    assert_eq!(
        node.client().get("kept.k").as_deref(),
        Some("v"),
        "the first is unharmed"
    );
}
