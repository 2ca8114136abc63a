//! How the adaptive 3 zones × 3 nodes cluster reacts over time, on the emulated WAN of
//! `cluster`: the workload's home zone moving (convergence), then failures of one node, two
//! nodes of a zone and a whole zone, each client operation recorded on a timeline.

use std::time::{Duration, Instant};

use super::cluster::{
    ATLAS_PORT, ETCD_PEER, Event, LOCAL_MS, PER_ZONE, ZONES, rtt_ms, run_clients, start_atlas,
};
use super::kv::Target;
use super::wan::Wan;
use super::{Args, Report};

/// 90% of a zone's writes on `home(zone, elapsed)`, the rest spread on the other tables.
fn home_writes(
    home: impl Fn(usize, Duration) -> usize + Send + Clone + 'static,
) -> impl Fn(usize, Duration, &mut dyn FnMut() -> u64) -> (usize, bool) + Send + Clone + 'static {
    move |zone, elapsed, random: &mut dyn FnMut() -> u64| {
        let own = home(zone, elapsed);
        let table = if random() % 100 < 90 {
            own
        } else {
            (own + 1 + (random() % (ZONES as u64 - 1)) as usize) % ZONES
        };
        (table, true)
    }
}

/// How the adaptive cluster reacts over time (all writes, 90% locality): the workload's home
/// zone moving, and failures of one node, two nodes of a zone, and a whole zone.
pub fn dynamics_workloads(args: &Args, report: &mut Report) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let _wan = Wan::build(ZONES * PER_ZONE, rtt_ms, &[ATLAS_PORT, ETCD_PEER], &me)?;
    dynamics(args, report)
}

fn dynamics(args: &Args, report: &mut Report) -> Result<(), String> {
    let settle = Duration::from_secs(8);
    // Convergence: zones 1 and 3 swap home tables at `settle`.
    let cluster = start_atlas(&args.atlas, 0, "adaptive")?;
    let targets: Vec<Target> = (0..ZONES)
        .map(|z| Target::Atlas(cluster.sockets[z * PER_ZONE].clone()))
        .collect();
    let start = Instant::now();
    let events = run_clients(
        &targets,
        settle * 3,
        start,
        home_writes(move |zone, t| match (zone, t >= settle) {
            (0, true) => 2,
            (2, true) => 0,
            (z, _) => z,
        }),
    );
    let shift_ms = settle.as_secs_f64() * 1e3;
    // The first 500 ms window in which ≥ 80% of z3's writes to home1 are local, and from
    // which on they are on average.
    let windows: Vec<(f64, f64)> = (0..((settle.as_secs_f64() * 2e3 / 500.0) as usize))
        .filter_map(|w| {
            let from = shift_ms + w as f64 * 500.0;
            let ops: Vec<&Event> = events
                .iter()
                .filter(|e| {
                    e.zone == 2 && e.table == 0 && e.at_ms >= from && e.at_ms < from + 500.0
                })
                .collect();
            if ops.is_empty() {
                return None;
            }
            let local = ops
                .iter()
                .filter(|e| e.ok && e.latency_ms < LOCAL_MS)
                .count();
            Some((from, local as f64 / ops.len() as f64))
        })
        .collect();
    println!(
        "  z3's writes to home1 served locally, per 500 ms after the move: {}",
        windows
            .iter()
            .map(|(_, share)| format!("{:.0}%", share * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let converged = windows
        .iter()
        .position(|(_, share)| *share >= 0.8)
        .filter(|&i| {
            // From then on, local on average (CPU contention on 2 cores makes single
            // windows dip).
            let rest = &windows[i..];
            rest.iter().map(|(_, share)| share).sum::<f64>() / rest.len() as f64 >= 0.8
        })
        .map(|i| (windows[i].0 - shift_ms) / 1e3);
    match converged {
        Some(s) => println!("  convergence after the home zone moved (z1 -> z3): {s:.1} s"),
        None => println!(
            "  convergence after the home zone moved: not within {:?}",
            settle * 2
        ),
    }
    report.add(
        "3x3 WAN fz=0 adaptive: home1 moves z1 -> z3",
        "s to local",
        "(none)",
        0.0,
        converged.unwrap_or(f64::NAN),
    );
    drop(cluster);

    // Failures, fz=1, one at a time with recovery in between: one node (home1's likely
    // owner), two nodes of zone 1 (more than fn), then all of zone 3 (fz).
    let mut cluster = start_atlas(&args.atlas, 1, "adaptive")?;
    let targets: Vec<Target> = (0..ZONES)
        .map(|z| Target::Atlas(cluster.sockets[z * PER_ZONE + 1].clone()))
        .collect();
    let start = Instant::now();
    let phase = Duration::from_secs(8);
    let phases = [
        "steady",
        "node 1 killed",
        "node 1 restarted",
        "nodes 1 and 3 of z1 killed",
        "nodes 1 and 3 restarted",
        "zone z3 killed",
    ];
    let timeline = {
        let targets = targets.clone();
        let total = phase * phases.len() as u32;
        std::thread::spawn(move || run_clients(&targets, total, start, home_writes(|z, _| z)))
    };
    std::thread::sleep(phase);
    cluster.kill(1);
    std::thread::sleep(phase);
    cluster.restart(&args.atlas, 1)?;
    std::thread::sleep(phase);
    cluster.kill(1);
    cluster.kill(3);
    std::thread::sleep(phase);
    cluster.restart(&args.atlas, 1)?;
    cluster.restart(&args.atlas, 3)?;
    std::thread::sleep(phase);
    for n in 7..=9 {
        cluster.kill(n);
    }
    let events = timeline
        .join()
        .map_err(|_| "timeline panicked".to_string())?;
    let span = phase.as_secs_f64() * 1e3;
    for (k, name) in phases.iter().enumerate() {
        for zone in 0..ZONES {
            let from = k as f64 * span;
            let ops: Vec<&Event> = events
                .iter()
                .filter(|e| e.zone == zone && e.at_ms >= from && e.at_ms < from + span)
                .collect();
            let ok = ops.iter().filter(|e| e.ok).count();
            let mut lat: Vec<f64> = ops.iter().filter(|e| e.ok).map(|e| e.latency_ms).collect();
            lat.sort_by(f64::total_cmp);
            let p50 = lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN);
            let worst = ops.iter().map(|e| e.latency_ms).fold(0.0, f64::max);
            println!(
                "  fz=1 {name}: z{} clients: {ok}/{} writes succeeded, p50 {p50:.1} ms, slowest {worst:.0} ms",
                zone + 1,
                ops.len()
            );
            report.add(
                &format!("3x3 WAN fz=1 {name}, z{} clients", zone + 1),
                "writes ok",
                "(issued)",
                ops.len() as f64,
                ok as f64,
            );
        }
    }
    Ok(())
}
