//! The origin's side of a large blob write (`storage::upload` is the replicas' side): the
//! blob goes through the table's log as fragments of [`FRAGMENT_CHUNKS`] chunks, at most
//! [`FRAGMENTS_IN_FLIGHT`] at a time, so a small write to the same table waits behind a few
//! MiB, not behind the whole blob; once every fragment is committed, a small entry adopts
//! the staged blob as the key's value and its verdict answers the client. A fragment that
//! fails (no quorum in time) fails the write; the origin then aborts the upload, so the
//! replicas drop what they staged.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::error::{Answer, ClusterError};
use crate::consensus::RequestId;
use crate::kv::{Write, WriteOp};
use crate::storage::BLOB_CHUNK_BYTES;
use crate::storage::upload::{ABORT_INDEX, Fragment, UploadId, chunk_count};

/// Fragments of one upload proposed and not yet committed.
pub const FRAGMENTS_IN_FLIGHT: usize = 2;
/// Chunks one fragment carries (a log entry of about 4 MiB: fewer rounds per blob, and a
/// small write waits behind at most `FRAGMENTS_IN_FLIGHT` of them per upload).
pub const FRAGMENT_CHUNKS: u32 = 4;

/// Magic byte of a fragment in the log (beside proposals and node records).
pub const FRAGMENT_MAGIC: u8 = 0xAA;

