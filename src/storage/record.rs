//! Encoding of what the `values` column family holds for a key.
//!
//! Layout (version 1): `[1][flags][worm_until: i64 BE, present when flags & WORM]` then either
//! the inline bytes, or `[blob_id: u64 BE][len: u64 BE]` when flags & BLOB.

const VERSION: u8 = 1;
const FLAG_BLOB: u8 = 1;
const FLAG_WORM: u8 = 2;

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
}

impl Record {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.worm_until_ms.is_some_and(|until| until <= now_ms)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0;
        if matches!(self.body, Body::Blob { .. }) {
            flags |= FLAG_BLOB;
        }
        if self.worm_until_ms.is_some() {
            flags |= FLAG_WORM;
        }
        let mut out = vec![VERSION, flags];
        if let Some(until) = self.worm_until_ms {
            out.extend_from_slice(&until.to_be_bytes());
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
        let (&version, rest) = bytes.split_first()?;
        let (&flags, mut rest) = rest.split_first()?;
        if version != VERSION || flags & !(FLAG_BLOB | FLAG_WORM) != 0 {
            return None;
        }
        let mut worm_until_ms = None;
        if flags & FLAG_WORM != 0 {
            let (until, tail) = rest.split_first_chunk::<8>()?;
            worm_until_ms = Some(i64::from_be_bytes(*until));
            rest = tail;
        }
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
                      id in any::<u64>(), len in any::<u64>(), worm in proptest::option::of(any::<i64>())) {
            let body = match inline { Some(b) => Body::Inline(b), None => Body::Blob { blob_id: id, len } };
            let r = Record { body, worm_until_ms: worm };
            prop_assert_eq!(Record::decode(&r.encode()), Some(r));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Record::decode(&bytes);
        }
    }
}
