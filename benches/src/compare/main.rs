//! `atlas-compare`: Atlas side by side with its peers in one run on this machine — etcd and
//! Redis for the key-value workloads, `db_bench` for the storage engine, nginx (driven by wrk
//! and h2load) for the edge proxy, fio for the fsync floor. Prints a table of
//! workload / peer figure / Atlas figure / ratio and writes the run as JSON under
//! `benches/results/`. A benchmark, not a test: it measures and never fails on a figure.
//!
//! ```text
//! atlas-compare --atlas target/release/atlas [--seconds 3] [--clients 1,16,64]
//!               [--only kv,blob,engine,edge,fsync,throughput,history,stall,cluster,dynamics] [--out benches/results]
//! ```

mod cluster;
mod dynamics;
mod kv;
mod load;
mod loopback;
mod peers;
mod wan;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use kv::Target;
use load::{Op, Stats};
use peers::AtlasNode;

struct Args {
    atlas: PathBuf,
    seconds: u64,
    clients: Vec<usize>,
    only: Vec<String>,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        atlas: PathBuf::from("target/release/atlas"),
        seconds: 3,
        clients: vec![1, 16, 64],
        only: Vec::new(),
        out: PathBuf::from("benches/results"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--atlas" => args.atlas = value()?.into(),
            "--seconds" => args.seconds = value()?.parse().map_err(|_| "--seconds: a number")?,
            "--clients" => {
                args.clients = value()?
                    .split(',')
                    .map(|n| n.parse().map_err(|_| "--clients: e.g. 1,16,64".to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--only" => args.only = value()?.split(',').map(str::to_string).collect(),
            "--out" => args.out = value()?.into(),
            "-h" | "--help" => {
                println!(
                    "atlas-compare --atlas BIN [--seconds 3] [--clients 1,16,64] \
                     [--only kv,blob,engine,edge,fsync,throughput,history,stall,cluster,dynamics] [--out benches/results]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// One line of the report: a figure of the peer and of Atlas for the same workload.
#[derive(Debug, Clone, Serialize)]
struct Row {
    workload: String,
    /// What the figures are, e.g. `ops/s` (higher is better) or `p99 ms` (lower is better).
    unit: String,
    peer: String,
    peer_value: f64,
    atlas_value: f64,
    /// Atlas divided by the peer.
    ratio: f64,
    peer_stats: Option<Stats>,
    atlas_stats: Option<Stats>,
    /// Each trial's figure when the row is the median of several (interleaved) trials.
    peer_trials: Vec<f64>,
    atlas_trials: Vec<f64>,
}

/// How many times each figure with trials is measured, Atlas and its peers taking turns.
const TRIALS: usize = 3;

/// The median of `values` (the middle one; the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs every one of `systems` `TRIALS` times in rounds (A, B, C, A, B, C, …), so a drift
/// of the machine during the run falls on all of them alike; the trials of each, in order.
fn rounds(
    systems: &mut [&mut dyn FnMut() -> Result<Stats, String>],
) -> Result<Vec<Vec<Stats>>, String> {
    let mut out = vec![Vec::new(); systems.len()];
    for _ in 0..TRIALS {
        for (run, trials) in systems.iter_mut().zip(&mut out) {
            trials.push(run()?);
        }
    }
    Ok(out)
}

/// The median trial of each figure (throughput and each percentile taken separately).
fn median_stats(trials: &[Stats]) -> Stats {
    let of = |f: fn(&Stats) -> f64| median(&trials.iter().map(f).collect::<Vec<_>>());
    Stats {
        ops_per_s: of(|s| s.ops_per_s),
        p50_ms: of(|s| s.p50_ms),
        p99_ms: of(|s| s.p99_ms),
        p999_ms: of(|s| s.p999_ms),
        ops: trials.iter().map(|s| s.ops).sum(),
    }
}

fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.0}-{max:.0}")
}

struct Report {
    rows: Vec<Row>,
    /// Further sections of the JSON (e.g. the cluster's per-zone figures).
    extra: Vec<serde_json::Value>,
}

impl Report {
    fn add(&mut self, workload: &str, unit: &str, peer: &str, peer_value: f64, atlas_value: f64) {
        self.push(workload, unit, peer, peer_value, atlas_value, None, None);
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        workload: &str,
        unit: &str,
        peer: &str,
        peer_value: f64,
        atlas_value: f64,
        peer_stats: Option<Stats>,
        atlas_stats: Option<Stats>,
    ) {
        let ratio = if peer_value > 0.0 {
            atlas_value / peer_value
        } else {
            f64::NAN
        };
        let row = Row {
            workload: workload.into(),
            unit: unit.into(),
            peer: peer.into(),
            peer_value,
            atlas_value,
            ratio,
            peer_stats,
            atlas_stats,
            peer_trials: Vec::new(),
            atlas_trials: Vec::new(),
        };
        println!(
            "{:<44} {:<10} {:<18} {:>12.1} {:>12.1} {:>7.2}",
            row.workload, row.unit, row.peer, row.peer_value, row.atlas_value, row.ratio
        );
        self.rows.push(row);
    }

    /// A figure measured in trials: the medians, with the spread (lowest-highest) printed
    /// below and every trial kept in the JSON.
    fn add_trials(&mut self, workload: &str, unit: &str, peer: &str, p: &[f64], a: &[f64]) {
        self.add(workload, unit, peer, median(p), median(a));
        self.note_trials(p, a);
    }

    fn note_trials(&mut self, p: &[f64], a: &[f64]) {
        println!(
            "{:<44} {:<10} {:<18} {:>12} {:>12}",
            "",
            format!("{}x range", p.len()),
            "",
            spread(p),
            spread(a)
        );
        if let Some(row) = self.rows.last_mut() {
            row.peer_trials = p.to_vec();
            row.atlas_trials = a.to_vec();
        }
    }

    /// Key-value trials: median throughput (with its spread) and median percentiles.
    fn kv_trials(&mut self, workload: &str, peer: &str, p: &[Stats], a: &[Stats]) {
        self.kv(workload, peer, median_stats(p), median_stats(a));
        let ops = |t: &[Stats]| t.iter().map(|s| s.ops_per_s).collect::<Vec<_>>();
        let (p_ops, a_ops) = (ops(p), ops(a));
        self.note_trials(&p_ops, &a_ops);
    }

    fn kv(&mut self, workload: &str, peer: &str, p: Stats, a: Stats) {
        self.push(
            workload,
            "ops/s",
            peer,
            p.ops_per_s,
            a.ops_per_s,
            Some(p),
            Some(a),
        );
        println!(
            "{:<44} {:<10} {:<18} {:>12.3} {:>12.3}",
            "", "p50/p99 ms", "", p.p50_ms, a.p50_ms
        );
        println!(
            "{:<44} {:<10} {:<18} {:>12.3} {:>12.3}",
            "", "", "", p.p99_ms, a.p99_ms
        );
    }
}

/// One part of the comparison.
type Part = fn(&Args, &mut Report) -> Result<(), String>;

fn wants(args: &Args, part: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|o| o == part)
}

fn main() {
    // Inside a namespace of the WAN emulation: be a delaying relay.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("relay") {
        if let Err(e) = wan::relay_main(&argv[2..]) {
            eprintln!("atlas-compare relay: {e}");
            std::process::exit(2);
        }
        return;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("atlas-compare: {e}");
            std::process::exit(2);
        }
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "atlas-compare: {} s per measurement, clients {:?}",
        args.seconds, args.clients
    );
    println!(
        "{:<44} {:<10} {:<18} {:>12} {:>12} {:>7}",
        "workload", "unit", "peer", "peer", "atlas", "ratio"
    );
    let mut report = Report {
        rows: Vec::new(),
        extra: Vec::new(),
    };
    let parts: [(&str, Part); 10] = [
        ("kv", kv_workloads),
        ("blob", blob_workloads),
        ("engine", engine_workloads),
        ("edge", edge_workloads),
        ("fsync", fsync_floor),
        ("throughput", loopback::throughput),
        ("history", loopback::history),
        ("stall", loopback::blob_stall),
        ("cluster", cluster::cluster_workloads),
        ("dynamics", dynamics::dynamics_workloads),
    ];
    for (name, part) in parts {
        if wants(&args, name)
            && let Err(e) = part(&args, &mut report)
        {
            eprintln!("atlas-compare: {name}: {e} (skipped)");
        }
    }
    let json = serde_json::json!({
        "started_unix": started,
        "machine": machine(),
        "seconds_per_measurement": args.seconds,
        "rows": report.rows,
        "sections": report.extra,
    });
    let _ = std::fs::create_dir_all(&args.out);
    let path = args.out.join(format!("run-{started}.json"));
    match std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap_or_default()) {
        Ok(()) => println!("results: {}", path.display()),
        Err(e) => eprintln!("atlas-compare: cannot write {}: {e}", path.display()),
    }
}

fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    serde_json::json!({"cpus": cpus, "kernel": kernel.trim(), "cpu": model})
}

