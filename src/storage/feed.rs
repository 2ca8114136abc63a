//! The change feed: every committed change of a key, in the order this node applied it,
//! for `WATCH`. A bounded history (by bytes) lets a watcher start from a past revision;
//! each watcher has a bounded queue, and one that falls behind is ended, never buffered
//! without bound.
//!
//! A *revision* orders the changes of one table: in a cluster the log slot of the entry
//! that made it (the same on every node), on a single node a counter of this node's changes
//! (it starts, at open, above every change made before).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Del,
}

/// One committed change of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub kind: ChangeKind,
    /// The key's version after a put; for a delete, its place in the key's history (the
    /// deleted value's version + 1), while the key then reads as version 0.
    pub version: u64,
    pub revision: u64,
}

impl Change {
    fn table(&self) -> &str {
        self.key.split('.').next().unwrap_or("")
    }

    fn size(&self) -> usize {
        48 + self.key.len()
    }
}

/// Why a watch ends (the connection sends it as `ERROR WARN …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchEnd {
    #[error("compacted: oldest revision {0}")]
    Compacted(u64),
    #[error("watch ended: the client did not keep up (more than {0} changes behind)")]
    TooSlow(usize),
    #[error(
        "watch ended: this node caught up from a snapshot at revision {0}; watch again FROM {0}"
    )]
    Snapshot(u64),
}

/// A change as a batch records it: key, kind, version, and the log slot (cluster) or none.
pub type Published = (String, ChangeKind, u64, Option<u64>);

/// What a watcher receives.
pub type WatchItem = Result<Arc<Change>, WatchEnd>;

/// Changes one watcher may have queued before it is ended.
pub const WATCH_QUEUE: usize = 1024;

struct Watcher {
    table: String,
    prefix: String,
    tx: mpsc::Sender<WatchItem>,
    /// Set when the feed ended it (so the end reason is sent even if the queue is full).
    ended: Arc<Mutex<Option<WatchEnd>>>,
}

/// A started watch: the revision it starts after, its queue, and the end reason when the
/// feed ended it.
pub struct Subscription {
    pub revision: u64,
    pub rx: mpsc::Receiver<WatchItem>,
    pub ended: Arc<Mutex<Option<WatchEnd>>>,
}

#[derive(Default)]
struct Table {
    /// The last revision of a change seen (0: none since the node started).
    last: u64,
    /// Every change of the table after this revision is in the history (None: unknown
    /// until the first change or watch of the table).
    complete_after: Option<u64>,
}

struct Inner {
    next_seq: u64,
    history: VecDeque<Arc<Change>>,
    history_bytes: usize,
    max_bytes: usize,
    tables: HashMap<String, Table>,
    watchers: Vec<Watcher>,
}

pub struct Feed {
    inner: Mutex<Inner>,
}

