//! Commands on a node that is part of a cluster. Writes are committed through the table's
//! owner (every replica applies them with the same rules, and the answer is the verdict of the
//! write's own application). Reads wait for a read barrier on their table (or tables, for a
//! SCAN/COUNT prefix that names none) and then read local storage, which is linearizable.
//! NODE/QUORUM/TABLE commands report the cluster as the runtime last saw it, with peer status
//! and round trips from health checks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::runtime::{ClusterHandle, ClusterView};
use crate::consensus::{NodeId, SYSTEM_GROUP};
use crate::protocol::duration::format_rfc3339_ms;
use crate::protocol::key::is_system_table;
use crate::protocol::{Command, Reply};

use super::{CommandError, Engine, now_ms};

impl Engine {
    pub(super) async fn execute_clustered(
        self: &Arc<Self>,
        cluster: &ClusterHandle,
        principal: Option<String>,
        command: Command,
        blob: Option<Vec<u8>>,
    ) -> Result<Reply, CommandError> {
        match command {
            Command::NodeList => Ok(node_list(cluster)),
            Command::NodeInfo(id) => node_info(cluster, &id, self.started),
            Command::NodePing(id) => self.cluster_ping(cluster, &id).await,
            Command::QuorumInfo(table) => Ok(quorum_info(cluster, &table)),
            Command::TableInfo(table) => Ok(table_info(cluster, &table)),
            Command::TableList => {
                let tables = self.prefix_tables(cluster, "").await?;
                Ok(table_list(cluster, &tables))
            }
            command if command.is_session() => Ok(Reply::Ok),
            command if command.is_read() => {
                let tables = match &command {
                    Command::Get(key) | Command::BlobGet(key) | Command::Version(key) => {
                        vec![key.table().to_string()]
                    }
                    Command::Scan(scan) => self.prefix_tables(cluster, &scan.prefix).await?,
                    Command::Count(prefix) => self.prefix_tables(cluster, prefix).await?,
                    _ => Vec::new(),
                };
                let barrier = cluster.barrier(tables).await;
                if barrier != Reply::Ok {
                    return Ok(barrier);
                }
                self.blocking(move |e| e.read_now(principal.as_deref(), &command))
                    .await
            }
            command => Ok(cluster
                .write(Engine::judge(command, principal, blob)?)
                .await),
        }
    }

    /// The tables a SCAN/COUNT prefix touches: its own table when it names one (`USERS.` or
    /// `USERS.A`); otherwise every table stored here or heard of by the consensus core (a
    /// table another node created may not have reached this node's storage yet) whose name
    /// starts with it.
    pub(super) async fn prefix_tables(
        self: &Arc<Self>,
        cluster: &ClusterHandle,
        prefix: &str,
    ) -> Result<Vec<String>, CommandError> {
        if let Some((table, _)) = prefix.split_once('.') {
            return Ok(vec![table.to_string()]);
        }
        // Listing stored tables walks the values family: on the blocking pool.
        let stored = self.blocking(|e| Ok(e.store.tables()?)).await?;
        let tables: BTreeSet<String> = stored
            .into_iter()
            .chain(cluster.view().groups.into_keys())
            .filter(|t| t.starts_with(prefix) && !is_system_table(t))
            .collect();
        Ok(tables.into_iter().collect())
    }

    async fn cluster_ping(
        self: &Arc<Self>,
        cluster: &ClusterHandle,
        id: &str,
    ) -> Result<Reply, CommandError> {
        let view = cluster.view();
        let node = parse_member(&view, id)?;
        if node == cluster.id() {
            let start = Instant::now();
            self.blocking(|e| Ok(e.store.get_meta("node_id")?)).await?;
            let rtt = start.elapsed().as_secs_f64() * 1000.0;
            return Ok(Reply::line(format!("PONG node={node} rtt_ms={rtt:.3}")));
        }
        let Some(record) = view.directory.get(&node) else {
            return Ok(Reply::warn(format!("node {node} has no known address yet")));
        };
        match cluster.ping(record).await {
            Ok(rtt) => Ok(Reply::line(format!(
                "PONG node={node} rtt_ms={:.3}",
                rtt.as_secs_f64() * 1000.0
            ))),
            Err(e) => Ok(Reply::warn(format!("node {node} did not answer: {e}"))),
        }
    }
}

