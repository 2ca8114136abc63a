//! Opening a node from its configuration: data directory, storage, node id, engine.

use std::path::Path;
use std::sync::Arc;

use crate::command::{Backend, Engine, NodeIdentity};
use crate::config::AtlasConfig;
use crate::storage::{StorageError, Store};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("cannot open storage in {dir}: {source}")]
    Storage { dir: String, source: StorageError },
    /// The cluster identity could not be read, or the runtime could not start.
    #[error("{0}")]
    Cluster(String),
}

impl OpenError {
    /// Another process holds the storage lock (RocksDB's LOCK file).
    pub fn is_locked(&self) -> bool {
        matches!(self, OpenError::Storage { source, .. } if source.to_string().contains("lock"))
    }
}

pub use crate::cluster::identity::FIRST_NODE_ID;

/// How a cluster member reaches its peers: its identity and the transport to use.
pub struct Membership<'a> {
    pub identity: &'a crate::cluster::identity::ClusterIdentity,
    pub transport: Arc<dyn crate::cluster::runtime::Transport>,
}

/// Opens (or creates) the node's storage under `data_dir/db` and builds its engine: a
/// standalone one, or with `cluster` a member whose runtime has started.
pub fn open(
    config: &AtlasConfig,
    cluster: Option<Membership<'_>>,
) -> Result<Arc<Engine>, OpenError> {
    let dir = config.data_dir.display().to_string();
    crate::files::private_dir(&config.data_dir).map_err(|source| OpenError::DataDir {
        dir: dir.clone(),
        source,
    })?;
    let storage_error = |source| OpenError::Storage {
        dir: dir.clone(),
        source,
    };
    let store = Arc::new(
        Store::open_with(
            &config.data_dir.join("db"),
            config.durability,
            config.rocksdb_statistics,
        )
        .map_err(storage_error)?,
    );
    store
        .feed()
        .set_max_bytes(usize::try_from(config.limits.watch_history_bytes).unwrap_or(usize::MAX));
    // A cluster member's id comes from its cluster identity (given by the cluster on join).
    let id = match crate::cluster::identity::ClusterIdentity::load(&config.data_dir)
        .map_err(|e| OpenError::Cluster(format!("cluster identity: {e}")))?
    {
        Some(identity) => {
            store
                .put_meta("node_id", &identity.node_id.to_be_bytes())
                .map_err(storage_error)?;
            identity.node_id
        }
        None => node_id(&store).map_err(storage_error)?,
    };
    let (host, port) = config.advertised_host_port();
    let identity = NodeIdentity {
        id,
        region: config.region.clone(),
        host,
        port,
        configured_fn: config.fn_,
        configured_fz: config.fz,
    };
    let backend = match cluster {
        Some(Membership {
            identity: membership,
            transport,
        }) => {
            // Recorded before the runtime starts: its directory is read from storage.
            Engine::record_node(&store, &identity).map_err(storage_error)?;
            let handle = crate::cluster::bootstrap::start(config, membership, &store, transport)
                .map_err(OpenError::Cluster)?;
            Backend::Cluster(handle)
        }
        None => Backend::Standalone,
    };
    Ok(Arc::new(
        Engine::new(store, identity, backend).map_err(storage_error)?,
    ))
}

/// The stored node id, created on first start.
fn node_id(store: &Store) -> Result<u64, StorageError> {
    if let Some(bytes) = store.get_meta("node_id")? {
        let array: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::Corrupt("node_id".into()))?;
        return Ok(u64::from_be_bytes(array));
    }
    store.put_meta("node_id", &FIRST_NODE_ID.to_be_bytes())?;
    Ok(FIRST_NODE_ID)
}

/// Removes a socket file left by a process that is gone, so the listener can bind.
/// Refuses to remove anything that is not a socket, and a socket someone still answers on.
pub fn clear_stale_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "{} exists and is not a socket; move it away or choose another atlas.socket",
            path.display()
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is in use by a running server (another atlas on the same data?)",
            path.display()
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))
}
