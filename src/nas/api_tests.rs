//! In-process API tests: every request goes through `NasApi::handle`, as from the listener.

use std::sync::Arc;

use serde_json::{Value, json};

use super::api::{ApiRequest, NasApi};
use super::{ApplyPaths, NasOptions, NasStore};

pub(super) const ADMIN_PW: &str = "initial-admin-pw";
pub(super) const CLIENT: &str = "198.51.100.7:40000";

pub(super) struct Harness {
    pub(super) api: NasApi,
    pub(super) admin: String,
}

impl Harness {
    pub(super) fn new() -> Harness {
        Harness::with_store(NasStore::in_memory(options(None)).unwrap())
    }

    pub(super) fn with_store(store: NasStore) -> Harness {
        let api = NasApi::new(Arc::new(store));
        let admin = login(&api, "admin", ADMIN_PW);
        Harness { api, admin }
    }

    pub(super) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, Value) {
        call(&self.api, method, path, token, body.as_bytes().to_vec())
    }

    pub(super) fn admin(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        self.call(method, path, Some(&self.admin.clone()), body)
    }

    /// Creates a user with `role` and returns their token.
    pub(super) fn user(&self, name: &str, role: &str) -> String {
        let (status, body) = self.admin(
            "POST",
            "/users",
            &json!({"username": name, "password": format!("{name}-password"), "role": role})
                .to_string(),
        );
        assert_eq!(status, 201, "{body}");
        login(&self.api, name, &format!("{name}-password"))
    }
}

pub(super) fn options(dir: Option<&std::path::Path>) -> NasOptions {
    NasOptions {
        initial_admin_password: Some(ADMIN_PW.into()),
        apply_paths: dir.map(ApplyPaths::under).unwrap_or_default(),
        ..NasOptions::default()
    }
}

pub(super) fn call(
    api: &NasApi,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    };
    let response = api.handle(ApiRequest {
        method: method.into(),
        path,
        query,
        bearer: token.map(str::to_string),
        body,
        client_addr: Some(CLIENT.into()),
    });
    let value = if response.content_type == super::api::JSON {
        serde_json::from_slice(&response.body).unwrap_or(Value::Null)
    } else {
        Value::String(String::from_utf8_lossy(&response.body).into_owned())
    };
    (response.status, value)
}

pub(super) fn login(api: &NasApi, username: &str, password: &str) -> String {
    let body = json!({"username": username, "password": password}).to_string();
    let (status, value) = call(api, "POST", "/auth/login", None, body.into_bytes());
    assert_eq!(status, 200, "{value}");
    value["token"].as_str().unwrap().to_string()
}

pub(super) const SHARE: &str = r#"{"name": "data", "path": "/srv/data"}"#;
pub(super) const EXPORT: &str = r#"{"path": "/srv/data", "clients": ["10.0.0.0/24"]}"#;
pub(super) const TARGET: &str = r#"{"iqn": "iqn.2024-01.com.example:t1", "auth": "chap", "chap_user": "u", "chap_secret": "secret-chap-1"}"#;
pub(super) const LUN: &str = r#"{"lun": 0, "backstore": "block", "device": "/dev/zvol/tank/lun0"}"#;
pub(super) const POLICY: &str = r#"{"dataset": "tank/data", "frequency": "daily", "retention": 7}"#;

