//! What a group's handlers may use, and where their output goes.

use std::collections::{BTreeMap, VecDeque};

use rand::Rng;
use rand::rngs::StdRng;

use super::ballot::{Ballot, NodeId, Zone};
use super::command::CommandOp;
use super::membership::Membership;
use super::message::Message;
use super::quorum::JointQuorums;
use super::ready::{Outgoing, PersistOp, Ready};
use super::settings::Settings;

/// What a handler may use and where its output goes.
pub(super) struct Ctx<'a> {
    pub id: NodeId,
    pub zone: &'a Zone,
    pub now: u64,
    pub settings: &'a Settings,
    /// The quorums of the configuration in force (both configurations while joint).
    pub quorums: &'a JointQuorums,
    /// Every member of the configuration in force (of either while joint).
    pub membership: &'a Membership,
    /// The configuration epoch this node has applied.
    pub epoch: u64,
    /// Nodes that showed a newer configuration epoch: the node fetches the `atlas` log from
    /// them. The epoch in a message is never adopted by itself (it could be a lie or ahead
    /// of what is committed); only applied `atlas` entries change the configuration.
    pub newer_epoch_at: &'a mut Vec<NodeId>,
    pub zone_rtt: &'a BTreeMap<Zone, u64>,
    pub quiet_until: u64,
    /// Bytes of applied entries this group may keep for catch-up (its share of the node's).
    pub retain_bytes: usize,
    pub rng: &'a mut StdRng,
    pub out: &'a mut Ready,
    /// Messages a node sends itself are handled in the same input, before the batch leaves.
    pub inbox: &'a mut VecDeque<(NodeId, Message)>,
    /// Applied changes of `atlas.nodes`, for the node to fold into its membership.
    pub membership_changes: &'a mut Vec<CommandOp>,
}

impl Ctx<'_> {
    /// Queues a message. Votes wait for the batch they depend on to be durable, also when
    /// this node sends them to itself (an owner counts its own accept only once it is on
    /// disk); other messages to this node are handled within the same input.
    pub fn send(&mut self, to: NodeId, message: Message) {
        if message.is_vote() {
            self.out.after_persist.push(Outgoing { to, message });
        } else if to == self.id {
            self.inbox.push_back((to, message));
        } else {
            self.out.messages.push(Outgoing { to, message });
        }
    }

    /// To every member, this node included (its acceptor answers through the inbox).
    pub fn broadcast(&mut self, message: Message) {
        let members: Vec<NodeId> = self.membership.nodes().collect();
        for to in members {
            self.send(to, message.clone());
        }
    }

    pub fn broadcast_others(&mut self, message: Message) {
        let members: Vec<NodeId> = self.membership.nodes().filter(|n| *n != self.id).collect();
        for to in members {
            self.send(to, message.clone());
        }
    }

    pub fn persist(&mut self, op: PersistOp) {
        self.out.persist.push(op);
    }

    pub fn lease_ms(&self) -> u64 {
        if self.settings.leases_enabled() {
            self.settings.lease_ms
        } else {
            0
        }
    }

    pub fn backoff(&mut self) -> u64 {
        let (lo, hi) = (self.settings.backoff_min_ms, self.settings.backoff_max_ms);
        self.now
            + if hi > lo {
                self.rng.random_range(lo..hi)
            } else {
                lo
            }
    }

    /// Whether `a` wins a tie of ballot counters against `b`: zone first, then node id (the
    /// higher wins, as node ids do in ballots). A node of unknown zone ranks lowest.
    pub fn wins_tie(&self, a: NodeId, b: NodeId) -> bool {
        let rank = |n: NodeId| (self.membership.zone_of(n).cloned(), n);
        rank(a) > rank(b)
    }

    /// Tells `to` that its `ballot` lost to our promise (with our epoch, so it can catch up).
    pub fn reject(&mut self, to: NodeId, group: &str, ballot: Ballot, promised: Ballot) {
        let message = Message::Reject {
            group: group.to_string(),
            ballot,
            promised,
            epoch: self.epoch,
        };
        self.send(to, message);
    }

    /// Refuses a request of another configuration epoch: an older sender is told ours (it
    /// catches up); from a newer one nothing is answered, and this node catches up.
    pub fn wrong_epoch(
        &mut self,
        group: &str,
        from: NodeId,
        ballot: Ballot,
        epoch: u64,
        promised: Ballot,
    ) -> bool {
        if epoch == self.epoch {
            return false;
        }
        if epoch < self.epoch {
            self.reject(from, group, ballot, promised);
        } else {
            self.newer_epoch_at.push(from);
        }
        true
    }

    /// A random member other than this node, for gap fill.
    pub fn random_peer(&mut self) -> Option<NodeId> {
        let peers: Vec<NodeId> = self.membership.nodes().filter(|n| *n != self.id).collect();
        if peers.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..peers.len());
        peers.get(i).copied()
    }
}
