//! A node's certificate when it does not hold the cluster CA key (`tls: internal`: every
//! node but the founder, unless an operator gives it the CA files). The node makes its key
//! here, sends a certificate request with its join, and stores the leaf a CA holder signed;
//! the key never leaves the node. On a holder, [`HolderSigner`] signs those requests.

use atlas::AtlasConfig;
use atlas::cluster::certify::LeafSigner;
use atlas::config::TlsConfig;
use atlas::consensus::NodeId;
use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::tls::{self, InternalCa, LEAF_RENEW_BEFORE, LeafSubject, TlsError};

/// Whether this node holds the cluster CA key: it then issues its own leaf and signs the
/// certificates of the nodes it admits.
pub fn holds_ca_key(config: &AtlasConfig) -> bool {
    tls::tls_dir(config).join("ca.key").exists()
}

/// Whether this node's leaf is signed by a holder of the CA key elsewhere: it has the
/// cluster CA's certificate (stored at its join) but not its key. A node with neither is a
/// founder or a standalone node still to make its CA.
pub fn signed_by_a_holder(config: &AtlasConfig) -> bool {
    let dir = tls::tls_dir(config);
    dir.join("ca.crt").exists() && !dir.join("ca.key").exists()
}

/// This node's stored leaf and key, when they name `node` and have not expired: what it
/// presents to prove who it is when it asks for a new one.
pub fn current_leaf(config: &AtlasConfig, node: NodeId) -> Option<(String, String)> {
    let dir = tls::tls_dir(config);
    tls::leaf_names_node(&dir, node).then(|| {
        (
            dir.join("node.crt").display().to_string(),
            dir.join("node.key").display().to_string(),
        )
    })
}

/// A new key of this node's and the request for its leaf.
pub struct LeafRequest {
    key: KeyPair,
    pub csr: String,
}

impl LeafRequest {
    /// The request this node sends with its join, if it needs one: with `tls: internal`, a
    /// node not yet a member (`node` unknown) always does; a member that holds no CA key
    /// does when its leaf is missing, due for renewal, for other names, or not issued by
    /// its `ca.crt` (after a CA rotation's promote).
    pub fn wanted(
        config: &AtlasConfig,
        node: Option<NodeId>,
    ) -> Result<Option<LeafRequest>, TlsError> {
        if !matches!(config.tls, TlsConfig::Internal) {
            return Ok(None);
        }
        if let Some(id) = node {
            let dir = tls::tls_dir(config);
            if holds_ca_key(config)
                || tls::leaf_is_fresh(
                    &dir,
                    &tls::leaf_subject(config, Some(id)),
                    LEAF_RENEW_BEFORE,
                )
            {
                return Ok(None);
            }
        }
        let key = KeyPair::generate()?;
        // The names asked for are informational: the signer chooses them.
        let csr = CertificateParams::new(tls::leaf_sans(config))?
            .serialize_request(&key)?
            .pem()?;
        Ok(Some(LeafRequest { key, csr }))
    }

