//! TLS for the HTTPS listener: PEM files from the config, or `tls: internal` — a CA made on
//! first start (like Caddy's internal issuer) that signs this node's leaf certificate.
//!
//! Files under `<data_dir>/tls/`: `ca.crt`, `ca.key` (0600), `node.crt` (leaf + CA chain),
//! `node.key` (0600), `node.json` (the leaf's SANs and expiry, to decide renewal). The
//! listener reads the certificate through a resolver, so a renewed leaf is served without a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atlas::AtlasConfig;
use atlas::config::TlsConfig;
use pingora::tls::CryptoProvider;
use pingora::tls::sign::CertifiedKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;

pub use crate::pem::{der_to_pem, fingerprint, pem_to_der, single_certificate};

const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 90;
/// A leaf closer than this to its expiry is renewed.
pub const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const CA_COMMON_NAME: &str = "Atlas internal CA";
/// The organization of every client certificate (`atlas ca client-cert`): what tells it from
/// a node's certificate, which the same CA signs. `client_listen` accepts no other.
pub const CLIENT_ORGANIZATION: &str = "Atlas client";
/// A node's certificate (`tls: internal`) names its node id in its organization,
/// `Atlas node <id>`: the consensus transport checks an envelope's sender against it.
const NODE_ORGANIZATION_PREFIX: &str = "Atlas node ";

/// The organization of node `id`'s certificate.
pub fn node_organization(id: u64) -> String {
    format!("{NODE_ORGANIZATION_PREFIX}{id}")
}

