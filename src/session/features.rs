//! What a connection does beyond running one command: staging a transaction (`TXN`),
//! streaming a watch's events (`WATCH`).

use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use super::{Session, encode};
use crate::command::Engine;
use crate::protocol::{Command, Reply, TxnStep};

/// Staged transaction lines and the bytes they hold.
#[derive(Default)]
pub(super) struct Staged {
    steps: Vec<TxnStep>,
    bytes: usize,
}

impl Session {
    /// Starts a watch; `None` when it started (its task sends `WATCHING` and the events),
    /// else the error to send.
    pub(super) async fn watch(
        &mut self,
        tag: Option<&str>,
        prefix: &str,
        from: Option<u64>,
        in_flight: &Arc<Semaphore>,
    ) -> Option<Reply> {
        let Some(tag) = tag else {
            return Some(Reply::warn(
                "WATCH needs a tag for its events: [ID:<tag>] WATCH <prefix>",
            ));
        };
        self.watches.retain(|_, task| !task.is_finished());
        if self.watches.contains_key(tag) {
            return Some(Reply::warn(format!(
                "a watch with tag {tag} is already open"
            )));
        }
        if self.watches.len() >= self.limits.max_watches {
            return Some(Reply::warn(format!(
                "too many watches: at most {} per connection (limits.max_watches)",
                self.limits.max_watches
            )));
        }
        // An open watch keeps the connection busy (it is not idle) and takes a tagged slot.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return Some(Reply::warn("connection closing"));
        };
        let subscription = match self.engine.watch(prefix, from).await {
            Ok(subscription) => subscription,
            Err(reply) => return Some(reply),
        };
        let tx = self.tx.clone();
        let engine = self.engine.clone();
        let principal = self.principal.clone();
        let owned_tag = tag.to_string();
        let task = tokio::spawn(async move {
            let _permit = permit;
            send_watch(subscription, &owned_tag, &engine, principal.as_deref(), &tx).await;
        });
        self.watches.insert(tag.to_string(), task);
        None
    }

    /// Answers a transaction line that only changes what is staged; `TXN COMMIT` becomes
    /// the command to run (`Ok`), with the staged steps.
    pub(super) fn stage(&mut self, command: Command) -> Result<Command, Reply> {
        const NONE: &str = "no transaction: send TXN BEGIN first";
        match command {
            Command::TxnBegin if self.txn.is_some() => Err(Reply::warn(
                "a transaction is already open: TXN COMMIT or TXN ABORT it first",
            )),
            Command::TxnBegin => {
                self.txn = Some(Staged::default());
                Err(Reply::Ok)
            }
            Command::TxnAbort => match self.txn.take() {
                Some(_) => Err(Reply::Ok),
                None => Err(Reply::warn(NONE)),
            },
            Command::TxnStep(step) => {
                let max_ops = self.limits.max_txn_ops;
                let max_bytes = usize::try_from(self.limits.max_blob_bytes).unwrap_or(usize::MAX);
                let Some(staged) = self.txn.as_mut() else {
                    return Err(Reply::warn(NONE));
                };
                if let Some(first) = staged.steps.first()
                    && first.key().table() != step.key().table()
                {
                    let refusal = crate::kv::Refusal::SpansTables {
                        first: first.key().table().to_string(),
                        other: step.key().to_string(),
                    };
                    return Err(Reply::warn(refusal.to_string()));
                }
                if staged.steps.len() >= max_ops {
                    return Err(Reply::warn(format!(
                        "transaction too large: at most {max_ops} steps (limits.max_txn_ops)"
                    )));
                }
                if staged.bytes.saturating_add(step.size()) > max_bytes {
                    return Err(Reply::warn(format!(
                        "transaction too large: at most {max_bytes} bytes (limits.max_blob_bytes)"
                    )));
                }
                staged.bytes += step.size();
                staged.steps.push(step);
                Err(Reply::Ok)
            }
            Command::TxnCommit(_) => match self.txn.take() {
                None => Err(Reply::warn(NONE)),
                Some(staged) if staged.steps.is_empty() => Err(Reply::Ok),
                Some(staged) => Ok(Command::TxnCommit(staged.steps)),
            },
            Command::Scan(mut scan) => {
                let max = self.limits.max_scan_keys;
                scan.limit = Some(scan.limit.unwrap_or(max).min(max));
                Ok(Command::Scan(scan))
            }
            command => Ok(command),
        }
    }
}

/// A watch's task: `WATCHING <revision>`, then one `EVENT` line per change the principal
/// may read, until the feed ends it (then its reason as `ERROR WARN`).
async fn send_watch(
    mut subscription: crate::storage::feed::Subscription,
    tag: &str,
    engine: &Arc<Engine>,
    principal: Option<&str>,
    tx: &mpsc::Sender<Vec<u8>>,
) {
    use crate::storage::feed::ChangeKind;
    let started = format!("[ID:{tag}] WATCHING {}\r\n", subscription.revision);
    if tx.send(started.into_bytes()).await.is_err() {
        return;
    }
    while let Some(item) = subscription.rx.recv().await {
        let Ok(change) = item else { break };
        let Ok(key) = crate::protocol::Key::parse(change.key.as_bytes()) else {
            continue;
        };
        // Changes of keys the principal may not read are left out (as in SCAN).
        let readable = engine
            .store()
            .read(&key, crate::kv::now_ms())
            .map(|current| current.acl.may_read(principal))
            .unwrap_or(false);
        if !readable {
            continue;
        }
        let kind = match change.kind {
            ChangeKind::Put => "PUT",
            ChangeKind::Del => "DEL",
        };
        let line = format!(
            "[ID:{tag}] EVENT {kind} {} {} {}\r\n",
            change.key, change.version, change.revision
        );
        if tx.send(line.into_bytes()).await.is_err() {
            return;
        }
    }
    let why = subscription
        .ended
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(why) = why {
        let _ = tx
            .send(encode(&Reply::warn(why.to_string()), Some(tag)))
            .await;
    }
}
