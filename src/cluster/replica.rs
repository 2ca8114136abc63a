//! One node's replica: drives its `consensus::Node` against its own storage.
//!
//! The caller (the cluster runtime: transport, timers, client sessions) feeds inputs — client
//! writes and reads, peer messages, ticks — with the monotonic time, then calls `process`,
//! which follows the core's contract in order: persist the `Ready`'s writes durably, hand back
//! the messages to send, apply committed writes to storage (every replica applies every
//! write with `Engine::apply_write`, so all judge it alike), and resolve client requests.
//!
//! A write travels as a `Proposal`: the `command::Write` plus the node and request it came
//! from, so the node that took the request knows which applied entry answers it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::directory::{self, NodeRecord};
use crate::command::{CommandError, Engine, Write};
use crate::consensus::{
    ClientOp, CommandOp, Membership, Message, Node, NodeId, Outcome, Outgoing, RequestId,
    SYSTEM_GROUP, Settings, Zone,
};
use crate::protocol::{Command, Reply};
use crate::storage::StorageError;
use crate::storage::consensus_store::ConsensusStore;

/// What a replica hands back after `process`.
#[derive(Debug, Default)]
pub struct Processed {
    /// Messages for peers; they may leave now (their persistence is durable).
    pub messages: Vec<Outgoing>,
    /// Answers to client requests taken in by this node.
    pub answers: Vec<(RequestId, Reply)>,
    /// A node record arrived through the `atlas` log (reload the directory).
    pub directory_changed: bool,
    /// Groups of the entries applied (one per entry).
    pub applied_groups: Vec<String>,
    /// Requests that ended without a quorum's answer in time.
    pub timeouts: u64,
}

/// A client request waiting for the log.
enum Pending {
    Write,
    Read {
        principal: Option<String>,
        command: Command,
    },
    /// A read barrier: answered `OK` once this node has applied everything committed to the
    /// table before the barrier began; a read of local storage after that is linearizable.
    Barrier,
    /// A change of the `atlas` group (node record, membership): answered `OK` when applied.
    System,
}

pub struct Replica {
    id: NodeId,
    node: Node,
    engine: Arc<Engine>,
    pending: BTreeMap<RequestId, Pending>,
    /// Apply results of this node's writes, until their completion arrives.
    results: BTreeMap<RequestId, Reply>,
    next_request: RequestId,
}

const PROPOSAL_MAGIC: u8 = 0xA7;
/// A node record for the directory (`ATLAS.NODES`), in the `atlas` group.
const NODE_RECORD_MAGIC: u8 = 0xA8;

/// The consensus operation that commits a node record to the directory.
pub fn node_record_op(record: &NodeRecord) -> ClientOp {
    let mut value = vec![NODE_RECORD_MAGIC];
    value.extend_from_slice(record.encode().as_bytes());
    ClientOp::Put {
        key: format!("{SYSTEM_GROUP}.nodes.{}", record.id),
        value,
    }
}

/// Wraps a write with its origin for the log.
fn encode_proposal(origin: NodeId, request: RequestId, write: &Write) -> Vec<u8> {
    let mut out = vec![PROPOSAL_MAGIC];
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&request.to_be_bytes());
    out.extend_from_slice(&write.encode());
    out
}

fn decode_proposal(bytes: &[u8]) -> Option<(NodeId, RequestId, Write)> {
    let (&magic, rest) = bytes.split_first()?;
    if magic != PROPOSAL_MAGIC {
        return None;
    }
    let (origin, rest) = rest.split_first_chunk::<8>()?;
    let (request, rest) = rest.split_first_chunk::<8>()?;
    let write = Write::decode(rest).ok()?;
    Some((
        u64::from_be_bytes(*origin),
        u64::from_be_bytes(*request),
        write,
    ))
}

