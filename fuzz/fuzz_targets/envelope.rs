//! Any bytes as the body of `POST /atlas/v1/consensus`: decoding must return, never panic;
//! whatever decodes is stepped into a node of a three-node cluster, as from the claimed
//! sender, which must not panic either.
#![no_main]

use atlas::cluster::envelope::Envelope;
use atlas::consensus::{Membership, Node, Settings};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let members = Membership::new((1..=3).map(|n| (n, "z".to_string())));
    let mut node = Node::new(1, "z".into(), members, Settings::default(), 1, 1, 0);
    for (i, message) in envelope.messages.into_iter().enumerate() {
        let now = 1_000 + i as u64;
        node.step(now, envelope.from, message);
        node.tick(now);
        let _ = node.take_ready();
    }
});
