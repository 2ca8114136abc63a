//! Starting a cluster member from its configuration and identity: the consensus settings,
//! a join snapshot installed into the still empty storage, a refusal of data no log holds,
//! the bootstrap directory, then the runtime.

use std::sync::Arc;

use super::identity::ClusterIdentity;
use super::runtime::{ClusterHandle, RuntimeConfig, Transport};
use crate::config::{AtlasConfig, Migration};
use crate::consensus::{MigrationMode, Settings, Tolerances};
use crate::protocol::key::is_system_table;
use crate::storage::Store;

/// The file a joining node streamed the cluster's data into (under `data_dir`), installed
/// at start.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The consensus settings from the configuration.
pub fn settings(config: &AtlasConfig) -> Settings {
    Settings {
        tolerances: Tolerances {
            nodes: config.fn_ as usize,
            zones: config.fz as usize,
        },
        migration: match config.migration {
            Migration::Adaptive => MigrationMode::Adaptive,
            Migration::Immediate => MigrationMode::Immediate,
            Migration::Static => MigrationMode::Static,
        },
        ..Settings::default()
    }
}

/// Prepares `store` for the cluster and starts the runtime over it.
pub fn start(
    config: &AtlasConfig,
    identity: &ClusterIdentity,
    store: &Arc<Store>,
    transport: Arc<dyn Transport>,
) -> Result<ClusterHandle, String> {
    let settings = settings(config);
    install_join_snapshot(config, identity, store, &settings)?;
    // Data written before the node was clustered is in no log: no other node could ever
    // get it, so refuse rather than serve a cluster that silently lacks it.
    if store
        .get_meta("clustered")
        .map_err(|e| e.to_string())?
        .is_none()
    {
        let user_tables = store
            .tables()
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|t| !is_system_table(t))
            .count();
        if user_tables > 0 {
            return Err(format!(
                "{} holds data written while this node ran without atlas.credentials; it \
                 cannot be replicated. Start the cluster from an empty data_dir (and copy the \
                 data in through a client)",
                config.data_dir.display()
            ));
        }
        store
            .put_meta("clustered", b"1")
            .map_err(|e| e.to_string())?;
    }
    for record in &identity.nodes {
        if record.id != identity.node_id {
            super::directory::save(store, record).map_err(|e| e.to_string())?;
        }
    }
    ClusterHandle::start(
        RuntimeConfig {
            id: identity.node_id,
            zone: config.region.clone(),
            bootstrap: identity.bootstrap_membership(),
            settings,
            health: super::health::HealthPolicy::default(),
            snapshot_dir: config.data_dir.join("snapshots"),
        },
        store.clone(),
        transport,
    )
    .map_err(|e| e.to_string())
}

/// A joining node copied a snapshot of the data before it became a member (streamed to disk
/// and verified): installs it into its (still empty) storage, in bounded batches, and
/// removes the file.
fn install_join_snapshot(
    config: &AtlasConfig,
    identity: &ClusterIdentity,
    store: &Store,
    settings: &Settings,
) -> Result<(), String> {
    let snapshot = config.data_dir.join(SNAPSHOT_FILE);
    if !snapshot.exists() {
        return Ok(());
    }
    if store
        .get_meta("clustered")
        .map_err(|e| e.to_string())?
        .is_none()
    {
        let file =
            std::fs::File::open(&snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))?;
        let installed = store
            .install_groups(std::io::BufReader::new(file), &|g| {
                super::replica::group_tables(settings, g)
            })
            .map_err(|e| format!("installing {}: {e}", snapshot.display()))?;
        store
            .put_meta("node_id", &identity.node_id.to_be_bytes())
            .map_err(|e| e.to_string())?;
        // The data came from the cluster: it is in the cluster's groups.
        store
            .put_meta("clustered", b"1")
            .map_err(|e| e.to_string())?;
        tracing::info!(
            groups = installed.len(),
            "installed the snapshot copied from the cluster"
        );
    }
    std::fs::remove_file(&snapshot).map_err(|e| format!("{}: {e}", snapshot.display()))
}
