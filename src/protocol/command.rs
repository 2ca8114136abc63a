//! What a request line means once parsed: `Request`, `Command` and the values they carry.

use std::time::Duration;

use super::key::Key;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `[ID:<tag>]` of a pipelined request.
    pub tag: Option<String>,
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Read,
    Write,
    Owner,
}

impl Perm {
    pub fn name(self) -> &'static str {
        match self {
            Perm::Read => "READ",
            Perm::Write => "WRITE",
            Perm::Owner => "OWNER",
        }
    }
}

/// When a value ends: a duration from the instant the write is judged, or an instant. A
/// `WORM` clause locks the value until then; a plain `TTL`/`EXPIRES` only removes it then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    Ttl(Duration),
    /// Unix milliseconds.
    ExpiresAt(i64),
}

/// `SCAN <prefix> [AFTER <key>] [LIMIT <n>] [VALUES]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub prefix: String,
    /// Only keys after this one (the last key of the previous page).
    pub after: Option<String>,
    /// At most this many keys (the server's `limits.max_scan_keys` caps it).
    pub limit: Option<usize>,
    /// Each key's value inline.
    pub values: bool,
}

/// One staged line of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnStep {
    /// `TXN IF <key> VERSION <n>` (`ABSENT` is version 0).
    IfVersion {
        key: Key,
        version: u64,
    },
    Put {
        key: Key,
        value: Vec<u8>,
    },
    Del(Key),
}

impl TxnStep {
    pub fn key(&self) -> &Key {
        match self {
            TxnStep::IfVersion { key, .. } | TxnStep::Put { key, .. } | TxnStep::Del(key) => key,
        }
    }

    /// Bytes the step holds.
    pub fn size(&self) -> usize {
        let value = match self {
            TxnStep::Put { value, .. } => value.len(),
            _ => 0,
        };
        16 + self.key().as_bytes().len() + value
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Get(Key),
    Put {
        key: Key,
        /// Recorded for audit only.
        principal: Option<String>,
        /// Write-once until the deadline, gone after it.
        worm: Option<Deadline>,
        /// Gone after the deadline, writable before it.
        expires: Option<Deadline>,
        value: Vec<u8>,
    },
    /// `KEY CAS <key> <version> <value>`: a PUT only if the key is at `version` (0: absent).
    Cas {
        key: Key,
        version: u64,
        value: Vec<u8>,
    },
    /// `KEY DEL <key> [IF VERSION <n>]`.
    Del {
        key: Key,
        if_version: Option<u64>,
    },
    /// `KEY VERSION <key>`.
    Version(Key),
    /// The payload of `len` bytes follows the line.
    BlobSet {
        key: Key,
        len: u64,
    },
    BlobGet(Key),
    Scan(Scan),
    Count(String),
    TxnBegin,
    /// A staged line; the connection keeps it until `TXN COMMIT`.
    TxnStep(TxnStep),
    /// `TXN COMMIT`: the parser gives no steps, the connection fills in the staged ones.
    TxnCommit(Vec<TxnStep>),
    TxnAbort,
    /// `[ID:<tag>] WATCH <prefix> [FROM <revision>]`.
    Watch {
        prefix: String,
        from: Option<u64>,
    },
    /// `UNWATCH <tag>`.
    Unwatch(String),
    /// `BACKUP`: every client key at one point in time, as `BLOB` frames.
    Backup,
    Assume(String),
    WhoAmI,
    Grant {
        key: Key,
        principal: String,
        perm: Perm,
    },
    Revoke {
        key: Key,
        principal: String,
        perm: Perm,
    },
    NodeList,
    NodeInfo(String),
    NodePing(String),
    QuorumInfo(String),
    TableInfo(String),
    TableList,
    /// `TABLE MOVE <table> TO <region>`: a planned handoff to a node of the region.
    TableMove {
        table: String,
        region: String,
    },
    /// `TABLE PIN <table> <region>`: kept in the region whatever the migration policy says.
    TablePin {
        table: String,
        region: String,
    },
    /// `TABLE UNPIN <table>`: the policy decides again.
    TableUnpin(String),
}

impl Command {
    /// A read of stored data (answered from storage, after a read barrier in a cluster).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::Get(_)
                | Command::BlobGet(_)
                | Command::Scan(_)
                | Command::Count(_)
                | Command::Version(_)
        )
    }

    /// Answered by the connection itself (its principal, its staged transaction).
    pub fn is_session(&self) -> bool {
        matches!(
            self,
            Command::Assume(_)
                | Command::WhoAmI
                | Command::TxnBegin
                | Command::TxnStep(_)
                | Command::TxnAbort
                | Command::Watch { .. }
                | Command::Unwatch(_)
                | Command::Backup
        )
    }

    /// A change of stored data (becomes a `command::Write`).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Put { .. }
                | Command::Cas { .. }
                | Command::BlobSet { .. }
                | Command::Del { .. }
                | Command::TxnCommit(_)
                | Command::Grant { .. }
                | Command::Revoke { .. }
        )
    }

    /// Name for metrics and logs (`KEY GET`, `SCAN`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Get(_) => "KEY GET",
            Command::Put { .. } => "KEY PUT",
            Command::Cas { .. } => "KEY CAS",
            Command::Del { .. } => "KEY DEL",
            Command::Version(_) => "KEY VERSION",
            Command::TxnBegin => "TXN BEGIN",
            Command::TxnStep(TxnStep::IfVersion { .. }) => "TXN IF",
            Command::TxnStep(TxnStep::Put { .. }) => "TXN PUT",
            Command::TxnStep(TxnStep::Del(_)) => "TXN DEL",
            Command::TxnCommit(_) => "TXN COMMIT",
            Command::TxnAbort => "TXN ABORT",
            Command::Watch { .. } => "WATCH",
            Command::Unwatch(_) => "UNWATCH",
            Command::Backup => "BACKUP",
            Command::BlobSet { .. } => "KEY BLOB SET",
            Command::BlobGet(_) => "KEY BLOB GET",
            Command::Scan(_) => "SCAN",
            Command::Count(_) => "COUNT",
            Command::Assume(_) => "PRINCIPAL ASSUME",
            Command::WhoAmI => "PRINCIPAL WHOAMI",
            Command::Grant { .. } => "ACL GRANT",
            Command::Revoke { .. } => "ACL REVOKE",
            Command::NodeList => "NODE LIST",
            Command::NodeInfo(_) => "NODE INFO",
            Command::NodePing(_) => "NODE PING",
            Command::QuorumInfo(_) => "QUORUM INFO",
            Command::TableInfo(_) => "TABLE INFO",
            Command::TableList => "TABLE LIST",
            Command::TableMove { .. } => "TABLE MOVE",
            Command::TablePin { .. } => "TABLE PIN",
            Command::TableUnpin(_) => "TABLE UNPIN",
        }
    }
}
