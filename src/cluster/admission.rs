//! Who is in the cluster, decided here rather than in an adapter: how a starting node finds
//! its identity (standalone, founder, stored member, or joiner), how a member admits a
//! joining node (its id, its record, then the membership change), and how a member is
//! removed. The HTTP endpoints and the join client in `atlas-pingora` only carry these
//! requests and answers.

use std::time::{Duration, Instant};

use super::certify::{JoinCa, may_certify, name_is_free};
use super::directory::NodeRecord;
use super::error::ClusterError;
use super::identity::{BootstrapMember, ClusterIdentity};
use super::runtime::{ClusterHandle, ClusterView};
use crate::config::AtlasConfig;
use crate::consensus::{ClientOp, NodeId};

/// How long a member waits for a join or removal to be committed.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(20);

/// `POST /atlas/v1/join`'s body.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
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
    /// With `tls: internal`: a PEM certificate request for this node's key. The member that
    /// admits it signs a leaf naming the node's id and `host`; the key never travels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

fn default_true() -> bool {
    true
}

/// The answer to a join.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JoinAnswer {
    pub node_id: NodeId,
    pub bootstrap: Vec<BootstrapMember>,
    pub nodes: Vec<NodeRecord>,
    /// With `tls: internal`: the cluster CA, so every node's certificate verifies against it.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// The leaf signed for the request's `csr` (then the CA certificate), if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// With `tls: internal`: whether this member holds the CA key and so can sign the
    /// joiner's certificate at its member step (told at registration, before the snapshot
    /// is copied). Absent from earlier releases, which hand out the CA key instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signs_certificates: Option<bool>,
    /// The CA key, which members of earlier releases handed every voting member; this
    /// release never sends it, and a joiner adopts it only from such a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_key: Option<String>,
}

/// Why a join or removal was refused; the adapter gives each its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The request is malformed (names the field).
    #[error("{0}")]
    BadRequest(String),
    /// It contradicts the directory (an address or id taken).
    #[error("{0}")]
    Conflict(String),
    /// The node to remove is not a member.
    #[error("{0}")]
    NotFound(String),
    /// The cluster could not commit it in time; retrying may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// A node that was removed asks to come back under its id.
    #[error("{0}")]
    Removed(String),
    /// A certificate for a member's id was asked without that member's certificate.
    #[error("{0}")]
    Forbidden(String),
    /// This member cannot sign the certificate asked for: it does not hold the CA key.
    #[error("{0}")]
    NotACaHolder(String),
}

/// What a starting node is, before the server starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No `credentials`: a single node.
    Standalone,
    /// A member already, or the founder of a new cluster (its identity saved).
    Member(ClusterIdentity),
    /// `connect` names a seed: join through it (again, with the stored identity, after a
    /// restart; that identity is used if the seed cannot be reached).
    Join {
        seed: String,
        stored: Option<ClusterIdentity>,
    },
}

/// Decides how this node starts. Without `credentials` it is standalone; without `connect`
/// it is the member it stored, or founds a cluster as node 1; with `connect` it joins.
pub fn plan_start(config: &AtlasConfig) -> Result<Start, String> {
    if config.credentials.is_none() {
        return Ok(Start::Standalone);
    }
    let stored = ClusterIdentity::load(&config.data_dir)?;
    match (&config.connect, stored) {
        (Some(seed), stored) => Ok(Start::Join {
            seed: seed.clone(),
            stored,
        }),
        (None, Some(identity)) => Ok(Start::Member(identity)),
        (None, None) => {
            let identity = ClusterIdentity::founder(&config.region);
            identity.save(&config.data_dir)?;
            tracing::info!("founded a new cluster as node 1");
            Ok(Start::Member(identity))
        }
    }
}

/// The identity a join answer gives, saved for later starts.
pub fn joined(config: &AtlasConfig, answer: &JoinAnswer) -> Result<ClusterIdentity, String> {
    let identity = ClusterIdentity {
        node_id: answer.node_id,
        bootstrap: answer.bootstrap.clone(),
        nodes: answer.nodes.clone(),
    };
    identity.save(&config.data_dir)?;
    Ok(identity)
}

