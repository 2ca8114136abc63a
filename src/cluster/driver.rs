//! The one driver of the consensus core: the loop that follows `consensus::ready`'s contract
//! (send what may leave, persist and apply in one batch, send the votes, answer), written
//! once. The production replica (RocksDB) and the deterministic simulator (memory) both run
//! it; they differ only in their [`Machine`] (storage and state machine) and [`Outbox`]
//! (the network), so the simulator exercises the code production runs.

use crate::consensus::{Applied, Completion, Message, Node, NodeId, PersistOp, SnapshotRequest};

/// Durable storage of one node plus its replicated state machine.
pub trait Machine {
    type Error;
    /// What a client request resolves to.
    type Answer;

    /// Writes the votes and states of `persist` and applies `apply` (in order, skipping
    /// duplicates) as one atomic batch; durable on return when `sync`, else only written
    /// (ordered before every later batch).
    fn write(
        &mut self,
        persist: &[PersistOp],
        apply: &[Applied],
        sync: bool,
    ) -> Result<(), Self::Error>;

    /// The answer to a completed client request (`None`: not one this machine tracks).
    fn answer(&mut self, completion: Completion) -> Result<Option<Self::Answer>, Self::Error>;
}

/// Where messages for peers go. `send` must not block (it queues); `flush` hands what was
/// queued to the network, and is called before each batch is written and after its votes.
pub trait Outbox {
    fn send(&mut self, to: NodeId, message: Message);
    fn flush(&mut self) {}
}

/// What one `process` call produced besides the messages it sent.
#[derive(Debug)]
pub struct Processed<A> {
    pub answers: Vec<A>,
    /// Groups to fetch a snapshot of (then `Node::snapshot_installed`).
    pub snapshots: Vec<SnapshotRequest>,
    /// Entries applied (with their group), in order.
    pub applied: Vec<Applied>,
    /// Requests that ended without a quorum's answer in time.
    pub timeouts: u64,
}

impl<A> Processed<A> {
    /// Adds what a later `process` call produced.
    pub fn extend(&mut self, later: Processed<A>) {
        self.answers.extend(later.answers);
        self.snapshots.extend(later.snapshots);
        self.applied.extend(later.applied);
        self.timeouts += later.timeouts;
    }
}

impl<A> Default for Processed<A> {
    fn default() -> Self {
        Processed {
            answers: Vec::new(),
            snapshots: Vec::new(),
            applied: Vec::new(),
            timeouts: 0,
        }
    }
}

