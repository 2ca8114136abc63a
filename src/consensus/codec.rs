//! A small binary encoding: big-endian integers, length-prefixed bytes and sequences.
//! Every frame starts with a version byte; a frame of another version is refused clearly.
//!
//! Decoding bounds allocations by the input's size: a sequence count is checked against
//! the bytes left (each item needs at least a known number of them) before anything is
//! reserved, so a lying count fails instead of allocating.

use bytes::Bytes;

use super::ballot::{Ballot, CommandId};
use super::command::{Command, CommandOp};
use super::membership::{Config, Membership};

/// The version of the wire and persistence encodings written by this build. Version 2:
/// floors in commands, paged promises, commits by slot, compacted catch-up replies.
pub const ENCODING_VERSION: u8 = 2;

/// Values at least this large are shared with the buffer they were decoded from (a message
/// that large travels alone, so the buffer is about the value itself).
pub const SHARED_VALUE_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("encoding version {found} is not supported (this build reads version {expected})")]
    Version { found: u8, expected: u8 },
    #[error("truncated input: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("length {0} is too large")]
    TooLong(u64),
    #[error("invalid UTF-8 in a string")]
    Utf8,
    #[error("{0} trailing bytes after the frame")]
    Trailing(usize),
}

#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn versioned() -> Writer {
        Writer {
            buf: vec![ENCODING_VERSION],
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    pub fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }

    pub fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    pub fn ballot(&mut self, b: Ballot) {
        self.u64(b.counter);
        self.u64(b.node);
    }

    pub fn command_id(&mut self, id: CommandId) {
        self.u64(id.origin);
        self.u64(id.seq);
    }

    pub fn command(&mut self, c: &Command) {
        self.command_id(c.id);
        self.u64(c.floor);
        self.command_op(&c.op);
    }

    /// A log entry's operation: a tag (0 no-op, 1 put, 2 delete, 3 add node, 4 remove node,
    /// 5 leave joint, 6 seal), then its fields. A client's write uses the same encoding.
    pub fn command_op(&mut self, op: &CommandOp) {
        match op {
            CommandOp::Noop => self.u8(0),
            CommandOp::Put { key, value } => {
                self.u8(1);
                self.str(key);
                self.bytes(value);
            }
            CommandOp::Delete { key } => {
                self.u8(2);
                self.str(key);
            }
            CommandOp::AddNode { node, zone } => {
                self.u8(3);
                self.u64(*node);
                self.str(zone);
            }
            CommandOp::RemoveNode { node } => {
                self.u8(4);
                self.u64(*node);
            }
            CommandOp::LeaveJoint { epoch } => {
                self.u8(5);
                self.u64(*epoch);
            }
            CommandOp::Seal { epoch } => {
                self.u8(6);
                self.u64(*epoch);
            }
        }
    }

    pub fn seq<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Writer, &T)) {
        self.u64(items.len() as u64);
        for item in items {
            each(self, item);
        }
    }

    pub fn membership(&mut self, m: &Membership) {
        let nodes: Vec<(u64, String)> = m
            .nodes()
            .map(|n| (n, m.zone_of(n).cloned().unwrap_or_default()))
            .collect();
        self.seq(&nodes, |w, (node, zone)| {
            w.u64(*node);
            w.str(zone);
        });
    }

    pub fn config(&mut self, c: &Config) {
        self.u64(c.epoch);
        self.membership(&c.current);
        self.bool(c.next.is_some());
        if let Some(next) = &c.next {
            self.membership(next);
        }
        self.seq(&c.past, |w, (m, last)| {
            w.membership(m);
            w.u64(*last);
        });
    }
}

