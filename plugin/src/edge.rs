//! The HTTPS listener as an edge proxy: Atlas's own paths are answered by `HttpApi`; other
//! requests follow `atlas.routes` (host + longest path prefix) to upstreams chosen by
//! round-robin or consistent hashing, with active health checks. No route: 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use atlas::config::{RouteConfig, Selection};
use pingora::http::RequestHeader;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::{Error, ErrorType};
use prometheus::IntCounter;

use crate::edge_discovery::{self, Upstreams};
use crate::edge_health::{PassiveHealth, retryable};
use crate::http::{HttpApi, HttpReply, drain_before_refusing, write_reply};
use crate::metrics::metrics;

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Hash(Arc<LoadBalancer<Consistent>>),
}

impl Balancer {
    /// The first backend for `key` that `accept` takes (given whether the active health
    /// check says it is healthy).
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, 256, accept),
            Balancer::Hash(lb) => lb.select_with(key, 256, accept),
        }
    }
}

struct Route {
    host: Option<String>,
    path_prefix: String,
    balancer: Balancer,
    tls_sni: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// How many upstreams the route has: a request tries each at most once.
    upstreams: usize,
    /// `host/prefix` (`*` for any host), the route's metric label.
    label: String,
    health: PassiveHealth,
    /// Cached counter handles by (upstream, result).
    outcomes: RwLock<HashMap<(SocketAddr, &'static str), IntCounter>>,
}

#[derive(Debug, thiserror::Error)]
#[error("atlas.routes[{index}].upstreams: {message}")]
pub struct RouteError {
    index: usize,
    message: String,
}

fn health_check_for(
    route: &RouteConfig,
) -> Option<Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync + 'static>> {
    let check = route.health_check.as_ref()?;
    if check.kind == "tcp" {
        return Some(TcpHealthCheck::new());
    }
    let host = route
        .host
        .clone()
        .unwrap_or_else(|| "localhost".to_string());
    let mut http = HttpHealthCheck::new(&host, route.tls_sni.is_some());
    if let Some(sni) = &route.tls_sni {
        // The upstream's certificate is for its SNI name, not for the routed host.
        http.peer_template.sni = sni.clone();
    }
    if let Ok(mut req) = RequestHeader::build("GET", check.kind.as_bytes(), None) {
        let _ = req.append_header("Host", host.as_str());
        http.req = req;
    }
    Some(Box::new(http))
}

fn build_balancer<S>(
    server: &mut Server,
    index: usize,
    route: &RouteConfig,
) -> Result<Arc<LoadBalancer<S>>, RouteError>
where
    S: pingora::lb::selection::BackendSelection + Send + Sync + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let upstreams = Upstreams::resolve_at_start(&route.upstreams)
        .map_err(|message| RouteError { index, message })?;
    let names = upstreams.has_names();
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(Box::new(upstreams)));
    // The first discovery answers with the addresses just resolved, without waiting.
    edge_discovery::now(lb.update())
        .and_then(Result::ok)
        .ok_or_else(|| RouteError {
            index,
            message: "the first update of the upstreams did not complete".into(),
        })?;
    let check = health_check_for(route);
    if names {
        lb.update_frequency = Some(edge_discovery::RESOLVE_INTERVAL);
    }
    if names || check.is_some() {
        if let Some(check) = check {
            lb.set_health_check(check);
            let interval = route.health_check.as_ref().map_or(1_000, |h| h.interval_ms);
            lb.health_check_frequency = Some(Duration::from_millis(interval.max(100)));
        }
        let service = background_service(&format!("atlas route {index} upstreams"), lb);
        let task = service.task();
        server.add_service(service);
        return Ok(task);
    }
    Ok(Arc::new(lb))
}

/// The routes of `atlas.routes`, with their health checks added to `server`.
pub fn build_routes(
    server: &mut Server,
    configs: &[RouteConfig],
) -> Result<Vec<RouteTable>, RouteError> {
    configs
        .iter()
        .enumerate()
        .map(|(index, config)| {
            let balancer = match config.selection {
                Selection::RoundRobin => {
                    Balancer::RoundRobin(build_balancer(server, index, config)?)
                }
                Selection::ConsistentHash => Balancer::Hash(build_balancer(server, index, config)?),
            };
            Ok(RouteTable(Route {
                host: config.host.as_ref().map(|h| h.to_ascii_lowercase()),
                path_prefix: config.path_prefix.clone(),
                balancer,
                tls_sni: config.tls_sni.clone(),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                read_timeout: Duration::from_millis(config.read_timeout_ms),
                upstreams: config.upstreams.len(),
                label: format!(
                    "{}{}",
                    config.host.as_deref().unwrap_or("*"),
                    config.path_prefix
                ),
                health: PassiveHealth::default(),
                outcomes: RwLock::default(),
            }))
        })
        .collect()
}

