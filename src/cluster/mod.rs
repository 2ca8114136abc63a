//! Cluster plumbing around the consensus core: the one driver of the core (`driver`), peer
//! health and RTT, the node directory, table placement (pins and moves), the transport
//! envelope,
//! the replica that drives a node's consensus state machine against its storage (large
//! blobs go through its log in fragments: `uploads`), and the
//! runtime thread that owns the replica, how a member starts (`bootstrap`), and who is
//! in the cluster (`admission`: start plans, joins, removals; `certify`: who may get which
//! certificate).

#[cfg(feature = "engine")]
pub mod admission;
#[cfg(feature = "engine")]
pub mod bootstrap;
#[cfg(feature = "engine")]
pub mod certify;
#[cfg(feature = "engine")]
pub mod directory;
pub mod driver;
pub mod envelope;
#[cfg(feature = "engine")]
pub mod error;
pub mod health;
#[cfg(feature = "engine")]
pub mod identity;
#[cfg(feature = "engine")]
pub mod placement;
#[cfg(feature = "engine")]
pub mod replica;
#[cfg(feature = "engine")]
pub mod runtime;
#[cfg(feature = "engine")]
mod uploads;
#[cfg(feature = "engine")]
mod view;
#[cfg(feature = "engine")]
mod worker;
