//! A small binary encoding: big-endian integers, length-prefixed bytes and sequences.
//! Every frame starts with a version byte; a frame of another version is refused clearly.

use super::ballot::{Ballot, CommandId};
use super::command::{Command, CommandOp};

/// The version of the wire and persistence encodings written by this build.
pub const ENCODING_VERSION: u8 = 1;

/// Longest sequence or byte string accepted when decoding (guards allocations): room for a
/// write carrying the largest configurable blob (128 MiB by default) plus its framing.
const MAX_LEN: usize = 160 * 1024 * 1024;

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
        match &c.op {
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
            CommandOp::LeaveJoint => self.u8(5),
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
}

pub struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the version byte and returns a reader over the rest.
    pub fn versioned(input: &'a [u8]) -> Result<Reader<'a>, CodecError> {
        let mut r = Reader { input };
        let found = r.u8()?;
        if found != ENCODING_VERSION {
            return Err(CodecError::Version {
                found,
                expected: ENCODING_VERSION,
            });
        }
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

    fn len(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        if n > MAX_LEN as u64 {
            return Err(CodecError::TooLong(n));
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, CodecError> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
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
        let op = match self.u8()? {
            0 => CommandOp::Noop,
            1 => CommandOp::Put {
                key: self.string()?,
                value: self.bytes()?,
            },
            2 => CommandOp::Delete {
                key: self.string()?,
            },
            3 => CommandOp::AddNode {
                node: self.u64()?,
                zone: self.string()?,
            },
            4 => CommandOp::RemoveNode { node: self.u64()? },
            5 => CommandOp::LeaveJoint,
            6 => CommandOp::Seal { epoch: self.u64()? },
            tag => {
                return Err(CodecError::UnknownTag {
                    what: "command",
                    tag,
                });
            }
        };
        Ok(Command { id, op })
    }

    pub fn seq<T>(
        &mut self,
        mut each: impl FnMut(&mut Reader<'a>) -> Result<T, CodecError>,
    ) -> Result<Vec<T>, CodecError> {
        let n = self.len()?;
        // Each item takes at least one byte, so a lying length fails before it allocates.
        let mut out = Vec::with_capacity(n.min(self.input.len()));
        for _ in 0..n {
            out.push(each(self)?);
        }
        Ok(out)
    }
}

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
