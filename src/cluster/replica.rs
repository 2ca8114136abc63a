//! One node's replica: its `consensus::Node` and the [`StoreMachine`] it is driven against
//! (RocksDB and the kv rules), run by the shared `driver::process`.
//!
//! A write travels in the log as a proposal: the `kv::Write` plus the node and request it
//! came from, so the node that took the request answers with the verdict its own replica
//! reached when it applied the entry. Node records for the directory travel the same way
//! in the `atlas` group. Every entry of a `Ready` is applied into one RocksDB batch with the
//! votes and the group states (see `consensus::ready`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::directory::NodeRecord;
use super::driver::{self, Machine, Outbox, Processed};
use super::error::{Answer, ClusterError};
use super::placement::{PLACEMENT_MAGIC, PlacementRecord};
use super::uploads::{self, FRAGMENT_MAGIC, Step, Uploads};
use crate::consensus::{
    Applied, ClientOp, CommandOp, Completion, GroupId, Membership, Message, Node, NodeId, Outcome,
    PersistOp, RequestId, SYSTEM_GROUP, Settings, Zone,
};
use crate::kv::{self, Write, WriteOp};
use crate::protocol::{Command, Key, Reply};
use crate::storage::consensus_store::ConsensusStore;
use crate::storage::snapshot::Installed;
use crate::storage::upload::{Fragment, UploadId};
use crate::storage::{Change, StorageError, Store};

/// A client request waiting for the log.
enum Pending {
    Write {
        /// A condition (CAS, `DEL … IF VERSION`, a transaction) decides its answer.
        conditional: bool,
    },
    Read {
        principal: Option<String>,
        command: Command,
    },
    /// A read barrier: answered `OK` once this node has applied everything committed to the
    /// table before the barrier began; a read of local storage after that is linearizable.
    Barrier,
    /// A change of the `atlas` group (node record, membership): answered `OK` when applied.
    System,
    /// One fragment of a large blob this node uploads (`uploads.rs`), or its abort.
    Fragment,
}

const PROPOSAL_MAGIC: u8 = 0xA7;
/// A node record for the directory (`ATLAS.NODES`), in the `atlas` group.
const NODE_RECORD_MAGIC: u8 = 0xA8;

/// The consensus operation that commits a node record to the directory.
pub fn node_record_op(record: &NodeRecord) -> ClientOp {
    let mut value = vec![NODE_RECORD_MAGIC];
    value.extend_from_slice(record.encode().as_bytes());
    ClientOp::put(format!("{SYSTEM_GROUP}.nodes.{}", record.id), value)
}

/// Wraps a write with its origin for the log.
fn encode_proposal(origin: NodeId, request: RequestId, write: &Write) -> Vec<u8> {
    let mut out = vec![PROPOSAL_MAGIC];
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&request.to_be_bytes());
    out.extend_from_slice(&write.encode());
    out
}

/// What an applied log entry is to the state machine.
enum Entry {
    Proposal {
        origin: NodeId,
        request: RequestId,
        write: Write,
    },
    NodeRecord(NodeRecord),
    /// A pin or a planned move of a table (`placement.rs`).
    Placement(PlacementRecord),
    /// A chunk of a large blob (or an upload's abort), for the table.
    Fragment {
        table: String,
        fragment: Fragment,
        bytes: bytes::Bytes,
    },
    /// Nothing for the data (no-ops, seals, membership changes), or unreadable.
    Nothing,
}

/// A record of the `atlas` group kept as text (node records, placements); one that does not
/// parse is skipped with an error, as every replica skips it alike.
fn text_record<R>(
    text: &[u8],
    decode: fn(&str) -> Option<R>,
    entry: fn(R) -> Entry,
    what: &str,
) -> Entry {
    match decode(&String::from_utf8_lossy(text)) {
        Some(record) => entry(record),
        None => {
            tracing::error!("{what} in the log does not parse; skipped");
            Entry::Nothing
        }
    }
}

