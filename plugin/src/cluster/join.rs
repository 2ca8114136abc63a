//! Joining over HTTPS before the server starts (register, copy a snapshot, become a member),
//! the join and remove endpoints a member serves, and the membership-change loop they share.

use std::time::{Duration, Instant};

use atlas::AtlasConfig;
use atlas::cluster::directory::NodeRecord;
use atlas::cluster::error::ClusterError;
use atlas::cluster::identity::{BootstrapMember, ClusterIdentity};
use atlas::cluster::runtime::ClusterHandle;
use atlas::config::TlsConfig;
use atlas::consensus::{ClientOp, NodeId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::http::{CA_PATH, HttpReply, JOIN_PATH};
use crate::peer_client::{PeerClient, PeerClientOptions};
use sha2::Digest;

/// How long a joining node keeps trying to reach its seed before giving up.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);
/// How long a member waits for a join to be committed.
const JOIN_COMMIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Where a joining node leaves the snapshot it copied (streamed to disk and verified whole),
/// for the engine to install when it opens storage.
pub use atlas::cluster::bootstrap::SNAPSHOT_FILE;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The id this node had before (a restart), if any.
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// `false`: only register the node (its id and address); it becomes a member with a
    /// second request once it has copied a snapshot of the data.
    #[serde(default = "default_true")]
    pub member: bool,
    pub region: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub node_id: NodeId,
    pub bootstrap: Vec<BootstrapMember>,
    pub nodes: Vec<NodeRecord>,
    /// With `tls: internal`: the cluster CA, so every node's certificate verifies against it.
    #[serde(default)]
    pub ca_cert: Option<String>,
    #[serde(default)]
    pub ca_key: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The CA file that verifies peers: the cluster CA of `tls: internal`, else `peer_ca`.
pub fn peer_ca_file(config: &AtlasConfig) -> String {
    match (&config.tls, &config.peer_ca) {
        (TlsConfig::Internal, _) => crate::tls::ca_cert_path(config).display().to_string(),
        (_, Some(ca)) => ca.display().to_string(),
        (_, None) => String::new(),
    }
}

fn this_node_request(config: &AtlasConfig, node_id: Option<NodeId>, member: bool) -> JoinRequest {
    let (host, port) = config.advertised_host_port();
    JoinRequest {
        node_id,
        member,
        region: config.region.clone(),
        host,
        port,
    }
}

/// Splits `https://host:port[/]` into the address to dial and the name to verify.
fn seed_address(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("atlas.connect: `{url}` must start with https://"))?
        .trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("atlas.connect: `{url}` needs a port (https://host:port)"))?;
    port.parse::<u16>()
        .map_err(|_| format!("atlas.connect: `{url}` has a bad port"))?;
    let name = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((rest.to_string(), name))
}