pub struct Reader<'a> {
    input: &'a [u8],
    /// The buffer `input` is a suffix of, when values may share it instead of copying.
    shared: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    /// Checks the version byte and returns a reader over the rest.
    pub fn versioned(input: &'a [u8]) -> Result<Reader<'a>, CodecError> {
        let mut r = Reader {
            input,
            shared: None,
        };
        let found = r.u8()?;
        if found != ENCODING_VERSION {
            return Err(CodecError::Version {
                found,
                expected: ENCODING_VERSION,
            });
        }
        Ok(r)
    }

    /// Like `versioned`, but byte values are slices of `input` (no copy of a large value).
    pub fn versioned_shared(input: &'a Bytes) -> Result<Reader<'a>, CodecError> {
        let mut r = Reader::versioned(input)?;
        r.shared = Some(input);
        Ok(r)
    }

    pub fn finish(self) -> Result<(), CodecError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(CodecError::Trailing(self.input.len()))
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.input.len() < n {
            return Err(CodecError::Truncated {
                needed: n - self.input.len(),
            });
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub fn u64(&mut self) -> Result<u64, CodecError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    pub fn bool(&mut self) -> Result<bool, CodecError> {
        Ok(self.u8()? != 0)
    }

    /// A byte-string length; `take` then refuses one longer than the input.
    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| CodecError::TooLong(n))
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }

    /// A byte value as `Bytes`: a slice of the input when it is shared and the value is
    /// large, else a copy. (A small value kept as a slice would pin the whole buffer it
    /// came in, a batch of many messages, for as long as the log retains it.)
    pub fn value(&mut self) -> Result<Bytes, CodecError> {
        let n = self.len()?;
        let slice = self.take(n)?;
        Ok(match self.shared {
            Some(base) if n >= SHARED_VALUE_BYTES => base.slice_ref(slice),
            _ => Bytes::copy_from_slice(slice),
        })
    }

    /// A sequence count, refused if the input cannot hold that many items of at least
    /// `min_item_bytes` each.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, CodecError> {
        let n = self.u64()?;
        if n.saturating_mul(min_item_bytes.max(1) as u64) > self.input.len() as u64 {
            return Err(CodecError::TooLong(n));
        }
        Ok(n as usize)
    }

    pub fn string(&mut self) -> Result<String, CodecError> {
        String::from_utf8(self.bytes()?).map_err(|_| CodecError::Utf8)
    }

    pub fn ballot(&mut self) -> Result<Ballot, CodecError> {
        Ok(Ballot {
            counter: self.u64()?,
            node: self.u64()?,
        })
    }

    pub fn command_id(&mut self) -> Result<CommandId, CodecError> {
        Ok(CommandId {
            origin: self.u64()?,
            seq: self.u64()?,
        })
    }

    pub fn command(&mut self) -> Result<Command, CodecError> {
        let id = self.command_id()?;
        let floor = self.u64()?;
        let tag = self.u8()?;
        let op = self.command_op(tag)?;
        Ok(Command { id, floor, op })
    }

    /// The fields of an operation whose tag (see [`Writer::command_op`]) was just read.
    pub fn command_op(&mut self, tag: u8) -> Result<CommandOp, CodecError> {
        Ok(match tag {
            0 => CommandOp::Noop,
            1 => CommandOp::Put {
                key: self.string()?,
                value: self.value()?,
            },
            2 => CommandOp::Delete {
                key: self.string()?,
            },
            3 => CommandOp::AddNode {
                node: self.u64()?,
                zone: self.string()?,
            },
            4 => CommandOp::RemoveNode { node: self.u64()? },
            5 => CommandOp::LeaveJoint { epoch: self.u64()? },
            6 => CommandOp::Seal { epoch: self.u64()? },
            tag => {
                return Err(CodecError::UnknownTag {
                    what: "command",
                    tag,
                });
            }
        })
    }

    /// A sequence of items that each take at least `min_item_bytes` of input.
    pub fn seq<T>(
        &mut self,
        min_item_bytes: usize,
        mut each: impl FnMut(&mut Reader<'a>) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let n = self.count(min_item_bytes)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(each(self)?);
        }
        Ok(out)
    }

    pub fn membership(&mut self) -> Result<Membership, CodecError> {
        let nodes = self.seq(16, |r| Ok((r.u64()?, r.string()?)))?;
        Ok(Membership::new(nodes))
    }

    pub fn config(&mut self) -> Result<Config, CodecError> {
        let epoch = self.u64()?;
        let current = self.membership()?;
        let next = if self.bool()? {
            Some(self.membership()?)
        } else {
            None
        };
        let past = self.seq(16, |r| Ok((r.membership()?, r.u64()?)))?;
        Ok(Config {
            epoch,
            current,
            next,
            past,
        })
    }
}

/// Bytes a command takes at least when encoded (id, floor, tag).
pub const MIN_COMMAND_BYTES: usize = 25;

/// Encodes one command on its own (the persisted form of log and accepted entries).
pub fn encode_command(c: &Command) -> Vec<u8> {
    let mut w = Writer::versioned();
    w.command(c);
    w.finish()
}

pub fn decode_command(bytes: &[u8]) -> Result<Command, CodecError> {
    let mut r = Reader::versioned(bytes)?;
    let c = r.command()?;
    r.finish()?;
    Ok(c)
}

/// The persisted form of a configuration (the `atlas` group's state).
pub fn encode_config(c: &Config) -> Vec<u8> {
    let mut w = Writer::versioned();
    w.config(c);
    w.finish()
}

pub fn decode_config(bytes: &[u8]) -> Result<Config, CodecError> {
    let mut r = Reader::versioned(bytes)?;
    let c = r.config()?;
    r.finish()?;
    Ok(c)
}
