//! Cluster plumbing that is not consensus itself: peer health and RTT (routing of requests to
//! table owners and membership follow in the cluster issue).

pub mod health;
