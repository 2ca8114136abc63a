//! The paths of Atlas's endpoints and the reply they build: shared by the HTTP API
//! (`http.rs`) and the cluster endpoints (`cluster/`), which therefore do not import each
//! other.

use serde_json::json;

pub const JOIN_PATH: &str = "/atlas/v1/join";
pub const TRANSPORT_PATH: &str = "/atlas/v1/consensus";
/// Removes a member from the cluster (cluster credentials).
pub const REMOVE_PATH: &str = "/atlas/v1/remove";
/// A snapshot of the node's data, for a joining node (cluster credentials).
pub const SNAPSHOT_PATH: &str = "/atlas/v1/snapshot";
/// The internal CA certificate (public), for joiners that pin its fingerprint.
pub const CA_PATH: &str = "/atlas/v1/ca";
/// Test-only fault layer (served only with `atlas.fault_injection: true`).
pub const FAULTS_PATH: &str = "/atlas/v1/test/faults";

/// A response before it is written.
pub struct HttpReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra_headers: Vec<(&'static str, String)>,
}

impl HttpReply {
    pub fn json(status: u16, value: serde_json::Value) -> HttpReply {
        HttpReply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            extra_headers: Vec::new(),
        }
    }

    pub fn error(status: u16, kind: &str, message: &str) -> HttpReply {
        HttpReply::json(status, json!({"error": kind, "message": message}))
    }
}