fn decode_entry(op: &CommandOp) -> Entry {
    let CommandOp::Put { key, value } = op else {
        return Entry::Nothing;
    };
    match value.split_first() {
        Some((&FRAGMENT_MAGIC, _)) => match uploads::decode_fragment(value) {
            Some((fragment, bytes)) => Entry::Fragment {
                table: key.split('.').next().unwrap_or_default().to_string(),
                fragment,
                bytes,
            },
            None => {
                tracing::error!("a blob fragment in the log does not decode; skipped");
                Entry::Nothing
            }
        },
        Some((&NODE_RECORD_MAGIC, text)) => {
            text_record(text, NodeRecord::decode, Entry::NodeRecord, "a node record")
        }
        Some((&PLACEMENT_MAGIC, text)) => text_record(
            text,
            PlacementRecord::decode,
            Entry::Placement,
            "a table placement record",
        ),
        Some((&PROPOSAL_MAGIC, rest)) => {
            let decoded = rest.split_first_chunk::<8>().and_then(|(origin, rest)| {
                let (request, rest) = rest.split_first_chunk::<8>()?;
                let write = Write::decode(rest).ok()?;
                Some((
                    u64::from_be_bytes(*origin),
                    u64::from_be_bytes(*request),
                    write,
                ))
            });
            match decoded {
                Some((origin, request, write)) => Entry::Proposal {
                    origin,
                    request,
                    write,
                },
                None => {
                    tracing::error!("a log entry is not an Atlas write; skipped");
                    Entry::Nothing
                }
            }
        }
        _ => {
            tracing::error!("a log entry is not an Atlas write; skipped");
            Entry::Nothing
        }
    }
}

/// The tables whose keys belong to `group`: the group's own table and those `settings`
/// map to it; the `atlas` group holds the `ATLAS` system table (the node directory).
pub fn group_tables(settings: &Settings, group: &str) -> Vec<String> {
    if group == SYSTEM_GROUP {
        return vec!["ATLAS".to_string()];
    }
    let mut tables = vec![group.to_string()];
    for (table, g) in &settings.groups {
        if g == group && table != group {
            tables.push(table.clone());
        }
    }
    tables
}

/// RocksDB and the kv rules, as the driver's `Machine`.
pub struct StoreMachine {
    id: NodeId,
    store: Arc<Store>,
    pending: BTreeMap<RequestId, Pending>,
    /// Verdicts of this node's writes, until their completion arrives.
    results: BTreeMap<RequestId, Answer>,
    /// A node record was applied since the last `process` (reload the directory).
    directory_changed: bool,
    /// Placement records applied since the last `process`.
    placements: Vec<PlacementRecord>,
}

impl Machine for StoreMachine {
    type Error = StorageError;
    type Answer = (RequestId, Answer);

    fn write(
        &mut self,
        persist: &[PersistOp],
        apply: &[Applied],
        sync: bool,
    ) -> Result<(), StorageError> {
        let entries: Vec<(u64, Entry)> = apply
            .iter()
            .filter(|a| !a.duplicate)
            .map(|a| (a.slot, decode_entry(&a.command.op)))
            .collect();
        let keys: Vec<Key> = entries
            .iter()
            .flat_map(|(_, e)| match e {
                Entry::Proposal { write, .. } => write.keys().into_iter().cloned().collect(),
                Entry::NodeRecord(record) => vec![record.key()],
                Entry::Placement(record) => vec![record.key()],
                Entry::Fragment { .. } | Entry::Nothing => Vec::new(),
            })
            .collect();
        let mut batch = self.store.batch(keys.iter());
        for (slot, entry) in entries {
            // The entry's slot is the revision of its changes in the change feed.
            batch.set_revision(slot);
            match entry {
                Entry::Proposal {
                    origin,
                    request,
                    write,
                } => {
                    let reply = apply_write(&mut batch, &write)?;
                    if origin == self.id && self.pending.contains_key(&request) {
                        self.results.insert(request, reply);
                    }
                }
                Entry::NodeRecord(record) => {
                    let change = Change::PutInline {
                        value: record.encode().into_bytes(),
                        worm_until_ms: None,
                        expires_ms: None,
                    };
                    batch.change(&record.key(), kv::now_ms(), change)?;
                    self.directory_changed = true;
                }
                Entry::Placement(record) => {
                    let change = match record.stored() {
                        Some(value) => Change::PutInline {
                            value: value.into_bytes(),
                            worm_until_ms: None,
                            expires_ms: None,
                        },
                        None => Change::Delete,
                    };
                    batch.change(&record.key(), kv::now_ms(), change)?;
                    self.placements.push(record);
                }
                Entry::Fragment {
                    table,
                    fragment,
                    bytes,
                } => batch.stage_fragment(&table, &fragment, &bytes)?,
                Entry::Nothing => {}
            }
        }
        ConsensusStore::new(&self.store).stage(batch.raw(), persist);
        batch.write(sync)
    }

