//! Atlas's own HTTP endpoints: health, metrics, the cluster endpoints (join, consensus
//! transport) and the NAS REST API. `HttpApi::try_serve` answers a request when its path
//! belongs to Atlas and tells the caller whether it did, so the same code serves Atlas's TLS
//! listener and a user's own Pingora proxy (`request_filter`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::metrics::{TEXT_CONTENT_TYPE, metrics};
use crate::{EngineCell, NasCell};

/// Largest body of an ordinary request (JSON documents, cluster join).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How much of a refused request's body is read (and dropped) before the refusal.
const REFUSED_BODY_DRAIN_BYTES: usize = 64 * 1024;
/// Room in a node-to-node message beyond the largest value it may carry (the envelope,
/// the entry's framing, the write's key and principal).
pub const TRANSPORT_OVERHEAD_BYTES: usize = 16 * 1024 * 1024;
/// Largest body of `POST /api/v1/config/restore` (an uploaded database).
pub const MAX_RESTORE_BODY_BYTES: usize = 256 * 1024 * 1024;
const RESTORE_PATH: &str = "/api/v1/config/restore";

/// The largest consensus POST a node accepts: a batch is at most 1 MiB, but a message that
/// carries one value goes alone, and values may be as large as `limits.max_blob_bytes` (or
/// a `KEY PUT` line, `limits.max_line_bytes`).
pub fn transport_body_limit(config: &atlas::AtlasConfig) -> usize {
    let largest = config
        .limits
        .max_blob_bytes
        .max(config.limits.max_line_bytes);
    usize::try_from(largest)
        .unwrap_or(usize::MAX)
        .saturating_add(TRANSPORT_OVERHEAD_BYTES)
}
/// A request must arrive whole within this time.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::http_reply::{
    CA_PATH, FAULTS_PATH, HttpReply, JOIN_PATH, REMOVE_PATH, SNAPSHOT_PATH, TRANSPORT_PATH,
};

#[path = "http_route.rs"]
mod routing;
pub use routing::{NAS_API_ROOT, OwnedPaths, Route, route};

/// Compares a presented bearer token with the configured credentials in constant time
/// (hashing first, so the length of the secret does not leak either).
pub fn credentials_match(presented: Option<&str>, configured: &str) -> bool {
    let Some(token) = presented else { return false };
    let a = Sha256::digest(token.as_bytes());
    let b = Sha256::digest(configured.as_bytes());
    bool::from(a.ct_eq(&b))
}

pub fn bearer(session: &ServerSession) -> Option<&str> {
    let value = session.get_header("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub struct HttpApi {
    engine: EngineCell,
    nas: NasCell,
    region: String,
    credentials: Option<String>,
    /// Other secrets also accepted during a rotation (`accepted_credentials`).
    accepted_credentials: Vec<String>,
    /// The internal CA's directory (its certificate handed to joining nodes, its key signing
    /// their certificates on a CA holder), with `tls: internal`.
    tls_dir: Option<std::path::PathBuf>,
    fault_injection: bool,
    /// The consensus transport also needs a client certificate (verified by the listener).
    peer_mtls: bool,
    /// With `peer_mtls` and `tls: internal`, certificates name their node: an envelope's
    /// sender must be the node its certificate names.
    bind_sender: bool,
    faults: Arc<crate::cluster::Faults>,
    joins: tokio::sync::Mutex<()>,
    transport_limit: usize,
    /// Wrong cluster credentials per source address (429 past a few).
    throttle: crate::throttle::AuthThrottle,
    /// `/metrics` needs this bearer token when set.
    metrics_token: Option<String>,
    /// Where this listener stands on the NAS API.
    nas_here: NasHere,
    /// The paths this listener's API answers.
    paths: OwnedPaths,
    /// `nas.path_prefix` (also where it is not served here, for the hint of a 404).
    nas_prefix: String,
}

/// Which of Atlas's paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NasHere {
    /// The main listener with the NAS API on it (the default).
    Served,
    /// `nas.enabled: false`.
    Disabled,
    /// The main listener when `nas.listen` is set: the API is elsewhere.
    Elsewhere,
    /// The `nas.listen` listener: the NAS API only.
    Only,
}