    /// Stores the leaf a holder signed for this request, once checked: it is for this key,
    /// names `node`, and comes with `ca_cert`, which becomes the CA this node verifies
    /// peers with (a CA key of another CA, say of the standalone node this was, goes).
    pub fn store(
        self,
        config: &AtlasConfig,
        node: NodeId,
        ca_cert: &str,
        chain: &str,
    ) -> Result<(), TlsError> {
        let bad = |what: &'static str| TlsError::Pem {
            path: "the join answer's certificate".into(),
            what,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("certificate chain"))?;
        let ca_der = tls::pem_to_der(ca_cert).ok_or(bad("CA certificate"))?;
        if certs.len() != 2 || certs[1].as_ref() != ca_der.as_slice() {
            return Err(bad("leaf followed by the cluster CA"));
        }
        signed_by(&certs[0], &ca_der).map_err(|_| bad("leaf signed by the cluster CA"))?;
        let (_, leaf) =
            x509_parser::parse_x509_certificate(&certs[0]).map_err(|_| bad("leaf certificate"))?;
        let organization = leaf
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .and_then(tls::node_of_organization);
        if organization != Some(node) {
            return Err(bad("leaf naming this node"));
        }
        let expires = leaf.validity().not_after.timestamp();
        let private = pingora::tls::PrivateKeyDer::Pkcs8(self.key.serialize_der().into());
        tls::certified_key(certs.clone(), private)?;
        let dir = tls::tls_dir(config);
        atlas::files::private_dir(&dir).map_err(|source| TlsError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let current = std::fs::read_to_string(dir.join("ca.crt")).unwrap_or_default();
        if tls::pem_to_der(&current).as_deref() != Some(ca_der.as_slice()) {
            let promoted =
                crate::ca_rotation::promote_to(config, &ca_der).map_err(TlsError::State)?;
            if !promoted && crate::ca_rotation::under_way(config) {
                return Err(TlsError::State(
                    "the seed issues from another CA than this node's, and a CA rotation is \
                     under way here: promote and restart the seed's CA holder before this \
                     node (see docs/security.md)"
                        .into(),
                ));
            }
            let _ = std::fs::remove_file(dir.join("ca.key"));
            tls::write(&dir.join("ca.crt"), ca_cert)?;
        }
        let subject = tls::leaf_subject(config, Some(node));
        tls::store_leaf(&dir, &self.key.serialize_pem(), chain, &subject, expires)?;
        tracing::info!(
            node,
            "stored this node's certificate, signed by a CA holder"
        );
        Ok(())
    }
}

