//! The client listeners: a Pingora `ServerApp` that hands each connection of the Unix socket
//! and of `client_listen` (TLS on TCP) to `atlas::session::serve`, with who it is.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use atlas::config::Limits;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use crate::EngineCell;

pub struct SocketApp {
    engine: EngineCell,
    limits: Limits,
    /// Principals that may assume others and back up on `client_listen`.
    admins: HashSet<String>,
    /// Connections being served, on both listeners (bounded by `limits.max_connections`).
    open: AtomicUsize,
}

impl SocketApp {
    pub fn new(engine: EngineCell, limits: Limits, admins: &[String]) -> Self {
        SocketApp {
            engine,
            limits,
            admins: admins.iter().cloned().collect(),
            open: AtomicUsize::new(0),
        }
    }
}

async fn refuse(stream: &mut Stream, message: &str) {
    let _ = stream
        .write_all(format!("ERROR FATAL {message}\r\n").as_bytes())
        .await;
    let _ = stream.flush().await;
}

/// Counts a connection while it is served.
struct Open<'a>(&'a AtomicUsize);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ServerApp for SocketApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = match crate::client_listener::peer_of(&stream, &self.admins) {
            Ok(peer) => peer,
            Err(reason) => {
                crate::metrics::metrics()
                    .errors
                    .with_label_values(&["client_certificate"])
                    .inc();
                tracing::info!(%reason, "refused a client of client_listen");
                refuse(&mut stream, &reason).await;
                return None;
            }
        };
        let Some(engine) = self.engine.get().cloned() else {
            // The listener starts after the engine service; this is only reachable if the
            // engine failed, in which case the process is exiting.
            refuse(&mut stream, "server starting").await;
            return None;
        };
        let open = Open(&self.open);
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            drop(open);
            crate::metrics::metrics()
                .errors
                .with_label_values(&["too_many_connections"])
                .inc();
            refuse(&mut stream, "too many connections").await;
            return None;
        }
        let observer = Arc::new(crate::metrics::SocketObserver);
        atlas::session::serve(
            stream,
            engine,
            self.limits.clone(),
            shutdown.clone(),
            observer,
            peer,
        )
        .await;
        drop(open);
        None
    }
}
