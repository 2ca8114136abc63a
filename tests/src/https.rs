//! HTTPS requests through the real `curl` binary (rustls on the server side, curl's TLS on the
//! client side: two independent stacks), and a tiny upstream HTTP server for proxy tests.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A finished curl request.
#[derive(Debug)]
pub struct CurlResponse {
    pub status: u16,
    pub http_version: String,
    pub body: String,
    pub headers: String,
}

impl CurlResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Runs curl against `url` trusting `ca`; `args` are extra curl arguments. Panics if curl
/// cannot complete the exchange (use [`curl_raw`] to look at failures).
pub fn curl(ca: &Path, url: &str, args: &[&str]) -> CurlResponse {
    let out = curl_raw(ca, url, args);
    assert!(
        out.status.success(),
        "curl {url} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, trailer) = text.rsplit_once("\n@@").expect("curl trailer");
    let mut fields = trailer.split_whitespace();
    let status = fields
        .next()
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let http_version = fields.next().unwrap_or_default().to_string();
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    CurlResponse {
        status,
        http_version,
        body: body.to_string(),
        headers: headers.to_ascii_lowercase(),
    }
}

/// curl's raw output; stdout is headers, body and `\n@@<code> <version>`.
pub fn curl_raw(ca: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["-w", "\n@@%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl (install the curl package)")
}

/// An HTTP/1.1 upstream on loopback that answers every request with `upstream=<name>` and
/// the request head it received (lower-cased), then closes the connection.
pub fn spawn_upstream(name: &'static str) -> u16 {
    spawn_upstream_with(name, false)
}

/// As [`spawn_upstream`], but `/healthz` is answered `503` when `unhealthy` (every other
/// path still `200`): an upstream only an HTTP health check can tell is down.
pub fn spawn_upstream_with(name: &'static str, unhealthy: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => head.push_str(&line.to_ascii_lowercase()),
                }
            }
            let status = if unhealthy && head.starts_with("get /healthz") {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let body = format!("upstream={name}\n{head}");
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

/// A self-signed certificate for `name` (a DNS name, or an IP address) made by the
/// `openssl` CLI, as (cert, key) files `<dir>/<file>.crt` and `.key`.
pub fn openssl_cert(dir: &Path, file: &str, name: &str) -> (String, String) {
    let cert = dir.join(format!("{file}.crt")).display().to_string();
    let key = dir.join(format!("{file}.key")).display().to_string();
    let tmp_cert = format!("{cert}.new");
    let tmp_key = format!("{key}.new");
    let san = match name.parse::<std::net::IpAddr>() {
        Ok(_) => format!("subjectAltName=IP:{name}"),
        Err(_) => format!("subjectAltName=DNS:{name}"),
    };
    let subject = format!("/CN={name}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subject,
        "-addext",
        &san,
        "-keyout",
        &tmp_key,
        "-out",
        &tmp_cert,
    ]);
    // Renamed into place, key first: a reload never sees a half-written file.
    std::fs::rename(&tmp_key, &key).unwrap();
    std::fs::rename(&tmp_cert, &cert).unwrap();
    (cert, key)
}

/// The `openssl` CLI with `args`, which must succeed.
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
