//! The `atlas:` section of the server's YAML file.
//!
//! One YAML file configures a node: Pingora's `ServerConf` keys at the top level and this
//! section under `atlas:`. Unknown keys inside `atlas:` are an error naming the key and the
//! file; top-level keys belong to Pingora and are left to it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The embedded default: a single node with data under `./data`.
pub const DEFAULT_YAML: &str = include_str!("../conf/default.yaml");

pub const DEFAULT_MAX_LINE_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_MAX_TAGGED_IN_FLIGHT: usize = 128;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// One hour: a REPL left open over lunch survives, a leaked connection does not stay.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Staged lines (`TXN IF/PUT/DEL`) one transaction may hold.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Keys one `SCAN` page answers when the client names no `LIMIT` (and at most).
pub const DEFAULT_MAX_SCAN_KEYS: usize = 10_000;
/// Watches one connection may have open.
pub const DEFAULT_MAX_WATCHES: usize = 64;
/// Bytes of recent changes kept for `WATCH … FROM`.
pub const DEFAULT_WATCH_HISTORY_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config error in {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config error in {file}: {message}")]
    Invalid { file: String, message: String },
}

/// The shortest cluster credential accepted (a shared secret guessed over the network).
pub const MIN_CREDENTIAL_CHARS: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AtlasConfig {
    pub data_dir: PathBuf,
    /// Unix socket path; defaults to `<data_dir>/atlas.sock`.
    pub socket: Option<PathBuf>,
    /// TLS listener address (HTTPS endpoints, node transport).
    pub listen: String,
    /// A plain-HTTP listener (`IP:port`, e.g. `0.0.0.0:80`) that redirects every request to
    /// HTTPS (`308`, same host and path, `listen`'s port).
    pub http_listen: Option<String>,
    /// Address other nodes and clients use to reach this node; defaults to `listen`.
    pub advertise: Option<String>,
    /// The zone this node belongs to.
    pub region: String,
    /// Shared cluster secret for joins and the node transport.
    pub credentials: Option<String>,
    /// Other cluster secrets also accepted (never sent), while a new one is rolled out node
    /// by node; see docs/cluster.md, "Rotating the credential".
    pub accepted_credentials: Vec<String>,
    /// `https://<seed>:<port>` of a node to join.
    pub connect: Option<String>,
    /// CA file used to verify the seed.
    pub peer_ca: Option<PathBuf>,
    /// Instead of `peer_ca`: the SHA-256 fingerprint of the seed's CA certificate (as
    /// `atlas ca show` prints it); the CA is fetched from the seed and checked against it.
    pub peer_ca_sha256: Option<String>,
    pub tls: TlsConfig,
    /// More certificates for the HTTPS listeners, each chosen for the names in its
    /// subjectAltName when a client asks for one of them (SNI); `tls` serves the rest.
    pub tls_certificates: Vec<CertFiles>,
    #[serde(rename = "fn")]
    pub fn_: u32,
    pub fz: u32,
    /// How table ownership moves between nodes (cluster mode).
    pub migration: Migration,
    /// Test-only: serve `POST /atlas/v1/test/faults` to cut this node off from peers.
    pub fault_injection: bool,
    /// Node-to-node messages also need a client certificate signed by the cluster CA (with
    /// `tls: internal`, the sender's own, which names its node id). Unset: on in a cluster
    /// with `tls: internal`, off otherwise; see [`AtlasConfig::peer_mtls`].
    pub peer_mtls: Option<bool>,
    pub durability: Durability,
    /// RocksDB's statistics (tickers only), for `atlas_rocksdb_block_cache_hit_ratio`. Off by
    /// default: every read and write then pays nothing for counting.
    pub rocksdb_statistics: bool,
    /// How often expired values are removed (a cluster: the owner commits their removal,
    /// which watchers see as `DEL` events).
    pub expiry_sweep_ms: u64,
    pub metrics_listen: Option<String>,
    /// The socket protocol over TLS on TCP (`host:port`), for clients off this machine; each
    /// presents a client certificate of the cluster CA naming its principal.
    pub client_listen: Option<String>,
    /// Principals that may `PRINCIPAL ASSUME` another name and run `BACKUP` on `client_listen`.
    pub client_admins: Vec<String>,
    /// SHA-256 fingerprints of client certificates `client_listen` refuses (revoked).
    pub client_revoked: Vec<String>,
    /// When set, `/metrics` on the HTTPS listener needs `Authorization: Bearer <token>`
    /// (`metrics_listen`, meant for a private address, does not).
    pub metrics_token: Option<String>,
    pub routes: Vec<RouteConfig>,
    /// Table placement declared in the configuration (cluster mode), applied at start:
    /// `tables: {orders: {pin: eu}}`. See docs/cluster.md, "Moving and pinning tables".
    pub tables: BTreeMap<String, TableConfig>,
    pub nas: NasConfig,
    pub limits: Limits,
}

