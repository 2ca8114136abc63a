//! Load for long-history tests: many writers overwriting a fixed set of keys, and what a
//! process uses (resident memory), read from `/proc`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use atlas::client::{Client, is_error};

/// The value writer `thread` puts in round `round` (padded to `size` bytes).
pub fn value(thread: usize, round: u64, size: usize) -> String {
    let head = format!("t{thread}r{round}-");
    let pad = size.saturating_sub(head.len());
    format!("{head}{}", "x".repeat(pad))
}

/// What a run of `overwrite` did.
#[derive(Debug, Clone)]
pub struct Written {
    pub ops: u64,
    pub failed: u64,
    pub seconds: f64,
    /// For every key, the value of its last acknowledged write.
    pub last: Vec<(String, String)>,
}

impl Written {
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

/// Overwrites `keys` keys of table `table` with values of `size` bytes through `socket`,
/// `threads` writers at once (writer `t` owns the keys `k` with `k % threads == t`, so each
/// key's last value is known), until `total` writes are acknowledged or `deadline` passes.
/// A write that fails is counted and retried with its next value.
pub fn overwrite(
    socket: &Path,
    table: &str,
    keys: usize,
    size: usize,
    threads: usize,
    total: u64,
    deadline: Duration,
) -> Written {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let socket: PathBuf = socket.to_path_buf();
            let table = table.to_string();
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            thread::spawn(move || {
                let mine: Vec<usize> = (0..keys).filter(|k| k % threads == t).collect();
                let mut last: Vec<(String, String)> = Vec::new();
                let Ok(mut client) = Client::connect(&socket, "load") else {
                    return last;
                };
                let mut values: Vec<Option<String>> = vec![None; mine.len()];
                let mut round = 0u64;
                'run: loop {
                    for (i, k) in mine.iter().enumerate() {
                        if stop.load(Ordering::Relaxed)
                            || done.load(Ordering::Relaxed) >= total
                            || started.elapsed() > deadline
                        {
                            break 'run;
                        }
                        let v = value(t, round, size);
                        let line = format!("KEY PUT {table}.k{k} {v}");
                        match client.request(line.as_bytes(), None) {
                            Ok(frames) if !is_error(&frames) => {
                                done.fetch_add(1, Ordering::Relaxed);
                                values[i] = Some(v);
                            }
                            Ok(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                match Client::connect(&socket, "load") {
                                    Ok(c) => client = c,
                                    Err(_) => thread::sleep(Duration::from_millis(100)),
                                }
                            }
                        }
                    }
                    round += 1;
                }
                for (i, k) in mine.iter().enumerate() {
                    if let Some(v) = values[i].take() {
                        last.push((format!("{}.K{k}", table.to_ascii_uppercase()), v));
                    }
                }
                last
            })
        })
        .collect();
    let mut last = Vec::new();
    for h in handles {
        last.extend(h.join().unwrap_or_default());
    }
    stop.store(true, Ordering::Relaxed);
    Written {
        ops: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        last,
    }
}

/// Resident memory of process `pid`, in MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes under `dir`, recursively.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