fn inet(backend: &Backend) -> Option<SocketAddr> {
    backend.addr.as_inet().copied()
}

/// Counts a request's outcome at `backend` and feeds the route's passive health.
fn record_outcome(route: &Route, backend: &Backend, result: &'static str) {
    let m = metrics();
    let Some(addr) = inet(backend) else {
        let upstream = backend.addr.to_string();
        m.upstream_requests
            .with_label_values(&[&route.label, &upstream, result])
            .inc();
        return;
    };
    route.outcome_counter(addr, result).inc();
    if route.health.record(addr, result == "ok", Instant::now()) {
        let upstream = addr.to_string();
        tracing::warn!(route = %route.label, upstream = %upstream, "upstream failing requests; out for a while");
        m.upstream_ejections
            .with_label_values(&[&route.label, &upstream])
            .inc();
    }
}

/// The most (upstream, result) counters a route keeps handles of (re-resolved names can
/// bring new addresses; past this the label lookup is done per request).
const MAX_OUTCOME_HANDLES: usize = 1024;

impl Route {
    /// `atlas_upstream_requests_total{route, upstream, result}`, its handle cached.
    fn outcome_counter(&self, upstream: SocketAddr, result: &'static str) -> IntCounter {
        let key = (upstream, result);
        if let Some(counter) = self
            .outcomes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return counter.clone();
        }
        let counter = metrics().upstream_requests.with_label_values(&[
            &self.label,
            &upstream.to_string(),
            result,
        ]);
        let mut outcomes = self.outcomes.write().unwrap_or_else(|e| e.into_inner());
        if outcomes.len() < MAX_OUTCOME_HANDLES {
            outcomes.insert(key, counter.clone());
        }
        counter
    }
}

/// One configured route (opaque outside this module).
pub struct RouteTable(Route);

/// Host of a request without its port (h1 `Host` header or h2 `:authority`).
fn request_host(session: &Session) -> Option<String> {
    let header = session.req_header();
    let raw = header
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| header.uri.authority().map(|a| a.as_str().to_string()))?;
    let host = if raw.starts_with('[') {
        raw.split(']').next().map(|h| format!("{h}]"))?
    } else {
        raw.split(':').next()?.to_string()
    };
    Some(host.to_ascii_lowercase())
}

/// The route for host + path: exact host routes before any-host ones, then the longest prefix.
fn match_route(routes: &[RouteTable], host: Option<&str>, path: &str) -> Option<usize> {
    routes
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.0.host.as_deref().is_none_or(|h| Some(h) == host)
                && path.starts_with(&r.0.path_prefix)
        })
        .max_by_key(|(_, r)| (r.0.host.is_some(), r.0.path_prefix.len()))
        .map(|(i, _)| i)
}

pub struct EdgeProxy {
    api: Arc<HttpApi>,
    routes: Vec<RouteTable>,
    /// Whether any route names a host.
    host_routes: bool,
}

impl EdgeProxy {
    pub fn new(api: Arc<HttpApi>, routes: Vec<RouteTable>) -> Self {
        let host_routes = routes.iter().any(|r| r.0.host.is_some());
        EdgeProxy {
            api,
            routes,
            host_routes,
        }
    }
}

pub struct EdgeCtx {
    route: Option<usize>,
    started: Instant,
    /// The upstreams tried for this request, the last one the current attempt.
    tried: Vec<Backend>,
    /// The current attempt's outcome is recorded already (a failed connection).
    recorded: bool,
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = EdgeCtx;

