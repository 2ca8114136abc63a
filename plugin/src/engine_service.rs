//! Opens the engine when the server starts and runs its timers.

use std::time::Duration;

use async_trait::async_trait;
use atlas::AtlasConfig;
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::BackgroundService;

use std::sync::Arc;

use atlas::cluster::identity::ClusterIdentity;
use atlas::nas::{NasApi, NasStore, snapshots};

use crate::{EngineCell, NasCell};

/// How often due snapshot policies are looked for.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);
/// How often storage gauges are refreshed for scrapers of `metrics_listen`.
const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the internal TLS leaf is checked for renewal.
const TLS_RENEW_CHECK: Duration = Duration::from_secs(6 * 3600);
/// How often certificate files are checked for changes (reloaded without a restart).
const TLS_FILES_CHECK: Duration = Duration::from_secs(2);

/// Keeps the internal CA's leaf certificate current while the server runs.
pub struct TlsRenewal {
    tls: crate::tls::ServerTls,
}

impl TlsRenewal {
    pub fn new(tls: crate::tls::ServerTls) -> Self {
        TlsRenewal { tls }
    }

    /// Renews the leaf when due: issued here on a CA holder, else signed by a holder reached
    /// through the seed (checked every few hours, so an unreachable seed is tried again).
    async fn renew(&self) -> Result<bool, String> {
        let Some((config, node)) = &self.tls.signed_by_holder else {
            return self.tls.renew_if_due().map_err(|e| e.to_string());
        };
        if !crate::cluster::renew_certificate(config, *node).await? {
            return Ok(false);
        }
        self.tls.reload_leaf(config).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

#[async_trait]
impl BackgroundService for TlsRenewal {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(TLS_RENEW_CHECK);
        let mut files = tokio::time::interval(TLS_FILES_CHECK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = ticker.tick() => match self.renew().await {
                    Ok(true) => tracing::info!("renewed this node's TLS certificate"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "TLS certificate renewal failed"),
                },
                _ = files.tick() => {
                    self.tls.reload_changed_files();
                }
            }
        }
    }
}

/// Keeps the ACME certificate (`tls: {acme}`) current while the server runs.
pub struct AcmeRenewal {
    acme: Arc<crate::acme::AcmeCertificates>,
}

impl AcmeRenewal {
    pub fn new(acme: Arc<crate::acme::AcmeCertificates>) -> Self {
        AcmeRenewal { acme }
    }
}

#[async_trait]
impl BackgroundService for AcmeRenewal {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.acme.run(shutdown).await;
    }
}

/// How long an upgrading process waits for the old one to release the storage lock.
const UPGRADE_LOCK_WAIT: Duration = Duration::from_secs(120);

pub struct EngineService {
    pub(crate) config: AtlasConfig,
    pub(crate) engine: EngineCell,
    pub(crate) nas: NasCell,
    pub(crate) upgrading: bool,
    /// This node's cluster identity; `None` runs it standalone.
    pub(crate) identity: Option<ClusterIdentity>,
    pub(crate) faults: Arc<crate::cluster::Faults>,
    /// Why the engine could not start, for the caller of `Server::run` (see `Atlas::failure`).
    pub(crate) failure: Arc<std::sync::OnceLock<String>>,
}

impl EngineService {
    /// Opens the NAS store (SQLite) and runs its migrations.
    async fn open_nas(&self) -> Result<Arc<NasStore>, String> {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || NasStore::open(&config))
            .await
            .map_err(|e| format!("opening the NAS store failed: {e}"))?
            .map(Arc::new)
            .map_err(|e| format!("NAS store: {e}"))
    }

    /// Opens the engine (a cluster member's with its runtime started); while upgrading,
    /// retries as long as the old process holds the lock.
    async fn open(&self) -> Result<std::sync::Arc<atlas::Engine>, String> {
        let deadline = tokio::time::Instant::now() + UPGRADE_LOCK_WAIT;
        loop {
            let config = self.config.clone();
            let member = self.identity.clone().map(|identity| {
                let transport: Arc<dyn atlas::cluster::runtime::Transport> =
                    crate::cluster::HttpTransport::new(
                        &self.config,
                        identity.node_id,
                        self.faults.clone(),
                    );
                (identity, transport)
            });
            let opened = tokio::task::spawn_blocking(move || {
                let membership =
                    member
                        .as_ref()
                        .map(|(identity, transport)| atlas::node::Membership {
                            identity,
                            transport: transport.clone(),
                        });
                atlas::node::open(&config, membership)
            })
            .await
            .map_err(|e| format!("opening storage failed: {e}"))?;
            match opened {
                Ok(engine) => return Ok(engine),
                Err(e)
                    if self.upgrading
                        && e.is_locked()
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!("waiting for the previous process to release the storage lock");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl EngineService {
    /// Nothing can be served without storage: says why, records it and stops the server at
    /// once (SIGINT: Pingora's fast shutdown, no grace period). `atlas serve` then exits
    /// with status 2; an embedding program reads [`crate::Atlas::failure`].
    fn fail(&self, error: &str) {
        eprintln!("atlas: {error}");
        tracing::error!(error, "cannot start");
        let _ = self.failure.set(error.to_string());
        // SAFETY: kill(2) on this process's own pid with a signal Pingora handles.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGINT);
        }
    }
}

#[async_trait]
impl BackgroundService for EngineService {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let engine = match self.open().await {
            Ok(engine) => engine,
            Err(e) => return self.fail(&e),
        };
        let nas = match self.open_nas().await {
            Ok(nas) => nas,
            Err(e) => return self.fail(&e),
        };
        let _ = self.nas.set(NasApi::serving_under(
            nas.clone(),
            self.config.nas.path_prefix(),
        ));
        let cluster = engine.cluster().cloned();
        if let Some(cluster) = &cluster {
            tokio::spawn(crate::cluster::ping_loop(cluster.clone(), shutdown.clone()));
            let declared = self.config.declared_pins();
            if !declared.is_empty() {
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    atlas::cluster::placement::apply_declared(&cluster, declared).await;
                });
            }
        }
        let node = engine.node().clone();
        let _ = self.engine.set(engine.clone());
        tracing::info!(
            node_id = node.id,
            region = %node.region,
            socket = %self.config.socket_path().display(),
            durability = %self.config.durability,
            "atlas engine ready"
        );
        ready.notify_ready();

        let mut ticker = tokio::time::interval(Duration::from_millis(self.config.expiry_sweep_ms));
        let mut stats_ticker = tokio::time::interval(STATS_INTERVAL);
        let mut snapshot_ticker = tokio::time::interval(SNAPSHOT_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = stats_ticker.tick() => {
                    crate::metrics::metrics().record_storage(&engine.store().stats());
                    if let Some(cluster) = &cluster {
                        crate::metrics::metrics().record_cluster(cluster);
                    }
                }
                _ = snapshot_ticker.tick() => {
                    let nas = nas.clone();
                    match tokio::task::spawn_blocking(move || snapshots::run_due_now(&nas)).await {
                        Ok(Ok(runs)) if !runs.is_empty() => tracing::info!(runs = runs.len(), "snapshot policies ran"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "snapshot scheduler failed"),
                        _ => {}
                    }
                }
                _ = ticker.tick() => {
                    match engine.expire_due().await {
                        Ok(n) if n > 0 => tracing::info!(purged = n, "expired values purged"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "purging expired values failed"),
                    }
                }
            }
        }
        if let Some(cluster) = cluster {
            // Let in-flight persistence finish before storage closes.
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
    }
}
