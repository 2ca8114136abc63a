//! Explicit group commit for a standalone node's writes: one writer thread takes every write
//! waiting, applies them in arrival order into one RocksDB batch (each sees the ones before
//! it, as if applied one by one) and writes that batch with one WAL sync under `durability:
//! strict`, then answers each. Under load a sync is shared by as many writes as arrived
//! while the previous one ran (Redis's fsync per event-loop iteration, done with RocksDB),
//! instead of a blocking-pool task per write meeting in RocksDB's write group.
//!
//! Bounded by bytes: writes waiting or in the batch being written hold at most
//! [`QUEUE_BYTES`] (a client waits for room), and a batch takes at most [`BATCH_BYTES`] of
//! writes (a larger write goes alone).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::CommandError;
use crate::kv::Write;
use crate::protocol::{Key, Reply};
use crate::storage::{StorageError, Store};

/// Bytes of writes waiting for the writer or being written.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes of writes one batch takes (the first write of a batch goes in whatever its size).
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// The queue's budget is counted in units of this many bytes (semaphore permits).
const UNIT: usize = 1024;

struct Queued {
    write: Write,
    reply: oneshot::Sender<Result<Reply, CommandError>>,
    _room: OwnedSemaphorePermit,
}

/// The writer thread and the queue to it.
pub struct GroupCommit {
    queue: Option<Sender<Queued>>,
    room: Arc<Semaphore>,
    writer: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub fn start(store: Arc<Store>) -> std::io::Result<GroupCommit> {
        let (queue, inbox) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("atlas-writer".into())
            .spawn(move || run(&store, &inbox))?;
        Ok(GroupCommit {
            queue: Some(queue),
            room: Arc::new(Semaphore::new(QUEUE_BYTES / UNIT)),
            writer: Some(writer),
        })
    }

    /// Applies `write` in the next batch and returns its verdict once the batch is written.
    pub async fn write(&self, write: Write) -> Result<Reply, CommandError> {
        let units = (write.size().div_ceil(UNIT)).clamp(1, QUEUE_BYTES / UNIT) as u32;
        let room = self
            .room
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| CommandError::TaskFailed)?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            write,
            reply,
            _room: room,
        };
        self.queue
            .as_ref()
            .ok_or(CommandError::TaskFailed)?
            .send(queued)
            .map_err(|_| CommandError::TaskFailed)?;
        answer.await.map_err(|_| CommandError::TaskFailed)?
    }
}

