//! The `atlas` command: `serve` runs a node, `repl` talks to one.

mod kv_cli;
mod nas_cli;
mod repl;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;

use atlas::AtlasConfig;
use atlas::config::DEFAULT_YAML;
use clap::{Parser, Subcommand};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};

#[derive(Parser)]
#[command(
    name = "atlas",
    version,
    about = "Atlas: a strongly consistent edge key-value store on Pingora"
)]
struct Cli {
    /// Configuration file: Pingora's keys at the top level plus an `atlas:` section. Accepted
    /// before or after any subcommand (`atlas nas backup FILE -c atlas.yaml`).
    #[arg(short = 'c', long = "conf", global = true)]
    conf: Option<PathBuf>,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run a node (a Pingora server). Without -c, the embedded single-node default.
    Serve {
        /// Test the configuration and exit.
        #[arg(short = 't', long = "test")]
        test: bool,
        /// Run in the background.
        #[arg(short = 'd', long = "daemon")]
        daemon: bool,
        /// Take over the listeners of a running server (zero-downtime upgrade).
        #[arg(short = 'u', long = "upgrade")]
        upgrade: bool,
    },
    /// The internal certificate authority of `tls: internal`.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Administer the NAS store on this machine (users, backup, restore) without the API.
    Nas {
        #[command(subcommand)]
        command: nas_cli::NasCommand,
    },
    /// Interactive shell (or a script reader when stdin is not a terminal).
    Repl {
        /// Socket path; default: the socket of -c FILE, else ./data/atlas.sock.
        socket: Option<PathBuf>,
        /// Send this request line and exit (repeatable; stops at the first ERROR, exit 1).
        #[arg(short = 'e', long = "execute")]
        execute: Vec<String>,
        #[command(flatten)]
        remote: target::ConnectArgs,
    },
    /// One request for scripts: exit 0 on success, 1 on an ERROR answer (or an absent key
    /// for `get`), 2 without a connection.
    Kv {
        /// Socket path; default: the socket of -c FILE, else ./data/atlas.sock.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        #[command(flatten)]
        remote: target::ConnectArgs,
        #[command(subcommand)]
        command: kv_cli::KvCommand,
    },
}

/// The rounds of a CA rotation (docs/security.md), each followed by a restart of the node.
#[derive(Subcommand)]
enum RotateStep {
    /// On a CA holder: make the new CA (in `<data_dir>/tls/next/`) and trust it too.
    Begin,
    /// On every other node: trust the new CA's certificate FILE too.
    Trust { file: PathBuf },
    /// The new CA becomes this node's; the old one is still trusted (CA holders first).
    Promote,
    /// Trust only the new CA (once this node's certificate is from it).
    End,
}

