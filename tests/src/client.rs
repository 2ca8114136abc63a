//! Protocol client over the Unix socket, with framing checks and failure messages that show
//! what was sent and what came back.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{READ_TIMEOUT, WELCOME};

/// A protocol client over the Unix socket. Reads time out after [`READ_TIMEOUT`].
pub struct Client {
    stream: UnixStream,
    /// Bytes received but not consumed yet.
    pending: Vec<u8>,
    /// Description of the last thing sent, for failure messages.
    last_sent: String,
}

impl Client {
    pub(crate) fn from_stream(stream: UnixStream) -> Client {
        Client {
            stream,
            pending: Vec::new(),
            last_sent: String::from("(nothing)"),
        }
    }

    /// Raw connection: nothing read or sent yet (the WELCOME line is still pending).
    pub fn connect(path: &Path) -> Client {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("set_read_timeout");
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .expect("set_write_timeout");
        Client::from_stream(stream)
    }

    /// Like [`Client::connect_ready`], but a node that is down or stopped is an error.
    pub fn try_connect_ready(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut client = Client::from_stream(stream);
        if client.try_read_line()? != WELCOME {
            return Err(io::Error::other("no WELCOME"));
        }
        client.try_send(b"HELLO 1.0 test\r\n")?;
        if client.try_read_line()? != "READY" {
            return Err(io::Error::other("no READY"));
        }
        Ok(client)
    }

    /// Connection after the handshake (`WELCOME` read, `HELLO 1.0 test` sent, `READY` read).
    pub fn connect_ready(path: &Path) -> Client {
        let mut client = Client::connect(path);
        assert_eq!(client.read_line(), WELCOME);
        client.send_line("HELLO 1.0 test");
        assert_eq!(client.read_line(), "READY");
        client
    }

