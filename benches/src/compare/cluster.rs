//! The 3 zones × 3 nodes cluster behind emulated WAN delays (11 / 49 / 60 ms between zones,
//! 0.2 ms inside one): YCSB-like mixes at several localities, Atlas's `adaptive` migration
//! against its `static` and `immediate` baselines and a 3-member etcd (one member per zone).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::kv::Target;
use super::load::percentile;
use super::wan::{self, Wan};
use super::{Args, Report};

pub(super) const ZONES: usize = 3;
pub(super) const PER_ZONE: usize = 3;
pub(super) const ATLAS_PORT: u16 = 4444;
const ETCD_CLIENT: u16 = 2379;
pub(super) const ETCD_PEER: u16 = 2380;
/// An operation faster than this was served inside its zone (the nearest other zone is 11 ms).
pub(super) const LOCAL_MS: f64 = 5.0;
/// Each client issues at most one operation per this interval (a rate-capped closed loop:
/// a slow operation delays the next one, without a backlog), so zones served locally do not
/// outnumber a slow zone by orders of magnitude in the access counts that drive migration,
/// as an uncapped closed loop would.
const CLIENT_INTERVAL: Duration = Duration::from_millis(20);

fn zone_of(node: usize) -> usize {
    (node - 1) / PER_ZONE
}

pub(super) fn rtt_ms(a: usize, b: usize) -> f64 {
    const BETWEEN: [[f64; ZONES]; ZONES] =
        [[0.2, 11.0, 49.0], [11.0, 0.2, 60.0], [49.0, 60.0, 0.2]];
    BETWEEN[zone_of(a)][zone_of(b)]
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts (or restarts) node `n` from its directory, inside its namespace.
fn spawn_node(bin: &Path, n: usize, home: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.join("log"))
        .map_err(|e| e.to_string())?;
    Wan::command(n, bin)
        .args(["serve", "-c"])
        .arg(home.join("atlas.yaml"))
        .env("ATLAS_ADMIN_PASSWORD", "bench-admin-password")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("atlas in namespace: {e}"))
}

