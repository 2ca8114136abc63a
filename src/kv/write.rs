//! Writes as values: everything needed to apply a write the same way on every replica.
//!
//! A `Write` is decided once, where the client's request arrives (the clock is read there: a
//! WORM TTL becomes an absolute deadline and `at_ms` is the instant the rules are judged at),
//! then applied by `kv::apply` — on a single node directly, in a cluster to every replica
//! from the consensus log.

use crate::protocol::{Command, Key, Perm, Worm};

/// Version byte of the encoding; a replica refuses a newer one instead of guessing.
const WRITE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: Key,
    /// The session principal the rules are judged for.
    pub principal: Option<String>,
    /// Unix milliseconds at which the write is judged (WORM locks, expiry).
    pub at_ms: i64,
    pub op: WriteOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put {
        value: Vec<u8>,
        worm_until_ms: Option<i64>,
    },
    BlobSet {
        bytes: Vec<u8>,
    },
    Delete,
    Grant {
        subject: String,
        perm: Perm,
    },
    Revoke {
        subject: String,
        perm: Perm,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteDecodeError {
    #[error("write encoded with version {0}, this node understands {WRITE_VERSION}")]
    Version(u8),
    #[error("malformed write: {0}")]
    Malformed(&'static str),
}

impl Write {
    /// The write a client command asks for, judged at `now_ms`; `None` for reads.
    pub fn from_command(
        command: Command,
        principal: Option<String>,
        blob: Option<Vec<u8>>,
        now_ms: i64,
    ) -> Option<Write> {
        let (key, op) = match command {
            Command::Put {
                key, worm, value, ..
            } => {
                let worm_until_ms = worm.map(|w| match w {
                    Worm::Ttl(ttl) => {
                        now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
                    }
                    Worm::ExpiresAt(at) => at,
                });
                (
                    key,
                    WriteOp::Put {
                        value,
                        worm_until_ms,
                    },
                )
            }
            Command::BlobSet { key, .. } => (
                key,
                WriteOp::BlobSet {
                    bytes: blob.unwrap_or_default(),
                },
            ),
            Command::Del(key) => (key, WriteOp::Delete),
            Command::Grant {
                key,
                principal: subject,
                perm,
            } => (key, WriteOp::Grant { subject, perm }),
            Command::Revoke {
                key,
                principal: subject,
                perm,
            } => (key, WriteOp::Revoke { subject, perm }),
            _ => return None,
        };
        Some(Write {
            key,
            principal,
            at_ms: now_ms,
            op,
        })
    }

    /// Bytes the write holds (what keeping it in flight costs).
    pub fn size(&self) -> usize {
        let payload = match &self.op {
            WriteOp::Put { value, .. } => value.len(),
            WriteOp::BlobSet { bytes } => bytes.len(),
            WriteOp::Grant { subject, .. } | WriteOp::Revoke { subject, .. } => subject.len(),
            WriteOp::Delete => 0,
        };
        64 + self.key.as_bytes().len() + self.principal.as_ref().map_or(0, String::len) + payload
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![WRITE_VERSION];
        put_bytes(&mut out, self.key.as_bytes());
        match &self.principal {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                put_bytes(&mut out, p.as_bytes());
            }
        }
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        match &self.op {
            WriteOp::Put {
                value,
                worm_until_ms,
            } => {
                out.push(1);
                match worm_until_ms {
                    None => out.push(0),
                    Some(until) => {
                        out.push(1);
                        out.extend_from_slice(&until.to_be_bytes());
                    }
                }
                put_bytes(&mut out, value);
            }
            WriteOp::BlobSet { bytes } => {
                out.push(2);
                put_bytes(&mut out, bytes);
            }
            WriteOp::Delete => out.push(3),
            WriteOp::Grant { subject, perm } | WriteOp::Revoke { subject, perm } => {
                out.push(if matches!(self.op, WriteOp::Grant { .. }) {
                    4
                } else {
                    5
                });
                put_bytes(&mut out, subject.as_bytes());
                out.push(perm_code(*perm));
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Write, WriteDecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != WRITE_VERSION {
            return Err(WriteDecodeError::Version(version));
        }
        let key = Key::parse(r.bytes()?).map_err(|_| WriteDecodeError::Malformed("key"))?;
        let principal = match r.u8()? {
            0 => None,
            1 => Some(r.string()?),
            _ => return Err(WriteDecodeError::Malformed("principal flag")),
        };
        let at_ms = r.i64()?;
        let op = match r.u8()? {
            1 => {
                let worm_until_ms = match r.u8()? {
                    0 => None,
                    1 => Some(r.i64()?),
                    _ => return Err(WriteDecodeError::Malformed("worm flag")),
                };
                WriteOp::Put {
                    value: r.bytes()?.to_vec(),
                    worm_until_ms,
                }
            }
            2 => WriteOp::BlobSet {
                bytes: r.bytes()?.to_vec(),
            },
            3 => WriteOp::Delete,
            code @ (4 | 5) => {
                let subject = r.string()?;
                let perm = perm_from_code(r.u8()?)?;
                if code == 4 {
                    WriteOp::Grant { subject, perm }
                } else {
                    WriteOp::Revoke { subject, perm }
                }
            }
            _ => return Err(WriteDecodeError::Malformed("operation")),
        };
        if !r.0.is_empty() {
            return Err(WriteDecodeError::Malformed("trailing bytes"));
        }
        Ok(Write {
            key,
            principal,
            at_ms,
            op,
        })
    }
}

fn perm_code(perm: Perm) -> u8 {
    match perm {
        Perm::Read => 1,
        Perm::Write => 2,
        Perm::Owner => 3,
    }
}

fn perm_from_code(code: u8) -> Result<Perm, WriteDecodeError> {
    match code {
        1 => Ok(Perm::Read),
        2 => Ok(Perm::Write),
        3 => Ok(Perm::Owner),
        _ => Err(WriteDecodeError::Malformed("permission")),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WriteDecodeError> {
        if self.0.len() < n {
            return Err(WriteDecodeError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WriteDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, WriteDecodeError> {
        let bytes: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| WriteDecodeError::Malformed("i64"))?;
        Ok(i64::from_be_bytes(bytes))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WriteDecodeError> {
        let len: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| WriteDecodeError::Malformed("length"))?;
        let len = usize::try_from(u64::from_be_bytes(len))
            .map_err(|_| WriteDecodeError::Malformed("length"))?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, WriteDecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| WriteDecodeError::Malformed("utf-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn perm() -> impl Strategy<Value = Perm> {
        prop_oneof![Just(Perm::Read), Just(Perm::Write), Just(Perm::Owner)]
    }

    fn op() -> impl Strategy<Value = WriteOp> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::option::of(any::<i64>())
            )
                .prop_map(|(value, worm_until_ms)| WriteOp::Put {
                    value,
                    worm_until_ms
                }),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|bytes| WriteOp::BlobSet { bytes }),
            Just(WriteOp::Delete),
            ("[a-z ]{0,12}", perm()).prop_map(|(subject, perm)| WriteOp::Grant { subject, perm }),
            ("[a-z ]{0,12}", perm()).prop_map(|(subject, perm)| WriteOp::Revoke { subject, perm }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(key in "[a-z]{1,8}\\.[a-z0-9.]{1,12}", principal in proptest::option::of("[a-zA-Z ]{1,20}"),
                      at_ms in any::<i64>(), op in op()) {
            let write = Write { key: Key::parse(key.as_bytes()).unwrap(), principal, at_ms, op };
            prop_assert_eq!(Write::decode(&write.encode()), Ok(write));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Write::decode(&bytes);
        }
    }

    #[test]
    fn newer_versions_are_refused() {
        let write = Write {
            key: Key::parse(b"t.k").unwrap(),
            principal: None,
            at_ms: 0,
            op: WriteOp::Delete,
        };
        let mut bytes = write.encode();
        bytes[0] = 2;
        assert_eq!(Write::decode(&bytes), Err(WriteDecodeError::Version(2)));
    }

    #[test]
    fn ttl_becomes_a_deadline_where_the_request_arrives() {
        let command = crate::protocol::parse_request(b"KEY PUT t.k WORM TTL 2s v")
            .unwrap()
            .command;
        let write = Write::from_command(command, Some("p".into()), None, 1_000).unwrap();
        assert_eq!(
            write.op,
            WriteOp::Put {
                value: b"v".to_vec(),
                worm_until_ms: Some(3_000)
            }
        );
        let read = crate::protocol::parse_request(b"KEY GET t.k")
            .unwrap()
            .command;
        assert_eq!(Write::from_command(read, None, None, 0), None);
    }
}