#[derive(Subcommand)]
enum CaAction {
    /// Rotate the cluster CA of `tls: internal` without downtime: begin (or trust), promote,
    /// end, restarting each node after each round.
    Rotate {
        #[command(subcommand)]
        step: RotateStep,
    },
    /// Print the CA certificate (PEM) and its SHA-256 fingerprint.
    Show,
    /// Print a new random cluster credential (48 hex characters) for `atlas.credentials`.
    Secret,
    /// Issue a client certificate for PRINCIPAL from this node's CA, for `client_listen`
    /// (`atlas repl --connect HOST:PORT --cert FILE --key FILE`).
    ClientCert {
        principal: String,
        /// Where to write the certificate; default: `<principal>.crt` here.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Where to write the private key (mode 0600); default: `<principal>.key` here.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let conf = cli.conf;
    match cli.command {
        Commands::Serve {
            test,
            daemon,
            upgrade,
        } => serve(conf, test, daemon, upgrade),
        Commands::Ca {
            action: CaAction::Show,
        } => ca_show(conf.as_ref()),
        Commands::Ca {
            action:
                CaAction::ClientCert {
                    principal,
                    cert,
                    key,
                    days,
                },
        } => ca_client_cert(conf.as_ref(), &principal, cert, key, days),
        Commands::Ca {
            action: CaAction::Rotate { step },
        } => ca_rotate(conf.as_ref(), step),
        Commands::Ca {
            action: CaAction::Secret,
        } => {
            println!("{}", hex::encode(rand::random::<[u8; 24]>()));
            ExitCode::SUCCESS
        }
        Commands::Nas { command } => match config_or_exit(conf.as_ref()) {
            Ok(config) => {
                init_logging();
                nas_cli::run(command, &config)
            }
            Err(code) => code,
        },
        Commands::Repl {
            socket,
            execute,
            remote,
        } => {
            let target = match target_of(socket, &remote, conf) {
                Ok(target) => target,
                Err(code) => return code,
            };
            if execute.is_empty() {
                repl::run(&target)
            } else {
                kv_cli::run_lines(&target, &execute)
            }
        }
        Commands::Kv {
            socket,
            remote,
            command,
        } => match target_of(socket, &remote, conf) {
            Ok(target) => kv_cli::run(command, &target),
            Err(code) => code,
        },
    }
}

/// `--connect` with its files, else the socket given, else the one of the configuration
/// (`-c`, or the embedded default).
fn target_of(
    socket: Option<PathBuf>,
    remote: &target::ConnectArgs,
    conf: Option<PathBuf>,
) -> Result<target::Target, ExitCode> {
    let fail = |message: String| {
        eprintln!("atlas: {message}");
        ExitCode::from(2)
    };
    let default_ca = || {
        load(conf.as_ref()).map(|(config, _, _)| {
            atlas_pingora::tls::cluster_ca_path(&config)
                .unwrap_or_else(|| atlas_pingora::tls::ca_cert_path(&config))
        })
    };
    if let Some(remote) = remote.remote(default_ca).map_err(fail)? {
        if socket.is_some() {
            return Err(fail("give a socket path or --connect, not both".into()));
        }
        return Ok(target::Target::Remote(remote));
    }
    match socket {
        Some(socket) => Ok(target::Target::Socket(socket)),
        None => load(conf.as_ref())
            .map(|(config, _, _)| target::Target::Socket(config.socket_path()))
            .map_err(fail),
    }
}

/// `atlas ca client-cert`: a client certificate for `principal` from this node's CA.
fn ca_client_cert(
    conf: Option<&PathBuf>,
    principal: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    days: u64,
) -> ExitCode {
    let fail = |message: String| {
        eprintln!("atlas: {message}");
        ExitCode::from(2)
    };
    let config = match load(conf) {
        Ok((config, _, _)) => config,
        Err(message) => return fail(message),
    };
    if !atlas::protocol::valid_principal(principal) {
        return fail(format!(
            "`{principal}` is not a principal name (1 to 256 characters, no control \
             characters, no surrounding spaces)"
        ));
    }
    if days == 0 || days > 3650 {
        return fail("--days: from 1 to 3650".into());
    }
    let safe = principal
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        && !principal.starts_with('.');
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (cert, key) if safe => (
            cert.unwrap_or_else(|| PathBuf::from(format!("{principal}.crt"))),
            key.unwrap_or_else(|| PathBuf::from(format!("{principal}.key"))),
        ),
        _ => {
            return fail(format!(
                "`{principal}` is not a file name: give --cert FILE and --key FILE"
            ));
        }
    };
    for path in [&cert, &key] {
        if path.exists() {
            return fail(format!("{} exists; not overwriting it", path.display()));
        }
    }
    let dir = atlas_pingora::tls::tls_dir(&config);
    let issued = atlas_pingora::tls::InternalCa::load_existing(&dir)
        .and_then(|ca| ca.issue_client(principal, days));
    let (cert_pem, key_pem) = match issued {
        Ok(pair) => pair,
        Err(e) => {
            return fail(format!(
                "{e} (run this where the cluster CA lives: a node with `tls: internal`, \
                 with its -c FILE)"
            ));
        }
    };
    let fingerprint = atlas_pingora::tls::pem_to_der(&cert_pem)
        .map(|der| atlas_pingora::tls::fingerprint(&der))
        .unwrap_or_default();
    if let Err(e) = atlas::files::write_private(&key, key_pem.as_bytes()) {
        return fail(format!("cannot write {}: {e}", key.display()));
    }
    if let Err(e) = atlas::files::write_private(&cert, cert_pem.as_bytes()) {
        let _ = std::fs::remove_file(&key);
        return fail(format!("cannot write {}: {e}", cert.display()));
    }
    println!("atlas: client certificate for `{principal}`, valid {days} days");
    println!("atlas: certificate {}", cert.display());
    println!("atlas: key         {} (mode 0600)", key.display());
    println!("atlas: SHA-256 fingerprint: {fingerprint} (for atlas.client_revoked)");
    ExitCode::SUCCESS
}

