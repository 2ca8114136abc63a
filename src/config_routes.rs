//! `atlas.routes`: the edge-proxy routes of the HTTPS listener (served by the Pingora
//! edge; their schema lives here so the `atlas:` section is checked whole).

use serde::Deserialize;

/// One edge-proxy route (served by the Pingora edge; defined here so the schema is complete).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Host header to match; absent matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix to match.
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub selection: Selection,
    /// Connect to upstreams over TLS, with this SNI.
    #[serde(default)]
    pub tls_sni: Option<String>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default = "default_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub read_timeout_ms: u64,
}

fn default_path_prefix() -> String {
    "/".to_string()
}

fn default_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    RoundRobin,
    ConsistentHash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `tcp` or an HTTP path such as `/healthz`.
    pub kind: String,
    #[serde(default = "default_health_interval_ms")]
    pub interval_ms: u64,
}

fn default_health_interval_ms() -> u64 {
    1_000
}
