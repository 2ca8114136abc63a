//! Deterministic simulator: whole clusters in one thread, driven by one seed.
//!
//! Virtual time is global milliseconds; each node reads its own drifting clock. The network
//! delays (by zone pair, with jitter, hence reordering; one node may be slow), loses,
//! duplicates and partitions (symmetric and one-way) messages; nodes crash and restart from
//! what they persisted (a power failure loses what was written but not synced). Messages
//! pass through the binary encoding. Each node runs `cluster::driver::process`, the loop
//! production runs, over an in-memory `Machine`; logs are compacted (small retained
//! windows), so nodes behind catch up with snapshots in the production stream format.
//! Clients on several zones issue get/put/delete on several tables; every run's history
//! goes through the linearizability checker, and the simulator checks agreement (one
//! command per slot) and liveness after faults heal.
//!
//! A failing run prints its seed; `Sim::run(SimConfig::for_seed(seed))` replays it exactly.

mod changes;
mod clients;
mod config;
mod machine;
mod network;
mod world;

#[cfg(test)]
mod tests;

pub use config::{Change, SimConfig};
pub use world::Sim;
