//! The HTTPS listener of a real node: TLS with the internal CA, health over HTTP/1.1 and
//! HTTP/2, metrics, authenticated cluster endpoints, JSON errors, and edge-proxy routes to real
//! upstreams on loopback.

use std::process::Command;

use atlas_tests::https::{curl, curl_raw, openssl_cert, spawn_upstream, spawn_upstream_with};
use atlas_tests::{Node, atlas_bin, free_port, run_with_input, write_config};

fn url(node: &Node, path: &str) -> String {
    format!("https://{}{path}", node.https_addr())
}

#[test]
fn health_over_http1_and_http2_with_the_internal_ca() {
    let node = Node::start();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let r = curl(&node.ca_path(), &url(&node, "/atlas/v1/health"), &[flag]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.http_version, version, "{r:?}");
        let body = r.json();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["node_id"], 1);
        assert_eq!(body["region"], "local");
        assert!(body["version"].is_string());
        assert!(
            r.headers.contains("content-type: application/json"),
            "{}",
            r.headers
        );
    }
    // Several requests on one h2 connection (the body of each must be fully read).
    let u = url(&node, "/atlas/v1/health");
    let out = curl_raw(&node.ca_path(), &u, &["--http2", &u, &u]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_ca_certificate_is_reused_across_restarts_and_shown_by_the_cli() {
    let mut node = Node::start();
    let before = std::fs::read(node.ca_path()).expect("ca.crt");
    node.terminate();
    node.restart();
    assert_eq!(
        std::fs::read(node.ca_path()).expect("ca.crt"),
        before,
        "CA replaced on restart"
    );
    assert_eq!(
        curl(&node.ca_path(), &url(&node, "/atlas/v1/health"), &[]).status,
        200
    );

    let out = Command::new(atlas_bin())
        .args(["ca", "show", "-c"])
        .arg(node.config_path())
        .output()
        .expect("atlas ca show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&String::from_utf8_lossy(&before).into_owned()),
        "{text}"
    );
    let fingerprint = text.lines().last().expect("fingerprint line");
    assert!(
        fingerprint.starts_with("SHA-256 fingerprint: "),
        "{fingerprint}"
    );
    // Cross-check with openssl when it is installed.
    if let Ok(openssl) = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(node.ca_path())
        .output()
        && openssl.status.success()
    {
        let theirs = String::from_utf8_lossy(&openssl.stdout);
        let theirs = theirs.trim().rsplit('=').next().unwrap_or_default();
        assert_eq!(
            fingerprint.trim_start_matches("SHA-256 fingerprint: "),
            theirs
        );
    }
}

#[test]
fn tls_below_1_2_is_refused() {
    let node = Node::start();
    let out = curl_raw(
        &node.ca_path(),
        &url(&node, "/atlas/v1/health"),
        &["--tlsv1.0", "--tls-max", "1.1"],
    );
    assert!(!out.status.success(), "a TLS 1.1 handshake succeeded");
}

#[test]
fn metrics_are_prometheus_text_with_atlas_families() {
    let node = Node::start();
    let mut c = node.client();
    c.put("metrics.k", "v");
    c.get("metrics.k");
    c.request("FOO");
    let r = curl(&node.ca_path(), &url(&node, "/metrics"), &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.headers
    );
    for family in [
        "atlas_socket_commands_total{command=\"KEY PUT\",result=\"ok\"} 1",
        "atlas_socket_command_duration_seconds_bucket",
        "atlas_connections_open{listener=\"socket\"} 1",
        "atlas_received_bytes_total",
        "atlas_errors_total{kind=\"unknown_command\"} 1",
        "atlas_build_info{version=",
        "atlas_rocksdb_live_data_bytes",
        "atlas_rocksdb_memtable_bytes",
        "atlas_rocksdb_pending_compaction_bytes",
        "atlas_rocksdb_block_cache_hit_ratio",
        "atlas_consensus_ballots_total 0",
        "atlas_consensus_owned_tables",
        "process_resident_memory_bytes",
    ] {
        assert!(r.body.contains(family), "missing {family} in:\n{}", r.body);
    }
    lint_with_promtool(&r.body);
}

/// `promtool check metrics` must report nothing. CI installs promtool (Debian's prometheus).
fn lint_with_promtool(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is required under CI"
        );
        eprintln!("promtool not installed: lint skipped");
        return;
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

#[test]
fn metrics_listen_serves_the_same_registry_in_plaintext() {
    let port = free_port();
    let node = Node::start_with(&format!("metrics_listen: 127.0.0.1:{port}"));
    node.client().put("m.k", "v");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("atlas_socket_commands_total"), "{text}");
}

