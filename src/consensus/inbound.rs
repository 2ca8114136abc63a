//! Which peers' messages a node takes in. The transport authenticates the sender (with
//! `peer_mtls`, `from` is the node named by the peer's certificate); this decides what an
//! authenticated sender may say:
//! - only members of the configuration in force (of either while joint) are heard; a node
//!   this one does not know that shows a newer configuration epoch is not heard either,
//!   but makes it fetch the `atlas` log from that node (and that node's answer to the fetch
//!   is heard), so a member that fell behind a membership change catches up;
//! - a message that speaks for a proposer's ballot (prepare, accept, commit, heartbeat,
//!   lease renewal, handoff) comes from that ballot's node: no member speaks for another;
//! - replies and catch-up requests about a group this node has never seen are dropped, and
//!   a group name longer than a key cannot be made: messages cannot grow state without a
//!   member's proposal behind them.
//!
//! Members are trusted to follow the protocol (crash faults, not Byzantine ones): a member
//! that lies within its own ballot is outside what consensus tolerates; see
//! `docs/security.md`.

use super::ballot::NodeId;
use super::membership::SYSTEM_GROUP;
use super::message::Message;
use super::node::Node;

/// The longest group name taken in: a table name is a key's first segment, and keys are at
/// most 1,024 bytes (`protocol::key::MAX_KEY_BYTES`, checked equal in the tests).
pub const MAX_GROUP_NAME_BYTES: usize = 1024;

/// Why a peer's message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refused {
    NotAMember,
    SpeaksForAnotherNode,
    UnknownGroup,
    GroupNameTooLong,
}

impl Node {
    /// Whether the message of `from` is taken in; a refusal is counted and says why.
    pub(super) fn admit_message(&mut self, from: NodeId, message: &Message) -> Result<(), Refused> {
        if from == self.id {
            return Ok(());
        }
        if !self.membership.contains(from) {
            let asked = self.config_fetched_from == Some(from)
                && matches!(message, Message::CatchUpReply { group, .. } if group == SYSTEM_GROUP);
            if asked {
                return Ok(());
            }
            if message.epoch().is_some_and(|e| e > self.config.epoch) {
                self.newer_epoch_at.push(from);
            }
            return Err(Refused::NotAMember);
        }
        if message.sender_ballot().is_some_and(|b| b.node != from) {
            return Err(Refused::SpeaksForAnotherNode);
        }
        let group = message.group();
        if group.len() > MAX_GROUP_NAME_BYTES {
            return Err(Refused::GroupNameTooLong);
        }
        // `atlas` is every member's from the start (its configuration), whether or not any of
        // its entries reached this node yet: a catch-up of it is always welcome.
        if group != SYSTEM_GROUP && !self.groups.contains_key(group) && !message.may_start_group() {
            return Err(Refused::UnknownGroup);
        }
        Ok(())
    }
}
