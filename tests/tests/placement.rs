//! Where tables live, on a real three-region cluster: `TABLE MOVE` hands a table to a node of
//! another region, `TABLE PIN` keeps it there against the adaptive policy (which moves an
//! unpinned table to the region that writes to it), `TABLE UNPIN` lets the policy decide
//! again, and pins survive a restart.

use std::thread;
use std::time::{Duration, Instant};

use atlas_tests::cluster::TestCluster;

/// `TABLE INFO <table>` at node `i`, as `name=value` lines.
fn info(cluster: &TestCluster, i: usize, table: &str) -> Vec<String> {
    cluster.nodes[i]
        .client()
        .request_ok(&format!("TABLE INFO {table}"))
}

fn field(lines: &[String], name: &str) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
        .to_string()
}

/// Waits (≤ `secs`) until node `i` sees `table` owned in `region`.
fn wait_owned_in(cluster: &TestCluster, i: usize, table: &str, region: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let lines = info(cluster, i, table);
        if field(&lines, "region") == region {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{table} not owned in {region} after {secs} s: {lines:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// `writes` puts to `table` from node `i` over about `seconds`.
fn write_from(cluster: &TestCluster, i: usize, table: &str, writes: usize, seconds: u64) {
    let mut client = cluster.nodes[i].client();
    let pause = Duration::from_millis(seconds * 1000 / writes as u64);
    for n in 0..writes {
        client.put(&format!("{table}.k{}", n % 10), "v");
        thread::sleep(pause);
    }
}

#[test]
fn tables_move_pin_and_unpin_across_regions() {
    let mut cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\n");
    cluster.nodes[0].client().put("mv.k", "first");
    // A planned move: answered once a node of the region owns it.
    cluster.nodes[0].client().request_ok("TABLE MOVE mv TO c");
    assert_eq!(field(&info(&cluster, 0, "mv"), "region"), "c");
    wait_owned_in(&cluster, 2, "mv", "c", 5);
    cluster.nodes[0].client().put("mv.k", "after the move");
    assert_eq!(
        cluster.nodes[1].client().get("mv.k").as_deref(),
        Some("after the move")
    );
    // Refusals name the reason and leave the table where it is.
    let mut c = cluster.nodes[0].client();
    c.request_err(
        "TABLE MOVE mv TO nowhere",
        "ERROR WARN no member of the cluster is in region nowhere",
    );
    c.request_err(
        "TABLE PIN mv nowhere",
        "ERROR WARN no member of the cluster",
    );
    c.request_err("TABLE MOVE ghost TO b", "ERROR WARN GHOST has no owner yet");

    // Pinned to b: the owner hands it there, and writes from region a for longer than the
    // migration window do not bring it to a.
    c.request_ok("TABLE PIN mv b");
    wait_owned_in(&cluster, 0, "mv", "b", 10);
    assert_eq!(field(&info(&cluster, 2, "mv"), "pinned"), "b");
    let listed = c.request_ok("TABLE LIST");
    assert!(
        listed.iter().any(|l| l.starts_with("TABLE MV ")
            && l.contains(" region=b ")
            && l.contains(" pinned=b ")),
        "{listed:?}"
    );
    c.request_err(
        "TABLE MOVE mv TO a",
        "ERROR WARN MV is pinned to region b; TABLE UNPIN it first",
    );
    write_from(&cluster, 0, "mv", 60, 5);
    assert_eq!(
        field(&info(&cluster, 0, "mv"), "region"),
        "b",
        "the pin held"
    );

    // The pin survives a restart of every node (it is in the `atlas` log and table).
    for i in 0..3 {
        cluster.nodes[i].terminate();
        cluster.nodes[i].restart();
    }
    cluster.wait_all_active(Duration::from_secs(30));
    assert_eq!(field(&info(&cluster, 1, "mv"), "pinned"), "b");
    cluster.nodes[0].client().put("mv.k", "after restarts");
    wait_owned_in(&cluster, 0, "mv", "b", 10);

    // Unpinned, the adaptive policy moves it to the region that writes to it.
    cluster.nodes[0].client().request_ok("TABLE UNPIN mv");
    assert_eq!(field(&info(&cluster, 0, "mv"), "pinned"), "-");
    let deadline = Instant::now() + Duration::from_secs(20);
    while field(&info(&cluster, 0, "mv"), "region") != "a" {
        assert!(
            Instant::now() < deadline,
            "the unpinned table never moved to a"
        );
        write_from(&cluster, 0, "mv", 20, 1);
    }
}

/// Pins declared under `atlas.tables:` are applied at start (every node declares the same
/// one; the records are idempotent), and hold like `TABLE PIN`.
#[test]
fn pins_declared_in_the_configuration_are_applied_at_start() {
    let cluster = TestCluster::start(&["a", "b", "c"], "fz: 1\ntables: {decl: {pin: c}}\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while field(&info(&cluster, 0, "decl"), "pinned") != "c" {
        assert!(
            Instant::now() < deadline,
            "the declared pin was not applied"
        );
        thread::sleep(Duration::from_millis(100));
    }
    cluster.nodes[0].client().put("decl.k", "v");
    wait_owned_in(&cluster, 0, "decl", "c", 10);
    assert_eq!(field(&info(&cluster, 1, "decl"), "pinned"), "c");
}

/// A single node is every table's only home: its own region is accepted, another is not.
#[test]
fn a_single_node_accepts_its_own_region_only() {
    let node = atlas_tests::Node::start();
    let mut c = node.client();
    c.put("solo.k", "v");
    c.request_ok("TABLE MOVE solo TO local");
    c.request_ok("TABLE PIN solo local");
    c.request_ok("TABLE UNPIN solo");
    c.request_err(
        "TABLE PIN solo elsewhere",
        "ERROR WARN no member of the cluster is in region elsewhere",
    );
}
