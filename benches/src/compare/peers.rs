//! Starting the systems under test on loopback, each in its own temporary directory, and
//! stopping them when dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process started for the run (killed on drop, with its directory).
pub struct Process {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| e.to_string())
}

fn spawn(name: &str, mut command: Command, dir: tempfile::TempDir) -> Result<Process, String> {
    let log = std::fs::File::create(dir.path().join("log")).map_err(|e| e.to_string())?;
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            format!("cannot start {name}: {e} (is it installed? `make bench` installs it)")
        })?;
    Ok(Process { child, dir })
}

/// Waits (bounded) until `ready` holds.
fn wait(what: &str, within: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while !ready() {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start within {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// An Atlas node; `extra` lines go into its `atlas:` section.
pub struct AtlasNode {
    pub process: Process,
    pub socket: PathBuf,
    pub https_port: u16,
}

impl AtlasNode {
    pub fn start(bin: &Path, durability: &str, extra: &str) -> Result<AtlasNode, String> {
        let dir = temp("atlas-bench-")?;
        let socket = dir.path().join("atlas.sock");
        let https_port = free_port();
        let mut yaml = format!(
            "version: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\n\
             threads: 2\natlas:\n  data_dir: {}\n  socket: {}\n  durability: {durability}\n  \
             listen: 127.0.0.1:{https_port}\n",
            dir.path().join("data").display(),
            socket.display()
        );
        for line in extra.lines() {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        let conf = dir.path().join("atlas.yaml");
        std::fs::write(&conf, yaml).map_err(|e| e.to_string())?;
        let mut command = Command::new(bin);
        command.args(["serve", "-c"]).arg(&conf);
        command.env("ATLAS_ADMIN_PASSWORD", "bench-admin-password");
        let process = spawn("atlas", command, dir)?;
        let probe = socket.clone();
        wait("atlas", Duration::from_secs(60), || {
            atlas::client::Client::connect(&probe, "bench").is_ok()
        })?;
        Ok(AtlasNode {
            process,
            socket,
            https_port,
        })
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.process.dir.path().join("data").join("tls")
    }
}

/// `redis-server` on a free port; `durable` turns on the append-only file with
/// `appendfsync always` (one fsync per write, like Atlas's strict durability).
pub fn redis(durable: bool) -> Result<(Process, u16), String> {
    let dir = temp("redis-bench-")?;
    let port = free_port();
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--dir", &dir.path().display().to_string()])
        .arg("--unixsocket")
        .arg(dir.path().join(REDIS_SOCKET))
        .args(["--unixsocketperm", "700"]);
    if durable {
        command.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        command.args(["--appendonly", "no"]);
    }
    let process = spawn("redis", command, dir)?;
    wait("redis", Duration::from_secs(20), || listening(port))?;
    Ok((process, port))
}

const REDIS_SOCKET: &str = "redis.sock";

/// The Unix socket of a Redis started by `redis` (beside TCP, as Atlas's clients connect).
pub fn redis_socket(redis: &Process) -> PathBuf {
    redis.dir.path().join(REDIS_SOCKET)
}

/// A one-member etcd (fsyncs its WAL on every commit, as it always does).
pub fn etcd() -> Result<(Process, u16), String> {
    let dir = temp("etcd-bench-")?;
    let (client, peer) = (free_port(), free_port());
    let mut command = Command::new("etcd");
    command
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{peer}"),
            "--max-request-bytes",
            &(4 * 1024 * 1024).to_string(),
            "--quota-backend-bytes",
            &(8u64 * 1024 * 1024 * 1024).to_string(),
            "--log-level",
            "error",
        ]);
    let process = spawn("etcd", command, dir)?;
    wait("etcd", Duration::from_secs(30), || listening(client))?;
    // The gateway answers once the member has elected itself.
    wait("etcd leader", Duration::from_secs(30), || {
        super::kv::Target::Etcd(client)
            .connect()
            .and_then(|mut kv| kv.put("bench.ready", b"1"))
            .is_ok()
    })?;
    Ok((process, client))
}

/// nginx serving `ok` on `upstream` (plain HTTP) and proxying TLS on `proxy` to it, with the
/// given certificate; plus a plain-HTTP upstream shared with Atlas's route.
/// Pingora's plain reverse proxy (`plugin/examples/plain_proxy.rs`, built beside `atlas` by
/// `make build`) on `proxy`, to `upstream`.
pub fn plain_pingora(
    atlas: &Path,
    upstream: u16,
    proxy: u16,
    cert: &Path,
    key: &Path,
) -> Result<Process, String> {
    let bin = atlas.with_file_name("examples").join("plain_proxy");
    let mut command = Command::new(&bin);
    command
        .arg(format!("127.0.0.1:{proxy}"))
        .arg(format!("127.0.0.1:{upstream}"))
        .arg(cert)
        .arg(key);
    let process = spawn(&bin.display().to_string(), command, temp("plain-pingora-")?)?;
    wait("the plain Pingora proxy", Duration::from_secs(20), || {
        listening(proxy)
    })?;
    Ok(process)
}

pub fn nginx(upstream: u16, proxy: u16, cert: &Path, key: &Path) -> Result<Process, String> {
    let dir = temp("nginx-bench-")?;
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 10000000;\n  client_body_temp_path {dir};\n  proxy_temp_path {dir};\n  \
         fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n  scgi_temp_path {dir};\n  \
         upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n  \
         server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 'ok'; }} }}\n  \
         server {{\n    listen 127.0.0.1:{proxy} ssl http2;\n    ssl_certificate {cert};\n    \
         ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
         location / {{ proxy_pass http://backend; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        dir = dir.path().display(),
        cert = cert.display(),
        key = key.display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let mut command = Command::new("nginx");
    command
        .arg("-c")
        .arg(&path)
        .args(["-p", &dir.path().display().to_string()]);
    let process = spawn("nginx", command, dir)?;
    wait("nginx", Duration::from_secs(20), || {
        listening(upstream) && listening(proxy)
    })?;
    Ok(process)
}
