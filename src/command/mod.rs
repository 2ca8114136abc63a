//! Executes parsed commands against the engine: ACL checks, WORM rules, system tables.
//!
//! Storage calls block (RocksDB, fsync), so each runs on tokio's blocking pool; concurrent
//! writers therefore reach RocksDB together and share WAL syncs.

mod cluster_info;
mod clustered;

use std::sync::Arc;
use std::time::Instant;

use crate::kv::Refusal;
use crate::protocol::{Command, Reply};
use crate::storage::{StorageError, Store};

pub use crate::kv::{Write, WriteOp};

/// One `TABLE LIST` line. Groups, pins and replication levels are not configurable yet:
/// every table is its own group, unpinned, replicated with the grid quorums (`global`).
pub(crate) fn table_list_line(
    table: &str,
    owner: Option<u64>,
    region: Option<&str>,
    last_slot: u64,
) -> Vec<u8> {
    format!(
        "TABLE {table} owner={} region={} group=- replication=global pinned=- last_slot={last_slot}",
        owner.map_or("none".to_string(), |o| o.to_string()),
        region.unwrap_or("-"),
    )
    .into_bytes()
}

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

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The rules refused it (ACL, WORM lock, system table, blob read as a value).
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("internal error: {0}")]
    Storage(#[from] StorageError),
    #[error("internal error: request task failed")]
    TaskFailed,
    #[error("internal error: {0} is not a read")]
    NotARead(&'static str),
}

impl CommandError {
    /// Short label for the errors-by-kind metric.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandError::Refused(refusal) => refusal.kind(),
            CommandError::UnknownNode(_) => "unknown_node",
            CommandError::Storage(_) => "storage",
            CommandError::TaskFailed | CommandError::NotARead(_) => "internal",
        }
    }
}

pub use crate::kv::now_ms;

/// The single-node engine: storage plus this node's identity.
pub struct Engine {
    store: Arc<Store>,
    node: NodeIdentity,
    started: Instant,
    /// Set when the node runs as part of a cluster: commands then go through consensus.
    cluster: std::sync::OnceLock<crate::cluster::runtime::ClusterHandle>,
}

impl Engine {
    /// Opens the engine over `store` and records this node in the `ATLAS.NODES` system table.
    pub fn new(store: Arc<Store>, node: NodeIdentity) -> Result<Engine, StorageError> {
        let record = format!(
            "id={} region={} addr={} port={}",
            node.id, node.region, node.host, node.port
        );
        let key = crate::protocol::Key::system(&format!("ATLAS.NODES.{}", node.id));
        store.put_system(&key, record.into_bytes(), now_ms())?;
        Ok(Engine {
            store,
            node,
            started: Instant::now(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Routes every later command through the cluster runtime.
    pub fn attach_cluster(&self, cluster: crate::cluster::runtime::ClusterHandle) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&crate::cluster::runtime::ClusterHandle> {
        self.cluster.get()
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
        let current = match self.cluster.get() {
            Some(cluster) => {
                let barrier = cluster.barrier(vec![table.clone()]).await;
                if barrier != Reply::Ok {
                    return Err(barrier);
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
        let Some(cluster) = self.cluster.get() else {
            return self
                .blocking(|e| Ok(e.store.purge_expired(now_ms())?))
                .await;
        };
        let owned: Vec<String> = cluster
            .view()
            .groups
            .iter()
            .filter(|(name, g)| g.is_owner && !crate::protocol::key::is_system_table(name))
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
            removed += usize::from(cluster.write(write).await == Reply::Ok);
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
        if let Some(cluster) = self.cluster.get() {
            let tables = self.prefix_tables(cluster, "").await?;
            let barrier = cluster.barrier(tables).await;
            if barrier != Reply::Ok {
                return Ok(barrier);
            }
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
        let result = match self.cluster.get() {
            Some(cluster) => {
                self.execute_clustered(cluster, principal, command, blob)
                    .await
            }
            None => self.execute_here(principal, command, blob).await,
        };
        if let Err(CommandError::Storage(inner)) = &result {
            tracing::error!(error = %inner, "storage failure");
        }
        result
    }

    /// A standalone node: every command on this node's storage at once.
    async fn execute_here(
        self: &Arc<Self>,
        principal: Option<String>,
        command: Command,
        blob: Option<Vec<u8>>,
    ) -> Result<Reply, CommandError> {
        match command {
            Command::NodeList => Ok(self.node_list()),
            Command::NodeInfo(id) => self.blocking(move |e| e.node_info(&id)).await,
            Command::NodePing(id) => self.node_ping(&id).await,
            Command::QuorumInfo(table) => Ok(self.quorum_info(&table)),
            Command::TableInfo(table) => self.blocking(move |e| e.table_info(&table)).await,
            Command::TableList => self.blocking(|e| e.table_list()).await,
            // Session commands are handled by the connection, which owns the principal and
            // the staged transaction.
            command if command.is_session() => Ok(Reply::Ok),
            command if command.is_read() => {
                self.blocking(move |e| e.read_now(principal.as_deref(), &command))
                    .await
            }
            command => {
                let write = Engine::judge(command, principal, blob)?;
                self.blocking(move |e| e.apply_write(&write)).await
            }
        }
    }
}
