//! Writes as values: everything needed to apply a write the same way on every replica.
//!
//! A `Write` is decided once, where the client's request arrives (the clock is read there: a
//! WORM TTL becomes an absolute deadline and `at_ms` is the instant the rules are judged at),
//! then applied by `kv::apply` — on a single node directly, in a cluster to every replica
//! from the consensus log.

use crate::protocol::{Command, Deadline, Key, Perm, TxnStep};
use crate::storage::upload::UploadId;

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
        /// Gone after this instant (`TTL`/`EXPIRES` without `WORM`).
        expires_ms: Option<i64>,
        /// Only if the key is at this version (0: absent): `KEY CAS`.
        if_version: Option<u64>,
    },
    BlobSet {
        bytes: Vec<u8>,
    },
    /// A blob already staged chunk by chunk (a cluster's large `BLOB SET`), adopted whole.
    BlobStaged {
        upload: UploadId,
        len: u64,
    },
    Delete {
        /// Only if the key is at this version: `KEY DEL … IF VERSION`.
        if_version: Option<u64>,
    },
    /// Removes the key's value if it has expired at `at_ms` (the owner's sweep, so the
    /// removal is judged by one clock and committed like any write).
    Expire,
    /// Steps of one table, all applied or none: conditions first, then the changes in
    /// order. `Write::key` is the first step's key (it routes the write to its table).
    Txn(Vec<TxnStep>),
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
        let instant = |deadline: Deadline| match deadline {
            Deadline::Ttl(ttl) => {
                now_ms.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
            }
            Deadline::ExpiresAt(at) => at,
        };
        let (key, op) = match command {
            Command::Put {
                key,
                worm,
                expires,
                value,
                ..
            } => (
                key,
                WriteOp::Put {
                    value,
                    worm_until_ms: worm.map(instant),
                    expires_ms: expires.map(instant),
                    if_version: None,
                },
            ),
            Command::Cas {
                key,
                version,
                value,
            } => (
                key,
                WriteOp::Put {
                    value,
                    worm_until_ms: None,
                    expires_ms: None,
                    if_version: Some(version),
                },
            ),
            Command::TxnCommit(steps) => (steps.first()?.key().clone(), WriteOp::Txn(steps)),
            Command::BlobSet { key, .. } => (
                key,
                WriteOp::BlobSet {
                    bytes: blob.unwrap_or_default(),
                },
            ),
            Command::Del { key, if_version } => (key, WriteOp::Delete { if_version }),
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

    /// Whether a condition on the state decides the answer (beyond the rules every write
    /// meets: system tables, ACLs, WORM locks).
    pub fn is_conditional(&self) -> bool {
        matches!(
            self.op,
            WriteOp::Put {
                if_version: Some(_),
                ..
            } | WriteOp::Delete {
                if_version: Some(_)
            } | WriteOp::Txn(_)
        )
    }

    /// Every key the write may change or read (a batch applying it locks them).
    pub fn keys(&self) -> Vec<&Key> {
        match &self.op {
            WriteOp::Txn(steps) => steps.iter().map(TxnStep::key).collect(),
            _ => vec![&self.key],
        }
    }

    /// Bytes the write holds (what keeping it in flight costs).
    pub fn size(&self) -> usize {
        let payload = match &self.op {
            WriteOp::Put { value, .. } => value.len(),
            WriteOp::BlobSet { bytes } => bytes.len(),
            WriteOp::Grant { subject, .. } | WriteOp::Revoke { subject, .. } => subject.len(),
            WriteOp::Delete { .. } | WriteOp::Expire => 0,
            WriteOp::BlobStaged { .. } => 24,
            WriteOp::Txn(steps) => steps.iter().map(TxnStep::size).sum(),
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
            // Code 1 is the put without expiry or condition every release understands.
            WriteOp::Put {
                value,
                worm_until_ms,
                expires_ms: None,
                if_version: None,
            } => {
                out.push(1);
                put_i64(&mut out, *worm_until_ms);
                put_bytes(&mut out, value);
            }
            WriteOp::Put {
                value,
                worm_until_ms,
                expires_ms,
                if_version,
            } => {
                out.push(6);
                put_i64(&mut out, *worm_until_ms);
                put_i64(&mut out, *expires_ms);
                put_i64(&mut out, if_version.map(|v| v as i64));
                put_bytes(&mut out, value);
            }
            WriteOp::BlobSet { bytes } => {
                out.push(2);
                put_bytes(&mut out, bytes);
            }
            WriteOp::BlobStaged { upload, len } => {
                out.push(10);
                out.extend_from_slice(&upload.origin.to_be_bytes());
                out.extend_from_slice(&upload.id.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
            WriteOp::Delete { if_version: None } => out.push(3),
            WriteOp::Delete {
                if_version: Some(version),
            } => {
                out.push(7);
                out.extend_from_slice(&version.to_be_bytes());
            }
            WriteOp::Expire => out.push(9),
            WriteOp::Txn(steps) => {
                out.push(8);
                out.extend_from_slice(&(steps.len() as u64).to_be_bytes());
                for step in steps {
                    match step {
                        TxnStep::IfVersion { key, version } => {
                            out.push(1);
                            put_bytes(&mut out, key.as_bytes());
                            out.extend_from_slice(&version.to_be_bytes());
                        }
                        TxnStep::Put { key, value } => {
                            out.push(2);
                            put_bytes(&mut out, key.as_bytes());
                            put_bytes(&mut out, value);
                        }
                        TxnStep::Del(key) => {
                            out.push(3);
                            put_bytes(&mut out, key.as_bytes());
                        }
                    }
                }
            }
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
            1 => WriteOp::Put {
                worm_until_ms: r.optional_i64()?,
                value: r.bytes()?.to_vec(),
                expires_ms: None,
                if_version: None,
            },
            6 => WriteOp::Put {
                worm_until_ms: r.optional_i64()?,
                expires_ms: r.optional_i64()?,
                if_version: r.optional_i64()?.map(|v| v as u64),
                value: r.bytes()?.to_vec(),
            },
            2 => WriteOp::BlobSet {
                bytes: r.bytes()?.to_vec(),
            },
            3 => WriteOp::Delete { if_version: None },
            9 => WriteOp::Expire,
            10 => WriteOp::BlobStaged {
                upload: UploadId {
                    origin: r.i64()? as u64,
                    id: r.i64()? as u64,
                },
                len: r.i64()? as u64,
            },
            7 => WriteOp::Delete {
                if_version: Some(r.i64()? as u64),
            },
            8 => {
                let count = r.i64()? as u64;
                // Each step takes at least 9 bytes: a count beyond the input is malformed,
                // and steps are pushed as they decode (nothing is sized by the count).
                if count == 0 || count > r.0.len() as u64 / 9 {
                    return Err(WriteDecodeError::Malformed("transaction step count"));
                }
                let mut steps = Vec::new();
                for _ in 0..count {
                    let code = r.u8()?;
                    let key =
                        Key::parse(r.bytes()?).map_err(|_| WriteDecodeError::Malformed("key"))?;
                    steps.push(match code {
                        1 => TxnStep::IfVersion {
                            key,
                            version: r.i64()? as u64,
                        },
                        2 => TxnStep::Put {
                            key,
                            value: r.bytes()?.to_vec(),
                        },
                        3 => TxnStep::Del(key),
                        _ => return Err(WriteDecodeError::Malformed("transaction step")),
                    });
                }
                WriteOp::Txn(steps)
            }
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

fn put_i64(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&v.to_be_bytes());
        }
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

    fn optional_i64(&mut self) -> Result<Option<i64>, WriteDecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.i64()?)),
            _ => Err(WriteDecodeError::Malformed("optional flag")),
        }
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

    fn step() -> impl Strategy<Value = TxnStep> {
        let key = "[a-z]{1,4}\\.[a-z0-9]{1,6}".prop_map(|k| Key::parse(k.as_bytes()).unwrap());
        prop_oneof![
            (key.clone(), any::<u64>())
                .prop_map(|(key, version)| TxnStep::IfVersion { key, version }),
            (key.clone(), proptest::collection::vec(any::<u8>(), 0..16))
                .prop_map(|(key, value)| TxnStep::Put { key, value }),
            key.prop_map(TxnStep::Del),
        ]
    }

    fn op() -> impl Strategy<Value = WriteOp> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<i64>()),
                proptest::option::of(any::<u64>()),
            )
                .prop_map(|(value, worm_until_ms, expires_ms, if_version)| {
                    WriteOp::Put {
                        value,
                        worm_until_ms,
                        expires_ms,
                        if_version,
                    }
                }),
            proptest::collection::vec(any::<u8>(), 0..64)
                .prop_map(|bytes| WriteOp::BlobSet { bytes }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(origin, id, len)| {
                WriteOp::BlobStaged {
                    upload: UploadId { origin, id },
                    len,
                }
            }),
            proptest::option::of(any::<u64>())
                .prop_map(|if_version| WriteOp::Delete { if_version }),
            Just(WriteOp::Expire),
            proptest::collection::vec(step(), 1..6).prop_map(WriteOp::Txn),
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
            op: WriteOp::Delete { if_version: None },
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
                worm_until_ms: Some(3_000),
                expires_ms: None,
                if_version: None,
            }
        );
        let command = crate::protocol::parse_request(b"KEY PUT t.k TTL 5s v")
            .unwrap()
            .command;
        let write = Write::from_command(command, None, None, 1_000).unwrap();
        assert!(matches!(
            write.op,
            WriteOp::Put {
                worm_until_ms: None,
                expires_ms: Some(6_000),
                ..
            }
        ));
        let read = crate::protocol::parse_request(b"KEY GET t.k")
            .unwrap()
            .command;
        assert_eq!(Write::from_command(read, None, None, 0), None);
    }
}
