//! Closed-loop load: N client threads, each with its own connection, for a fixed time;
//! throughput and latency percentiles over every operation.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::kv::Target;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub ops_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub ops: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum Op {
    Put,
    Get,
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

pub fn stats(mut latencies: Vec<Duration>, elapsed: Duration) -> Stats {
    latencies.sort();
    Stats {
        ops_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        p999_ms: percentile(&latencies, 0.999),
        ops: latencies.len(),
    }
}

/// Writes `keys` keys of `value_size` bytes (so GETs find values).
pub fn preload(target: &Target, prefix: &str, keys: usize, value: &[u8]) -> Result<(), String> {
    let mut kv = target.connect()?;
    for k in 0..keys {
        kv.put(&format!("{prefix}.k{k}"), value)?;
    }
    Ok(())
}

/// Runs `clients` connections doing `op` on keys `<prefix>.k0..keys` for `duration`.
pub fn run(
    target: &Target,
    op: Op,
    clients: usize,
    duration: Duration,
    prefix: &str,
    keys: usize,
    value: &[u8],
) -> Result<Stats, String> {
    let deadline = Instant::now() + duration;
    drive(target, op, clients, prefix, keys, value, move || {
        Instant::now() < deadline
    })
}

/// Like `run` with `Op::Put`, but until `total` writes are done (shared by the clients).
pub fn run_count(
    target: &Target,
    clients: usize,
    total: u64,
    prefix: &str,
    keys: usize,
    value: &[u8],
) -> Result<Stats, String> {
    let left = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(total as i64));
    drive(target, Op::Put, clients, prefix, keys, value, move || {
        left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0
    })
}

/// The closed loop: each client does `op` while `go()` says so.
fn drive(
    target: &Target,
    op: Op,
    clients: usize,
    prefix: &str,
    keys: usize,
    value: &[u8],
    go: impl Fn() -> bool + Clone + Send + 'static,
) -> Result<Stats, String> {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let target = target.clone();
            let value = value.to_vec();
            let prefix = prefix.to_string();
            let go = go.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut kv = target.connect()?;
                let mut latencies = Vec::new();
                let mut i = c * 7919;
                while go() {
                    i = i.wrapping_add(1);
                    let key = format!("{prefix}.k{}", i % keys.max(1));
                    let t = Instant::now();
                    match op {
                        Op::Put => kv.put(&key, &value)?,
                        Op::Get => {
                            kv.get(&key)?;
                        }
                    }
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| "client thread panicked".to_string())??,
        );
    }
    Ok(stats(all, start.elapsed()))
}
