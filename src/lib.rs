//! Atlas core: a strongly consistent key-value engine on RocksDB and its socket protocol.
//!
//! Data flows one way: `session` (a connection) → `protocol` (parse) → `command` (rules) →
//! `storage` (RocksDB). This crate knows nothing of Pingora; `atlas-pingora` adapts it.

pub mod check;
pub mod client;
pub mod cluster;
#[cfg(feature = "engine")]
pub mod command;
pub mod config;
pub mod consensus;
pub mod files;
#[cfg(feature = "engine")]
pub mod kv;
#[cfg(feature = "engine")]
pub mod nas;
#[cfg(feature = "engine")]
pub mod node;
pub mod protocol;
#[cfg(feature = "engine")]
pub mod session;
#[cfg(test)]
mod sim;
#[cfg(feature = "engine")]
pub mod storage;

#[cfg(feature = "engine")]
pub use command::{Engine, NodeIdentity};
pub use config::AtlasConfig;