/// Durable PUT and GET of 100-byte values at each client count, each figure the median of
/// `TRIALS` rounds: Atlas (strict, its Unix socket) vs etcd (one member, native gRPC) and
/// Redis over TCP and over its Unix socket (`appendfsync always` for PUT; plain for GET).
fn kv_workloads(args: &Args, report: &mut Report) -> Result<(), String> {
    let d = Duration::from_secs(args.seconds);
    let value = vec![b'v'; 100];
    let keys = 1000;
    let atlas = AtlasNode::start(&args.atlas, "strict", "")?;
    let atlas_t = Target::Atlas(atlas.socket.clone());
    let (_etcd, etcd_port) = peers::etcd()?;
    let etcd_t = Target::Etcd(etcd_port);
    let (redis_durable, durable_port) = peers::redis(true)?;
    let (redis_plain, plain_port) = peers::redis(false)?;
    let durable = [
        ("redis fsync always", Target::Redis(durable_port)),
        (
            "redis fsync, unix",
            Target::RedisUnix(peers::redis_socket(&redis_durable)),
        ),
    ];
    let plain = [
        ("redis", Target::Redis(plain_port)),
        (
            "redis unix",
            Target::RedisUnix(peers::redis_socket(&redis_plain)),
        ),
    ];
    for t in [&atlas_t, &etcd_t, &plain[0].1] {
        load::preload(t, "bench", keys, &value)?;
    }
    for (op, name, redis) in [(Op::Put, "durable PUT", &durable), (Op::Get, "GET", &plain)] {
        for &c in &args.clients {
            let run = |t: &Target| load::run(t, op, c, d, "bench", keys, &value);
            let trials = rounds(&mut [
                &mut || run(&atlas_t),
                &mut || run(&etcd_t),
                &mut || run(&redis[0].1),
                &mut || run(&redis[1].1),
            ])?;
            let etcd_name = match op {
                Op::Put => format!("{name} 100 B, {c} clients"),
                Op::Get => format!("linearizable GET 100 B, {c} clients"),
            };
            report.kv_trials(&etcd_name, "etcd gRPC", &trials[1], &trials[0]);
            for (i, (peer, _)) in redis.iter().enumerate() {
                report.kv_trials(
                    &format!("{name} 100 B, {c} clients"),
                    peer,
                    &trials[2 + i],
                    &trials[0],
                );
            }
        }
    }
    Ok(())
}

