//! `atlas repl <SOCKET>` driven through a pipe (stdin is not a terminal).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use atlas_tests::{Node, assert_same_bytes, atlas_bin, explain, run_with_input};

fn repl(socket: &Path, input: &str) -> Output {
    run_with_input(
        Command::new(atlas_bin()).arg("repl").arg(socket),
        input.as_bytes(),
        Duration::from_secs(30),
    )
}

/// The lines of a run that must have exited 0.
fn ok_lines(out: &Output) -> Vec<String> {
    assert_eq!(out.status.code(), Some(0), "{}", explain(out));
    stdout_lines(out)
}

fn stdout_lines(out: &Output) -> Vec<String> {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\r'), "repl output keeps \\r: {text:?}");
    text.lines().map(str::to_string).collect()
}

#[test]
fn repl_prints_responses_and_exits_zero_at_eof() {
    let node = Node::start();
    let out = repl(&node.socket_path(), "KEY PUT a.b hello\nKEY GET a.b\n");
    assert_eq!(
        ok_lines(&out),
        ["OK", "VALUE:hello", "OK"],
        "{}",
        explain(&out)
    );
    assert_eq!(node.client().get("a.b").as_deref(), Some("hello"));
}

#[test]
fn repl_prints_multi_line_responses() {
    let node = Node::start();
    let mut c = node.client();
    c.put("r.b", "2");
    c.put("r.a", "1");
    let out = repl(&node.socket_path(), "SCAN r\nCOUNT r\nPRINCIPAL WHOAMI\n");
    assert_eq!(
        ok_lines(&out),
        [
            "KEYS:2",
            "R.A",
            "R.B",
            "OK",
            "COUNT:2",
            "OK",
            "PRINCIPAL (none)",
            "OK"
        ],
        "{}",
        explain(&out)
    );
}

#[test]
fn repl_exit_code_reports_errors() {
    let node = Node::start();
    let out = repl(&node.socket_path(), "FOO bar\nKEY PUT err.k after\n");
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(
        out.status.code().is_some(),
        "repl was killed: {}",
        explain(&out)
    );
    let lines = stdout_lines(&out);
    let all = format!("{lines:?} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        all.contains("ERROR WARN command expected, got FOO"),
        "{}",
        explain(&out)
    );
    // The error did not stop the session: the next command ran.
    assert_eq!(
        lines.last().map(String::as_str),
        Some("OK"),
        "{}",
        explain(&out)
    );
    assert_eq!(node.client().get("err.k").as_deref(), Some("after"));
}

#[test]
fn repl_blob_upload_and_download_are_byte_exact() {
    let node = Node::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let upload = dir.path().join("upload.bin");
    let download = dir.path().join("download.bin");
    let mut payload = b"head\r\nmiddle\0\0\r\n\ntail\r".to_vec();
    payload.extend(0..=255u8);
    fs::write(&upload, &payload).expect("write upload file");

    let input = format!(
        "KEY BLOB SET k.b @{}\nKEY BLOB GET k.b > {}\n",
        upload.display(),
        download.display()
    );
    let out = repl(&node.socket_path(), &input);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));

    // The server holds exactly the file's bytes.
    let stored = node.client().blob_get("k.b").expect("blob uploaded");
    assert_same_bytes(&stored, &payload, "blob uploaded by the repl");
    // The download wrote exactly the payload, and the repl said how much it saved.
    let saved = fs::read(&download).expect("download file written");
    assert_same_bytes(&saved, &payload, "blob downloaded by the repl");
    let lines = stdout_lines(&out);
    let size = payload.len().to_string();
    assert!(
        lines.iter().any(|l| l.contains(&size) && l != "OK"),
        "no line mentions {size} saved bytes: {}",
        explain(&out)
    );
    assert_eq!(
        lines.first().map(String::as_str),
        Some("OK"),
        "{}",
        explain(&out)
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("OK"),
        "{}",
        explain(&out)
    );
    // The payload itself is not dumped on stdout.
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("middle"),
        "{}",
        explain(&out)
    );
}

#[test]
fn repl_exit_command_stops_reading() {
    let node = Node::start();
    let out = repl(
        &node.socket_path(),
        "KEY PUT exit.k first\nEXIT\nKEY PUT exit.k second\n",
    );
    let lines = ok_lines(&out);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("OK"),
        "{}",
        explain(&out)
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "OK").count(),
        1,
        "a command after EXIT was answered: {}",
        explain(&out)
    );
    assert_eq!(node.client().get("exit.k").as_deref(), Some("first"));
}

