//! Executes parsed commands against the engine: ACL checks, WORM rules, system tables.
//!
//! The engine holds its backend from construction: a standalone node applies writes to its
//! own storage; a cluster member commits them through the table's owner and reads after a
//! read barrier. Either way there is one path for reads and one for writes, and `NODE` /
//! `QUORUM` / `TABLE` answers are rendered from one `Topology`.
//!
//! Storage calls block (RocksDB, fsync), so each runs on tokio's blocking pool; concurrent
//! writers therefore reach RocksDB together and share WAL syncs.

mod group_commit;
mod info;
mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use crate::cluster::error::ClusterError;
use crate::cluster::runtime::ClusterHandle;
use crate::kv::Refusal;
use crate::protocol::key::is_system_table;
use crate::protocol::{Command, Reply};
use crate::storage::{StorageError, Store};

pub use crate::kv::{Write, WriteOp};

use topology::Topology;

/// Who this node is, as reported by `NODE` / `QUORUM` / `TABLE` commands.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub id: u64,
    pub region: String,
    pub host: String,
    pub port: u16,
    /// Tolerances from the configuration; a single node reduces both to 0.
    pub configured_fn: u32,
    pub configured_fz: u32,
}

#[cfg(test)]
impl NodeIdentity {
    /// Node 1 of region `local` at 127.0.0.1:4444, configured `fn: 1`, `fz: 0`.
    pub(crate) fn for_test() -> NodeIdentity {
        NodeIdentity {
            id: 1,
            region: "local".into(),
            host: "127.0.0.1".into(),
            port: 4444,
            configured_fn: 1,
            configured_fz: 0,
        }
    }
}

/// Where commands go: this node's storage alone, or the cluster.
pub enum Backend {
    Standalone,
    Cluster(ClusterHandle),
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The rules refused it (ACL, WORM lock, system table, blob read as a value).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The cluster did not answer with the rules' verdict (timeout, shutdown, …).
    #[error(transparent)]
    Cluster(ClusterError),
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("internal error: {0}")]
    Storage(#[from] StorageError),
    #[error("internal error: request task failed")]
    TaskFailed,
    #[error("internal error: {0} is not a read")]
    NotARead(&'static str),
}

impl From<ClusterError> for CommandError {
    fn from(e: ClusterError) -> Self {
        match e {
            // A refusal is the rules' answer, wherever the write was applied.
            ClusterError::Refused(refusal) => CommandError::Refused(refusal),
            other => CommandError::Cluster(other),
        }
    }
}

impl CommandError {
    /// Short label for the errors-by-kind metric.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Refused(refusal) => refusal.kind(),
            CommandError::Cluster(e) => e.kind(),
            CommandError::UnknownNode(_) => "unknown_node",
            CommandError::Storage(_) => "storage",
            CommandError::TaskFailed | CommandError::NotARead(_) => "internal",
        }
    }
}

pub use crate::kv::now_ms;

/// The engine: storage, this node's identity and its backend.
pub struct Engine {
    store: Arc<Store>,
    node: NodeIdentity,
    started: Instant,
    backend: Backend,
    /// A standalone node's writer (`group_commit.rs`).
    writer: Option<group_commit::GroupCommit>,
}

impl Engine {
    /// The engine over `store`. A standalone node records itself in the `ATLAS.NODES`
    /// system table here; a cluster member's record is written before its runtime starts
    /// ([`Engine::record_node`]), so the runtime's directory holds it.
    pub fn new(
        store: Arc<Store>,
        node: NodeIdentity,
        backend: Backend,
    ) -> Result<Engine, StorageError> {
        let writer = match backend {
            Backend::Standalone => {
                Engine::record_node(&store, &node)?;
                let writer = group_commit::GroupCommit::start(store.clone()).map_err(|e| {
                    StorageError::Corrupt(format!("cannot start the writer thread: {e}"))
                })?;
                Some(writer)
            }
            Backend::Cluster(_) => None,
        };
        Ok(Engine {
            store,
            node,
            started: Instant::now(),
            backend,
            writer,
        })
    }

    /// Writes this node's record (`ATLAS.NODES.<id>`) to `store`.
    pub fn record_node(store: &Store, node: &NodeIdentity) -> Result<(), StorageError> {
        let record = format!(
            "id={} region={} addr={} port={}",
            node.id, node.region, node.host, node.port
        );
        let key = crate::protocol::Key::system(&format!("ATLAS.NODES.{}", node.id));
        store.put_system(&key, record.into_bytes(), now_ms())
    }