/// 1 MiB and 64 MiB values, one client, durable: Atlas blobs vs Redis (`appendfsync always`);
/// etcd only at 1 MiB (its request limit is a few MiB).
fn blob_workloads(args: &Args, report: &mut Report) -> Result<(), String> {
    let d = Duration::from_secs(args.seconds);
    let atlas = AtlasNode::start(&args.atlas, "strict", "")?;
    let atlas_t = Target::Atlas(atlas.socket.clone());
    let (_redis, port) = peers::redis(true)?;
    let redis_t = Target::Redis(port);
    let (_etcd, etcd_port) = peers::etcd()?;
    let etcd_t = Target::Etcd(etcd_port);
    for (size, label) in [(1 << 20, "1 MiB"), (64 << 20, "64 MiB")] {
        let value: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let keys = 4;
        for t in [&atlas_t, &redis_t] {
            load::preload(t, "blob", keys, &value)?;
        }
        let a = load::run(&atlas_t, Op::Put, 1, d, "blob", keys, &value)?;
        let r = load::run(&redis_t, Op::Put, 1, d, "blob", keys, &value)?;
        report.kv(
            &format!("durable blob SET {label}"),
            "redis fsync always",
            r,
            a,
        );
        let a = load::run(&atlas_t, Op::Get, 1, d, "blob", keys, &value)?;
        let r = load::run(&redis_t, Op::Get, 1, d, "blob", keys, &value)?;
        report.kv(&format!("blob GET {label}"), "redis", r, a);
        if size == 1 << 20 {
            load::preload(&etcd_t, "blob", keys, &value)?;
            let a = load::run(&atlas_t, Op::Put, 1, d, "blob", keys, &value)?;
            let e = load::run(&etcd_t, Op::Put, 1, d, "blob", keys, &value)?;
            report.kv(&format!("durable blob SET {label}"), "etcd", e, a);
        }
    }
    Ok(())
}

