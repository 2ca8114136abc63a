//! Where tables live: pins (`TABLE PIN` / `TABLE UNPIN`) and planned moves (`TABLE MOVE`).
//! Both are records of the `atlas` group, so every node learns them at the same position of
//! that log and a node that restarts or joins finds the pins in its `ATLAS.TABLES.` system
//! table (one record per pinned table: `pinned=<region>`; an unpinned table has none).
//!
//! What they do is the owner's: the cluster layer hands a pinned table to an active node of
//! its region when its owner is elsewhere (checked every few hundred milliseconds), and the
//! consensus core keeps the adaptive policy from moving a pinned table away. A move is an
//! event, not state: whoever owns the table when the record applies hands it to an active
//! node of the region (for a few seconds, while none is active or the owner is changing),
//! and the policy may move it again later. When a pinned table's region is down, failover
//! elects an owner elsewhere (availability beats the pin); it is handed back once a node of
//! the region is active again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::consensus::{ClientOp, Membership, Node, NodeId, SYSTEM_GROUP, Zone};
use crate::protocol::Key;
use crate::storage::{StorageError, Store};

/// The system-table prefix of table placement records.
pub const TABLES_PREFIX: &str = "ATLAS.TABLES.";

/// One placement change of `table`, as it travels in the `atlas` log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRecord {
    pub table: String,
    /// The region the table is pinned to after this record (`None`: unpinned).
    pub pinned: Option<Zone>,
    /// A planned move to this region (`TABLE MOVE`); not kept once applied.
    pub move_to: Option<Zone>,
}

impl PlacementRecord {
    /// `table=<t> pinned=<r|-> move=<r|->`: names and regions are single words.
    pub fn encode(&self) -> String {
        format!(
            "table={} pinned={} move={}",
            self.table,
            self.pinned.as_deref().unwrap_or("-"),
            self.move_to.as_deref().unwrap_or("-")
        )
    }

    pub fn decode(text: &str) -> Option<PlacementRecord> {
        let mut fields = BTreeMap::new();
        for part in text.split_whitespace() {
            let (name, value) = part.split_once('=')?;
            fields.insert(name, value);
        }
        let region = |name: &str| -> Option<Option<Zone>> {
            let value = *fields.get(name)?;
            Some((value != "-").then(|| value.to_string()))
        };
        Some(PlacementRecord {
            table: fields.get("table")?.to_string(),
            pinned: region("pinned")?,
            move_to: region("move")?,
        })
    }

    /// Where the table's pin is kept.
    pub fn key(&self) -> Key {
        Key::system(&format!("{TABLES_PREFIX}{}", self.table))
    }

    /// The stored form: the pin alone.
    pub fn stored(&self) -> Option<String> {
        self.pinned.as_ref().map(|zone| format!("pinned={zone}"))
    }
}

/// Magic byte of placement records in the `atlas` log (next to node records').
pub const PLACEMENT_MAGIC: u8 = 0xA9;

/// The consensus operation that commits `record`.
pub fn placement_op(record: &PlacementRecord) -> ClientOp {
    let mut value = vec![PLACEMENT_MAGIC];
    value.extend_from_slice(record.encode().as_bytes());
    ClientOp::put(
        format!(
            "{SYSTEM_GROUP}.tables.{}",
            record.table.to_ascii_lowercase()
        ),
        value,
    )
}

/// Every pin in `store`: table → region.
pub fn load_pins(store: &Store) -> Result<BTreeMap<String, Zone>, StorageError> {
    let mut out = BTreeMap::new();
    for (key, record, _) in store.scan(TABLES_PREFIX, i64::MIN)? {
        let crate::storage::record::Body::Inline(value) = &record.body else {
            continue;
        };
        let text = String::from_utf8_lossy(value);
        let (Some(table), Some(zone)) = (
            key.strip_prefix(TABLES_PREFIX),
            text.strip_prefix("pinned="),
        ) else {
            continue;
        };
        out.insert(table.to_string(), zone.to_string());
    }
    Ok(out)
}

/// How often an owner checks its pinned tables and pending moves.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long a planned move is tried (while no node of the region is active, or the owner
/// is changing) before it is given up; `TABLE MOVE` waits about as long.
pub const MOVE_PATIENCE: Duration = Duration::from_secs(10);

/// The pins and pending moves one node knows, and the owner's duty of acting on them.
pub struct Placements {
    pins: BTreeMap<String, Zone>,
    moves: Vec<(String, Zone, Instant)>,
    next_check: Instant,
}

