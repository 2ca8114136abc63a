//! Black-box test harness: starts real `atlas` processes and talks to them over the Unix socket.
//!
//! Every wait in here is bounded; a test that hangs is a test that cannot tell us anything.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod client;
pub mod cluster;
pub mod https;
pub mod load;
pub mod pebble;

use client::describe;
pub use client::{Client, is_terminal, split_tag};

/// The greeting the server sends on every new connection.
pub const WELCOME: &str = "WELCOME 1.0 Chronalys/1.0";
/// Password of the NAS `admin` user every test node starts with.
pub const ADMIN_PASSWORD: &str = "test-admin-password-1";
pub const ADMIN_PASSWORD_ENV: &str = "ATLAS_ADMIN_PASSWORD";
/// How long a client waits for a single read before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node may take to start answering on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Path of the `atlas` server binary: `ATLAS_BIN` if set, else the sibling of the test's `deps/`
/// directory (`<target>/<profile>/atlas`).
pub fn atlas_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ATLAS_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ATLAS_BIN points to {}, which is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    // <target>/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let bin = profile_dir.join("atlas");
    assert!(
        bin.is_file(),
        "atlas server binary not found at {} (derived from test binary {}). Build it first \
         (`cargo build -p atlas-pingora` with the same profile) or set ATLAS_BIN.",
        bin.display(),
        exe.display()
    );
    bin
}

