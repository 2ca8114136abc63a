//! The HTTP side of membership: the join client a starting node runs against its seed
//! (register, copy a snapshot, become a member), and the join and remove endpoints a member
//! serves. What is decided — how a node starts, which id a joiner gets, when a change is
//! committed — is `atlas::cluster::admission`'s.

use std::time::{Duration, Instant};

use atlas::AtlasConfig;
use atlas::cluster::admission::{self, AdmissionError, MEMBERSHIP_TIMEOUT, Start};
use atlas::cluster::certify::{JoinCa, LeafSigner};
use atlas::cluster::directory::NodeRecord;
use atlas::cluster::identity::ClusterIdentity;
use atlas::cluster::runtime::ClusterHandle;
use atlas::config::TlsConfig;
use atlas::consensus::NodeId;
use bytes::Bytes;
use serde::Deserialize;

pub use atlas::cluster::admission::{JoinAnswer, JoinRequest};

use crate::http_reply::{CA_PATH, HttpReply, JOIN_PATH};
use crate::node_cert::{self, LeafRequest};
use crate::peer_client::{PeerClient, PeerClientOptions};
use sha2::Digest;

/// How long a joining node keeps trying to reach its seed before giving up.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);
/// Where a joining node leaves the snapshot it copied (streamed to disk and verified whole),
/// for the engine to install when it opens storage.
pub use atlas::cluster::bootstrap::SNAPSHOT_FILE;