#[test]
fn login_me_logout() {
    let h = Harness::new();
    let (status, me) = h.admin("GET", "/auth/me", "");
    assert_eq!(status, 200);
    assert_eq!(me["username"], "admin");
    assert_eq!(me["role"], "administrator");
    assert!(me.get("password").is_none() && me.get("password_hash").is_none());
    let (status, login) = h.call(
        "POST",
        "/auth/login",
        None,
        &json!({"username": "admin", "password": ADMIN_PW}).to_string(),
    );
    assert_eq!(status, 200);
    assert_eq!(login["expires_in"], 8 * 3600);
    assert_eq!(login["user"]["username"], "admin");
    let (status, _) = h.admin("POST", "/auth/logout", "");
    assert_eq!(status, 204);
    let (status, err) = h.admin("GET", "/auth/me", "");
    assert_eq!(status, 401);
    assert_eq!(err["error"], "unauthorized");
    let (status, _) = h.call(
        "POST",
        "/auth/login",
        None,
        r#"{"username": "admin", "password": "wrong-password"}"#,
    );
    assert_eq!(status, 401);
    let (status, err) = h.call("POST", "/auth/login", None, r#"{"username": "admin"}"#);
    assert_eq!(status, 400);
    assert!(err["fields"]["password"].is_string(), "{err}");
    let (status, _) = h.call("GET", "/auth/me", Some("garbage"), "");
    assert_eq!(status, 401);
}

#[test]
fn every_role_against_every_endpoint() {
    let h = Harness::new();
    let operator = h.user("oscar", "operator");
    let viewer = h.user("vera", "viewer");
    // Fixtures the item routes point at.
    assert_eq!(h.admin("POST", "/shares/smb", SHARE).0, 201);
    assert_eq!(h.admin("POST", "/exports/nfs", EXPORT).0, 201);
    assert_eq!(h.admin("POST", "/iscsi/targets", TARGET).0, 201);
    assert_eq!(h.admin("POST", "/iscsi/targets/1/luns", LUN).0, 201);
    assert_eq!(h.admin("POST", "/snapshot-policies", POLICY).0, 201);
    // (method, path, body, least role: 0 public, 1 viewer, 2 operator, 3 administrator)
    let cases: &[(&str, &str, &str, u8)] = &[
        ("GET", "/health", "", 0),
        ("GET", "/openapi.json", "", 0),
        ("GET", "/auth/me", "", 1),
        ("GET", "/users", "", 1),
        ("GET", "/users/1", "", 1),
        (
            "POST",
            "/users",
            r#"{"username": "x1", "password": "long-enough-pw"}"#,
            3,
        ),
        ("PUT", "/users/1", r#"{"email": "a@example.com"}"#, 3),
        ("GET", "/shares/smb", "", 1),
        ("GET", "/shares/smb/1", "", 1),
        (
            "POST",
            "/shares/smb",
            r#"{"name": "s2", "path": "/srv/s2"}"#,
            2,
        ),
        ("PUT", "/shares/smb/1", r#"{"comment": "c"}"#, 2),
        ("GET", "/exports/nfs", "", 1),
        ("GET", "/exports/nfs/1", "", 1),
        (
            "POST",
            "/exports/nfs",
            r#"{"path": "/srv/e2", "clients": ["*"]}"#,
            2,
        ),
        ("PATCH", "/exports/nfs/1", r#"{"comment": "c"}"#, 2),
        ("GET", "/iscsi/targets", "", 1),
        ("GET", "/iscsi/targets/1", "", 1),
        (
            "POST",
            "/iscsi/targets",
            r#"{"iqn": "iqn.2024-01.com.example:t2"}"#,
            2,
        ),
        ("PUT", "/iscsi/targets/1", r#"{"alias": "a"}"#, 2),
        ("GET", "/iscsi/targets/1/luns", "", 1),
        ("GET", "/iscsi/targets/1/luns/0", "", 1),
        (
            "POST",
            "/iscsi/targets/1/luns",
            r#"{"lun": 9, "backstore": "block", "device": "/dev/zvol/tank/lun9"}"#,
            2,
        ),
        (
            "PUT",
            "/iscsi/targets/1/luns/0",
            r#"{"read_only": true}"#,
            2,
        ),
        ("GET", "/snapshot-policies", "", 1),
        ("GET", "/snapshot-policies/1", "", 1),
        (
            "POST",
            "/snapshot-policies",
            r#"{"dataset": "tank/b", "frequency": "hourly", "retention": 3}"#,
            2,
        ),
        ("PUT", "/snapshot-policies/1", r#"{"retention": 8}"#, 2),
        ("GET", "/audit-logs", "", 3),
        ("GET", "/config/preview/smb", "", 1),
        ("GET", "/config/preview/nfs", "", 1),
        ("GET", "/config/preview/iscsi", "", 1),
        ("POST", "/config/apply", "", 2),
        ("POST", "/config/backup", "", 3),
        ("POST", "/config/restore", "not a database", 3),
        ("DELETE", "/iscsi/targets/1/luns/0", "", 2),
        ("DELETE", "/snapshot-policies/1", "", 2),
        ("DELETE", "/shares/smb/1", "", 2),
        ("DELETE", "/exports/nfs/1", "", 2),
        ("DELETE", "/iscsi/targets/1", "", 2),
        ("DELETE", "/users/2", "", 3),
    ];
    for &(method, path, body, least) in cases {
        let anonymous = h.call(method, path, None, body).0;
        if least == 0 {
            assert_eq!(anonymous, 200, "{method} {path} is public");
        } else {
            assert_eq!(anonymous, 401, "{method} {path} without a token");
        }
        for (level, token) in [(1u8, &viewer), (2, &operator)] {
            let status = h.call(method, path, Some(token), body).0;
            if level < least {
                assert_eq!(status, 403, "{method} {path} as role level {level}");
            }
        }
        let tokens = [
            (1u8, viewer.as_str()),
            (2, operator.as_str()),
            (3, h.admin.as_str()),
        ];
        let (_, allowed) = tokens
            .iter()
            .find(|(level, _)| *level >= least.max(1))
            .unwrap();
        let (status, value) = h.call(method, path, Some(allowed), body);
        assert!(
            status != 401 && status != 403 && status < 500,
            "{method} {path} with the least allowed role got {status}: {value}"
        );
    }
    // Denied mutations are audited too.
    let (_, rows) = h.admin("GET", "/audit-logs?result=x", "");
    assert_eq!(rows["error"], "validation_failed");
    let (_, rows) = h.admin("GET", "/audit-logs?actor=vera&limit=1000", "");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .any(|r| r["result"] == "denied"),
        "{rows}"
    );
}

#[test]
fn users_may_change_only_their_own_password() {
    let h = Harness::new();
    let viewer = h.user("vera", "viewer");
    // One's own password needs the current one: missing or wrong, a 400 naming the field.
    for body in [
        r#"{"password": "a-new-password-1"}"#,
        r#"{"password": "a-new-password-1", "current_password": "not-it"}"#,
    ] {
        let (status, answer) = h.call("PUT", "/users/2", Some(&viewer), body);
        assert_eq!(status, 400, "{answer}");
        assert!(answer.to_string().contains("current_password"), "{answer}");
    }
    assert_eq!(
        h.call("GET", "/auth/me", Some(&viewer), "").0,
        200,
        "nothing changed"
    );
    // Guesses at the current password are limited like logins.
    for _ in 1..crate::nas::auth::MAX_FAILURES_PER_USER {
        let (status, _) = h.call(
            "PUT",
            "/users/2",
            Some(&viewer),
            r#"{"password": "a-new-password-1", "current_password": "guess"}"#,
        );
        assert_eq!(status, 400);
    }
    let (status, answer) = h.call(
        "PUT",
        "/users/2",
        Some(&viewer),
        r#"{"password": "a-new-password-1", "current_password": "vera-password"}"#,
    );
    assert_eq!(status, 429, "{answer}");
    h.api.store().set_clock(Some(
        chrono::Utc::now()
            + chrono::Duration::minutes(crate::nas::auth::FAILURE_WINDOW_MINUTES + 1),
    ));
    let viewer = login(&h.api, "vera", "vera-password");
    let (status, _) = h.call(
        "PUT",
        "/users/2",
        Some(&viewer),
        r#"{"password": "a-new-password-1", "current_password": "vera-password"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(
        h.call("GET", "/auth/me", Some(&viewer), "").0,
        401,
        "a new password ends sessions"
    );
    let viewer = login(&h.api, "vera", "a-new-password-1");
    assert_eq!(
        h.call(
            "PUT",
            "/users/2",
            Some(&viewer),
            r#"{"role": "administrator"}"#
        )
        .0,
        403
    );
    assert_eq!(
        h.call(
            "PUT",
            "/users/1",
            Some(&viewer),
            r#"{"password": "hijacked-password"}"#
        )
        .0,
        403
    );
}

#[test]
fn validation_conflicts_and_http_errors() {
    let h = Harness::new();
    let (status, err) = h.admin(
        "POST",
        "/shares/smb",
        r#"{"name": "global", "path": "relative", "guest_ok": 1}"#,
    );
    assert_eq!(status, 400);
    assert_eq!(err["error"], "validation_failed");
    for f in ["name", "path", "guest_ok"] {
        assert!(err["fields"][f].is_string(), "{f}: {err}");
    }
    assert_eq!(h.admin("POST", "/shares/smb", SHARE).0, 201);
    let (status, err) = h.admin(
        "POST",
        "/shares/smb",
        r#"{"name": "DATA", "path": "/srv/x"}"#,
    );
    assert_eq!(status, 409);
    assert_eq!(err["error"], "conflict");
    assert!(err["fields"]["name"].is_string());
    assert_eq!(h.admin("POST", "/exports/nfs", EXPORT).0, 201);
    assert_eq!(
        h.admin("POST", "/exports/nfs", EXPORT).0,
        409,
        "overlap rule"
    );
    assert_eq!(h.admin("POST", "/iscsi/targets", TARGET).0, 201);
    assert_eq!(
        h.admin("POST", "/iscsi/targets", TARGET).0,
        409,
        "IQN unique"
    );
    let (status, err) = h.admin(
        "POST",
        "/iscsi/targets",
        r#"{"iqn": "iqn.2024-01.COM.example", "auth": "mutual_chap"}"#,
    );
    assert_eq!(status, 400);
    for f in [
        "iqn",
        "chap_user",
        "chap_secret",
        "mutual_user",
        "mutual_secret",
    ] {
        assert!(err["fields"][f].is_string(), "{f}: {err}");
    }
    assert_eq!(h.admin("POST", "/iscsi/targets/1/luns", LUN).0, 201);
    assert_eq!(
        h.admin("POST", "/iscsi/targets/1/luns", LUN).0,
        409,
        "LUN unique per target"
    );
    assert_eq!(h.admin("POST", "/iscsi/targets/99/luns", LUN).0, 404);
    let (status, err) = h.admin(
        "POST",
        "/iscsi/targets/1/luns",
        r#"{"lun": 256, "backstore": "fileio", "path": "/x", "size_bytes": 0}"#,
    );
    assert_eq!(status, 400);
    assert!(
        err["fields"]["lun"].is_string() && err["fields"]["size_bytes"].is_string(),
        "{err}"
    );
    // The target's secret is never shown.
    let (_, target) = h.admin("GET", "/iscsi/targets/1", "");
    assert!(!target.to_string().contains("secret-chap-1"), "{target}");
    assert_eq!(target["chap_user"], "u");
    let (_, preview) = h.admin("GET", "/config/preview/iscsi", "");
    assert!(!preview.to_string().contains("secret-chap-1"));
    // Cascade: deleting the target deletes its LUNs.
    assert_eq!(h.admin("DELETE", "/iscsi/targets/1", "").0, 204);
    assert_eq!(h.admin("GET", "/iscsi/targets/1/luns/0", "").0, 404);
    assert_eq!(h.admin("GET", "/shares/smb/99", "").0, 404);
    assert_eq!(h.admin("GET", "/shares/smb/abc", "").0, 404);
    assert_eq!(h.admin("GET", "/nothing/here", "").0, 404);
    assert_eq!(h.admin("DELETE", "/shares/smb", "").0, 405);
    assert_eq!(h.admin("POST", "/shares/smb", "{not json").0, 400);
    assert_eq!(h.admin("POST", "/shares/smb", "[1, 2]").0, 400);
    let big = format!(r#"{{"comment": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    assert_eq!(h.admin("POST", "/shares/smb", &big).0, 413);
    // The last administrator is protected over the API too.
    assert_eq!(h.admin("PUT", "/users/1", r#"{"role": "viewer"}"#).0, 409);
    assert_eq!(h.admin("DELETE", "/users/1", "").0, 409);
    // The API path prefix is accepted as well.
    assert_eq!(h.admin("GET", "/api/v1/shares/smb", "").0, 200);
}

#[test]
fn mutations_and_logins_are_audited_with_client_address_and_no_secrets() {
    let h = Harness::new();
    h.admin(
        "POST",
        "/users",
        r#"{"username": "bob", "password": "bobs-secret-password"}"#,
    );
    h.admin("POST", "/shares/smb", SHARE);
    h.admin(
        "POST",
        "/shares/smb",
        r#"{"name": "bad/name", "path": "/x"}"#,
    );
    h.admin("POST", "/iscsi/targets", TARGET);
    h.call(
        "POST",
        "/auth/login",
        None,
        r#"{"username": "bob", "password": "wrong-password"}"#,
    );
    let (status, rows) = h.admin("GET", "/audit-logs?limit=1000", "");
    assert_eq!(status, 200);
    let text = rows.to_string();
    assert!(
        !text.contains("bobs-secret-password") && !text.contains("secret-chap-1"),
        "{text}"
    );
    assert!(!text.contains(ADMIN_PW));
    let rows = rows.as_array().unwrap();
    let find = |action: &str, rtype: &str, result: &str| {
        rows.iter()
            .find(|r| r["action"] == action && r["resource_type"] == rtype && r["result"] == result)
            .unwrap_or_else(|| panic!("no {action} {rtype} {result} in {rows:?}"))
    };
    let created = find("create", "smb_share", "success");
    assert_eq!(created["client_addr"], CLIENT);
    assert_eq!(created["actor"], "admin");
    assert_eq!(created["resource_id"], "1");
    assert_eq!(created["details"]["name"], "data");
    find("create", "smb_share", "failure");
    find("create", "user", "success");
    find("login", "session", "success");
    let failed = find("login", "session", "failure");
    assert_eq!(failed["actor"], "bob");
    // Filters.
    let (_, only) = h.admin(
        "GET",
        "/audit-logs?resource_type=smb_share&action=create",
        "",
    );
    assert_eq!(only.as_array().unwrap().len(), 2);
    let (_, paged) = h.admin("GET", "/audit-logs?limit=1&offset=1", "");
    assert_eq!(paged.as_array().unwrap().len(), 1);
}