    /// How long a read may wait (large transfers need longer than `READ_TIMEOUT`).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("set_read_timeout");
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("send {}: {e}", self.last_sent));
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last_sent = describe(bytes);
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends `line` followed by `\r\n`.
    pub fn send_line(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// Next line without its `\r\n`; panics on EOF, timeout, or a line not ended by `\r\n`.
    pub fn read_line(&mut self) -> String {
        self.try_read_line().unwrap_or_else(|e| {
            panic!(
                "reading a line failed ({e}) after sending {}; unconsumed bytes: {}",
                self.last_sent,
                describe(&self.pending)
            )
        })
    }

    /// Like [`Client::read_line`] but returns I/O errors (EOF is `UnexpectedEof`).
    pub fn try_read_line(&mut self) -> io::Result<String> {
        let mut searched = 0;
        loop {
            if let Some(pos) = self.pending[searched..].iter().position(|&b| b == b'\n') {
                let end = searched + pos;
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let Some(body) = line.strip_suffix(b"\r\n") else {
                    panic!(
                        "server line not ended by \\r\\n: {} (after sending {})",
                        describe(&line),
                        self.last_sent
                    );
                };
                return Ok(String::from_utf8_lossy(body).into_owned());
            }
            searched = self.pending.len();
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                ));
            }
        }
    }

    /// Exactly `n` raw bytes (e.g. a blob payload).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let from_pending = n.min(self.pending.len());
        let mut out: Vec<u8> = self.pending.drain(..from_pending).collect();
        if out.len() < n {
            let already = out.len();
            out.resize(n, 0);
            self.stream
                .read_exact(&mut out[already..])
                .unwrap_or_else(|e| {
                    panic!(
                        "reading {n} raw bytes failed ({e}) after sending {}",
                        self.last_sent
                    )
                });
        }
        out
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.pending.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Sends `line` and reads response lines up to and including `OK` or an `ERROR ...` line.
    pub fn request(&mut self, line: &str) -> Vec<String> {
        self.send_line(line);
        self.read_response()
    }

    /// Reads lines up to and including `OK` or an `ERROR ...` line.
    pub fn read_response(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            let last = line == "OK" || line.starts_with("ERROR");
            lines.push(line);
            if last {
                return lines;
            }
        }
    }

    /// Like [`Client::request`] but returns I/O errors instead of panicking.
    pub fn try_request(&mut self, line: &str) -> io::Result<Vec<String>> {
        self.try_send(format!("{line}\r\n").as_bytes())?;
        let mut lines = Vec::new();
        loop {
            let line = self.try_read_line()?;
            let last = line == "OK" || line.starts_with("ERROR");
            lines.push(line);
            if last {
                return Ok(lines);
            }
        }
    }

    /// Sends a request that must succeed; returns the data lines (without the final `OK`).
    pub fn request_ok(&mut self, line: &str) -> Vec<String> {
        let mut lines = self.request(line);
        assert_eq!(
            lines.last().map(String::as_str),
            Some("OK"),
            "request {line:?} answered {lines:?}"
        );
        lines.pop();
        lines
    }

    /// Sends a request that must fail with exactly one line starting with `prefix`.
    pub fn request_err(&mut self, line: &str, prefix: &str) -> String {
        let lines = self.request(line);
        assert!(
            lines.len() == 1 && lines[0].starts_with(prefix),
            "request {line:?}: expected one line starting with {prefix:?}, got {lines:?}"
        );
        lines.into_iter().next().expect("one line")
    }

    pub fn put(&mut self, key: &str, value: &str) {
        assert_eq!(
            self.request(&format!("KEY PUT {key} {value}")),
            ["OK"],
            "KEY PUT {key}"
        );
    }

    /// `Some(value)` for `VALUE:<value>` `OK`, `None` for `NOT_FOUND` `OK`; panics otherwise.
    pub fn get(&mut self, key: &str) -> Option<String> {
        let lines = self.request(&format!("KEY GET {key}"));
        match lines.as_slice() {
            [value, ok] if ok == "OK" && value.starts_with("VALUE:") => {
                Some(value["VALUE:".len()..].to_string())
            }
            [nf, ok] if nf == "NOT_FOUND" && ok == "OK" => None,
            _ => panic!("KEY GET {key} answered {lines:?}"),
        }
    }

    pub fn blob_set(&mut self, key: &str, payload: &[u8]) {
        let mut request = format!("KEY BLOB SET {key} {}\r\n", payload.len()).into_bytes();
        request.extend_from_slice(payload);
        self.send(&request);
        assert_eq!(
            self.read_response(),
            ["OK"],
            "KEY BLOB SET {key} ({} bytes)",
            payload.len()
        );
    }

    /// `Some(bytes)` for `BLOB <n>` + bytes + `OK`, `None` for `EMPTY` `OK`; panics otherwise.
    pub fn blob_get(&mut self, key: &str) -> Option<Vec<u8>> {
        self.send_line(&format!("KEY BLOB GET {key}"));
        let head = self.read_line();
        if head == "EMPTY" {
            assert_eq!(self.read_line(), "OK", "after EMPTY");
            return None;
        }
        let len: usize = head
            .strip_prefix("BLOB ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("KEY BLOB GET {key} answered {head:?}"));
        let payload = self.read_exact(len);
        assert_eq!(self.read_line(), "OK", "after the blob payload of {key}");
        Some(payload)
    }

    /// Asserts the connection still serves commands.
    pub fn assert_usable(&mut self) {
        assert_eq!(
            self.request("KEY GET PROBE.ABSENT_KEY"),
            ["NOT_FOUND", "OK"],
            "connection no longer usable"
        );
    }

    /// Asserts the server closes the connection (EOF or reset) without sending anything more.
    pub fn expect_closed(&mut self) {
        assert!(
            self.pending.is_empty(),
            "expected the connection to close, but got {}",
            describe(&self.pending)
        );
        let mut buf = [0u8; 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the connection to close, but got {}",
                describe(&buf[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "connection still open {READ_TIMEOUT:?} after sending {}",
                    self.last_sent
                )
            }
            Err(e) => panic!(
                "expected the connection to close after sending {}, but read failed: {e}",
                self.last_sent
            ),
        }
    }
}

/// Splits `[ID:<token>] rest` into `(Some(token), rest)`; untagged lines give `(None, line)`.
pub fn split_tag(line: &str) -> (Option<&str>, &str) {
    match line
        .strip_prefix("[ID:")
        .and_then(|rest| rest.split_once("] "))
    {
        Some((token, body)) => (Some(token), body),
        None => (None, line),
    }
}

/// Whether a response line (tag already removed) ends a response.
pub fn is_terminal(body: &str) -> bool {
    body == "OK" || body.starts_with("ERROR")
}

/// Short printable description of raw bytes for failure messages.
pub(crate) fn describe(bytes: &[u8]) -> String {
    const MAX: usize = 200;
    let shown = &bytes[..bytes.len().min(MAX)];
    let mut text = String::from("\"");
    text.push_str(&shown.escape_ascii().to_string());
    text.push('"');
    if bytes.len() > MAX {
        text.push_str(&format!(" ... ({} bytes)", bytes.len()));
    }
    text
}