/// The request this node sends to join (`member: false` only registers it).
pub fn join_request(config: &AtlasConfig, node_id: Option<NodeId>, member: bool) -> JoinRequest {
    let (host, port) = config.advertised_host_port();
    JoinRequest {
        node_id,
        member,
        region: config.region.clone(),
        host,
        port,
        csr: None,
    }
}

/// The id a joining node gets, and whether its record is already in the directory. A removed
/// node cannot come back under its id; a node keeps its id at the same address; a registered node that never became a member is the
/// same node again; an address or id that belongs to another node is a conflict; a new node
/// gets the next id after every member and record.
pub fn assign_id(
    view: &ClusterView,
    request: &JoinRequest,
) -> Result<(NodeId, bool), AdmissionError> {
    if let Some(id) = request.node_id.filter(|id| view.removed.contains(id)) {
        return Err(AdmissionError::Removed(format!(
            "node {id} was removed from the cluster and cannot come back under its id; to join \
             again as a new node, empty its data directory"
        )));
    }
    // A removed node's record does not hold its address: a node there now is a new one.
    let same_address = view
        .directory
        .values()
        .filter(|r| !view.removed.contains(&r.id))
        .find(|r| r.host == request.host && r.port == request.port);
    match (same_address, request.node_id) {
        (Some(existing), Some(id)) if existing.id == id => Ok((id, true)),
        (Some(existing), None) if !view.members.contains(existing.id) => Ok((existing.id, true)),
        (Some(existing), _) => Err(AdmissionError::Conflict(format!(
            "address {}:{} already belongs to node {}",
            request.host, request.port, existing.id
        ))),
        (None, Some(id)) => match view.directory.get(&id) {
            Some(other) => Err(AdmissionError::Conflict(format!(
                "node {id} is registered at {}",
                other.address()
            ))),
            None => Ok((id, false)),
        },
        (None, None) => Ok((
            view.members
                .nodes()
                .chain(view.directory.keys().copied())
                .max()
                .unwrap_or(0)
                + 1,
            false,
        )),
    }
}

fn check(request: &JoinRequest) -> Result<(), AdmissionError> {
    if request.region.trim().is_empty() || request.region.contains(char::is_whitespace) {
        return Err(AdmissionError::BadRequest(
            "region: must be a non-empty word".into(),
        ));
    }
    if request.host.is_empty() || request.host.contains(char::is_whitespace) || request.port == 0 {
        return Err(AdmissionError::BadRequest(
            "host/port: not an address".into(),
        ));
    }
    Ok(())
}

