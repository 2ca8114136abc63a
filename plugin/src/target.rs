//! Where `atlas repl` and `atlas kv` connect: the node's Unix socket, or a node's
//! `client_listen` over TLS with a client certificate (`--connect`).

use std::path::PathBuf;
use std::process::ExitCode;

use atlas::client::Client;
use atlas_pingora::remote_client::Remote;

pub enum Target {
    Socket(PathBuf),
    Remote(Remote),
}

/// `--connect` and the files it needs.
#[derive(clap::Args, Clone, Default)]
pub struct ConnectArgs {
    /// Connect to a node's `client_listen` (HOST:PORT) over TLS instead of the Unix socket.
    #[arg(long, value_name = "HOST:PORT")]
    pub connect: Option<String>,
    /// With --connect: the client certificate (`atlas ca client-cert` issues one).
    #[arg(long, requires = "connect")]
    pub cert: Option<PathBuf>,
    /// With --connect: the client certificate's private key.
    #[arg(long, requires = "connect")]
    pub key: Option<PathBuf>,
    /// With --connect: the cluster CA certificate; default: the CA of -c FILE's data
    /// directory (`<data_dir>/tls/ca.crt`).
    #[arg(long, requires = "connect")]
    pub ca: Option<PathBuf>,
}

impl Target {
    /// Connects and completes the handshake; an error is printed and is exit status 2.
    pub fn connect(&self, client_token: &str) -> Result<Client, ExitCode> {
        let connected = match self {
            Target::Socket(path) => Client::connect(path, client_token),
            Target::Remote(remote) => atlas_pingora::remote_client::connect(remote, client_token),
        };
        connected.map_err(|e| {
            eprintln!("atlas: cannot connect to {}: {e}", self.describe());
            ExitCode::from(2)
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Socket(path) => path.display().to_string(),
            Target::Remote(remote) => format!("{} (TLS)", remote.addr),
        }
    }
}

impl ConnectArgs {
    /// The remote target, when `--connect` was given; `ca` is the default CA file.
    pub fn remote(
        &self,
        default_ca: impl FnOnce() -> Result<PathBuf, String>,
    ) -> Result<Option<Remote>, String> {
        let Some(addr) = &self.connect else {
            return Ok(None);
        };
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else {
            return Err(
                "--connect needs --cert FILE and --key FILE (a client certificate \
                        from `atlas ca client-cert <principal>`)"
                    .into(),
            );
        };
        let ca = match &self.ca {
            Some(ca) => ca.clone(),
            None => default_ca()?,
        };
        Ok(Some(Remote {
            addr: addr.clone(),
            cert: cert.clone(),
            key: key.clone(),
            ca,
        }))
    }
}
