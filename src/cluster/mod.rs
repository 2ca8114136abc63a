//! Cluster plumbing around the consensus core: peer health and RTT, and the replica that
//! drives a node's consensus state machine against its storage (the network runtime, join and
//! routing of requests follow in the cluster issue).

pub mod health;
#[cfg(feature = "engine")]
pub mod replica;
