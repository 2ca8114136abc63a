//! Who may get which certificate when a node joins with `tls: internal`: the signer a CA
//! holder lends its admissions, and the two rules every certificate request passes — a
//! member's id only to that member, a live node's host name to no other node.

use super::admission::AdmissionError;
use super::runtime::ClusterView;
use crate::consensus::NodeId;

/// Signs a joining node's certificate request (the CA key stays with the signer).
pub trait LeafSigner: Sync {
    /// A leaf for `node` at `host`, from the PEM request `csr`, then the CA certificate.
    fn sign(&self, csr: &str, node: NodeId, host: &str) -> Result<String, String>;
}

/// The CA as a member admitting joiners has it, with `tls: internal`: its certificate (every
/// joiner verifies peers with it) and, on a CA holder, what signs their certificates.
pub struct JoinCa<'a> {
    pub cert: String,
    pub signer: Option<&'a dyn LeafSigner>,
}

/// Whether a certificate may be issued for `id`: when certificates name nodes (`bound`),
/// a new one for a member's id needs that member's current certificate (`proven`, what the
/// TLS client presented), so the cluster credential alone cannot take over a member's
/// identity. A node that is not a member yet (a joiner's second step) has none to show.
pub fn may_certify(
    view: &ClusterView,
    id: NodeId,
    proven: Option<NodeId>,
    bound: bool,
) -> Result<(), AdmissionError> {
    if bound && view.members.contains(id) && proven != Some(id) {
        return Err(AdmissionError::Forbidden(format!(
            "csr: node {id} is a member; a new certificate for it needs its current one \
             (present node {id}'s certificate as the TLS client certificate)"
        )));
    }
    Ok(())
}

/// Whether a certificate naming `host` may be issued to `id`: a host name (not a loopback
/// one) another live node is recorded at stays that node's, so a holder of the credential
/// cannot join under it and get a certificate a client would take for that node's. A
/// member renewing keeps its name (two members on one host renew both). Removed nodes'
/// names are free again (a replacement machine keeps the name).
pub fn name_is_free(view: &ClusterView, id: NodeId, host: &str) -> Result<(), AdmissionError> {
    if view.members.contains(id) {
        return Ok(());
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let holder = view.directory.values().find(|record| {
        record.id != id
            && !view.removed.contains(&record.id)
            && record.host.eq_ignore_ascii_case(host)
    });
    match holder {
        Some(record) if !loopback => Err(AdmissionError::Conflict(format!(
            "csr: host {host} is node {}'s; a node's certificate names its host, so each node \
             needs a name of its own",
            record.id
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::directory::NodeRecord;
    use crate::cluster::view::test_view as view;

    /// The credential admits new nodes, but a member's identity is its certificate's: a new
    /// certificate for a member's id needs that member's current certificate.
    #[test]
    fn a_members_certificate_is_reissued_only_to_that_member() {
        let v = view(
            &[(1, "a"), (2, "b")],
            &[(1, "h1", 1), (2, "h2", 2), (3, "h3", 3)],
        );
        // Node 2 renewing, proven by its own certificate.
        assert_eq!(may_certify(&v, 2, Some(2), true), Ok(()));
        // Anyone else asking for node 2's: without a certificate, or with another node's.
        for proven in [None, Some(1), Some(3)] {
            let refused = may_certify(&v, 2, proven, true);
            assert!(
                matches!(&refused, Err(AdmissionError::Forbidden(m)) if m.contains("node 2's")),
                "{proven:?}: {refused:?}"
            );
        }
        // Node 3 is registered, not a member yet: the joiner's second step has no
        // certificate to show; a new node neither.
        assert_eq!(may_certify(&v, 3, None, true), Ok(()));
        assert_eq!(may_certify(&v, 9, None, true), Ok(()));
        // Without certificates naming nodes (peer_mtls off) identities are not bound.
        assert_eq!(may_certify(&v, 2, None, false), Ok(()));
    }

    /// A node's certificate names its host: another live node's name is not handed out.
    #[test]
    fn a_certificate_never_names_another_nodes_host() {
        let mut v = view(
            &[(1, "a"), (2, "b")],
            &[
                (1, "db1.example", 1),
                (2, "DB2.example", 2),
                (3, "127.0.0.1", 3),
            ],
        );
        assert_eq!(name_is_free(&v, 2, "db2.example"), Ok(()), "its own");
        // Node 5 registered at node 2's host (another port): it gets no certificate for it,
        // while member 2 keeps renewing its own (members of earlier releases may share one).
        v.directory.insert(
            5,
            NodeRecord {
                id: 5,
                region: "r".into(),
                host: "db2.example".into(),
                port: 5,
            },
        );
        assert_eq!(name_is_free(&v, 2, "db2.example"), Ok(()));
        let joining = name_is_free(&v, 5, "db2.example");
        assert!(
            matches!(&joining, Err(AdmissionError::Conflict(m)) if m.contains("node 2's")),
            "{joining:?}"
        );
        v.directory.remove(&5);
        assert_eq!(name_is_free(&v, 4, "db4.example"), Ok(()), "a new one");
        let taken = name_is_free(&v, 4, "db2.EXAMPLE");
        assert!(
            matches!(&taken, Err(AdmissionError::Conflict(m)) if m.contains("node 2's")),
            "{taken:?}"
        );
        // Loopback names are every node's on one machine (tests, a laptop).
        for local in ["127.0.0.1", "localhost", "::1"] {
            assert_eq!(name_is_free(&v, 4, local), Ok(()), "{local}");
        }
        // A removed node's name goes to its replacement.
        v.removed.insert(2);
        assert_eq!(name_is_free(&v, 4, "db2.example"), Ok(()));
    }
}
