//! Tests of the configuration loader.
use super::*;

#[test]
fn every_shipped_example_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            AtlasConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4, "examples in {}", dir.display());
}

#[test]
fn embedded_default_is_valid() {
    let c = AtlasConfig::from_yaml(DEFAULT_YAML, "default").unwrap();
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.socket_path(), PathBuf::from("./data/atlas.sock"));
    assert_eq!(c.tls, TlsConfig::Internal);
    assert_eq!(c.durability, Durability::Strict);
}

#[test]
fn unknown_key_names_key_and_file() {
    let err =
        AtlasConfig::from_yaml("atlas:\n  limits:\n    bogus: 1\n", "/etc/a.yaml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("bogus"), "{msg}");
    assert!(msg.contains("/etc/a.yaml"), "{msg}");
    assert!(msg.contains("limits"), "{msg}");
}

#[test]
fn pingora_keys_are_left_alone() {
    let c = AtlasConfig::from_yaml("version: 1\nthreads: 2\natlas:\n  region: eu\n", "f").unwrap();
    assert_eq!(c.region, "eu");
}

#[test]
fn tls_forms() {
    let c = AtlasConfig::from_yaml("atlas:\n  tls: {cert: a.pem, key: b.pem}\n", "f").unwrap();
    assert_eq!(
        c.tls,
        TlsConfig::Files {
            cert: "a.pem".into(),
            key: "b.pem".into()
        }
    );
    assert!(AtlasConfig::from_yaml("atlas:\n  tls: external\n", "f").is_err());
    assert!(AtlasConfig::from_yaml("atlas:\n  tls: {cert: a}\n", "f").is_err());
}

#[test]
fn acme_settings_are_checked() {
    let ok = "atlas:\n  http_listen: 127.0.0.1:80\n  tls:\n    acme:\n      directory: https://ca.test/dir\n      directory_ca: ca.pem\n      email: ops@shop.test\n      domains: [shop.test, www.shop.test]\n";
    let c = AtlasConfig::from_yaml(ok, "f").unwrap();
    let TlsConfig::Acme(acme) = &c.tls else {
        panic!("{:?}", c.tls)
    };
    assert_eq!(acme.domains, ["shop.test", "www.shop.test"]);
    assert_eq!(acme.challenge, AcmeChallenge::Http01);
    assert_eq!(acme.directory_ca.as_deref(), Some(Path::new("ca.pem")));
    let mut resolved = c.clone();
    resolved.resolve_paths(Path::new("/srv"));
    let TlsConfig::Acme(acme) = &resolved.tls else {
        unreachable!()
    };
    assert_eq!(acme.directory_ca.as_deref(), Some(Path::new("/srv/ca.pem")));
    for (from, to, key) in [
        (
            "https://ca.test/dir",
            "http://ca.test/dir",
            "atlas.tls.acme.directory",
        ),
        ("[shop.test, www.shop.test]", "[]", "atlas.tls.acme.domains"),
        ("www.shop.test", "'*.shop.test'", "atlas.tls.acme.domains"),
        ("www.shop.test", "-x.test", "atlas.tls.acme.domains"),
        ("www.shop.test", "localhost", "atlas.tls.acme.domains"),
        ("ops@shop.test", "ops", "atlas.tls.acme.email"),
        ("  http_listen: 127.0.0.1:80\n", "", "atlas.http_listen"),
        (
            "domains:",
            "challenge: tls-alpn-01\n      domains:",
            "tls-alpn-01",
        ),
        ("domains:", "challenge: dns-01\n      domains:", "dns-01"),
        ("email:", "mail:", "mail"),
    ] {
        let bad = ok.replace(from, to);
        let err = AtlasConfig::from_yaml(&bad, "site.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(key) && err.contains("site.yaml"),
            "{bad}: {err}"
        );
    }
    // A cluster with ACME certificates needs the CA its nodes verify each other with.
    let cluster = format!("{ok}  credentials: 0123456789abcdef0123\n");
    let err = AtlasConfig::from_yaml(&cluster, "f")
        .unwrap_err()
        .to_string();
    assert!(err.contains("atlas.peer_ca"), "{err}");
}

#[test]
fn cluster_credentials_are_long_enough() {
    let yaml = |c: &str| format!("atlas:\n  credentials: {c}\n");
    let short = AtlasConfig::from_yaml(&yaml("fifteen-chars-x"), "f").unwrap_err();
    assert!(
        short
            .to_string()
            .contains("atlas.credentials: must be at least 16"),
        "{short}"
    );
    AtlasConfig::from_yaml(&yaml("sixteen-chars-xx"), "f").unwrap();
    let rotating = "atlas:\n  credentials: the-new-secret-123\n  accepted_credentials: [the-old-secret-1234]\n";
    let config = AtlasConfig::from_yaml(rotating, "f").unwrap();
    assert_eq!(config.accepted_credentials, ["the-old-secret-1234"]);
    for (yaml, says) in [
        (
            "atlas:\n  credentials: the-new-secret-123\n  accepted_credentials: [short]\n",
            "atlas.accepted_credentials[0]: must be at least 16",
        ),
        (
            "atlas:\n  accepted_credentials: [the-old-secret-1234]\n",
            "atlas.accepted_credentials: needs atlas.credentials",
        ),
    ] {
        let err = AtlasConfig::from_yaml(yaml, "f").unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn declared_tables_are_checked() {
    let ok = AtlasConfig::from_yaml(
        "atlas:\n  credentials: sixteen-chars-xx\n  tables: {orders: {pin: eu}, logs: {}}\n",
        "f",
    )
    .unwrap();
    assert_eq!(
        ok.declared_pins(),
        std::collections::BTreeMap::from([("ORDERS".to_string(), "eu".to_string())])
    );
    for (yaml, says) in [
        (
            "atlas:\n  credentials: sixteen-chars-xx\n  tables: {a.b: {pin: eu}}\n",
            "atlas.tables: `a.b` is not a table name",
        ),
        (
            "atlas:\n  credentials: sixteen-chars-xx\n  tables: {orders: {pin: \"e u\"}}\n",
            "atlas.tables.orders.pin: must be a region name",
        ),
        (
            "atlas:\n  tables: {orders: {pin: eu}}\n",
            "atlas.tables: placement needs a cluster",
        ),
        (
            "atlas:\n  credentials: sixteen-chars-xx\n  tables: {orders: {pinned: eu}}\n",
            "pinned",
        ),
    ] {
        let err = AtlasConfig::from_yaml(yaml, "f").unwrap_err().to_string();
        assert!(err.contains(says), "{yaml}: {err}");
    }
}

#[test]
fn peer_mtls_is_on_by_default_in_a_cluster_with_the_internal_ca() {
    let config = |extra: &str| AtlasConfig::from_yaml(&format!("atlas:\n{extra}"), "f").unwrap();
    assert!(!config("").peer_mtls(), "a single node has no peers");
    assert!(config("  credentials: sixteen-chars-xx\n").peer_mtls());
    assert!(!config("  credentials: sixteen-chars-xx\n  peer_mtls: false\n").peer_mtls());
    let files =
        "  credentials: sixteen-chars-xx\n  tls: {cert: a.pem, key: b.pem}\n  peer_ca: ca.pem\n";
    assert!(
        !config(files).peer_mtls(),
        "the operator's certificates name no node"
    );
    assert!(config(&format!("{files}  peer_mtls: true\n")).peer_mtls());
}

#[test]
fn bad_values_name_their_key() {
    for (yaml, key) in [
        ("atlas:\n  listen: nowhere\n", "atlas.listen"),
        ("atlas:\n  durability: sometimes\n", "durability"),
        ("atlas:\n  fn: -1\n", "fn"),
        ("atlas:\n  connect: http://x:1\n", "atlas.connect"),
        ("atlas:\n  nas: {listen: nowhere}\n", "atlas.nas.listen"),
        ("atlas:\n  http_listen: port80\n", "atlas.http_listen"),
        ("atlas:\n  metrics_token: short\n", "atlas.metrics_token"),
        (
            "atlas:\n  nas: {allowed_paths: [srv]}\n",
            "atlas.nas.allowed_paths",
        ),
        (
            "atlas:\n  nas: {allowed_paths: [/srv/../etc]}\n",
            "atlas.nas.allowed_paths",
        ),
        (
            "atlas:\n  nas: {allowed_devices: [dev]}\n",
            "atlas.nas.allowed_devices",
        ),
        (
            "atlas:\n  nas: {path_prefix: api}\n",
            "atlas.nas.path_prefix",
        ),
        (
            "atlas:\n  nas: {path_prefix: /api/}\n",
            "atlas.nas.path_prefix",
        ),
        ("atlas:\n  nas: {path_prefix: /}\n", "atlas.nas.path_prefix"),
        (
            "atlas:\n  nas: {path_prefix: /atlas/nas}\n",
            "atlas.nas.path_prefix",
        ),
        (
            "atlas:\n  nas: {path_prefix: /metrics}\n",
            "atlas.nas.path_prefix",
        ),
        (
            "atlas:\n  limits: {max_connections: 0}\n",
            "atlas.limits.max_connections",
        ),
        ("atlas:\n  expiry_sweep_ms: 10\n", "atlas.expiry_sweep_ms"),
        (
            "atlas:\n  limits: {max_txn_ops: 0}\n",
            "atlas.limits.max_txn_ops",
        ),
        (
            "atlas:\n  limits: {max_scan_keys: 0}\n",
            "atlas.limits.max_scan_keys",
        ),
        (
            "atlas:\n  routes:\n    - upstreams: []\n",
            "atlas.routes[0].upstreams",
        ),
        (
            "atlas:\n  routes:\n    - upstreams: [\"127.0.0.1:1\"]\n      health_check: {kind: http}\n",
            "atlas.routes[0].health_check.kind",
        ),
    ] {
        let msg = AtlasConfig::from_yaml(yaml, "f").unwrap_err().to_string();
        assert!(msg.contains(key), "{yaml}: {msg}");
    }
}

#[test]
fn relative_paths_resolve_against_the_start_directory() {
    let mut c = AtlasConfig::from_yaml("atlas:\n  nas: {db_path: ':memory:'}\n", "f").unwrap();
    c.resolve_paths(Path::new("/srv/atlas"));
    assert_eq!(c.data_dir, PathBuf::from("/srv/atlas/data"));
    assert_eq!(c.socket_path(), PathBuf::from("/srv/atlas/data/atlas.sock"));
    assert_eq!(c.nas.db_path, Some(PathBuf::from(":memory:")));
}

#[test]
fn relaxed_durability_and_fn_fz() {
    let c =
        AtlasConfig::from_yaml("atlas:\n  durability: relaxed\n  fn: 0\n  fz: 1\n", "f").unwrap();
    assert_eq!(c.durability, Durability::Relaxed);
    assert_eq!((c.fn_, c.fz), (0, 1));
}

#[test]
fn client_listener_keys_are_checked() {
    let load = |lines: &str| AtlasConfig::from_yaml(&format!("atlas:\n{lines}"), "f.yaml");
    let ok = load(
        "  client_listen: 0.0.0.0:7379\n  client_admins: [ops, \"john smith\"]\n  \
         client_revoked: [\"ab:CD:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89\"]\n",
    )
    .unwrap();
    assert_eq!(ok.client_listen.as_deref(), Some("0.0.0.0:7379"));
    assert_eq!(ok.client_admins, ["ops", "john smith"]);
    for (lines, expect) in [
        (
            "  client_listen: nowhere\n",
            "atlas.client_listen: `nowhere` is not a socket address",
        ),
        (
            "  client_listen: 127.0.0.1:7379\n  tls: {cert: a.pem, key: b.pem}\n",
            "atlas.client_listen: needs the CA that signs client certificates",
        ),
        (
            "  client_admins: [\" ops\"]\n",
            "atlas.client_admins: ` ops` is not a principal",
        ),
        (
            "  client_revoked: [abc]\n",
            "atlas.client_revoked: `abc` is not a SHA-256",
        ),
    ] {
        let msg = load(lines).unwrap_err().to_string();
        assert!(msg.contains(expect), "{lines}: {msg}");
        assert!(msg.contains("f.yaml"), "{msg}");
    }
    // With tls files, the CA of peer_ca signs client certificates.
    load("  client_listen: 127.0.0.1:7379\n  tls: {cert: a.pem, key: b.pem}\n  peer_ca: ca.pem\n")
        .unwrap();
}
