//! Encoding of what the `values` column family holds for a key.
//!
//! Layout (version 3): `[3][flags][version: u64 BE][worm_until: i64 BE, when flags & WORM]
//! [expires: i64 BE, when flags & EXPIRES]` then either the inline bytes, or
//! `[blob_id: u64 BE][len: u64 BE]` when flags & BLOB. Flag ACL says the key has an ACL
//! (a row in the `acl` family); without it a read needs no second lookup. Version 2 is the
//! same without the ACL flag (such a record may have an ACL: it is looked up); version 1
//! (written before keys had versions) has no version and no EXPIRES flag either and reads
//! as version 1. Only version 3 is written.

const VERSION: u8 = 3;
const VERSION_2: u8 = 2;
const VERSION_1: u8 = 1;
const FLAG_BLOB: u8 = 1;
const FLAG_WORM: u8 = 2;
const FLAG_EXPIRES: u8 = 4;
const FLAG_ACL: u8 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Inline(Vec<u8>),
    /// Chunks live in the `blobs` column family under `blob_id`.
    Blob {
        blob_id: u64,
        len: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub body: Body,
    /// Write-once until this instant (Unix ms), gone after it.
    pub worm_until_ms: Option<i64>,
    /// Gone after this instant (Unix ms), writable before it (`KEY PUT … TTL`).
    pub expires_ms: Option<i64>,
    /// Writes of the key since it was created: 1 for the first.
    pub version: u64,
    /// The key may have an ACL. False only when it has none for certain (the batch that
    /// writes a record or an ACL keeps this true to the `acl` family), so a read of a key
    /// without one skips that lookup. Records of version 2 and older read as true.
    pub has_acl: bool,
}

impl Record {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.worm_until_ms.is_some_and(|until| until <= now_ms)
            || self.expires_ms.is_some_and(|at| at <= now_ms)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        if matches!(self.body, Body::Blob { .. }) {
            flags |= FLAG_BLOB;
        }
        if self.worm_until_ms.is_some() {
            flags |= FLAG_WORM;
        }
        if self.expires_ms.is_some() {
            flags |= FLAG_EXPIRES;
        }
        if self.has_acl {
            flags |= FLAG_ACL;
        }
        let mut out = vec![VERSION, flags];
        out.extend_from_slice(&self.version.to_be_bytes());
        for instant in [self.worm_until_ms, self.expires_ms].into_iter().flatten() {
            out.extend_from_slice(&instant.to_be_bytes());
        }
        match &self.body {
            Body::Inline(bytes) => out.extend_from_slice(bytes),
            Body::Blob { blob_id, len } => {
                out.extend_from_slice(&blob_id.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&format, rest) = bytes.split_first()?;
        let (&flags, mut rest) = rest.split_first()?;
        let known = match format {
            VERSION => FLAG_BLOB | FLAG_WORM | FLAG_EXPIRES | FLAG_ACL,
            VERSION_2 => FLAG_BLOB | FLAG_WORM | FLAG_EXPIRES,
            VERSION_1 => FLAG_BLOB | FLAG_WORM,
            _ => return None,
        };
        if flags & !known != 0 {
            return None;
        }
        let has_acl = format != VERSION || flags & FLAG_ACL != 0;
        let mut version = 1;
        if format != VERSION_1 {
            let (v, tail) = rest.split_first_chunk::<8>()?;
            version = u64::from_be_bytes(*v);
            rest = tail;
        }
        let mut instant = |flag: u8| -> Option<Option<i64>> {
            if flags & flag == 0 {
                return Some(None);
            }
            let (at, tail) = rest.split_first_chunk::<8>()?;
            rest = tail;
            Some(Some(i64::from_be_bytes(*at)))
        };
        let worm_until_ms = instant(FLAG_WORM)?;
        let expires_ms = instant(FLAG_EXPIRES)?;
        let body = if flags & FLAG_BLOB != 0 {
            let (id, tail) = rest.split_first_chunk::<8>()?;
            let (len, tail) = tail.split_first_chunk::<8>()?;
            if !tail.is_empty() {
                return None;
            }
            Body::Blob {
                blob_id: u64::from_be_bytes(*id),
                len: u64::from_be_bytes(*len),
            }
        } else {
            Body::Inline(rest.to_vec())
        };
        Some(Record {
            body,
            worm_until_ms,
            expires_ms,
            version,
            has_acl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(inline in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                      id in any::<u64>(), len in any::<u64>(), worm in proptest::option::of(any::<i64>()),
                      expires in proptest::option::of(any::<i64>()), version in any::<u64>(),
                      has_acl in any::<bool>()) {
            let body = match inline { Some(b) => Body::Inline(b), None => Body::Blob { blob_id: id, len } };
            let r = Record { body, worm_until_ms: worm, expires_ms: expires, version, has_acl };
            prop_assert_eq!(Record::decode(&r.encode()), Some(r));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Record::decode(&bytes);
        }
    }

    #[test]
    fn a_record_written_before_versions_reads_as_version_1() {
        let mut old = vec![VERSION_1, FLAG_WORM];
        old.extend_from_slice(&7i64.to_be_bytes());
        old.extend_from_slice(b"value");
        let record = Record::decode(&old).expect("format 1 still reads");
        assert_eq!(record.version, 1);
        assert_eq!(record.worm_until_ms, Some(7));
        assert_eq!(record.expires_ms, None);
        assert_eq!(record.body, Body::Inline(b"value".to_vec()));
        assert!(record.has_acl, "an old record's ACL is looked up");
        // Format 1 never had the EXPIRES flag.
        assert_eq!(Record::decode(&[VERSION_1, FLAG_EXPIRES]), None);
    }

    #[test]
    fn a_version_2_record_may_have_an_acl_and_never_carries_the_flag() {
        let mut old = vec![VERSION_2, FLAG_EXPIRES];
        old.extend_from_slice(&4u64.to_be_bytes());
        old.extend_from_slice(&9i64.to_be_bytes());
        old.extend_from_slice(b"v");
        let record = Record::decode(&old).expect("format 2 still reads");
        assert_eq!((record.version, record.expires_ms), (4, Some(9)));
        assert!(record.has_acl);
        assert_eq!(
            Record::decode(&[VERSION_2, FLAG_ACL, 0, 0, 0, 0, 0, 0, 0, 1]),
            None
        );
        // What is written is version 3, with the flag only when there is an ACL.
        let fresh = Record {
            has_acl: false,
            ..record.clone()
        };
        assert_eq!(fresh.encode()[0], VERSION);
        assert!(!Record::decode(&fresh.encode()).unwrap().has_acl);
    }
}