/// A fragment as the log carries it: `[magic][origin][id][index: u32][total][at_ms][bytes]`.
pub fn encode_fragment(fragment: &Fragment, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(37 + bytes.len());
    out.push(FRAGMENT_MAGIC);
    out.extend_from_slice(&fragment.upload.origin.to_be_bytes());
    out.extend_from_slice(&fragment.upload.id.to_be_bytes());
    out.extend_from_slice(&fragment.index.to_be_bytes());
    out.extend_from_slice(&fragment.total.to_be_bytes());
    out.extend_from_slice(&fragment.at_ms.to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The fragment in a log value after its magic byte (`value` is the whole value).
pub fn decode_fragment(value: &Bytes) -> Option<(Fragment, Bytes)> {
    let rest = value.get(1..)?;
    let (origin, rest) = rest.split_first_chunk::<8>()?;
    let (id, rest) = rest.split_first_chunk::<8>()?;
    let (index, rest) = rest.split_first_chunk::<4>()?;
    let (total, rest) = rest.split_first_chunk::<8>()?;
    let (at_ms, _) = rest.split_first_chunk::<8>()?;
    let fragment = Fragment {
        upload: UploadId {
            origin: u64::from_be_bytes(*origin),
            id: u64::from_be_bytes(*id),
        },
        index: u32::from_be_bytes(*index),
        total: u64::from_be_bytes(*total),
        at_ms: i64::from_be_bytes(*at_ms),
    };
    Some((fragment, value.slice(37..)))
}

/// Whether `write` goes through the log as an upload.
pub fn is_large_blob(write: &Write) -> bool {
    matches!(&write.op, WriteOp::BlobSet { bytes } if bytes.len() > BLOB_CHUNK_BYTES)
        && !write.key.is_system()
}

/// One upload in progress at its origin.
struct Upload {
    write: Write,
    upload: UploadId,
    total: u64,
    chunks: u32,
    next: u32,
    in_flight: usize,
    failure: Option<ClusterError>,
}

/// What the origin asks the log for next.
pub enum Step {
    /// Propose this fragment (its request is the fragment's, answered internally).
    Fragment { key: String, value: Vec<u8> },
    /// Every fragment is committed: propose this write (under the client's request).
    Adopt { request: RequestId, write: Write },
    /// The upload failed: propose its abort and answer the client.
    Fail {
        key: String,
        abort: Vec<u8>,
        request: RequestId,
        answer: Answer,
    },
}

/// The uploads this node is the origin of.
#[derive(Default)]
pub struct Uploads {
    /// By the client's request.
    active: BTreeMap<RequestId, Upload>,
    /// Fragment request → the client's request (`None`: an abort, nothing waits for it).
    fragments: HashMap<RequestId, Option<RequestId>>,
}

impl Uploads {
    /// Starts the upload of `write` (a large `BlobSet`) for the client's `request`; the
    /// upload's id is `id`, unique across this node's restarts.
    pub fn start(&mut self, request: RequestId, id: UploadId, write: Write) {
        let total = match &write.op {
            WriteOp::BlobSet { bytes } => bytes.len() as u64,
            _ => 0,
        };
        self.active.insert(
            request,
            Upload {
                write,
                upload: id,
                total,
                chunks: chunk_count(total) as u32,
                next: 0,
                in_flight: 0,
                failure: None,
            },
        );
    }

    /// Remembers that `fragment` is the request carrying a fragment of `of` (or an abort).
    pub fn sent(&mut self, fragment: RequestId, of: Option<RequestId>) {
        self.fragments.insert(fragment, of);
    }

    /// Takes the answer of `request` if it is a fragment's; returns whether it was, and
    /// the client's request whose upload moved.
    pub fn answered(&mut self, request: RequestId, answer: &Answer) -> Option<Option<RequestId>> {
        let of = self.fragments.remove(&request)?;
        if let Some(upload) = of.and_then(|of| self.active.get_mut(&of)) {
            upload.in_flight = upload.in_flight.saturating_sub(1);
            if let Err(e) = answer {
                upload.failure.get_or_insert_with(|| e.clone());
            }
        }
        Some(of)
    }

    /// What the upload for `request` needs proposed now.
    pub fn next_steps(&mut self, request: RequestId, at_ms: i64) -> Vec<Step> {
        let Some(upload) = self.active.get_mut(&request) else {
            return Vec::new();
        };
        let key = upload.write.key.as_str().to_string();
        let (id, total) = (upload.upload, upload.total);
        let fragment = |index: u32| Fragment {
            upload: id,
            index,
            total,
            at_ms,
        };
        if let Some(failure) = upload.failure.clone() {
            if upload.in_flight > 0 {
                return Vec::new();
            }
            let abort = encode_fragment(&fragment(ABORT_INDEX), &[]);
            self.active.remove(&request);
            return vec![Step::Fail {
                key,
                abort,
                request,
                answer: Err(failure),
            }];
        }
        let mut steps = Vec::new();
        let WriteOp::BlobSet { bytes } = &upload.write.op else {
            return steps;
        };
        while upload.in_flight < FRAGMENTS_IN_FLIGHT && upload.next < upload.chunks {
            let index = upload.next;
            let start = index as usize * BLOB_CHUNK_BYTES;
            let end = (start + FRAGMENT_CHUNKS as usize * BLOB_CHUNK_BYTES).min(bytes.len());
            steps.push(Step::Fragment {
                key: key.clone(),
                value: encode_fragment(&fragment(index), &bytes[start..end]),
            });
            upload.next = (index + FRAGMENT_CHUNKS).min(upload.chunks);
            upload.in_flight += 1;
        }
        if upload.next == upload.chunks && upload.in_flight == 0 {
            let upload = self.active.remove(&request).expect("present");
            let write = Write {
                op: WriteOp::BlobStaged {
                    upload: upload.upload,
                    len: upload.total,
                },
                ..upload.write
            };
            steps.push(Step::Adopt { request, write });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Key;

    fn blob(len: usize) -> Write {
        Write {
            key: Key::parse(b"files.big").unwrap(),
            principal: None,
            at_ms: 5,
            op: WriteOp::BlobSet {
                bytes: (0..len).map(|i| (i % 251) as u8).collect(),
            },
        }
    }

    #[test]
    fn a_fragment_round_trips() {
        let fragment = Fragment {
            upload: UploadId { origin: 3, id: 9 },
            index: 2,
            total: 5 << 20,
            at_ms: -4,
        };
        let value = Bytes::from(encode_fragment(&fragment, b"chunk"));
        assert_eq!(
            decode_fragment(&value),
            Some((fragment, Bytes::from_static(b"chunk")))
        );
        assert_eq!(decode_fragment(&Bytes::from_static(b"\xAA\x01")), None);
    }

    /// Fragments go out a few at a time, in order, each as soon as one before it is
    /// committed; the adoption follows the last; the fragments hold the blob's bytes.
    #[test]
    fn fragments_go_out_a_few_at_a_time() {
        let len = 21 * BLOB_CHUNK_BYTES + 7;
        let write = blob(len);
        let mut uploads = Uploads::default();
        let id = UploadId { origin: 1, id: 77 };
        uploads.start(1, id, write.clone());
        let mut joined = Vec::new();
        let mut next_request = 100;
        let mut in_flight = Vec::new();
        let mut adopted = None;
        for _ in 0..100 {
            for step in uploads.next_steps(1, 0) {
                match step {
                    Step::Fragment { value, .. } => {
                        let (fragment, bytes) = decode_fragment(&Bytes::from(value)).unwrap();
                        assert_eq!(fragment.index as usize, joined.len() / BLOB_CHUNK_BYTES);
                        joined.extend_from_slice(&bytes);
                        uploads.sent(next_request, Some(1));
                        in_flight.push(next_request);
                        next_request += 1;
                    }
                    Step::Adopt { request, write } => adopted = Some((request, write)),
                    Step::Fail { .. } => panic!("nothing failed"),
                }
            }
            assert!(in_flight.len() <= FRAGMENTS_IN_FLIGHT);
            if adopted.is_some() {
                break;
            }
            let done = in_flight.remove(0);
            assert_eq!(
                uploads.answered(done, &Ok(crate::protocol::Reply::Ok)),
                Some(Some(1))
            );
        }
        let (request, adopt) = adopted.expect("adopted");
        assert_eq!(request, 1);
        assert_eq!(
            adopt.op,
            WriteOp::BlobStaged {
                upload: id,
                len: len as u64
            }
        );
        assert_eq!(
            Some(joined.as_slice()),
            match &write.op {
                WriteOp::BlobSet { bytes } => Some(bytes.as_slice()),
                _ => None,
            }
        );
    }

    /// A failed fragment fails the write once the others in flight are answered, with an
    /// abort of the upload.
    #[test]
    fn a_failed_fragment_aborts_the_upload() {
        let mut uploads = Uploads::default();
        let chunks = FRAGMENT_CHUNKS as usize * FRAGMENTS_IN_FLIGHT + 3;
        uploads.start(
            1,
            UploadId { origin: 1, id: 5 },
            blob(chunks * BLOB_CHUNK_BYTES),
        );
        let steps = uploads.next_steps(1, 0);
        assert_eq!(steps.len(), FRAGMENTS_IN_FLIGHT);
        let requests = 10..10 + FRAGMENTS_IN_FLIGHT as u64;
        for r in requests.clone() {
            uploads.sent(r, Some(1));
        }
        uploads.answered(10, &Err(ClusterError::Timeout));
        assert!(
            uploads.next_steps(1, 0).is_empty(),
            "others still in flight"
        );
        for r in requests.skip(1) {
            uploads.answered(r, &Ok(crate::protocol::Reply::Ok));
        }
        match uploads.next_steps(1, 0).as_slice() {
            [
                Step::Fail {
                    abort,
                    answer,
                    request: 1,
                    ..
                },
            ] => {
                let (fragment, _) = decode_fragment(&Bytes::from(abort.clone())).unwrap();
                assert_eq!(fragment.index, ABORT_INDEX);
                assert_eq!(answer, &Err(ClusterError::Timeout));
            }
            _ => panic!("the upload should fail"),
        }
        assert!(uploads.next_steps(1, 0).is_empty(), "the upload is gone");
    }
}