#[test]
fn cluster_endpoints_demand_credentials() {
    // Without `peer_mtls` (on by default in a cluster, tested in `cluster.rs`) the
    // credential alone opens the consensus transport too.
    let node = Node::start_with("credentials: correct-horse-battery\npeer_mtls: false");
    for path in ["/atlas/v1/join", "/atlas/v1/consensus"] {
        let none = curl(
            &node.ca_path(),
            &url(&node, path),
            &["-X", "POST", "-d", "{}"],
        );
        assert_eq!(none.status, 401, "{none:?}");
        assert_eq!(none.json()["error"], "unauthorized");
        let wrong = curl(
            &node.ca_path(),
            &url(&node, path),
            &[
                "-X",
                "POST",
                "-H",
                "Authorization: Bearer wrong-horse",
                "-d",
                "{}",
            ],
        );
        assert_eq!(wrong.status, 401);
        let right = curl(
            &node.ca_path(),
            &url(&node, path),
            &[
                "-X",
                "POST",
                "-H",
                "Authorization: Bearer correct-horse-battery",
                "-d",
                "{}",
            ],
        );
        assert_ne!(right.status, 401, "{right:?}");
    }
    let metrics = curl(&node.ca_path(), &url(&node, "/metrics"), &[]);
    assert!(
        metrics
            .body
            .contains("atlas_auth_failures_total{endpoint=\"join\"} 2"),
        "{}",
        metrics.body
    );
    assert!(
        !node.stderr_text().contains("wrong-horse"),
        "a presented secret was logged"
    );
}

#[test]
fn guessing_cluster_credentials_is_throttled_per_address() {
    let node = Node::start_with("credentials: correct-horse-battery");
    let post = |path: &str, secret: &str| {
        curl(
            &node.ca_path(),
            &url(&node, path),
            &[
                "-X",
                "POST",
                "-H",
                &format!("Authorization: Bearer {secret}"),
                "-d",
                "{}",
            ],
        )
    };
    // Ten wrong guesses are answered 401; the next ones 429, on every cluster endpoint, and
    // even the right secret waits out the block (or guessing would not be slowed at all).
    let paths = ["/atlas/v1/join", "/atlas/v1/remove", "/atlas/v1/snapshot"];
    for i in 0..10 {
        let wrong = post(paths[i % 3], &format!("guess-{i}"));
        assert_eq!(wrong.status, 401, "guess {i}: {wrong:?}");
    }
    let blocked = post("/atlas/v1/join", "guess-10");
    assert_eq!(blocked.status, 401, "the eleventh is refused, then blocks");
    for path in paths {
        let refused = post(path, "correct-horse-battery");
        assert_eq!(refused.status, 429, "{path}: {refused:?}");
        assert_eq!(refused.json()["error"], "too_many_requests");
        assert!(refused.body.contains("retry in"), "{refused:?}");
    }
    // The block ends (1 s for the first), and the right secret is served again.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let right = post("/atlas/v1/join", "correct-horse-battery");
    assert!(right.status != 401 && right.status != 429, "{right:?}");
}

