//! The client side of the node-to-node transport: POSTs over HTTP/2 on one pooled TLS
//! connection per peer (many concurrent streams), verifying peers against the cluster CA and
//! presenting the cluster credentials. Used for the consensus transport and join.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;

/// Streams allowed on one h2 connection to a peer.
pub const MAX_H2_STREAMS: usize = 1000;
/// An idle pooled connection is kept this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
pub struct PeerClientOptions {
    /// PEM file of the CA that signed the peers' certificates.
    pub ca_file: String,
    /// Sent as `Authorization: Bearer …`.
    pub credentials: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Client certificate and key for mTLS, when the cluster uses it.
    pub client_cert_key: Option<(String, String)>,
}

/// A response from a peer.
#[derive(Debug)]
pub struct PeerResponse {
    pub status: u16,
    pub body: Bytes,
}

pub struct PeerClient {
    connector: Connector,
    options: PeerClientOptions,
    new_connections: AtomicU64,
    acquiring: PeerLocks,
}

/// One lock per peer address, held while a session is taken from the pool: concurrent
/// requests to a peer then share its h2 connection instead of each racing a new one in. An
/// entry lives only while someone holds or waits for it, so addresses a cluster no longer
/// has leave no state behind.
#[derive(Default)]
struct PeerLocks {
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PeerLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock of `addr`, to hold while taking a session; give it back with [`Self::done`].
    fn get(&self, addr: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.map().entry(addr.to_string()).or_default().clone()
    }

    /// Drops `addr`'s entry when nobody else holds or waits for it (every clone is made
    /// under the map's lock, so the count is exact there).
    fn done(&self, addr: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.map();
        if Arc::strong_count(&lock) <= 2 {
            map.remove(addr);
        }
    }
}

impl PeerClient {
    pub fn new(options: PeerClientOptions) -> PeerClient {
        let mut connector_options = ConnectorOptions::new(64);
        connector_options.ca_file = Some(options.ca_file.clone());
        connector_options.cert_key_file = options.client_cert_key.clone();
        PeerClient {
            connector: Connector::new(Some(connector_options)),
            options,
            new_connections: AtomicU64::new(0),
            acquiring: PeerLocks::default(),
        }
    }

    /// Connections opened so far (a healthy cluster opens one per peer and reuses it).
    pub fn connections_opened(&self) -> u64 {
        self.new_connections.load(Ordering::Relaxed)
    }

    fn peer(&self, addr: &str, server_name: &str) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, server_name.to_string());
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = MAX_H2_STREAMS;
        peer.options.connection_timeout = Some(self.options.connect_timeout);
        peer.options.total_connection_timeout = Some(self.options.connect_timeout);
        peer.options.read_timeout = Some(self.options.request_timeout);
        peer.options.write_timeout = Some(self.options.request_timeout);
        peer
    }

    /// POSTs `body` to `path` on the peer at `addr` (`ip:port`), whose certificate must be
    /// valid for `server_name` (SNI is always set).
    pub async fn post(
        &self,
        addr: &str,
        server_name: &str,
        path: &str,
        body: Bytes,
    ) -> pingora::Result<PeerResponse> {
        let exchange = async {
            let (mut session, peer) = self
                .send_post(addr, server_name, path, body, "application/octet-stream")
                .await?;
            let response = read_response(&mut session).await?;
            self.connector
                .release_http_session(session, &peer, Some(IDLE_TIMEOUT))
                .await;
            Ok(response)
        };
        within(self.options.request_timeout, addr, exchange).await
    }

    /// Opens (or reuses) the connection and sends a whole POST request.
    async fn send_post(
        &self,
        addr: &str,
        server_name: &str,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> pingora::Result<(pingora::protocols::http::client::HttpSession, HttpPeer)> {
        let peer = self.peer(addr, server_name);
        let lock = self.acquiring.get(addr);
        let taken = {
            let _one_at_a_time = lock.lock().await;
            self.connector.get_http_session(&peer).await
        };
        self.acquiring.done(addr, lock);
        let (mut session, reused) = taken?;
        if !reused {
            self.new_connections.fetch_add(1, Ordering::Relaxed);
        }
        let mut request = RequestHeader::build("POST", path.as_bytes(), None)?;
        request.insert_header("host", server_name)?;
        request.insert_header(
            "authorization",
            format!("Bearer {}", self.options.credentials),
        )?;
        request.insert_header("content-type", content_type.to_string())?;
        request.insert_header("content-length", body.len().to_string())?;
        session.write_request_header(Box::new(request)).await?;
        session.write_request_body(body, true).await?;
        session.finish_request_body().await?;
        Ok((session, peer))
    }

    /// POSTs `body` (JSON) and hands the response body to `sink` chunk by chunk as it
    /// arrives (nothing is held in memory): for snapshots. Returns the status; for a status
    /// other than 200 the body goes to the returned text instead (its first 64 KiB).
    pub async fn post_into(
        &self,
        addr: &str,
        server_name: &str,
        path: &str,
        body: Bytes,
        sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
    ) -> pingora::Result<(u16, String)> {
        let exchange = async {
            let (mut session, _) = self
                .send_post(addr, server_name, path, body, "application/json")
                .await?;
            session.read_response_header().await?;
            let status = session.response_header().map_or(0, |h| h.status.as_u16());
            let mut refusal = Vec::new();
            while let Some(chunk) = session.read_response_body().await? {
                if status == 200 {
                    sink(&chunk).map_err(|e| {
                        pingora::Error::explain(pingora::ErrorType::WriteError, e.to_string())
                    })?;
                } else if refusal.len() < 64 * 1024 {
                    refusal.extend_from_slice(&chunk);
                }
            }
            Ok((status, String::from_utf8_lossy(&refusal).into_owned()))
        };
        within(self.options.request_timeout, addr, exchange).await
    }
}