/// Runs the node's output to quiescence: for each `Ready`, (1) messages that may leave now
/// go to the outbox, (2) votes, states and applied entries are written as one batch
/// (synced when it holds or precedes votes), (3) votes go out, those for this node are
/// stepped back in, (4) completions are answered. Stepping a vote in may produce more
/// output, which the loop handles the same way.
pub fn process<M: Machine, O: Outbox>(
    node: &mut Node,
    machine: &mut M,
    outbox: &mut O,
    now: u64,
) -> Result<Processed<M::Answer>, M::Error> {
    let mut out = Processed::default();
    loop {
        let ready = node.take_ready();
        if ready.is_empty() {
            return Ok(out);
        }
        let sync = ready.needs_sync();
        for m in ready.messages {
            outbox.send(m.to, m.message);
        }
        // They leave while the batch is written (an owner's accepts, while its own is).
        outbox.flush();
        machine.write(&ready.persist, &ready.apply, sync)?;
        let me = node.id();
        for m in ready.after_persist {
            if m.to == me {
                node.step(now, me, m.message);
            } else {
                outbox.send(m.to, m.message);
            }
        }
        outbox.flush();
        for completion in ready.completions {
            if completion.outcome == crate::consensus::Outcome::Timeout {
                out.timeouts += 1;
            }
            if let Some(answer) = machine.answer(completion)? {
                out.answers.push(answer);
            }
        }
        out.snapshots.extend(ready.snapshots);
        out.applied.extend(ready.apply);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::consensus::{ClientOp, Membership, Node, Outcome, Settings, Tolerances};

    /// Counts the batches the driver writes, synced or not.
    #[derive(Default)]
    struct Counting {
        synced: u64,
        unsynced: u64,
        written: u64,
    }

    impl Machine for Counting {
        type Error = std::convert::Infallible;
        type Answer = Outcome;
        fn write(&mut self, _: &[PersistOp], _: &[Applied], sync: bool) -> Result<(), Self::Error> {
            if sync {
                self.synced += 1;
            } else {
                self.unsynced += 1;
            }
            Ok(())
        }
        fn answer(&mut self, c: Completion) -> Result<Option<Outcome>, Self::Error> {
            if c.outcome == Outcome::Written {
                self.written += 1;
            }
            Ok(Some(c.outcome))
        }
    }

    #[derive(Default)]
    struct Wire(Vec<(NodeId, NodeId, Message)>, NodeId);

    impl Outbox for Wire {
        fn send(&mut self, to: NodeId, message: Message) {
            self.0.push((self.1, to, message));
        }
    }

    fn put(i: u64) -> ClientOp {
        ClientOp::put(format!("t.k{i}"), vec![1])
    }

    /// Runs nodes, delivering messages at once, until nothing moves.
    fn settle(nodes: &mut BTreeMap<NodeId, (Node, Counting)>) {
        for _ in 0..100 {
            let mut wire = Vec::new();
            for (id, (node, machine)) in nodes.iter_mut() {
                let mut out = Wire(Vec::new(), *id);
                let Ok(_) = process(node, machine, &mut out, 0);
                wire.extend(out.0);
            }
            if wire.is_empty() {
                return;
            }
            for (from, to, m) in wire {
                if let Some((node, _)) = nodes.get_mut(&to) {
                    node.step(0, from, m);
                }
            }
        }
    }

    /// `size` nodes in one zone (`fn: 0`), node 1 owning table `t` after one write.
    fn owning_cluster(size: u64) -> BTreeMap<NodeId, (Node, Counting)> {
        let membership = Membership::new((1..=size).map(|n| (n, "z".to_string())));
        let settings = Settings {
            tolerances: Tolerances { nodes: 0, zones: 0 },
            ..Settings::default()
        };
        let mut nodes: BTreeMap<NodeId, (Node, Counting)> = (1..=size)
            .map(|n| {
                let node = Node::new(n, "z".into(), membership.clone(), settings.clone(), 1, n, 0);
                (n, (node, Counting::default()))
            })
            .collect();
        // The first write also takes the table (phase 1).
        nodes.get_mut(&1).unwrap().0.client_request(0, 1, put(0));
        settle(&mut nodes);
        assert_eq!(nodes[&1].1.written, 1);
        nodes
    }

    /// The commit path of a write costs one fsync per node: the owner's accept (its own vote,
    /// counted once durable) and each follower's accept; applying is written unsynced.
    #[test]
    fn a_write_costs_one_sync_per_node() {
        for size in [1u64, 3] {
            let mut nodes = owning_cluster(size);
            let before: Vec<u64> = nodes.values().map(|(_, m)| m.synced).collect();
            nodes.get_mut(&1).unwrap().0.client_request(0, 2, put(1));
            settle(&mut nodes);
            assert_eq!(nodes[&1].1.written, 2, "{size} nodes");
            for ((id, (_, m)), before) in nodes.iter().zip(before) {
                assert_eq!(
                    m.synced - before,
                    1,
                    "node {id} of {size}: one synced batch"
                );
            }
            assert!(nodes[&1].1.unsynced >= 1, "the apply is not synced");
        }
    }

    /// Writes taken in one round leave as one Accept per peer, and each peer answers them
    /// with one Accepted: not a message per write.
    #[test]
    fn a_round_of_writes_shares_its_messages() {
        let mut nodes = owning_cluster(3);
        for i in 0..10 {
            nodes
                .get_mut(&1)
                .unwrap()
                .0
                .client_request(0, 10 + i, put(10 + i));
        }
        let (owner, machine) = nodes.get_mut(&1).unwrap();
        let mut out = Wire(Vec::new(), 1);
        let Ok(_) = process(owner, machine, &mut out, 0);
        let accepts: Vec<(NodeId, usize)> = out
            .0
            .iter()
            .filter_map(|(_, to, m)| match m {
                Message::Accept { entries, .. } => Some((*to, entries.len())),
                _ => None,
            })
            .collect();
        assert!(!accepts.is_empty());
        let mut peers: Vec<NodeId> = accepts.iter().map(|(to, _)| *to).collect();
        peers.dedup();
        assert_eq!(
            peers.len(),
            accepts.len(),
            "one Accept per peer: {accepts:?}"
        );
        assert!(accepts.iter().all(|(_, n)| *n == 10), "{accepts:?}");
        for (from, to, message) in out.0 {
            nodes.get_mut(&to).unwrap().0.step(0, from, message);
        }
        let mut answers = Vec::new();
        for &peer in &peers {
            let (node, machine) = nodes.get_mut(&peer).unwrap();
            let mut out = Wire(Vec::new(), peer);
            let Ok(_) = process(node, machine, &mut out, 0);
            let acks: Vec<usize> = out
                .0
                .iter()
                .filter_map(|(_, _, m)| match m {
                    Message::Accepted { slots, .. } => Some(slots.len()),
                    _ => None,
                })
                .collect();
            assert_eq!(acks, vec![10], "node {peer}: one Accepted for the round");
            answers.extend(out.0);
        }
        for (from, to, message) in answers {
            nodes.get_mut(&to).unwrap().0.step(0, from, message);
        }
        settle(&mut nodes);
        assert_eq!(nodes[&1].1.written, 11);
    }
}
