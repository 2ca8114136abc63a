//! The body of one `POST /atlas/v1/consensus`: the sender's node id and a batch of consensus
//! messages, each in its own versioned encoding. An empty batch is a ping.

use crate::consensus::codec::{Reader, Writer};
use crate::consensus::{CodecError, Message, NodeId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub messages: Vec<Message>,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::versioned();
        w.u64(self.from);
        w.seq(&self.messages, |w, m| w.bytes(&m.encode()));
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, CodecError> {
        let mut r = Reader::versioned(bytes)?;
        let from = r.u64()?;
        let messages = r.seq(|r| Message::decode(&r.bytes()?))?;
        r.finish()?;
        Ok(Envelope { from, messages })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Ballot;

    #[test]
    fn envelopes_round_trip_and_other_versions_are_refused() {
        let envelope = Envelope {
            from: 3,
            messages: vec![
                Message::Heartbeat {
                    group: "t".into(),
                    ballot: Ballot {
                        counter: 2,
                        node: 3,
                    },
                    applied: 9,
                },
                Message::CatchUp {
                    group: "u".into(),
                    from: 1,
                    to: 4,
                },
            ],
        };
        let bytes = envelope.encode();
        assert_eq!(Envelope::decode(&bytes), Ok(envelope));
        let mut other = bytes.clone();
        other[0] = 9;
        let err = Envelope::decode(&other).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Envelope::decode(b"").is_err());
    }
}
