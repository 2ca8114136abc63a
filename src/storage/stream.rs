//! The snapshot stream: a consistent copy of one or more groups' state machines, sent in
//! bounded, checksummed frames so neither side ever holds more than one frame of it.
//!
//! ```text
//! stream := frame*          frame := [len: u32 BE][crc32: u32 BE][payload: len bytes]
//! payload: versioned item   item  := Group | Data | End
//! ```
//!
//! A `Group` item starts a group (its state, and for `atlas` the configuration); `Data`
//! items carry its state machine's records, opaque here (the machine that wrote them reads
//! them); `End` closes the stream with the count of items before it, so a truncated stream
//! is refused. A frame whose checksum does not match is refused. The receiver verifies the
//! whole stream before it installs anything; a failed transfer is restarted from the start
//! (a new snapshot), never resumed into a different point in time.

use std::io::{Read, Write};

use bytes::Bytes;

use crate::consensus::codec::{CodecError, Reader, Writer};
use crate::consensus::{Config, GroupId, GroupState};

/// Largest frame payload accepted (data items are cut well below it).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Data items are at most about this large (a blob chunk plus its framing).
pub const DATA_ITEM_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotItem {
    Group {
        group: GroupId,
        state: GroupState,
        config: Option<Config>,
    },
    Data(Bytes),
    End {
        items: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot stream: frame of {0} bytes is larger than allowed")]
    FrameTooLarge(usize),
    #[error("snapshot stream: a frame's checksum does not match")]
    Checksum,
    #[error("snapshot stream: {0}")]
    Codec(#[from] CodecError),
    #[error("snapshot stream: ended after {found} items without its end mark")]
    Truncated { found: u64 },
    #[error("snapshot stream: {0}")]
    Malformed(&'static str),
}

impl SnapshotItem {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::versioned();
        match self {
            SnapshotItem::Group {
                group,
                state,
                config,
            } => {
                w.u8(1);
                w.str(group);
                w.bytes(&state.encode());
                w.bool(config.is_some());
                if let Some(config) = config {
                    w.config(config);
                }
            }
            SnapshotItem::Data(bytes) => {
                w.u8(2);
                w.bytes(bytes);
            }
            SnapshotItem::End { items } => {
                w.u8(3);
                w.u64(*items);
            }
        }
        w.finish()
    }

    fn decode(payload: &Bytes) -> Result<SnapshotItem, SnapshotError> {
        let mut r = Reader::versioned_shared(payload)?;
        let item = match r.u8()? {
            1 => {
                let group = r.string()?;
                let state = GroupState::decode(&r.bytes()?)?;
                let config = if r.bool()? { Some(r.config()?) } else { None };
                SnapshotItem::Group {
                    group,
                    state,
                    config,
                }
            }
            2 => SnapshotItem::Data(r.value()?),
            3 => SnapshotItem::End { items: r.u64()? },
            _ => return Err(SnapshotError::Malformed("unknown item")),
        };
        r.finish()?;
        Ok(item)
    }
}

/// Writes items as frames, counting them for the end mark.
pub struct FrameWriter<W: Write> {
    out: W,
    items: u64,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(out: W) -> FrameWriter<W> {
        FrameWriter { out, items: 0 }
    }

    pub fn item(&mut self, item: &SnapshotItem) -> Result<(), SnapshotError> {
        let payload = item.encode();
        if payload.len() > MAX_FRAME_BYTES {
            return Err(SnapshotError::FrameTooLarge(payload.len()));
        }
        self.out.write_all(&(payload.len() as u32).to_be_bytes())?;
        self.out
            .write_all(&crc32fast::hash(&payload).to_be_bytes())?;
        self.out.write_all(&payload)?;
        self.items += 1;
        Ok(())
    }

    /// Writes the end mark and hands back the writer.
    pub fn finish(mut self) -> Result<W, SnapshotError> {
        let items = self.items;
        self.item(&SnapshotItem::End { items })?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads frames back, checking sizes, checksums and the end mark.
pub struct FrameReader<R: Read> {
    input: R,
    items: u64,
    ended: bool,
}

impl<R: Read> FrameReader<R> {
    pub fn new(input: R) -> FrameReader<R> {
        FrameReader {
            input,
            items: 0,
            ended: false,
        }
    }

    /// The next item before the end mark; `None` once the (valid) end mark was read.
    pub fn next_item(&mut self) -> Result<Option<SnapshotItem>, SnapshotError> {
        if self.ended {
            return Ok(None);
        }
        let mut head = [0u8; 8];
        if let Err(e) = self.input.read_exact(&mut head) {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated { found: self.items },
                _ => SnapshotError::Io(e),
            });
        }
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME_BYTES {
            return Err(SnapshotError::FrameTooLarge(len));
        }
        let mut payload = vec![0u8; len];
        self.input
            .read_exact(&mut payload)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated { found: self.items },
                _ => SnapshotError::Io(e),
            })?;
        if crc32fast::hash(&payload) != crc {
            return Err(SnapshotError::Checksum);
        }
        match SnapshotItem::decode(&Bytes::from(payload))? {
            SnapshotItem::End { items } => {
                if items != self.items {
                    return Err(SnapshotError::Malformed("item count does not match"));
                }
                let mut rest = [0u8; 1];
                if self.input.read(&mut rest)? != 0 {
                    return Err(SnapshotError::Malformed("bytes after the end mark"));
                }
                self.ended = true;
                Ok(None)
            }
            item => {
                self.items += 1;
                Ok(Some(item))
            }
        }
    }
}

