//! The addresses of a route's upstreams. IP addresses are taken as they are; names are
//! resolved at start (a name that does not resolve stops the start) and again every
//! [`RESOLVE_INTERVAL`] by the route's background service, so an upstream that moves is
//! followed without a restart. A name that fails to resolve later keeps its last addresses
//! (a DNS outage does not empty a route).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::lb::discovery::ServiceDiscovery;

/// How often upstream names are resolved again.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

type Resolved = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
/// Resolves `host:port` to addresses.
pub type Resolver = Arc<dyn Fn(String) -> Resolved + Send + Sync>;

/// How long one lookup may take (discovery shares its loop with the health checks).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The system resolver (getaddrinfo, through tokio), bounded by [`LOOKUP_TIMEOUT`].
fn system_resolver() -> Resolver {
    Arc::new(|name: String| {
        Box::pin(async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name)).await {
                Ok(found) => Ok(found?.collect()),
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "lookup timed out")),
            }
        })
    })
}

/// One configured upstream and the addresses it had when last resolved.
struct Entry {
    configured: String,
    /// Whether it is a name (an IP address is never resolved again).
    name: bool,
    addresses: Vec<SocketAddr>,
}

pub struct Upstreams {
    entries: Mutex<Vec<Entry>>,
    resolve: Resolver,
    /// Set by the first discovery, which answers with the start's addresses (no I/O: the
    /// balancer's first update runs before any runtime).
    discovered: AtomicBool,
}

impl Upstreams {
    /// The configured upstreams, names resolved now (blocking); the first that does not
    /// resolve is the error, naming it.
    pub fn resolve_at_start(configured: &[String]) -> Result<Upstreams, String> {
        Upstreams::with_resolver(configured, system_resolver())
    }

    fn with_resolver(configured: &[String], resolve: Resolver) -> Result<Upstreams, String> {
        let entries = configured
            .iter()
            .map(|c| {
                let addresses: Vec<SocketAddr> = c
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve `{c}`: {e}"))?
                    .collect();
                if addresses.is_empty() {
                    return Err(format!("cannot resolve `{c}`: no addresses"));
                }
                Ok(Entry {
                    configured: c.clone(),
                    name: c.parse::<SocketAddr>().is_err(),
                    addresses,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Upstreams {
            entries: Mutex::new(entries),
            resolve,
            discovered: AtomicBool::new(false),
        })
    }

    /// Whether any upstream is a name (and so worth resolving again).
    pub fn has_names(&self) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|e| e.name)
    }

    fn backends(&self) -> BTreeSet<Backend> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .flat_map(|e| e.addresses.iter())
            .map(|a| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*a),
                weight: 1,
                ext: Default::default(),
            })
            .collect()
    }

    /// Resolves every name again; a failure keeps the name's last addresses.
    async fn refresh(&self) {
        let names: Vec<(usize, String)> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .enumerate()
                .filter(|(_, e)| e.name)
                .map(|(i, e)| (i, e.configured.clone()))
                .collect()
        };
        for (index, name) in names {
            let resolved = (self.resolve)(name.clone()).await;
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let entry = &mut entries[index];
            match resolved {
                Ok(mut addresses) if !addresses.is_empty() => {
                    addresses.sort();
                    addresses.dedup();
                    let mut before = entry.addresses.clone();
                    before.sort();
                    if before != addresses {
                        tracing::info!(upstream = %name, ?addresses, "an upstream name resolves to new addresses");
                        entry.addresses = addresses;
                    }
                }
                Ok(_) => {
                    tracing::warn!(upstream = %name, "an upstream name resolves to nothing; its last addresses stay")
                }
                Err(error) => {
                    tracing::warn!(upstream = %name, %error, "an upstream name does not resolve; its last addresses stay")
                }
            }
        }
    }
}

#[async_trait]
impl ServiceDiscovery for Upstreams {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        if self.discovered.swap(true, Ordering::Relaxed) {
            self.refresh().await;
        }
        Ok((self.backends(), HashMap::new()))
    }
}

/// Runs a future that completes without waiting (the first update of a balancer, whose
/// discovery answers from memory); `None` if it would wait.
pub fn now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(answers: Arc<Mutex<io::Result<Vec<SocketAddr>>>>) -> Resolver {
        Arc::new(move |_name: String| {
            let answer = match &*answers.lock().unwrap() {
                Ok(a) => Ok(a.clone()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            Box::pin(async move { answer })
        })
    }

    fn addrs(set: &BTreeSet<Backend>) -> Vec<String> {
        let mut addrs: Vec<String> = set.iter().map(|b| b.addr.to_string()).collect();
        addrs.sort();
        addrs
    }

    #[tokio::test]
    async fn names_are_resolved_again_and_a_failure_keeps_the_last_addresses() {
        let answers = Arc::new(Mutex::new(Ok(vec!["127.0.0.9:80".parse().unwrap()])));
        let configured = ["localhost:80".to_string(), "127.0.0.5:81".to_string()];
        let upstreams =
            Arc::new(Upstreams::with_resolver(&configured, fake(answers.clone())).unwrap());
        assert!(upstreams.has_names());
        // At start (the first discovery): the system resolver's answer for localhost, the
        // IP as it is.
        let (found, _) = now(upstreams.discover()).unwrap().unwrap();
        assert!(addrs(&found).contains(&"127.0.0.5:81".to_string()));
        // The name moves: followed.
        let (found, _) = upstreams.discover().await.unwrap();
        assert_eq!(addrs(&found), ["127.0.0.5:81", "127.0.0.9:80"]);
        *answers.lock().unwrap() = Ok(vec![
            "127.0.0.10:80".parse().unwrap(),
            "127.0.0.11:80".parse().unwrap(),
        ]);
        let (found, _) = upstreams.discover().await.unwrap();
        assert_eq!(
            addrs(&found),
            ["127.0.0.10:80", "127.0.0.11:80", "127.0.0.5:81"]
        );
        // DNS fails, or answers nothing: the last addresses stay.
        *answers.lock().unwrap() = Err(io::Error::other("SERVFAIL"));
        let (found, _) = upstreams.discover().await.unwrap();
        assert_eq!(addrs(&found).len(), 3);
        *answers.lock().unwrap() = Ok(Vec::new());
        let (found, _) = upstreams.discover().await.unwrap();
        assert_eq!(addrs(&found).len(), 3);
    }

    #[test]
    fn ip_upstreams_are_never_resolved_and_bad_names_stop_the_start() {
        let upstreams = Upstreams::resolve_at_start(&["127.0.0.1:8080".to_string()]).unwrap();
        assert!(!upstreams.has_names());
        let err = Upstreams::resolve_at_start(&["no-such-host.invalid:80".to_string()])
            .err()
            .unwrap();
        assert!(err.contains("no-such-host.invalid:80"), "{err}");
    }
}
