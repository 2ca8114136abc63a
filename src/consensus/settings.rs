//! Protocol knobs. Times are milliseconds of the node's monotonic clock.

use std::collections::BTreeMap;

use super::ballot::GroupId;
use super::quorum::Tolerances;

/// How ownership moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigrationMode {
    /// Forward to the owner; the owner hands a group to the zone with the majority of its
    /// accesses over a window (the default).
    #[default]
    Adaptive,
    /// Steal on first access (benchmark baseline). Leases are off in this mode, since an
    /// owner's lease would block every steal; reads go through barriers.
    Immediate,
    /// Never move for load; a failed owner is still replaced (benchmark baseline).
    Static,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub tolerances: Tolerances,
    /// How long a promise holds an acceptor back from promising another owner.
    pub lease_ms: u64,
    /// The owner stops trusting its lease this much earlier, covering clock-rate drift
    /// (at least `lease_ms * 2ρ/(1+ρ)` for a drift bound ρ) and scheduling slack.
    pub drift_margin_ms: u64,
    /// Re-send unanswered accepts, prepares and gap-fill requests after this long.
    pub retry_ms: u64,
    pub heartbeat_ms: u64,
    /// A node that has not heard from the owner for this long may take the group over.
    pub suspect_ms: u64,
    /// Random back-off after a lost phase 1, drawn from `[backoff_min_ms, backoff_max_ms)`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// A forwarded request without an answer is re-sent after this long.
    pub forward_retry_ms: u64,
    /// A client request without an answer completes as `Timeout` (outcome unknown).
    pub request_timeout_ms: u64,
    pub migration: MigrationMode,
    pub migration_window_ms: u64,
    /// Fewer accesses than this in a window never move a group.
    pub migration_min_accesses: u64,
    /// Bytes of entries in one accept batch, catch-up reply or promise page (an entry
    /// larger than this goes alone).
    pub batch_bytes: usize,
    /// Bytes of entries an owner has proposed and not yet seen chosen, per group; requests
    /// beyond it wait at the owner (up to the same amount again), then at their origin.
    pub max_inflight_bytes: usize,
    /// Bytes of applied entries the node keeps, over all groups, so peers a little behind
    /// catch up with entries rather than a snapshot.
    pub retain_bytes: usize,
    /// Table → group, for tables that move together. A table not listed is its own group.
    pub groups: BTreeMap<String, GroupId>,
    /// Deliberate bugs for the simulator's mutation tests (it must catch them). Never set
    /// outside tests.
    #[doc(hidden)]
    pub inject: InjectedBugs,
}

/// Switches that break the protocol on purpose, to prove the simulator and checker notice.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InjectedBugs {
    /// Phase 1 ignores accepted-but-uncommitted entries (fills their slots with no-ops).
    pub skip_reproposal: bool,
    /// An owner answers reads locally whether or not its lease is valid.
    pub ignore_lease_expiry: bool,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            tolerances: Tolerances { nodes: 1, zones: 0 },
            lease_ms: 2_000,
            drift_margin_ms: 100,
            retry_ms: 200,
            heartbeat_ms: 100,
            suspect_ms: 600,
            backoff_min_ms: 20,
            backoff_max_ms: 300,
            forward_retry_ms: 400,
            request_timeout_ms: 10_000,
            migration: MigrationMode::Adaptive,
            migration_window_ms: 3_000,
            migration_min_accesses: 8,
            batch_bytes: 1024 * 1024,
            max_inflight_bytes: 32 * 1024 * 1024,
            retain_bytes: 16 * 1024 * 1024,
            groups: BTreeMap::new(),
            inject: InjectedBugs::default(),
        }
    }
}

impl Settings {
    pub fn group_of(&self, table: &str) -> GroupId {
        self.groups
            .get(table)
            .cloned()
            .unwrap_or_else(|| table.to_string())
    }

    pub fn leases_enabled(&self) -> bool {
        self.migration != MigrationMode::Immediate
    }
}