    fn new_ctx(&self) -> EdgeCtx {
        EdgeCtx {
            route: None,
            started: Instant::now(),
            tried: Vec::new(),
            recorded: false,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> pingora::Result<bool> {
        if self.api.try_serve(session).await? {
            return Ok(true);
        }
        // The host is looked at only when some route names one.
        let host = self.host_routes.then(|| request_host(session)).flatten();
        ctx.route = match_route(
            &self.routes,
            host.as_deref(),
            session.req_header().uri.path(),
        );
        if ctx.route.is_none() {
            let path = session.req_header().uri.path().to_string();
            metrics().record_http("no_route", 404, ctx.started.elapsed());
            let message = self
                .api
                .unserved_hint(&path)
                .unwrap_or("no route for this host and path");
            let reply = HttpReply::error(404, "not_found", message);
            drain_before_refusing(session).await;
            write_reply(session, reply, false).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut EdgeCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .and_then(|i| self.routes.get(i))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(404), "no route"))?;
        let route = &route.0;
        // Consistent hashing keys on the client's IP (not its port) and the path, so a client
        // sticks to one backend for a path across connections; round robin needs no key.
        let key = match route.balancer {
            Balancer::Hash(_) => {
                let client_ip = session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                format!("{client_ip}{}", session.req_header().uri.path())
            }
            Balancer::RoundRobin(_) => String::new(),
        };
        // Not one tried already for this request; not one passive health took out, unless
        // every one is out (then any will do).
        let now = Instant::now();
        let tried = &ctx.tried;
        let backend = route
            .balancer
            .select_with(key.as_bytes(), |b, healthy| {
                healthy
                    && !tried.contains(b)
                    && !inet(b).is_some_and(|a| route.health.is_out(a, now))
            })
            .or_else(|| {
                route
                    .balancer
                    .select_with(key.as_bytes(), |b, healthy| healthy && !tried.contains(b))
            })
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "no healthy upstream"))?;
        ctx.tried.push(backend.clone());
        ctx.recorded = false;
        let tls = route.tls_sni.is_some();
        let mut peer = HttpPeer::new(backend.addr, tls, route.tls_sni.clone().unwrap_or_default());
        peer.options.connection_timeout = Some(route.connect_timeout);
        peer.options.total_connection_timeout = Some(route.connect_timeout);
        peer.options.read_timeout = Some(route.read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut EdgeCtx,
    ) -> pingora::Result<()> {
        // The edge is the first hop: what the client claims about earlier hops is dropped, so
        // upstreams can trust these headers.
        upstream.remove_header("forwarded");
        upstream.remove_header("x-real-ip");
        upstream.remove_header("x-forwarded-for");
        if let Some(client) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            upstream.insert_header("x-forwarded-for", client)?;
        }
        upstream.insert_header("x-forwarded-proto", "https")?;
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut EdgeCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(route) = ctx.route.and_then(|i| self.routes.get(i)) else {
            return e;
        };
        let route = &route.0;
        if let Some(backend) = ctx.tried.last() {
            record_outcome(route, backend, "connect_failed");
            ctx.recorded = true;
        }
        // Nothing reached the upstream: an idempotent request goes to another one.
        if retryable(session.req_header().method.as_str()) && ctx.tried.len() < route.upstreams {
            e.set_retry(true);
        }
        e
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut EdgeCtx) {
        let Some(route) = ctx.route.and_then(|i| self.routes.get(i)) else {
            return;
        };
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        metrics().record_http("proxy", code, ctx.started.elapsed());
        if let Some(backend) = ctx.tried.last().filter(|_| !ctx.recorded) {
            let failed = e.is_some() || matches!(code, 502..=504);
            record_outcome(&route.0, backend, if failed { "error" } else { "ok" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(host: Option<&str>, prefix: &str) -> RouteTable {
        RouteTable(Route {
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            balancer: Balancer::RoundRobin(Arc::new(
                LoadBalancer::try_from_iter(["127.0.0.1:1"]).expect("static address"),
            )),
            tls_sni: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            upstreams: 1,
            label: String::new(),
            health: PassiveHealth::default(),
            outcomes: RwLock::default(),
        })
    }

    #[test]
    fn host_then_longest_prefix_wins() {
        let routes = vec![
            table(None, "/"),
            table(None, "/app/"),
            table(Some("example.com"), "/"),
        ];
        assert_eq!(match_route(&routes, Some("other"), "/app/x"), Some(1));
        assert_eq!(match_route(&routes, Some("other"), "/x"), Some(0));
        assert_eq!(match_route(&routes, Some("example.com"), "/app/x"), Some(2));
        assert_eq!(match_route(&routes[1..2], Some("a"), "/x"), None);
    }
}
