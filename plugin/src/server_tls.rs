//! What an HTTPS listener serves and how it stays current: the certificate `tls` names
//! (files, ACME, or the internal CA's leaf — issued here on a CA holder, signed by a holder
//! elsewhere on other members) and the `tls_certificates` files, reloaded when they change.

use std::sync::Arc;

use atlas::AtlasConfig;
use atlas::config::TlsConfig;

use crate::tls::{
    InternalCa, LEAF_RENEW_BEFORE, LeafSubject, TlsError, ensure_leaf, leaf_subject,
    load_certified_key, tls_dir,
};
use crate::tls_certs::{CertResolver, WatchedFiles};

/// What the listener serves, and how to keep it current.
pub struct ServerTls {
    pub resolver: Arc<CertResolver>,
    /// Internal CA mode on a CA holder: renew the leaf in the background.
    pub internal: Option<(InternalCa, LeafSubject)>,
    /// Internal CA mode on a member without the CA key: its leaf is renewed by asking a
    /// holder through its seed (`crate::cluster::renew_certificate`).
    pub signed_by_holder: Option<(Box<AtlasConfig>, u64)>,
    /// Certificates from files (`tls: {cert, key}`, `tls_certificates`), reloaded when changed.
    files: WatchedFiles,
    /// `tls: {acme}`: the default certificate is obtained and renewed from the ACME CA.
    pub acme: Option<Arc<crate::acme::AcmeCertificates>>,
}

impl ServerTls {
    /// Prepares the listener's certificate from the config (creating the CA when internal);
    /// `node`: this node's id in a cluster, which its internal leaf names.
    pub fn prepare(config: &AtlasConfig, node: Option<u64>) -> Result<ServerTls, TlsError> {
        let tls = match &config.tls {
            TlsConfig::Files { cert, key } => ServerTls {
                resolver: CertResolver::new(load_certified_key(cert, key)?),
                internal: None,
                signed_by_holder: None,
                files: WatchedFiles::default(),
                acme: None,
            },
            TlsConfig::Acme(acme) => {
                let acme = crate::acme::AcmeCertificates::prepare(config, acme)?;
                ServerTls {
                    resolver: acme.resolver(),
                    acme: Some(Arc::new(acme)),
                    internal: None,
                    signed_by_holder: None,
                    files: WatchedFiles::default(),
                }
            }
            TlsConfig::Internal => {
                let dir = tls_dir(config);
                if let Some(id) = node.filter(|_| crate::node_cert::signed_by_a_holder(config)) {
                    // A member without the CA key serves the leaf a holder signed for it
                    // (at its join); it never makes a CA of its own.
                    let key = load_certified_key(&dir.join("node.crt"), &dir.join("node.key"))?;
                    ServerTls {
                        resolver: CertResolver::new(key),
                        internal: None,
                        signed_by_holder: Some((Box::new(config.clone()), id)),
                        files: WatchedFiles::default(),
                        acme: None,
                    }
                } else if crate::node_cert::signed_by_a_holder(config) {
                    // Making a CA here would overwrite the cluster's certificate.
                    return Err(TlsError::State(format!(
                        "{} holds a cluster CA certificate without its key, but this node \
                         is no cluster member: start it with its cluster configuration, or \
                         move the directory away to start a standalone node",
                        dir.display()
                    )));
                } else {
                    ServerTls::internal_ca(config, node)?
                }
            }
        };
        let default_files = match &config.tls {
            TlsConfig::Files { cert, key } => Some(atlas::config::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            TlsConfig::Internal | TlsConfig::Acme(_) => None,
        };
        let files = WatchedFiles::load(
            &tls.resolver,
            default_files.as_ref(),
            &config.tls_certificates,
        )?;
        Ok(ServerTls { files, ..tls })
    }

    /// `tls: internal` on a CA holder (a standalone node, a founder, a member given the CA
    /// files): the CA, made on first start, issues this node's leaf.
    fn internal_ca(config: &AtlasConfig, node: Option<u64>) -> Result<ServerTls, TlsError> {
        let dir = tls_dir(config);
        let ca = InternalCa::load_or_create(&dir)?;
        let subject = leaf_subject(config, node);
        ensure_leaf(&ca, &subject, LEAF_RENEW_BEFORE)?;
        let key = load_certified_key(&dir.join("node.crt"), &dir.join("node.key"))?;
        Ok(ServerTls {
            resolver: CertResolver::new(key),
            internal: Some((ca, subject)),
            signed_by_holder: None,
            files: WatchedFiles::default(),
            acme: None,
        })
    }

    /// Loads again the certificates whose files changed; returns how many.
    pub fn reload_changed_files(&self) -> usize {
        self.files.reload_changed(&self.resolver)
    }

    /// Renews the internal leaf when it nears expiry; a no-op for configured files.
    pub fn renew_if_due(&self) -> Result<bool, TlsError> {
        let Some((ca, subject)) = &self.internal else {
            return Ok(false);
        };
        if !ensure_leaf(ca, subject, LEAF_RENEW_BEFORE)? {
            return Ok(false);
        }
        let key = load_certified_key(&ca.dir.join("node.crt"), &ca.dir.join("node.key"))?;
        self.resolver.replace(key);
        Ok(true)
    }

    /// Serves the leaf stored in the data directory again (after a holder signed a new one).
    pub fn reload_leaf(&self, config: &AtlasConfig) -> Result<(), TlsError> {
        let dir = tls_dir(config);
        let key = load_certified_key(&dir.join("node.crt"), &dir.join("node.key"))?;
        self.resolver.replace(key);
        Ok(())
    }
}