/// TABLE LIST from the cluster view: one line per table stored here or known to the core.
fn table_list(cluster: &ClusterHandle, tables: &[String]) -> Reply {
    let view = cluster.view();
    let lines = tables
        .iter()
        .map(|table| {
            let group = view.groups.get(table).cloned().unwrap_or_default();
            let region = group.owner.and_then(|o| view.members.zone_of(o).cloned());
            super::table_list_line(table, group.owner, region.as_deref(), group.applied)
        })
        .collect();
    Reply::Lines(lines)
}

/// TABLE INFO from the cluster view (see docs/protocol.md).
fn table_info(cluster: &ClusterHandle, table: &str) -> Reply {
    let view = cluster.view();
    let group = view.groups.get(table).cloned().unwrap_or_default();
    let owner = group.owner;
    let region = owner
        .and_then(|o| view.members.zone_of(o).cloned())
        .unwrap_or_else(|| "-".to_string());
    let effective = view.effective.unwrap_or(cluster.configured());
    let configured = cluster.configured();
    let lines = [
        format!(
            "owner={}",
            owner.map_or("none".to_string(), |o| o.to_string())
        ),
        format!(
            "ballot={}",
            group
                .ballot
                .filter(|b| !b.is_zero())
                .map_or("none".to_string(), |b| format!("{}.{}", b.counter, b.node))
        ),
        format!("region={region}"),
        // Leases are held by the owner; this node reports whether that is itself.
        format!(
            "lease={}",
            if group.is_owner {
                "held_here"
            } else {
                "elsewhere"
            }
        ),
        format!("last_slot={}", group.applied),
        format!("table={table}"),
        format!("fn={}", effective.nodes),
        format!("fz={}", effective.zones),
        format!("configured_fn={}", configured.nodes),
        format!("configured_fz={}", configured.zones),
        "group=-".to_string(),
        "replication=global".to_string(),
        "pinned=-".to_string(),
    ];
    lines_reply(lines)
}

fn lines_reply(lines: impl IntoIterator<Item = String>) -> Reply {
    Reply::Lines(lines.into_iter().map(String::into_bytes).collect())
}

/// Members: of the configuration in force, plus any node with a record that was never
/// removed (joining).
fn known_nodes(view: &ClusterView) -> BTreeSet<NodeId> {
    view.members
        .nodes()
        .chain(
            view.directory
                .keys()
                .copied()
                .filter(|n| !view.removed.contains(n)),
        )
        .collect()
}

fn parse_member(view: &ClusterView, id: &str) -> Result<NodeId, CommandError> {
    id.parse::<NodeId>()
        .ok()
        .filter(|n| known_nodes(view).contains(n))
        .ok_or_else(|| CommandError::UnknownNode(id.to_string()))
}

fn fields(view: &ClusterView, node: NodeId) -> (String, String, String) {
    let record = view.directory.get(&node);
    let region = view
        .members
        .zone_of(node)
        .cloned()
        .or_else(|| record.map(|r| r.region.clone()))
        .unwrap_or_else(|| "-".into());
    let host = record.map_or("-".to_string(), |r| r.host.clone());
    let port = record.map_or("0".to_string(), |r| r.port.to_string());
    (region, host, port)
}

fn rtt_text(rtt: Option<f64>) -> String {
    rtt.map_or("-".to_string(), |r| format!("{r:.3}"))
}

fn node_list(cluster: &ClusterHandle) -> Reply {
    let view = cluster.view();
    lines_reply(known_nodes(&view).into_iter().map(|node| {
        let (region, host, port) = fields(&view, node);
        let (status, rtt, _) = cluster.peer_health(node);
        format!(
            "NODE id={node} region={region} status={status} rtt_ms={} addr={host} port={port}",
            rtt_text(rtt)
        )
    }))
}

