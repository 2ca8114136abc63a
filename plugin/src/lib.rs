//! Atlas as a Pingora service module.
//!
//! `install` adds Atlas's services to a Pingora `Server`: the engine (opened when the server
//! starts, after any daemonising fork) and the Unix-socket listener that serves the client
//! protocol. The `atlas` binary is a Pingora server made of exactly these services; a user's
//! own proxy can call `install` the same way.

mod engine_service;
mod socket_service;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};

use atlas::{AtlasConfig, Engine};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use engine_service::EngineService;
pub use socket_service::SocketApp;

/// Mode of the client socket: owner and group may connect (file permissions are the gate).
pub const SOCKET_MODE: u32 = 0o660;

/// The engine, once the server has started and opened it.
pub type EngineCell = Arc<OnceLock<Arc<Engine>>>;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("atlas.socket: {0}")]
    Socket(String),
}

/// What `install` added, for the caller to close cleanly after `Server::run` returns.
pub struct Installed {
    engine: EngineCell,
}

impl Installed {
    /// The engine, when the server has started.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// Flushes and closes storage. Call after the server stopped.
    pub fn close(&self) {
        if let Some(engine) = self.engine.get() {
            match engine.store().close() {
                Ok(()) => tracing::info!("storage closed cleanly"),
                Err(e) => tracing::error!(error = %e, "closing storage failed"),
            }
        }
    }
}

/// Adds Atlas's services to `server`.
pub fn install(server: &mut Server, config: &AtlasConfig) -> Result<Installed, InstallError> {
    let engine: EngineCell = Arc::new(OnceLock::new());
    // In a zero-downtime upgrade (`-u`) the old process still holds the socket and RocksDB's
    // lock until it has drained: take the socket over and wait for the lock.
    let upgrading = server.options.as_ref().is_some_and(|o| o.upgrade);

    let engine_handle = server.add_service(background_service(
        "atlas engine",
        EngineService::new(config.clone(), engine.clone(), upgrading),
    ));

    let socket = config.socket_path();
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            InstallError::Socket(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    if !upgrading {
        atlas::node::clear_stale_socket(&socket).map_err(InstallError::Socket)?;
    }
    let socket_str = socket
        .to_str()
        .ok_or_else(|| InstallError::Socket(format!("{} is not valid UTF-8", socket.display())))?;
    let mut listener = Service::new(
        "atlas socket".to_string(),
        SocketApp::new(engine.clone(), config.limits.clone()),
    );
    listener.add_uds(
        socket_str,
        Some(std::fs::Permissions::from_mode(SOCKET_MODE)),
    );
    let listener_handle = server.add_service(listener);
    listener_handle.add_dependency(&engine_handle);

    Ok(Installed { engine })
}