/// Reads the file (or the embedded default) and checks both halves of it.
fn load(conf: Option<&PathBuf>) -> Result<(AtlasConfig, ServerConf, String), String> {
    let (text, name) = match conf {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("config error in {}: cannot read: {e}", path.display()))?,
            path.display().to_string(),
        ),
        None => (DEFAULT_YAML.to_string(), "<embedded default>".to_string()),
    };
    let mut atlas = AtlasConfig::from_yaml(&text, &name).map_err(|e| e.to_string())?;
    if let Ok(cwd) = std::env::current_dir() {
        atlas.resolve_paths(&cwd);
    }
    let server = ServerConf::from_yaml(&text).map_err(|e| {
        // The context of a parse error quotes the whole file (secrets included): show the cause.
        let detail = match (&e.cause, &e.context) {
            (Some(cause), _) => cause.to_string(),
            (None, Some(context)) => context.as_str().to_string(),
            (None, None) => "invalid Pingora server keys".to_string(),
        };
        format!("config error in {name}: {detail}")
    })?;
    Ok((atlas, server, name))
}

fn serve(conf: Option<PathBuf>, test: bool, daemon: bool, upgrade: bool) -> ExitCode {
    init_logging();
    let (config, server_conf, name) = match load(conf.as_ref()) {
        Ok(loaded) => loaded,
        Err(message) => {
            eprintln!("atlas: {message}");
            return ExitCode::from(2);
        }
    };
    if test {
        println!("atlas: configuration {name} is valid");
        return ExitCode::SUCCESS;
    }
    // Everything this process creates without naming a mode (RocksDB's files, SQLite's, the
    // snapshot files) is its owner's only: the data directory holds the data, the cluster
    // CA's key and password hashes. Files meant for others (smb.conf, exports) set theirs.
    // SAFETY: umask has no preconditions; called before any thread that creates files.
    unsafe {
        libc::umask(0o077);
    }
    let opt = Opt {
        upgrade,
        daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    let atlas = match atlas_pingora::install(&mut server, &config) {
        Ok(atlas) => atlas,
        Err(atlas_pingora::InstallError::Cluster(e)) => {
            eprintln!("atlas: cannot start as a cluster member: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("atlas: config error in {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = config.socket_path();
    let me =
        std::env::current_exe().map_or_else(|_| "atlas".to_string(), |p| p.display().to_string());
    println!("atlas: serving {} (config {name})", socket.display());
    println!("atlas: connect with: {me} repl {}", socket.display());
    println!(
        "atlas: HTTPS on {} (CA: {})",
        config.listen,
        atlas_pingora::tls::ca_cert_path(&config).display()
    );
    if let Some(addr) = &config.client_listen {
        println!(
            "atlas: clients over TLS on {addr}: {me} repl --connect {addr} --cert P.crt --key P.key \
             (certificates from `{me} ca client-cert P`)"
        );
    }
    server.run(RunArgs::default());
    atlas.close();
    if atlas.failure().is_some() {
        // Already said on stderr by the engine service.
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// The configuration of `-c` (or the embedded default); a bad one is said, exit status 2.
fn config_or_exit(conf: Option<&PathBuf>) -> Result<atlas::AtlasConfig, ExitCode> {
    load(conf).map(|(config, _, _)| config).map_err(|message| {
        eprintln!("atlas: {message}");
        ExitCode::from(2)
    })
}

/// Prints what a command answered, or says why it failed (exit status 1).
fn print_outcome(outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("atlas: {e}");
            ExitCode::from(1)
        }
    }
}

fn ca_rotate(conf: Option<&PathBuf>, step: RotateStep) -> ExitCode {
    let config = match config_or_exit(conf) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if !matches!(config.tls, atlas::config::TlsConfig::Internal) {
        eprintln!("atlas: ca rotate is for `tls: internal`; this node's CA is not Atlas's");
        return ExitCode::from(2);
    }
    use atlas_pingora::ca_rotation;
    print_outcome(match step {
        RotateStep::Begin => ca_rotation::begin(&config),
        RotateStep::Trust { file } => ca_rotation::trust(&config, &file),
        RotateStep::Promote => ca_rotation::promote(&config),
        RotateStep::End => ca_rotation::end(&config),
    })
}

fn ca_show(conf: Option<&PathBuf>) -> ExitCode {
    let config = match config_or_exit(conf) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let path = atlas_pingora::tls::ca_cert_path(&config);
    print_outcome(
        std::fs::read_to_string(&path)
            .map_err(|e| {
                format!(
                    "cannot read {}: {e} (the CA is created on the first start with `tls: internal`)",
                    path.display()
                )
            })
            .and_then(|pem| {
                atlas_pingora::tls::describe_ca(&pem)
                    .map_err(|e| format!("{}: {e}", path.display()))
            }),
    )
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATLAS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