impl Replica {
    /// Recovers the node's consensus state from storage and starts it.
    pub fn open(
        id: NodeId,
        zone: Zone,
        membership: Membership,
        settings: Settings,
        engine: Arc<Engine>,
        seed: u64,
        now: u64,
    ) -> Result<Replica, StorageError> {
        let store = ConsensusStore::new(engine.store());
        let recovered = store.recover()?;
        let incarnation = store.next_incarnation()?;
        let node = Node::recover(
            id,
            zone,
            membership,
            settings,
            recovered,
            incarnation,
            seed,
            now,
        );
        Ok(Replica {
            id,
            node,
            engine,
            pending: BTreeMap::new(),
            results: BTreeMap::new(),
            next_request: 1,
        })
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn node_mut(&mut self) -> &mut Node {
        &mut self.node
    }

    fn new_request(&mut self) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Takes in a client write; its answer comes out of a later `process`.
    pub fn submit_write(&mut self, now: u64, write: &Write) -> RequestId {
        let request = self.new_request();
        let op = ClientOp::Put {
            key: write.key.as_str().to_string(),
            value: encode_proposal(self.id, request, write),
        };
        self.pending.insert(request, Pending::Write);
        self.node.client_request(now, request, op);
        request
    }

    /// Takes in a linearizable read of one key (`KEY GET` / `KEY BLOB GET`).
    pub fn submit_read(
        &mut self,
        now: u64,
        principal: Option<String>,
        command: Command,
    ) -> RequestId {
        let request = self.new_request();
        let key = match &command {
            Command::Get(key) | Command::BlobGet(key) => key.as_str().to_string(),
            _ => String::new(),
        };
        self.pending
            .insert(request, Pending::Read { principal, command });
        self.node
            .client_request(now, request, ClientOp::Get { key });
        request
    }

    /// Takes in a read barrier on `table` (see `Pending::Barrier`).
    pub fn submit_barrier(&mut self, now: u64, table: &str) -> RequestId {
        let request = self.new_request();
        self.pending.insert(request, Pending::Barrier);
        self.node.client_request(
            now,
            request,
            ClientOp::Get {
                key: format!("{table}."),
            },
        );
        request
    }

    /// Takes in a change of the `atlas` group: a node record or a membership change.
    pub fn submit_system(&mut self, now: u64, op: ClientOp) -> RequestId {
        let request = self.new_request();
        self.pending.insert(request, Pending::System);
        self.node.client_request(now, request, op);
        request
    }

    pub fn step(&mut self, now: u64, from: NodeId, message: Message) {
        self.node.step(now, from, message);
    }

    pub fn tick(&mut self, now: u64) {
        self.node.tick(now);
    }

    /// Persists, applies and answers what the node produced; messages to itself are
    /// delivered here, so only messages for peers come out.
    pub fn process(&mut self, now: u64) -> Result<Processed, StorageError> {
        let mut out = Processed::default();
        loop {
            let ready = self.node.take_ready();
            if ready.is_empty() {
                return Ok(out);
            }
            let engine = self.engine.clone();
            let store = ConsensusStore::new(engine.store());
            store.write(&ready.persist)?;
            let mut to_self = Vec::new();
            for outgoing in ready.messages {
                if outgoing.to == self.id {
                    to_self.push(outgoing.message);
                } else {
                    out.messages.push(outgoing);
                }
            }
            for applied in ready.apply {
                if !applied.duplicate {
                    out.directory_changed |= self.apply(&applied.command.op)?;
                }
                store.mark_applied(&applied.group, applied.slot)?;
                out.applied_groups.push(applied.group);
            }
            for completion in ready.completions {
                if completion.outcome == Outcome::Timeout {
                    out.timeouts += 1;
                }
                if let Some(reply) = self.answer(completion.request, completion.outcome)? {
                    out.answers.push((completion.request, reply));
                }
            }
            for message in to_self {
                self.node.step(now, self.id, message);
            }
        }
    }

    /// Applies one entry; returns whether it was a node record.
    fn apply(&mut self, op: &CommandOp) -> Result<bool, StorageError> {
        let CommandOp::Put { value, .. } = op else {
            return Ok(false);
        };
        if let Some(record) = value.strip_prefix(&[NODE_RECORD_MAGIC]) {
            match NodeRecord::decode(&String::from_utf8_lossy(record)) {
                Some(record) => directory::save(self.engine.store(), &record)?,
                None => tracing::error!("a node record in the log does not parse; skipped"),
            }
            return Ok(true);
        }
        let Some((origin, request, write)) = decode_proposal(value) else {
            tracing::error!("a log entry is not an Atlas write; skipped");
            return Ok(false);
        };
        let reply = match self.engine.apply_write(&write) {
            Ok(reply) => reply,
            Err(CommandError::Storage(e)) => return Err(e),
            Err(e) => Reply::warn(e.to_string()),
        };
        if origin == self.id && self.pending.contains_key(&request) {
            self.results.insert(request, reply);
        }
        Ok(false)
    }

    fn answer(
        &mut self,
        request: RequestId,
        outcome: Outcome,
    ) -> Result<Option<Reply>, StorageError> {
        let Some(pending) = self.pending.remove(&request) else {
            return Ok(None);
        };
        let reply = match (outcome, pending) {
            (Outcome::Written, Pending::Write) => {
                self.results.remove(&request).unwrap_or(Reply::Ok)
            }
            (Outcome::ReadNow { .. }, Pending::Read { principal, command }) => {
                match self.engine.read_now(principal.as_deref(), &command) {
                    Ok(reply) => reply,
                    Err(CommandError::Storage(e)) => return Err(e),
                    Err(e) => Reply::warn(e.to_string()),
                }
            }
            (Outcome::ReadNow { .. }, Pending::Barrier) | (Outcome::Written, Pending::System) => {
                Reply::Ok
            }
            (Outcome::Timeout, _) => {
                self.results.remove(&request);
                Reply::warn(
                    "timeout: no quorum answered in time; the write may or may not have happened",
                )
            }
            (outcome, _) => {
                tracing::error!(?outcome, "completion does not match its request");
                Reply::warn("internal error: unexpected completion")
            }
        };
        Ok(Some(reply))
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