    fn answer(
        &mut self,
        completion: Completion,
    ) -> Result<Option<(RequestId, Answer)>, StorageError> {
        let request = completion.request;
        let Some(pending) = self.pending.remove(&request) else {
            return Ok(None);
        };
        let reply = match (completion.outcome, pending) {
            // Completed only once applied here, so its verdict is known, unless this node
            // caught up past it by installing a snapshot. Then a write without a condition
            // is answered OK (it was committed; see docs/consensus.md for the rare refusal
            // this reports wrongly), and a conditional one as unknown.
            (Outcome::Written, Pending::Write { conditional }) => {
                match self.results.remove(&request) {
                    Some(answer) => answer,
                    None if !conditional => Ok(Reply::Ok),
                    None => Err(ClusterError::OutcomeUnknown),
                }
            }
            (Outcome::ReadNow { .. }, Pending::Read { principal, command }) => {
                match kv::read(&self.store, principal.as_deref(), &command, kv::now_ms())? {
                    Some(answer) => answer.map_err(ClusterError::from),
                    None => Err(ClusterError::Internal("not a read")),
                }
            }
            (Outcome::ReadNow { .. }, Pending::Barrier)
            | (Outcome::Written, Pending::System | Pending::Fragment) => Ok(Reply::Ok),
            (Outcome::Timeout, _) => {
                self.results.remove(&request);
                Err(ClusterError::Timeout)
            }
            (outcome, _) => {
                tracing::error!(?outcome, "completion does not match its request");
                Err(ClusterError::Internal("unexpected completion"))
            }
        };
        Ok(Some((request, reply)))
    }
}

/// Applies one write by the rules; a staged blob is adopted only if its upload is complete
/// here (the same on every replica), and an upload the rules refused is dropped.
fn apply_write(
    batch: &mut crate::storage::Batch<'_>,
    write: &Write,
) -> Result<Answer, StorageError> {
    let WriteOp::BlobStaged { upload, len } = write.op else {
        return Ok(kv::apply(batch, write)?.map_err(ClusterError::from));
    };
    let table = write.key.table();
    if !batch.upload_complete(table, upload, len)? {
        batch.drop_upload(table, upload)?;
        return Ok(Err(ClusterError::UploadIncomplete));
    }
    let verdict = kv::apply(batch, write)?.map_err(ClusterError::from);
    if verdict.is_err() {
        batch.drop_upload(table, upload)?;
    }
    Ok(verdict)
}

pub struct Replica {
    node: Node,
    machine: StoreMachine,
    settings: Settings,
    next_request: RequestId,
    /// Large blobs this node is writing through the log.
    uploads: Uploads,
    /// Unique to this start of the node (upload ids must not repeat across restarts).
    incarnation: u64,
}

/// What `Replica::process` produced besides the messages it sent.
#[derive(Debug, Default)]
pub struct Report {
    pub processed: Processed<(RequestId, Answer)>,
    /// A node record arrived through the `atlas` log (reload the directory).
    pub directory_changed: bool,
    /// Pins and planned moves that arrived through the `atlas` log, in log order.
    pub placements: Vec<PlacementRecord>,
}

