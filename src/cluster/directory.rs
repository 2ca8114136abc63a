//! The node directory: who the members are and where they listen, kept in the `ATLAS.NODES`
//! system table (one record per node, `id=… region=… addr=… port=…`). A node writes its own
//! record when it starts; the records of other nodes arrive through the `atlas` log (a join
//! commits the new node's record before the node itself), or from the join answer.

use std::collections::BTreeMap;

use crate::consensus::NodeId;
use crate::protocol::Key;
use crate::storage::{StorageError, Store};

/// The system-table prefix of node records.
pub const NODES_PREFIX: &str = "ATLAS.NODES.";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub region: String,
    /// The host other nodes connect to (and verify the certificate for).
    pub host: String,
    pub port: u16,
}

impl NodeRecord {
    /// `host:port`, bracketing an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn encode(&self) -> String {
        format!(
            "id={} region={} addr={} port={}",
            self.id, self.region, self.host, self.port
        )
    }

    pub fn decode(text: &str) -> Option<NodeRecord> {
        let mut fields = BTreeMap::new();
        for part in text.split_whitespace() {
            let (name, value) = part.split_once('=')?;
            fields.insert(name, value);
        }
        Some(NodeRecord {
            id: fields.get("id")?.parse().ok()?,
            region: fields.get("region")?.to_string(),
            host: fields.get("addr")?.to_string(),
            port: fields.get("port")?.parse().ok()?,
        })
    }

    pub fn key(&self) -> Key {
        Key::system(&format!("{NODES_PREFIX}{}", self.id))
    }
}

/// Every node record in `store`, by id.
pub fn load(store: &Store) -> Result<BTreeMap<NodeId, NodeRecord>, StorageError> {
    let mut out = BTreeMap::new();
    for (_, record, _) in store.scan(NODES_PREFIX, i64::MIN)? {
        let crate::storage::record::Body::Inline(value) = &record.body else {
            continue;
        };
        if let Some(node) = NodeRecord::decode(&String::from_utf8_lossy(value)) {
            out.insert(node.id, node);
        }
    }
    Ok(out)
}

/// Stores (or replaces) one record.
pub fn save(store: &Store, node: &NodeRecord) -> Result<(), StorageError> {
    store.put_system(&node.key(), node.encode().into_bytes(), crate::kv::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_none() {
        let node = NodeRecord {
            id: 7,
            region: "eu".into(),
            host: "::1".into(),
            port: 4444,
        };
        assert_eq!(NodeRecord::decode(&node.encode()), Some(node.clone()));
        assert_eq!(node.address(), "[::1]:4444");
        assert_eq!(NodeRecord::decode("id=x region=a addr=b port=1"), None);
        assert_eq!(NodeRecord::decode("id=1 region=a addr=b"), None);
        assert_eq!(NodeRecord::decode("garbage"), None);
    }
}