/// The node id a certificate's organization names, if it is a node's.
pub fn node_of_organization(organization: &str) -> Option<u64> {
    let id = organization.strip_prefix(NODE_ORGANIZATION_PREFIX)?;
    // Digits only: `+1` or ` 1` is nobody's.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// What this node's leaf certifies: the names it answers to and, in a cluster, its node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSubject {
    pub sans: Vec<String>,
    pub node: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("atlas.tls: cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("atlas.tls: cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("atlas.tls: {path} holds no usable PEM {what}")]
    Pem { path: String, what: &'static str },
    #[error("atlas.tls: certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("atlas.tls: the key does not fit the certificate or is unsupported: {0}")]
    Key(String),
    /// The TLS files in the data directory contradict what this node is.
    #[error("atlas.tls: {0}")]
    State(String),
}

pub fn tls_dir(config: &AtlasConfig) -> PathBuf {
    config.data_dir.join("tls")
}

pub fn ca_cert_path(config: &AtlasConfig) -> PathBuf {
    tls_dir(config).join("ca.crt")
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Writes `contents` to `path` atomically and durably, `0600` like every file in the data
/// directory (keys, and certificates too).
pub(crate) fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    atlas::files::write_private(path, contents.as_bytes()).map_err(|source| TlsError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Atlas");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Valid from yesterday (clock skew) for `days` days; rcgen takes calendar dates.
fn set_validity(params: &mut CertificateParams, days: u64) {
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let ymd = |d: chrono::NaiveDate| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    params.not_before = ymd(today - chrono::Days::new(1));
    params.not_after = ymd(today + chrono::Days::new(days));
}

/// The internal CA: loaded from `dir`, or created there on first start.
pub struct InternalCa {
    pub(crate) dir: PathBuf,
    key: KeyPair,
    /// Its certificate as loaded with the key: what it appends to the leaves it issues,
    /// whatever a CA rotation writes to `ca.crt` meanwhile.
    cert: String,
}

/// Whether `key` is the key of the certificate `cert_pem`.
fn key_fits(cert_pem: &str, key: &KeyPair) -> bool {
    pem_to_der(cert_pem).is_some_and(|der| {
        x509_parser::parse_x509_certificate(&der).is_ok_and(|(_, cert)| {
            cert.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(key).as_slice()
        })
    })
}

impl InternalCa {
    pub fn load_or_create(dir: &Path) -> Result<InternalCa, TlsError> {
        atlas::files::private_dir(dir).map_err(|source| TlsError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.crt");
        if key_path.exists() && cert_path.exists() {
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(|_| TlsError::Pem {
                path: key_path.display().to_string(),
                what: "private key",
            })?;
            let cert = read(&cert_path)?;
            if !key_fits(&cert, &key) {
                return Err(TlsError::State(format!(
                    "{} is not the key of {} (an interrupted `atlas ca rotate promote`? run \
                     it again)",
                    key_path.display(),
                    cert_path.display()
                )));
            }
            return Ok(InternalCa {
                dir: dir.into(),
                key,
                cert,
            });
        }
        let key = KeyPair::generate()?;
        let mut params = ca_params()?;
        set_validity(&mut params, CA_VALIDITY_DAYS as u64);
        let cert = params.self_signed(&key)?;
        write(&key_path, &key.serialize_pem())?;
        write(&cert_path, &cert.pem())?;
        tracing::info!(path = %cert_path.display(), "created the internal CA");
        Ok(InternalCa {
            dir: dir.into(),
            key,
            cert: cert.pem(),
        })
    }

    /// The CA in `dir`, which must exist (`atlas ca client-cert` never creates one).
    pub fn load_existing(dir: &Path) -> Result<InternalCa, TlsError> {
        for file in ["ca.crt", "ca.key"] {
            read(&dir.join(file))?;
        }
        InternalCa::load_or_create(dir)
    }

    /// Issues a client certificate naming `principal` (common name; organization
    /// [`CLIENT_ORGANIZATION`]; client auth only), valid for `days`: PEM certificate, PEM key.
    pub fn issue_client(&self, principal: &str, days: u64) -> Result<(String, String), TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, principal);
        dn.push(DnType::OrganizationName, CLIENT_ORGANIZATION);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, days);
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn cert_pem(&self) -> Result<String, TlsError> {
        Ok(self.cert.clone())
    }

    /// Issues a leaf for `subject` (server and client auth), signed by this CA.
    pub fn issue_leaf(&self, subject: &LeafSubject) -> Result<(String, KeyPair, i64), TlsError> {
        let leaf_key = KeyPair::generate()?;
        let params = leaf_params(subject)?;
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = params.signed_by(&leaf_key, &issuer)?;
        Ok((
            cert.pem(),
            leaf_key,
            now_unix() + LEAF_VALIDITY_DAYS * 86400,
        ))
    }

    /// Signs another node's certificate request for `subject`: only the request's public key
    /// is used (its proof of possession checked); names, organization, usages and validity
    /// are this CA's choice, so a request cannot ask for another node's identity. Answers the
    /// leaf followed by the CA certificate.
    pub fn sign_request(
        &self,
        request: rcgen::CertificateSigningRequestParams,
        subject: &LeafSubject,
    ) -> Result<String, TlsError> {
        let signed = rcgen::CertificateSigningRequestParams {
            params: leaf_params(subject)?,
            public_key: request.public_key,
        };
        let issuer = Issuer::new(ca_params()?, &self.key);
        let cert = signed.signed_by(&issuer)?;
        Ok(format!("{}{}", cert.pem(), self.cert_pem()?))
    }
}

/// A node leaf's parameters: its names, its node id, server and client auth, 90 days.
fn leaf_params(subject: &LeafSubject) -> Result<CertificateParams, TlsError> {
    let sans = &subject.sans;
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().map_or("atlas", String::as_str),
    );
    if let Some(id) = subject.node {
        params
            .distinguished_name
            .push(DnType::OrganizationName, node_organization(id));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, LEAF_VALIDITY_DAYS as u64);
    Ok(params)
}

/// The names a node's leaf carries: `host` (the advertised one), localhost, 127.0.0.1, ::1.
pub fn sans_for(host: &str) -> Vec<String> {
    let mut sans = vec![host.to_string()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !sans.iter().any(|s| s == extra) {
            sans.push(extra.to_string());
        }
    }
    sans
}

/// SANs of this node's leaf: the advertised host, localhost, 127.0.0.1 and ::1.
pub fn leaf_sans(config: &AtlasConfig) -> Vec<String> {
    sans_for(&config.advertised_host_port().0)
}

/// This node's leaf as it should be: its advertised names and, in a cluster, its id.
pub fn leaf_subject(config: &AtlasConfig, node: Option<u64>) -> LeafSubject {
    LeafSubject {
        sans: leaf_sans(config),
        node,
    }
}

#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct LeafInfo {
    sans: Vec<String>,
    /// The node id in the organization (absent in leaves issued before nodes were named).
    #[serde(default)]
    node: Option<u64>,
    expires_unix: i64,
}