/// The CA file that verifies peers: the cluster CA of `tls: internal`, else `peer_ca`.
pub fn peer_ca_file(config: &AtlasConfig) -> String {
    match (&config.tls, &config.peer_ca) {
        (TlsConfig::Internal, _) => crate::ca_rotation::trusted_cas(config)
            .display()
            .to_string(),
        (_, Some(ca)) => ca.display().to_string(),
        (_, None) => String::new(),
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

/// This node's cluster identity, decided before the server starts
/// ([`admission::plan_start`]): `None` standalone; a founder or stored member as it is; a
/// joiner after joining through its seed. A failed join is an error for the operator,
/// except that a member whose seed is unreachable starts from what it stored.
pub fn prepare_identity(config: &AtlasConfig) -> Result<Option<ClusterIdentity>, String> {
    let (seed, stored) = match admission::plan_start(config)? {
        Start::Standalone => return Ok(None),
        Start::Member(identity) => return Ok(Some(identity)),
        Start::Join { seed, stored } => (seed, stored),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the join: {e}"))?;
    let answer = runtime.block_on(join(config, &seed, stored.as_ref().map(|s| s.node_id)));
    match answer {
        Ok((answer, leaf)) => {
            adopt_tls(config, &answer, leaf)?;
            let identity = admission::joined(config, &answer)?;
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

/// Keeps what a join answer gives this node's TLS (`tls: internal`): the leaf a CA holder
/// signed for its request, or — from a member of an earlier release — the CA key.
fn adopt_tls(
    config: &AtlasConfig,
    answer: &JoinAnswer,
    leaf: Option<LeafRequest>,
) -> Result<(), String> {
    if !matches!(config.tls, TlsConfig::Internal) {
        return Ok(());
    }
    if let (Some(cert), Some(key)) = (&answer.ca_cert, &answer.ca_key) {
        return crate::tls::adopt_cluster_ca(config, cert, key).map_err(|e| e.to_string());
    }
    let Some(leaf) = leaf else {
        return Ok(());
    };
    match (&answer.certificate, &answer.ca_cert) {
        (Some(chain), Some(ca)) => match leaf.store(config, answer.node_id, ca, chain) {
            Ok(()) => Ok(()),
            // A member whose current leaf still serves starts with it and renews later.
            Err(e) if stored_leaf_serves(config, Some(answer.node_id)) => {
                tracing::error!(error = %e, "cannot store the seed's new certificate for this node; the current one serves until renewed");
                Ok(())
            }
            Err(e) => Err(format!("the seed's certificate for this node: {e}")),
        },
        _ if stored_leaf_serves(config, Some(answer.node_id)) => {
            tracing::warn!(
                "the seed signed no new certificate; the current one serves until renewed"
            );
            Ok(())
        }
        _ => Err(format!(
            "the seed signed no certificate for node {}: atlas.connect must name a node that \
             holds the cluster CA key",
            answer.node_id
        )),
    }
}

/// A member without the CA key renews its leaf (when due) through its seed, proving who it is
/// with the current one; true when a new leaf was stored.
pub async fn renew_certificate(config: &AtlasConfig, node: NodeId) -> Result<bool, String> {
    let wanted = LeafRequest::wanted(config, Some(node)).map_err(|e| e.to_string())?;
    if wanted.is_none() {
        return Ok(false);
    }
    let seed = config
        .connect
        .clone()
        .ok_or("atlas.connect: needed to renew this node's certificate through a CA holder")?;
    let (answer, leaf) = join(config, &seed, Some(node)).await.map_err(|e| match e {
        JoinFailure::Unreachable(e) | JoinFailure::Refused(e) => e,
    })?;
    if answer.certificate.is_none() {
        return Err(format!(
            "the seed {seed} signed no new certificate for node {node}"
        ));
    }
    adopt_tls(config, &answer, leaf)?;
    Ok(true)
}

enum JoinFailure {
    /// Nothing answered (worth retrying, or starting from stored state).
    Unreachable(String),
    /// The seed answered no, or could not be verified.
    Refused(String),
}

/// Joins through `seed`: a node with a stored id re-joins; a new one registers, copies a
/// snapshot of the data into `<data_dir>/snapshot.bin` (streamed, verified, synced), and
/// only then becomes a member. With `tls: internal` the member step carries a request for
/// this node's leaf (a new node's, or a due one: [`LeafRequest::wanted`]), answered with
/// the key made for it.
async fn join(
    config: &AtlasConfig,
    seed: &str,
    stored: Option<NodeId>,
) -> Result<(JoinAnswer, Option<LeafRequest>), JoinFailure> {
    let (answer, leaf, ca_file) = join_seed(config, seed, stored).await?;
    // The CA the answer hands over must be one the seed was verified with: a seed cannot
    // install a CA of its own choosing (nor an earlier release's CA key of another CA).
    if let (TlsConfig::Internal, Some(ca)) = (&config.tls, &answer.ca_cert) {
        let trusted = crate::tls::certificates(std::path::Path::new(&ca_file));
        if !crate::tls::pem_to_der(ca).is_some_and(|der| trusted.contains(&der)) {
            return Err(JoinFailure::Refused(format!(
                "the seed {seed} answered a cluster CA other than the one it was verified \
                 with ({ca_file}); refusing it"
            )));
        }
    }
    Ok((answer, leaf))
}

/// [`join`], answering also the CA file the seed was verified with.
async fn join_seed(
    config: &AtlasConfig,
    seed: &str,
    stored: Option<NodeId>,
) -> Result<(JoinAnswer, Option<LeafRequest>, String), JoinFailure> {
    let (addr, name) = seed_address(seed).map_err(JoinFailure::Refused)?;
    // A member verifies its seed with the cluster CAs it stored and trusts (they change
    // with a CA rotation); `peer_ca` and its pin are for the first join.
    let own_cas = matches!(config.tls, TlsConfig::Internal)
        && stored.is_some()
        && crate::tls::ca_cert_path(config).exists();
    let ca_file = match (&config.peer_ca, &config.peer_ca_sha256) {
        _ if own_cas => peer_ca_file(config),
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
    let leaf = LeafRequest::wanted(config, stored)
        .map_err(|e| JoinFailure::Refused(format!("this node's certificate request: {e}")))?;
    // A member asking for a new leaf proves who it is with its current one.
    let proof = stored
        .filter(|_| leaf.is_some())
        .and_then(|id| node_cert::current_leaf(config, id));
    let options = |timeout: Duration, cert: Option<(String, String)>| PeerClientOptions {
        ca_file: ca_file.clone(),
        credentials: config.credentials.clone().unwrap_or_default(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: timeout,
        client_cert_key: cert,
    };
    let client = PeerClient::new(options(MEMBERSHIP_TIMEOUT + Duration::from_secs(10), proof));
    let seed = Seed {
        client: &client,
        addr: &addr,
        name: &name,
        url: seed,
    };
    let member = |id: Option<NodeId>, leaf: &Option<LeafRequest>| JoinRequest {
        csr: leaf.as_ref().map(|l| l.csr.clone()),
        ..admission::join_request(config, id, true)
    };
    if stored.is_some() {
        return match seed.post_json(JOIN_PATH, &member(stored, &leaf)).await {
            // A leaf that is only due keeps serving: the node still starts when its seed
            // will not sign (not a CA holder, say), and tries again later.
            Err(JoinFailure::Refused(e))
                if leaf.is_some() && stored_leaf_serves(config, stored) =>
            {
                tracing::warn!(error = %e, "the seed did not renew this node's certificate");
                let plain = PeerClient::new(options(MEMBERSHIP_TIMEOUT, None));
                let seed = Seed {
                    client: &plain,
                    ..seed
                };
                Ok((
                    seed.post_json(JOIN_PATH, &member(stored, &None)).await?,
                    None,
                    ca_file.clone(),
                ))
            }
            answer => Ok((answer?, leaf, ca_file.clone())),
        };
    }
    // A new node: register, copy a snapshot of the data, then become a member.
    let registered: JoinAnswer = seed
        .post_json(JOIN_PATH, &admission::join_request(config, None, false))
        .await?;
    if leaf.is_some() && registered.signs_certificates == Some(false) {
        return Err(JoinFailure::Refused(format!(
            "the seed {} does not hold the cluster CA key, so it cannot sign this node's \
             certificate: atlas.connect must name a node that does (the founder, or one \
             given the CA files, see docs/security.md)",
            seed.url
        )));
    }
    let bulk = PeerClient::new(options(super::snapshot::SNAPSHOT_TIMEOUT, None));
    let path = config.data_dir.join(SNAPSHOT_FILE);
    atlas::files::private_dir(&config.data_dir)
        .map_err(|e| JoinFailure::Refused(format!("{}: {e}", config.data_dir.display())))?;
    let bytes = super::snapshot::download(&bulk, &addr, &name, &[], &path)
        .await
        .map_err(|e| JoinFailure::Refused(format!("copying a snapshot from {}: {e}", seed.url)))?;
    tracing::info!(bytes, "copied a snapshot of the cluster's data");
    let answer = seed
        .post_json(JOIN_PATH, &member(Some(registered.node_id), &leaf))
        .await?;
    Ok((answer, leaf, ca_file))
}

fn stored_leaf_serves(config: &AtlasConfig, stored: Option<NodeId>) -> bool {
    stored.is_some_and(|id| node_cert::current_leaf(config, id).is_some())
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

fn refusal(e: AdmissionError) -> HttpReply {
    let (status, kind) = match &e {
        AdmissionError::BadRequest(_) => (400, "bad_request"),
        AdmissionError::Conflict(_) => (409, "conflict"),
        AdmissionError::NotFound(_) => (404, "not_found"),
        AdmissionError::Unavailable(_) => (503, "unavailable"),
        AdmissionError::Removed(_) => (403, "removed"),
        AdmissionError::Forbidden(_) => (403, "forbidden"),
        AdmissionError::NotACaHolder(_) => (409, "not_a_ca_holder"),
    };
    HttpReply::error(status, kind, &e.to_string())
}

/// `POST /atlas/v1/join` on a member: admits the node ([`admission::admit`]) and answers
/// with its id, the membership the cluster started from, the directory and, with
/// `tls: internal`, the cluster CA's certificate and the leaf signed for the node's request
/// (on a CA holder). `proven`: the node the TLS client's certificate names; `bound`:
/// certificates name nodes (`peer_mtls` with `tls: internal`).
pub async fn serve_join(
    cluster: &ClusterHandle,
    engine: &atlas::Engine,
    tls_dir: Option<&std::path::Path>,
    (proven, bound): (Option<NodeId>, bool),
    joins: &tokio::sync::Mutex<()>,
    body: &[u8],
) -> HttpReply {
    let request: JoinRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return HttpReply::error(400, "bad_request", &format!("join request: {e}")),
    };
    let signer = tls_dir.and_then(node_cert::HolderSigner::load);
    let ca = tls_dir.and_then(|dir| {
        Some(JoinCa {
            cert: std::fs::read_to_string(dir.join("ca.crt")).ok()?,
            signer: signer.as_ref().map(|s| s as &dyn LeafSigner),
        })
    });
    let node = engine.node();
    let me = NodeRecord {
        id: node.id,
        region: node.region.clone(),
        host: node.host.clone(),
        port: node.port,
    };
    match admission::admit(cluster, &me, ca, (proven, bound), joins, request).await {
        Ok(answer) => HttpReply::json(200, serde_json::to_value(answer).unwrap_or_default()),
        Err(e) => refusal(e),
    }
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
    match admission::remove(cluster, node).await {
        Ok(()) => HttpReply::json(200, serde_json::json!({"removed": node})),
        Err(e) => refusal(e),
    }
}
