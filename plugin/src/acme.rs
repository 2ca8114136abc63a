//! `tls: {acme: ...}`: the listener's certificate comes from an ACME (RFC 8555) CA.
//!
//! At start the stored certificate (`<data_dir>/tls/acme/<hash of the directory URL>.pem`,
//! key and chain, 0600) is served while it has not expired; until one is obtained a
//! self-signed placeholder is. A background task orders a certificate when there is none and renews it
//! once a third of its lifetime is left, answering the CA's HTTP-01 challenges on
//! `http_listen`; the new certificate is served without a restart. A refusal is logged with
//! the CA's problem document and retried with a doubling backoff (10 s to 1 h).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use atlas::AtlasConfig;
use atlas::config::AcmeConfig;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use pingora::server::ShutdownWatch;
use pingora::tls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::metrics::metrics;
use crate::tls::{CertResolver, TlsError, certified_key, load_certified_key, now_unix, tls_dir};

/// The first retry after a failed order; each failure doubles it up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// The longest the task sleeps before looking at the certificate again.
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// How long one order may take, challenges and issuance included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the CA may take to validate the challenges, and then to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));
/// The most challenge tokens held at once (one per name of an order in flight).
const MAX_TOKENS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the ACME CA at {directory}: {source}")]
    Ca {
        directory: String,
        source: instant_acme::Error,
    },
    #[error("the order for {domains} ended {status}")]
    Order { domains: String, status: String },
    #[error("the CA offers no http-01 challenge for {0}")]
    NoHttp01(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the account file {path}: {message}")]
    Account { path: String, message: String },
    #[error("no certificate within {0}s")]
    Timeout(u64),
}

impl AcmeError {
    /// Whether the CA says the stored account does not exist (any more).
    fn account_is_gone(&self) -> bool {
        matches!(self, AcmeError::Ca { source: instant_acme::Error::Api(problem), .. }
            if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
    }
}

/// The key authorizations the CA fetches at `/.well-known/acme-challenge/<token>`, while an
/// order is in flight.
#[derive(Debug, Default)]
pub struct ChallengeTokens {
    tokens: RwLock<HashMap<String, String>>,
}

impl ChallengeTokens {
    /// The key authorization for `token`, when an order in flight issued it.
    pub fn answer(&self, token: &str) -> Option<String> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens.get(token).cloned()
    }

    fn set(&self, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if tokens.len() < MAX_TOKENS {
            tokens.insert(token.to_string(), key_authorization.to_string());
        }
    }

