//! What the runtime publishes for `NODE`/`QUORUM`/`TABLE` commands and metrics: a view of
//! the cluster refreshed every 100 ms, and cumulative counters.

use std::collections::{BTreeMap, BTreeSet};

use super::directory::NodeRecord;
use crate::consensus::{Ballot, GroupId, Membership, Node, NodeId, Slot, Tolerances, Zone};

/// What the runtime knows about one group, as of the last published view.
#[derive(Debug, Clone, Default)]
pub struct GroupView {
    pub owner: Option<NodeId>,
    pub ballot: Option<Ballot>,
    pub is_owner: bool,
    pub applied: Slot,
    /// While this node owns the group with a lease: the wall-clock millisecond it ends (as
    /// of the view's publication).
    pub lease_until_ms: Option<i64>,
}

/// Cumulative consensus counts since the runtime started (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Phase-1 ballots this node started.
    pub ballots: u64,
    /// Ballots started while another node was believed to own the group.
    pub steals: u64,
    /// Client requests sent on to an owner.
    pub forwards: u64,
    /// Entries applied while this node owned their group.
    pub commits: u64,
    /// Requests that got no quorum's answer in time.
    pub quorum_failures: u64,
    /// Snapshots installed (this node was behind a peer's compacted log).
    pub snapshots_installed: u64,
    /// Snapshot fetches or installs that failed (they are retried).
    pub snapshots_failed: u64,
    /// Messages the transport refused to queue (a peer's queue was full).
    pub messages_dropped: u64,
    /// Peer messages the consensus core did not take in: from a non-member, in another
    /// node's name, about an unknown group (see `consensus::inbound`).
    pub messages_refused: u64,
}

/// A snapshot of the cluster for reports and metrics.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub members: Membership,
    pub joint: bool,
    pub epoch: u64,
    pub directory: BTreeMap<NodeId, NodeRecord>,
    pub groups: BTreeMap<GroupId, GroupView>,
    pub effective: Option<Tolerances>,
    pub pending_requests: usize,
    /// Nodes that were members and are no more (removed).
    pub removed: BTreeSet<NodeId>,
    /// Bytes of applied entries kept for catch-up.
    pub retained_bytes: usize,
    /// Pinned tables → region (`TABLE PIN`).
    pub pins: BTreeMap<String, Zone>,
}

impl ClusterView {
    /// The view of `node` with the directory `directory`, published at wall-clock `now_ms`.
    pub fn of(node: &Node, directory: &BTreeMap<NodeId, NodeRecord>, now_ms: i64) -> ClusterView {
        let groups = node
            .groups()
            .map(|group| {
                let is_owner = node.is_owner(group);
                let view = GroupView {
                    owner: if is_owner {
                        Some(node.id())
                    } else {
                        node.owner_hint(group)
                    },
                    ballot: node.ballot(group),
                    is_owner,
                    applied: node.applied(group),
                    lease_until_ms: node
                        .lease_left(group)
                        .map(|left| now_ms.saturating_add(i64::try_from(left).unwrap_or(i64::MAX))),
                };
                (group.clone(), view)
            })
            .collect();
        ClusterView {
            members: node.membership().clone(),
            joint: node.config().is_joint(),
            epoch: node.config().epoch,
            directory: directory.clone(),
            groups,
            effective: Some(node.quorums().effective()),
            pending_requests: node.pending_requests(),
            removed: node
                .config()
                .past
                .iter()
                .flat_map(|(m, _)| m.nodes())
                .filter(|n| !node.membership().contains(*n))
                .collect(),
            retained_bytes: node.retained_bytes(),
            pins: BTreeMap::new(),
        }
    }
}

/// A view of `members` (id, zone) and directory `records` (id, host, port), for tests.
#[cfg(test)]
pub(crate) fn test_view(
    members: &[(NodeId, &str)],
    records: &[(NodeId, &str, u16)],
) -> ClusterView {
    ClusterView {
        members: Membership::new(members.iter().map(|(n, z)| (*n, z.to_string()))),
        directory: records
            .iter()
            .map(|(id, host, port)| {
                let record = NodeRecord {
                    id: *id,
                    region: "r".into(),
                    host: host.to_string(),
                    port: *port,
                };
                (*id, record)
            })
            .collect(),
        ..ClusterView::default()
    }
}
