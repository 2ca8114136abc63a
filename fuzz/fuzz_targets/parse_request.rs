//! Any bytes as a request line or handshake: the parser must return, never panic, and an
//! error message must never carry a line end (it would forge a frame).
#![no_main]

use atlas::protocol::parse::check_handshake;
use atlas::protocol::{Reply, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_handshake(data);
    match parse_request(data) {
        Ok(request) => {
            let _ = request.command.name();
        }
        Err(e) => {
            let mut out = Vec::new();
            Reply::warn(e.message).encode(e.tag.as_deref(), &mut out);
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(out.ends_with(b"\r\n"));
        }
    }
});