impl Replica {
    /// Recovers the node's consensus state from storage and starts it. A group whose
    /// snapshot install was cut short by a crash is wiped first (it catches up again).
    pub fn open(
        id: NodeId,
        zone: Zone,
        membership: Membership,
        settings: Settings,
        store: Arc<Store>,
        seed: u64,
        now: u64,
    ) -> Result<Replica, StorageError> {
        store.wipe_interrupted_installs(&|g| group_tables(&settings, g))?;
        let consensus = ConsensusStore::new(&store);
        let (recovered, _) = consensus.recover()?;
        let incarnation = consensus.next_incarnation()?;
        let node = Node::recover(
            id,
            zone,
            membership,
            settings.clone(),
            recovered,
            incarnation,
            seed,
            now,
        );
        Ok(Replica {
            node,
            machine: StoreMachine {
                id,
                store,
                pending: BTreeMap::new(),
                results: BTreeMap::new(),
                directory_changed: false,
                placements: Vec::new(),
            },
            settings,
            next_request: 1,
            uploads: Uploads::default(),
            incarnation,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.machine.store
    }

    /// The tables whose keys belong to `group`.
    pub fn group_tables(&self, group: &str) -> Vec<String> {
        group_tables(&self.settings, group)
    }

    fn new_request(&mut self, pending: Pending) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.machine.pending.insert(id, pending);
        id
    }

    /// Takes in a client write; its answer comes out of a later `process`. A blob larger
    /// than one chunk goes through the log in fragments first (`uploads.rs`).
    pub fn submit_write(&mut self, now: u64, write: Write) -> RequestId {
        let request = self.new_request(Pending::Write {
            conditional: write.is_conditional(),
        });
        if uploads::is_large_blob(&write) {
            let id = UploadId {
                origin: self.node.id(),
                id: (self.incarnation << 40) | (request & ((1 << 40) - 1)),
            };
            self.uploads.start(request, id, write);
            self.advance_upload(now, request);
            return request;
        }
        self.propose(now, request, &write);
        request
    }

    fn propose(&mut self, now: u64, request: RequestId, write: &Write) {
        let op = ClientOp::put(
            write.key.as_str().to_string(),
            encode_proposal(self.node.id(), request, write),
        );
        self.node.client_request(now, request, op);
    }

    /// Proposes what the upload for the client's `request` needs next; returns the
    /// client's answer if the upload failed.
    fn advance_upload(&mut self, now: u64, request: RequestId) -> Option<(RequestId, Answer)> {
        let mut failed = None;
        for step in self.uploads.next_steps(request, kv::now_ms()) {
            match step {
                Step::Fragment { key, value } => {
                    let fragment = self.new_request(Pending::Fragment);
                    self.uploads.sent(fragment, Some(request));
                    self.node
                        .client_write_committed(now, fragment, ClientOp::put(key, value));
                }
                Step::Adopt { request, write } => self.propose(now, request, &write),
                Step::Fail {
                    key,
                    abort,
                    request,
                    answer,
                } => {
                    let fragment = self.new_request(Pending::Fragment);
                    self.uploads.sent(fragment, None);
                    self.node
                        .client_write_committed(now, fragment, ClientOp::put(key, abort));
                    self.machine.pending.remove(&request);
                    failed = Some((request, answer));
                }
            }
        }
        failed
    }

    /// Takes the answers of fragments out of `answers` and moves their uploads on (adding
    /// the answers of uploads that failed); returns whether anything was proposed.
    fn settle_uploads(&mut self, now: u64, answers: &mut Vec<(RequestId, Answer)>) -> bool {
        let mut moved = Vec::new();
        answers.retain(
            |(request, answer)| match self.uploads.answered(*request, answer) {
                Some(of) => {
                    moved.extend(of);
                    false
                }
                None => true,
            },
        );
        let before = self.next_request;
        for request in moved {
            answers.extend(self.advance_upload(now, request));
        }
        self.next_request != before
    }

    /// Takes in a linearizable read of one key (`KEY GET` / `KEY BLOB GET`).
    pub fn submit_read(
        &mut self,
        now: u64,
        principal: Option<String>,
        command: Command,
    ) -> RequestId {
        let key = match &command {
            Command::Get(key) | Command::BlobGet(key) => key.as_str().to_string(),
            _ => String::new(),
        };
        let request = self.new_request(Pending::Read { principal, command });
        self.node
            .client_request(now, request, ClientOp::Get { key });
        request
    }

    /// Takes in a read barrier on `table` (see `Pending::Barrier`).
    pub fn submit_barrier(&mut self, now: u64, table: &str) -> RequestId {
        let request = self.new_request(Pending::Barrier);
        let key = format!("{table}.");
        self.node
            .client_request(now, request, ClientOp::Get { key });
        request
    }

    /// Takes in a change of the `atlas` group: a node record or a membership change.
    pub fn submit_system(&mut self, now: u64, op: ClientOp) -> RequestId {
        let request = self.new_request(Pending::System);
        self.node.client_request(now, request, op);
        request
    }

    pub fn step(&mut self, now: u64, from: NodeId, message: Message) {
        self.node.step(now, from, message);
    }

    pub fn tick(&mut self, now: u64) {
        self.node.tick(now);
    }

    /// A snapshot of a group was installed into storage: the node catches up from there.
    pub fn snapshot_installed(&mut self, now: u64, installed: Installed) {
        let tables = group_tables(&self.settings, &installed.group);
        self.machine
            .store
            .feed()
            .installed(&tables, installed.state.applied);
        self.node
            .snapshot_installed(now, &installed.group, installed.state, installed.config);
    }

    pub fn snapshot_failed(&mut self, now: u64, group: &GroupId) {
        self.node.snapshot_failed(now, group);
    }

    /// Runs the node's output through the driver: messages to `outbox`, one batch per
    /// `Ready`, answers to the requests this node took.
    pub fn process(&mut self, now: u64, outbox: &mut impl Outbox) -> Result<Report, StorageError> {
        let mut processed = Processed::default();
        // Fragments committed in a round let the next ones be proposed at once (bounded:
        // what is left waits for the next call).
        for _ in 0..8 {
            let mut round = driver::process(&mut self.node, &mut self.machine, outbox, now)?;
            let proposed = self.settle_uploads(now, &mut round.answers);
            processed.extend(round);
            if !proposed {
                break;
            }
        }
        Ok(Report {
            processed,
            directory_changed: std::mem::take(&mut self.machine.directory_changed),
            placements: std::mem::take(&mut self.machine.placements),
        })
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