impl Default for AtlasConfig {
    fn default() -> Self {
        AtlasConfig {
            data_dir: PathBuf::from("./data"),
            socket: None,
            listen: "127.0.0.1:4444".to_string(),
            http_listen: None,
            advertise: None,
            region: "local".to_string(),
            credentials: None,
            accepted_credentials: Vec::new(),
            connect: None,
            peer_ca: None,
            peer_ca_sha256: None,
            tls: TlsConfig::default(),
            tls_certificates: Vec::new(),
            fn_: 1,
            fz: 0,
            migration: Migration::Adaptive,
            fault_injection: false,
            peer_mtls: None,
            durability: Durability::Strict,
            rocksdb_statistics: false,
            expiry_sweep_ms: 60_000,
            metrics_listen: None,
            client_listen: None,
            client_admins: Vec::new(),
            client_revoked: Vec::new(),
            metrics_token: None,
            routes: Vec::new(),
            tables: BTreeMap::new(),
            nas: NasConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// A SHA-256 fingerprint as 64 upper-case hex digits without separators, if `text` is one
/// (colons and spaces are ignored, case is not significant).
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let hex: String = text
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// `migration:` how table ownership moves (see docs/consensus.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Migration {
    /// Forward to the owner; move a table to the zone that uses it most.
    #[default]
    Adaptive,
    /// Take ownership on every access (benchmark baseline).
    Immediate,
    /// Never move for load (benchmark baseline); failed owners are still replaced.
    Static,
}

/// A certificate chain and its key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `tls: internal` (a self-made CA, like Caddy's), `tls: {cert, key}` (PEM files) or
/// `tls: {acme: {...}}` (certificates obtained and renewed from an ACME CA).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TlsConfig {
    #[default]
    Internal,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Acme(AcmeConfig),
}

/// `tls: {acme: ...}`: a certificate for `domains` from an ACME (RFC 8555) CA such as
/// Let's Encrypt, obtained at start and renewed before it expires.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://…/directory`).
    pub directory: String,
    /// A PEM CA file that verifies the directory's own HTTPS certificate (a private or test
    /// CA); the system's roots otherwise.
    pub directory_ca: Option<PathBuf>,
    /// Contact address for the account (expiry notices); optional.
    pub email: Option<String>,
    /// The DNS names the certificate covers (no wildcards: those need DNS-01).
    pub domains: Vec<String>,
    /// How the CA checks that this node answers for the names.
    #[serde(default)]
    pub challenge: AcmeChallenge,
}

/// The ACME challenge type answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// A token served on `http_listen` (port 80 as the CA sees it).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A certificate served with ALPN `acme-tls/1` on the TLS listener (port 443).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl<'de> Deserialize<'de> for TlsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Files {
            cert: PathBuf,
            key: PathBuf,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Acme {
            acme: AcmeConfig,
        }
        let value = serde_yaml::Value::deserialize(d)?;
        match value {
            serde_yaml::Value::String(s) if s == "internal" => Ok(TlsConfig::Internal),
            serde_yaml::Value::Mapping(ref m) if m.contains_key("acme") => {
                let acme: Acme = serde_yaml::from_value(value).map_err(serde::de::Error::custom)?;
                Ok(TlsConfig::Acme(acme.acme))
            }
            serde_yaml::Value::Mapping(_) => {
                let files: Files =
                    serde_yaml::from_value(value).map_err(serde::de::Error::custom)?;
                Ok(TlsConfig::Files {
                    cert: files.cert,
                    key: files.key,
                })
            }
            _ => Err(serde::de::Error::custom(
                "expected `internal`, a mapping `{cert: FILE, key: FILE}` or `{acme: {...}}`",
            )),
        }
    }
}

