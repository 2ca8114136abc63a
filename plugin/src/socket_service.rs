//! The Unix-socket listener: a Pingora `ServerApp` that hands each connection to
//! `atlas::session::serve`.

use std::sync::Arc;

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
}

impl SocketApp {
    pub fn new(engine: EngineCell, limits: Limits) -> Self {
        SocketApp { engine, limits }
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
        let observer = Arc::new(crate::metrics::SocketObserver);
        atlas::session::serve(
            stream,
            engine,
            self.limits.clone(),
            shutdown.clone(),
            observer,
        )
        .await;
        None
    }
}