impl HttpApi {
    pub fn new(
        engine: EngineCell,
        nas: NasCell,
        config: &atlas::AtlasConfig,
        faults: Arc<crate::cluster::Faults>,
    ) -> Arc<HttpApi> {
        HttpApi::with_nas(engine, nas, config, faults, None)
    }

    /// The API of the `nas.listen` listener: the NAS API's paths only.
    pub fn nas_listener(
        engine: EngineCell,
        nas: NasCell,
        config: &atlas::AtlasConfig,
        faults: Arc<crate::cluster::Faults>,
    ) -> Arc<HttpApi> {
        HttpApi::with_nas(engine, nas, config, faults, Some(NasHere::Only))
    }

    fn with_nas(
        engine: EngineCell,
        nas: NasCell,
        config: &atlas::AtlasConfig,
        faults: Arc<crate::cluster::Faults>,
        role: Option<NasHere>,
    ) -> Arc<HttpApi> {
        let nas_here = if let Some(role) = role {
            role
        } else if !config.nas.enabled.unwrap_or(true) {
            NasHere::Disabled
        } else if config.nas.listen.is_some() {
            NasHere::Elsewhere
        } else {
            NasHere::Served
        };
        Arc::new(HttpApi {
            engine,
            nas,
            region: config.region.clone(),
            credentials: config.credentials.clone(),
            accepted_credentials: config.accepted_credentials.clone(),
            tls_dir: matches!(config.tls, atlas::config::TlsConfig::Internal)
                .then(|| crate::tls::tls_dir(config)),
            fault_injection: config.fault_injection,
            peer_mtls: config.peer_mtls(),
            bind_sender: config.peer_mtls()
                && matches!(config.tls, atlas::config::TlsConfig::Internal),
            faults,
            joins: tokio::sync::Mutex::new(()),
            throttle: crate::throttle::AuthThrottle::default(),
            metrics_token: config.metrics_token.clone(),
            transport_limit: transport_body_limit(config),
            paths: OwnedPaths {
                nas_prefix: match nas_here {
                    NasHere::Served | NasHere::Only => Some(config.nas.path_prefix().to_string()),
                    NasHere::Disabled | NasHere::Elsewhere => None,
                },
                everything: nas_here == NasHere::Only,
            },
            nas_prefix: config.nas.path_prefix().to_string(),
            nas_here,
        })
    }