/// Decides this node's cluster identity before the server starts. Without `credentials` the
/// node is standalone (`None`). The first node of a cluster (no `connect`) founds it; a node
/// with `connect` joins through the seed (and, restarted, re-joins with its stored id). A
/// failed join is an error for the operator, except that a member whose seed is unreachable
/// starts from what it stored.
pub fn prepare_identity(config: &AtlasConfig) -> Result<Option<ClusterIdentity>, String> {
    if config.credentials.is_none() {
        return Ok(None);
    }
    let stored = ClusterIdentity::load(&config.data_dir)?;
    let Some(seed) = &config.connect else {
        let identity = match stored {
            Some(identity) => identity,
            None => {
                let identity = ClusterIdentity::founder(&config.region);
                identity.save(&config.data_dir)?;
                tracing::info!("founded a new cluster as node 1");
                identity
            }
        };
        return Ok(Some(identity));
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the join: {e}"))?;
    let answer = runtime.block_on(join(config, seed, stored.as_ref().map(|s| s.node_id)));
    match answer {
        Ok(answer) => {
            if let (TlsConfig::Internal, Some(cert), Some(key)) =
                (&config.tls, &answer.ca_cert, &answer.ca_key)
            {
                crate::tls::adopt_cluster_ca(config, cert, key).map_err(|e| e.to_string())?;
            }
            let identity = ClusterIdentity {
                node_id: answer.node_id,
                bootstrap: answer.bootstrap,
                nodes: answer.nodes,
            };
            identity.save(&config.data_dir)?;
            tracing::info!(node_id = identity.node_id, seed = %seed, "joined the cluster");
            Ok(Some(identity))
        }
        Err(JoinFailure::Unreachable(e)) if stored.is_some() => {
            tracing::warn!(error = %e, "the seed is unreachable; starting as the stored member");
            Ok(stored)
        }
        Err(JoinFailure::Unreachable(e) | JoinFailure::Refused(e)) => Err(e),
    }
}

enum JoinFailure {
    /// Nothing answered (worth retrying, or starting from stored state).
    Unreachable(String),
    /// The seed answered no, or could not be verified.
    Refused(String),
}

/// Joins through `seed`: a node with a stored id re-joins; a new one registers, copies a
/// snapshot of the data into `<data_dir>/snapshot.bin` (streamed, verified, synced), and
/// only then becomes a member.
async fn join(
    config: &AtlasConfig,
    seed: &str,
    stored: Option<NodeId>,
) -> Result<JoinAnswer, JoinFailure> {
    let (addr, name) = seed_address(seed).map_err(JoinFailure::Refused)?;
    let ca_file = match (&config.peer_ca, &config.peer_ca_sha256) {
        (Some(path), _) => path.display().to_string(),
        (None, Some(pin)) => pinned_seed_ca(config, &addr, &name, pin).await?,
        (None, None) => {
            return Err(JoinFailure::Refused(
                "atlas.peer_ca: required with atlas.connect".into(),
            ));
        }
    };
    if let Err(e) = std::fs::metadata(&ca_file) {
        return Err(JoinFailure::Refused(format!(
            "atlas.peer_ca: cannot read {ca_file}: {e}"
        )));
    }
    let options = |timeout: Duration| PeerClientOptions {
        ca_file: ca_file.clone(),
        credentials: config.credentials.clone().unwrap_or_default(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: timeout,
        client_cert_key: None,
    };
    let client = PeerClient::new(options(JOIN_COMMIT_TIMEOUT + Duration::from_secs(10)));
    let seed = Seed {
        client: &client,
        addr: &addr,
        name: &name,
        url: seed,
    };
    if stored.is_some() {
        return seed
            .post_json(JOIN_PATH, &this_node_request(config, stored, true))
            .await;
    }
    // A new node: register, copy a snapshot of the data, then become a member.
    let registered: JoinAnswer = seed
        .post_json(JOIN_PATH, &this_node_request(config, None, false))
        .await?;
    let bulk = PeerClient::new(options(super::snapshot::SNAPSHOT_TIMEOUT));
    let path = config.data_dir.join(SNAPSHOT_FILE);
    atlas::files::private_dir(&config.data_dir)
        .map_err(|e| JoinFailure::Refused(format!("{}: {e}", config.data_dir.display())))?;
    let bytes = super::snapshot::download(&bulk, &addr, &name, &[], &path)
        .await
        .map_err(|e| JoinFailure::Refused(format!("copying a snapshot from {}: {e}", seed.url)))?;
    tracing::info!(bytes, "copied a snapshot of the cluster's data");
    seed.post_json(
        JOIN_PATH,
        &this_node_request(config, Some(registered.node_id), true),
    )
    .await
}

/// The member a node joins through.
#[derive(Clone, Copy)]
struct Seed<'a> {
    client: &'a PeerClient,
    addr: &'a str,
    name: &'a str,
    url: &'a str,
}

impl Seed<'_> {
    async fn post_json(
        &self,
        path: &str,
        request: &JoinRequest,
    ) -> Result<JoinAnswer, JoinFailure> {
        let body = serde_json::to_vec(request).unwrap_or_default();
        let answer = self.post(path, body).await?;
        serde_json::from_slice(&answer).map_err(|e| {
            JoinFailure::Refused(format!("the seed's join answer does not parse: {e}"))
        })
    }

    /// POSTs `body`, retrying while the seed is starting or unreachable (bounded); the body
    /// of a `200`, or why not.
    async fn post(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, JoinFailure> {
        let seed = self.url;
        let deadline = Instant::now() + JOIN_PATIENCE;
        loop {
            match self
                .client
                .post(self.addr, self.name, path, Bytes::from(body.clone()))
                .await
            {
                Ok(response) if response.status == 200 => return Ok(response.body.to_vec()),
                Ok(response) if response.status == 401 => {
                    return Err(JoinFailure::Refused(format!(
                        "the seed {seed} refused the cluster credentials (atlas.credentials)"
                    )));
                }
                Ok(response) => {
                    let message = String::from_utf8_lossy(&response.body).into_owned();
                    if response.status == 503 && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    return Err(JoinFailure::Refused(format!(
                        "the seed {seed} refused the join ({}): {message}",
                        response.status
                    )));
                }
                Err(e) => {
                    let text = e.to_string();
                    if is_tls_failure(&e) {
                        return Err(JoinFailure::Refused(format!(
                            "cannot verify the seed {seed} with atlas.peer_ca: {text}"
                        )));
                    }
                    if Instant::now() >= deadline {
                        return Err(JoinFailure::Unreachable(format!(
                            "cannot reach the seed {seed}: {text}"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Fetches the seed's CA certificate without verification, checks it against the pinned
/// fingerprint, and stores it (`<data_dir>/tls/seed-ca.crt`) to verify the seed with.
async fn pinned_seed_ca(
    config: &AtlasConfig,
    addr: &str,
    name: &str,
    pin: &str,
) -> Result<String, JoinFailure> {
    let expected = atlas::config::normalize_fingerprint(pin).ok_or_else(|| {
        JoinFailure::Refused("atlas.peer_ca_sha256: not a SHA-256 fingerprint".into())
    })?;
    let deadline = Instant::now() + JOIN_PATIENCE;
    let response = loop {
        match crate::peer_client::get_unverified(addr, name, CA_PATH, Duration::from_secs(5)).await
        {
            Ok(r) => break r,
            Err(e) if Instant::now() >= deadline => {
                return Err(JoinFailure::Unreachable(format!(
                    "cannot reach the seed {addr}: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    if response.status != 200 {
        return Err(JoinFailure::Refused(format!(
            "the seed {addr} serves no CA certificate ({}); use atlas.peer_ca",
            response.status
        )));
    }
    let received = String::from_utf8_lossy(&response.body).into_owned();
    // Exactly one certificate, and the file written is made from the bytes whose
    // fingerprint is checked: nothing else the seed (or someone between) sent is trusted.
    let (der, pem) = crate::tls::single_certificate(&received).map_err(|what| {
        JoinFailure::Refused(format!(
            "the seed {addr} sent a CA file with {what}; a pinned CA must be one certificate"
        ))
    })?;
    let found: String = sha2::Sha256::digest(&der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    if found != expected {
        return Err(JoinFailure::Refused(format!(
            "cannot verify the seed {addr}: its CA fingerprint {found} does not match \
             atlas.peer_ca_sha256"
        )));
    }
    let dir = crate::tls::tls_dir(config);
    let path = dir.join("seed-ca.crt");
    atlas::files::private_dir(&dir)
        .and_then(|_| atlas::files::write_private(&path, pem.as_bytes()))
        .map_err(|e| JoinFailure::Refused(format!("cannot write {}: {e}", path.display())))?;
    Ok(path.display().to_string())
}

fn is_tls_failure(e: &pingora::Error) -> bool {
    use pingora::ErrorType;
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError
    ) || e.to_string().to_ascii_lowercase().contains("certificate")
}

/// `POST /atlas/v1/join` on a member: commits the new node's record, then the node itself,
/// and answers with its id, the membership the cluster started from and the directory.
pub async fn serve_join(
    cluster: &ClusterHandle,
    engine: &atlas::Engine,
    tls_dir: Option<&std::path::Path>,
    joins: &tokio::sync::Mutex<()>,
    body: &[u8],
) -> HttpReply {
    let request: JoinRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return HttpReply::error(400, "bad_request", &format!("join request: {e}")),
    };
    if request.region.trim().is_empty() || request.region.contains(char::is_whitespace) {
        return HttpReply::error(400, "bad_request", "region: must be a non-empty word");
    }
    if request.host.is_empty() || request.host.contains(char::is_whitespace) || request.port == 0 {
        return HttpReply::error(400, "bad_request", "host/port: not an address");
    }
    // One join at a time through this member, so ids are not handed out twice here.
    let _guard = joins.lock().await;
    let view = cluster.view();
    let same_address = view
        .directory
        .values()
        .find(|r| r.host == request.host && r.port == request.port)
        .cloned();
    let id = match (&same_address, request.node_id) {
        (Some(existing), Some(id)) if existing.id == id => id,
        // Registered before but never a member (its join was interrupted): the same node.
        (Some(existing), None) if !view.members.contains(existing.id) => existing.id,
        (Some(existing), _) => {
            return HttpReply::error(
                409,
                "conflict",
                &format!(
                    "address {}:{} already belongs to node {}",
                    request.host, request.port, existing.id
                ),
            );
        }
        (None, Some(id)) => {
            if let Some(other) = view.directory.get(&id) {
                return HttpReply::error(
                    409,
                    "conflict",
                    &format!("node {id} is registered at {}", other.address()),
                );
            }
            id
        }
        (None, None) => {
            view.members
                .nodes()
                .chain(view.directory.keys().copied())
                .max()
                .unwrap_or(0)
                + 1
        }
    };
    let record = NodeRecord {
        id,
        region: request.region.clone(),
        host: request.host.clone(),
        port: request.port,
    };
    if same_address.is_none()
        && let Err(e) = cluster.record_node(&record).await
    {
        return HttpReply::error(503, "unavailable", &format!("join not committed: {e}"));
    }
    if !request.member {
        tracing::info!(node = id, addr = %record.address(), "node registered; it copies a snapshot next");
        return join_answer(cluster, engine, tls_dir, id);
    }
    // Answered as soon as the node is a member: leaving the joint configuration needs the
    // new node's own answers, and it is still waiting for this one.
    let add = ClientOp::AddNode {
        node: id,
        zone: request.region.clone(),
    };
    if !change_membership(cluster, add, |view| view.members.contains(id)).await {
        return HttpReply::error(
            503,
            "unavailable",
            "the membership change did not commit in time; retry the join",
        );
    }
    tracing::info!(node = id, region = %request.region, addr = %record.address(), "node joined");
    join_answer(cluster, engine, tls_dir, id)
}

fn join_answer(
    cluster: &ClusterHandle,
    engine: &atlas::Engine,
    tls_dir: Option<&std::path::Path>,
    id: NodeId,
) -> HttpReply {
    let view = cluster.view();
    let mut nodes: Vec<NodeRecord> = view.directory.values().cloned().collect();
    if !nodes.iter().any(|n| n.id == engine.node().id) {
        let me = engine.node();
        nodes.push(NodeRecord {
            id: me.id,
            region: me.region.clone(),
            host: me.host.clone(),
            port: me.port,
        });
    }
    let (ca_cert, ca_key) = match tls_dir {
        Some(dir) => (
            std::fs::read_to_string(dir.join("ca.crt")).ok(),
            std::fs::read_to_string(dir.join("ca.key")).ok(),
        ),
        None => (None, None),
    };
    let answer = JoinAnswer {
        node_id: id,
        bootstrap: bootstrap_of(cluster),
        nodes,
        ca_cert,
        ca_key,
    };
    HttpReply::json(200, serde_json::to_value(answer).unwrap_or_default())
}

fn bootstrap_of(cluster: &ClusterHandle) -> Vec<BootstrapMember> {
    let bootstrap = cluster.bootstrap();
    bootstrap
        .nodes()
        .map(|id| BootstrapMember {
            id,
            region: bootstrap.zone_of(id).cloned().unwrap_or_default(),
        })
        .collect()
}

/// `POST /atlas/v1/remove` `{"node_id": N}`: takes a member out of the cluster (for a node
/// that is gone for good). Answers once the removal is in the configuration.
pub async fn serve_remove(cluster: &ClusterHandle, body: &[u8]) -> HttpReply {
    #[derive(Deserialize)]
    struct Remove {
        node_id: NodeId,
    }
    let node = match serde_json::from_slice::<Remove>(body) {
        Ok(r) => r.node_id,
        Err(e) => return HttpReply::error(400, "bad_request", &format!("node_id: {e}")),
    };
    if node == cluster.id() {
        return HttpReply::error(
            400,
            "bad_request",
            "node_id: a node cannot remove itself; ask another member",
        );
    }
    if !cluster.view().members.contains(node) {
        return HttpReply::error(404, "not_found", &format!("node {node} is not a member"));
    }
    let remove = ClientOp::RemoveNode { node };
    if !change_membership(cluster, remove, |view| !view.members.contains(node)).await {
        return HttpReply::error(
            503,
            "unavailable",
            "the removal did not commit in time; retry",
        );
    }
    tracing::info!(node, "node removed from the cluster");
    HttpReply::json(200, serde_json::json!({"removed": node}))
}

/// Proposes the membership change `op` — again whenever the last proposal has finished
/// and no change is under way (a change committed while another is joint is ignored) —
/// until `done` holds for the published view. The proposal's own answer is not awaited:
/// once applied, the configuration is joint, and leaving it may need the node being added.
/// False if `done` does not hold within `JOIN_COMMIT_TIMEOUT`.
async fn change_membership(
    cluster: &ClusterHandle,
    op: ClientOp,
    done: impl Fn(&atlas::cluster::runtime::ClusterView) -> bool,
) -> bool {
    let deadline = Instant::now() + JOIN_COMMIT_TIMEOUT;
    let mut proposal: Option<tokio::task::JoinHandle<Result<(), ClusterError>>> = None;
    loop {
        let view = cluster.view();
        if done(&view) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if proposal.as_ref().is_none_or(|p| p.is_finished()) && !view.joint {
            let cluster = cluster.clone();
            let op = op.clone();
            proposal = Some(tokio::spawn(async move { cluster.system(op).await }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