/// Admits a joining node at this member (`me`, as the joiner should record it): its id, its
/// certificate when it asks for one, its record committed to the directory, then (unless it
/// only registers) the membership change. `proven`: the node the TLS client's certificate
/// names; `bound`: certificates name nodes (see [`may_certify`]). `joins` serialises
/// admissions at this member, so an id is not handed out twice here.
pub async fn admit(
    cluster: &ClusterHandle,
    me: &NodeRecord,
    ca: Option<JoinCa<'_>>,
    (proven, bound): (Option<NodeId>, bool),
    joins: &tokio::sync::Mutex<()>,
    request: JoinRequest,
) -> Result<JoinAnswer, AdmissionError> {
    check(&request)?;
    let _guard = joins.lock().await;
    let (id, recorded) = assign_id(&cluster.view(), &request)?;
    let record = NodeRecord {
        id,
        region: request.region.clone(),
        host: request.host.clone(),
        port: request.port,
    };
    // Signed before anything is committed: a bad request changes nothing.
    let certificate = match (&request.csr, &ca) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(AdmissionError::BadRequest(
                "csr: this cluster does not use tls: internal; there is no CA to sign it".into(),
            ));
        }
        (Some(_), Some(_)) if !request.member => {
            return Err(AdmissionError::BadRequest(
                "csr: a certificate is issued with member: true only".into(),
            ));
        }
        (Some(csr), Some(ca)) => {
            let view = cluster.view();
            may_certify(&view, id, proven, bound)?;
            name_is_free(&view, id, &request.host)?;
            let signer = ca.signer.ok_or_else(|| {
                AdmissionError::NotACaHolder(format!(
                    "node {} does not hold the cluster CA key and cannot sign certificates; \
                     join through a node that does (the founder, or one given the CA files, \
                     see docs/security.md)",
                    me.id
                ))
            })?;
            let chain = signer
                .sign(csr, id, &request.host)
                .map_err(|e| AdmissionError::BadRequest(format!("csr: {e}")))?;
            Some(chain)
        }
    };
    let signs = ca.as_ref().map(|ca| ca.signer.is_some());
    let ca_cert = ca.map(|ca| ca.cert);
    if !recorded {
        cluster
            .record_node(&record)
            .await
            .map_err(|e| AdmissionError::Unavailable(format!("join not committed: {e}")))?;
    }
    if !request.member {
        tracing::info!(node = id, addr = %record.address(), "node registered; it copies a snapshot next");
        return Ok(JoinAnswer {
            signs_certificates: signs,
            ..answer(cluster, me, ca_cert, None, id)
        });
    }
    // Answered as soon as the node is a member: leaving the joint configuration needs the
    // new node's own answers, and it is still waiting for this one.
    let add = ClientOp::add_node(id, request.region.clone());
    if !change_membership(cluster, add, |view| view.members.contains(id)).await {
        return Err(AdmissionError::Unavailable(
            "the membership change did not commit in time; retry the join".into(),
        ));
    }
    tracing::info!(node = id, region = %request.region, addr = %record.address(), "node joined");
    Ok(answer(cluster, me, ca_cert, certificate, id))
}

fn answer(
    cluster: &ClusterHandle,
    me: &NodeRecord,
    ca_cert: Option<String>,
    certificate: Option<String>,
    id: NodeId,
) -> JoinAnswer {
    let mut nodes: Vec<NodeRecord> = cluster.view().directory.into_values().collect();
    if !nodes.iter().any(|n| n.id == me.id) {
        nodes.push(me.clone());
    }
    let bootstrap = cluster.bootstrap();
    JoinAnswer {
        node_id: id,
        bootstrap: bootstrap
            .nodes()
            .map(|id| BootstrapMember {
                id,
                region: bootstrap.zone_of(id).cloned().unwrap_or_default(),
            })
            .collect(),
        nodes,
        ca_cert,
        certificate,
        signs_certificates: None,
        ca_key: None,
    }
}

/// Takes `node` out of the membership (a node gone for good); returns once the removal is
/// in the configuration.
pub async fn remove(cluster: &ClusterHandle, node: NodeId) -> Result<(), AdmissionError> {
    if node == cluster.id() {
        return Err(AdmissionError::BadRequest(
            "node_id: a node cannot remove itself; ask another member".into(),
        ));
    }
    if !cluster.view().members.contains(node) {
        return Err(AdmissionError::NotFound(format!(
            "node {node} is not a member"
        )));
    }
    let remove = ClientOp::remove_node(node);
    if !change_membership(cluster, remove, |view| !view.members.contains(node)).await {
        return Err(AdmissionError::Unavailable(
            "the removal did not commit in time; retry".into(),
        ));
    }
    tracing::info!(node, "node removed from the cluster");
    Ok(())
}

