//! Graceful upgrade: `atlas serve -u` takes the listeners over from a running server through
//! Pingora's upgrade socket (the old one hands them over on SIGQUIT and drains), while clients
//! keep sending requests over the Unix socket and HTTPS. Not one request may fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use atlas_tests::https::curl_raw;
use atlas_tests::{ADMIN_PASSWORD, ADMIN_PASSWORD_ENV, Client, atlas_bin, free_port};

fn spawn(config: &Path, dir: &Path, upgrade: bool, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("log");
    let mut command = Command::new(atlas_bin());
    command
        .env(ADMIN_PASSWORD_ENV, ADMIN_PASSWORD)
        .arg("serve")
        .arg("-c")
        .arg(config);
    if upgrade {
        command.arg("-u");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn atlas serve")
}

/// One request on a new connection: the handshake, then `PUT t.<key>`, answered `OK`. A
/// connection closed before its handshake completed carried no request: like any client,
/// this one connects again (at most 3 times; each counted in `reconnects`). A request once
/// sent must be answered.
fn put_once(socket: &Path, key: &str, reconnects: &AtomicUsize) -> Result<(), String> {
    let mut attempts = 0;
    let mut client = loop {
        match Client::try_connect_ready(socket) {
            Ok(client) => break client,
            // A refused connection (or a socket file gone) is downtime, not a reconnect.
            Err(e)
                if attempts == 3
                    || matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
            {
                return Err(format!("connect: {e}"));
            }
            Err(_) => {
                attempts += 1;
                reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    match client.try_request(&format!("KEY PUT t.{key} v-{key}")) {
        Ok(lines) if lines == ["OK"] => Ok(()),
        Ok(lines) => Err(format!("answer: {lines:?}")),
        Err(e) => Err(format!("answer: {e}")),
    }
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Load {
    reconnects: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(socket: PathBuf, https: String, ca: PathBuf) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for t in 0..2 {
            let (stop, done, failures, socket, reconnects) = (
                stop.clone(),
                done.clone(),
                failures.clone(),
                socket.clone(),
                reconnects.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("u{t}-{i}");
                    match put_once(&socket, &key, &reconnects) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("socket {key}: {e}"));
                            0
                        }
                    };
                    i += 1;
                }
            }));
        }
        let (stop2, done2, failures2) = (stop.clone(), done.clone(), failures.clone());
        threads.push(std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let out = curl_raw(&ca, &format!("https://{https}/atlas/v1/health"), &[]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                if out.status.success() && text.contains("\n@@200 ") {
                    done2.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures2.lock().unwrap().push(format!(
                        "https: {} {}",
                        text.lines().last().unwrap_or_default(),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }));
        Load {
            reconnects,
            stop,
            done,
            failures,
            threads,
        }
    }

    /// Requests answered, requests failed, reconnections before a request was sent.
    fn finish(self) -> (usize, Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            self.done.load(Ordering::Relaxed),
            failures,
            self.reconnects.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn an_upgrade_takes_the_listeners_over_without_losing_a_request() {
    let dir = tempfile::Builder::new()
        .prefix("atlas-upgrade-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let https = format!("127.0.0.1:{}", free_port());
    let config = d.join("atlas.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\nupgrade_sock: {up}\npid_file: {pid}\ngrace_period_seconds: 1\n\
             graceful_shutdown_timeout_seconds: 5\natlas:\n  data_dir: {data}\n  socket: {sock}\n  \
             listen: {https}\n",
            up = d.join("upgrade.sock").display(),
            pid = d.join("atlas.pid").display(),
            data = d.join("data").display(),
            sock = d.join("atlas.sock").display(),
        ),
    )
    .unwrap();
    let socket = d.join("atlas.sock");
    let ca = d.join("data/tls/ca.crt");
    let mut old = spawn(&config, d, false, "old.log");
    wait_for("the first server", Duration::from_secs(60), || {
        put_once(&socket, "ready", &AtomicUsize::new(0)).is_ok()
    });
    let load = Load::start(socket.clone(), https.clone(), ca.clone());
    std::thread::sleep(Duration::from_millis(500));
    // The new process waits on the upgrade socket for the listeners...
    let mut new = spawn(&config, d, true, "new.log");
    wait_for(
        "the new server's upgrade socket",
        Duration::from_secs(30),
        || d.join("upgrade.sock").exists(),
    );
    std::thread::sleep(Duration::from_millis(300));
    // ...which the old one hands over on SIGQUIT, then drains and exits.
    let pid = libc::pid_t::try_from(old.id()).unwrap();
    // SAFETY: kill(2) on our own live child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGQUIT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = old.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the old server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = |name: &str| std::fs::read_to_string(d.join(name)).unwrap_or_default();
    assert!(status.success(), "old server: {status}\n{}", log("old.log"));
    // The new server serves on the same socket and port, with the data written before.
    std::thread::sleep(Duration::from_secs(2));
    let (done, failures, reconnects) = load.finish();
    eprintln!("{done} requests answered across the upgrade, {reconnects} reconnections");
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new server exited:\n{}",
        log("new.log")
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the upgrade: {:?}\nold:\n{}\nnew:\n{}",
        failures.len(),
        done + failures.len(),
        &failures[..failures.len().min(10)],
        log("old.log"),
        log("new.log")
    );
    assert!(done > 20, "only {done} requests ran");
    put_once(&socket, "after", &AtomicUsize::new(0)).expect("the new server answers");
    let mut client = Client::connect_ready(&socket);
    assert_eq!(client.get("t.ready").as_deref(), Some("v-ready"));
    assert_eq!(client.get("t.u0-0").as_deref(), Some("v-u0-0"));
    let _ = new.kill();
    let _ = new.wait();
}
