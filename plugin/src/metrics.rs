//! Prometheus metrics, registered once in the default registry (which `pingora-prometheus`
//! serves on `metrics_listen`, and `/metrics` serves on the TLS listener).
//!
//! Names follow Prometheus conventions: `atlas_` prefix, `_total` counters, base units
//! (`_seconds`, `_bytes`).

use std::sync::OnceLock;
use std::time::Duration;

use atlas::session::Observer;
use atlas::storage::StorageStats;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    pub socket_commands: IntCounterVec,
    pub socket_command_seconds: HistogramVec,
    pub connections_open: IntGaugeVec,
    pub bytes_received: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    pub errors: IntCounterVec,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_ejections: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub acme_orders: IntCounterVec,
    pub acme_certificate_expiry: IntGauge,
    pub rocksdb_live_data_bytes: IntGauge,
    pub rocksdb_sst_files_bytes: IntGauge,
    pub rocksdb_memtable_bytes: IntGauge,
    pub rocksdb_pending_compaction_bytes: IntGauge,
    pub rocksdb_block_cache_hit_ratio: Gauge,
    pub consensus_ballots: IntCounter,
    pub consensus_steals: IntCounter,
    pub consensus_forwards: IntCounter,
    pub consensus_commits: IntCounter,
    pub consensus_quorum_failures: IntCounter,
    pub consensus_messages_sent: IntCounter,
    pub consensus_messages_received: IntCounter,
    pub consensus_messages_dropped: IntCounter,
    pub consensus_messages_refused: IntCounter,
    pub consensus_snapshots_installed: IntCounter,
    pub consensus_snapshots_failed: IntCounter,
    pub consensus_retained_log_bytes: IntGauge,
    pub consensus_owned_tables: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let metric = HistogramVec::new(opts, labels).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