/// One entry of `tables:`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Keep the table in this region (`TABLE PIN`); absent: no opinion (a pin made with
    /// `TABLE PIN` stays).
    pub pin: Option<String>,
}

impl AtlasConfig {
    /// The pins `tables:` declares, by upper-cased table name.
    pub fn declared_pins(&self) -> BTreeMap<String, String> {
        self.tables
            .iter()
            .filter_map(|(t, c)| Some((t.to_ascii_uppercase(), c.pin.clone()?)))
            .collect()
    }
}

/// `strict` syncs the write-ahead log before a write is acknowledged; `relaxed` leaves the
/// sync to the operating system (a crash of the machine, not of the process, can lose the
/// last writes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    #[default]
    Strict,
    Relaxed,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NasConfig {
    /// SQLite file; defaults to `<data_dir>/atlas.db` (`:memory:` for a throwaway store).
    pub db_path: Option<PathBuf>,
    /// `dry_run` (default) records the commands apply and snapshots would run; `live` runs
    /// them (`ATLAS_NAS_APPLY=live` does the same).
    pub apply: NasApplyMode,
    /// Where apply writes the rendered Samba shares (include it from smb.conf).
    pub smb_conf_path: Option<PathBuf>,
    /// Where apply writes the NFS exports.
    pub exports_path: Option<PathBuf>,
    /// Where apply writes LIO's saveconfig.json.
    pub lio_config_path: Option<PathBuf>,
    /// Directories shares, exports and fileio LUNs may live under (default `/tank`, `/mnt`,
    /// `/srv`, `/export`): an operator is not root.
    pub allowed_paths: Option<Vec<String>>,
    /// Where block LUNs may point (default `/dev/zvol/`; a file backstore follows
    /// `allowed_paths`).
    pub allowed_devices: Option<Vec<String>>,
    /// `false` turns the NAS API off: its paths answer 404 (an edge proxy then exposes no
    /// administration surface). Default true.
    pub enabled: Option<bool>,
    /// Serve the NAS API on its own HTTPS listener (`IP:port`, same certificate) instead of
    /// `listen`; its paths on the main listener then go to the routes.
    pub listen: Option<String>,
    /// Where the NAS API's paths start (default `/api/v1`); every other path but `/atlas/…`
    /// and `/metrics` goes to the routes.
    pub path_prefix: Option<String>,
}

impl NasConfig {
    pub const DEFAULT_PATH_PREFIX: &'static str = "/api/v1";

    pub fn path_prefix(&self) -> &str {
        self.path_prefix
            .as_deref()
            .unwrap_or(Self::DEFAULT_PATH_PREFIX)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NasApplyMode {
    #[default]
    DryRun,
    Live,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest request line; a longer one ends the connection.
    pub max_line_bytes: u64,
    /// Largest `KEY BLOB SET` payload.
    pub max_blob_bytes: u64,
    /// Tagged (`[ID:…]`) requests running at once on one connection.
    pub max_tagged_in_flight: usize,
    /// Socket connections open at once; one more is answered `ERROR FATAL too many
    /// connections` and closed.
    pub max_connections: usize,
    /// A connection that sends nothing for this long, with nothing of its own running, is
    /// closed (`ERROR FATAL idle timeout`); 0 never closes one.
    pub idle_timeout_ms: u64,
    /// Staged lines one transaction may hold (its bytes are bounded by `max_blob_bytes`).
    pub max_txn_ops: usize,
    /// Keys of one `SCAN` page: the default and the most a `LIMIT` may ask for.
    pub max_scan_keys: usize,
    /// Bytes of recent changes a node keeps for `WATCH … FROM`.
    pub watch_history_bytes: u64,
    /// Watches one connection may have open.
    pub max_watches: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            max_tagged_in_flight: DEFAULT_MAX_TAGGED_IN_FLIGHT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_scan_keys: DEFAULT_MAX_SCAN_KEYS,
            watch_history_bytes: DEFAULT_WATCH_HISTORY_BYTES,
            max_watches: DEFAULT_MAX_WATCHES,
        }
    }
}

