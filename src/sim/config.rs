//! A run's configuration (all derived from its seed) and its report.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::check::{self, Operation};
use crate::consensus::{MigrationMode, NodeId, Settings, Tolerances};

/// A membership change the simulator asks for at some instant (to a random live member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Starts a fresh node (empty state) and asks the cluster to add it.
    Add {
        node: NodeId,
        zone: usize,
    },
    Remove {
        node: NodeId,
    },
}

/// A planned placement change (`TABLE MOVE` / `TABLE PIN`), as the cluster layer would carry
/// it out: the owner of `group` hands it to a running member of zone `zone`; a pin also marks
/// the group pinned at every running node (so the adaptive policy leaves it alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub group: String,
    pub zone: usize,
    pub pin: bool,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes per zone.
    pub zones: Vec<usize>,
    pub tables: Vec<String>,
    /// Keys per table.
    pub keys: usize,
    pub settings: Settings,
    /// Clients per zone; a zone absent here has none.
    pub clients: BTreeMap<usize, usize>,
    /// Faults happen before this instant only.
    pub fault_until: u64,
    /// Clients stop issuing requests at this instant; the run ends `drain_ms` later.
    pub load_until: u64,
    pub drain_ms: u64,
    pub loss: f64,
    pub duplication: f64,
    pub partitions: usize,
    /// Range of partition lengths, in milliseconds.
    pub partition_ms: (u64, u64),
    pub crashes: usize,
    /// Clock rate error bound, in parts per million.
    pub drift_ppm: i64,
    /// Requests issued this long after faults end must complete within `liveness_bound_ms`.
    pub settle_ms: u64,
    pub liveness_bound_ms: u64,
    /// Membership changes and when they are requested (global ms).
    pub changes: Vec<(u64, Change)>,
    /// A node whose messages (both ways) take up to this many milliseconds longer.
    pub slow: Option<(NodeId, u64)>,
    /// A node that crashes at this instant and never comes back (its clients get
    /// "connection refused"; the others must keep being served).
    pub down: Option<(u64, NodeId)>,
    /// Planned moves and pins, and when they happen (global ms).
    pub placements: Vec<(u64, Placement)>,
}