/// Atlas's storage engine in process (`Engine::apply_write` and reads, one thread) vs
/// RocksDB's own `db_bench` with the same value size and settings (no compression,
/// statistics off as in Atlas by default): fillsync, fillrandom, readrandom, each the median
/// of `TRIALS` interleaved runs.
fn engine_workloads(_args: &Args, report: &mut Report) -> Result<(), String> {
    let (mut peer, mut atlas) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        atlas.push(atlas_engine_rates()?);
        peer.push(db_bench_rates()?);
    }
    let column = |rates: &[[f64; 3]], i: usize| rates.iter().map(|r| r[i]).collect::<Vec<_>>();
    for (i, workload) in [
        "engine fillsync 100 B (synced, 1 thread)",
        "engine fillrandom 100 B (1 thread)",
        "engine readrandom 100 B (1 thread)",
    ]
    .into_iter()
    .enumerate()
    {
        report.add_trials(
            workload,
            "ops/s",
            "db_bench",
            &column(&peer, i),
            &column(&atlas, i),
        );
    }
    Ok(())
}

/// Writes (synced and not) and random reads the engine benchmark does.
const ENGINE_KEYS: usize = 20_000;
const ENGINE_SYNCED_WRITES: usize = 5_000;

/// `db_bench`'s fillsync, fillrandom and readrandom rates (ops/s). fillsync runs on its own
/// with the engine's count of synced writes: Debian's db_bench writes `--num` of them (it
/// only labels the run `(<num/1000> ops)`), and its ops/sec is over all of them.
fn db_bench_rates() -> Result<[f64; 3], String> {
    let run = |benchmarks: &str, num: usize| -> Result<String, String> {
        let db = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("db_bench")
            .arg(format!("--db={}", db.path().display()))
            .arg(format!("--benchmarks={benchmarks}"))
            .args([
                "--value_size=100",
                "--key_size=16",
                "--threads=1",
                "--compression_type=none",
                "--statistics=0",
            ])
            .arg(format!("--num={num}"))
            .output()
            .map_err(|e| format!("db_bench: {e}"))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let rate = |text: &str, name: &str| -> Result<f64, String> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let i = words
                    .iter()
                    .position(|w| *w == "ops/sec;" || *w == "ops/sec")?;
                words.get(i - 1)?.parse().ok()
            })
            .ok_or(format!("db_bench printed no {name} rate: {text}"))
    };
    let synced = run("fillsync", ENGINE_SYNCED_WRITES)?;
    let rest = run("fillrandom,readrandom", ENGINE_KEYS)?;
    Ok([
        rate(&synced, "fillsync")?,
        rate(&rest, "fillrandom")?,
        rate(&rest, "readrandom")?,
    ])
}