impl Metrics {
    fn register(registry: &Registry) -> Metrics {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "atlas_build_info",
                "Build of the running atlas (value is always 1).",
            ),
            &["version"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(process));
        }
        let connections_open = IntGaugeVec::new(
            Opts::new(
                "atlas_connections_open",
                "Client connections open now, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(connections_open.clone()))
            .expect("metric registered once");
        let hit_ratio = Gauge::new(
            "atlas_rocksdb_block_cache_hit_ratio",
            "Block-cache hits / (hits + misses) since start.",
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(hit_ratio.clone()))
            .expect("metric registered once");
        Metrics {
            socket_commands: counter_vec(
                registry,
                "atlas_socket_commands_total",
                "Socket protocol commands executed, by command and result.",
                &["command", "result"],
            ),
            socket_command_seconds: histogram_vec(
                registry,
                "atlas_socket_command_duration_seconds",
                "Time to execute a socket protocol command.",
                &["command"],
            ),
            connections_open,
            bytes_received: counter_vec(
                registry,
                "atlas_received_bytes_total",
                "Bytes received from clients, by listener.",
                &["listener"],
            ),
            bytes_sent: counter_vec(
                registry,
                "atlas_sent_bytes_total",
                "Bytes sent to clients, by listener.",
                &["listener"],
            ),
            errors: counter_vec(
                registry,
                "atlas_errors_total",
                "Requests that failed or were refused, by kind.",
                &["kind"],
            ),
            http_requests: counter_vec(
                registry,
                "atlas_http_requests_total",
                "HTTP requests served by Atlas, by route and status code.",
                &["route", "code"],
            ),
            http_request_seconds: histogram_vec(
                registry,
                "atlas_http_request_duration_seconds",
                "Time to answer an HTTP request served by Atlas.",
                &["route"],
            ),
            upstream_requests: counter_vec(
                registry,
                "atlas_upstream_requests_total",
                "Requests the edge sent to an upstream, by route (host and path prefix), upstream \
                 and result (ok, error: a 502/503/504 or a failure after connecting, \
                 connect_failed).",
                &["route", "upstream", "result"],
            ),
            upstream_ejections: counter_vec(
                registry,
                "atlas_upstream_ejections_total",
                "Times an upstream was taken out of its route for failing requests in a row.",
                &["route", "upstream"],
            ),
            auth_failures: counter_vec(
                registry,
                "atlas_auth_failures_total",
                "Requests refused for missing or wrong credentials, by endpoint.",
                &["endpoint"],
            ),
            acme_orders: counter_vec(
                registry,
                "atlas_acme_orders_total",
                "Certificate orders to the ACME CA (tls: acme), by result (ok, error).",
                &["result"],
            ),
            acme_certificate_expiry: gauge(
                registry,
                "atlas_acme_certificate_expiry_timestamp_seconds",
                "When the certificate obtained from the ACME CA expires (Unix time; 0: none yet).",
            ),
            rocksdb_live_data_bytes: gauge(
                registry,
                "atlas_rocksdb_live_data_bytes",
                "Estimated live data in RocksDB.",
            ),
            rocksdb_sst_files_bytes: gauge(
                registry,
                "atlas_rocksdb_sst_files_bytes",
                "Size of all SST files.",
            ),
            rocksdb_memtable_bytes: gauge(
                registry,
                "atlas_rocksdb_memtable_bytes",
                "Memory held by RocksDB memtables.",
            ),
            rocksdb_pending_compaction_bytes: gauge(
                registry,
                "atlas_rocksdb_pending_compaction_bytes",
                "Estimated bytes compaction still has to rewrite.",
            ),
            rocksdb_block_cache_hit_ratio: hit_ratio,
            consensus_ballots: counter(
                registry,
                "atlas_consensus_ballots_total",
                "Phase-1 ballots started by this node.",
            ),
            consensus_steals: counter(
                registry,
                "atlas_consensus_steals_total",
                "Tables this node took ownership of from another owner.",
            ),
            consensus_forwards: counter(
                registry,
                "atlas_consensus_forwards_total",
                "Requests forwarded to a table's owner.",
            ),
            consensus_commits: counter(
                registry,
                "atlas_consensus_commits_total",
                "Log entries committed by this node as owner.",
            ),
            consensus_quorum_failures: counter(
                registry,
                "atlas_consensus_quorum_failures_total",
                "Phase-1 or phase-2 rounds that did not reach a quorum in time.",
            ),
            consensus_messages_sent: counter(
                registry,
                "atlas_consensus_messages_sent_total",
                "Consensus messages delivered to peers.",
            ),
            consensus_messages_received: counter(
                registry,
                "atlas_consensus_messages_received_total",
                "Consensus messages received from peers.",
            ),
            consensus_messages_dropped: counter(
                registry,
                "atlas_consensus_messages_dropped_total",
                "Consensus messages dropped because a peer's send queue was full.",
            ),
            consensus_messages_refused: counter(
                registry,
                "atlas_consensus_messages_refused_total",
                "Peer messages not taken in: from a node that is not a member, in another \
                 node's name, or about a group this node does not know.",
            ),
            consensus_snapshots_installed: counter(
                registry,
                "atlas_consensus_snapshots_installed_total",
                "Snapshots installed because this node was behind a peer's compacted log.",
            ),
            consensus_snapshots_failed: counter(
                registry,
                "atlas_consensus_snapshots_failed_total",
                "Snapshot fetches or installs that failed (they are retried).",
            ),
            consensus_retained_log_bytes: gauge(
                registry,
                "atlas_consensus_retained_log_bytes",
                "Bytes of applied log entries kept in memory for peers that catch up.",
            ),
            consensus_owned_tables: gauge(
                registry,
                "atlas_consensus_owned_tables",
                "Tables this node owns now.",
            ),
        }
    }

    /// Brings the consensus families up to the runtime's cumulative counts.
    pub fn record_cluster(&self, cluster: &atlas::cluster::runtime::ClusterHandle) {
        let counts = cluster.counters();
        let catch_up = |counter: &IntCounter, total: u64| {
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        };
        catch_up(&self.consensus_ballots, counts.ballots);
        catch_up(&self.consensus_steals, counts.steals);
        catch_up(&self.consensus_forwards, counts.forwards);
        catch_up(&self.consensus_commits, counts.commits);
        catch_up(&self.consensus_quorum_failures, counts.quorum_failures);
        catch_up(
            &self.consensus_snapshots_installed,
            counts.snapshots_installed,
        );
        catch_up(&self.consensus_snapshots_failed, counts.snapshots_failed);
        catch_up(&self.consensus_messages_refused, counts.messages_refused);
        let view = cluster.view();
        self.consensus_retained_log_bytes
            .set(i64::try_from(view.retained_bytes).unwrap_or(i64::MAX));
        let owned = view
            .groups
            .iter()
            .filter(|(g, v)| v.is_owner && g.as_str() != atlas::consensus::SYSTEM_GROUP)
            .count();
        self.consensus_owned_tables.set(owned as i64);
    }

    /// Copies storage figures into the gauges.
    pub fn record_storage(&self, stats: &StorageStats) {
        let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.rocksdb_live_data_bytes
            .set(as_i64(stats.live_data_bytes));
        self.rocksdb_sst_files_bytes
            .set(as_i64(stats.sst_files_bytes));
        self.rocksdb_memtable_bytes
            .set(as_i64(stats.memtable_bytes));
        self.rocksdb_pending_compaction_bytes
            .set(as_i64(stats.pending_compaction_bytes));
        let lookups = stats.block_cache_hits + stats.block_cache_misses;
        if lookups > 0 {
            self.rocksdb_block_cache_hit_ratio
                .set(stats.block_cache_hits as f64 / lookups as f64);
        }
    }

    pub fn record_http(&self, route: &'static str, code: u16, elapsed: Duration) {
        HTTP_HANDLES.with(|handles| {
            let mut handles = handles.borrow_mut();
            let (count, seconds) = handles.entry((route, code)).or_insert_with(|| {
                (
                    self.http_requests
                        .with_label_values(&[route, &code.to_string()]),
                    self.http_request_seconds.with_label_values(&[route]),
                )
            });
            count.inc();
            seconds.observe(elapsed.as_secs_f64());
        });
    }
}