    pub fn cluster(&self) -> Option<&ClusterHandle> {
        match &self.backend {
            Backend::Cluster(cluster) => Some(cluster),
            Backend::Standalone => None,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    /// Runs `work` on the blocking pool (storage calls block on I/O).
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&Engine) -> Result<T, CommandError> + Send + 'static,
    ) -> Result<T, CommandError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || work(&engine))
            .await
            .map_err(|_| CommandError::TaskFailed)?
    }

    /// Answers a read from this node's storage now (blocking): what a cluster replica does
    /// once the log says the read may be served.
    pub fn read_now(
        &self,
        principal: Option<&str>,
        command: &Command,
    ) -> Result<Reply, CommandError> {
        match crate::kv::read(&self.store, principal, command, now_ms())? {
            Some(answer) => Ok(answer?),
            None => Err(CommandError::NotARead(command.name())),
        }
    }

    /// Applies a write on this (standalone) node: the rules, then one batch written with
    /// the configured durability.
    pub fn apply_write(&self, write: &Write) -> Result<Reply, CommandError> {
        let mut batch = self.store.batch(write.keys());
        let verdict = crate::kv::apply(&mut batch, write)?;
        batch.write(self.store.is_strict())?;
        Ok(verdict?)
    }

    /// The write a client command asks for, judged now; only for commands whose
    /// `is_write()` holds.
    pub fn judge(
        command: Command,
        principal: Option<String>,
        blob: Option<Vec<u8>>,
    ) -> Result<Write, CommandError> {
        Write::from_command(command, principal, blob, now_ms()).ok_or(CommandError::TaskFailed)
    }

    /// Starts a watch of `prefix` (within one table) for the connection: in a cluster after
    /// a read barrier on the table, so it starts from a revision at least as new as any
    /// write acknowledged before it was asked for.
    pub async fn watch(
        self: &Arc<Self>,
        prefix: &str,
        from: Option<u64>,
    ) -> Result<crate::storage::feed::Subscription, Reply> {
        let table = prefix.split('.').next().unwrap_or(prefix).to_string();
        let current = match self.cluster() {
            Some(cluster) => {
                if let Err(e) = cluster.barrier(vec![table.clone()]).await {
                    return Err(Reply::warn(e.to_string()));
                }
                Some(cluster.view().groups.get(&table).map_or(0, |g| g.applied))
            }
            None => None,
        };
        self.store
            .feed()
            .subscribe(&table, prefix, from, current)
            .map_err(|end| Reply::warn(end.to_string()))
    }

    /// Removes expired values. A single node deletes them itself; a cluster member commits
    /// the removal of those in the tables it owns, through the log (judged by its clock,
    /// at most `EXPIRE_BATCH` per sweep), so every replica removes them alike and watchers
    /// see `DEL` events. Returns how many were removed.
    pub async fn expire_due(self: &Arc<Self>) -> Result<usize, CommandError> {
        const EXPIRE_BATCH: usize = 10_000;
        let Some(cluster) = self.cluster() else {
            return self
                .blocking(|e| Ok(e.store.purge_expired(now_ms())?))
                .await;
        };
        let owned: Vec<String> = cluster
            .view()
            .groups
            .iter()
            .filter(|(name, g)| g.is_owner && !is_system_table(name))
            .map(|(name, _)| name.clone())
            .collect();
        if owned.is_empty() {
            return Ok(0);
        }
        let now = now_ms();
        let keys = self
            .blocking(move |e| Ok(e.store.expired_keys(&owned, now, EXPIRE_BATCH)?))
            .await?;
        let mut removed = 0;
        for key in keys {
            let write = Write {
                key,
                principal: None,
                at_ms: now,
                op: WriteOp::Expire,
            };
            removed += usize::from(matches!(cluster.write(write).await, Ok(Reply::Ok)));
        }
        Ok(removed)
    }

    /// Streams a backup of every client key (one storage snapshot) to `sink`, chunk by
    /// chunk, on the blocking pool. In a cluster every table first passes a read barrier,
    /// so the snapshot holds every write acknowledged before the request (per table).
    pub async fn backup(
        self: &Arc<Self>,
        mut sink: impl FnMut(Vec<u8>) -> bool + Send + 'static,
    ) -> Result<Reply, CommandError> {
        if self.cluster().is_some() {
            let tables = self.tables_under("").await?;
            self.barrier(tables).await?;
        }
        self.blocking(move |e| {
            e.store.backup(now_ms(), &mut sink)?;
            Ok(Reply::Ok)
        })
        .await
    }

    /// Executes one command for `principal` (`blob` is the payload of `KEY BLOB SET`). The
    /// error stays a value so the session can count it by kind before it becomes an
    /// `ERROR WARN` line.
    pub async fn execute(
        self: &Arc<Self>,
        principal: Option<String>,
        command: Command,
        blob: Option<Vec<u8>>,
    ) -> Result<Reply, CommandError> {
        if let Command::Put {
            key,
            principal: Some(recorded),
            ..
        } = &command
        {
            tracing::info!(target: "atlas::audit", key = %key, recorded_principal = %recorded, "KEY PUT");
        }
        let result = self.dispatch(principal, command, blob).await;
        if let Err(CommandError::Storage(inner)) = &result {
            tracing::error!(error = %inner, "storage failure");
        }
        result
    }

    async fn dispatch(
        self: &Arc<Self>,
        principal: Option<String>,
        command: Command,
        blob: Option<Vec<u8>>,
    ) -> Result<Reply, CommandError> {
        match command {
            Command::NodeList => Ok(info::node_list(&self.topology(Vec::new()).await?)),
            Command::NodeInfo(id) => info::node_info(&self.topology(Vec::new()).await?, &id),
            Command::NodePing(id) => self.ping(&id).await,
            Command::QuorumInfo(table) => Ok(info::quorum_info(
                &self.topology(vec![table.clone()]).await?,
                &table,
            )),
            Command::TableInfo(table) => Ok(info::table_info(
                &self.topology(vec![table.clone()]).await?,
                &table,
            )),
            Command::TableList => {
                let tables = self.tables_under("").await?;
                Ok(info::table_list(&self.topology(tables).await?))
            }
            Command::TableMove { table, region } => self.place(&table, &region, false).await,
            Command::TablePin { table, region } => self.place(&table, &region, true).await,
            Command::TableUnpin(table) => match &self.backend {
                Backend::Standalone => Ok(Reply::Ok),
                Backend::Cluster(cluster) => {
                    cluster.pin(&table, None).await?;
                    Ok(Reply::Ok)
                }
            },
            // Session commands are handled by the connection, which owns the principal and
            // the staged transaction.
            command if command.is_session() => Ok(Reply::Ok),
            command if command.is_read() => {
                self.read_barrier(&command).await?;
                // What memory answers is answered here; only a read that needs the disk
                // (or blob chunks, or a scan) takes the hop to the blocking pool.
                if let Some(answer) =
                    crate::kv::read_cached(&self.store, principal.as_deref(), &command, now_ms())?
                {
                    return Ok(answer?);
                }
                self.blocking(move |e| e.read_now(principal.as_deref(), &command))
                    .await
            }
            command => self.commit(Engine::judge(command, principal, blob)?).await,
        }
    }

    /// `TABLE MOVE` (`pin` false) or `TABLE PIN`. A single node is every table's only home:
    /// both succeed for its own region and change nothing.
    async fn place(&self, table: &str, region: &str, pin: bool) -> Result<Reply, CommandError> {
        match &self.backend {
            Backend::Standalone if region == self.node.region => Ok(Reply::Ok),
            Backend::Standalone => Err(CommandError::from(ClusterError::Placement(format!(
                "no member of the cluster is in region {region}"
            )))),
            Backend::Cluster(cluster) if pin => {
                cluster.pin(table, Some(region.to_string())).await?;
                Ok(Reply::Ok)
            }
            Backend::Cluster(cluster) => {
                cluster.move_table(table, region).await?;
                Ok(Reply::Ok)
            }
        }
    }

    /// The one write path: a standalone node applies it here; a cluster member commits it
    /// through the table's owner, and the answer is the verdict of its application here.
    async fn commit(self: &Arc<Self>, write: Write) -> Result<Reply, CommandError> {
        match &self.backend {
            Backend::Standalone => match &self.writer {
                Some(writer) => writer.write(write).await,
                None => self.blocking(move |e| e.apply_write(&write)).await,
            },
            Backend::Cluster(cluster) => Ok(cluster.write(write).await?),
        }
    }

    /// Before `command` reads local storage: nothing on a standalone node; in a cluster,
    /// waits until this node applied every write committed to the tables it reads before
    /// the call, which makes the read linearizable.
    async fn read_barrier(self: &Arc<Self>, command: &Command) -> Result<(), CommandError> {
        if self.cluster().is_none() {
            return Ok(());
        }
        let tables = match command {
            Command::Get(key) | Command::BlobGet(key) | Command::Version(key) => {
                vec![key.table().to_string()]
            }
            Command::Scan(scan) => self.tables_under(&scan.prefix).await?,
            Command::Count(prefix) => self.tables_under(prefix).await?,
            _ => Vec::new(),
        };
        self.barrier(tables).await
    }

    /// In a cluster, waits until this node applied every write committed to `tables`
    /// before the call; nothing on a standalone node.
    async fn barrier(&self, tables: Vec<String>) -> Result<(), CommandError> {
        match &self.backend {
            Backend::Cluster(cluster) if !tables.is_empty() => Ok(cluster.barrier(tables).await?),
            _ => Ok(()),
        }
    }

    /// The tables a SCAN/COUNT prefix touches: its own table when it names one (`USERS.` or
    /// `USERS.A`); otherwise every client table stored here, or in a cluster heard of by the
    /// consensus core (a table another node created may not have reached this node's
    /// storage yet), whose name starts with it.
    async fn tables_under(self: &Arc<Self>, prefix: &str) -> Result<Vec<String>, CommandError> {
        if let Some((table, _)) = prefix.split_once('.') {
            return Ok(vec![table.to_string()]);
        }
        // Listing stored tables walks the values family: on the blocking pool.
        let stored = self.blocking(|e| Ok(e.store.tables()?)).await?;
        let known = self
            .cluster()
            .map(|c| c.view().groups.into_keys().collect::<Vec<_>>())
            .unwrap_or_default();
        let tables: BTreeSet<String> = stored
            .into_iter()
            .chain(known)
            .filter(|t| t.starts_with(prefix) && !is_system_table(t))
            .collect();
        Ok(tables.into_iter().collect())
    }

    /// The topology, with the state of `tables`.
    async fn topology(self: &Arc<Self>, tables: Vec<String>) -> Result<Topology, CommandError> {
        match &self.backend {
            Backend::Cluster(cluster) => Ok(Topology::of_cluster(cluster, &tables, self.started)),
            Backend::Standalone => {
                self.blocking(move |e| {
                    let stored = e.store.tables()?;
                    let mut slots = BTreeMap::new();
                    for table in tables {
                        let slot = e.store.table_slot(&table)?;
                        slots.insert(table, slot);
                    }
                    Ok(Topology::standalone(&e.node, &stored, slots, e.started))
                })
                .await
            }
        }
    }

    /// `NODE PING`: this node times a round trip through its storage path; a cluster
    /// member makes a real authenticated round trip to another node.
    async fn ping(self: &Arc<Self>, id: &str) -> Result<Reply, CommandError> {
        let topology = self.topology(Vec::new()).await?;
        let node = info::known_node(&topology, id)?;
        if node == topology.me {
            let start = Instant::now();
            self.blocking(|e| Ok(e.store.get_meta("node_id")?)).await?;
            let rtt = start.elapsed().as_secs_f64() * 1000.0;
            return Ok(Reply::line(format!("PONG node={node} rtt_ms={rtt:.3}")));
        }
        let Some(cluster) = self.cluster() else {
            return Err(CommandError::UnknownNode(id.to_string()));
        };
        let Some(record) = cluster.view().directory.get(&node).cloned() else {
            return Ok(Reply::warn(format!("node {node} has no known address yet")));
        };
        match cluster.ping(&record).await {
            Ok(rtt) => Ok(Reply::line(format!(
                "PONG node={node} rtt_ms={:.3}",
                rtt.as_secs_f64() * 1000.0
            ))),
            Err(e) => Ok(Reply::warn(format!("node {node} did not answer: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_errors_keep_their_words_and_refusals_stay_refusals() {
        let refusal = Refusal::SystemTable("ATLAS".into());
        let refused = CommandError::from(ClusterError::Refused(refusal.clone()));
        assert!(matches!(&refused, CommandError::Refused(r) if *r == refusal));
        assert_eq!(refused.kind(), "system_table");
        let timeout = CommandError::from(ClusterError::Timeout);
        assert_eq!(timeout.kind(), "timeout");
        assert_eq!(
            timeout.to_string(),
            "timeout: no quorum answered in time; the write may or may not have happened"
        );
        assert_eq!(
            CommandError::from(ClusterError::Stopped).to_string(),
            "unavailable: the cluster runtime stopped"
        );
    }
}
