//! The Unix-socket listener: a Pingora `ServerApp` that hands each connection to
//! `atlas::session::serve`.

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
    /// Connections being served (bounded by `limits.max_connections`).
    open: AtomicUsize,
}

impl SocketApp {
    pub fn new(engine: EngineCell, limits: Limits) -> Self {
        SocketApp {
            engine,
            limits,
            open: AtomicUsize::new(0),
        }
    }
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
        let Some(engine) = self.engine.get().cloned() else {
            // The listener starts after the engine service; this is only reachable if the
            // engine failed, in which case the process is exiting.
            let _ = stream.write_all(b"ERROR FATAL server starting\r\n").await;
            let _ = stream.flush().await;
            return None;
        };
        let open = Open(&self.open);
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max_connections {
            drop(open);
            crate::metrics::metrics()
                .errors
                .with_label_values(&["too_many_connections"])
                .inc();
            let _ = stream
                .write_all(b"ERROR FATAL too many connections\r\n")
                .await;
            let _ = stream.flush().await;
            return None;
        }
        let observer = Arc::new(crate::metrics::SocketObserver);
        atlas::session::serve(
            stream,
            engine,
            self.limits.clone(),
            shutdown.clone(),
            observer,
        )
        .await;
        drop(open);
        None
    }
}
