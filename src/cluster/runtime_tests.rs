use super::*;
use crate::config::Durability;
use crate::protocol::{Reply, parse_request};
use crate::storage::Store;

/// A transport for a cluster of one: nothing to send.
struct Nowhere;
impl Transport for Nowhere {
    fn send(&self, _: &NodeRecord, _: Vec<Message>) -> usize {
        0
    }
    fn ping(&self, _: &NodeRecord) -> PingFuture {
        Box::pin(async { Err("no peers".to_string()) })
    }
    fn fetch_snapshot(&self, _: &NodeRecord, _: Vec<GroupId>, _: PathBuf) -> FetchFuture {
        Box::pin(async { Err("no peers".to_string()) })
    }
}

#[tokio::test]
async fn a_single_member_runtime_commits_writes_barriers_and_node_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Durability::Relaxed).unwrap());
    let cluster = ClusterHandle::start(
        RuntimeConfig {
            id: 1,
            zone: "a".into(),
            bootstrap: Membership::new([(1, "a".to_string())]),
            settings: Settings::default(),
            health: HealthPolicy::default(),
            snapshot_dir: dir.path().join("snapshots"),
        },
        store.clone(),
        Arc::new(Nowhere),
    )
    .unwrap();
    let limit = Duration::from_secs(10);
    let command = parse_request(b"KEY PUT users.a 1").unwrap().command;
    let write = Write::from_command(command, None, None, 1).unwrap();
    assert_eq!(
        tokio::time::timeout(limit, cluster.write(write))
            .await
            .unwrap(),
        Ok(Reply::Ok)
    );
    // The view follows a change within milliseconds, not at the next periodic refresh.
    let shown = Instant::now();
    while !cluster
        .view()
        .groups
        .get("USERS")
        .is_some_and(|g| g.is_owner && g.applied >= 1)
    {
        assert!(
            shown.elapsed() < super::super::worker::VIEW_EVERY / 4,
            "view is stale"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        tokio::time::timeout(limit, cluster.barrier(vec!["USERS".into(), "OTHER".into()]))
            .await
            .unwrap(),
        Ok(())
    );
    let record = NodeRecord {
        id: 2,
        region: "b".into(),
        host: "127.0.0.2".into(),
        port: 2,
    };
    assert_eq!(
        tokio::time::timeout(limit, cluster.record_node(&record))
            .await
            .unwrap(),
        Ok(())
    );
    tokio::time::sleep(super::super::worker::VIEW_EVERY * 2).await;
    assert_eq!(cluster.view().directory.get(&2), Some(&record));
    assert!(
        cluster
            .view()
            .groups
            .get("USERS")
            .is_some_and(|g| g.is_owner)
    );
    assert!(cluster.counters().commits >= 2);
    // The export of every group holds the write and the directory.
    let mut stream = Vec::new();
    cluster.export_snapshot(Vec::new(), &mut stream).unwrap();
    let groups = crate::storage::stream::verify(&stream[..]).unwrap();
    assert!(groups.contains(&"USERS".to_string()), "{groups:?}");
    assert!(groups.contains(&"atlas".to_string()), "{groups:?}");
    cluster.stop();
}