/// Writes `<dir>/atlas.yaml` for a single node living in `dir`; `extra_atlas_yaml` is added to
/// the `atlas:` section, every line indented by two spaces (so `limits:\n  max_line_bytes: 1024`
/// nests as expected).
pub fn write_config(dir: &Path, extra_atlas_yaml: &str) -> PathBuf {
    let mut yaml = format!(
        "version: 1\n\
         grace_period_seconds: 0\n\
         graceful_shutdown_timeout_seconds: 1\n\
         atlas:\n  data_dir: {}\n  socket: {}\n",
        dir.join("data").display(),
        dir.join("atlas.sock").display()
    );
    // Every node gets its own HTTPS port, so nodes of parallel tests never collide.
    if !extra_atlas_yaml
        .lines()
        .any(|l| l.trim_start().starts_with("listen:"))
    {
        yaml.push_str(&format!("  listen: 127.0.0.1:{}\n", free_port()));
    }
    for line in extra_atlas_yaml.lines() {
        yaml.push_str("  ");
        yaml.push_str(line);
        yaml.push('\n');
    }
    let path = dir.join("atlas.yaml");
    fs::write(&path, yaml).expect("write atlas.yaml");
    path
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// One running `atlas serve` process with its own directory.
pub struct Node {
    dir: PathBuf,
    extra_yaml: String,
    child: Option<Child>,
    // Declared last: the directory is removed only after the process is gone.
    _owned_dir: Option<TempDir>,
}

impl Node {
    /// Starts a node in a fresh temporary directory with the default test configuration.
    pub fn start() -> Node {
        Node::start_with("")
    }

    /// Starts a node in a fresh temporary directory with extra `atlas:` YAML lines.
    pub fn start_with(extra_atlas_yaml: &str) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix("atlas-test-")
            .tempdir()
            .expect("create temp dir");
        let mut node = Node::start_in_with(tmp.path(), extra_atlas_yaml);
        node._owned_dir = Some(tmp);
        node
    }

    /// Starts a node in `dir` (kept by the caller, e.g. across restarts).
    pub fn start_in(dir: &Path) -> Node {
        Node::start_in_with(dir, "")
    }

    /// Starts a node in `dir` with extra `atlas:` YAML lines.
    pub fn start_in_with(dir: &Path, extra_atlas_yaml: &str) -> Node {
        let mut node = Node {
            dir: dir.to_path_buf(),
            extra_yaml: extra_atlas_yaml.to_string(),
            child: None,
            _owned_dir: None,
        };
        node.spawn_and_wait();
        node
    }

    /// Starts the server again in the same directory with the same configuration. The previous
    /// process must have been stopped with [`Node::kill9`] or [`Node::terminate`].
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart() while the previous process still runs"
        );
        self.spawn_and_wait();
    }

    /// The extra `atlas:` YAML lines the node runs with.
    pub fn extra_yaml(&self) -> &str {
        &self.extra_yaml
    }

    /// Like [`Node::restart`], with `extra_atlas_yaml` as the new extra configuration.
    pub fn restart_with(&mut self, extra_atlas_yaml: &str) {
        self.extra_yaml = extra_atlas_yaml.to_string();
        self.restart();
    }

    fn spawn_and_wait(&mut self) {
        let config = write_config(&self.dir, &self.extra_yaml);
        let log = |name: &str| -> File {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .expect("open log file")
        };
        let child = Command::new(atlas_bin())
            .env(ADMIN_PASSWORD_ENV, ADMIN_PASSWORD)
            .env_remove("ATLAS_DB_PATH")
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log("atlas.stdout.log"))
            .stderr(log("atlas.stderr.log"))
            .spawn()
            .expect("spawn atlas serve");
        self.child = Some(child);
        self.wait_until_ready();
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let socket = self.socket_path();
        loop {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                panic!(
                    "atlas exited during start-up with {status}; stderr:\n{}",
                    self.stderr_text()
                );
            }
            if let Ok(stream) = UnixStream::connect(&socket) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .expect("set_read_timeout");
                let mut client = Client::from_stream(stream);
                if let Ok(line) = client.try_read_line() {
                    assert_eq!(line, WELCOME, "first line sent by a new server");
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "atlas did not answer on {} within {:?}; stderr:\n{}",
                    socket.display(),
                    START_TIMEOUT,
                    self.stderr_text()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `host:port` of the node's HTTPS listener, as written in its config.
    pub fn https_addr(&self) -> String {
        let config = fs::read_to_string(self.config_path()).expect("read atlas.yaml");
        config
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen: "))
            .expect("listen in atlas.yaml")
            .trim()
            .to_string()
    }

    /// The internal CA certificate clients trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("data").join("tls").join("ca.crt")
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir.join("atlas.sock")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("atlas.yaml")
    }

    /// Everything the server wrote to stderr (all runs in this directory).
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(self.dir.join("atlas.stderr.log")).unwrap_or_default()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node is not running").id()
    }

    /// A connected client that has completed the handshake.
    pub fn client(&self) -> Client {
        Client::connect_ready(&self.socket_path())
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("node is not running");
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait after kill");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "status after kill -9");
    }

    /// SIGTERM, then wait (bounded) for the process to exit; returns its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", io::Error::last_os_error());
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "atlas did not exit within {TERMINATE_TIMEOUT:?} after SIGTERM; stderr:\n{}",
                    self.stderr_text()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            let stderr = self.stderr_text();
            let tail_start = stderr.len().saturating_sub(4000);
            let tail_start = (tail_start..=stderr.len())
                .find(|&i| stderr.is_char_boundary(i))
                .unwrap_or(stderr.len());
            eprintln!(
                "--- atlas stderr ({}) ---\n{}",
                self.dir.display(),
                &stderr[tail_start..]
            );
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures are reproducible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compares byte strings without dumping megabytes into the failure message.
pub fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first_difference = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let around = |bytes: &[u8]| {
        let end = bytes.len().min(first_difference + 16);
        describe(&bytes[first_difference.min(end)..end])
    };
    panic!(
        "{what}: {} bytes received, {} expected; first difference at offset {first_difference}: \
         received {}, expected {}",
        actual.len(),
        expected.len(),
        around(actual),
        around(expected)
    );
}

/// Runs `command` with `input` on stdin (then closed), waiting at most `timeout`.
/// A finished command's status, stdout and stderr, for assertion messages.
pub fn explain(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn run_with_input(command: &mut Command, input: &[u8], timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    // The process may exit before reading everything; a write error is not the test's concern.
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let collect = |mut source: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = source.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
    let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = stdout.join().unwrap_or_default();
            let err = stderr.join().unwrap_or_default();
            panic!(
                "{command:?} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Asserts that `dir` and everything under it is its owner's only: directories `0700`,
/// files without group or other bits (the socket, `0660` by design, is skipped).
pub fn assert_private_tree(dir: &Path) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(dir).expect("metadata");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{} is {:o}",
        dir.display(),
        meta.permissions().mode() & 0o777
    );
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            assert_private_tree(&path);
        } else if !meta.file_type().is_socket() {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
    }
}

/// `atlas ca client-cert <principal> -c <config> --cert <cert> --key <key>`: issues a client
/// certificate from the CA of the node configured by `config`.
pub fn issue_client_cert(config: &Path, principal: &str, cert: &Path, key: &Path) -> Output {
    Command::new(atlas_bin())
        .args(["ca", "client-cert", principal, "-c"])
        .arg(config)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .expect("run atlas ca client-cert")
}
