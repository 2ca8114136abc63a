//! A real ACME CA for the tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS
//! server (every name resolves to 127.0.0.1, no AAAA), so the challenges it validates reach
//! the node under test on loopback. No validation shortcut: `PEBBLE_VA_ALWAYS_VALID` is not
//! set; only pebble's random validation sleeps are turned off.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;
use crate::https::{curl_raw, openssl, openssl_cert};

/// A certificate for 127.0.0.1 signed by a CA of its own (`test-ca.crt` under `dir`): a
/// self-signed CA certificate cannot be a server's own (webpki refuses a CA as end entity).
fn leaf_of_a_test_ca(dir: &Path) -> (String, String) {
    let (ca, ca_key) = openssl_cert(dir, "test-ca", "test-ca.invalid");
    let path = |f: &str| dir.join(f).display().to_string();
    let (csr, cert, key, ext) = (
        path("pebble.csr"),
        path("pebble.crt"),
        path("pebble.key"),
        path("pebble.ext"),
    );
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext");
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &key,
        "-out",
        &csr,
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (cert, key)
}

pub struct Pebble {
    dir: TempDir,
    children: Vec<Child>,
    port: u16,
    management: u16,
}

impl Pebble {
    /// Starts the DNS server and the CA; pebble validates HTTP-01 challenges on
    /// `127.0.0.1:<http_port>` and issues certificates valid for `validity` seconds.
    pub fn start(http_port: u16, validity: u64) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("atlas-pebble-")
            .tempdir()
            .expect("temp dir");
        let (dns, dns_management) = (free_port(), free_port());
        let (port, management) = (free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).expect("log file");
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("run pebble-challtestsrv (install the pebble package)");
        let (cert, key) = leaf_of_a_test_ca(dir.path());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble.json");
        let ca = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("run pebble (install the pebble package)");
        let pebble = Pebble {
            dir,
            children: vec![dns_server, ca],
            port,
            management,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !curl_raw(&pebble.directory_ca(), &pebble.directory(), &[])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pebble
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA file that verifies pebble's own HTTPS listener.
    pub fn directory_ca(&self) -> PathBuf {
        self.dir.path().join("test-ca.crt")
    }

    /// The root that issued certificates chain to (made fresh by every pebble), saved
    /// as a PEM file.
    pub fn issuing_root(&self) -> PathBuf {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let out = curl_raw(&self.directory_ca(), &url, &[]);
        assert!(out.status.success(), "fetch pebble's root");
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("a PEM root");
        let end = text.find("-----END CERTIFICATE-----").expect("PEM end") + 25;
        let path = self.dir.path().join("root.pem");
        std::fs::write(&path, format!("{}\n", &text[start..end])).expect("write root.pem");
        path
    }

    /// What pebble logged (each order, validation and issuance).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- pebble log ---\n{}", self.log());
        }
    }
}
