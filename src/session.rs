//! One client connection: handshake, line framing with limits, blob payloads, principals,
//! and `[ID:…]` pipelining.
//!
//! Generic over `AsyncRead + AsyncWrite`, so the same code serves the Unix socket (through
//! Pingora) and `tokio::io::duplex` in tests. Untagged requests run one after another in the
//! reader; tagged ones run as tasks and answer when done. At most `max_tagged_in_flight` run at
//! once per connection; past that the reader waits, so a fast client is slowed, not refused. A single
//! writer task owns the write half and flushes after draining what is ready.

use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};

use crate::command::Engine;
use crate::config::Limits;
use crate::protocol::parse::check_handshake;
use crate::protocol::{Command, Level, Reply, WELCOME, parse_request};

mod features;
mod lines;
use features::Staged;
use lines::{LineRead, read_line_limited};

/// Hooks for metrics; the core knows no metrics library, the edge implements this.
pub trait Observer: Send + Sync {
    fn connection_opened(&self) {}
    fn connection_closed(&self) {}
    fn bytes_received(&self, _bytes: u64) {}
    fn bytes_sent(&self, _bytes: u64) {}
    /// A command ran: `error_kind` is `None` on success.
    fn command(
        &self,
        _name: &'static str,
        _error_kind: Option<&'static str>,
        _elapsed: std::time::Duration,
    ) {
    }
    /// A request was refused before it ran (bad syntax, line too long, bad handshake).
    fn rejected(&self, _kind: &'static str) {}
}

/// Observes nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Who is at the other end of a connection, as its listener established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// The Unix socket: file permissions are the gate; whoever may open it may assume any
    /// principal and run `BACKUP`.
    Local,
    /// A client certificate of the cluster CA named `principal` (`client_listen`): the
    /// session starts as it. Only an `admin` (`atlas.client_admins`) may assume another name
    /// or run `BACKUP`.
    Certified { principal: String, admin: bool },
}

impl Peer {
    fn principal(&self) -> Option<String> {
        match self {
            Peer::Local => None,
            Peer::Certified { principal, .. } => Some(principal.clone()),
        }
    }

    /// Why this peer may not run an admin-only `what`, if it may not.
    fn refuse_admin(&self, what: &str) -> Option<String> {
        match self {
            Peer::Certified {
                principal,
                admin: false,
            } => Some(format!(
                "permission denied: {principal} may not {what} on this listener (atlas.client_admins)"
            )),
            _ => None,
        }
    }
}

/// Longest handshake line accepted.
const MAX_HANDSHAKE_BYTES: u64 = 1024;

fn encode(reply: &Reply, tag: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    reply.encode(tag, &mut out);
    out
}