impl Drop for GroupCommit {
    /// Closes the queue and waits for the writer to finish what it holds (so the store is
    /// no longer used once the engine is gone).
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer: a blocking wait for the first write, then everything else already waiting,
/// up to `BATCH_BYTES`.
fn run(store: &Store, inbox: &Receiver<Queued>) {
    let mut next: Option<Queued> = None;
    loop {
        let first = match next.take() {
            Some(q) => q,
            None => match inbox.recv() {
                Ok(q) => q,
                Err(_) => return,
            },
        };
        let mut bytes = first.write.size();
        let mut batch = vec![first];
        while bytes < BATCH_BYTES {
            match inbox.try_recv() {
                Ok(q) if bytes + q.write.size() > BATCH_BYTES => {
                    next = Some(q);
                    break;
                }
                Ok(q) => {
                    bytes += q.write.size();
                    batch.push(q);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // A panic (a bug) fails this batch's writes (their answers are dropped), not every
        // write after it: the writer goes on with the next batch.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_batch(store, batch);
        }));
        if written.is_err() {
            tracing::error!("the writer panicked applying a batch; its writes failed");
        }
    }
}

/// Applies the writes in order into one storage batch, writes it, answers each.
fn write_batch(store: &Store, queued: Vec<Queued>) {
    let keys: Vec<Key> = queued
        .iter()
        .flat_map(|q| q.write.keys().into_iter().cloned())
        .collect();
    let mut batch = store.batch(keys.iter());
    let mut verdicts = Vec::with_capacity(queued.len());
    for q in &queued {
        match crate::kv::apply(&mut batch, &q.write) {
            Ok(verdict) => verdicts.push(verdict.map_err(CommandError::from)),
            Err(e) => {
                // Nothing of this batch is written: every write in it fails alike.
                drop(batch);
                return fail(queued, &e);
            }
        }
    }
    match batch.write(store.is_strict()) {
        Ok(()) => {
            for (q, verdict) in queued.into_iter().zip(verdicts) {
                let _ = q.reply.send(verdict);
            }
        }
        Err(e) => fail(queued, &e),
    }
}

fn fail(queued: Vec<Queued>, e: &StorageError) {
    tracing::error!(error = %e, writes = queued.len(), "a batch of writes failed");
    for q in queued {
        let _ = q.reply.send(Err(CommandError::Storage(e.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;
    use crate::kv::WriteOp;

    fn put(key: &str, value: &str, if_version: Option<u64>) -> Write {
        Write {
            key: Key::parse(key.as_bytes()).unwrap(),
            principal: None,
            at_ms: 1,
            op: WriteOp::Put {
                value: value.as_bytes().to_vec(),
                worm_until_ms: None,
                expires_ms: None,
                if_version,
            },
        }
    }

    fn value(store: &Store, key: &str) -> Option<(Vec<u8>, u64)> {
        let record = store
            .read(&Key::parse(key.as_bytes()).unwrap(), 0)
            .unwrap()
            .record?;
        Some((store.read_body(&record.body).unwrap(), record.version))
    }

    /// Writes of one batch are judged in order, each seeing the ones before it: a CAS on
    /// the version an earlier write of the batch made succeeds, a second one fails.
    #[test]
    fn a_batch_applies_its_writes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Strict).unwrap();
        let room = Arc::new(Semaphore::new(16));
        let writes = [
            put("t.k", "one", None),
            put("t.k", "two", Some(1)),
            put("t.k", "lost", Some(1)),
            put("t.other", "x", None),
        ];
        let mut answers = Vec::new();
        let queued = writes
            .into_iter()
            .map(|write| {
                let (reply, answer) = oneshot::channel();
                answers.push(answer);
                Queued {
                    write,
                    reply,
                    _room: room.clone().try_acquire_owned().unwrap(),
                }
            })
            .collect();
        write_batch(&store, queued);
        let answers: Vec<_> = answers
            .into_iter()
            .map(|mut a| a.try_recv().unwrap().map_err(|e| e.kind()))
            .collect();
        assert_eq!(answers[0], Ok(Reply::Ok));
        assert_eq!(answers[1], Ok(Reply::Ok));
        assert_eq!(answers[2], Err("version_mismatch"), "{answers:?}");
        assert_eq!(answers[3], Ok(Reply::Ok));
        assert_eq!(value(&store, "t.k"), Some((b"two".to_vec(), 2)));
        assert_eq!(value(&store, "t.other").map(|v| v.0), Some(b"x".to_vec()));
        assert_eq!(room.available_permits(), 16, "the room is given back");
    }

    /// Many clients at once: every write is answered and applied, increments by CAS from
    /// many tasks never lose one, and the writer stops when the queue goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_all_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Strict).unwrap());
        let writer = Arc::new(GroupCommit::start(store.clone()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer.write(put(&format!("t.k{i}"), "v", None)).await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), Reply::Ok);
        }
        // A counter incremented by CAS from 8 tasks, each retrying on a version mismatch.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (writer, store) = (writer.clone(), store.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let (n, version) = value(&store, "t.count")
                            .map(|(v, ver)| {
                                (String::from_utf8(v).unwrap().parse::<u64>().unwrap(), ver)
                            })
                            .unwrap_or((0, 0));
                        let next = (n + 1).to_string();
                        if writer
                            .write(put("t.count", &next, Some(version)))
                            .await
                            .is_ok()
                        {
                            break;
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(value(&store, "t.count").map(|v| v.0), Some(b"200".to_vec()));
        for i in 0..200 {
            assert!(value(&store, &format!("t.k{i}")).is_some());
        }
        drop(Arc::into_inner(writer).expect("the only handle"));
        assert_eq!(
            Arc::strong_count(&store),
            1,
            "the writer thread let the store go"
        );
    }
}