/// Whether `leaf` is a current client certificate issued by the CA `ca_der`, as a peer
/// verifying this node's mTLS would check it.
pub(crate) fn signed_by(leaf: &CertificateDer<'static>, ca_der: &[u8]) -> Result<(), String> {
    tls::verifier_of(vec![ca_der.to_vec()], false)?
        .verify_client_cert(leaf, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// What signs joiners' requests on a node that holds the CA key.
pub struct HolderSigner(InternalCa);

impl HolderSigner {
    /// The signer of the CA in `dir`, if this node holds its key.
    pub fn load(dir: &std::path::Path) -> Option<HolderSigner> {
        if !dir.join("ca.key").exists() {
            return None;
        }
        match InternalCa::load_existing(dir) {
            Ok(ca) => Some(HolderSigner(ca)),
            Err(e) => {
                tracing::error!(error = %e, "the CA key is unreadable; joiners' certificates cannot be signed");
                None
            }
        }
    }
}

impl LeafSigner for HolderSigner {
    fn sign(&self, csr: &str, node: NodeId, host: &str) -> Result<String, String> {
        let request = CertificateSigningRequestParams::from_pem(csr)
            .map_err(|e| format!("not a PEM certificate request with a valid signature ({e})"))?;
        let subject = LeafSubject {
            sans: tls::sans_for(host),
            node: Some(node),
        };
        self.0
            .sign_request(request, &subject)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use x509_parser::extensions::GeneralName;

    fn joiner(dir: &Path) -> AtlasConfig {
        AtlasConfig {
            data_dir: dir.to_path_buf(),
            advertise: Some("b.example:4444".into()),
            tls: TlsConfig::Internal,
            ..AtlasConfig::default()
        }
    }

    fn holder(dir: &Path) -> (HolderSigner, String) {
        let ca = InternalCa::load_or_create(dir).unwrap();
        let pem = ca.cert_pem().unwrap();
        (HolderSigner::load(dir).unwrap(), pem)
    }

    /// The leaf's organization, DNS names and public key (SubjectPublicKeyInfo, DER).
    fn leaf_of(chain: &str) -> (Vec<String>, Vec<String>, Vec<u8>) {
        let der = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
        let organizations = leaf
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        let mut names: Vec<String> = leaf
            .subject()
            .iter_common_name()
            .map(|cn| cn.as_str().unwrap().to_string())
            .collect();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
        (organizations, names, leaf.public_key().raw.to_vec())
    }

    #[test]
    fn a_holder_signs_the_requests_key_for_the_subject_it_chooses() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _) = holder(dir.path());
        // A request asking for node 1's identity and a name of its own choosing.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Atlas node 1");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "evil.example");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let chain = signer.sign(&csr, 2, "b.example").unwrap();
        let (organizations, names, public_key) = leaf_of(&chain);
        assert_eq!(organizations, vec!["Atlas node 2".to_string()]);
        assert!(!names.iter().any(|n| n.contains("evil")), "{names:?}");
        assert!(names.contains(&"b.example".to_string()), "{names:?}");
        assert_eq!(
            public_key,
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );

        // Not a request, or one whose signature does not match its key: refused.
        assert!(signer.sign("not a request", 2, "b.example").is_err());
        let mut lines: Vec<String> = csr.lines().map(str::to_string).collect();
        let last_body = lines.len() - 2;
        let flipped: String = lines[last_body]
            .chars()
            .enumerate()
            .map(|(i, c)| match (i, c) {
                (0, 'A') => 'B',
                (0, _) => 'A',
                _ => c,
            })
            .collect();
        lines[last_body] = flipped;
        assert!(signer.sign(&lines.join("\n"), 2, "b.example").is_err());
    }

    #[test]
    fn a_joiner_stores_only_its_own_leaf_from_the_cluster_ca() {
        let holder_dir = tempfile::tempdir().unwrap();
        let (signer, ca_pem) = holder(holder_dir.path());
        let stranger_dir = tempfile::tempdir().unwrap();
        let (stranger, _) = holder(stranger_dir.path());
        let dir = tempfile::tempdir().unwrap();
        let config = joiner(dir.path());
        // The joiner was a standalone node: it has a CA of its own, which must go.
        InternalCa::load_or_create(&tls::tls_dir(&config)).unwrap();
        let request = || LeafRequest::wanted(&config, None).unwrap().unwrap();

        let mine = request();
        let chain = signer.sign(&mine.csr, 2, "b.example").unwrap();
        // For another node, another key, or signed by another CA: refused, nothing stored.
        assert!(request().store(&config, 2, &ca_pem, &chain).is_err());
        assert!(
            LeafRequest::wanted(&config, None)
                .unwrap()
                .unwrap()
                .store(&config, 3, &ca_pem, &chain)
                .is_err()
        );
        let forged = request();
        let forged_chain = stranger.sign(&forged.csr, 2, "b.example").unwrap();
        let leaf_only = forged_chain.split_inclusive("-----END CERTIFICATE-----\n");
        let forged_chain = format!("{}{ca_pem}", leaf_only.take(1).collect::<String>());
        assert!(forged.store(&config, 2, &ca_pem, &forged_chain).is_err());
        assert!(current_leaf(&config, 2).is_none());

        mine.store(&config, 2, &ca_pem, &chain).unwrap();
        let tls_dir = tls::tls_dir(&config);
        assert!(!tls_dir.join("ca.key").exists(), "the old CA key is gone");
        assert_eq!(
            std::fs::read_to_string(tls_dir.join("ca.crt")).unwrap(),
            ca_pem
        );
        assert!(current_leaf(&config, 2).is_some());
        assert!(current_leaf(&config, 3).is_none());
        // A member with a fresh leaf for its names asks for none; a holder never does.
        assert!(LeafRequest::wanted(&config, Some(2)).unwrap().is_none());
        assert!(!holds_ca_key(&config));
        assert!(signed_by_a_holder(&config));
        let holder_data = tempfile::tempdir().unwrap();
        let holder_config = joiner(holder_data.path());
        InternalCa::load_or_create(&tls::tls_dir(&holder_config)).unwrap();
        assert!(holds_ca_key(&holder_config));
        assert!(!signed_by_a_holder(&holder_config));
        assert!(
            LeafRequest::wanted(&holder_config, Some(1))
                .unwrap()
                .is_none()
        );
    }
}