/// The same three through Atlas's engine in this process.
fn atlas_engine_rates() -> Result<[f64; 3], String> {
    let n = ENGINE_KEYS;
    let engine = |durability: atlas::config::Durability| -> Result<(tempfile::TempDir, Arc<atlas::Engine>), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let store = atlas::storage::Store::open(dir.path(), durability).map_err(|e| e.to_string())?;
        let identity = atlas::command::NodeIdentity {
            id: 1,
            region: "bench".into(),
            host: "127.0.0.1".into(),
            port: 0,
            configured_fn: 0,
            configured_fz: 0,
        };
        let engine = atlas::Engine::new(Arc::new(store), identity, atlas::command::Backend::Standalone)
            .map_err(|e| e.to_string())?;
        Ok((dir, Arc::new(engine)))
    };
    let value = "v".repeat(100);
    let put = |engine: &atlas::Engine, key: usize| -> Result<(), String> {
        let line = format!("KEY PUT bench.{key:016} {value}");
        let command = atlas::protocol::parse_request(line.as_bytes())
            .map_err(|e| format!("{e:?}"))?
            .command;
        let write =
            atlas::command::Write::from_command(command, None, None, 0).ok_or("not a write")?;
        engine.apply_write(&write).map_err(|e| e.to_string())?;
        Ok(())
    };
    let scramble = |i: usize| i.wrapping_mul(2_654_435_761) % n;
    let (_d1, synced) = engine(atlas::config::Durability::Strict)?;
    let t = Instant::now();
    for i in 0..ENGINE_SYNCED_WRITES {
        put(&synced, scramble(i))?;
    }
    let fillsync = ENGINE_SYNCED_WRITES as f64 / t.elapsed().as_secs_f64();
    let (_d2, relaxed) = engine(atlas::config::Durability::Relaxed)?;
    let t = Instant::now();
    for i in 0..n {
        put(&relaxed, scramble(i))?;
    }
    let fillrandom = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        let line = format!("KEY GET bench.{:016}", scramble(i * 7 + 3));
        let command = atlas::protocol::parse_request(line.as_bytes())
            .map_err(|e| format!("{e:?}"))?
            .command;
        relaxed
            .read_now(None, &command)
            .map_err(|e| e.to_string())?;
    }
    let readrandom = n as f64 / t.elapsed().as_secs_f64();
    Ok([fillsync, fillrandom, readrandom])
}

