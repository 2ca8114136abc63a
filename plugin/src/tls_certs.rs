//! The certificates an HTTPS listener serves: a default one (the internal leaf, or `tls`'s
//! files) and the `tls_certificates`, each chosen when a client names (SNI) one of the DNS
//! names in its subjectAltName — exact names first, then wildcards (`*.example.com` covers
//! one label). Certificates read from files are loaded again when the files change; a
//! change that does not load is logged and the certificate in use stays.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use atlas::config::CertFiles;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};

use crate::tls::{TlsError, load_certified_key};

/// A certificate chosen by name.
#[derive(Debug)]
struct Named {
    /// Lower-case DNS names of its subjectAltName (`*.example.com` for a wildcard).
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

impl Named {
    fn exact(&self, sni: &str) -> bool {
        self.names.iter().any(|n| n == sni)
    }

    fn wildcard(&self, sni: &str) -> bool {
        let Some((label, rest)) = sni.split_once('.') else {
            return false;
        };
        !label.is_empty()
            && self
                .names
                .iter()
                .any(|n| n.strip_prefix("*.").is_some_and(|base| base == rest))
    }
}

/// Serves the certificate for the name a client asks for; renewal and reloads swap
/// certificates in place.
#[derive(Debug)]
pub struct CertResolver {
    default: RwLock<Arc<CertifiedKey>>,
    named: RwLock<Vec<Named>>,
}

impl CertResolver {
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertResolver {
            default: RwLock::new(key),
            named: RwLock::new(Vec::new()),
        })
    }

    /// Replaces the default certificate (for clients without SNI or a name no other one has).
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.default.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// Sets the `index`th certificate chosen by name (appended when new).
    fn set_named(&self, index: usize, key: Arc<CertifiedKey>) -> Result<(), TlsError> {
        let names = dns_names(&key)?;
        let mut named = self.named.write().unwrap_or_else(|e| e.into_inner());
        let entry = Named { names, key };
        match named.get_mut(index) {
            Some(slot) => *slot = entry,
            None => named.push(entry),
        }
        Ok(())
    }

    /// The certificate for a client that asked for `sni`.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(sni) = sni.map(str::to_ascii_lowercase) {
            let named = self.named.read().unwrap_or_else(|e| e.into_inner());
            let found = named
                .iter()
                .find(|n| n.exact(&sni))
                .or_else(|| named.iter().find(|n| n.wildcard(&sni)));
            if let Some(n) = found {
                return n.key.clone();
            }
        }
        self.default
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The DNS names in a certificate's subjectAltName, lower-case.
pub(crate) fn dns_names(key: &CertifiedKey) -> Result<Vec<String>, TlsError> {
    let not_named = || TlsError::Pem {
        path: "tls_certificates".into(),
        what: "certificate with DNS names in its subjectAltName",
    };
    let der = key.cert.first().ok_or_else(not_named)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| not_named())?;
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(name) => {
                        Some(name.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(not_named());
    }
    Ok(names)
}

/// Which certificate of the resolver a pair of files fills.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Default,
    Named(usize),
}

#[derive(Debug)]
struct Watched {
    files: CertFiles,
    slot: Slot,
    /// The files' modification times when last loaded (or tried).
    stamp: Option<(SystemTime, SystemTime)>,
}

fn stamp(files: &CertFiles) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

/// Certificates served from files, watched for changes.
#[derive(Debug, Default)]
pub struct WatchedFiles {
    entries: Mutex<Vec<Watched>>,
}

impl WatchedFiles {
    /// Loads the `named` certificates into `resolver` (a file that does not load is an
    /// error at start) and watches them, and `default`'s files when the default comes from
    /// files (already loaded by the caller).
    pub fn load(
        resolver: &CertResolver,
        default: Option<&CertFiles>,
        named: &[CertFiles],
    ) -> Result<WatchedFiles, TlsError> {
        let mut entries = Vec::new();
        if let Some(files) = default {
            entries.push(Watched {
                files: files.clone(),
                slot: Slot::Default,
                stamp: stamp(files),
            });
        }
        for (index, files) in named.iter().enumerate() {
            let before = stamp(files);
            let key = load_certified_key(&files.cert, &files.key)?;
            resolver.set_named(index, key).map_err(|_| TlsError::Pem {
                path: files.cert.display().to_string(),
                what: "certificate with DNS names in its subjectAltName",
            })?;
            entries.push(Watched {
                files: files.clone(),
                slot: Slot::Named(index),
                stamp: before,
            });
        }
        Ok(WatchedFiles {
            entries: Mutex::new(entries),
        })
    }