/// `exchange`, or a timeout error naming `addr`.
async fn within<T>(
    timeout: Duration,
    addr: &str,
    exchange: impl std::future::Future<Output = pingora::Result<T>>,
) -> pingora::Result<T> {
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(pingora::Error::explain(
            pingora::ErrorType::ReadTimedout,
            format!("no answer from {addr} within {timeout:?}"),
        )),
    }
}

/// Reads a whole response (status and body) once the request is sent.
async fn read_response(
    session: &mut pingora::protocols::http::client::HttpSession,
) -> pingora::Result<PeerResponse> {
    session.read_response_header().await?;
    let status = session.response_header().map_or(0, |h| h.status.as_u16());
    let mut received = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        received.extend_from_slice(&chunk);
    }
    Ok(PeerResponse {
        status,
        body: Bytes::from(received),
    })
}

/// GETs `path` from `addr` **without verifying** its certificate. Only for fetching a CA
/// certificate whose fingerprint the caller then checks against a pinned one (a joining node
/// with `peer_ca_sha256`); nothing else may trust what this returns.
pub async fn get_unverified(
    addr: &str,
    server_name: &str,
    path: &str,
    timeout: Duration,
) -> pingora::Result<PeerResponse> {
    let exchange = async {
        let connector = Connector::new(None);
        let mut peer = HttpPeer::new(addr, true, server_name.to_string());
        peer.options.verify_cert = false;
        peer.options.verify_hostname = false;
        peer.options.connection_timeout = Some(timeout);
        peer.options.total_connection_timeout = Some(timeout);
        let (mut session, _) = connector.get_http_session(&peer).await?;
        let mut request = RequestHeader::build("GET", path.as_bytes(), None)?;
        request.insert_header("host", server_name)?;
        session.write_request_header(Box::new(request)).await?;
        session.finish_request_body().await?;
        read_response(&mut session).await
    };
    within(timeout, addr, exchange).await
}

#[cfg(test)]
mod tests {
    use super::PeerLocks;

    #[tokio::test]
    async fn a_peer_lock_lives_only_while_it_is_held_or_awaited() {
        let locks = PeerLocks::default();
        let first = locks.get("10.0.0.1:4444");
        let guard = first.lock().await;
        // A second request to the same peer waits on the same lock.
        let second = locks.get("10.0.0.1:4444");
        assert!(std::sync::Arc::ptr_eq(&first, &second));
        assert!(second.try_lock().is_err());
        drop(guard);
        locks.done("10.0.0.1:4444", first);
        assert_eq!(locks.map().len(), 1, "the second still needs it");
        locks.done("10.0.0.1:4444", second);
        assert!(locks.map().is_empty());
        // Many addresses over time (nodes replaced): nothing accumulates.
        for i in 0..1000 {
            let addr = format!("10.0.{}.{}:4444", i / 250, i % 250);
            let lock = locks.get(&addr);
            locks.done(&addr, lock);
        }
        assert!(locks.map().is_empty());
    }
}
