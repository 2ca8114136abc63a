//! In-process API tests of backup and restore, preview and apply, the public endpoints and
//! the path policy (what operators may point shares, exports and LUNs at).

use std::sync::Arc;

use super::api::ApiRequest;
use super::api_tests::{ADMIN_PW, CLIENT, Harness, SHARE, TARGET, call, login, options};
use super::{DbLocation, NasStore, RecordingRunner};

#[test]
fn backup_change_restore_over_the_api() {
    let h = Harness::new();
    h.admin("POST", "/shares/smb", SHARE);
    let response = h.api.handle(ApiRequest {
        method: "POST".into(),
        path: "/config/backup".into(),
        bearer: Some(h.admin.clone()),
        ..Default::default()
    });
    assert_eq!(response.status, 200);
    assert_eq!(response.content_type, super::api::SQLITE);
    let backup = response.body;
    h.admin(
        "POST",
        "/shares/smb",
        r#"{"name": "later", "path": "/srv/later"}"#,
    );
    h.admin("DELETE", "/shares/smb/1", "");
    let (status, report) = call(&h.api, "POST", "/config/restore", Some(&h.admin), backup);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["restored"], true);
    // All sessions ended; log in again and see the state of the backup.
    assert_eq!(h.admin("GET", "/shares/smb", "").0, 401);
    let token = login(&h.api, "admin", ADMIN_PW);
    let (_, shares) = call(&h.api, "GET", "/shares/smb", Some(&token), vec![]);
    let names: Vec<&str> = shares
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["data"]);
    let (_, rows) = call(
        &h.api,
        "GET",
        "/audit-logs?action=restore",
        Some(&token),
        vec![],
    );
    assert_eq!(rows[0]["client_addr"], CLIENT);
    let (_, deleted) = call(
        &h.api,
        "GET",
        "/audit-logs?action=delete",
        Some(&token),
        vec![],
    );
    assert_eq!(
        deleted.as_array().unwrap().len(),
        1,
        "the audit trail survives the restore"
    );
    let (status, err) = call(
        &h.api,
        "POST",
        "/config/restore",
        Some(&token),
        b"SQLite format 3\0garbage".to_vec(),
    );
    assert_eq!(status, 400, "{err}");
}

#[test]
fn preview_and_apply_through_a_recording_runner() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Arc::new(RecordingRunner::new());
    let store = NasStore::open_with(
        DbLocation::Memory,
        options(Some(dir.path())),
        runner.clone(),
    )
    .unwrap();
    let h = Harness::with_store(store);
    h.admin("POST", "/shares/smb", SHARE);
    h.admin(
        "POST",
        "/exports/nfs",
        r#"{"path": "/srv/my data", "clients": ["*"], "read_only": true}"#,
    );
    let (status, text) = h.admin("GET", "/config/preview/smb", "");
    assert_eq!(status, 200);
    assert!(
        text.as_str()
            .unwrap()
            .contains("[data]\n\tpath = /srv/data\n\tread only = no"),
        "{text}"
    );
    let (_, text) = h.admin("GET", "/config/preview/nfs", "");
    assert!(
        text.as_str()
            .unwrap()
            .contains("\"/srv/my data\" *(ro,sync,no_subtree_check,root_squash)"),
        "{text}"
    );
    assert_eq!(h.admin("GET", "/config/preview/afp", "").0, 404);
    let (status, report) = h.admin("POST", "/config/apply", r#"{"kinds": ["smb", "nfs"]}"#);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dry_run"], false);
    assert!(dir.path().join("smb.conf").exists() && dir.path().join("exports").exists());
    assert!(!dir.path().join("saveconfig.json").exists());
    let commands = runner.commands();
    assert!(
        commands.iter().any(|c| c.starts_with("testparm -s")),
        "{commands:?}"
    );
    assert!(commands.contains(&"exportfs -ra".to_string()));
    let (status, err) = h.admin("POST", "/config/apply", r#"{"kinds": ["afp"]}"#);
    assert_eq!(status, 400, "{err}");
    let (_, rows) = h.admin("GET", "/audit-logs?action=apply", "");
    assert_eq!(rows[0]["result"], "success");
}

#[test]
fn health_and_openapi_are_public() {
    let h = Harness::new();
    let (status, health) = h.call("GET", "/health", None, "");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let (status, doc) = h.call("GET", "/openapi.json", None, "");
    assert_eq!(status, 200);
    for path in [
        "/users/{id}",
        "/auth/login",
        "/shares/smb/{id}",
        "/exports/nfs/{id}",
        "/iscsi/targets/{id}/luns/{lun}",
        "/snapshot-policies/{id}",
        "/audit-logs",
        "/config/preview/{kind}",
        "/config/apply",
        "/config/backup",
        "/config/restore",
        "/health",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[test]
fn operators_cannot_point_shares_exports_or_luns_outside_the_allowed_places() {
    let h = Harness::new();
    let operator = h.user("olga", "operator");
    let refused = |method: &str, path: &str, body: &str, field: &str| {
        let (status, err) = h.call(method, path, Some(&operator), body);
        assert_eq!(status, 400, "{body}: {err}");
        assert!(err["fields"][field].is_string(), "{body}: {err}");
    };
    for root in ["/", "/etc", "/etc/samba", "/root", "/srvx"] {
        refused(
            "POST",
            "/shares/smb",
            &format!(r#"{{"name": "s", "path": "{root}"}}"#),
            "path",
        );
        refused(
            "POST",
            "/exports/nfs",
            &format!(r#"{{"path": "{root}", "clients": ["10.0.0.1"]}}"#),
            "path",
        );
    }
    refused(
        "POST",
        "/shares/smb",
        r#"{"name": "s", "path": "/srv/../etc"}"#,
        "path",
    );
    assert_eq!(
        h.call("POST", "/iscsi/targets", Some(&operator), TARGET).0,
        201
    );
    refused(
        "POST",
        "/iscsi/targets/1/luns",
        r#"{"lun": 1, "backstore": "block", "device": "/dev/sda"}"#,
        "device",
    );
    refused(
        "POST",
        "/iscsi/targets/1/luns",
        r#"{"lun": 1, "backstore": "fileio", "path": "/etc/shadow", "size_bytes": 1}"#,
        "path",
    );
    // no_root_squash to everyone needs explicit consent.
    refused(
        "POST",
        "/exports/nfs",
        r#"{"path": "/srv/open", "clients": ["*"], "squash": "no_root_squash"}"#,
        "squash",
    );
    let (status, created) = h.call(
        "POST",
        "/exports/nfs",
        Some(&operator),
        r#"{"path": "/srv/open", "clients": ["*"], "squash": "no_root_squash", "allow_insecure": true}"#,
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["allow_insecure"], true);
    // Moving an existing share outside is refused too; inside is fine.
    assert_eq!(h.call("POST", "/shares/smb", Some(&operator), SHARE).0, 201);
    refused("PUT", "/shares/smb/1", r#"{"path": "/etc"}"#, "path");
    assert_eq!(
        h.call(
            "PUT",
            "/shares/smb/1",
            Some(&operator),
            r#"{"path": "/tank/x"}"#
        )
        .0,
        200
    );
    assert_eq!(
        h.call(
            "POST",
            "/iscsi/targets/1/luns",
            Some(&operator),
            r#"{"lun": 2, "backstore": "block", "device": "/dev/zvol/tank/vm"}"#
        )
        .0,
        201
    );
}
