//! Clusters of real `atlas` processes on loopback, a workload that records a history of
//! client operations for the linearizability checker, and nemeses (kill -9, SIGSTOP,
//! partitions through the test-only fault layer).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use atlas::check::{Input, Operation, Output};
use tempfile::TempDir;

use crate::https::curl;
use crate::{ADMIN_PASSWORD, ADMIN_PASSWORD_ENV, Client, Node, atlas_bin, free_port, write_config};

/// The shared secret of test clusters.
pub const CREDENTIALS: &str = "test-cluster-secret";

/// A cluster of processes, node `i` (0-based) having id `i + 1` (they join in order).
pub struct TestCluster {
    pub nodes: Vec<Node>,
    ports: Vec<u16>,
    regions: Vec<String>,
    extra: String,
    _dirs: Vec<TempDir>,
}

/// The `atlas:` lines of cluster node `port` in `region`, joining through `seed` if given.
pub fn node_yaml(port: u16, region: &str, seed: Option<(u16, &Path)>, extra: &str) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\nregion: {region}\ncredentials: {CREDENTIALS}\n\
         durability: relaxed\nfault_injection: true\n"
    );
    if let Some((seed_port, ca)) = seed {
        yaml.push_str(&format!(
            "connect: https://127.0.0.1:{seed_port}\npeer_ca: {}\n",
            ca.display()
        ));
    }
    yaml.push_str(extra);
    yaml
}

impl TestCluster {
    /// Starts one node per entry of `regions`; the first founds the cluster, the others
    /// join through it. `extra` goes into every node's `atlas:` section (e.g. `fz: 1`).
    pub fn start(regions: &[&str], extra: &str) -> TestCluster {
        TestCluster::start_each(regions, extra, |_| String::new())
    }

