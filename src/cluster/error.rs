//! Why a request through the cluster did not get the rules' answer. The session turns these
//! into `ERROR WARN` lines, with every other command error, in one place.

use crate::kv::Refusal;
use crate::protocol::Reply;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The rules refused the write when it was applied (ACL, WORM, version), as a single
    /// node would have.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// No quorum answered before the request's deadline.
    #[error("timeout: no quorum answered in time; the write may or may not have happened")]
    Timeout,
    /// A conditional write was committed, but this node installed a snapshot past it and
    /// never saw its verdict.
    #[error(
        "outcome unknown: the write was committed, but this node caught up past it from a \
         snapshot and did not see its verdict; read the key to learn it"
    )]
    OutcomeUnknown,
    /// The runtime thread is gone (the node is shutting down or failed).
    #[error("unavailable: the cluster runtime stopped")]
    Stopped,
    /// A pin or move that cannot be done as asked (unknown region, pinned elsewhere, no
    /// owner, or the move did not complete in time).
    #[error("{0}")]
    Placement(String),
    /// A large blob's fragments did not all reach the log (one was lost to a change of
    /// owner); nothing was written.
    #[error(
        "upload incomplete: a part of the blob did not reach the log; nothing was written, write it again"
    )]
    UploadIncomplete,
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl ClusterError {
    /// Short label for the errors-by-kind metric.
    pub fn kind(&self) -> &'static str {
        match self {
            ClusterError::Refused(refusal) => refusal.kind(),
            ClusterError::Timeout => "timeout",
            ClusterError::OutcomeUnknown => "outcome_unknown",
            ClusterError::Stopped => "unavailable",
            ClusterError::Placement(_) => "placement",
            ClusterError::UploadIncomplete => "upload_incomplete",
            ClusterError::Internal(_) => "internal",
        }
    }
}

/// What a request through the cluster gets: the rules' answer, or why not.
pub type Answer = Result<Reply, ClusterError>;
