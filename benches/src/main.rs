//! `atlas-bench`: drives N concurrent socket clients with a PUT/GET mix and prints ops/s and
//! latency percentiles. `--spawn BIN` starts a throwaway node (temp data dir) to measure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atlas::client::{Client, is_error};

struct Args {
    socket: Option<PathBuf>,
    spawn: Option<PathBuf>,
    clients: Vec<usize>,
    ops: usize,
    put_percent: u32,
    value_size: usize,
    durability: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        socket: None,
        spawn: None,
        clients: vec![1, 16, 64],
        ops: 2000,
        put_percent: 50,
        value_size: 100,
        durability: "strict".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => args.socket = Some(value()?.into()),
            "--spawn" => args.spawn = Some(value()?.into()),
            "--clients" => {
                args.clients = value()?
                    .split(',')
                    .map(|n| {
                        n.parse()
                            .map_err(|_| "--clients: numbers, e.g. 1,16,64".to_string())
                    })
                    .collect::<Result<_, _>>()?
            }
            "--ops" => args.ops = value()?.parse().map_err(|_| "--ops: a number")?,
            "--put-percent" => {
                args.put_percent = value()?.parse().map_err(|_| "--put-percent: 0..100")?
            }
            "--value-size" => {
                args.value_size = value()?.parse().map_err(|_| "--value-size: bytes")?
            }
            "--durability" => args.durability = value()?,
            "-h" | "--help" => {
                println!(
                    "atlas-bench (--socket PATH | --spawn ATLAS_BIN) [--clients 1,16,64] [--ops N per client] \
                     [--put-percent 50] [--value-size 100] [--durability strict|relaxed]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.socket.is_none() && args.spawn.is_none() {
        return Err("give --socket PATH or --spawn ATLAS_BIN".into());
    }
    Ok(args)
}

/// A node started for the run, stopped on drop.
struct SpawnedNode {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path, durability: &str) -> Result<(SpawnedNode, PathBuf), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let socket = dir.path().join("atlas.sock");
    let conf = dir.path().join("atlas.yaml");
    let yaml = format!(
        "version: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\natlas:\n  data_dir: {}\n  socket: {}\n  durability: {durability}\n",
        dir.path().join("data").display(),
        socket.display()
    );
    std::fs::write(&conf, yaml).map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        .args(["serve", "-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let node = SpawnedNode { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while Client::connect(&socket, "bench").is_err() {
        if Instant::now() > deadline {
            return Err("node did not start within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((node, socket))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn run_clients(socket: &Path, clients: usize, args: &Args) -> Result<(f64, Vec<Duration>), String> {
    let value = "v".repeat(args.value_size);
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let socket = socket.to_path_buf();
            let value = value.clone();
            let (ops, put_percent) = (args.ops, args.put_percent);
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut client = Client::connect(&socket, "bench").map_err(|e| e.to_string())?;
                let mut latencies = Vec::with_capacity(ops);
                for i in 0..ops {
                    let key = format!("bench.c{c}k{}", i % 1000);
                    let is_put = (i as u32 * 7919 % 100) < put_percent;
                    let line = if is_put {
                        format!("KEY PUT {key} {value}")
                    } else {
                        format!("KEY GET {key}")
                    };
                    let t = Instant::now();
                    let frames = client
                        .request(line.as_bytes(), None)
                        .map_err(|e| e.to_string())?;
                    latencies.push(t.elapsed());
                    if is_error(&frames) {
                        return Err(format!("{line}: {frames:?}"));
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in handles {
        all.extend(
            handle
                .join()
                .map_err(|_| "client thread panicked".to_string())??,
        );
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    Ok((all.len() as f64 / elapsed, all))
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("atlas-bench: {e}");
            std::process::exit(2);
        }
    };
    let (_node, socket) = match (&args.socket, &args.spawn) {
        (Some(socket), _) => (None, socket.clone()),
        (None, Some(bin)) => match spawn(bin, &args.durability) {
            Ok((node, socket)) => (Some(node), socket),
            Err(e) => {
                eprintln!("atlas-bench: {e}");
                std::process::exit(1);
            }
        },
        (None, None) => unreachable!("checked in parse_args"),
    };
    println!(
        "workload: {}% PUT, {}-byte values, {} ops per client, durability {}",
        args.put_percent, args.value_size, args.ops, args.durability
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10}",
        "clients", "ops/s", "p50 ms", "p99 ms"
    );
    for &clients in &args.clients {
        match run_clients(&socket, clients, &args) {
            Ok((rate, latencies)) => println!(
                "{clients:>8} {rate:>12.0} {:>10.3} {:>10.3}",
                percentile(&latencies, 0.50).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3
            ),
            Err(e) => {
                eprintln!("atlas-bench: {clients} clients: {e}");
                std::process::exit(1);
            }
        }
    }
}