    fn clear(&self) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Where ACME state lives: `<data_dir>/tls/acme/`.
pub fn acme_dir(config: &AtlasConfig) -> PathBuf {
    tls_dir(config).join("acme")
}

/// A certificate's validity, Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    fn of(key: &CertifiedKey) -> Option<Validity> {
        let der = key.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(Validity {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// When it is renewed: once a third of its lifetime is left (30 days of 90).
    pub fn renew_at(&self) -> i64 {
        let lifetime = (self.not_after - self.not_before).max(0);
        self.not_after - lifetime / 3
    }
}

/// Obtains and renews the listener's certificate from the ACME CA.
pub struct AcmeCertificates {
    acme: AcmeConfig,
    /// The stored certificate and key (see [`certificate_file`]).
    file: PathBuf,
    resolver: Arc<CertResolver>,
    pub tokens: Arc<ChallengeTokens>,
    /// The served certificate's validity; `None` while the placeholder is served.
    served: Mutex<Option<Served>>,
}

/// What is known of the certificate served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Served {
    validity: Validity,
    /// Whether it names every configured domain (a name added to the config: ordered at
    /// once, the stored certificate served for the others meanwhile).
    complete: bool,
}

impl AcmeCertificates {
    /// The certificate to serve at start — the stored one for this directory while it has
    /// not expired (due at once when it lacks a configured name), else a self-signed
    /// placeholder — and the task's state.
    pub fn prepare(config: &AtlasConfig, acme: &AcmeConfig) -> Result<AcmeCertificates, TlsError> {
        let dir = acme_dir(config);
        atlas::files::private_dir(&dir).map_err(|source| TlsError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let file = certificate_file(&dir, &acme.directory);
        let stored = load_certified_key(&file, &file).ok().and_then(|key| {
            let validity = Validity::of(&key).filter(|v| v.not_after > now_unix())?;
            let complete = covers(&key, &acme.domains);
            Some((key, Served { validity, complete }))
        });
        let (key, served) = match stored {
            Some((key, served)) => (key, Some(served)),
            None => (placeholder(&acme.domains)?, None),
        };
        if let Some(s) = served {
            metrics().acme_certificate_expiry.set(s.validity.not_after);
        }
        Ok(AcmeCertificates {
            acme: acme.clone(),
            file,
            resolver: CertResolver::new(key),
            tokens: Arc::default(),
            served: Mutex::new(served),
        })
    }

    /// What the listeners ask for the certificate; an order swaps the new one in.
    pub fn resolver(&self) -> Arc<CertResolver> {
        self.resolver.clone()
    }

    fn served(&self) -> Option<Served> {
        *self.served.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the served certificate is due for renewal (now, for the placeholder or one that
    /// lacks a configured name).
    fn renew_at(&self) -> i64 {
        match self.served() {
            Some(Served {
                validity,
                complete: true,
            }) => validity.renew_at(),
            _ => 0,
        }
    }

    /// Keeps the certificate current until shutdown (an order in flight is dropped then).
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = FIRST_BACKOFF;
        let mut failed = false;
        // Never two orders closer than this, whatever the certificate says (a clock ahead
        // of the CA's, a short-lived profile): CAs limit duplicate certificates.
        let mut earliest = tokio::time::Instant::now();
        loop {
            let due = Duration::from_secs((self.renew_at() - now_unix()).max(0) as u64);
            let wait = if failed { backoff } else { due.min(MAX_SLEEP) };
            let at = (tokio::time::Instant::now() + wait).max(earliest);
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(at) => {}
            }
            if now_unix() < self.renew_at() {
                continue;
            }
            earliest = tokio::time::Instant::now() + FIRST_BACKOFF;
            let result = tokio::select! {
                _ = shutdown.changed() => return,
                result = tokio::time::timeout(ORDER_TIMEOUT, self.obtain()) => match result {
                    Ok(result) => result,
                    Err(_) => Err(AcmeError::Timeout(ORDER_TIMEOUT.as_secs())),
                },
            };
            self.tokens.clear();
            match result {
                Ok(validity) => {
                    metrics().acme_orders.with_label_values(&["ok"]).inc();
                    tracing::info!(
                        domains = %self.acme.domains.join(","),
                        not_after = validity.not_after,
                        "obtained a certificate from the ACME CA"
                    );
                    failed = false;
                    backoff = FIRST_BACKOFF;
                }
                Err(error) => {
                    metrics().acme_orders.with_label_values(&["error"]).inc();
                    if failed {
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    failed = true;
                    if error.account_is_gone() {
                        // The CA no longer knows the stored account: make a new one next.
                        let _ = std::fs::remove_file(self.account_path());
                    }
                    tracing::error!(
                        domains = %self.acme.domains.join(","),
                        %error,
                        retry_in_s = backoff.as_secs(),
                        "ACME certificate order failed; the certificate in use stays"
                    );
                }
            }
        }
    }

    /// One order: account, HTTP-01 challenges, CSR, certificate; stored, then served.
    async fn obtain(&self) -> Result<Validity, AcmeError> {
        let ca = |source| AcmeError::Ca {
            directory: self.acme.directory.clone(),
            source,
        };
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .acme
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(ca)?;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(ca)?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(AcmeError::Order {
                            domains: authz.identifier().to_string(),
                            status: format!("with an authorization {other:?}"),
                        });
                    }
                }
                let name = authz.identifier().to_string();
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or(AcmeError::NoHttp01(name))?;
                self.tokens
                    .set(&challenge.token, challenge.key_authorization().as_str());
                challenge.set_ready().await.map_err(ca)?;
            }
        }
        let status = order.poll_ready(&POLL).await.map_err(ca)?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order {
                domains: self.acme.domains.join(","),
                status: format!("{status:?} (the CA could not validate the challenges)"),
            });
        }
        let key = rcgen::KeyPair::generate().map_err(TlsError::from)?;
        let mut params =
            rcgen::CertificateParams::new(self.acme.domains.clone()).map_err(TlsError::from)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(TlsError::from)?;
        order.finalize_csr(csr.der()).await.map_err(ca)?;
        let chain = order.poll_certificate(&POLL).await.map_err(ca)?;
        self.install(&chain, &key.serialize_pem())
    }

    /// Stores the new certificate (its key and chain in one file, written atomically) and
    /// serves it.
    fn install(&self, chain: &str, key: &str) -> Result<Validity, AcmeError> {
        crate::tls::write(&self.file, &format!("{key}{chain}"))?;
        let certified = load_certified_key(&self.file, &self.file)?;
        let validity = Validity::of(&certified).ok_or(TlsError::Pem {
            path: self.file.display().to_string(),
            what: "certificate with a validity",
        })?;
        self.resolver.replace(certified);
        *self.served.lock().unwrap_or_else(|e| e.into_inner()) = Some(Served {
            validity,
            complete: true,
        });
        metrics().acme_certificate_expiry.set(validity.not_after);
        Ok(validity)
    }

    /// The account with this CA: the stored one, or a new one (agreeing to the CA's terms
    /// of service, as configuring it means to), stored 0600 for the next order.
    async fn account(&self) -> Result<Account, AcmeError> {
        let ca = |source| AcmeError::Ca {
            directory: self.acme.directory.clone(),
            source,
        };
        let builder = || match &self.acme.directory_ca {
            Some(pem) => Account::builder_with_root(pem),
            None => Account::builder(),
        };
        let path = self.account_path();
        let unreadable = |message: String| AcmeError::Account {
            path: path.display().to_string(),
            message,
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            let credentials: AccountCredentials =
                serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
            return builder()
                .map_err(ca)?
                .from_credentials(credentials)
                .await
                .map_err(ca);
        }
        let contact = self.acme.email.as_ref().map(|e| format!("mailto:{e}"));
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()
            .map_err(ca)?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.acme.directory.clone(),
                None,
            )
            .await
            .map_err(ca)?;
        let json = serde_json::to_string(&credentials).map_err(|e| unreadable(e.to_string()))?;
        crate::tls::write(&path, &json)?;
        Ok(account)
    }

    /// One account per directory URL (a staging and a production CA each have their own).
    fn account_path(&self) -> PathBuf {
        self.file.with_file_name(format!(
            "account-{}.json",
            directory_hash(&self.acme.directory)
        ))
    }
}

