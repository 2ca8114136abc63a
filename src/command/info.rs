//! The answers of `NODE LIST`, `NODE INFO`, `QUORUM INFO`, `TABLE INFO` and `TABLE LIST`,
//! rendered from one [`Topology`] whether the node is standalone or a cluster member (see
//! docs/protocol.md for every field).

use std::collections::BTreeMap;

use crate::consensus::{NodeId, Zone};
use crate::protocol::Reply;
use crate::protocol::duration::format_rfc3339_ms;

use super::CommandError;
use super::topology::{Lease, Topology};

fn lines_reply(lines: impl IntoIterator<Item = String>) -> Reply {
    Reply::Lines(lines.into_iter().map(String::into_bytes).collect())
}

fn rtt_text(rtt: Option<f64>) -> String {
    rtt.map_or("-".to_string(), |r| format!("{r:.3}"))
}

/// The id of a known node, written as a plain number.
pub(crate) fn known_node(topology: &Topology, id: &str) -> Result<NodeId, CommandError> {
    id.parse::<NodeId>()
        .ok()
        .filter(|n| n.to_string() == id && topology.nodes.contains_key(n))
        .ok_or_else(|| CommandError::UnknownNode(id.to_string()))
}

fn endpoint(topology: &Topology, node: NodeId) -> String {
    let facts = &topology.nodes[&node];
    format!(
        "id={node} region={} addr={} port={}",
        facts.region, facts.host, facts.port
    )
}

pub(crate) fn node_list(topology: &Topology) -> Reply {
    lines_reply(topology.nodes.iter().map(|(node, facts)| {
        format!(
            "NODE id={node} region={} status={} rtt_ms={} addr={} port={}",
            facts.region,
            facts.status,
            rtt_text(facts.rtt_ms),
            facts.host,
            facts.port
        )
    }))
}

pub(crate) fn node_info(topology: &Topology, id: &str) -> Result<Reply, CommandError> {
    let node = known_node(topology, id)?;
    let facts = &topology.nodes[&node];
    let last_seen = facts
        .last_seen_ms
        .map_or("never".to_string(), format_rfc3339_ms);
    let mut lines = vec![
        format!("id={node}"),
        format!("region={}", facts.region),
        format!("addr={}", facts.host),
        format!("port={}", facts.port),
        format!("status={}", facts.status),
        format!("rtt_ms={}", rtt_text(facts.rtt_ms)),
        format!(
            "owned_tables={}",
            topology.owned.get(&node).copied().unwrap_or(0)
        ),
        format!("last_seen={last_seen}"),
        format!("member={}", facts.member),
    ];
    if node == topology.me {
        lines.push(format!("uptime_s={}", topology.uptime_s));
        // The membership configuration this node has applied (joint while a change is on).
        lines.push(format!("config_epoch={}", topology.config.epoch));
        lines.push(format!("joint={}", topology.config.joint));
    }
    Ok(lines_reply(lines))
}

/// The quorums the table's owner would use now (this node when it has none), chosen by the
/// quorum system: zones nearest the owner first (by measured RTT), and in each zone the
/// owner, then ACTIVE nodes, then by RTT and id.
pub(crate) fn quorum_info(topology: &Topology, table: &str) -> Reply {
    let owner = topology.table(table).owner.unwrap_or(topology.me);
    let owner_zone = topology
        .nodes
        .get(&owner)
        .map(|f| f.region.clone())
        .unwrap_or_default();
    let micros = |node: &NodeId| {
        topology.nodes[node]
            .rtt_ms
            .map_or(u64::MAX, |r| (r * 1000.0) as u64)
    };
    let mut zone_rtt: BTreeMap<Zone, u64> = BTreeMap::new();
    for (node, facts) in &topology.nodes {
        let rtt = zone_rtt.entry(facts.region.clone()).or_insert(u64::MAX);
        *rtt = (*rtt).min(micros(node));
    }
    let (q1, q2) = topology.quorums.choose(&owner_zone, &zone_rtt, |n| {
        let status = topology.nodes.get(&n).map(|f| f.status);
        (
            n != owner,
            status,
            topology.nodes.get(&n).map_or(u64::MAX, |_| micros(&n)),
            n,
        )
    });
    let mut lines = vec![format!("Q1 size={}", q1.len())];
    lines.extend(q1.iter().map(|n| endpoint(topology, *n)));
    lines.push(format!("Q2 size={}", q2.len()));
    lines.extend(q2.iter().map(|n| endpoint(topology, *n)));
    lines_reply(lines)
}

