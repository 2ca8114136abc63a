//! Atlas as a Pingora service module.
//!
//! `install` adds Atlas's services to a Pingora `Server`: the engine (opened when the server
//! starts, after any daemonising fork), the Unix-socket listener that serves the client
//! protocol, the HTTPS listener (Atlas's endpoints + edge-proxy routes) and, if configured, a
//! plaintext Prometheus listener. `install_embedded` adds the same minus the HTTPS listener,
//! for a user's own proxy, which calls [`Atlas::try_serve`] from its `request_filter`.

pub mod acme;
pub mod ca_rotation;
pub mod client_listener;
pub mod cluster;
pub mod edge;
mod edge_discovery;
mod edge_health;
mod engine_service;
pub mod http;
pub mod http_reply;
pub mod metrics;
pub mod node_cert;
pub mod peer_client;
mod pem;
pub mod redirect;
pub mod remote_client;
mod server_tls;
mod socket_service;
pub mod throttle;
pub mod tls;
mod tls_certs;

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};

use atlas::{AtlasConfig, Engine};
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

pub use engine_service::EngineService;
pub use socket_service::SocketApp;

/// Mode of the client socket: owner and group may connect (file permissions are the gate).
pub const SOCKET_MODE: u32 = 0o660;

/// The engine, once the server has started and opened it.
pub type EngineCell = Arc<OnceLock<Arc<Engine>>>;
/// The NAS REST API, once its SQLite store is open.
pub type NasCell = Arc<OnceLock<atlas::nas::NasApi>>;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("atlas.socket: {0}")]
    Socket(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Route(#[from] edge::RouteError),
    #[error("cluster: {0}")]
    Cluster(String),
    /// A key that cannot apply to this way of running Atlas (named in the message).
    #[error("{0}")]
    Config(String),
}

/// Atlas inside a Pingora server: the request hook and a clean close.
pub struct Atlas {
    engine: EngineCell,
    nas: NasCell,
    http: Arc<http::HttpApi>,
    faults: Arc<cluster::Faults>,
    failure: Arc<OnceLock<String>>,
}

impl Atlas {
    /// The engine, when the server has started.
    pub fn engine(&self) -> Option<&Arc<Engine>> {
        self.engine.get()
    }

    /// Serves Atlas's paths (`/atlas/…`, `/api/…`, `/metrics`); returns whether it answered.
    /// Call it first in a `ProxyHttp::request_filter` and return `Ok(true)` when it did.
    pub async fn try_serve(&self, session: &mut ServerSession) -> pingora::Result<bool> {
        self.http.try_serve(session).await
    }

    /// The NAS API, when the server has started.
    pub fn nas(&self) -> Option<&atlas::nas::NasApi> {
        self.nas.get()
    }

    /// Why the engine could not start, once the server stopped because of it (storage or
    /// the NAS store would not open, the cluster runtime would not start).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
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

/// Adds all of Atlas's services to `server`, including its HTTPS listener at `atlas.listen`.
pub fn install(server: &mut Server, config: &AtlasConfig) -> Result<Atlas, InstallError> {
    // Joining happens first: a joining node adopts the cluster's CA before its certificate
    // is prepared. Both happen before the fork, so a failure is an error on the terminal.
    let identity = cluster::prepare_identity(config).map_err(InstallError::Cluster)?;
    let tls = tls::ServerTls::prepare(config, identity.as_ref().map(|i| i.node_id))?;
    let (atlas, engine_handle) = install_common(server, config, identity, Some(&tls))?;
    let routes = edge::build_routes(server, &config.routes)?;
    let proxy = edge::EdgeProxy::new(atlas.http.clone(), routes);
    let mut https =
        pingora::proxy::http_proxy_service_with_name(&server.configuration, proxy, "atlas https");
    // Paths are ignored when a resolver is set; the resolver serves renewed leaves live.
    let mut settings = TlsSettings::intermediate("", "")
        .map_err(|e| InstallError::Tls(tls::TlsError::Key(e.to_string())))?;
    settings.set_cert_resolver(tls.resolver.clone());
    if config.peer_mtls() {
        settings.set_client_cert_verifier(tls::client_verifier(config)?);
    }
    settings.enable_h2();
    https.add_tls_with_settings(&config.listen, None, settings);
    let https_handle = server.add_service(https);
    after_engine_when_upgrading(server, &https_handle, &engine_handle);
    // `http_listen`: plain HTTP, redirected to the HTTPS listener.
    if let Some(addr) = &config.http_listen {
        let https_port = config
            .listen
            .parse::<std::net::SocketAddr>()
            .map_or(443, |a| a.port());
        let app = redirect::RedirectToHttps {
            https_port,
            challenges: tls.acme.as_ref().map(|a| a.tokens.clone()),
        };
        let mut plain = Service::new(
            "atlas http redirect".to_string(),
            pingora::apps::http_app::HttpServer::new_app(app),
        );
        plain.add_tcp(addr);
        server.add_service(plain);
    }
    // `nas.listen`: the NAS API on a listener of its own (same certificate, no routes).
    if let Some(addr) = config
        .nas
        .listen
        .as_ref()
        .filter(|_| config.nas.enabled.unwrap_or(true))
    {
        let api = http::HttpApi::nas_listener(
            atlas.engine.clone(),
            atlas.nas.clone(),
            config,
            atlas.faults.clone(),
        );
        let proxy = edge::EdgeProxy::new(api, Vec::new());
        let mut nas_https = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            proxy,
            "atlas nas https",
        );
        let mut settings = TlsSettings::intermediate("", "")
            .map_err(|e| InstallError::Tls(tls::TlsError::Key(e.to_string())))?;
        settings.set_cert_resolver(tls.resolver.clone());
        settings.enable_h2();
        nas_https.add_tls_with_settings(addr, None, settings);
        let nas_handle = server.add_service(nas_https);
        after_engine_when_upgrading(server, &nas_handle, &engine_handle);
    }
    if let Some(acme) = &tls.acme {
        let acme_handle = server.add_service(background_service(
            "atlas acme",
            engine_service::AcmeRenewal::new(acme.clone()),
        ));
        // Nor may it order while the old process may still answer challenges on the shared
        // http_listen.
        after_engine_when_upgrading(server, &acme_handle, &engine_handle);
    }
    server.add_service(background_service(
        "atlas tls renewal",
        engine_service::TlsRenewal::new(tls),
    ));
    Ok(atlas)
}

/// Adds Atlas's services except the HTTPS listener: the host proxy serves Atlas's paths by
/// calling [`Atlas::try_serve`].
pub fn install_embedded(server: &mut Server, config: &AtlasConfig) -> Result<Atlas, InstallError> {
    if config.http_listen.is_some() {
        return Err(InstallError::Config(
            "atlas.http_listen: not available when embedded (your proxy's own listeners \
             decide what plain HTTP does)"
                .into(),
        ));
    }
    if matches!(config.tls, atlas::config::TlsConfig::Acme(_)) {
        return Err(InstallError::Config(
            "atlas.tls.acme: not available when embedded (your proxy terminates HTTPS and \
             owns its certificates)"
                .into(),
        ));
    }
    if config.nas.listen.is_some() {
        // No listener of Atlas's own is started: the NAS API would be served nowhere.
        return Err(InstallError::Config(
            "atlas.nas.listen: not available when embedded (the NAS API is served through \
             your proxy with Atlas's other paths)"
                .into(),
        ));
    }
    let identity = cluster::prepare_identity(config).map_err(InstallError::Cluster)?;
    // `client_listen` is a listener of Atlas's own: it needs this node's certificate even
    // though the host proxy terminates HTTPS.
    let tls = match config.client_listen {
        Some(_) => Some(tls::ServerTls::prepare(
            config,
            identity.as_ref().map(|i| i.node_id),
        )?),
        None => None,
    };
    let (atlas, _) = install_common(server, config, identity, tls.as_ref())?;
    if let Some(tls) = tls {
        server.add_service(background_service(
            "atlas tls renewal",
            engine_service::TlsRenewal::new(tls),
        ));
    }
    Ok(atlas)
}

fn install_common(
    server: &mut Server,
    config: &AtlasConfig,
    identity: Option<atlas::cluster::identity::ClusterIdentity>,
    tls: Option<&tls::ServerTls>,
) -> Result<(Atlas, pingora::services::ServiceHandle), InstallError> {
    let engine: EngineCell = Arc::new(OnceLock::new());
    let nas: NasCell = Arc::new(OnceLock::new());
    let faults = Arc::new(cluster::Faults::default());
    let failure = Arc::new(OnceLock::new());
    metrics::metrics();
    // In a zero-downtime upgrade (`-u`) the old process still holds the socket and RocksDB's
    // lock until it has drained: take the socket over and wait for the lock.
    let upgrading = upgrading(server);
    let engine_handle = server.add_service(background_service(
        "atlas engine",
        EngineService {
            config: config.clone(),
            engine: engine.clone(),
            nas: nas.clone(),
            upgrading,
            identity,
            faults: faults.clone(),
            failure: failure.clone(),
        },
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
        SocketApp::new(engine.clone(), config.limits.clone(), &config.client_admins),
    );
    listener.add_uds(
        socket_str,
        Some(std::fs::Permissions::from_mode(SOCKET_MODE)),
    );
    if let (Some(addr), Some(tls)) = (&config.client_listen, tls) {
        let settings = client_listener::settings(config, tls.resolver.clone())?;
        listener.add_tls_with_settings(addr, None, settings);
    }
    let listener_handle = server.add_service(listener);
    listener_handle.add_dependency(&engine_handle);

    if let Some(addr) = &config.metrics_listen {
        let mut prometheus = pingora_prometheus::prometheus_http_service();
        prometheus.add_tcp(addr);
        server.add_service(prometheus);
    }

    let http = http::HttpApi::new(engine.clone(), nas.clone(), config, faults.clone());
    let atlas = Atlas {
        engine,
        nas,
        http,
        faults,
        failure,
    };
    Ok((atlas, engine_handle))
}

/// Whether this process takes its listeners over from a running one (`serve -u`).
fn upgrading(server: &Server) -> bool {
    server.options.as_ref().is_some_and(|o| o.upgrade)
}

/// While upgrading, `service` starts once this engine is open — that is, once the old
/// process, which keeps serving on the handed-over listeners until it drains, has released
/// the storage. Its listeners' connections wait in the kernel's queue meanwhile instead of
/// getting `503 starting`.
fn after_engine_when_upgrading(
    server: &Server,
    service: &pingora::services::ServiceHandle,
    engine: &pingora::services::ServiceHandle,
) {
    if upgrading(server) {
        service.add_dependency(engine);
    }
}