/// Proposes the membership change `op` — again whenever the last proposal has finished
/// and no change is under way (a change committed while another is joint is ignored) —
/// until `done` holds for the published view. The proposal's own answer is not awaited:
/// once applied, the configuration is joint, and leaving it may need the node being added.
/// False if `done` does not hold within [`MEMBERSHIP_TIMEOUT`].
async fn change_membership(
    cluster: &ClusterHandle,
    op: ClientOp,
    done: impl Fn(&ClusterView) -> bool,
) -> bool {
    let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::test_view as view;

    fn request(node_id: Option<NodeId>, host: &str, port: u16) -> JoinRequest {
        JoinRequest {
            node_id,
            member: true,
            region: "r".into(),
            host: host.into(),
            port,
            csr: None,
        }
    }

    #[test]
    fn ids_are_kept_reused_or_new_and_addresses_are_not_taken_over() {
        let v = view(
            &[(1, "a"), (2, "b")],
            &[(1, "h1", 1), (2, "h2", 2), (5, "h5", 5)],
        );
        // A new node gets the next id after every member and record.
        assert_eq!(assign_id(&v, &request(None, "h9", 9)), Ok((6, false)));
        // A restarted member at its address keeps its id, already recorded.
        assert_eq!(assign_id(&v, &request(Some(2), "h2", 2)), Ok((2, true)));
        // Node 5 registered but never became a member: the same node again.
        assert_eq!(assign_id(&v, &request(None, "h5", 5)), Ok((5, true)));
        // A stored id not in the directory (its record was lost) is kept.
        assert_eq!(assign_id(&v, &request(Some(7), "h7", 7)), Ok((7, false)));
        // A member's address cannot be taken by a newcomer, nor by another id.
        assert!(matches!(
            assign_id(&v, &request(None, "h1", 1)),
            Err(AdmissionError::Conflict(m)) if m.contains("already belongs to node 1")
        ));
        assert!(matches!(
            assign_id(&v, &request(Some(3), "h2", 2)),
            Err(AdmissionError::Conflict(_))
        ));
        // An id registered at another address is not handed to this one.
        assert!(matches!(
            assign_id(&v, &request(Some(1), "elsewhere", 9)),
            Err(AdmissionError::Conflict(m)) if m.contains("node 1 is registered at")
        ));
    }

    #[test]
    fn a_removed_node_cannot_come_back_under_its_id() {
        let mut v = view(
            &[(1, "a"), (2, "b")],
            &[(1, "h1", 1), (2, "h2", 2), (3, "h3", 3)],
        );
        v.removed.insert(3);
        assert!(matches!(
            assign_id(&v, &request(Some(3), "h3", 3)),
            Err(AdmissionError::Removed(m)) if m.contains("node 3 was removed")
        ));
        // Emptied and joining again at the same address: a new node, with a new id.
        assert_eq!(assign_id(&v, &request(None, "h3", 3)), Ok((4, false)));
    }

    #[test]
    fn malformed_join_requests_name_the_field() {
        let mut r = request(None, "h", 1);
        r.region = " ".into();
        assert!(matches!(check(&r), Err(AdmissionError::BadRequest(m)) if m.starts_with("region")));
        let r = request(None, "h", 0);
        assert!(
            matches!(check(&r), Err(AdmissionError::BadRequest(m)) if m.starts_with("host/port"))
        );
        assert_eq!(check(&request(None, "h", 1)), Ok(()));
    }

    #[test]
    fn a_start_is_planned_from_credentials_connect_and_the_stored_identity() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AtlasConfig {
            data_dir: dir.path().to_path_buf(),
            region: "eu".into(),
            ..AtlasConfig::default()
        };
        assert_eq!(plan_start(&config), Ok(Start::Standalone));
        config.credentials = Some("a-long-enough-secret".into());
        let founder = ClusterIdentity::founder("eu");
        assert_eq!(plan_start(&config), Ok(Start::Member(founder.clone())));
        // Saved: the next start is the same member.
        assert_eq!(plan_start(&config), Ok(Start::Member(founder.clone())));
        config.connect = Some("https://seed:4444".into());
        assert_eq!(
            plan_start(&config),
            Ok(Start::Join {
                seed: "https://seed:4444".into(),
                stored: Some(founder)
            })
        );
    }
}