#[path = "config_routes.rs"]
mod routes;
pub use routes::{HealthCheck, RouteConfig, Selection};

/// The whole file as Atlas sees it: everything but `atlas:` belongs to Pingora.
#[derive(Deserialize)]
struct FileView {
    #[serde(default)]
    atlas: Option<AtlasConfig>,
}

impl AtlasConfig {
    /// Loads and validates the `atlas:` section of `path`.
    pub fn load(path: &Path) -> Result<AtlasConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_yaml(&text, &file)
    }

    /// Whether the consensus transport requires a node's certificate: `peer_mtls` if set,
    /// else on in a cluster (`credentials`) with `tls: internal`, whose CA issues every
    /// node's certificate; with `tls: {cert, key}` the certificates are the operator's, so it
    /// stays off unless asked for.
    pub fn peer_mtls(&self) -> bool {
        self.peer_mtls
            .unwrap_or(self.credentials.is_some() && matches!(self.tls, TlsConfig::Internal))
    }

    /// Parses `text` (named `file` in errors) and validates it.
    pub fn from_yaml(text: &str, file: &str) -> Result<AtlasConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_string(),
            message,
        };
        let view: FileView =
            serde_yaml::from_str(text).map_err(|e| invalid(describe_yaml_error(&e)))?;
        let config = view.atlas.unwrap_or_default();
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Makes relative paths absolute against `base` (the working directory at start), so a
    /// daemonised server, which changes directory, still finds its files.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && p.as_os_str() != ":memory:" {
                // `./data` under /srv becomes /srv/data, not /srv/./data.
                *p = base
                    .join(&*p)
                    .components()
                    .filter(|c| !matches!(c, std::path::Component::CurDir))
                    .collect();
            }
        };
        resolve(&mut self.data_dir);
        for p in [
            &mut self.socket,
            &mut self.peer_ca,
            &mut self.nas.db_path,
            &mut self.nas.smb_conf_path,
            &mut self.nas.exports_path,
            &mut self.nas.lio_config_path,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        for files in &mut self.tls_certificates {
            resolve(&mut files.cert);
            resolve(&mut files.key);
        }
        match &mut self.tls {
            TlsConfig::Files { cert, key } => {
                resolve(cert);
                resolve(key);
            }
            TlsConfig::Acme(acme) => {
                if let Some(ca) = &mut acme.directory_ca {
                    resolve(ca);
                }
            }
            TlsConfig::Internal => {}
        }
    }

    pub fn socket_path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("atlas.sock"))
    }

    /// Host and port this node announces (`advertise`, else `listen`).
    pub fn advertised_host_port(&self) -> (String, u16) {
        let addr = self.advertise.as_deref().unwrap_or(&self.listen);
        match addr.rsplit_once(':') {
            Some((host, port)) => (
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port.parse().unwrap_or(0),
            ),
            None => (addr.to_string(), 0),
        }
    }
}

/// serde_yaml reports `atlas.limits: unknown field ...`; keep that path visible and prefix
/// nothing else so the message reads naturally after the file name.
fn describe_yaml_error(e: &serde_yaml::Error) -> String {
    let mut msg = e.to_string();
    if let Some(loc) = e.location()
        && !msg.contains("line")
    {
        msg.push_str(&format!(" at line {} column {}", loc.line(), loc.column()));
    }
    msg
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Strict => "strict",
            Durability::Relaxed => "relaxed",
        })
    }
}

#[path = "config_validate.rs"]
mod validate;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