thread_local! {
    /// Per worker thread, the handles of each (route, status) answered: bounded by the
    /// routes and the status codes, and lock-free after a thread's first request of a kind
    /// (the proxy path records one per request).
    static HTTP_HANDLES: std::cell::RefCell<
        std::collections::HashMap<(&'static str, u16), CommandHandles>,
    > = std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The process-wide metrics (registered in the default registry on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| Metrics::register(prometheus::default_registry()))
}

/// The text exposition of everything in the default registry.
pub fn render() -> Vec<u8> {
    let mut out = Vec::new();
    let families = prometheus::gather();
    // Encoding into a Vec cannot fail for well-formed families.
    let _ = TextEncoder::new().encode(&families, &mut out);
    out
}

pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Feeds the socket protocol's events into the metrics.
pub struct SocketObserver;

const SOCKET: &str = "socket";

/// The socket's metric handles, resolved by label once (a lookup by label hashes the
/// labels and takes the family's lock: too much for every command).
struct SocketHandles {
    connections_open: IntGauge,
    bytes_received: IntCounter,
    bytes_sent: IntCounter,
}

fn socket_handles() -> &'static SocketHandles {
    static HANDLES: OnceLock<SocketHandles> = OnceLock::new();
    HANDLES.get_or_init(|| {
        let m = metrics();
        SocketHandles {
            connections_open: m.connections_open.with_label_values(&[SOCKET]),
            bytes_received: m.bytes_received.with_label_values(&[SOCKET]),
            bytes_sent: m.bytes_sent.with_label_values(&[SOCKET]),
        }
    })
}

/// A command's counter (for its result) and its latency histogram.
type CommandHandles = (IntCounter, prometheus::Histogram);

thread_local! {
    /// Per worker thread, the handles of each (command, succeeded) seen: bounded by the
    /// number of command names, and lock-free after a thread's first command of a kind.
    static COMMAND_HANDLES: std::cell::RefCell<
        std::collections::HashMap<(&'static str, bool), CommandHandles>,
    > = std::cell::RefCell::new(std::collections::HashMap::new());
}

impl Observer for SocketObserver {
    fn connection_opened(&self) {
        socket_handles().connections_open.inc();
    }

    fn connection_closed(&self) {
        socket_handles().connections_open.dec();
    }

    fn bytes_received(&self, bytes: u64) {
        socket_handles().bytes_received.inc_by(bytes);
    }

    fn bytes_sent(&self, bytes: u64) {
        socket_handles().bytes_sent.inc_by(bytes);
    }

    fn command(&self, name: &'static str, error_kind: Option<&'static str>, elapsed: Duration) {
        let ok = error_kind.is_none();
        COMMAND_HANDLES.with(|handles| {
            let mut handles = handles.borrow_mut();
            let (count, seconds) = handles.entry((name, ok)).or_insert_with(|| {
                let m = metrics();
                let result = if ok { "ok" } else { "error" };
                (
                    m.socket_commands.with_label_values(&[name, result]),
                    m.socket_command_seconds.with_label_values(&[name]),
                )
            });
            count.inc();
            seconds.observe(elapsed.as_secs_f64());
        });
        if let Some(kind) = error_kind {
            metrics().errors.with_label_values(&[kind]).inc();
        }
    }

    fn rejected(&self, kind: &'static str) {
        metrics().errors.with_label_values(&[kind]).inc();
    }
}