fn node_info(cluster: &ClusterHandle, id: &str, started: Instant) -> Result<Reply, CommandError> {
    let view = cluster.view();
    let node = parse_member(&view, id)?;
    let (region, host, port) = fields(&view, node);
    let (status, rtt, last_seen) = cluster.peer_health(node);
    let owned = view
        .groups
        .iter()
        .filter(|(g, v)| v.owner == Some(node) && g.as_str() != SYSTEM_GROUP)
        .count();
    let last_seen = last_seen.map_or("never".to_string(), |at| {
        format_rfc3339_ms(now_ms() - at.elapsed().as_millis() as i64)
    });
    let mut lines = vec![
        format!("id={node}"),
        format!("region={region}"),
        format!("addr={host}"),
        format!("port={port}"),
        format!("status={status}"),
        format!("rtt_ms={}", rtt_text(rtt)),
        format!("owned_tables={owned}"),
        format!("last_seen={last_seen}"),
        format!("member={}", view.members.contains(node)),
    ];
    if node == cluster.id() {
        lines.push(format!("uptime_s={}", started.elapsed().as_secs()));
        // The membership configuration this node has applied (joint while a change is on).
        lines.push(format!("config_epoch={}", view.epoch));
        lines.push(format!("joint={}", view.joint));
    }
    Ok(lines_reply(lines))
}

/// The quorums the table's owner would use now: Q1 = fn+1 nodes in each of Z−fz zones, Q2 =
/// l_z−fn nodes in each of the fz+1 zones nearest the owner (with the reduced tolerances when
/// the cluster is too small). Nodes are chosen ACTIVE first, then by measured RTT.
fn quorum_info(cluster: &ClusterHandle, table: &str) -> Reply {
    let view = cluster.view();
    let owner = view
        .groups
        .get(table)
        .and_then(|g| g.owner)
        .unwrap_or(cluster.id());
    let owner_zone = view
        .members
        .zone_of(owner)
        .cloned()
        .unwrap_or_else(|| cluster.zone().to_string());
    let t = view.effective.unwrap_or(cluster.configured());
    let zones = view.members.zones();
    // A node's rank: status first, then RTT (unknown last), then id.
    let rank = |n: NodeId| {
        let (status, rtt, _) = cluster.peer_health(n);
        (status, (rtt.unwrap_or(f64::MAX) * 1000.0) as u64, n)
    };
    let zone_rank = |zone: &str| {
        if zone == owner_zone {
            return 0;
        }
        zones
            .get(zone)
            .into_iter()
            .flatten()
            .map(|n| rank(*n).1)
            .min()
            .unwrap_or(u64::MAX)
            .max(1)
    };
    let mut ordered: Vec<&String> = zones.keys().collect();
    ordered.sort_by_key(|z| (zone_rank(z), z.to_string()));
    let pick = |zone: &str, count: usize| -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = zones.get(zone).into_iter().flatten().copied().collect();
        nodes.sort_by_key(|n| {
            let (status, rtt, id) = rank(*n);
            (*n != owner, status, rtt, id)
        });
        nodes.truncate(count);
        nodes
    };
    let q1_zones = zones.len().saturating_sub(t.zones).max(1);
    let q1: Vec<NodeId> = ordered
        .iter()
        .take(q1_zones)
        .flat_map(|z| pick(z, t.nodes + 1))
        .collect();
    let q2: Vec<NodeId> = ordered
        .iter()
        .take(t.zones + 1)
        .flat_map(|z| {
            let size = zones.get(z.as_str()).map_or(0, |s| s.len());
            pick(z, size.saturating_sub(t.nodes).max(1))
        })
        .collect();
    let describe = |node: &NodeId| {
        let (region, host, port) = fields(&view, *node);
        format!("id={node} region={region} addr={host} port={port}")
    };
    let mut lines = vec![format!("Q1 size={}", q1.len())];
    lines.extend(q1.iter().map(describe));
    lines.push(format!("Q2 size={}", q2.len()));
    lines.extend(q2.iter().map(describe));
    lines_reply(lines)
}
