//! One picture of the cluster for `NODE`, `QUORUM` and `TABLE` answers. A cluster member
//! builds it from its runtime's published view and peer health; a standalone node is a
//! one-member cluster that owns every table under its first ballot, with no lease needed.
//! `info.rs` renders every answer from it, whichever way it was built.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::cluster::health::PeerStatus;
use crate::cluster::runtime::ClusterHandle;
use crate::consensus::{Ballot, Membership, NodeId, QuorumSystem, SYSTEM_GROUP, Slot, Tolerances};
use crate::protocol::key::is_system_table;

use super::{NodeIdentity, now_ms};

/// What is known of one node.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts {
    pub region: String,
    pub host: String,
    pub port: u16,
    pub status: PeerStatus,
    pub rtt_ms: Option<f64>,
    /// Wall-clock milliseconds of its last sign of life.
    pub last_seen_ms: Option<i64>,
    /// In the membership in force (false: registered, copying its snapshot).
    pub member: bool,
}

/// The lease that lets the owner answer reads alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lease {
    /// A single node is its own quorum: it needs none.
    Unbounded,
    /// Held here until this wall-clock millisecond.
    Until(i64),
    /// Not held by this node.
    NotHere,
}

/// What is known of one table.
#[derive(Debug, Clone)]
pub(crate) struct TableState {
    pub owner: Option<NodeId>,
    pub ballot: Option<Ballot>,
    pub lease: Lease,
    pub last_slot: Slot,
    /// The region it is pinned to (`TABLE PIN`).
    pub pinned: Option<String>,
}

impl Default for TableState {
    fn default() -> Self {
        TableState {
            owner: None,
            ballot: None,
            lease: Lease::NotHere,
            last_slot: 0,
            pinned: None,
        }
    }
}

/// The membership change state a cluster member reports about itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConfigState {
    pub epoch: u64,
    pub joint: bool,
}

pub(crate) struct Topology {
    pub me: NodeId,
    /// Every known node: the members in force, and nodes with a record not removed.
    pub nodes: BTreeMap<NodeId, NodeFacts>,
    pub quorums: QuorumSystem,
    pub configured: Tolerances,
    /// Tables asked about (all, for `TABLE LIST`); a table not listed is `TableState::default`.
    pub tables: BTreeMap<String, TableState>,
    /// Client tables each node owns, as far as this node knows.
    pub owned: BTreeMap<NodeId, usize>,
    pub uptime_s: u64,
    pub config: ConfigState,
}

impl Topology {
    pub fn table(&self, name: &str) -> TableState {
        self.tables.get(name).cloned().unwrap_or_default()
    }

    pub fn effective(&self) -> Tolerances {
        self.quorums.effective()
    }

    /// A standalone node: itself, owning every table it `stored` and the `tables` asked
    /// about (name → changes applied).
    pub fn standalone(
        node: &NodeIdentity,
        stored: &[String],
        tables: BTreeMap<String, Slot>,
        started: Instant,
    ) -> Topology {
        let membership = Membership::new([(node.id, node.region.clone())]);
        let configured = Tolerances {
            nodes: node.configured_fn as usize,
            zones: node.configured_fz as usize,
        };
        let facts = NodeFacts {
            region: node.region.clone(),
            host: node.host.clone(),
            port: node.port,
            status: PeerStatus::Active,
            rtt_ms: Some(0.0),
            last_seen_ms: Some(now_ms()),
            member: true,
        };
        let owned = stored.iter().filter(|t| !is_system_table(t)).count();
        let tables = tables
            .into_iter()
            .map(|(name, last_slot)| {
                let state = TableState {
                    owner: Some(node.id),
                    ballot: Some(Ballot::new(1, node.id)),
                    lease: Lease::Unbounded,
                    last_slot,
                    pinned: None,
                };
                (name, state)
            })
            .collect();
        Topology {
            me: node.id,
            nodes: BTreeMap::from([(node.id, facts)]),
            quorums: QuorumSystem::new(&membership, configured),
            configured,
            tables,
            owned: BTreeMap::from([(node.id, owned)]),
            uptime_s: started.elapsed().as_secs(),
            config: ConfigState {
                epoch: 0,
                joint: false,
            },
        }
    }

    /// A cluster member: the runtime's view (at most 100 ms old) and peer health; `tables`
    /// are the tables to report beyond those the core knows.
    pub fn of_cluster(cluster: &ClusterHandle, tables: &[String], started: Instant) -> Topology {
        let view = cluster.view();
        let known: BTreeSet<NodeId> = view
            .members
            .nodes()
            .chain(
                view.directory
                    .keys()
                    .copied()
                    .filter(|n| !view.removed.contains(n)),
            )
            .collect();
        let now = now_ms();
        let nodes = known
            .into_iter()
            .map(|node| {
                let record = view.directory.get(&node);
                let (status, rtt_ms, last_seen) = cluster.peer_health(node);
                let facts = NodeFacts {
                    region: view
                        .members
                        .zone_of(node)
                        .cloned()
                        .or_else(|| record.map(|r| r.region.clone()))
                        .unwrap_or_else(|| "-".into()),
                    host: record.map_or("-".to_string(), |r| r.host.clone()),
                    port: record.map_or(0, |r| r.port),
                    status,
                    rtt_ms,
                    last_seen_ms: last_seen.map(|at| now - at.elapsed().as_millis() as i64),
                    member: view.members.contains(node),
                };
                (node, facts)
            })
            .collect();
        let mut owned: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (name, group) in &view.groups {
            if name != SYSTEM_GROUP
                && !is_system_table(name)
                && let Some(owner) = group.owner
            {
                *owned.entry(owner).or_default() += 1;
            }
        }
        let states = tables
            .iter()
            .map(|name| {
                let group = view.groups.get(name).cloned().unwrap_or_default();
                let state = TableState {
                    owner: group.owner,
                    ballot: group.ballot.filter(|b| !b.is_zero()),
                    lease: group.lease_until_ms.map_or(Lease::NotHere, Lease::Until),
                    last_slot: group.applied,
                    pinned: view.pins.get(name).cloned(),
                };
                (name.clone(), state)
            })
            .collect();
        Topology {
            me: cluster.id(),
            nodes,
            quorums: QuorumSystem::new(&view.members, cluster.configured()),
            configured: cluster.configured(),
            tables: states,
            owned,
            uptime_s: started.elapsed().as_secs(),
            config: ConfigState {
                epoch: view.epoch,
                joint: view.joint,
            },
        }
    }
}
