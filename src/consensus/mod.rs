//! WPaxos consensus core, free of I/O.
//!
//! A [`Node`] holds, for every group of tables, an acceptor, a learner log and a proposer.
//! Inputs carry the node's monotonic time; outputs accumulate in a [`Ready`] that the caller
//! persists, sends, applies and answers, in that order. See `docs/consensus.md`.

pub mod acceptor;
pub mod ballot;
pub mod codec;
pub mod command;
mod ctx;
pub mod dedup;
mod group;
pub mod inbound;
mod leader;
pub mod lease;
pub mod log;
pub mod membership;
pub mod message;
pub mod migration;
pub mod node;
mod proposer;
pub mod quorum;
pub mod ready;
mod reconfig;
mod requests;
pub mod settings;

pub use ballot::{Ballot, CommandId, GroupId, NodeId, Slot, Zone};
pub use codec::CodecError;
pub use command::{ClientOp, Command, CommandOp};
pub use log::GroupState;
pub use membership::Config;
pub use membership::{Membership, SYSTEM_GROUP};
pub use message::{ForwardOutcome, Message};
pub use node::{Node, Recovered, RecoveredGroup};
pub use quorum::{QuorumSystem, Tolerances};
pub use ready::{
    Applied, Completion, Outcome, Outgoing, PersistOp, Ready, RequestId, SnapshotRequest,
};
pub use settings::{MigrationMode, Settings};