/// Owns the write half: writes what arrives, flushing once nothing more is queued.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    observer: Arc<dyn Observer>,
) {
    while let Some(first) = rx.recv().await {
        observer.bytes_sent(first.len() as u64);
        if writer.write_all(&first).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            observer.bytes_sent(more.len() as u64);
            if writer.write_all(&more).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Serves one connection until the client leaves, a FATAL error, or `shutdown` turns true.
pub async fn serve<S>(
    stream: S,
    engine: Arc<Engine>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    observer: Arc<dyn Observer>,
    peer: Peer,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    observer.connection_opened();
    let (read_half, write_half) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
    let writer = tokio::spawn(write_loop(write_half, rx, observer.clone()));
    let fatal = |message: &str| encode(&Reply::Error(Level::Fatal, message.to_string()), None);

    let _ = tx.send(format!("{WELCOME}\r\n").into_bytes()).await;
    // A client that never completes the handshake is dropped like an idle one.
    let handshake_wait = std::time::Duration::from_millis(if limits.idle_timeout_ms > 0 {
        limits.idle_timeout_ms
    } else {
        u64::MAX / 2
    });
    let handshake = {
        let hello = read_line_limited(&mut reader, MAX_HANDSHAKE_BYTES);
        tokio::pin!(hello);
        tokio::select! {
            biased;
            read = &mut hello => read,
            // A client that connected before the shutdown still gets its answer (see
            // `Session::next_line`), if its handshake comes now.
            _ = shutdown.changed() => tokio::time::timeout(SHUTDOWN_DRAIN, &mut hello)
                .await
                .unwrap_or(Ok(LineRead::Eof)),
            _ = tokio::time::sleep(handshake_wait) => Ok(LineRead::Eof),
        }
    };
    match handshake {
        Ok(LineRead::Line(line)) => match check_handshake(&line) {
            Ok(()) => {
                let _ = tx.send(b"READY\r\n".to_vec()).await;
                let session = Session {
                    engine,
                    limits,
                    principal: peer.principal(),
                    peer,
                    txn: None,
                    watches: std::collections::HashMap::new(),
                    tx: tx.clone(),
                    observer: observer.clone(),
                    drain_until: None,
                };
                session.run(&mut reader, &mut shutdown).await;
            }
            Err(message) => {
                observer.rejected("handshake");
                let _ = tx.send(fatal(message)).await;
            }
        },
        Ok(LineRead::TooLong) => {
            observer.rejected("handshake");
            let _ = tx.send(fatal("invalid handshake")).await;
        }
        Ok(LineRead::Eof) | Err(_) => {}
    }
    drop(tx);
    let _ = writer.await;
    observer.connection_closed();
}

/// Bytes of blob payloads one connection may hold at once (two of the largest allowed).
fn blob_budget(limits: &Limits) -> usize {
    let largest = usize::try_from(limits.max_blob_bytes).unwrap_or(usize::MAX / 4);
    largest.max(1).saturating_mul(2).min(Semaphore::MAX_PERMITS)
}

/// The permits a payload of `len` bytes takes (whole, so a payload never waits for
/// itself).
fn blob_permits(len: u64, budget: usize) -> u32 {
    let len = usize::try_from(len).unwrap_or(usize::MAX).min(budget);
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// How much a payload buffer grows at a time: memory follows the bytes that arrived, not
/// the length a client announced.
const PAYLOAD_GROWTH: usize = 8 << 20;

/// Reads exactly `len` payload bytes; `None` when the connection ends first.
async fn read_payload<R: AsyncBufRead + Unpin>(reader: &mut R, len: u64) -> Option<Vec<u8>> {
    let total = usize::try_from(len).ok()?;
    let mut payload: Vec<u8> = Vec::with_capacity(total.min(PAYLOAD_GROWTH));
    let mut limited = AsyncReadExt::take(reader, len);
    while payload.len() < total {
        if payload.len() == payload.capacity() {
            payload.reserve_exact((total - payload.len()).min(PAYLOAD_GROWTH));
        }
        match limited.read_buf(&mut payload).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    Some(payload)
}

/// Resolves once `idle` has passed with every tagged slot free (never without a timeout).
async fn idle_for(idle: Option<std::time::Duration>, in_flight: &Semaphore, slots: usize) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(idle).await;
        if in_flight.available_permits() >= slots {
            return;
        }
    }
}

/// Runs one command and reports it to the observer.
async fn run_observed(
    engine: &Arc<Engine>,
    observer: &Arc<dyn Observer>,
    principal: Option<String>,
    command: Command,
    blob: Option<Vec<u8>>,
) -> Reply {
    let name = command.name();
    let started = std::time::Instant::now();
    let result = engine.execute(principal, command, blob).await;
    let error_kind = result.as_ref().err().map(|e| e.kind());
    observer.command(name, error_kind, started.elapsed());
    result.unwrap_or_else(|e| Reply::warn(e.to_string()))
}

struct Session {
    engine: Arc<Engine>,
    limits: Limits,
    principal: Option<String>,
    /// Who connected: decides whether the principal may change and `BACKUP` may run.
    peer: Peer,
    /// The transaction being staged (`TXN BEGIN` .. `TXN COMMIT`/`TXN ABORT`).
    txn: Option<Staged>,
    /// Open watches by tag; each is a task sending its events.
    watches: std::collections::HashMap<String, tokio::task::JoinHandle<()>>,
    tx: mpsc::Sender<Vec<u8>>,
    observer: Arc<dyn Observer>,
    /// Once the server shuts down: until when lines the client already sent are still
    /// served (then the connection is told and closed).
    drain_until: Option<tokio::time::Instant>,
}

/// How long a connection keeps serving after shutdown starts: requests already sent (in
/// flight on the socket, or pipelined) are answered rather than dropped.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

impl Drop for Session {
    fn drop(&mut self) {
        for task in self.watches.values() {
            task.abort();
        }
    }
}

impl Session {
    async fn send(&self, reply: &Reply, tag: Option<&str>) -> bool {
        self.tx.send(encode(reply, tag)).await.is_ok()
    }

    async fn run<R: AsyncBufRead + Unpin>(
        mut self,
        reader: &mut R,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let in_flight = Arc::new(Semaphore::new(self.limits.max_tagged_in_flight));
        // Blob payloads held by this connection (being read, or waiting for their tagged
        // request to finish): at most two of the largest at once, whatever the number of
        // tagged requests in flight. At the limit the connection stops reading.
        let blob_budget = blob_budget(&self.limits);
        let blob_bytes = Arc::new(Semaphore::new(blob_budget));
        loop {
            let Some(line) = self.next_line(reader, shutdown, &in_flight).await else {
                return;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request = match parse_request(&line) {
                Ok(request) => request,
                Err(e) => {
                    self.observer.rejected(e.kind.label());
                    if let Some(len) = e
                        .payload_len
                        .filter(|&len| len <= self.limits.max_blob_bytes)
                    {
                        let skipped =
                            tokio::io::copy(&mut (&mut *reader).take(len), &mut tokio::io::sink())
                                .await;
                        if !matches!(skipped, Ok(n) if n == len) {
                            return;
                        }
                    }
                    if !self.send(&Reply::warn(e.message), e.tag.as_deref()).await {
                        return;
                    }
                    continue;
                }
            };
            let tag = request.tag;
            let command = match self
                .connection_command(request.command, &tag, &in_flight)
                .await
            {
                Handled::Reply(reply, tag) => {
                    if !self.send(&reply, tag.as_deref()).await {
                        return;
                    }
                    continue;
                }
                Handled::Quietly => continue,
                Handled::No(command) => command,
            };
            // A blob's payload follows its line; its budget is held until its request ends.
            let blob = match &command {
                Command::BlobSet { len, .. } if *len > self.limits.max_blob_bytes => {
                    if !self
                        .send(&Reply::warn("invalid length"), tag.as_deref())
                        .await
                    {
                        return;
                    }
                    continue;
                }
                Command::BlobSet { len, .. } => {
                    let permits = blob_permits(*len, blob_budget);
                    let Ok(held) = blob_bytes.clone().acquire_many_owned(permits).await else {
                        return;
                    };
                    let Some(payload) = read_payload(reader, *len).await else {
                        return;
                    };
                    self.observer.bytes_received(*len);
                    Some((payload, held))
                }
                _ => None,
            };
            let command = match self.stage(command) {
                Ok(command) => command,
                Err(reply) => {
                    if !self.send(&reply, tag.as_deref()).await {
                        return;
                    }
                    continue;
                }
            };
            if !self.execute(command, blob, tag, &in_flight).await {
                return;
            }
        }
    }

    /// The next line, or `None` when the connection ends: end of input, a line over the
    /// limit, shutdown, or idle for `limits.idle_timeout_ms` with nothing of its own
    /// running (the last three are told why).
    async fn next_line<R: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut R,
        shutdown: &mut watch::Receiver<bool>,
        in_flight: &Semaphore,
    ) -> Option<Vec<u8>> {
        let idle = (self.limits.idle_timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(self.limits.idle_timeout_ms));
        let read_line = read_line_limited(reader, self.limits.max_line_bytes);
        tokio::pin!(read_line);
        let running = self.drain_until.is_none() && !*shutdown.borrow();
        let read = if running {
            tokio::select! {
                biased;
                read = &mut read_line => Some(read),
                _ = shutdown.changed() => None,
                // Idle: nothing received for the whole timeout and nothing of this
                // connection's still running (a tagged request waiting counts as busy).
                _ = idle_for(idle, in_flight, self.limits.max_tagged_in_flight) => {
                    self.observer.rejected("idle_timeout");
                    self.send(&Reply::Error(Level::Fatal, "idle timeout".into()), None).await;
                    return None;
                }
            }
        } else {
            None
        };
        let read = match read {
            Some(read) => read,
            // Shutting down: lines the client sent before it could know are still served
            // for a moment (the read goes on, so half a line received is not lost); then
            // the connection is told and closed.
            None => {
                let until = *self
                    .drain_until
                    .get_or_insert_with(|| tokio::time::Instant::now() + SHUTDOWN_DRAIN);
                // No new read starts after the window (a client pipelining without end
                // does not hold the connection open); one under way may finish.
                let read = match tokio::time::Instant::now() < until {
                    true => tokio::time::timeout_at(until, &mut read_line).await.ok(),
                    false => None,
                };
                match read {
                    Some(read) => read,
                    None => {
                        let bye = Reply::Error(Level::Fatal, "server shutting down".into());
                        self.send(&bye, None).await;
                        return None;
                    }
                }
            }
        };
        match read {
            Ok(LineRead::Line(line)) => {
                self.observer.bytes_received(line.len() as u64 + 1);
                Some(line)
            }
            Ok(LineRead::TooLong) => {
                self.observer.rejected("line_too_long");
                let reply = Reply::Error(Level::Fatal, "command exceeded maximum length".into());
                self.send(&reply, None).await;
                None
            }
            Ok(LineRead::Eof) | Err(_) => None,
        }
    }

    /// Commands about the connection itself (principal, watches, backup), answered here;
    /// any other is handed back for the engine.
    async fn connection_command(
        &mut self,
        command: Command,
        tag: &Option<String>,
        in_flight: &Arc<Semaphore>,
    ) -> Handled {
        let reply = match command {
            Command::Assume(name) => {
                let refusal = (self.peer.principal().as_ref() != Some(&name))
                    .then(|| self.peer.refuse_admin("assume another principal"))
                    .flatten();
                match refusal {
                    Some(refusal) => Reply::warn(refusal),
                    None => {
                        self.principal = Some(name);
                        Reply::Ok
                    }
                }
            }
            Command::WhoAmI => {
                let name = self.principal.as_deref().unwrap_or("(none)");
                Reply::line(format!("PRINCIPAL {name}"))
            }
            Command::Watch { prefix, from } => {
                match self.watch(tag.as_deref(), &prefix, from, in_flight).await {
                    Some(reply) => reply,
                    None => return Handled::Quietly,
                }
            }
            Command::Backup => match self.peer.refuse_admin("run BACKUP") {
                Some(refusal) => Reply::warn(refusal),
                None => self.backup(tag.clone()).await,
            },
            Command::Unwatch(watched) => {
                let reply = match self.watches.remove(&watched) {
                    Some(task) => {
                        task.abort();
                        Reply::Ok
                    }
                    None => Reply::warn(format!("no watch {watched} on this connection")),
                };
                // The answer carries the watch's tag (or the request's, for an error).
                let tag = if reply.is_error() {
                    tag.clone()
                } else {
                    Some(watched)
                };
                return Handled::Reply(reply, tag);
            }
            // Where tables live is the cluster operator's, as BACKUP is.
            command @ (Command::TableMove { .. }
            | Command::TablePin { .. }
            | Command::TableUnpin(_)) => match self.peer.refuse_admin("move or pin tables") {
                Some(refusal) => Reply::warn(refusal),
                None => return Handled::No(command),
            },
            command => return Handled::No(command),
        };
        Handled::Reply(reply, tag.clone())
    }

    /// `BACKUP`: the engine streams one snapshot as `BLOB` frames (tagged like the request),
    /// then the final answer is returned.
    async fn backup(&self, tag: Option<String>) -> Reply {
        let tx = self.tx.clone();
        let sink = move |chunk: Vec<u8>| {
            let mut frame = Vec::with_capacity(chunk.len() + 40);
            if let Some(t) = &tag {
                frame.extend_from_slice(format!("[ID:{t}] ").as_bytes());
            }
            frame.extend_from_slice(format!("BLOB {}\r\n", chunk.len()).as_bytes());
            frame.extend_from_slice(&chunk);
            tx.blocking_send(frame).is_ok()
        };
        self.engine
            .backup(sink)
            .await
            .unwrap_or_else(|e| Reply::warn(e.to_string()))
    }

    /// Runs an engine command: untagged in order (answered before the next line is read),
    /// tagged in a task of its own, at most `limits.max_tagged_in_flight` at once (at the
    /// limit the connection stops reading: the client feels backpressure through its
    /// socket instead of getting errors). Returns false when the connection is gone.
    async fn execute(
        &self,
        command: Command,
        blob: Option<(Vec<u8>, OwnedSemaphorePermit)>,
        tag: Option<String>,
        in_flight: &Arc<Semaphore>,
    ) -> bool {
        let (blob, held) = blob.unzip();
        let Some(tag) = tag else {
            let principal = self.principal.clone();
            let reply = run_observed(&self.engine, &self.observer, principal, command, blob).await;
            drop(held);
            return self.send(&reply, None).await;
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return false;
        };
        let engine = self.engine.clone();
        let observer = self.observer.clone();
        let principal = self.principal.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let reply = run_observed(&engine, &observer, principal, command, blob).await;
            drop(held);
            let _ = tx.send(encode(&reply, Some(&tag))).await;
            drop(permit);
        });
        true
    }
}

/// What `connection_command` did with a command.
enum Handled {
    /// Answered here, with this tag.
    Reply(Reply, Option<String>),
    /// Handled; nothing to answer now (a watch's events carry its answers).
    Quietly,
    /// Not a connection command: for the engine.
    No(Command),
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session_features_tests.rs"]
mod features_tests;