impl Placements {
    /// No pins, no moves.
    pub fn empty() -> Placements {
        Placements {
            pins: BTreeMap::new(),
            moves: Vec::new(),
            next_check: Instant::now(),
        }
    }

    /// The pins kept in `store`, handed to the consensus core.
    pub fn load(store: &Store, node: &mut Node) -> Result<Placements, StorageError> {
        let mut placements = Placements::empty();
        placements.reload(store, node)?;
        Ok(placements)
    }

    /// Reads the pins again (a snapshot of `atlas` was installed).
    pub fn reload(&mut self, store: &Store, node: &mut Node) -> Result<(), StorageError> {
        let pins = load_pins(store)?;
        for table in self.pins.keys().filter(|t| !pins.contains_key(*t)) {
            node.set_pinned(&node.group_of(table), false);
        }
        for table in pins.keys() {
            node.set_pinned(&node.group_of(table), true);
        }
        self.pins = pins;
        Ok(())
    }

    /// Records applied from the `atlas` log, in order.
    pub fn applied(&mut self, records: Vec<PlacementRecord>, node: &mut Node) {
        for record in records {
            let group = node.group_of(&record.table);
            node.set_pinned(&group, record.pinned.is_some());
            match record.pinned {
                Some(zone) => self.pins.insert(record.table.clone(), zone),
                None => self.pins.remove(&record.table),
            };
            if let Some(zone) = record.move_to {
                self.moves
                    .push((record.table, zone, Instant::now() + MOVE_PATIENCE));
            }
        }
    }

    /// Table → region of every pin.
    pub fn pins(&self) -> &BTreeMap<String, Zone> {
        &self.pins
    }

    /// Hands the tables this node owns outside their pinned or requested region to an
    /// active node of it (`active(members, zone)`: the active members of a zone, best first).
    /// Cheap when due rarely: nothing is read before the check is due.
    pub fn enforce(
        &mut self,
        now: u64,
        node: &mut Node,
        active: impl Fn(&Membership, &str) -> Vec<NodeId>,
    ) {
        if (self.pins.is_empty() && self.moves.is_empty()) || Instant::now() < self.next_check {
            return;
        }
        self.next_check = Instant::now() + CHECK_EVERY;
        let mut wanted: Vec<(String, Zone)> = self
            .pins
            .iter()
            .map(|(t, z)| (t.clone(), z.clone()))
            .collect();
        self.moves.retain(|(_, _, until)| Instant::now() < *until);
        wanted.extend(self.moves.iter().map(|(t, z, _)| (t.clone(), z.clone())));
        for (table, zone) in wanted {
            let group = node.group_of(&table);
            if !node.is_owner(&group) {
                continue;
            }
            if *node.zone() == zone {
                // Where it should be: a move asked for is done.
                self.moves.retain(|(t, z, _)| !(*t == table && *z == zone));
                continue;
            }
            let Some(target) = active(node.membership(), &zone)
                .into_iter()
                .find(|n| *n != node.id())
            else {
                continue;
            };
            if node.hand_off(now, &group, target) {
                tracing::info!(table = %table, region = %zone, target, "handing a table to its region");
                self.moves.retain(|(t, z, _)| !(*t == table && *z == zone));
            }
        }
    }
}

/// Applies the pins the configuration declares (`atlas.tables:`), once the cluster answers:
/// each that the cluster does not have yet is committed (idempotent: every node that
/// declares the same pin commits the same record). Retried for a minute while the cluster
/// is not ready (a node starting alone waits for its peers).
pub async fn apply_declared(
    cluster: &super::runtime::ClusterHandle,
    declared: BTreeMap<String, Zone>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (table, region) in declared {
        loop {
            if cluster.view().pins.get(&table) == Some(&region) {
                break;
            }
            match cluster.pin(&table, Some(region.clone())).await {
                Ok(()) => {
                    tracing::info!(table = %table, region = %region, "pinned as atlas.tables declares");
                    break;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(table = %table, region = %region, error = %e, "could not apply the pin atlas.tables declares");
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_junk_is_refused() {
        for record in [
            PlacementRecord {
                table: "ORDERS".into(),
                pinned: Some("eu".into()),
                move_to: None,
            },
            PlacementRecord {
                table: "ORDERS".into(),
                pinned: None,
                move_to: Some("us".into()),
            },
            PlacementRecord {
                table: "T".into(),
                pinned: None,
                move_to: None,
            },
        ] {
            assert_eq!(PlacementRecord::decode(&record.encode()), Some(record));
        }
        for junk in ["", "table=T", "table=T pinned=eu", "table pinned=- move=-"] {
            assert_eq!(PlacementRecord::decode(junk), None, "{junk}");
        }
    }
}