#[test]
fn unknown_paths_methods_and_large_bodies_get_json_errors() {
    let node = Node::start();
    let ca = node.ca_path();
    let r = curl(&ca, &url(&node, "/atlas/v1/nothing"), &[]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
    let r = curl(&ca, &url(&node, "/atlas/v1/health"), &["-X", "POST"]);
    assert_eq!(r.status, 405);
    assert!(r.headers.contains("allow: get"), "{}", r.headers);
    // No route configured: other paths are 404 too.
    let r = curl(&ca, &url(&node, "/some/app"), &[]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
    // A body over the limit is refused without reading it all, before any login.
    let big = node.dir().join("big.bin");
    std::fs::write(&big, vec![b'x'; 2 * 1024 * 1024]).expect("write");
    let data = format!("@{}", big.display());
    let r = curl(
        &ca,
        &url(&node, "/api/v1/auth/login"),
        &["--http1.1", "-X", "POST", "--data-binary", &data],
    );
    assert_eq!(r.status, 413, "{r:?}");
    // The server is still fine.
    assert_eq!(curl(&ca, &url(&node, "/atlas/v1/health"), &[]).status, 200);
}

#[test]
fn routes_proxy_to_upstreams_with_forwarding_headers() {
    let app_a = spawn_upstream("a");
    let app_b = spawn_upstream("b");
    let down = free_port();
    let node = Node::start_with(&format!(
        "routes:\n  - path_prefix: /app/\n    upstreams: [\"127.0.0.1:{app_a}\", \"127.0.0.1:{app_b}\"]\n  - path_prefix: /down/\n    upstreams: [\"127.0.0.1:{down}\"]\n    connect_timeout_ms: 500\n  - host: only.example\n    path_prefix: /\n    upstreams: [\"127.0.0.1:{app_b}\"]"
    ));
    let ca = node.ca_path();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = curl(&ca, &url(&node, "/app/hello"), &["--http2"]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("get /app/hello http/1.1"), "{}", r.body);
        assert!(r.body.contains("x-forwarded-for: 127.0.0.1"), "{}", r.body);
        assert!(r.body.contains("x-forwarded-proto: https"), "{}", r.body);
        seen.push(r.body.lines().next().unwrap_or_default().to_string());
    }
    assert!(
        seen.contains(&"upstream=a".to_string()) && seen.contains(&"upstream=b".to_string()),
        "round robin: {seen:?}"
    );
    // What a client claims about earlier hops is not passed on.
    let spoofed = curl(
        &ca,
        &url(&node, "/app/spoof"),
        &[
            "-H",
            "X-Forwarded-For: 6.6.6.6",
            "-H",
            "Forwarded: for=6.6.6.6",
        ],
    );
    assert!(!spoofed.body.contains("6.6.6.6"), "{}", spoofed.body);
    assert!(
        spoofed.body.contains("x-forwarded-for: 127.0.0.1"),
        "{}",
        spoofed.body
    );
    // Atlas's own paths are never proxied.
    assert_eq!(
        curl(&ca, &url(&node, "/atlas/v1/health"), &[]).json()["status"],
        "ok"
    );
    // An upstream that is down: 502, and the server keeps serving.
    let r = curl(&ca, &url(&node, "/down/x"), &[]);
    assert_eq!(r.status, 502, "{r:?}");
    // Host routes: only requests for that host match.
    let host_url = format!(
        "https://only.example:{}/x",
        node.https_addr().rsplit(':').next().unwrap_or_default()
    );
    let resolve = format!(
        "only.example:{}:127.0.0.1",
        node.https_addr().rsplit(':').next().unwrap_or_default()
    );
    let r = curl_raw(&ca, &host_url, &["--resolve", &resolve, "-k"]);
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("upstream=b"),
        "{}",
        String::from_utf8_lossy(&r.stdout)
    );
    assert_eq!(curl(&ca, &url(&node, "/x"), &[]).status, 404);
}