pub(super) struct AtlasCluster {
    procs: Procs,
    pub(super) sockets: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl AtlasCluster {
    /// Kills node `n` (1-based) with SIGKILL and reaps it.
    pub(super) fn kill(&mut self, n: usize) {
        let child = &mut self.procs.0[n - 1];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts node `n` again on its own directory (same config, same data).
    pub(super) fn restart(&mut self, bin: &Path, n: usize) -> Result<(), String> {
        let home = self.dir.path().join(format!("n{n}"));
        self.procs.0[n - 1] = spawn_node(bin, n, &home)?;
        Ok(())
    }
}

pub(super) fn start_atlas(bin: &Path, fz: u32, mode: &str) -> Result<AtlasCluster, String> {
    let dir = tempfile::Builder::new()
        .prefix("atlas-wan-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut procs = Procs(Vec::new());
    let mut sockets = Vec::new();
    let founder_ca = dir.path().join("n1/data/tls/ca.crt");
    for n in 1..=ZONES * PER_ZONE {
        let home = dir.path().join(format!("n{n}"));
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        let socket = home.join("atlas.sock");
        let mut yaml = format!(
            "version: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
             atlas:\n  data_dir: {data}\n  socket: {sock}\n  listen: {real}:{ATLAS_PORT}\n  \
             advertise: {adv}:{ATLAS_PORT}\n  region: z{zone}\n  credentials: bench-cluster-secret\n  \
             durability: strict\n  fn: 1\n  fz: {fz}\n  migration: {mode}\n",
            data = home.join("data").display(),
            sock = socket.display(),
            real = wan::real_ip(n),
            adv = wan::advertised_ip(n),
            zone = zone_of(n) + 1,
        );
        if n > 1 {
            yaml.push_str(&format!(
                "  connect: https://{}:{ATLAS_PORT}\n  peer_ca: {}\n",
                wan::advertised_ip(1),
                founder_ca.display()
            ));
        }
        let conf = home.join("atlas.yaml");
        std::fs::write(&conf, yaml).map_err(|e| e.to_string())?;
        procs.0.push(spawn_node(bin, n, &home)?);
        let deadline = Instant::now() + Duration::from_secs(90);
        while atlas::client::Client::connect(&socket, "bench").is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "node {n} did not start: {}",
                    std::fs::read_to_string(home.join("log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sockets.push(socket);
    }
    // Every node ACTIVE in node 1's view.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let lines = node_list(&sockets[0])?;
        if lines.iter().filter(|l| l.contains("status=ACTIVE")).count() == ZONES * PER_ZONE {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("cluster did not become ACTIVE: {lines:?}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(AtlasCluster {
        procs,
        sockets,
        dir,
    })
}

pub(super) fn node_list(socket: &Path) -> Result<Vec<String>, String> {
    let mut client = atlas::client::Client::connect(socket, "bench").map_err(|e| e.to_string())?;
    let frames = client
        .request(b"NODE LIST", None)
        .map_err(|e| e.to_string())?;
    Ok(frames
        .into_iter()
        .filter_map(|f| match f {
            atlas::client::Frame::Line(l) => Some(String::from_utf8_lossy(&l).into_owned()),
            _ => None,
        })
        .collect())
}

/// The RTTs the emulation produces, as each zone's first node measures them (its health
/// pings: an authenticated HTTPS round trip through the relays). Returns, per zone, the
/// smallest RTT from its first node to another node of the zone.
fn print_rtts(cluster: &AtlasCluster) -> Result<Vec<f64>, String> {
    let mut intra = Vec::new();
    println!("measured RTT (ms) from the first node of each zone to every node (health pings):");
    std::thread::sleep(Duration::from_secs(3));
    for z in 0..ZONES {
        let lines = node_list(&cluster.sockets[z * PER_ZONE])?;
        let rtts: Vec<String> = lines
            .iter()
            .filter_map(|l| {
                let id = l.split_whitespace().find_map(|w| w.strip_prefix("id="))?;
                let rtt = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("rtt_ms="))?;
                Some(format!("{id}:{rtt}"))
            })
            .collect();
        println!(
            "  node {} (z{}): {}",
            z * PER_ZONE + 1,
            z + 1,
            rtts.join(" ")
        );
        let own = z * PER_ZONE + 1;
        let nearest = rtts
            .iter()
            .filter_map(|r| {
                let (id, ms) = r.split_once(':')?;
                let id: usize = id.parse().ok()?;
                (id != own && zone_of(id) == z).then(|| ms.parse::<f64>().ok())?
            })
            .fold(f64::INFINITY, f64::min);
        intra.push(if nearest.is_finite() { nearest } else { 0.2 });
    }
    Ok(intra)
}

struct Etcd {
    _procs: Procs,
    _dir: tempfile::TempDir,
    /// Client port address of the member in each zone (reached from outside the namespaces).
    members: Vec<String>,
}

fn start_etcd() -> Result<Etcd, String> {
    let dir = tempfile::Builder::new()
        .prefix("etcd-wan-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let member_nodes: Vec<usize> = (0..ZONES).map(|z| z * PER_ZONE + 1).collect();
    let initial: Vec<String> = member_nodes
        .iter()
        .map(|n| format!("m{n}=http://{}:{ETCD_PEER}", wan::advertised_ip(*n)))
        .collect();
    let mut procs = Procs(Vec::new());
    for &n in &member_nodes {
        let log = std::fs::File::create(dir.path().join(format!("m{n}.log")))
            .map_err(|e| e.to_string())?;
        let child = Wan::command(n, Path::new("etcd"))
            .args(["--name", &format!("m{n}"), "--data-dir"])
            .arg(dir.path().join(format!("m{n}")))
            .args([
                "--listen-client-urls",
                &format!("http://{}:{ETCD_CLIENT}", wan::real_ip(n)),
                "--advertise-client-urls",
                &format!("http://{}:{ETCD_CLIENT}", wan::real_ip(n)),
                "--listen-peer-urls",
                &format!("http://{}:{ETCD_PEER}", wan::real_ip(n)),
                "--initial-advertise-peer-urls",
                &format!("http://{}:{ETCD_PEER}", wan::advertised_ip(n)),
                "--initial-cluster",
                &initial.join(","),
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        procs.0.push(child);
    }
    let members: Vec<String> = member_nodes.iter().map(|n| wan::real_ip(*n)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for m in &members {
        loop {
            let ok = Target::EtcdAt(m.clone(), ETCD_CLIENT)
                .connect()
                .and_then(|mut kv| kv.put("ready.k", b"1"))
                .is_ok();
            if ok {
                break;
            }
            if Instant::now() > deadline {
                return Err("etcd did not elect a leader".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(Etcd {
        _procs: procs,
        _dir: dir,
        members,
    })
}

/// A YCSB-like mix: the share of writes.
#[derive(Clone, Copy)]
struct Mix {
    name: &'static str,
    write_percent: u64,
}

const MIXES: [Mix; 4] = [
    Mix {
        name: "W",
        write_percent: 100,
    },
    Mix {
        name: "A",
        write_percent: 50,
    },
    Mix {
        name: "B",
        write_percent: 5,
    },
    Mix {
        name: "C",
        write_percent: 0,
    },
];

struct ZoneResult {
    ops: usize,
    p50: f64,
    p99: f64,
    local_share: f64,
    /// Writes to the zone's own table: p50 latency.
    local_write_p50: f64,
    /// Writes to other zones' tables: p50 of the latency beyond the RTT to the table's zone.
    remote_write_over_rtt_p50: f64,
}

/// One measured pattern: overall and per-zone figures.
struct MixResult {
    p50: f64,
    p99: f64,
    zones: Vec<ZoneResult>,
}

/// Two clients per zone for `duration`, each on its zone's `targets[zone]`; with
/// `locality`% of operations on the zone's own table, the rest spread on the others.
fn run_mix(
    targets: &[Target],
    mix: Mix,
    locality: u64,
    duration: Duration,
) -> Result<MixResult, String> {
    let events = run_clients(
        targets,
        duration,
        Instant::now(),
        move |zone, _, random: &mut dyn FnMut() -> u64| {
            let table = if random() % 100 < locality {
                zone
            } else {
                (zone + 1 + (random() % (ZONES as u64 - 1)) as usize) % ZONES
            };
            (table, random() % 100 < mix.write_percent)
        },
    );
    let failed = events.iter().filter(|e| !e.ok).count();
    if failed > 0 {
        return Err(format!("{failed} operations failed"));
    }
    let ms = |e: &Event| Duration::from_secs_f64(e.latency_ms / 1e3);
    let mut all: Vec<Duration> = events.iter().map(ms).collect();
    all.sort();
    let zones = (0..ZONES)
        .map(|zone| {
            let mut l: Vec<Duration> = events.iter().filter(|e| e.zone == zone).map(ms).collect();
            l.sort();
            let local = l
                .iter()
                .filter(|d| d.as_secs_f64() * 1e3 < LOCAL_MS)
                .count();
            let writes = |own: bool| -> Vec<Duration> {
                let mut v: Vec<Duration> = events
                    .iter()
                    .filter(|e| e.zone == zone && e.write && (e.table == zone) == own)
                    .map(|e| {
                        let over = if own {
                            0.0
                        } else {
                            rtt_ms(zone * PER_ZONE + 1, e.table * PER_ZONE + 1)
                        };
                        Duration::from_secs_f64((e.latency_ms - over).max(0.0) / 1e3)
                    })
                    .collect();
                v.sort();
                v
            };
            ZoneResult {
                ops: l.len(),
                p50: percentile(&l, 0.5),
                p99: percentile(&l, 0.99),
                local_share: if l.is_empty() {
                    0.0
                } else {
                    local as f64 / l.len() as f64
                },
                local_write_p50: percentile(&writes(true), 0.5),
                remote_write_over_rtt_p50: percentile(&writes(false), 0.5),
            }
        })
        .collect();
    Ok(MixResult {
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        zones,
    })
}

fn describe(results: &[ZoneResult]) -> String {
    results
        .iter()
        .enumerate()
        .map(|(z, r)| {
            format!(
                "z{}: {} ops p50 {:.1} p99 {:.1} ms local {:.0}%",
                z + 1,
                r.ops,
                r.p50,
                r.p99,
                r.local_share * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn local_share(results: &[ZoneResult]) -> f64 {
    let ops: usize = results.iter().map(|r| r.ops).sum();
    let local: f64 = results.iter().map(|r| r.local_share * r.ops as f64).sum();
    if ops == 0 {
        0.0
    } else {
        local / ops as f64 * 100.0
    }
}

/// One operation of a timeline run.
pub(super) struct Event {
    pub(super) at_ms: f64,
    pub(super) zone: usize,
    pub(super) table: usize,
    pub(super) write: bool,
    pub(super) latency_ms: f64,
    pub(super) ok: bool,
}

/// Two rate-capped clients per zone for `duration`, each on its zone's `targets[zone]`;
/// `pick(zone, elapsed since start, random)` chooses each operation's table and whether it
/// writes (100 bytes) or reads. Every operation is recorded with its start time; a failed
/// one (node gone, timeout) too, and its client reconnects.
pub(super) fn run_clients<P>(
    targets: &[Target],
    duration: Duration,
    start: Instant,
    pick: P,
) -> Vec<Event>
where
    P: Fn(usize, Duration, &mut dyn FnMut() -> u64) -> (usize, bool) + Send + Clone + 'static,
{
    let deadline = Instant::now() + duration;
    let mut handles = Vec::new();
    for (zone, target) in targets.iter().enumerate() {
        for c in 0..2u64 {
            let target = target.clone();
            let pick = pick.clone();
            handles.push(std::thread::spawn(move || {
                let mut events = Vec::new();
                let mut kv = target.connect().ok();
                let mut state = (zone as u64 + 7) * 0x9E37_79B9 + c;
                let mut random = move || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                let value = vec![b'v'; 100];
                let mut due = Instant::now();
                while due < deadline {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let issued = Instant::now();
                    let (table, write) = pick(zone, issued - start, &mut random);
                    let key = format!("home{}.k{}", table + 1, random() % 100);
                    if kv.is_none() {
                        kv = target.connect().ok();
                    }
                    let ok = match kv.as_mut() {
                        Some(kv) if write => kv.put(&key, &value).is_ok(),
                        Some(kv) => kv.get(&key).is_ok(),
                        None => false,
                    };
                    if !ok {
                        kv = None;
                    }
                    events.push(Event {
                        at_ms: (issued - start).as_secs_f64() * 1e3,
                        zone,
                        table,
                        write,
                        latency_ms: issued.elapsed().as_secs_f64() * 1e3,
                        ok,
                    });
                    due = (due + CLIENT_INTERVAL).max(Instant::now());
                }
                events
            }));
        }
    }
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect()
}

/// One measured pattern of one system, for the report and the plot.
struct Measured {
    system: String,
    fz: Option<u32>,
    mix: &'static str,
    locality: u64,
    result: MixResult,
}

impl Measured {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "system": self.system,
            "fz": self.fz,
            "mix": self.mix,
            "locality_percent": self.locality,
            "p50_ms": self.result.p50,
            "p99_ms": self.result.p99,
            "local_percent": local_share(&self.result.zones),
            "zones": self.result.zones.iter().enumerate().map(|(z, r)| serde_json::json!({
                "zone": format!("z{}", z + 1),
                "ops": r.ops,
                "p50_ms": r.p50,
                "p99_ms": r.p99,
                "local_percent": r.local_share * 100.0,
                "local_write_p50_ms": r.local_write_p50,
                "remote_write_over_rtt_p50_ms": r.remote_write_over_rtt_p50,
            })).collect::<Vec<_>>(),
        })
    }
}

pub fn cluster_workloads(args: &Args, report: &mut Report) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let wan = Wan::build(ZONES * PER_ZONE, rtt_ms, &[ATLAS_PORT, ETCD_PEER], &me)?;
    let measure = Duration::from_secs(args.seconds.max(3) * 2);
    let warm = Duration::from_secs(args.seconds.max(4));
    let localities = [0u64, 70, 90];
    let mut measured: Vec<Measured> = Vec::new();
    let mut intra_rtt: Vec<f64> = vec![0.2; ZONES];
    // Baseline: a 3-member etcd, clients on their zone's member.
    let etcd = start_etcd()?;
    let etcd_targets: Vec<Target> = etcd
        .members
        .iter()
        .map(|m| Target::EtcdAt(m.clone(), ETCD_CLIENT))
        .collect();
    for mix in MIXES {
        for &loc in &localities {
            let result = run_mix(&etcd_targets, mix, loc, measure)?;
            println!(
                "  etcd YCSB-{} {loc}%: {}",
                mix.name,
                describe(&result.zones)
            );
            measured.push(Measured {
                system: "etcd 3 members".into(),
                fz: None,
                mix: mix.name,
                locality: loc,
                result,
            });
        }
    }
    drop(etcd);
    for fz in [0u32, 1] {
        for mode in ["adaptive", "static", "immediate"] {
            let cluster = start_atlas(&args.atlas, fz, mode)?;
            if fz == 0 && mode == "adaptive" {
                intra_rtt = print_rtts(&cluster)?;
            }
            let targets: Vec<Target> = (0..ZONES)
                .map(|z| Target::Atlas(cluster.sockets[z * PER_ZONE].clone()))
                .collect();
            for mix in MIXES {
                for &loc in &localities {
                    // Let ownership settle on this pattern, then measure.
                    run_mix(&targets, mix, loc, warm)?;
                    let result = run_mix(&targets, mix, loc, measure)?;
                    println!(
                        "  atlas fz={fz} {mode} YCSB-{} {loc}%: {}",
                        mix.name,
                        describe(&result.zones)
                    );
                    measured.push(Measured {
                        system: format!("atlas {mode}"),
                        fz: Some(fz),
                        mix: mix.name,
                        locality: loc,
                        result,
                    });
                }
            }
        }
    }
    drop(wan);
    // The targets for writes at fz=0, 90 % locality: a local write within the
    // intra-zone RTT + one fsync + 0.3 ms, a remote one within one RTT to the owner + 2 ms.
    // The intra-zone RTT is the one the nodes measure (an HTTPS round trip through the
    // relays, more than the emulated 0.2 ms).
    let fsync = fsync_ms();
    if let Some(w) = measured.iter().find(|m| {
        m.system == "atlas adaptive" && m.fz == Some(0) && m.mix == "W" && m.locality == 90
    }) {
        for (zone, r) in w.result.zones.iter().enumerate() {
            report.add(
                &format!("3x3 WAN fz=0 write-only 90%: z{} local write p50", zone + 1),
                "ms",
                "target",
                intra_rtt.get(zone).copied().unwrap_or(0.2) + fsync + 0.3,
                r.local_write_p50,
            );
            report.add(
                &format!(
                    "3x3 WAN fz=0 write-only 90%: z{} remote write p50 - RTT",
                    zone + 1
                ),
                "ms",
                "target",
                2.0,
                r.remote_write_over_rtt_p50,
            );
        }
    }
    // Rows: Atlas adaptive against each baseline, per fz, mix and locality.
    for fz in [0u32, 1] {
        for adaptive in measured
            .iter()
            .filter(|m| m.system == "atlas adaptive" && m.fz == Some(fz))
        {
            let w = format!(
                "3x3 WAN fz={fz} YCSB-{} {}% locality",
                adaptive.mix, adaptive.locality
            );
            for peer in measured.iter().filter(|m| {
                m.mix == adaptive.mix
                    && m.locality == adaptive.locality
                    && (m.fz.is_none() || (m.fz == Some(fz) && m.system != "atlas adaptive"))
            }) {
                report.add(
                    &w,
                    "p50 ms",
                    &peer.system,
                    peer.result.p50,
                    adaptive.result.p50,
                );
                report.add(
                    &w,
                    "% local",
                    &peer.system,
                    local_share(&peer.result.zones),
                    local_share(&adaptive.result.zones),
                );
            }
        }
    }
    report.extra.push(serde_json::json!({
        "cluster": {
            "rtt_ms_between_zones": {"z1-z2": 11, "z1-z3": 49, "z2-z3": 60, "inside": 0.2},
            "client_interval_ms": CLIENT_INTERVAL.as_millis() as u64,
            "local_threshold_ms": LOCAL_MS,
            "measured": measured.iter().map(Measured::json).collect::<Vec<_>>(),
        }
    }));
    let svg = plot(&measured);
    let _ = std::fs::create_dir_all(&args.out);
    let path = args.out.join("cluster-latency-by-zone.svg");
    match std::fs::write(&path, svg) {
        Ok(()) => println!("plot: {}", path.display()),
        Err(e) => eprintln!("atlas-compare: cannot write {}: {e}", path.display()),
    }
    Ok(())
}

/// Median time of a 4 KiB write + fsync in a temporary directory (the floor of a durable
/// write on this machine).
fn fsync_ms() -> f64 {
    use std::io::Write;
    let Ok(dir) = tempfile::tempdir() else {
        return 0.0;
    };
    let Ok(mut file) = std::fs::File::create(dir.path().join("f")) else {
        return 0.0;
    };
    let mut times: Vec<Duration> = (0..200)
        .filter_map(|_| {
            let t = Instant::now();
            file.write_all(&[0u8; 4096]).ok()?;
            file.sync_data().ok()?;
            Some(t.elapsed())
        })
        .collect();
    times.sort();
    percentile(&times, 0.5)
}

/// A bar chart: p50 latency by zone, YCSB-B at 90 % locality, for each system (fz=0 for
/// Atlas), on a log scale.
fn plot(measured: &[Measured]) -> String {
    let picked: Vec<&Measured> = measured
        .iter()
        .filter(|m| m.mix == "B" && m.locality == 90 && m.fz != Some(1))
        .collect();
    let (width, height, left, bottom) = (760.0, 360.0, 70.0, 300.0);
    let colors = ["#4e79a7", "#f28e2b", "#59a14f"];
    let y = |ms: f64| bottom - (ms.max(0.05).log10() + 1.5) / 4.0 * 260.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">p50 latency by client zone, YCSB-B, 90% \
         locality, 3 zones x 3 nodes (11/49/60 ms)</text>\n"
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let yy = y(ms);
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{ms} ms</text>\n",
            width - 10.0,
            left - 6.0,
            yy + 4.0
        ));
    }
    let group = (width - left - 20.0) / picked.len().max(1) as f64;
    for (i, m) in picked.iter().enumerate() {
        let x0 = left + group * i as f64 + 10.0;
        for (z, r) in m.result.zones.iter().enumerate() {
            let x = x0 + z as f64 * (group - 20.0) / 3.0;
            let top = y(r.p50);
            svg.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
                (group - 20.0) / 3.0 - 4.0,
                (bottom - top).max(0.0),
                colors[z % 3]
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x0 + (group - 20.0) / 2.0,
            bottom + 18.0,
            m.system
        ));
    }
    for (z, color) in colors.iter().enumerate() {
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"330\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"341\">clients in z{}</text>\n",
            left + z as f64 * 130.0,
            left + z as f64 * 130.0 + 16.0,
            z + 1
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