#[test]
fn repl_without_a_server_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = repl(&dir.path().join("nobody.sock"), "KEY GET a.b\n");
    assert!(
        out.status.code().is_some(),
        "repl was killed: {}",
        explain(&out)
    );
    assert_ne!(out.status.code(), Some(0), "{}", explain(&out));
}

fn atlas(args: &[&str]) -> Output {
    run_with_input(
        Command::new(atlas_bin()).args(args),
        b"",
        Duration::from_secs(30),
    )
}

#[test]
fn one_shot_kv_commands_answer_with_their_exit_status() {
    let node = Node::start_with("limits: {max_scan_keys: 2}");
    let socket = node.socket_path();
    let socket = socket.to_str().expect("utf-8 path");
    let kv = |args: &[&str]| {
        let mut all = vec!["kv", "--socket", socket];
        all.extend_from_slice(args);
        atlas(&all)
    };
    let out = kv(&["put", "app.name", "two", "words"]);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let out = kv(&["get", "app.name"]);
    assert_eq!(ok_lines(&out), ["two words"]);
    let out = kv(&["get", "app.none"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(out.stdout.is_empty());
    let out = kv(&["version", "app.name"]);
    assert_eq!(stdout_lines(&out), ["1"], "{}", explain(&out));
    let out = kv(&["cas", "app.name", "0", "other"]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("version mismatch: APP.NAME is at version 1"),
        "{}",
        explain(&out)
    );
    assert_eq!(
        kv(&["cas", "app.name", "1", "third"]).status.code(),
        Some(0)
    );
    for k in ["app.a", "app.b", "app.c"] {
        assert_eq!(kv(&["put", k, "x"]).status.code(), Some(0));
    }
    // All pages, although a page holds two keys.
    let out = kv(&["scan", "app."]);
    assert_eq!(ok_lines(&out), ["APP.A", "APP.B", "APP.C", "APP.NAME"]);
    let out = kv(&["scan", "app.", "--values"]);
    assert_eq!(
        stdout_lines(&out),
        [
            "APP.A VALUE:x",
            "APP.B VALUE:x",
            "APP.C VALUE:x",
            "APP.NAME VALUE:third"
        ]
    );
    assert_eq!(
        kv(&["del", "app.a", "--if-version", "9"]).status.code(),
        Some(1)
    );
    assert_eq!(
        kv(&["del", "app.a", "--if-version", "1"]).status.code(),
        Some(0)
    );
    assert_eq!(kv(&["get", "app.a"]).status.code(), Some(1));
    let out = atlas(&["kv", "--socket", "/nonexistent/atlas.sock", "get", "a.b"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));

    // `atlas repl -e`: every line's answer, exit 1 at the first error.
    let out = atlas(&[
        "repl",
        socket,
        "-e",
        "KEY PUT r.x 1",
        "-e",
        "KEY VERSION r.x",
    ]);
    assert_eq!(ok_lines(&out), ["OK", "VERSION:1", "OK"]);
    let out = atlas(&[
        "repl",
        socket,
        "-e",
        "KEY CAS r.x 5 v",
        "-e",
        "KEY PUT r.x 2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert_eq!(
        stdout_lines(&out),
        ["ERROR WARN version mismatch: R.X is at version 1"]
    );
    assert_eq!(node.client().get("r.x").as_deref(), Some("1"));
}

#[test]
fn kv_watch_prints_changes_as_they_commit() {
    let node = Node::start();
    let socket = node.socket_path();
    let mut c = node.client();
    c.put("feed.a", "1");
    let start: u64 = c.request_ok("KEY VERSION feed.a")[0]["VERSION:".len()..]
        .parse()
        .unwrap();
    assert_eq!(start, 1);
    let mut child = std::process::Command::new(atlas_bin())
        .args([
            "kv",
            "--socket",
            socket.to_str().unwrap(),
            "watch",
            "feed.",
            "--count",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("atlas kv watch");
    // Writes after the watch is registered are seen: write until it has printed two.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 1;
    while child.try_wait().expect("try_wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "atlas kv watch never ended"
        );
        n += 1;
        c.put("feed.a", &n.to_string());
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("watch output");
    let lines = ok_lines(&out);
    assert_eq!(lines.len(), 2, "{}", explain(&out));
    for line in &lines {
        assert!(line.starts_with("PUT FEED.A "), "{line}");
    }
    let bad = atlas(&["kv", "--socket", socket.to_str().unwrap(), "watch", "feed"]);
    assert_eq!(bad.status.code(), Some(1), "{}", explain(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid watch prefix"));
}
