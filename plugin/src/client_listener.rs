//! `client_listen`: the socket protocol over TLS on TCP, for clients off this machine.
//!
//! The handshake requires a client certificate signed by the cluster CA. After it, a callback
//! reads who the certificate names (its common name, when its organization is
//! [`CLIENT_ORGANIZATION`] and it is not revoked) and attaches the verdict to the connection;
//! the socket app turns it into the session's [`Peer`]. Node certificates come from the same
//! CA but carry no such organization, so a node's key cannot act as a client.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use atlas::AtlasConfig;
use atlas::config::normalize_fingerprint;
use atlas::session::Peer;
use pingora::listeners::TlsAccept;
use pingora::listeners::tls::TlsSettings;
use pingora::protocols::Stream;
use pingora::protocols::tls::TlsRef;

use crate::tls::{CLIENT_ORGANIZATION, CertResolver, TlsError, fingerprint};

/// What the handshake established about the client: its principal, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict(pub Result<String, String>);

/// Names the principal of a client certificate (DER) that the CA already verified.
pub fn identify(der: &[u8], revoked: &HashSet<String>) -> Result<String, String> {
    let print = fingerprint(der);
    if normalize_fingerprint(&print).is_some_and(|p| revoked.contains(&p)) {
        return Err(format!(
            "the client certificate {print} is revoked (atlas.client_revoked)"
        ));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| "the client certificate cannot be read".to_string())?;
    let subject = cert.subject();
    let organizations: Vec<&str> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    if organizations != [CLIENT_ORGANIZATION] {
        return Err(format!(
            "not an Atlas client certificate (organization must be `{CLIENT_ORGANIZATION}`; \
             `atlas ca client-cert <principal>` issues one)"
        ));
    }
    let names: Vec<&str> = subject
        .iter_common_name()
        .filter_map(|n| n.as_str().ok())
        .collect();
    match names.as_slice() {
        [name] if atlas::protocol::valid_principal(name) => Ok((*name).to_string()),
        _ => Err(
            "the client certificate must name one principal as its common name (1 to 256 \
             characters, no control characters)"
                .into(),
        ),
    }
}

struct Identify {
    /// Upper-case hex SHA-256 fingerprints without separators.
    revoked: HashSet<String>,
}

#[async_trait]
impl TlsAccept for Identify {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let verdict = match tls.peer_certificate_der() {
            Some(der) => identify(der, &self.revoked),
            None => Err("a client certificate is required".into()),
        };
        Some(Arc::new(Verdict(verdict)))
    }
}

/// The TLS settings of `client_listen`: this node's certificate, a required client
/// certificate of the cluster CA, and the identifying callback.
pub fn settings(
    config: &AtlasConfig,
    resolver: Arc<CertResolver>,
) -> Result<TlsSettings, TlsError> {
    let revoked = config
        .client_revoked
        .iter()
        .filter_map(|p| normalize_fingerprint(p))
        .collect();
    let mut settings = TlsSettings::with_callbacks(Box::new(Identify { revoked }))
        .map_err(|e| TlsError::Key(e.to_string()))?;
    settings.set_cert_resolver(resolver);
    settings.set_client_cert_verifier(crate::tls::cluster_ca_verifier(config, false)?);
    Ok(settings)
}

/// Who is at the other end of `stream`: the Unix socket is [`Peer::Local`]; a TLS stream is
/// the principal its certificate named, or the reason it is refused.
pub fn peer_of(stream: &Stream, admins: &HashSet<String>) -> Result<Peer, String> {
    let Some(digest) = stream.get_ssl_digest() else {
        return Ok(Peer::Local);
    };
    let verdict = digest
        .extension
        .get::<Verdict>()
        .cloned()
        .unwrap_or_else(|| Verdict(Err("the client certificate was not checked".into())));
    verdict.0.map(|principal| Peer::Certified {
        admin: admins.contains(&principal),
        principal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::InternalCa;

    fn der_of(pem: &str) -> Vec<u8> {
        crate::tls::pem_to_der(pem).unwrap()
    }

    #[test]
    fn a_client_certificate_names_its_principal_unless_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = InternalCa::load_or_create(dir.path()).unwrap();
        let (pem, _) = ca.issue_client("john smith", 30).unwrap();
        let der = der_of(&pem);
        assert_eq!(identify(&der, &HashSet::new()), Ok("john smith".into()));
        let revoked: HashSet<String> = [normalize_fingerprint(&fingerprint(&der)).unwrap()].into();
        let refused = identify(&der, &revoked).unwrap_err();
        assert!(refused.contains("revoked"), "{refused}");
        // Another client's certificate is not affected by this revocation.
        let (other, _) = ca.issue_client("alice", 30).unwrap();
        assert_eq!(identify(&der_of(&other), &revoked), Ok("alice".into()));
    }

    #[test]
    fn a_node_certificate_of_the_same_ca_is_no_client() {
        let dir = tempfile::tempdir().unwrap();
        let ca = InternalCa::load_or_create(dir.path()).unwrap();
        for node in [None, Some(3)] {
            let subject = crate::tls::LeafSubject {
                sans: vec!["127.0.0.1".into()],
                node,
            };
            let (leaf, _, _) = ca.issue_leaf(&subject).unwrap();
            let refused = identify(&der_of(&leaf), &HashSet::new()).unwrap_err();
            assert!(
                refused.contains("not an Atlas client certificate"),
                "{refused}"
            );
        }
        assert!(identify(b"garbage", &HashSet::new()).is_err());
    }
}