#[test]
fn tls_files_that_do_not_parse_are_a_clear_start_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("broken.pem");
    std::fs::write(&cert, "not pem").expect("write");
    let config = write_config(
        dir.path(),
        &format!("tls: {{cert: {}, key: {}}}", cert.display(), cert.display()),
    );
    let out = run_with_input(
        Command::new(atlas_bin())
            .arg("serve")
            .arg("-c")
            .arg(&config),
        b"",
        std::time::Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.pem") && stderr.contains("atlas.tls"),
        "{stderr}"
    );
}

/// `plugin/examples/embed.rs`: a plain user proxy whose YAML gains an `atlas:` section.
#[test]
fn atlas_embedded_in_a_users_own_proxy() {
    let example = atlas_bin()
        .parent()
        .expect("target dir")
        .join("examples")
        .join("embed");
    assert!(
        example.is_file(),
        "build the example first: {}",
        example.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "");
    let upstream = spawn_upstream("user-app");
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("embed.log")).expect("log");
    let mut child = Command::new(&example)
        .arg("-c")
        .arg(&config)
        .env("EMBED_LISTEN", &listen)
        .env("EMBED_UPSTREAM", format!("127.0.0.1:{upstream}"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the example");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !dir.path().join("atlas.sock").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "embedded atlas did not start"
            );
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "example exited with {status}: {}",
                    std::fs::read_to_string(dir.path().join("embed.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Kill(child)
    };
    let get = |path: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--retry",
                "20",
                "--retry-connrefused",
                "--retry-delay",
                "0",
            ])
            .arg(format!("http://{listen}{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(get("/atlas/v1/health").contains("\"status\":\"ok\""));
    assert!(get("/anything").starts_with("upstream=user-app"));
    // The socket of the embedded engine works too.
    let mut c = atlas_tests::Client::connect_ready(&dir.path().join("atlas.sock"));
    c.put("embedded.k", "v");
    assert_eq!(c.request("KEY GET embedded.k"), ["VALUE:v", "OK"]);
}

#[test]
fn metrics_can_need_a_token_and_the_nas_api_can_be_off() {
    let node = Node::start_with("metrics_token: metrics-token-1234567\nnas: {enabled: false}");
    let without = curl(&node.ca_path(), &url(&node, "/metrics"), &[]);
    assert_eq!(without.status, 401, "{without:?}");
    assert!(without.body.contains("metrics_token"), "{without:?}");
    let wrong = curl(
        &node.ca_path(),
        &url(&node, "/metrics"),
        &["-H", "Authorization: Bearer not-the-token-at-all"],
    );
    assert_eq!(wrong.status, 401);
    let with = curl(
        &node.ca_path(),
        &url(&node, "/metrics"),
        &["-H", "Authorization: Bearer metrics-token-1234567"],
    );
    assert_eq!(with.status, 200, "{with:?}");
    assert!(
        with.body
            .contains("atlas_auth_failures_total{endpoint=\"metrics\"} 2"),
        "{}",
        with.body
    );
    let nas = curl(
        &node.ca_path(),
        &url(&node, "/api/v1/auth/login"),
        &[
            "-X",
            "POST",
            "-d",
            r#"{"username": "admin", "password": "x"}"#,
        ],
    );
    assert_eq!(nas.status, 404, "{nas:?}");
    assert!(nas.body.contains("nas.enabled"), "{nas:?}");
    // The health endpoint stays open.
    assert_eq!(
        curl(&node.ca_path(), &url(&node, "/atlas/v1/health"), &[]).status,
        200
    );
}

