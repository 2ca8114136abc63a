//! The replicated state machine: what a write does to the keys, and what a read answers.
//!
//! A [`Write`] is judged once where the request arrives (its clock is read there), then
//! applied by [`apply`] — on a single node directly, in a cluster on every replica from the
//! consensus log, into the same atomic batch as the consensus state. The rules (system
//! tables, ACLs, WORM locks) live only here, so every replica and a single node answer
//! alike. Reads ([`read`]) answer from local storage; in a cluster the replica has made the
//! read linearizable first. This layer sits on `storage` and knows nothing of consensus,
//! sessions or the cluster.

mod apply;
mod read;
pub mod write;

pub use apply::{apply, version_of};
pub use read::{read, read_cached};
pub use write::{Write, WriteDecodeError, WriteOp};

use crate::protocol::duration::format_rfc3339_ms;

/// Why the rules refused a write or a read. Answered to the client as an `ERROR WARN` line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("permission denied for principal '{principal}': {what} access denied")]
    PermissionDenied {
        principal: String,
        what: &'static str,
    },
    #[error("write-once value is locked until {}", format_rfc3339_ms(*.until_ms))]
    Locked { until_ms: i64 },
    #[error("system table {0} is read-only")]
    SystemTable(String),
    #[error("{0} holds a blob; use KEY BLOB GET {0}")]
    HoldsBlob(String),
    #[error("version mismatch: {key} is at version {version}")]
    VersionMismatch { key: String, version: u64 },
    #[error("condition failed: {key} is at version {version}")]
    ConditionFailed { key: String, version: u64 },
    #[error(
        "a transaction stays within one table: {other} is not in {first} (one owner orders one table's writes)"
    )]
    SpansTables { first: String, other: String },
}

impl Refusal {
    /// Short label for the errors-by-kind metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::PermissionDenied { .. } => "permission_denied",
            Refusal::Locked { .. } => "worm_locked",
            Refusal::SystemTable(_) => "system_table",
            Refusal::HoldsBlob(_) => "holds_blob",
            Refusal::VersionMismatch { .. } => "version_mismatch",
            Refusal::ConditionFailed { .. } => "condition_failed",
            Refusal::SpansTables { .. } => "spans_tables",
        }
    }
}

/// Wall-clock Unix milliseconds: the instant writes are judged at and reads see.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn shown_principal(principal: Option<&str>) -> String {
    principal.unwrap_or("(none)").to_string()
}

#[cfg(test)]
mod tests;