/// Requests through Atlas's edge route vs through nginx to the same upstream (nginx serving
/// `ok`), both terminating TLS with the same certificate: wrk (HTTP/1.1 keep-alive), h2load
/// (HTTP/2), and new TLS connections per request (wrk with `Connection: close`).
fn edge_workloads(args: &Args, report: &mut Report) -> Result<(), String> {
    let upstream = peers::free_port();
    let route = format!("routes:\n  - path_prefix: /\n    upstreams: [\"127.0.0.1:{upstream}\"]\n");
    let atlas = AtlasNode::start(&args.atlas, "relaxed", &route)?;
    let tls = atlas.tls_dir();
    let proxy = peers::free_port();
    let _nginx = peers::nginx(
        upstream,
        proxy,
        &tls.join("node.crt"),
        &tls.join("node.key"),
    )?;
    let plain = peers::free_port();
    let _plain = peers::plain_pingora(
        &args.atlas,
        upstream,
        plain,
        &tls.join("node.crt"),
        &tls.join("node.key"),
    )?;
    let seconds = args.seconds.to_string();
    let atlas_url = format!("https://127.0.0.1:{}/bench", atlas.https_port);
    let nginx_url = format!("https://127.0.0.1:{proxy}/bench");
    let plain_url = format!("https://127.0.0.1:{plain}/bench");
    let wrk = |url: &str, extra: &[&str]| -> Result<(f64, f64), String> {
        let out = Command::new("wrk")
            .args(["-t2", "-c64", "-d", &format!("{seconds}s"), "--latency"])
            .args(extra)
            .arg(url)
            .output()
            .map_err(|e| format!("wrk: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let rps = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(format!("wrk output: {text}"))?;
        let p99 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .map(|v| parse_wrk_duration_ms(v.trim()))
            .unwrap_or(0.0);
        Ok((rps, p99))
    };
    let h2load = |url: &str| -> Result<f64, String> {
        let out = Command::new("h2load")
            .args(["-c16", "-m10", "-D", &seconds])
            .arg(url)
            .output()
            .map_err(|e| format!("h2load: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("finished in ")?;
                let rps = rest.split(',').nth(1)?.trim().strip_suffix(" req/s")?;
                rps.trim().parse().ok()
            })
            .ok_or(format!("h2load output: {text}"))
    };
    // Interleaved rounds (nginx, Atlas, Pingora's plain proxy, …): medians with their range.
    let urls = [&nginx_url, &atlas_url, &plain_url];
    let (mut keepalive, mut p99, mut h2) = (
        [vec![], vec![], vec![]],
        [vec![], vec![], vec![]],
        [vec![], vec![], vec![]],
    );
    let mut handshakes = [vec![], vec![]];
    let close = ["-H", "Connection: close"];
    for _ in 0..TRIALS {
        for (i, url) in urls.iter().enumerate() {
            let (rps, latency) = wrk(url, &[])?;
            keepalive[i].push(rps);
            p99[i].push(latency);
            h2[i].push(h2load(url)?);
            if i < 2 {
                handshakes[i].push(wrk(url, &close)?.0);
            }
        }
    }
    const KEEPALIVE: &str = "edge proxy HTTP/1.1 keep-alive, 64 conns";
    const H2: &str = "edge proxy HTTP/2, 16 conns x 10 streams";
    // nginx, then what Atlas's route adds over Pingora itself (same threads and upstream).
    for (peer, i) in [("nginx", 0), ("pingora plain proxy", 2)] {
        report.add_trials(KEEPALIVE, "req/s", peer, &keepalive[i], &keepalive[1]);
        report.add(KEEPALIVE, "p99 ms", peer, median(&p99[i]), median(&p99[1]));
        report.add_trials(H2, "req/s", peer, &h2[i], &h2[1]);
    }
    report.add_trials(
        "TLS handshakes (new connection per request)",
        "req/s",
        "nginx",
        &handshakes[0],
        &handshakes[1],
    );
    Ok(())
}

fn parse_wrk_duration_ms(text: &str) -> f64 {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.trim().parse::<f64>().map_or(0.0, |n| n * factor)
}

/// The physical floor of a durable write: fio's 4 KiB writes with an fsync each, against
/// Atlas's durable PUT with one client.
fn fsync_floor(args: &Args, report: &mut Report) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new("fio")
        .args([
            "--name=fsync",
            "--rw=write",
            "--bs=4k",
            "--size=8m",
            "--fsync=1",
            "--output-format=json",
        ])
        .arg(format!("--directory={}", dir.path().display()))
        .output()
        .map_err(|e| format!("fio: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("fio output: {e}"))?;
    let iops = json["jobs"][0]["write"]["iops"].as_f64().unwrap_or(0.0);
    let atlas = AtlasNode::start(&args.atlas, "strict", "")?;
    let value = vec![b'v'; 100];
    let stats = load::run(
        &Target::Atlas(atlas.socket.clone()),
        Op::Put,
        1,
        Duration::from_secs(args.seconds),
        "fsync",
        100,
        &value,
    )?;
    report.add(
        "fsync floor: durable write, 1 client",
        "ops/s",
        "fio 4k+fsync",
        iops,
        stats.ops_per_s,
    );
    Ok(())
}