/// Checks a whole stream (every frame, the end mark) without keeping it: what a receiver
/// runs over a downloaded file before installing from it. Returns the groups it holds.
pub fn verify(input: impl Read) -> Result<Vec<GroupId>, SnapshotError> {
    let mut reader = FrameReader::new(input);
    let mut groups = Vec::new();
    let mut in_group = false;
    while let Some(item) = reader.next_item()? {
        match item {
            SnapshotItem::Group { group, .. } => {
                groups.push(group);
                in_group = true;
            }
            SnapshotItem::Data(_) if !in_group => {
                return Err(SnapshotError::Malformed("data before any group"));
            }
            _ => {}
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::Membership;

    fn stream() -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new());
        w.item(&SnapshotItem::Group {
            group: "atlas".into(),
            state: GroupState {
                applied: 4,
                ..GroupState::default()
            },
            config: Some(Config::new(Membership::new([(1, "a".to_string())]))),
        })
        .unwrap();
        w.item(&SnapshotItem::Data(Bytes::from_static(b"record")))
            .unwrap();
        w.item(&SnapshotItem::Group {
            group: "users".into(),
            state: GroupState::default(),
            config: None,
        })
        .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn a_stream_round_trips_and_damage_is_refused() {
        let bytes = stream();
        assert_eq!(
            verify(&bytes[..]).unwrap(),
            vec!["atlas".to_string(), "users".to_string()]
        );
        let mut r = FrameReader::new(&bytes[..]);
        assert!(matches!(
            r.next_item().unwrap(),
            Some(SnapshotItem::Group { group, .. }) if group == "atlas"
        ));
        assert_eq!(
            r.next_item().unwrap(),
            Some(SnapshotItem::Data(Bytes::from_static(b"record")))
        );
        assert!(r.next_item().unwrap().is_some());
        assert_eq!(r.next_item().unwrap(), None);
        // Truncated anywhere, or with a flipped bit, or with bytes after the end: refused.
        for cut in 0..bytes.len() {
            assert!(verify(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x10;
            assert!(verify(&damaged[..]).is_err(), "flip at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(verify(&longer[..]).is_err());
        // A frame claiming to be huge is refused before anything is allocated.
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 12]);
        assert!(matches!(
            verify(&huge[..]),
            Err(SnapshotError::FrameTooLarge(_))
        ));
    }
}