fn stored_leaf(dir: &Path) -> Option<LeafInfo> {
    std::fs::read(dir.join("node.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether `<dir>/node.crt` names `node` and has not expired, whatever names it carries.
pub fn leaf_names_node(dir: &Path, node: u64) -> bool {
    stored_leaf(dir).is_some_and(|info| info.node == Some(node) && info.expires_unix > now_unix())
        && dir.join("node.crt").exists()
        && dir.join("node.key").exists()
}

/// Whether `<dir>/node.crt` is a leaf for `subject` that is not due for renewal, issued by
/// `<dir>/ca.crt` (after a CA rotation's promote, a leaf of the old CA is renewed).
pub fn leaf_is_fresh(dir: &Path, subject: &LeafSubject, renew_before: Duration) -> bool {
    let ca = certificates(&dir.join("ca.crt"));
    stored_leaf(dir).is_some_and(|info| {
        info.sans == subject.sans
            && info.node == subject.node
            && info.expires_unix - now_unix() > renew_before.as_secs() as i64
    }) && dir.join("node.key").exists()
        && !ca.is_empty()
        && certificates(&dir.join("node.crt")).last() == ca.first()
}

/// The DER certificates of a PEM file (none when it is missing or unreadable).
pub(crate) fn certificates(path: &Path) -> Vec<Vec<u8>> {
    let pem = std::fs::read(path).unwrap_or_default();
    pingora::tls::CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// Stores this node's leaf in `dir`: its key, its chain, and what it certifies until when.
pub fn store_leaf(
    dir: &Path,
    key_pem: &str,
    chain_pem: &str,
    subject: &LeafSubject,
    expires_unix: i64,
) -> Result<(), TlsError> {
    write(&dir.join("node.key"), key_pem)?;
    write(&dir.join("node.crt"), chain_pem)?;
    let info = LeafInfo {
        sans: subject.sans.clone(),
        node: subject.node,
        expires_unix,
    };
    write(
        &dir.join("node.json"),
        &serde_json::to_string(&info).unwrap_or_default(),
    )
}

/// Makes sure `<tls>/node.crt` is a current leaf for `subject`; returns true when it was
/// (re)issued.
pub fn ensure_leaf(
    ca: &InternalCa,
    subject: &LeafSubject,
    renew_before: Duration,
) -> Result<bool, TlsError> {
    if leaf_is_fresh(&ca.dir, subject, renew_before) {
        return Ok(false);
    }
    let (leaf_pem, key, expires_unix) = ca.issue_leaf(subject)?;
    let chain = format!("{leaf_pem}{}", ca.cert_pem()?);
    store_leaf(&ca.dir, &key.serialize_pem(), &chain, subject, expires_unix)?;
    tracing::info!(sans = ?subject.sans, node = ?subject.node, "issued this node's certificate from the internal CA");
    Ok(true)
}

/// Installs the cluster's CA (from a join answer) as this node's internal CA, so its
/// certificate is issued by the CA every member verifies against. A changed CA makes the next
/// `ServerTls::prepare` issue a new leaf.
pub fn adopt_cluster_ca(
    config: &AtlasConfig,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(), TlsError> {
    KeyPair::from_pem(key_pem).map_err(|_| TlsError::Pem {
        path: "join answer".into(),
        what: "CA private key",
    })?;
    let dir = tls_dir(config);
    atlas::files::private_dir(&dir).map_err(|source| TlsError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let current = std::fs::read_to_string(dir.join("ca.crt")).unwrap_or_default();
    if current == cert_pem {
        return Ok(());
    }
    write(&dir.join("ca.key"), key_pem)?;
    write(&dir.join("ca.crt"), cert_pem)?;
    for stale in ["node.json", "node.crt", "node.key"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    tracing::info!("adopted the cluster's CA");
    Ok(())
}

/// The CA that signs every member's certificate: the internal CA, or `peer_ca` with files.
pub fn cluster_ca_path(config: &AtlasConfig) -> Option<PathBuf> {
    match (&config.tls, &config.peer_ca) {
        (TlsConfig::Internal, _) => Some(crate::ca_rotation::trusted_cas(config)),
        (_, Some(ca)) => Some(ca.clone()),
        (_, None) => None,
    }
}

/// For `peer_mtls`: the listener verifies a client certificate against the cluster CA when
/// one is presented (clients of the HTTPS endpoints need none; the consensus transport then
/// requires one, see `http.rs`).
pub fn client_verifier(
    config: &AtlasConfig,
) -> Result<Arc<dyn pingora::tls::ClientCertVerifier>, TlsError> {
    cluster_ca_verifier(config, true)
}

/// Verifies client certificates against the cluster CA; `optional`: a client may present
/// none (the HTTPS listener), else the handshake fails without one (`client_listen`).
pub fn cluster_ca_verifier(
    config: &AtlasConfig,
    optional: bool,
) -> Result<Arc<dyn pingora::tls::ClientCertVerifier>, TlsError> {
    let path = cluster_ca_path(config).ok_or(TlsError::Pem {
        path: "atlas.peer_ca".into(),
        what: "cluster CA (required with peer_mtls)",
    })?;
    read(&path)?;
    let cas = certificates(&path);
    if cas.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    verifier_of(cas, optional).map_err(|e| {
        TlsError::Key(format!(
            "client certificate verifier of {}: {e}",
            path.display()
        ))
    })
}

/// Verifies client certificates issued by one of `cas` (DER); `optional`: a client may
/// present none.
pub(crate) fn verifier_of(
    cas: Vec<Vec<u8>>,
    optional: bool,
) -> Result<Arc<dyn pingora::tls::ClientCertVerifier>, String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = pingora::tls::RootCertStore::empty();
    for der in cas {
        roots
            .add(pingora::tls::CertificateDer::from(der))
            .map_err(|e| format!("a CA certificate that does not load ({e})"))?;
    }
    let builder = pingora::tls::WebPkiClientVerifier::builder(Arc::new(roots));
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(|e| e.to_string())
}

/// For `peer_mtls`: the certificate and key this node presents to its peers.
pub fn client_cert_key(config: &AtlasConfig) -> Option<(String, String)> {
    if !config.peer_mtls() {
        return None;
    }
    Some(match &config.tls {
        TlsConfig::Internal => {
            let dir = tls_dir(config);
            (
                dir.join("node.crt").display().to_string(),
                dir.join("node.key").display().to_string(),
            )
        }
        TlsConfig::Files { cert, key } => (cert.display().to_string(), key.display().to_string()),
        TlsConfig::Acme(acme) => {
            let file = crate::acme::stored_certificate(config, acme)
                .display()
                .to_string();
            (file.clone(), file)
        }
    })
}

/// Loads a PEM chain and key into what rustls serves.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_s = cert.display().to_string();
    let key_s = key.display().to_string();
    // Read first so a missing file is reported as such.
    read(cert)?;
    read(key)?;
    pingora::tls::install_default_crypto_provider();
    let (certs, private_key) = match pingora::tls::load_certs_and_key_files(&cert_s, &key_s) {
        Ok(Some(pair)) => pair,
        _ => {
            return Err(TlsError::Pem {
                path: format!("{cert_s} / {key_s}"),
                what: "certificate and private key",
            });
        }
    };
    certified_key(certs, private_key)
}

/// A chain and its key, as rustls serves them; refused when the key is not the leaf's.
pub fn certified_key(
    certs: Vec<pingora::tls::CertificateDer<'static>>,
    private_key: pingora::tls::PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, TlsError> {
    pingora::tls::install_default_crypto_provider();
    let provider =
        CryptoProvider::get_default().ok_or_else(|| TlsError::Key("no crypto provider".into()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(private_key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(certified))
}

pub use crate::server_tls::ServerTls;
pub use crate::tls_certs::CertResolver;

/// `atlas ca show`: the CA certificate and its SHA-256 fingerprint.
pub fn describe_ca(pem: &str) -> Result<String, TlsError> {
    let der = pem_to_der(pem).ok_or(TlsError::Pem {
        path: "ca.crt".into(),
        what: "certificate",
    })?;
    Ok(format!("{pem}SHA-256 fingerprint: {}\n", fingerprint(&der)))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