    /// Loads again every certificate whose files changed since they were loaded; returns
    /// how many were replaced. A change that does not load (a half-written file, a key that
    /// does not match) is logged once and the certificate in use stays.
    pub fn reload_changed(&self, resolver: &CertResolver) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut replaced = 0;
        for entry in entries.iter_mut() {
            let now = stamp(&entry.files);
            if now.is_none() || now == entry.stamp {
                continue;
            }
            entry.stamp = now;
            let loaded =
                load_certified_key(&entry.files.cert, &entry.files.key).and_then(|key| match entry
                    .slot
                {
                    Slot::Default => {
                        resolver.replace(key);
                        Ok(())
                    }
                    Slot::Named(index) => resolver.set_named(index, key),
                });
            let cert = entry.files.cert.display().to_string();
            match loaded {
                Ok(()) => {
                    replaced += 1;
                    tracing::info!(cert = %cert, "reloaded a changed TLS certificate");
                }
                Err(e) => tracing::warn!(
                    cert = %cert,
                    error = %e,
                    "a changed TLS certificate does not load; the one in use stays"
                ),
            }
        }
        replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, written as PEM files under `dir`.
    fn cert_files(dir: &Path, file: &str, names: &[&str]) -> CertFiles {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = CertFiles {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn names_of(key: &CertifiedKey) -> Vec<String> {
        dns_names(key).unwrap()
    }

    #[test]
    fn certificates_are_chosen_by_name_exact_before_wildcard() {
        let dir = tempfile::tempdir().unwrap();
        let default = cert_files(dir.path(), "default", &["default.test"]);
        let resolver = CertResolver::new(load_certified_key(&default.cert, &default.key).unwrap());
        let named = [
            cert_files(dir.path(), "wild", &["*.shop.test"]),
            cert_files(dir.path(), "exact", &["www.shop.test", "Shop.Test"]),
        ];
        WatchedFiles::load(&resolver, None, &named).unwrap();
        let served = |sni| names_of(&resolver.pick(sni));
        assert_eq!(
            served(Some("www.shop.test")),
            ["www.shop.test", "shop.test"]
        );
        assert_eq!(served(Some("SHOP.test")), ["www.shop.test", "shop.test"]);
        assert_eq!(served(Some("api.shop.test")), ["*.shop.test"]);
        // A wildcard covers one label, not two, and not the bare domain's look-alikes.
        assert_eq!(served(Some("a.b.shop.test")), ["default.test"]);
        assert_eq!(served(Some(".shop.test")), ["default.test"]);
        assert_eq!(served(Some("other.test")), ["default.test"]);
        assert_eq!(served(None), ["default.test"]);
    }

    #[test]
    fn changed_files_are_reloaded_and_a_bad_change_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let default = cert_files(dir.path(), "default", &["default.test"]);
        let resolver = CertResolver::new(load_certified_key(&default.cert, &default.key).unwrap());
        let site = cert_files(dir.path(), "site", &["site.test"]);
        let watched =
            WatchedFiles::load(&resolver, Some(&default), std::slice::from_ref(&site)).unwrap();
        assert_eq!(watched.reload_changed(&resolver), 0, "nothing changed");
        // New files for the site (a later modification time): reloaded, new names served.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let renamed = cert_files(dir.path(), "site", &["site.test", "www.site.test"]);
        assert_eq!(renamed, site);
        assert_eq!(watched.reload_changed(&resolver), 1);
        assert_eq!(
            names_of(&resolver.pick(Some("www.site.test"))),
            ["site.test", "www.site.test"]
        );
        // A broken default is refused once; the old one is still served.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&default.cert, "not a certificate").unwrap();
        assert_eq!(watched.reload_changed(&resolver), 0);
        assert_eq!(watched.reload_changed(&resolver), 0);
        assert_eq!(names_of(&resolver.pick(None)), ["default.test"]);
        // A certificate without DNS names cannot be chosen by name: an error at start.
        let unnamed = cert_files(dir.path(), "ip", &["127.0.0.1"]);
        assert!(WatchedFiles::load(&resolver, None, &[unnamed]).is_err());
        // Files that are missing, or a key that is not the certificate's, likewise.
        let missing = CertFiles {
            cert: dir.path().join("none.crt"),
            key: dir.path().join("none.key"),
        };
        assert!(WatchedFiles::load(&resolver, None, &[missing]).is_err());
        let other = cert_files(dir.path(), "other", &["other.test"]);
        let mismatched = CertFiles {
            cert: other.cert,
            key: site.key.clone(),
        };
        assert!(WatchedFiles::load(&resolver, None, &[mismatched]).is_err());
    }
}
