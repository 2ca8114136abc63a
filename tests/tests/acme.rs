//! `tls: {acme}` against a real ACME CA (Debian's pebble, its DNS pointing every name at
//! 127.0.0.1): the certificate is obtained over HTTP-01 challenges Atlas answers on
//! `http_listen`, served by name, stored privately, kept across restarts, renewed without a
//! restart; a CA that cannot be reached leaves the node serving and retrying.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use atlas_tests::https::{curl, curl_raw};
use atlas_tests::pebble::Pebble;
use atlas_tests::{Node, assert_private_tree, free_port};

const NAMES: [&str; 2] = ["shop.example.com", "www.shop.example.com"];

fn acme_yaml(http_port: u16, directory: &str, directory_ca: &Path) -> String {
    format!(
        "http_listen: 127.0.0.1:{http_port}\ntls:\n  acme:\n    directory: {directory}\n    \
         directory_ca: {}\n    email: ops@example.com\n    domains: [{}]",
        directory_ca.display(),
        NAMES.join(", ")
    )
}

fn https_port(node: &Node) -> String {
    node.https_addr()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Whether `name` on the node's listener serves a certificate that chains to `root`.
fn trusted(node: &Node, name: &str, root: &Path) -> bool {
    let port = https_port(node);
    curl_raw(
        root,
        &format!("https://{name}:{port}/atlas/v1/health"),
        &["--resolve", &format!("{name}:{port}:127.0.0.1")],
    )
    .status
    .success()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The serial number of the certificate served for `name`.
fn served_serial(node: &Node, name: &str) -> String {
    let chain = Command::new("openssl")
        .args(["s_client", "-servername", name, "-connect"])
        .arg(node.https_addr())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    use std::io::Write;
    x509.stdin
        .take()
        .expect("stdin")
        .write_all(&chain.stdout)
        .expect("feed openssl x509");
    let out = x509.wait_with_output().expect("openssl x509");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn metric(node: &Node, root: &Path, line_prefix: &str) -> f64 {
    let port = https_port(node);
    let body = curl(
        root,
        &format!("https://{}:{port}/metrics", NAMES[0]),
        &["--resolve", &format!("{}:{port}:127.0.0.1", NAMES[0])],
    )
    .body;
    body.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_certificate_is_obtained_over_http01_stored_privately_and_kept_across_restarts() {
    let http_port = free_port();
    let pebble = Pebble::start(http_port, 3600);
    let root = pebble.issuing_root();
    let mut node = Node::start_with(&acme_yaml(
        http_port,
        &pebble.directory(),
        &pebble.directory_ca(),
    ));
    // Until the CA has issued, the placeholder is served (not trusted by pebble's root).
    wait_until(
        "the CA's certificate is served",
        Duration::from_secs(60),
        || trusted(&node, NAMES[0], &root),
    );
    assert!(trusted(&node, NAMES[1], &root), "every name of the order");
    assert_eq!(
        metric(&node, &root, "atlas_acme_orders_total{result=\"ok\"} "),
        1.0
    );
    assert!(
        metric(
            &node,
            &root,
            "atlas_acme_certificate_expiry_timestamp_seconds "
        ) > 0.0
    );
    // Pebble validated the challenge by fetching it from Atlas: its log names the name.
    assert!(pebble.log().contains(NAMES[0]), "{}", pebble.log());
    // Stored 0600 in a 0700 directory: key and chain (one file per CA), the account.
    let acme_dir = node.dir().join("data/tls/acme");
    let mut files: Vec<String> = std::fs::read_dir(&acme_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        2,
        "one certificate file and one account: {files:?}"
    );
    let certificate = files
        .iter()
        .find(|f| f.ends_with(".pem"))
        .expect("a .pem file");
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("account-") && f.ends_with(".json")),
        "{files:?}"
    );
    let stored = std::fs::read_to_string(acme_dir.join(certificate)).unwrap();
    assert!(stored.contains("PRIVATE KEY") && stored.matches("BEGIN CERTIFICATE").count() >= 2);
    assert_private_tree(&node.dir().join("data"));
    // The plain listener answers challenges only for tokens in flight; the rest redirects.
    let plain = |path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Host: {}", NAMES[0])])
            .arg(format!("http://127.0.0.1:{http_port}{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(plain("/.well-known/acme-challenge/not-a-token"), "404");
    assert_eq!(plain("/shop"), "308");
    // A restart serves the stored certificate at once, without a new order.
    let orders = || pebble.log().matches("POST /order-plz").count();
    assert_eq!(orders(), 1, "{}", pebble.log());
    let serial = served_serial(&node, NAMES[0]);
    node.terminate();
    node.restart();
    assert!(
        trusted(&node, NAMES[0], &root),
        "served right after the restart"
    );
    assert_eq!(served_serial(&node, NAMES[0]), serial);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        orders(),
        1,
        "no order after a restart with a current certificate"
    );
}

#[test]
fn a_certificate_is_renewed_before_it_expires_without_a_restart() {
    let http_port = free_port();
    // Certificates valid 30 s: renewed once 10 s are left.
    let pebble = Pebble::start(http_port, 30);
    let root = pebble.issuing_root();
    let node = Node::start_with(&acme_yaml(
        http_port,
        &pebble.directory(),
        &pebble.directory_ca(),
    ));
    wait_until("the first certificate", Duration::from_secs(60), || {
        trusted(&node, NAMES[0], &root)
    });
    let first = served_serial(&node, NAMES[0]);
    assert!(!first.is_empty());
    let expiry = metric(
        &node,
        &root,
        "atlas_acme_certificate_expiry_timestamp_seconds ",
    );
    wait_until("a renewed certificate", Duration::from_secs(60), || {
        let now = served_serial(&node, NAMES[0]);
        !now.is_empty() && now != first
    });
    // Renewed before the first one expired (a third of its 30 s left).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now < expiry,
        "renewed at {now}, the first expired at {expiry}"
    );
    assert!(
        trusted(&node, NAMES[0], &root),
        "the renewed one chains too"
    );
    assert!(metric(&node, &root, "atlas_acme_orders_total{result=\"ok\"} ") >= 2.0);
}

#[test]
fn an_unreachable_ca_leaves_the_node_serving_and_retrying() {
    let http_port = free_port();
    let ca_dir = tempfile::tempdir().unwrap();
    let (ca, _) = atlas_tests::https::openssl_cert(ca_dir.path(), "ca", "127.0.0.1");
    let nowhere = format!("https://127.0.0.1:{}/dir", free_port());
    let node = Node::start_with(&acme_yaml(http_port, &nowhere, Path::new(&ca)));
    // Failed, and retried after the first backoff (10 s).
    wait_until("a retried failure", Duration::from_secs(40), || {
        node.stderr_text()
            .matches("ACME certificate order failed")
            .count()
            >= 2
    });
    let log = node.stderr_text();
    assert!(log.contains(&nowhere), "the CA is named: {log}");
    assert!(log.contains("retry_in_s"), "the retry is announced: {log}");
    // The placeholder keeps the listener up; the node serves.
    let port = https_port(&node);
    let out = curl_raw(
        Path::new(&ca),
        &format!("https://{}:{port}/atlas/v1/health", NAMES[0]),
        &["-k", "--resolve", &format!("{}:{port}:127.0.0.1", NAMES[0])],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.client().put("t.k", "v");
}
