//! The body of one `POST /atlas/v1/consensus`: the sender's node id and a batch of consensus
//! messages, each in its own versioned encoding. An empty batch is a ping.

use bytes::Bytes;

use crate::consensus::codec::{Reader, Writer};
use crate::consensus::{CodecError, Message, NodeId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub messages: Vec<Message>,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let encoded: Vec<Vec<u8>> = self.messages.iter().map(Message::encode).collect();
        Envelope::encode_parts(self.from, &encoded)
    }

    /// The body for messages encoded already (the transport encodes them to size batches).
    pub fn encode_parts(from: NodeId, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut w = Writer::versioned();
        w.u64(from);
        w.seq(messages, |w, m| w.bytes(m));
        w.finish()
    }

    /// Decodes a body; values in the messages share `bytes` (a blob is not copied).
    pub fn decode(bytes: &Bytes) -> Result<Envelope, CodecError> {
        let mut r = Reader::versioned_shared(bytes)?;
        let from = r.u64()?;
        let messages = r.seq(9, |r| Message::decode_shared(&r.value()?))?;
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
        assert_eq!(Envelope::decode(&Bytes::from(bytes.clone())), Ok(envelope));
        let mut other = bytes.clone();
        other[0] = 9;
        let err = Envelope::decode(&Bytes::from(other)).unwrap_err();
        assert!(err.to_string().contains("version 9"), "{err}");
        assert!(Envelope::decode(&Bytes::copy_from_slice(&bytes[..bytes.len() - 1])).is_err());
        assert!(Envelope::decode(&Bytes::new()).is_err());
    }
}