    /// Why a path that is not Atlas's here may have been meant for it: the NAS API's prefix
    /// on a listener that does not serve it (for the routes' 404).
    pub fn unserved_hint(&self, path: &str) -> Option<&'static str> {
        routing::nas_path_under(&self.nas_prefix, path)?;
        match self.nas_here {
            NasHere::Disabled => Some("the NAS API is disabled on this node (nas.enabled: false)"),
            NasHere::Elsewhere => Some("the NAS API is served on its own listener (nas.listen)"),
            NasHere::Served | NasHere::Only => None,
        }
    }

    /// Whether `path` is one of Atlas's on this listener (else it is the routes').
    pub fn owns(&self, path: &str) -> bool {
        self.paths.owns(path)
    }

    fn is_restore(&self, path: &str) -> bool {
        self.paths.nas_path(path).as_deref() == Some(RESTORE_PATH)
    }

    /// How much body a request may carry, decided from its route before anything is read.
    fn body_limit(&self, route: Route, path: &str) -> usize {
        match route {
            Route::Transport => self.transport_limit,
            Route::Nas if self.is_restore(path) => MAX_RESTORE_BODY_BYTES,
            _ => MAX_BODY_BYTES,
        }
    }

    /// Why the request is refused before its body is read, if it is: the wrong listener,
    /// missing credentials or certificate, a disabled endpoint.
    async fn refusal(
        &self,
        route: Route,
        path: &str,
        session: &mut ServerSession,
    ) -> Option<HttpReply> {
        match route {
            _ if self.nas_here == NasHere::Only && route != Route::Nas => Some(HttpReply::error(
                404,
                "not_found",
                "this listener serves the NAS API only (nas.listen)",
            )),
            // With envelopes bound to the sender, the certificate must name a node (which
            // a client certificate never does); otherwise any node's certificate will do.
            Route::Transport
                if self.peer_mtls
                    && if self.bind_sender {
                        certified_node(session).is_none()
                    } else {
                        !has_node_certificate(session)
                    } =>
            {
                metrics()
                    .auth_failures
                    .with_label_values(&[route.label()])
                    .inc();
                Some(HttpReply::error(
                    401,
                    "unauthorized",
                    "a node's client certificate signed by the cluster CA is required \
                     (atlas.peer_mtls; with tls: internal one that names its node, \
                     `O=Atlas node <id>`; certificates of client_listen do not count)",
                ))
            }
            Route::Join | Route::Transport | Route::Snapshot | Route::Remove => {
                self.authenticate(session, route)
            }
            Route::Faults if !self.fault_injection => {
                Some(HttpReply::error(404, "not_found", "no such endpoint"))
            }
            Route::Faults => self.authenticate(session, route),
            Route::Metrics
                if self
                    .metrics_token
                    .as_deref()
                    .is_some_and(|token| !credentials_match(bearer(session), token)) =>
            {
                metrics()
                    .auth_failures
                    .with_label_values(&[route.label()])
                    .inc();
                let mut reply = HttpReply::error(
                    401,
                    "unauthorized",
                    "the metrics token is required (Authorization: Bearer …; atlas.metrics_token)",
                );
                reply
                    .extra_headers
                    .push(("www-authenticate", "Bearer".to_string()));
                Some(reply)
            }
            Route::Nas if self.is_restore(path) => self.restore_refused(session).await,
            _ => None,
        }
    }

    /// Serves the request if its path is Atlas's; returns whether it did.
    pub async fn try_serve(&self, session: &mut ServerSession) -> pingora::Result<bool> {
        if !self.paths.owns(session.req_header().uri.path()) {
            return Ok(false);
        }
        let path = session.req_header().uri.path().to_string();
        let started = Instant::now();
        let method = session.req_header().method.as_str().to_string();
        let route = route(&method, &path, &self.paths);
        // Credentials are checked before a body is read, so an unauthenticated client cannot
        // make the server buffer anything.
        let refused = self.refusal(route, &path, session).await;
        let reply = match refused {
            Some(reply) => {
                drain_before_refusing(session).await;
                reply
            }
            None => match read_body_after_continue(session, self.body_limit(route, &path)).await {
                Ok(body) if route == Route::Snapshot => match self.snapshot(session, &body).await {
                    // Streamed: the answer is written already.
                    None => {
                        metrics().record_http(route.label(), 200, started.elapsed());
                        return Ok(true);
                    }
                    Some(reply) => reply,
                },
                Ok(body) => self.handle(route, session, body).await,
                Err(reply) => {
                    // The rest of the body is not read: the connection cannot be reused.
                    session.set_keepalive(None);
                    reply
                }
            },
        };
        metrics().record_http(route.label(), reply.status, started.elapsed());
        write_reply(session, reply, method == "HEAD").await?;
        Ok(true)
    }

    async fn handle(&self, route: Route, session: &ServerSession, body: Vec<u8>) -> HttpReply {
        match route {
            Route::Health => self.health(),
            Route::Ca => self.ca_certificate(),
            Route::Metrics => {
                if let Some(engine) = self.engine.get() {
                    metrics().record_storage(&engine.store().stats());
                    if let Some(cluster) = engine.cluster() {
                        metrics().record_cluster(cluster);
                    }
                }
                HttpReply {
                    status: 200,
                    content_type: TEXT_CONTENT_TYPE,
                    body: crate::metrics::render(),
                    extra_headers: Vec::new(),
                }
            }
            Route::Join | Route::Transport | Route::Faults | Route::Snapshot | Route::Remove => {
                // The node the client's certificate names: an envelope's sender, or the
                // member a join asking for a new certificate must be.
                let sender = (matches!(route, Route::Transport | Route::Join) && self.bind_sender)
                    .then(|| certified_node(session))
                    .flatten();
                self.cluster(route, body, sender).await
            }
            Route::Nas => self.nas(session, body).await,
            Route::NotFound => HttpReply::error(404, "not_found", "no such endpoint"),
            Route::MethodNotAllowed(allowed) => {
                let mut reply =
                    HttpReply::error(405, "method_not_allowed", &format!("use {allowed}"));
                reply.extra_headers.push(("allow", allowed.to_string()));
                reply
            }
        }
    }

    /// Join, the consensus transport and the fault layer: they need the cluster runtime.
    /// `sender`: the node the client's certificate names, when envelopes are bound to it.
    async fn cluster(&self, route: Route, body: Vec<u8>, sender: Option<u64>) -> HttpReply {
        let Some(engine) = self.engine.get() else {
            return HttpReply::error(503, "unavailable", "the node is starting");
        };
        let Some(cluster) = engine.cluster() else {
            return HttpReply::error(503, "unavailable", "the node is starting");
        };
        match route {
            Route::Join => {
                crate::cluster::serve_join(
                    cluster,
                    engine,
                    self.tls_dir.as_deref(),
                    (sender, self.bind_sender),
                    &self.joins,
                    &body,
                )
                .await
            }
            Route::Transport => {
                crate::cluster::serve_transport(cluster, &self.faults, body, sender).await
            }
            Route::Remove => crate::cluster::serve_remove(cluster, &body).await,
            // Streamed by `snapshot` before a reply is built.
            Route::Snapshot => HttpReply::error(500, "internal", "snapshot not streamed"),
            _ => {
                #[derive(serde::Deserialize)]
                struct FaultsBody {
                    blocked: std::collections::BTreeSet<u64>,
                }
                match serde_json::from_slice::<FaultsBody>(&body) {
                    Ok(f) => {
                        tracing::warn!(blocked = ?f.blocked, "fault injection: peers cut off");
                        self.faults.set(f.blocked);
                        HttpReply::json(200, json!({"status": "ok"}))
                    }
                    Err(e) => HttpReply::error(400, "bad_request", &format!("blocked: {e}")),
                }
            }
        }
    }

    /// `POST /atlas/v1/snapshot`: streams a snapshot (`None`), or the reply that refuses it.
    async fn snapshot(&self, session: &mut ServerSession, body: &[u8]) -> Option<HttpReply> {
        let cluster = self.engine.get().and_then(|e| e.cluster().cloned());
        let Some(cluster) = cluster else {
            return Some(HttpReply::error(503, "unavailable", "the node is starting"));
        };
        crate::cluster::serve_snapshot(session, &cluster, body)
            .await
            .err()
    }

    /// A restore uploads up to 256 MiB: only an administrator's request gets its body read.
    async fn restore_refused(&self, session: &ServerSession) -> Option<HttpReply> {
        let Some(api) = self.nas.get().cloned() else {
            return Some(HttpReply::error(
                503,
                "unavailable",
                "the NAS store is starting",
            ));
        };
        let token = bearer(session).map(str::to_string);
        let role = tokio::task::spawn_blocking(move || token.and_then(|t| api.token_role(&t)))
            .await
            .ok()
            .flatten();
        match role {
            Some(atlas::nas::users::Role::Administrator) => None,
            Some(_) => Some(HttpReply::error(
                403,
                "forbidden",
                "only an administrator may restore the configuration",
            )),
            None => Some(HttpReply::error(
                401,
                "unauthorized",
                "an administrator's bearer token is required to restore",
            )),
        }
    }

    /// Hands the request to the NAS API on the blocking pool (SQLite, argon2).
    async fn nas(&self, session: &ServerSession, body: Vec<u8>) -> HttpReply {
        let Some(api) = self.nas.get().cloned() else {
            return HttpReply::error(503, "unavailable", "the NAS store is starting");
        };
        let header = session.req_header();
        let path = header.uri.path();
        let request = atlas::nas::ApiRequest {
            method: header.method.as_str().to_string(),
            // The API's router knows its paths under `/api/v1`, whatever the prefix.
            path: self
                .paths
                .nas_path(path)
                .unwrap_or_else(|| path.to_string()),
            query: header.uri.query().map(str::to_string),
            bearer: bearer(session).map(str::to_string),
            body,
            client_addr: session.client_addr().map(|a| a.to_string()),
        };
        match tokio::task::spawn_blocking(move || api.handle(request)).await {
            Ok(response) => HttpReply {
                status: response.status,
                content_type: response.content_type,
                body: response.body,
                extra_headers: Vec::new(),
            },
            Err(_) => HttpReply::error(500, "internal", "the request failed"),
        }
    }

    /// `GET /atlas/v1/ca`: the internal CA's certificate (public by nature), so a joining node
    /// can check it against a pinned fingerprint. `404` with `tls: {cert, key}`.
    fn ca_certificate(&self) -> HttpReply {
        let pem = self
            .tls_dir
            .as_ref()
            .and_then(|dir| std::fs::read(dir.join("ca.crt")).ok());
        match pem {
            Some(pem) => HttpReply {
                status: 200,
                content_type: "application/x-pem-file",
                body: pem,
                extra_headers: Vec::new(),
            },
            None => HttpReply::error(404, "not_found", "this node has no internal CA"),
        }
    }

    fn health(&self) -> HttpReply {
        match self.engine.get() {
            Some(engine) => HttpReply::json(
                200,
                json!({
                    "status": "ok",
                    "node_id": engine.node().id,
                    "region": self.region,
                    "version": env!("CARGO_PKG_VERSION"),
                }),
            ),
            None => HttpReply::json(503, json!({"status": "starting", "region": self.region})),
        }
    }

    /// `None` when the request carries the cluster credentials; else the 401 to send.
    fn authenticate(&self, session: &ServerSession, route: Route) -> Option<HttpReply> {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let now = Instant::now();
        if let Some(ip) = ip
            && let Err(wait) = self.throttle.check(ip, now)
        {
            metrics()
                .auth_failures
                .with_label_values(&[route.label()])
                .inc();
            let seconds = wait.as_secs() + 1;
            let mut reply = HttpReply::error(
                429,
                "too_many_requests",
                &format!("too many wrong cluster credentials from {ip}; retry in {seconds} s"),
            );
            reply
                .extra_headers
                .push(("retry-after", seconds.to_string()));
            return Some(reply);
        }
        // Every accepted secret is compared (no early exit): the time does not tell which.
        let presented = bearer(session);
        let ok = self
            .credentials
            .iter()
            .chain(&self.accepted_credentials)
            .fold(false, |ok, configured| {
                ok | credentials_match(presented, configured)
            });
        if ok {
            return None;
        }
        metrics()
            .auth_failures
            .with_label_values(&[route.label()])
            .inc();
        let client = session
            .client_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Never log what was presented: it may be a mistyped secret.
        tracing::warn!(client = %client, endpoint = route.label(), "refused a request without valid cluster credentials");
        if let Some(ip) = ip
            && let Some(block) = self.throttle.failed(ip, now)
        {
            tracing::warn!(client = %ip, seconds = block.as_secs(), "too many wrong cluster credentials: the address is blocked");
        }
        let mut reply = HttpReply::error(
            401,
            "unauthorized",
            "valid cluster credentials required (Authorization: Bearer …)",
        );
        reply
            .extra_headers
            .push(("www-authenticate", "Bearer".to_string()));
        Some(reply)
    }
}

/// Whether the TLS client presented a node's certificate: one the listener's verifier
/// accepted (an unverifiable one fails the handshake) that is not a client certificate of
/// `client_listen`, which the same CA signs (organization `Atlas client`).
fn has_node_certificate(session: &ServerSession) -> bool {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some_and(|s| {
            !s.cert_digest.is_empty()
                && s.organization.as_deref() != Some(crate::tls::CLIENT_ORGANIZATION)
        })
}

/// The node id the TLS client's certificate names (`O=Atlas node <id>`, see
/// `tls::node_organization`), if it presented a verified one.
fn certified_node(session: &ServerSession) -> Option<u64> {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .filter(|s| !s.cert_digest.is_empty())
        .and_then(|s| s.organization.as_deref())
        .and_then(crate::tls::node_of_organization)
}

#[path = "http_body.rs"]
mod body;
use body::read_body_after_continue;
pub use body::{drain_before_refusing, write_reply};

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