fn owner_text(owner: Option<NodeId>) -> String {
    owner.map_or("none".to_string(), |o| o.to_string())
}

fn owner_region(topology: &Topology, owner: Option<NodeId>) -> String {
    owner
        .and_then(|o| topology.nodes.get(&o))
        .map_or("-".to_string(), |f| f.region.clone())
}

pub(crate) fn table_info(topology: &Topology, table: &str) -> Reply {
    let state = topology.table(table);
    let effective = topology.effective();
    let lease = match state.lease {
        Lease::Unbounded => "unbounded".to_string(),
        Lease::Until(ms) => format_rfc3339_ms(ms),
        Lease::NotHere => "none".to_string(),
    };
    lines_reply([
        format!("owner={}", owner_text(state.owner)),
        format!(
            "ballot={}",
            state
                .ballot
                .map_or("none".to_string(), |b| format!("{}.{}", b.counter, b.node))
        ),
        format!("region={}", owner_region(topology, state.owner)),
        format!("lease_until={lease}"),
        format!("last_slot={}", state.last_slot),
        format!("table={table}"),
        format!("fn={}", effective.nodes),
        format!("fz={}", effective.zones),
        format!("configured_fn={}", topology.configured.nodes),
        format!("configured_fz={}", topology.configured.zones),
        // Groups, pins and regional replication are not built yet.
        "group=-".to_string(),
        "replication=global".to_string(),
        format!("pinned={}", state.pinned.as_deref().unwrap_or("-")),
    ])
}