    /// Like [`TestCluster::start`], with `own(i)` added to node `i`'s `atlas:` section
    /// (keys that differ per node, such as a listener's port).
    pub fn start_each(regions: &[&str], extra: &str, own: impl Fn(usize) -> String) -> TestCluster {
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            regions: Vec::new(),
            extra: extra.to_string(),
            _dirs: Vec::new(),
        };
        for (i, region) in regions.iter().enumerate() {
            cluster.add_with(region, &own(i));
        }
        cluster.wait_all_active(Duration::from_secs(30));
        cluster
    }

    /// Starts one more node in `region`, joining through node 0 (a late joiner).
    pub fn add(&mut self, region: &str) -> usize {
        self.add_with(region, "")
    }

    /// Like [`TestCluster::add`], with `own` added to this node's `atlas:` section.
    pub fn add_with(&mut self, region: &str, own: &str) -> usize {
        let dir = tempfile::Builder::new()
            .prefix("atlas-cluster-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let seed = self.nodes.first().map(|n| (self.ports[0], n.ca_path()));
        let yaml = node_yaml(
            port,
            region,
            seed.as_ref().map(|(p, ca)| (*p, ca.as_path())),
            &format!("{}{own}", self.extra),
        );
        let node = Node::start_in_with(dir.path(), &yaml);
        self.nodes.push(node);
        self.ports.push(port);
        self.regions.push(region.to_string());
        self._dirs.push(dir);
        self.nodes.len() - 1
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.ports[i]
    }

    pub fn region(&self, i: usize) -> &str {
        &self.regions[i]
    }

    /// Waits until every node lists every node as ACTIVE and all have applied the same
    /// membership configuration, not a joint one.
    pub fn wait_all_active(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let n = self.nodes.len();
        let mut last = Vec::new();
        let mut last_info = Vec::new();
        while Instant::now() < deadline {
            let mut all = true;
            let mut epochs = BTreeSet::new();
            for (i, node) in self.nodes.iter().enumerate() {
                let mut client = node.client();
                last = client.request("NODE LIST");
                let active = last.iter().filter(|l| l.contains("status=ACTIVE")).count();
                all &= active == n;
                let info = client.request(&format!("NODE INFO {}", i + 1));
                all &= info.iter().any(|l| l == "joint=false");
                last_info = info.clone();
                epochs.extend(info.into_iter().filter(|l| l.starts_with("config_epoch=")));
            }
            all &= epochs.len() == 1;
            last.extend(epochs);
            if all {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "not every node became ACTIVE within {within:?}; last NODE LIST: {last:?}, \
             last NODE INFO: {last_info:?}"
        );
    }

    /// The node index owning `table`, as node `asker` reports it (its report is refreshed
    /// every 100 ms, so this waits up to 5 s for one).
    pub fn owner_of(&self, asker: usize, table: &str) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.nodes[asker]
                .client()
                .request(&format!("TABLE INFO {table}"));
            let owner = lines
                .iter()
                .find_map(|l| l.strip_prefix("owner="))
                .and_then(|o| o.parse::<usize>().ok())
                .map(|id| id - 1);
            if owner.is_some() || Instant::now() > deadline {
                return owner;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cuts node `i` off from every other node (both directions), or heals it (`false`).
    pub fn isolate(&self, i: usize, cut: bool) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        for &j in &all {
            let blocked: Vec<usize> = if !cut {
                Vec::new()
            } else if j == i {
                all.iter().filter(|&&k| k != i).map(|k| k + 1).collect()
            } else {
                vec![i + 1]
            };
            if self.nodes[j].is_running() {
                set_faults(&self.nodes[j], &blocked);
            }
        }
    }
}

/// Sets the peers node `node` drops (test-only fault layer).
pub fn set_faults(node: &Node, blocked: &[usize]) {
    let body = serde_json::json!({ "blocked": blocked }).to_string();
    let response = curl(
        &node.ca_path(),
        &format!("https://{}/atlas/v1/test/faults", node.https_addr()),
        &[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {CREDENTIALS}"),
            "--data-binary",
            &body,
        ],
    );
    assert_eq!(response.status, 200, "fault layer: {response:?}");
}

/// Runs `atlas serve` with `extra` in a fresh directory and expects it to fail to start;
/// returns its stderr. Bounded in time.
pub fn start_expecting_failure(extra: &str, within: Duration) -> String {
    let dir = tempfile::Builder::new()
        .prefix("atlas-fail-")
        .tempdir()
        .expect("temp dir");
    let config = write_config(dir.path(), extra);
    serve_expecting_failure(&config, within)
}

/// Runs `atlas serve -c <config>` and expects it to fail within `within`; returns its stderr.
pub fn serve_expecting_failure(config: &Path, within: Duration) -> String {
    let mut child = Command::new(atlas_bin())
        .env(ADMIN_PASSWORD_ENV, ADMIN_PASSWORD)
        .args(["serve", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn atlas");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut stderr = String::new();
            use std::io::Read;
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            assert!(!status.success(), "atlas started: {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("atlas neither started nor failed within {within:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a signal to a running node (SIGSTOP / SIGCONT).
pub fn signal(node: &Node, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(node.pid()).expect("pid");
    // SAFETY: kill(2) on our own live child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

/// A history recorded by concurrent clients, on one clock.
#[derive(Clone, Default)]
pub struct History {
    ops: Arc<Mutex<Vec<Operation>>>,
}

impl History {
    pub fn operations(&self) -> Vec<Operation> {
        self.ops.lock().expect("history").clone()
    }

    fn push(&self, op: Operation) {
        self.ops.lock().expect("history").push(op);
    }
}

/// One client of the workload: talks to one node's socket, reconnecting when it can.
pub struct Worker {
    pub socket: PathBuf,
    pub client_id: u64,
    pub keys: Vec<String>,
}

/// Runs `workers` until `stop`, recording every operation in `history` against `epoch`.
pub fn run_workload(
    workers: Vec<Worker>,
    history: History,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<usize>> {
    workers
        .into_iter()
        .map(|w| {
            let history = history.clone();
            let stop = stop.clone();
            thread::spawn(move || work(w, history, epoch, stop))
        })
        .collect()
}

fn work(w: Worker, history: History, epoch: Instant, stop: Arc<AtomicBool>) -> usize {
    let mut client: Option<Client> = None;
    let mut seen = vec![0u64; w.keys.len()];
    let mut n = 0u64;
    let mut done = 0;
    let mut state = w.client_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            match Client::try_connect_ready(&w.socket) {
                Ok(c) => client = Some(c),
                Err(_) => {
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        let key_index = (next() % w.keys.len() as u64) as usize;
        let key = w.keys[key_index].clone();
        n += 1;
        let value = format!("c{}n{n}", w.client_id);
        // Half writes (a fifth of them compare-and-set on the version this client last
        // saw), half reads (a fifth of them of the version).
        let roll = next() % 10;
        let (line, input) = match roll {
            0..=3 => (
                format!("KEY PUT {key} {value}"),
                Input::Put(value.into_bytes()),
            ),
            4 => {
                let version = seen[key_index];
                (
                    format!("KEY CAS {key} {version} {value}"),
                    Input::Cas {
                        version,
                        value: value.into_bytes(),
                    },
                )
            }
            5 => (format!("KEY VERSION {key}"), Input::Version),
            _ => (format!("KEY GET {key}"), Input::Get),
        };
        let call = epoch.elapsed().as_micros() as u64;
        let result = client.as_mut().expect("client").try_request(&line);
        let ret = epoch.elapsed().as_micros() as u64;
        let output = match (&input, result.as_deref()) {
            (Input::Put(_) | Input::Cas { .. }, Ok([ok])) if ok == "OK" => Some(Output::Ok),
            (Input::Cas { .. }, Ok([e])) if e.starts_with("ERROR WARN version mismatch: ") => {
                let at = e.rsplit(' ').next().and_then(|v| v.parse().ok());
                Some(Output::Mismatch(at.expect("version in a mismatch")))
            }
            (Input::Get, Ok([v, ok])) if ok == "OK" && v.starts_with("VALUE:") => {
                Some(Output::Value(Some(v.as_bytes()["VALUE:".len()..].to_vec())))
            }
            (Input::Get, Ok([nf, ok])) if ok == "OK" && nf == "NOT_FOUND" => {
                Some(Output::Value(None))
            }
            (Input::Version, Ok([v, ok])) if ok == "OK" && v.starts_with("VERSION:") => {
                let at: u64 = v["VERSION:".len()..].parse().expect("a version");
                seen[key_index] = at;
                Some(Output::Version(at))
            }
            (_, Ok(lines)) => {
                // A timeout (or any error) leaves the outcome unknown; the server keeps the
                // connection usable.
                assert!(
                    lines.len() == 1 && lines[0].starts_with("ERROR WARN"),
                    "unexpected answer to {line:?}: {lines:?}"
                );
                None
            }
            (_, Err(_)) => {
                client = None;
                None
            }
        };
        if let (Input::Cas { version, .. }, Some(Output::Ok)) = (&input, &output) {
            seen[key_index] = version + 1;
        }
        let (output, ret) = match output {
            Some(o) => {
                done += 1;
                (o, Some(ret))
            }
            None => (Output::Unknown, None),
        };
        history.push(Operation {
            client: w.client_id,
            key: key.to_ascii_uppercase(),
            input,
            output,
            call,
            ret,
        });
    }
    done
}

/// Reads every key through every running node (after the nemeses), adding the reads to the
/// history: the final state must agree with every acknowledged write.
pub fn final_reads(cluster: &TestCluster, keys: &[String], history: &History, epoch: Instant) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        if !node.is_running() {
            continue;
        }
        let mut client = node.client();
        for key in keys {
            let call = epoch.elapsed().as_micros() as u64;
            let lines = client.request(&format!("KEY GET {key}"));
            let ret = epoch.elapsed().as_micros() as u64;
            let output = match lines.as_slice() {
                [v, ok] if ok == "OK" && v.starts_with("VALUE:") => {
                    Output::Value(Some(v.as_bytes()["VALUE:".len()..].to_vec()))
                }
                [nf, ok] if ok == "OK" && nf == "NOT_FOUND" => Output::Value(None),
                other => panic!("final read of {key} at node {}: {other:?}", i + 1),
            };
            history.push(Operation {
                client: 1_000 + i as u64,
                key: key.to_ascii_uppercase(),
                input: Input::Get,
                output,
                call,
                ret: Some(ret),
            });
        }
    }
}

/// Checks a history; panics with the anomalies (and how many operations there were).
pub fn assert_linearizable(history: &History) {
    let ops = history.operations();
    let anomalies = atlas::check::check(&ops);
    if let (false, Ok(path)) = (anomalies.is_empty(), std::env::var("ATLAS_HISTORY_DUMP")) {
        let text: String = ops.iter().map(|op| format!("{op}\n")).collect();
        let _ = std::fs::write(path, text);
    }
    assert!(
        anomalies.is_empty(),
        "history of {} operations is not linearizable:\n{}",
        ops.len(),
        anomalies
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The distinct acknowledged writes in a history (to assert the workload did something).
pub fn acknowledged_writes(history: &History) -> usize {
    history
        .operations()
        .iter()
        .filter(|o| matches!(o.input, Input::Put(_) | Input::Cas { .. }) && o.output == Output::Ok)
        .map(|o| (o.key.clone(), o.call))
        .collect::<BTreeSet<_>>()
        .len()
}
