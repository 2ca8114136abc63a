//! Clusters on loopback, no emulated delays: what replication itself costs.
//!
//! - `throughput`: durable 1 KiB PUTs on 1,000 keys (uncapped closed loop, 1/16/64
//!   clients) on a 3-node cluster (3 regions, `fn: 0`, `fz: 1`) and a one-node cluster,
//!   against a standalone node in the same run.
//! - `history`: memory, data directory and restart time of a 3-node cluster against the
//!   length of its history (10k, 20k, 100k, 1M overwrites): each figure against the one
//!   after 20k writes; the restart is a follower killed with -9, timed until it answers the
//!   latest value of a key written while it was down.
//! - `stall`: two 128 MiB blobs written at once to one table, then a small write to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::kv::Target;
use super::load::{self, Op, Stats};
use super::peers::{AtlasNode, free_port};
use super::{Args, Report};

const SECRET: &str = "bench-cluster-secret";

/// One node of a loopback cluster, restartable (kill -9, then start again).
struct Member {
    child: Option<Child>,
    conf: PathBuf,
    socket: PathBuf,
    data: PathBuf,
}

impl Member {
    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.conf.with_extension("log"))
            .map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["serve", "-c"])
            .arg(&self.conf)
            .env("ATLAS_ADMIN_PASSWORD", "bench-admin-password")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("atlas: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while atlas::client::Client::connect(&self.socket, "bench").is_err() {
            if Instant::now() > deadline {
                return Err(format!("{} did not start", self.conf.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn rss_mib(&self) -> f64 {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return 0.0;
        };
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Cluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts one node per region (the first founds the cluster, the others join it).
    pub fn start(bin: &Path, regions: &[&str], extra: &str) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("atlas-loopback-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut members: Vec<Member> = Vec::new();
        let mut seed: Option<(u16, PathBuf)> = None;
        for (i, region) in regions.iter().enumerate() {
            let home = dir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
            let port = free_port();
            let socket = home.join("atlas.sock");
            let data = home.join("data");
            let mut yaml = format!(
                "version: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
                 atlas:\n  data_dir: {}\n  socket: {}\n  listen: 127.0.0.1:{port}\n  \
                 region: {region}\n  credentials: {SECRET}\n",
                data.display(),
                socket.display()
            );
            if let Some((seed_port, ca)) = &seed {
                yaml.push_str(&format!(
                    "  connect: https://127.0.0.1:{seed_port}\n  peer_ca: {}\n",
                    ca.display()
                ));
            }
            for line in extra.lines() {
                yaml.push_str(&format!("  {line}\n"));
            }
            let conf = home.join("atlas.yaml");
            std::fs::write(&conf, yaml).map_err(|e| e.to_string())?;
            let mut member = Member {
                child: None,
                conf,
                socket,
                data: data.clone(),
            };
            member.spawn(bin)?;
            if seed.is_none() {
                seed = Some((port, data.join("tls").join("ca.crt")));
            }
            members.push(member);
        }
        let cluster = Cluster { members, _dir: dir };
        cluster.wait_active(regions.len())?;
        Ok(cluster)
    }

    fn wait_active(&self, n: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = super::cluster::node_list(&self.members[0].socket)?;
            if lines.iter().filter(|l| l.contains("status=ACTIVE")).count() == n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("cluster did not become ACTIVE: {lines:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.members[i].socket.clone()
    }
}

fn put_1k(target: &Target, clients: usize, d: Duration) -> Result<Stats, String> {
    let value = vec![b'v'; 1024];
    load::run(target, Op::Put, clients, d, "tput", 1000, &value)
}

/// Cluster write throughput (an uncapped closed loop) against a standalone node, same load,
/// same run, each figure the median of `TRIALS` rounds.
pub fn throughput(args: &Args, report: &mut Report) -> Result<(), String> {
    let d = Duration::from_secs(args.seconds.max(3));
    let standalone = AtlasNode::start(&args.atlas, "strict", "")?;
    let alone = Target::Atlas(standalone.socket.clone());
    let three = Cluster::start(
        &args.atlas,
        &["r1", "r2", "r3"],
        "durability: strict\nfn: 0\nfz: 1",
    )?;
    let one = Cluster::start(&args.atlas, &["r1"], "durability: strict")?;
    let targets = [
        ("3-node cluster", Target::Atlas(three.socket(0))),
        ("1-node cluster", Target::Atlas(one.socket(0))),
    ];
    for (_, t) in &targets {
        put_1k(t, 16, Duration::from_secs(1))?; // take the table, warm up
    }
    put_1k(&alone, 16, Duration::from_secs(1))?;
    for &c in &args.clients {
        let trials = super::rounds(&mut [
            &mut || put_1k(&alone, c, d),
            &mut || put_1k(&targets[0].1, c, d),
            &mut || put_1k(&targets[1].1, c, d),
        ])?;
        for (i, (name, _)) in targets.iter().enumerate() {
            report.kv_trials(
                &format!("{name} durable PUT 1 KiB, {c} clients"),
                "standalone",
                &trials[0],
                &trials[1 + i],
            );
        }
    }
    Ok(())
}

/// Memory, disk and restart time against the length of the history.
pub fn history(args: &Args, report: &mut Report) -> Result<(), String> {
    let mut cluster = Cluster::start(
        &args.atlas,
        &["r1", "r2", "r3"],
        "durability: strict\nfn: 0\nfz: 1",
    )?;
    let owner = Target::Atlas(cluster.socket(0));
    let value = vec![b'h'; 1024];
    let mut written = 0u64;
    let mut points: Vec<(u64, f64, f64, f64)> = Vec::new();
    for checkpoint in [10_000u64, 20_000, 100_000, 1_000_000] {
        while written < checkpoint {
            let stats = load::run_count(&owner, 64, checkpoint - written, "hist", 1000, &value)?;
            written += stats.ops as u64;
        }
        let rss: f64 = cluster
            .members
            .iter()
            .map(Member::rss_mib)
            .fold(0.0, f64::max);
        let disk = cluster
            .members
            .iter()
            .map(|m| dir_mib(&m.data.join("db")))
            .fold(0.0, f64::max);
        // kill -9 a follower, write a key, time the restart until it serves that key.
        let follower = cluster.members.len() - 1;
        cluster.members[follower].kill9();
        let marker = format!("v{written}");
        let mut kv = owner.connect()?;
        kv.put("hist.marker", marker.as_bytes())?;
        let started = Instant::now();
        cluster.members[follower].spawn(&args.atlas)?;
        let socket = cluster.socket(follower);
        let follower_kv = Target::Atlas(socket);
        let deadline = started + Duration::from_secs(120);
        loop {
            let got = follower_kv
                .connect()
                .and_then(|mut kv| kv.get("hist.marker"))
                .ok()
                .flatten();
            if got.as_deref() == Some(marker.as_bytes()) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the follower did not serve after {written} writes"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let restart_ms = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "  after {written} writes: max RSS {rss:.0} MiB, max db {disk:.0} MiB, \
             restart to serving {restart_ms:.0} ms"
        );
        points.push((written, rss, disk, restart_ms));
    }
    // Figures are compared with those after 20,000 writes (the reference point).
    let Some(&(_, b_rss, b_disk, b_restart)) = points.iter().find(|p| p.0 >= 20_000) else {
        return Err("no reference point".into());
    };
    for (written, rss, disk, restart_ms) in points {
        let label = format!("after {written} writes (1 MiB live)");
        let rows = [
            ("3-node cluster max RSS", "MiB", b_rss, rss),
            ("3-node cluster max db size", "MiB", b_disk, disk),
            ("follower kill -9 to serving", "ms", b_restart, restart_ms),
        ];
        for (what, unit, reference, value) in rows {
            report.add(
                &format!("{what} {label}"),
                unit,
                "after 20000",
                reference,
                value,
            );
        }
    }
    Ok(())
}

fn dir_mib(dir: &Path) -> f64 {
    fn bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => bytes(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    bytes(dir) as f64 / (1024.0 * 1024.0)
}

/// Two 128 MiB blobs written at once to one table of a 3-node cluster, then a small write to
/// the same table: how long the small write takes (the target is under a second).
pub fn blob_stall(args: &Args, report: &mut Report) -> Result<(), String> {
    let cluster = Cluster::start(
        &args.atlas,
        &["r1", "r2", "r3"],
        "durability: strict\nfn: 0\nfz: 1",
    )?;
    let size = 128usize << 20;
    let put = |socket: &Path, line: &str, payload: Option<&[u8]>| -> Result<Duration, String> {
        let mut client =
            atlas::client::Client::connect(socket, "bench").map_err(|e| e.to_string())?;
        let started = Instant::now();
        let frames = client
            .request(line.as_bytes(), payload)
            .map_err(|e| e.to_string())?;
        if atlas::client::is_error(&frames) {
            return Err(format!("{line}: {frames:?}"));
        }
        Ok(started.elapsed())
    };
    put(&cluster.socket(0), "KEY PUT stall.warm up", None)?;
    let blobs: Vec<_> = (0..2)
        .map(|i| {
            let socket = cluster.socket(i);
            std::thread::spawn(move || -> Result<Duration, String> {
                let payload: Vec<u8> = (0..size).map(|b| (b % 251) as u8).collect();
                let line = format!("KEY BLOB SET stall.blob{i} {size}");
                let mut client =
                    atlas::client::Client::connect(&socket, "bench").map_err(|e| e.to_string())?;
                let started = Instant::now();
                let frames = client
                    .request(line.as_bytes(), Some(&payload))
                    .map_err(|e| e.to_string())?;
                if atlas::client::is_error(&frames) {
                    return Err(format!("blob: {frames:?}"));
                }
                Ok(started.elapsed())
            })
        })
        .collect();
    // Both uploads (128 MiB over the socket) have reached their nodes by then.
    std::thread::sleep(Duration::from_millis(800));
    let small = put(&cluster.socket(2), "KEY PUT stall.small quick", None)?;
    let mut slowest = Duration::ZERO;
    for b in blobs {
        slowest = slowest.max(b.join().map_err(|_| "blob thread panicked")??);
    }
    println!(
        "  two 128 MiB blobs in {:.2} s; a small write sent while they were written took {:.3} s",
        slowest.as_secs_f64(),
        small.as_secs_f64()
    );
    report.add(
        "small write behind two 128 MiB blobs, 3-node cluster",
        "s",
        "target",
        1.0,
        small.as_secs_f64(),
    );
    Ok(())
}
