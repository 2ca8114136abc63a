//! A small blocking client of the socket protocol, used by the REPL and the load generator.
//! It speaks over any byte stream: the Unix socket here, TLS on TCP (`client_listen`) from
//! the edge crate, which owns TLS.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One frame of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text line (without its line end), `OK` and `ERROR …` included.
    Line(Vec<u8>),
    /// The bytes following a `BLOB <n>` line.
    Blob(Vec<u8>),
}

/// A connected byte stream the client can speak over.
pub trait Transport: Read + Write + Send {}

impl<T: Read + Write + Send> Transport for T {}

pub struct Client {
    /// Reads go through the buffer; writes go to the stream under it.
    stream: BufReader<Box<dyn Transport>>,
}

fn protocol_error(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl Client {
    /// Connects to the Unix socket at `path` and completes the handshake.
    pub fn connect(path: &Path, client_token: &str) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        Client::over(Box::new(stream), client_token)
    }

    /// Completes the handshake over an already connected stream.
    pub fn over(stream: Box<dyn Transport>, client_token: &str) -> std::io::Result<Client> {
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        let welcome = client.read_line()?;
        if welcome.starts_with(b"ERROR ") {
            // The server refused the connection (a certificate, too many connections).
            return Err(protocol_error(
                String::from_utf8_lossy(&welcome).into_owned(),
            ));
        }
        if !welcome.starts_with(b"WELCOME ") {
            return Err(protocol_error(format!(
                "unexpected greeting {:?}",
                String::from_utf8_lossy(&welcome)
            )));
        }
        client.write(format!("HELLO 1.0 {client_token}\r\n").as_bytes())?;
        let ready = client.read_line()?;
        if ready != b"READY" {
            return Err(protocol_error(String::from_utf8_lossy(&ready).into_owned()));
        }
        Ok(client)
    }

    /// Exactly `n` payload bytes (the bytes after a `BLOB <n>` line).
    pub fn read_payload(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut payload = vec![0; n];
        self.stream.read_exact(&mut payload)?;
        Ok(payload)
    }

    /// The next line, without its line end (for streams such as a watch's events).
    pub fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut line = Vec::new();
        if self.stream.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(line)
    }

    /// Sends a request line, plus `payload` right after it (for `KEY BLOB SET`).
    pub fn send(&mut self, line: &[u8], payload: Option<&[u8]>) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 2 + payload.map_or(0, <[u8]>::len));
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        if let Some(payload) = payload {
            out.extend_from_slice(payload);
        }
        self.write(&out)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads the frames of one untagged response, through `OK` or `ERROR …`.
    pub fn read_response(&mut self) -> std::io::Result<Vec<Frame>> {
        let mut frames = Vec::new();
        loop {
            let line = self.read_line()?;
            let bare = strip_tag(&line);
            let done = bare == b"OK" || bare.starts_with(b"ERROR ");
            let blob_len = bare
                .strip_prefix(b"BLOB ")
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok());
            frames.push(Frame::Line(line));
            if let Some(len) = blob_len {
                let mut payload = vec![0; len];
                self.stream.read_exact(&mut payload)?;
                frames.push(Frame::Blob(payload));
            }
            if done {
                return Ok(frames);
            }
        }
    }

    /// Sends one request and reads its response.
    pub fn request(&mut self, line: &[u8], payload: Option<&[u8]>) -> std::io::Result<Vec<Frame>> {
        self.send(line, payload)?;
        self.read_response()
    }
}

/// A frame line without its `[ID:<tag>] ` prefix.
pub fn strip_tag(line: &[u8]) -> &[u8] {
    if line.starts_with(b"[ID:")
        && let Some(end) = line.iter().position(|&b| b == b']')
        && line.get(end + 1) == Some(&b' ')
    {
        return &line[end + 2..];
    }
    line
}

/// True when the last frame of a response is an `ERROR` line.
pub fn is_error(frames: &[Frame]) -> bool {
    matches!(frames.last(), Some(Frame::Line(l)) if strip_tag(l).starts_with(b"ERROR "))
}
