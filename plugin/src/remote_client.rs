//! The client side of `client_listen`: the socket protocol over TLS on TCP, presenting a
//! client certificate (`atlas ca client-cert`) and verifying the node against the cluster CA.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use atlas::client::Client;
use rustls::pki_types::ServerName;

/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one answer may take (a large backup frame, a slow cluster write).
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `host:port` of a node's `client_listen`; the host must be in its certificate.
    pub addr: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster CA certificate (PEM) that signed the node's certificate.
    pub ca: PathBuf,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// The host of `host:port` (brackets of an IPv6 address removed).
fn host_of(addr: &str) -> io::Result<&str> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| invalid(format!("`{addr}` is not host:port")))?;
    port.parse::<u16>()
        .map_err(|_| invalid(format!("`{addr}`: `{port}` is not a port")))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']'))
}

fn tls_config(remote: &Remote) -> io::Result<rustls::ClientConfig> {
    let ca_pem = std::fs::read_to_string(&remote.ca)
        .map_err(|e| invalid(format!("cannot read the CA {}: {e}", remote.ca.display())))?;
    let ca_der = crate::tls::pem_to_der(&ca_pem)
        .ok_or_else(|| invalid(format!("{} holds no PEM certificate", remote.ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der))
        .map_err(|e| invalid(format!("{}: {e}", remote.ca.display())))?;
    let (certs, key) = pingora::tls::load_certs_and_key_files(
        &remote.cert.display().to_string(),
        &remote.key.display().to_string(),
    )
    .ok()
    .flatten()
    .ok_or_else(|| {
        invalid(format!(
            "cannot read a certificate and key from {} and {}",
            remote.cert.display(),
            remote.key.display()
        ))
    })?;
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| invalid(format!("the client certificate and key: {e}")))
}

/// Connects, completes TLS and the protocol handshake.
pub fn connect(remote: &Remote, client_token: &str) -> io::Result<Client> {
    let name = ServerName::try_from(host_of(&remote.addr)?.to_string())
        .map_err(|e| invalid(format!("`{}`: {e}", remote.addr)))?;
    let config = Arc::new(tls_config(remote)?);
    let mut last = invalid(format!("`{}` resolves to no address", remote.addr));
    for addr in remote.addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(tcp) => {
                tcp.set_nodelay(true)?;
                tcp.set_read_timeout(Some(READ_TIMEOUT))?;
                let connection = rustls::ClientConnection::new(config.clone(), name.clone())
                    .map_err(|e| invalid(e.to_string()))?;
                let mut stream = rustls::StreamOwned::new(connection, tcp);
                // Finish the handshake here, so a refused certificate reads as a TLS error.
                while stream.conn.is_handshaking() {
                    stream.conn.complete_io(&mut stream.sock)?;
                }
                // TLS 1.3 finishes the client's side first: a node that refuses the
                // certificate says so in an alert read with the greeting.
                return Client::over(Box::new(stream), client_token).map_err(|e| {
                    if e.to_string().contains("received fatal alert") {
                        io::Error::new(
                            e.kind(),
                            format!(
                                "{e} (the node refused the client certificate: it must be \
                                 from the cluster's CA, see `atlas ca client-cert`)"
                            ),
                        )
                    } else {
                        e
                    }
                });
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_takes_names_and_both_address_families() {
        assert_eq!(host_of("db.example:7379").unwrap(), "db.example");
        assert_eq!(host_of("127.0.0.1:7379").unwrap(), "127.0.0.1");
        assert_eq!(host_of("[::1]:7379").unwrap(), "::1");
        assert!(host_of("db.example").is_err());
        assert!(host_of("db.example:http").is_err());
    }
}
