//! `<data_dir>/cluster.json`: which cluster this node belongs to and as which node. Written
//! by the first node of a cluster when it first starts with `credentials`, or by a joining
//! node from the seed's answer; read on every later start (a restarted node keeps its id).
//! It is a small file rather than a RocksDB record because the join happens before the
//! server starts (and before storage opens), so a failed join stops the start-up.

use std::path::{Path, PathBuf};

use super::directory::NodeRecord;
use crate::consensus::{Membership, NodeId};

pub const FILE_NAME: &str = "cluster.json";

/// The id a node without a cluster gives itself, and a cluster's founder; a joining node
/// gets one from the cluster.
pub const FIRST_NODE_ID: NodeId = 1;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootstrapMember {
    pub id: NodeId,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterIdentity {
    pub node_id: NodeId,
    /// The membership the cluster started from; the `atlas` log holds every change since.
    pub bootstrap: Vec<BootstrapMember>,
    /// Node records known when this file was written (the directory starts from these).
    #[serde(default)]
    pub nodes: Vec<NodeRecord>,
}

impl ClusterIdentity {
    /// The identity of a cluster's first node.
    pub fn founder(region: &str) -> ClusterIdentity {
        ClusterIdentity {
            node_id: FIRST_NODE_ID,
            bootstrap: vec![BootstrapMember {
                id: FIRST_NODE_ID,
                region: region.to_string(),
            }],
            nodes: Vec::new(),
        }
    }

    pub fn bootstrap_membership(&self) -> Membership {
        Membership::new(self.bootstrap.iter().map(|m| (m.id, m.region.clone())))
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE_NAME)
    }

    /// The stored identity, if this node has one.
    pub fn load(data_dir: &Path) -> Result<Option<ClusterIdentity>, String> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the file atomically (temporary file, fsync, rename).
    pub fn save(&self, data_dir: &Path) -> Result<(), String> {
        crate::files::private_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
        let path = Self::path(data_dir);
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::files::write_private(&path, &json).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ClusterIdentity::load(dir.path()), Ok(None));
        let mut id = ClusterIdentity::founder("eu");
        id.node_id = 3;
        id.nodes.push(NodeRecord {
            id: 1,
            region: "eu".into(),
            host: "127.0.0.1".into(),
            port: 4444,
        });
        id.save(dir.path()).unwrap();
        assert_eq!(ClusterIdentity::load(dir.path()), Ok(Some(id.clone())));
        assert_eq!(id.bootstrap_membership().len(), 1);
        std::fs::write(ClusterIdentity::path(dir.path()), "{").unwrap();
        assert!(
            ClusterIdentity::load(dir.path())
                .unwrap_err()
                .contains("cluster.json")
        );
    }
}
