//! Minimal clients for the key-value peers, each over one connection: Atlas (its socket
//! protocol on the Unix socket), Redis (RESP over TCP or over its Unix socket) and etcd
//! (its native gRPC API over HTTP/2, linearizable reads by default).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

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
    /// Redis on its Unix socket (the transport Atlas's clients use).
    RedisUnix(PathBuf),
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
            Target::RedisUnix(path) => Box::new(RedisKv::connect_unix(path)?),
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

/// RESP over one connection: TCP or the Unix socket.
pub struct RedisKv {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
}

impl RedisKv {
    fn connect(port: u16) -> Result<RedisKv, String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(RedisKv::over(stream, writer))
    }

    fn connect_unix(path: &Path) -> Result<RedisKv, String> {
        let stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(RedisKv::over(stream, writer))
    }

    fn over(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> RedisKv {
        RedisKv {
            reader: BufReader::new(Box::new(reader)),
            writer: Box::new(writer),
        }
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

/// etcd's native v3 API: gRPC (HTTP/2, length-prefixed protobuf) on one connection, one
/// request at a time, as `etcdctl` and the Go client speak it. Reads are linearizable (the
/// default of `Range`). Only the two calls and the fields the load needs are encoded.
pub struct EtcdKv {
    runtime: tokio::runtime::Runtime,
    client: h2::client::SendRequest<Bytes>,
    authority: String,
}

impl EtcdKv {
    fn connect(host: &str, port: u16) -> Result<EtcdKv, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let authority = format!("{host}:{port}");
        let client = runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|e| e.to_string())?;
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
            let (client, connection) = h2::client::handshake(tcp)
                .await
                .map_err(|e| e.to_string())?;
            // Driven whenever the runtime runs (inside each request's `block_on`).
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, String>(client)
        })?;
        Ok(EtcdKv {
            runtime,
            client,
            authority,
        })
    }

    /// One unary call: `message` framed (no compression), the answer's message unframed.
    fn call(&mut self, method: &str, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let uri = format!("http://{}/etcdserverpb.KV/{method}", self.authority);
        let client = self.client.clone();
        let deadline = Duration::from_secs(60);
        self.runtime.block_on(async move {
            let call = async {
                let mut client = client.ready().await.map_err(|e| e.to_string())?;
                let request = http::Request::builder()
                    .method("POST")
                    .uri(uri)
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(())
                    .map_err(|e| e.to_string())?;
                let (response, mut body) = client
                    .send_request(request, false)
                    .map_err(|e| e.to_string())?;
                let mut framed = Vec::with_capacity(message.len() + 5);
                framed.push(0);
                framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
                framed.extend_from_slice(&message);
                body.send_data(Bytes::from(framed), true)
                    .map_err(|e| e.to_string())?;
                let response = response.await.map_err(|e| e.to_string())?;
                let (head, mut incoming) = response.into_parts();
                let mut data = Vec::new();
                while let Some(chunk) = incoming.data().await {
                    let chunk = chunk.map_err(|e| e.to_string())?;
                    let _ = incoming.flow_control().release_capacity(chunk.len());
                    data.extend_from_slice(&chunk);
                }
                let trailers = incoming.trailers().await.map_err(|e| e.to_string())?;
                // A failure may come as trailers or, with no message, in the headers.
                let status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .or_else(|| head.headers.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("missing")
                    .to_string();
                if head.status != 200 || status != "0" {
                    return Err(format!(
                        "etcd {method}: HTTP {} grpc-status {status}",
                        head.status
                    ));
                }
                match data.split_first_chunk::<5>() {
                    Some((&[0, a, b, c, d], rest))
                        if rest.len() == u32::from_be_bytes([a, b, c, d]) as usize =>
                    {
                        Ok(rest.to_vec())
                    }
                    _ => Err(format!("etcd {method}: a malformed gRPC message")),
                }
            };
            tokio::time::timeout(deadline, call)
                .await
                .map_err(|_| format!("etcd {method}: no answer within {deadline:?}"))?
        })
    }
}

impl Kv for EtcdKv {
    fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        // PutRequest { key = 1, value = 2 }
        let mut message = Vec::new();
        proto::bytes_field(&mut message, 1, key.as_bytes());
        proto::bytes_field(&mut message, 2, value);
        self.call("Put", message).map(|_| ())
    }

    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        // RangeRequest { key = 1 } -> RangeResponse { kvs = 2: KeyValue { value = 5 } }
        let mut message = Vec::new();
        proto::bytes_field(&mut message, 1, key.as_bytes());
        let answer = self.call("Range", message)?;
        let first = proto::fields(&answer)?
            .into_iter()
            .find(|(number, _)| *number == 2);
        match first {
            None => Ok(None),
            Some((_, kv)) => Ok(proto::fields(kv)?
                .into_iter()
                .find(|(number, _)| *number == 5)
                .map(|(_, value)| value.to_vec())),
        }
    }
}

/// The little of protobuf's wire format the etcd calls need.
mod proto {
    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn read_varint(input: &mut &[u8]) -> Result<u64, String> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = input.split_first().ok_or("a cut varint")?;
            *input = rest;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(n);
            }
        }
        Err("a varint over 64 bits".into())
    }

    /// A length-delimited field (bytes, string or message).
    pub fn bytes_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    /// The length-delimited fields of a message, by number, in order (others skipped).
    pub fn fields(mut input: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let key = read_varint(&mut input)?;
            let skip = match key & 7 {
                0 => {
                    read_varint(&mut input)?;
                    0
                }
                1 => 8,
                5 => 4,
                2 => {
                    let len =
                        usize::try_from(read_varint(&mut input)?).map_err(|e| e.to_string())?;
                    if len > input.len() {
                        return Err("a field longer than its message".into());
                    }
                    let (field, rest) = input.split_at(len);
                    out.push((key >> 3, field));
                    input = rest;
                    0
                }
                other => return Err(format!("wire type {other}")),
            };
            input = input.get(skip..).ok_or("a cut fixed-size field")?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn protobuf_fields_round_trip_and_skip_what_is_not_asked_for() {
        let mut kv = Vec::new();
        super::proto::bytes_field(&mut kv, 1, b"key");
        kv.extend_from_slice(&[0x10, 0x96, 0x01]); // create_revision = 150 (a varint)
        super::proto::bytes_field(&mut kv, 5, &[7u8; 300]);
        let mut response = Vec::new();
        super::proto::bytes_field(&mut response, 1, b"header");
        super::proto::bytes_field(&mut response, 2, &kv);
        let fields = super::proto::fields(&response).unwrap();
        assert_eq!(fields[1].0, 2);
        let inner = super::proto::fields(fields[1].1).unwrap();
        assert_eq!(inner, vec![(1, &b"key"[..]), (5, &[7u8; 300][..])]);
        assert!(super::proto::fields(&[0x0a, 0x05, 1]).is_err());
    }
}
