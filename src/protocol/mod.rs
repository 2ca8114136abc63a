//! The client socket protocol (version 1.0): request parsing, keys, durations and the
//! response encoder. Pure functions over bytes; the connection loop lives in `session`.

pub mod command;
pub mod duration;
pub mod key;
pub mod parse;
pub mod reply;

pub use key::Key;
pub use parse::{
    Command, Deadline, ParseError, Perm, Request, Scan, TxnStep, parse_request, valid_principal,
};
pub use reply::{Level, Reply};

/// First line the server writes on a new connection.
pub const WELCOME: &str = "WELCOME 1.0 Chronalys/1.0";
pub const PROTOCOL_VERSION: &str = "1.0";