/// One line per table of the topology, in name order.
pub(crate) fn table_list(topology: &Topology) -> Reply {
    lines_reply(topology.tables.iter().map(|(table, state)| {
        format!(
            "TABLE {table} owner={} region={} group=- replication=global pinned={} last_slot={}",
            owner_text(state.owner),
            owner_region(topology, state.owner),
            state.pinned.as_deref().unwrap_or("-"),
            state.last_slot
        )
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;
    use crate::cluster::health::PeerStatus;
    use crate::command::NodeIdentity;
    use crate::command::topology::{ConfigState, NodeFacts, TableState};
    use crate::consensus::{Ballot, Membership, QuorumSystem, Tolerances};

    fn text(reply: Reply) -> Vec<String> {
        match reply {
            Reply::Lines(lines) => lines
                .into_iter()
                .map(|l| String::from_utf8(l).unwrap())
                .collect(),
            other => panic!("not lines: {other:?}"),
        }
    }

    fn standalone() -> Topology {
        let node = NodeIdentity::for_test();
        let stored = ["ATLAS".to_string(), "USERS".to_string()];
        let tables = BTreeMap::from([("USERS".to_string(), 17)]);
        Topology::standalone(&node, &stored, tables, Instant::now())
    }

    #[test]
    fn a_standalone_node_is_a_one_member_cluster_owning_every_table() {
        let t = standalone();
        assert_eq!(
            text(node_list(&t)),
            ["NODE id=1 region=local status=ACTIVE rtt_ms=0.000 addr=127.0.0.1 port=4444"]
        );
        let info = text(node_info(&t, "1").unwrap());
        assert_eq!(
            info[..7],
            [
                "id=1",
                "region=local",
                "addr=127.0.0.1",
                "port=4444",
                "status=ACTIVE",
                "rtt_ms=0.000",
                "owned_tables=1"
            ]
        );
        assert_eq!(
            info[8..],
            ["member=true", "uptime_s=0", "config_epoch=0", "joint=false"]
        );
        assert!(matches!(
            node_info(&t, "01"),
            Err(CommandError::UnknownNode(_))
        ));
        assert!(matches!(
            node_info(&t, "2"),
            Err(CommandError::UnknownNode(_))
        ));
        let me = "id=1 region=local addr=127.0.0.1 port=4444";
        assert_eq!(
            text(quorum_info(&t, "USERS")),
            ["Q1 size=1", me, "Q2 size=1", me]
        );
        assert_eq!(
            text(table_info(&t, "USERS")),
            [
                "owner=1",
                "ballot=1.1",
                "region=local",
                "lease_until=unbounded",
                "last_slot=17",
                "table=USERS",
                "fn=0",
                "fz=0",
                "configured_fn=1",
                "configured_fz=0",
                "group=-",
                "replication=global",
                "pinned=-"
            ]
        );
        assert_eq!(
            text(table_list(&t)),
            ["TABLE USERS owner=1 region=local group=- replication=global pinned=- last_slot=17"]
        );
    }

    fn facts(region: &str, status: PeerStatus, rtt_ms: Option<f64>) -> NodeFacts {
        NodeFacts {
            region: region.into(),
            host: format!("h-{region}"),
            port: 1,
            status,
            rtt_ms,
            last_seen_ms: None,
            member: true,
        }
    }

    #[test]
    fn a_cluster_reports_leases_owners_and_the_quorums_of_its_quorum_system() {
        // Two zones of two; fn=1 is too much for zones of two (reduced to 0), fz=1 too.
        let membership = Membership::new([
            (1, "a".to_string()),
            (2, "a".to_string()),
            (3, "b".to_string()),
            (4, "b".to_string()),
        ]);
        let configured = Tolerances { nodes: 1, zones: 1 };
        let mut nodes = BTreeMap::new();
        nodes.insert(1, facts("a", PeerStatus::Active, Some(0.0)));
        nodes.insert(2, facts("a", PeerStatus::Down, None));
        nodes.insert(3, facts("b", PeerStatus::Active, Some(40.0)));
        nodes.insert(4, facts("b", PeerStatus::Active, Some(30.0)));
        let tables = BTreeMap::from([
            (
                "T".to_string(),
                TableState {
                    owner: Some(3),
                    ballot: Some(Ballot::new(7, 3)),
                    lease: Lease::NotHere,
                    last_slot: 9,
                    pinned: Some("b".into()),
                },
            ),
            (
                "MINE".to_string(),
                TableState {
                    owner: Some(1),
                    ballot: Some(Ballot::new(2, 1)),
                    lease: Lease::Until(61_000),
                    last_slot: 1,
                    pinned: None,
                },
            ),
        ]);
        let t = Topology {
            me: 1,
            nodes,
            quorums: QuorumSystem::new(&membership, configured),
            configured,
            tables,
            owned: BTreeMap::from([(1, 1), (3, 1)]),
            uptime_s: 5,
            config: ConfigState {
                epoch: 4,
                joint: false,
            },
        };
        let info = text(table_info(&t, "T"));
        assert_eq!(
            info[..5],
            [
                "owner=3",
                "ballot=7.3",
                "region=b",
                "lease_until=none",
                "last_slot=9"
            ]
        );
        assert_eq!(
            info[6..10],
            ["fn=0", "fz=0", "configured_fn=1", "configured_fz=1"]
        );
        assert_eq!(info.last().map(String::as_str), Some("pinned=b"));
        assert!(
            text(table_list(&t))
                .iter()
                .any(|l| l.starts_with("TABLE T ") && l.contains(" pinned=b "))
        );
        assert_eq!(
            text(table_info(&t, "MINE"))[3],
            "lease_until=1970-01-01T00:01:01Z"
        );
        assert_eq!(
            text(table_info(&t, "NEW"))[..3],
            ["owner=none", "ballot=none", "region=-"]
        );
        // fn=0 fz=0: Q1 one node of each zone, Q2 every node of the owner's zone; the owner
        // first, then ACTIVE nodes before DOWN ones.
        assert_eq!(
            text(quorum_info(&t, "T")),
            [
                "Q1 size=2",
                "id=3 region=b addr=h-b port=1",
                "id=1 region=a addr=h-a port=1",
                "Q2 size=2",
                "id=3 region=b addr=h-b port=1",
                "id=4 region=b addr=h-b port=1"
            ]
        );
        let other = text(node_info(&t, "3").unwrap());
        assert!(other.contains(&"owned_tables=1".to_string()), "{other:?}");
        assert!(
            !other.iter().any(|l| l.starts_with("uptime_s")),
            "only for the node answering"
        );
        assert_eq!(
            text(node_info(&t, "1").unwrap()).last().unwrap(),
            "joint=false"
        );
    }
}
