//! Data survives a clean shutdown (SIGTERM) and a crash (kill -9) followed by a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use atlas_tests::{Client, Node, assert_same_bytes, random_bytes};

#[test]
fn data_survives_sigterm_and_restart() {
    let mut node = Node::start();
    let blob = random_bytes(2 * 1024 * 1024 + 3, 7);
    {
        let mut c = node.client();
        for i in 0..20 {
            c.put(&format!("keep.k{i}"), &format!("value {i}"));
        }
        c.put("keep.k5", "overwritten");
        assert_eq!(c.request("KEY DEL keep.k6"), ["OK"]);
        c.blob_set("keep.blob", &blob);
        assert_eq!(c.request("PRINCIPAL ASSUME alice"), ["OK"]);
        c.put("keep.private", "alice only");
        c.request_ok("ACL GRANT keep.private alice PERMS OWNER");
    }
    let status = node.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );

    node.restart();
    let mut c = node.client();
    for i in 0..20 {
        let expected = match i {
            5 => Some("overwritten".to_string()),
            6 => None,
            _ => Some(format!("value {i}")),
        };
        assert_eq!(c.get(&format!("keep.k{i}")), expected, "keep.k{i}");
    }
    assert_same_bytes(
        &c.blob_get("keep.blob").expect("blob after restart"),
        &blob,
        "blob after restart",
    );
    // The ACL survived too.
    assert_eq!(c.get("keep.private"), None);
    assert_eq!(
        c.request("KEY PUT keep.private x"),
        ["ERROR WARN permission denied for principal '(none)': write access denied"]
    );
    assert_eq!(c.request("PRINCIPAL ASSUME alice"), ["OK"]);
    assert_eq!(c.get("keep.private").as_deref(), Some("alice only"));
}

#[test]
fn worm_lock_survives_restart() {
    let mut node = Node::start();
    let mut c = node.client();
    assert_eq!(c.request("KEY PUT lock.k WORM TTL 1h locked"), ["OK"]);
    drop(c);
    assert_eq!(node.terminate().code(), Some(0));
    node.restart();
    let mut c = node.client();
    assert_eq!(c.get("lock.k").as_deref(), Some("locked"));
    c.request_err(
        "KEY PUT lock.k other",
        "ERROR WARN write-once value is locked until ",
    );
}

/// What one writer thread saw before the server died.
struct WriterReport {
    /// Indices whose PUT was answered `OK`.
    acknowledged: Vec<usize>,
    /// Whether the writer stopped because the connection broke (not because of its deadline).
    stopped_by_disconnect: bool,
}

/// PUTs `<table>.k<i>` = `value-<i>` one after another until the connection breaks.
fn spawn_writer(
    socket: PathBuf,
    table: String,
    progress: Arc<AtomicUsize>,
) -> thread::JoinHandle<WriterReport> {
    thread::spawn(move || {
        let mut c = Client::connect_ready(&socket);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut acknowledged = Vec::new();
        for i in 0.. {
            if Instant::now() > deadline {
                return WriterReport {
                    acknowledged,
                    stopped_by_disconnect: false,
                };
            }
            match c.try_request(&format!("KEY PUT {table}.k{i} value-{i}")) {
                Ok(lines) => {
                    assert_eq!(lines, ["OK"], "PUT {table}.k{i}");
                    acknowledged.push(i);
                    progress.fetch_add(1, Ordering::SeqCst);
                }
                Err(_) => break,
            }
        }
        WriterReport {
            acknowledged,
            stopped_by_disconnect: true,
        }
    })
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    acknowledged_writes_survive_kill_9_with("");
}

/// Relaxed durability leaves the WAL sync to the OS: a crash of the process (not of the
/// machine) still loses nothing acknowledged.
#[test]
fn acknowledged_writes_survive_kill_9_with_relaxed_durability() {
    acknowledged_writes_survive_kill_9_with("durability: relaxed");
}

fn acknowledged_writes_survive_kill_9_with(extra_yaml: &str) {
    let mut node = Node::start_with(extra_yaml);
    let blob = random_bytes(300_000, 9);
    node.client().blob_set("crash.blob", &blob);

    let progress = Arc::new(AtomicUsize::new(0));
    let tables = ["crasha", "crashb", "crashc", "crashd"];
    let writers: Vec<_> = tables
        .iter()
        .map(|t| spawn_writer(node.socket_path(), t.to_string(), progress.clone()))
        .collect();

    // Kill mid-stream, once a good number of writes has been acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::SeqCst) < 400 {
        assert!(
            Instant::now() < deadline,
            "writers made too little progress: {} acknowledged",
            progress.load(Ordering::SeqCst)
        );
        thread::sleep(Duration::from_millis(10));
    }
    node.kill9();
    let reports: Vec<WriterReport> = writers
        .into_iter()
        .map(|w| w.join().expect("writer thread"))
        .collect();

    node.restart();
    let mut c = node.client();
    for (table, report) in tables.iter().zip(&reports) {
        assert!(
            report.stopped_by_disconnect,
            "writer {table} was not interrupted by the kill"
        );
        for &i in &report.acknowledged {
            assert_eq!(
                c.get(&format!("{table}.k{i}")),
                Some(format!("value-{i}")),
                "acknowledged write {table}.k{i} lost after kill -9 ({} acknowledged)",
                report.acknowledged.len()
            );
        }
        // At most the one in-flight PUT may have landed beyond the acknowledged ones.
        let count: usize = c.request_ok(&format!("COUNT {table}."))[0]
            .strip_prefix("COUNT:")
            .and_then(|n| n.parse().ok())
            .expect("COUNT:<n>");
        let acked = report.acknowledged.len();
        assert!(
            count == acked || count == acked + 1,
            "{table}: {count} keys after restart, {acked} acknowledged"
        );
    }
    assert_same_bytes(
        &c.blob_get("crash.blob").expect("blob after kill -9"),
        &blob,
        "blob after kill -9",
    );
    // The restarted node keeps working normally.
    c.put("crasha.after", "restart");
    assert_eq!(c.get("crasha.after").as_deref(), Some("restart"));
}

#[test]
fn repeated_crashes_lose_nothing_acknowledged() {
    let mut node = Node::start();
    let mut expected = Vec::new();
    for round in 0..3 {
        let mut c = node.client();
        for i in 0..50 {
            let key = format!("round{round}.k{i}");
            c.put(&key, &format!("r{round}-{i}"));
            expected.push((key, format!("r{round}-{i}")));
        }
        node.kill9();
        node.restart();
        let mut c = node.client();
        for (key, value) in &expected {
            assert_eq!(
                c.get(key).as_ref(),
                Some(value),
                "{key} after crash {round}"
            );
        }
    }
}