fn directory_hash(directory: &str) -> String {
    hex::encode(Sha256::digest(directory.as_bytes()))[..16].to_string()
}

/// The certificate and its key, `<dir>/<hash of the directory URL>.pem`: one per CA, so a
/// switch from a staging CA to a production one orders anew.
fn certificate_file(dir: &Path, directory: &str) -> PathBuf {
    dir.join(format!("{}.pem", directory_hash(directory)))
}

/// Where this node's ACME certificate and key are stored (one PEM file holding both).
pub fn stored_certificate(config: &AtlasConfig, acme: &AcmeConfig) -> PathBuf {
    certificate_file(&acme_dir(config), &acme.directory)
}

/// Whether `key`'s certificate names every one of `domains`.
fn covers(key: &CertifiedKey, domains: &[String]) -> bool {
    crate::tls_certs::dns_names(key).is_ok_and(|names| {
        domains
            .iter()
            .all(|d| names.contains(&d.to_ascii_lowercase()))
    })
}

/// A self-signed certificate for `domains`, served until the CA's arrives (clients see a
/// certificate they do not trust rather than a refused connection).
fn placeholder(domains: &[String]) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(domains.to_vec())?.self_signed(&key)?;
    let private = pingora::tls::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    certified_key(vec![cert.der().clone()], private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_when_a_third_of_the_lifetime_is_left() {
        let ninety_days = Validity {
            not_before: 0,
            not_after: 90 * 86400,
        };
        assert_eq!(ninety_days.renew_at(), 60 * 86400);
        let expired_backwards = Validity {
            not_before: 100,
            not_after: 50,
        };
        assert_eq!(expired_backwards.renew_at(), 50);
    }

    #[test]
    fn tokens_are_answered_while_held_and_bounded() {
        let tokens = ChallengeTokens::default();
        assert_eq!(tokens.answer("t"), None);
        tokens.set("t", "t.thumb");
        assert_eq!(tokens.answer("t").as_deref(), Some("t.thumb"));
        for i in 0..(MAX_TOKENS * 2) {
            tokens.set(&format!("x{i}"), "a");
        }
        assert_eq!(tokens.tokens.read().unwrap().len(), MAX_TOKENS);
        tokens.clear();
        assert_eq!(tokens.answer("t"), None);
    }

    #[test]
    fn a_stored_certificate_is_served_until_it_expires_and_ordered_again_when_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let config = AtlasConfig {
            data_dir: dir.path().to_path_buf(),
            ..AtlasConfig::default()
        };
        let acme = |domains: &[&str]| AcmeConfig {
            directory: "https://ca.test/dir".into(),
            directory_ca: None,
            email: None,
            domains: domains.iter().map(|d| d.to_string()).collect(),
            challenge: Default::default(),
        };
        // Nothing stored: a placeholder for the names, due at once.
        let placeholder = AcmeCertificates::prepare(&config, &acme(&["a.test"])).unwrap();
        assert_eq!(placeholder.served(), None);
        assert_eq!(placeholder.renew_at(), 0);
        assert!(covers(
            &placeholder.resolver().pick(None),
            &["a.test".into()]
        ));
        // A stored certificate for a.test and b.test (key and chain in one file).
        let stored = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into(), "b.test".into()])
            .unwrap()
            .self_signed(&stored)
            .unwrap();
        let file = stored_certificate(&config, &acme(&["a.test"]));
        assert_eq!(file.parent(), Some(acme_dir(&config).as_path()));
        std::fs::write(&file, format!("{}{}", stored.serialize_pem(), cert.pem())).unwrap();
        let certificates = AcmeCertificates::prepare(&config, &acme(&["b.test"])).unwrap();
        assert!(
            certificates.served().is_some_and(|s| s.complete),
            "covers b.test"
        );
        assert!(certificates.renew_at() > now_unix());
        assert_eq!(certificates.account_path().parent(), file.parent());
        // A name added to the config: still served, but ordered again at once.
        let incomplete = AcmeCertificates::prepare(&config, &acme(&["a.test", "c.test"])).unwrap();
        let served = incomplete.resolver().pick(None);
        assert!(
            covers(&served, &["b.test".into()]),
            "the stored one is served"
        );
        assert!(incomplete.served().is_some_and(|s| !s.complete));
        assert_eq!(incomplete.renew_at(), 0);
        // Another CA's directory: its own file, nothing stored yet.
        let mut other_ca = acme(&["a.test"]);
        other_ca.directory = "https://other-ca.test/dir".into();
        assert_ne!(stored_certificate(&config, &other_ca), file);
        let other_directory = AcmeCertificates::prepare(&config, &other_ca).unwrap();
        assert_eq!(other_directory.served(), None);
        // A key that is not the certificate's: ordered again.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&file, format!("{}{}", other.serialize_pem(), cert.pem())).unwrap();
        let mismatched = AcmeCertificates::prepare(&config, &acme(&["a.test"])).unwrap();
        assert_eq!(mismatched.served(), None);
    }
}