impl SimConfig {
    /// The randomised configuration of a sweep seed: shape, faults and rates all derive from it.
    pub fn for_seed(seed: u64) -> SimConfig {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_5eed);
        let mut knobs = StdRng::seed_from_u64(seed ^ 0x0c0f_fee5);
        let shapes: [&[usize]; 5] = [&[1], &[3], &[5], &[3, 3, 3], &[2, 2, 1]];
        let zones = shapes[rng.random_range(0..shapes.len())].to_vec();
        let settings = Settings {
            tolerances: Tolerances {
                nodes: rng.random_range(0..2),
                zones: rng.random_range(0..2),
            },
            migration: match rng.random_range(0..10) {
                0 => MigrationMode::Immediate,
                1 => MigrationMode::Static,
                _ => MigrationMode::Adaptive,
            },
            migration_window_ms: 1_000,
            // Small windows and batches, so compaction, snapshots, promise pages, the
            // pipeline window and batch limits are all exercised by small histories. (Drawn
            // from their own stream, so the rest of a seed's shape stays what it was.)
            retain_bytes: knobs.random_range(0..4_000),
            batch_bytes: knobs.random_range(100..2_000),
            max_inflight_bytes: knobs.random_range(300..20_000),
            groups: BTreeMap::from([
                ("orders".to_string(), "shop".to_string()),
                ("items".to_string(), "shop".to_string()),
            ]),
            ..Settings::default()
        };
        let clients = (0..zones.len())
            .map(|z| (z, rng.random_range(1..3)))
            .collect();
        let faulty = rng.random_bool(0.85);
        let nodes: usize = zones.iter().sum();
        let slow = knobs.random_bool(0.3).then(|| {
            (
                knobs.random_range(1..=nodes as NodeId),
                knobs.random_range(50..400),
            )
        });
        SimConfig {
            seed,
            zones,
            tables: vec!["users".into(), "orders".into(), "items".into()],
            keys: 2,
            settings,
            clients,
            fault_until: 4_000,
            load_until: 11_000,
            drain_ms: 3_000,
            loss: if faulty {
                rng.random_range(0.0..0.08)
            } else {
                0.0
            },
            duplication: if faulty {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            },
            partitions: if faulty { rng.random_range(0..3) } else { 0 },
            partition_ms: (200, 3_000),
            crashes: if faulty { rng.random_range(0..3) } else { 0 },
            drift_ppm: 2_000,
            settle_ms: 2_500,
            liveness_bound_ms: 2_500,
            changes: Vec::new(),
            slow,
            down: None,
            placements: Vec::new(),
        }
        .with_changes(&mut rng)
        .with_placements(seed)
    }

    /// One seed in three moves or pins tables under load (from a stream of its own, so the
    /// rest of a seed's shape stays what it was).
    fn with_placements(mut self, seed: u64) -> SimConfig {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x9a7e_d0e5);
        if self.zones.len() < 2 || !rng.random_bool(1.0 / 3.0) {
            return self;
        }
        let groups = ["users", "shop"];
        for _ in 0..rng.random_range(2..5) {
            let at = rng.random_range(500..self.load_until.saturating_sub(1_000));
            let placement = Placement {
                group: groups[rng.random_range(0..groups.len())].to_string(),
                zone: rng.random_range(0..self.zones.len()),
                pin: rng.random_bool(0.5),
            };
            self.placements.push((at, placement));
        }
        self
    }

    /// One seed in four changes membership under load: a node joins (half the time in a
    /// zone of its own), an initial node leaves, maybe another joins; requests are spread
    /// over the run and may overlap (the cluster serialises them).
    fn with_changes(mut self, rng: &mut StdRng) -> SimConfig {
        if !rng.random_bool(0.25) {
            return self;
        }
        self.changes = Self::random_changes(rng, &self.zones, self.load_until);
        self
    }

    pub fn random_changes(rng: &mut StdRng, zones: &[usize], until: u64) -> Vec<(u64, Change)> {
        let initial: usize = zones.iter().sum();
        let mut at = || rng.random_range(300..until.saturating_sub(2_000).max(301));
        let (t1, t2, t3) = (at(), at(), at());
        let new_zone = if rng.random_bool(0.5) {
            zones.len()
        } else {
            rng.random_range(0..zones.len())
        };
        let leaving = rng.random_range(1..=initial as NodeId);
        let mut changes = vec![
            (
                t1,
                Change::Add {
                    node: 101,
                    zone: new_zone,
                },
            ),
            (t2, Change::Remove { node: leaving }),
        ];
        if rng.random_bool(0.5) {
            let zone = rng.random_range(0..=zones.len());
            changes.push((t3, Change::Add { node: 102, zone }));
        }
        changes
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub shape: String,
    pub history: Vec<Operation>,
    pub anomalies: Vec<check::Anomaly>,
    pub violations: Vec<String>,
    pub messages: u64,
    pub completed: usize,
    pub owner_changes: usize,
    /// Planned handoffs an owner made (`SimConfig::placements`).
    pub handoffs: usize,
    /// Snapshots sent to nodes behind a compacted log.
    pub snapshots: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty() && self.violations.is_empty()
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "seed {} [{}] ({} ops, {} completed, {} messages, {} snapshots): replay with Sim::run(SimConfig::for_seed({}))\n",
            self.seed,
            self.shape,
            self.history.len(),
            self.completed,
            self.messages,
            self.snapshots,
            self.seed
        );
        for v in &self.violations {
            s.push_str(&format!("violation: {v}\n"));
        }
        for a in &self.anomalies {
            s.push_str(&a.to_string());
        }
        s
    }
}
