//! The node-to-node HTTP/2 client against a real `atlas serve`: peers are verified against the
//! internal CA, credentials are presented, and one connection carries many requests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use atlas_pingora::peer_client::{PeerClient, PeerClientOptions};
use bytes::Bytes;

struct Server {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("atlas.yaml");
    std::fs::write(
        &config,
        format!(
            "version: 1\ngrace_period_seconds: 0\ngraceful_shutdown_timeout_seconds: 1\natlas:\n  data_dir: {}\n  listen: {addr}\n  credentials: peer-secret\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let child = Command::new(env!("CARGO_BIN_EXE_atlas"))
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start atlas");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "atlas did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, dir, addr }
}

fn client(server: &Server, credentials: &str) -> PeerClient {
    PeerClient::new(PeerClientOptions {
        ca_file: server
            .dir
            .path()
            .join("data/tls/ca.crt")
            .display()
            .to_string(),
        credentials: credentials.to_string(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        client_cert_key: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_reuse_one_h2_connection_and_carry_credentials() {
    let server = start_server();
    let good = std::sync::Arc::new(client(&server, "peer-secret"));
    // With valid credentials the endpoint is past authentication (503: not clustered yet).
    let first = good
        .post(
            &server.addr,
            "localhost",
            "/atlas/v1/consensus",
            Bytes::from_static(b"\x01"),
        )
        .await
        .expect("post");
    assert_eq!(first.status, 503, "{:?}", first.body);
    for i in 0..300u32 {
        let r = good
            .post(
                &server.addr,
                "localhost",
                "/atlas/v1/consensus",
                Bytes::from(i.to_be_bytes().to_vec()),
            )
            .await
            .expect("post");
        assert_eq!(r.status, 503);
    }
    assert_eq!(
        good.connections_opened(),
        1,
        "sequential requests share one connection"
    );
    // Concurrent streams share it too (a burst may race one extra connection into the pool).
    let results = concurrent_posts(&good, &server.addr).await;
    assert!(results.iter().all(|s| *s == 503), "{results:?}");
    assert!(
        good.connections_opened() <= 2,
        "opened {} connections",
        good.connections_opened()
    );

    let bad = client(&server, "wrong");
    let refused = bad
        .post(&server.addr, "localhost", "/atlas/v1/join", Bytes::new())
        .await
        .expect("post");
    assert_eq!(refused.status, 401);
}

async fn concurrent_posts(client: &std::sync::Arc<PeerClient>, addr: &str) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32u8 {
        let client = client.clone();
        let addr = addr.to_string();
        tasks.spawn(async move {
            client
                .post(
                    &addr,
                    "localhost",
                    "/atlas/v1/consensus",
                    Bytes::from(vec![i]),
                )
                .await
                .map_or(0, |r| r.status)
        });
    }
    let mut out = Vec::new();
    while let Some(status) = tasks.join_next().await {
        out.push(status.unwrap_or(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_not_signed_by_the_cluster_ca_is_refused() {
    let server = start_server();
    let other = start_server();
    // Trust the other server's CA only: the first server's certificate must not verify.
    let mismatched = PeerClient::new(PeerClientOptions {
        ca_file: other
            .dir
            .path()
            .join("data/tls/ca.crt")
            .display()
            .to_string(),
        credentials: "peer-secret".into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        client_cert_key: None,
    });
    let result = mismatched
        .post(
            &server.addr,
            "localhost",
            "/atlas/v1/consensus",
            Bytes::new(),
        )
        .await;
    assert!(
        result.is_err(),
        "an unverified peer answered: {:?}",
        result.map(|r| r.status)
    );
}
