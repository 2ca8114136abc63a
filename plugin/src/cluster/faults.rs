//! The test-only fault layer: peers this node neither sends to nor accepts from (served at
//! `POST /atlas/v1/test/faults` only with `atlas.fault_injection: true`).

use std::collections::BTreeSet;
use std::sync::Mutex;

use atlas::consensus::NodeId;

#[derive(Default)]
pub struct Faults {
    blocked: Mutex<BTreeSet<NodeId>>,
}

impl Faults {
    pub fn blocks(&self, peer: NodeId) -> bool {
        self.blocked
            .lock()
            .map(|b| b.contains(&peer))
            .unwrap_or(false)
    }

    pub fn set(&self, peers: BTreeSet<NodeId>) {
        if let Ok(mut b) = self.blocked.lock() {
            *b = peers;
        }
    }
}
