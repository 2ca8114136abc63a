//! The node-to-node HTTP/2 client against a real `atlas serve`: peers are verified against the
//! internal CA, credentials are presented, and one connection carries many requests.

use std::time::Duration;

use atlas_pingora::peer_client::{PeerClient, PeerClientOptions};
use atlas_tests::Node;
use bytes::Bytes;

/// A real node (the black-box harness) with cluster credentials.
fn start_server() -> Node {
    Node::start_with("credentials: peer-cluster-secret")
}

/// A client presenting the server's own node certificate (the transport requires a node's
/// certificate: `peer_mtls` is on by default in a cluster with the internal CA).
fn client(server: &Node, credentials: &str) -> PeerClient {
    let tls = server.dir().join("data").join("tls");
    PeerClient::new(PeerClientOptions {
        ca_file: server.ca_path().display().to_string(),
        credentials: credentials.to_string(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        client_cert_key: Some((
            tls.join("node.crt").display().to_string(),
            tls.join("node.key").display().to_string(),
        )),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_reuse_one_h2_connection_and_carry_credentials() {
    let server = start_server();
    let good = std::sync::Arc::new(client(&server, "peer-cluster-secret"));
    // With valid credentials the endpoint is past authentication: these bodies are not
    // consensus messages, so each gets a 400 naming the problem (and the connection stays).
    let first = good
        .post(
            &server.https_addr(),
            "localhost",
            "/atlas/v1/consensus",
            Bytes::from_static(b"\x02"),
        )
        .await
        .expect("post");
    assert_eq!(first.status, 400, "{:?}", first.body);
    let body = String::from_utf8_lossy(&first.body);
    assert!(body.contains("truncated"), "{body}");
    for i in 0..300u32 {
        let r = good
            .post(
                &server.https_addr(),
                "localhost",
                "/atlas/v1/consensus",
                Bytes::from(i.to_be_bytes().to_vec()),
            )
            .await
            .expect("post");
        assert_eq!(r.status, 400);
    }
    assert_eq!(
        good.connections_opened(),
        1,
        "sequential requests share one connection"
    );
    // Concurrent streams share it too (a burst may race one extra connection into the pool).
    let results = concurrent_posts(&good, &server.https_addr()).await;
    assert!(results.iter().all(|s| *s == 400), "{results:?}");
    assert!(
        good.connections_opened() <= 2,
        "opened {} connections",
        good.connections_opened()
    );

    let bad = client(&server, "wrong");
    let refused = bad
        .post(
            &server.https_addr(),
            "localhost",
            "/atlas/v1/join",
            Bytes::new(),
        )
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
        ca_file: other.ca_path().display().to_string(),
        credentials: "peer-cluster-secret".into(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        client_cert_key: None,
    });
    let result = mismatched
        .post(
            &server.https_addr(),
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
