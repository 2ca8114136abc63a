//! Minimal clients for the key-value peers, each over one connection: Atlas (its socket
//! protocol), Redis (RESP over TCP) and etcd (the v3 JSON gateway over HTTP/1.1 keep-alive,
//! linearizable reads by default).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use atlas::client::{Client, Frame, is_error};

/// One connection to a store under test.
pub trait Kv: Send {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String>;
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
}

/// How to open connections to a store (one per client thread).
#[derive(Clone, Debug)]
pub enum Target {
    Atlas(PathBuf),
    Redis(u16),
    Etcd(u16),
    /// An etcd member's client URL on another address (`host`, port).
    EtcdAt(String, u16),
}

impl Target {
    pub fn connect(&self) -> Result<Box<dyn Kv>, String> {
        Ok(match self {
            Target::Atlas(socket) => Box::new(AtlasKv {
                client: Client::connect(socket, "bench").map_err(|e| e.to_string())?,
            }),
            Target::Redis(port) => Box::new(RedisKv::connect(*port)?),
            Target::Etcd(port) => Box::new(EtcdKv::connect("127.0.0.1", *port)?),
            Target::EtcdAt(host, port) => Box::new(EtcdKv::connect(host, *port)?),
        })
    }
}

pub struct AtlasKv {
    client: Client,
}

impl Kv for AtlasKv {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        // Values go as blobs once they are large or binary; small text values inline.
        let frames = if value.len() > 4096 {
            let line = format!("KEY BLOB SET {key} {}", value.len());
            self.client.request(line.as_bytes(), Some(value))
        } else {
            let mut line = format!("KEY PUT {key} ").into_bytes();
            line.extend_from_slice(value);
            self.client.request(&line, None)
        }
        .map_err(|e| e.to_string())?;
        if is_error(&frames) {
            return Err(format!("{frames:?}"));
        }
        Ok(())
    }

    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let frames = self
            .client
            .request(format!("KEY GET {key}").as_bytes(), None)
            .map_err(|e| e.to_string())?;
        match frames.first() {
            Some(Frame::Line(l)) if l.starts_with(b"VALUE:") => Ok(Some(l[6..].to_vec())),
            Some(Frame::Line(l)) if l == b"NOT_FOUND" => Ok(None),
            Some(Frame::Line(l))
                if l.starts_with(b"ERROR WARN") && l.windows(12).any(|w| w == b"holds a blob") =>
            {
                // A blob: read it as one.
                let frames = self
                    .client
                    .request(format!("KEY BLOB GET {key}").as_bytes(), None)
                    .map_err(|e| e.to_string())?;
                Ok(frames.into_iter().find_map(|f| match f {
                    Frame::Blob(b) => Some(b),
                    _ => None,
                }))
            }
            _ => Err(format!("{frames:?}")),
        }
    }
}

pub struct RedisKv {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RedisKv {
    fn connect(port: u16) -> Result<RedisKv, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(RedisKv {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn command(&mut self, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, String> {
        let mut out = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out).map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        match line.as_bytes().first() {
            Some(b'+') => Ok(None),
            Some(b'$') => {
                let n: i64 = line[1..].trim().parse().map_err(|_| line.clone())?;
                if n < 0 {
                    return Ok(None);
                }
                let mut buf = vec![0; n as usize + 2];
                self.reader
                    .read_exact(&mut buf)
                    .map_err(|e| e.to_string())?;
                buf.truncate(n as usize);
                Ok(Some(buf))
            }
            _ => Err(format!("redis: {line}")),
        }
    }
}

impl Kv for RedisKv {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        self.command(&[b"SET", key.as_bytes(), value]).map(|_| ())
    }

    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.command(&[b"GET", key.as_bytes()])
    }
}

pub struct EtcdKv {
    host: String,
    port: u16,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EtcdKv {
    fn connect(host: &str, port: u16) -> Result<EtcdKv, String> {
        let stream = TcpStream::connect((host, port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(EtcdKv {
            host: host.to_string(),
            port,
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn post(&mut self, path: &str, body: &str) -> Result<serde_json::Value, String> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.host,
            self.port,
            body.len()
        );
        self.writer
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut status = String::new();
        self.reader
            .read_line(&mut status)
            .map_err(|e| e.to_string())?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut header = String::new();
            self.reader
                .read_line(&mut header)
                .map_err(|e| e.to_string())?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                self.reader
                    .read_line(&mut size)
                    .map_err(|e| e.to_string())?;
                let n = usize::from_str_radix(size.trim(), 16).map_err(|_| size.clone())?;
                let mut chunk = vec![0; n + 2];
                self.reader
                    .read_exact(&mut chunk)
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body
        } else {
            let mut body = vec![0; length.unwrap_or(0)];
            self.reader
                .read_exact(&mut body)
                .map_err(|e| e.to_string())?;
            body
        };
        if !status.contains(" 200") {
            return Err(format!(
                "etcd {path}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

impl Kv for EtcdKv {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        let body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)});
        self.post("/v3/kv/put", &body.to_string()).map(|_| ())
    }

    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let body = serde_json::json!({"key": b64(key.as_bytes())});
        let answer = self.post("/v3/kv/range", &body.to_string())?;
        Ok(answer["kvs"][0]["value"]
            .as_str()
            .map(|v| v.as_bytes().to_vec()))
    }
}

/// Standard base64 (the etcd gateway's encoding of bytes).
pub fn b64(input: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(super::b64(b""), "");
        assert_eq!(super::b64(b"f"), "Zg==");
        assert_eq!(super::b64(b"fo"), "Zm8=");
        assert_eq!(super::b64(b"foo"), "Zm9v");
        assert_eq!(super::b64(b"foobar"), "Zm9vYmFy");
    }
}