/// Atlas answers only its own paths: `/atlas/…`, `/metrics` and the NAS API's prefix. A
/// site behind it keeps every other path, its own `/api/…` included, and the NAS API can
/// move to another prefix.
#[test]
fn atlas_paths_do_not_shadow_the_sites_behind_it() {
    let app = spawn_upstream("site");
    let node = Node::start_with(&format!(
        "nas: {{path_prefix: /admin/nas}}\nroutes:\n  - path_prefix: /\n    upstreams: [\"127.0.0.1:{app}\"]"
    ));
    let ca = node.ca_path();
    for path in [
        "/api/v1/users",
        "/api/v2/things",
        "/api",
        "/metricsx",
        "/atlasx/y",
    ] {
        let r = curl(&ca, &url(&node, path), &[]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(r.body.starts_with("upstream=site"), "{path}: {}", r.body);
        assert!(
            r.body.contains(&format!("get {path} http/1.1")),
            "{path}: {}",
            r.body
        );
    }
    // The NAS API under its prefix (a wrong password: 401 from the API itself).
    let login = curl(
        &ca,
        &url(&node, "/admin/nas/auth/login"),
        &[
            "-X",
            "POST",
            "-d",
            r#"{"username": "admin", "password": "not-the-password"}"#,
        ],
    );
    assert_eq!(login.status, 401, "{login:?}");
    let health = curl(&ca, &url(&node, "/admin/nas/health"), &[]);
    assert_eq!(health.status, 200, "{health:?}");
    // Its OpenAPI document names where it is served.
    let openapi = curl(&ca, &url(&node, "/admin/nas/openapi.json"), &[]);
    assert_eq!(openapi.status, 200, "{openapi:?}");
    assert_eq!(openapi.json()["servers"][0]["url"], "/admin/nas");
    // Atlas's own endpoints stay Atlas's.
    assert_eq!(curl(&ca, &url(&node, "/atlas/v1/health"), &[]).status, 200);
    let unknown = curl(&ca, &url(&node, "/atlas/v9/nothing"), &[]);
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert!(!unknown.body.contains("upstream=site"), "{unknown:?}");
    // With the NAS API off, its default prefix is the site's too.
    let off = Node::start_with(&format!(
        "nas: {{enabled: false}}\nroutes:\n  - path_prefix: /\n    upstreams: [\"127.0.0.1:{app}\"]"
    ));
    let r = curl(&off.ca_path(), &url(&off, "/api/v1/auth/login"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("upstream=site"), "{}", r.body);
}

#[test]
fn the_nas_api_can_have_a_listener_of_its_own() {
    let port = atlas_tests::free_port();
    let node = Node::start_with(&format!("nas: {{listen: 127.0.0.1:{port}}}"));
    let login = r#"{"username": "admin", "password": "not-the-password"}"#;
    // The main listener no longer serves it.
    let main = curl(
        &node.ca_path(),
        &url(&node, "/api/v1/auth/login"),
        &["-X", "POST", "-d", login],
    );
    assert_eq!(main.status, 404, "{main:?}");
    assert!(main.body.contains("nas.listen"), "{main:?}");
    // The NAS listener does (a wrong password: 401 from the API itself), with the same CA.
    let nas_url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !atlas_tests::https::curl_raw(&node.ca_path(), &nas_url("/api/v1/health"), &[])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the NAS listener never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let on_nas = curl(
        &node.ca_path(),
        &nas_url("/api/v1/auth/login"),
        &["-X", "POST", "-d", login],
    );
    assert_eq!(on_nas.status, 401, "{on_nas:?}");
    // and nothing else: no cluster endpoints, no health, no metrics there.
    for path in ["/atlas/v1/health", "/atlas/v1/join", "/metrics"] {
        let other = curl(&node.ca_path(), &nas_url(path), &[]);
        assert_eq!(other.status, 404, "{path}: {other:?}");
    }
}

/// `http_listen` answers plain HTTP with a `308` to the same host and path on the HTTPS
/// listener, for every method (a body is read first), and a client that follows it lands on
/// Atlas's HTTPS endpoints.
#[test]
fn plain_http_is_redirected_to_https() {
    let http_port = atlas_tests::free_port();
    let node = Node::start_with(&format!("http_listen: 127.0.0.1:{http_port}"));
    let https = url(&node, "");
    let https_port = https.rsplit(':').next().unwrap_or_default().to_string();
    let plain = |path: &str, args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "10", "-w"])
            .arg("%{http_code} %{redirect_url}")
            .args(args)
            .arg(format!("http://127.0.0.1:{http_port}{path}"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !plain("/", &[]).starts_with("308") {
        assert!(
            std::time::Instant::now() < deadline,
            "the plain-HTTP listener never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        plain("/some/page?x=1&y=2", &[]),
        format!("308 https://127.0.0.1:{https_port}/some/page?x=1&y=2")
    );
    assert_eq!(
        plain("/form", &["-H", "Host: shop.example:8080", "-d", "a=1"]),
        format!("308 https://shop.example:{https_port}/form")
    );
    assert_eq!(plain("/", &["-H", "Host: a b"]), "400 ");
    // Followed (curl keeps the method on a 308), it reaches the HTTPS endpoints.
    let followed = curl(
        &node.ca_path(),
        &format!("http://127.0.0.1:{http_port}/atlas/v1/health"),
        &["-L"],
    );
    assert_eq!(followed.status, 200, "{followed:?}");
    assert!(followed.body.contains("\"status\":\"ok\""), "{followed:?}");
}

/// `tls_certificates` are chosen by the name a client asks for (SNI); the internal leaf
/// serves the rest; a certificate whose files change is served without a restart.
#[test]
fn certificates_are_chosen_by_sni_and_reloaded_when_their_files_change() {
    let certs = tempfile::tempdir().unwrap();
    let (shop_cert, shop_key) = openssl_cert(certs.path(), "shop", "shop.example");
    let (blog_cert, blog_key) = openssl_cert(certs.path(), "blog", "blog.example");
    let node = Node::start_with(&format!(
        "tls_certificates:\n  - {{cert: {shop_cert}, key: {shop_key}}}\n  - {{cert: {blog_cert}, key: {blog_key}}}"
    ));
    let addr = node.https_addr();
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let named = |name: &str, ca: &str| {
        let out = curl_raw(
            std::path::Path::new(ca),
            &format!("https://{name}:{port}/atlas/v1/health"),
            &["--resolve", &format!("{name}:{port}:127.0.0.1")],
        );
        out.status.success()
    };
    assert!(named("shop.example", &shop_cert), "shop's own certificate");
    assert!(named("blog.example", &blog_cert), "blog's own certificate");
    assert!(!named("shop.example", &blog_cert), "not blog's for shop");
    // No name (or one no certificate has): the internal leaf.
    assert_eq!(
        curl(&node.ca_path(), &url(&node, "/atlas/v1/health"), &[]).status,
        200
    );
    // A new certificate for shop, written over the files: served within seconds.
    let old = std::fs::read_to_string(&shop_cert).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let (new_cert, _) = openssl_cert(certs.path(), "shop", "shop.example");
    assert_ne!(std::fs::read_to_string(&new_cert).unwrap(), old);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !named("shop.example", &new_cert) {
        assert!(
            std::time::Instant::now() < deadline,
            "the changed certificate was never served"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A broken change keeps the certificate in use (checked against a copy of it).
    let blog_ca = certs.path().join("blog-ca.crt").display().to_string();
    std::fs::copy(&blog_cert, &blog_ca).unwrap();
    std::fs::write(&blog_cert, "garbage").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        named("blog.example", &blog_ca),
        "the loaded certificate stays"
    );
    assert!(node_is_running(&node));
}

fn node_is_running(node: &Node) -> bool {
    curl(&node.ca_path(), &url(node, "/atlas/v1/health"), &[]).status == 200
}

/// An idempotent request whose upstream refuses the connection is sent to another upstream;
/// an upstream failing requests in a row is taken out of the route for a while, so even
/// requests that are not retried stop reaching it; both are counted per route and upstream.
#[test]
fn failed_connections_are_retried_elsewhere_and_failing_upstreams_taken_out() {
    let app = spawn_upstream("alive");
    let down = free_port();
    let node = Node::start_with(&format!(
        "routes:\n  - path_prefix: /r/\n    upstreams: [\"127.0.0.1:{down}\", \"127.0.0.1:{app}\"]\n    connect_timeout_ms: 500"
    ));
    let ca = node.ca_path();
    for i in 0..6 {
        let r = curl(&ca, &url(&node, &format!("/r/get{i}")), &[]);
        assert_eq!(r.status, 200, "GET {i}: {r:?}");
        assert!(r.body.starts_with("upstream=alive"), "{}", r.body);
    }
    // Round robin sent some of those to the dead upstream first: three failures in a row
    // took it out, so a POST (never retried) now reaches the live one every time.
    for i in 0..6 {
        let r = curl(
            &ca,
            &url(&node, &format!("/r/post{i}")),
            &["-X", "POST", "-d", "x=1"],
        );
        assert_eq!(r.status, 200, "POST {i}: {r:?}");
    }
    let metrics = curl(&ca, &url(&node, "/metrics"), &[]).body;
    let line = |needle: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{metrics}"))
            .to_string()
    };
    let dead = format!("upstream=\"127.0.0.1:{down}\"");
    let failed = line(&format!(
        "atlas_upstream_requests_total{{result=\"connect_failed\",route=\"*/r/\",{dead}}}"
    ));
    assert!(failed.ends_with(" 3"), "{failed}");
    let ejected = line(&format!(
        "atlas_upstream_ejections_total{{route=\"*/r/\",{dead}}}"
    ));
    assert!(ejected.ends_with(" 1"), "{ejected}");
    let ok = line(&format!(
        "atlas_upstream_requests_total{{result=\"ok\",route=\"*/r/\",upstream=\"127.0.0.1:{app}\"}}"
    ));
    assert!(ok.ends_with(" 12"), "{ok}");
}

/// Active health checks take an upstream out before a request reaches it: over TCP, one
/// that refuses connections; over HTTP, one that accepts them but answers its health path
/// with a 503. Requests that are never retried (POST) then all reach the healthy upstream,
/// and the sick one sees none.
#[test]
fn active_tcp_and_http_health_checks_keep_requests_off_sick_upstreams() {
    let healthy = spawn_upstream("healthy");
    let sick = spawn_upstream_with("sick", true);
    let down = free_port();
    let node = Node::start_with(&format!(
        "routes:\n  - path_prefix: /tcp/\n    upstreams: [\"127.0.0.1:{down}\", \"127.0.0.1:{healthy}\"]\n    health_check: {{kind: tcp, interval_ms: 100}}\n  - path_prefix: /http/\n    upstreams: [\"127.0.0.1:{sick}\", \"127.0.0.1:{healthy}\"]\n    health_check: {{kind: /healthz, interval_ms: 100}}"
    ));
    let ca = node.ca_path();
    // A few check rounds.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for prefix in ["/tcp/", "/http/"] {
        for i in 0..8 {
            let r = curl(
                &ca,
                &url(&node, &format!("{prefix}post{i}")),
                &["-X", "POST", "-d", "x=1"],
            );
            assert_eq!(r.status, 200, "POST {prefix} {i}: {r:?}");
            assert!(
                r.body.starts_with("upstream=healthy"),
                "{prefix}: {}",
                r.body
            );
        }
    }
    let metrics = curl(&ca, &url(&node, "/metrics"), &[]).body;
    assert!(
        !metrics.contains(&format!("upstream=\"127.0.0.1:{down}\"")),
        "no request went to the closed port:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!("upstream=\"127.0.0.1:{sick}\"")),
        "no request went to the upstream failing its health check:\n{metrics}"
    );
}