impl Feed {
    /// A feed keeping about `max_bytes` of history; single-node revisions start above
    /// `first_seq`.
    pub fn new(max_bytes: usize, first_seq: u64) -> Feed {
        Feed {
            inner: Mutex::new(Inner {
                next_seq: first_seq + 1,
                history: VecDeque::new(),
                history_bytes: 0,
                max_bytes,
                tables: HashMap::new(),
                watchers: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how much history is kept (the configured `limits.watch_history_bytes`).
    pub fn set_max_bytes(&self, max_bytes: usize) {
        self.lock().max_bytes = max_bytes;
    }

    /// Publishes changes `(key, kind, version, revision)` in the order they were applied.
    /// The revision is the log slot that made the change (a cluster), or `None` to number
    /// it on this node.
    pub fn publish(&self, changes: Vec<Published>) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for (key, kind, version, revision) in changes {
            let revision = revision.unwrap_or_else(|| {
                let r = inner.next_seq;
                inner.next_seq += 1;
                r
            });
            let change = Arc::new(Change {
                key,
                kind,
                version,
                revision,
            });
            let table = inner.tables.entry(change.table().to_string()).or_default();
            table.last = table.last.max(revision);
            table
                .complete_after
                .get_or_insert(revision.saturating_sub(1));
            inner.history_bytes += change.size();
            inner.history.push_back(change.clone());
            inner.deliver(&change);
        }
        inner.trim();
    }

    /// A snapshot replaced `tables` up to `revision`: what happened before is not in the
    /// history, and watchers of those tables are ended (they would miss changes).
    pub fn installed(&self, tables: &[String], revision: u64) {
        let mut inner = self.lock();
        for name in tables {
            let table = inner.tables.entry(name.clone()).or_default();
            table.last = table.last.max(revision);
            table.complete_after = Some(revision);
        }
        inner.watchers.retain(|w| {
            if tables.contains(&w.table) {
                w.end(WatchEnd::Snapshot(revision));
                false
            } else {
                true
            }
        });
    }

    /// Starts a watch of `prefix` (within `table`) after `from`, or, without `from`, from
    /// now. `current` is the table's revision as a cluster knows it (its applied slot), or
    /// `None` on a single node (whose own counter bounds every revision); the watch starts
    /// after the larger of it and the last change seen.
    pub fn subscribe(
        &self,
        table: &str,
        prefix: &str,
        from: Option<u64>,
        current: Option<u64>,
    ) -> Result<Subscription, WatchEnd> {
        let mut inner = self.lock();
        let seq_now = inner.next_seq - 1;
        let entry = inner.tables.entry(table.to_string()).or_default();
        let now = entry.last.max(current.unwrap_or(seq_now));
        let complete_after = *entry.complete_after.get_or_insert(now);
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let ended = Arc::new(Mutex::new(None));
        let watcher = Watcher {
            table: table.to_string(),
            prefix: prefix.to_string(),
            tx,
            ended: ended.clone(),
        };
        let start = match from {
            Some(from) if from < complete_after => return Err(WatchEnd::Compacted(complete_after)),
            Some(from) => {
                let replay: Vec<Arc<Change>> = inner
                    .history
                    .iter()
                    .filter(|c| c.revision > from && watcher.wants(c))
                    .cloned()
                    .collect();
                if replay.len() > WATCH_QUEUE {
                    return Err(WatchEnd::TooSlow(WATCH_QUEUE));
                }
                for change in replay {
                    let _ = watcher.tx.try_send(Ok(change));
                }
                from
            }
            None => now,
        };
        inner.watchers.push(watcher);
        Ok(Subscription {
            revision: start.max(now),
            rx,
            ended,
        })
    }

    /// Watchers registered (for tests and metrics).
    pub fn watchers(&self) -> usize {
        self.lock().watchers.len()
    }
}

impl Watcher {
    fn wants(&self, change: &Change) -> bool {
        change.key.starts_with(&self.prefix)
    }

    fn end(&self, why: WatchEnd) {
        *self.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }
}

impl Inner {
    fn deliver(&mut self, change: &Arc<Change>) {
        self.watchers.retain(|w| {
            // A dropped subscription closed its queue.
            if w.tx.is_closed() {
                return false;
            }
            if !w.wants(change) {
                return true;
            }
            match w.tx.try_send(Ok(change.clone())) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.end(WatchEnd::TooSlow(WATCH_QUEUE));
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
    }

    /// Drops the oldest changes beyond the byte budget; their tables' history then starts
    /// after them.
    fn trim(&mut self) {
        while self.history_bytes > self.max_bytes {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= old.size();
            let table = self.tables.entry(old.table().to_string()).or_default();
            table.complete_after = Some(table.complete_after.unwrap_or(0).max(old.revision));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, version: u64, revision: Option<u64>) -> Published {
        (key.to_string(), ChangeKind::Put, version, revision)
    }

    #[test]
    fn watchers_get_changes_under_their_prefix_in_order() {
        let feed = Feed::new(1 << 20, 0);
        let mut sub = feed.subscribe("T", "T.A", None, None).unwrap();
        assert_eq!(sub.revision, 0);
        feed.publish(vec![
            put("T.A1", 1, None),
            put("T.B", 1, None),
            put("T.A2", 1, None),
        ]);
        let got: Vec<(String, u64)> = (0..2)
            .map(|_| {
                let c = sub.rx.try_recv().unwrap().unwrap();
                (c.key.clone(), c.revision)
            })
            .collect();
        assert_eq!(got, [("T.A1".to_string(), 1), ("T.A2".to_string(), 3)]);
        assert!(sub.rx.try_recv().is_err());
    }

    #[test]
    fn from_replays_the_retained_history_or_says_compacted() {
        let feed = Feed::new(200, 0);
        for i in 1..=3 {
            feed.publish(vec![put("T.K", i, Some(10 + i))]);
        }
        // Revisions 11..13 retained (complete after 10).
        let mut sub = feed.subscribe("T", "T.", Some(11), Some(0)).unwrap();
        assert_eq!(sub.rx.try_recv().unwrap().unwrap().revision, 12);
        assert_eq!(sub.rx.try_recv().unwrap().unwrap().revision, 13);
        assert_eq!(sub.revision, 13);
        assert_eq!(
            feed.subscribe("T", "T.", Some(9), Some(0)).err(),
            Some(WatchEnd::Compacted(10))
        );
        // Past the byte budget the oldest go, and FROM before them is refused.
        for i in 4..=10 {
            feed.publish(vec![put("T.K", i, Some(10 + i))]);
        }
        let Err(WatchEnd::Compacted(oldest)) = feed.subscribe("T", "T.", Some(11), Some(0)) else {
            panic!("history was trimmed")
        };
        assert!(oldest > 11, "{oldest}");
        assert!(feed.subscribe("T", "T.", Some(oldest), Some(0)).is_ok());
    }

    #[test]
    fn a_table_never_seen_is_complete_only_from_now() {
        let feed = Feed::new(1 << 20, 0);
        assert_eq!(
            feed.subscribe("U", "U.", Some(3), Some(7)).err(),
            Some(WatchEnd::Compacted(7))
        );
        assert_eq!(
            feed.subscribe("U", "U.", Some(7), Some(7))
                .unwrap()
                .revision,
            7
        );
        // A cluster's new table starts at slot 0: FROM 0 is complete.
        assert_eq!(
            feed.subscribe("V", "V.", Some(0), Some(0))
                .unwrap()
                .revision,
            0
        );
    }

    #[test]
    fn a_slow_watcher_is_ended_not_buffered() {
        let feed = Feed::new(1 << 30, 0);
        let mut sub = feed.subscribe("T", "T.", None, None).unwrap();
        for i in 0..(WATCH_QUEUE as u64 + 5) {
            feed.publish(vec![put("T.K", i, None)]);
        }
        assert_eq!(feed.watchers(), 0);
        let mut n = 0;
        while let Ok(Ok(_)) = sub.rx.try_recv() {
            n += 1;
        }
        assert_eq!(n, WATCH_QUEUE);
        assert_eq!(
            *sub.ended.lock().unwrap(),
            Some(WatchEnd::TooSlow(WATCH_QUEUE))
        );
    }

    #[test]
    fn a_snapshot_install_ends_the_watchers_of_its_tables() {
        let feed = Feed::new(1 << 20, 0);
        let sub = feed.subscribe("T", "T.", None, Some(5)).unwrap();
        let other = feed.subscribe("U", "U.", None, Some(5)).unwrap();
        feed.installed(&["T".to_string()], 40);
        assert_eq!(*sub.ended.lock().unwrap(), Some(WatchEnd::Snapshot(40)));
        assert_eq!(*other.ended.lock().unwrap(), None);
        assert_eq!(
            feed.subscribe("T", "T.", Some(30), Some(0)).err(),
            Some(WatchEnd::Compacted(40))
        );
    }
}
