//! The NAS REST API of a real node over HTTPS: login, roles on endpoints, validation,
//! conflicts, audit rows with client addresses, backup → change → restore, and the CLI.

use std::process::Command;

use atlas_tests::https::{CurlResponse, curl};
use atlas_tests::{ADMIN_PASSWORD, Node, atlas_bin, run_with_input};
use serde_json::{Value, json};

struct Api<'a> {
    node: &'a Node,
}

impl Api<'_> {
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> CurlResponse {
        let url = format!("https://{}/api/v1{path}", self.node.https_addr());
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let payload = body.map(Value::to_string);
        let mut args = vec!["-X", method];
        if let Some(auth) = &auth {
            args.extend(["-H", auth.as_str()]);
        }
        if let Some(payload) = &payload {
            args.extend([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                payload.as_str(),
            ]);
        }
        curl(&self.node.ca_path(), &url, &args)
    }

    fn login(&self, username: &str, password: &str) -> String {
        let r = self.call(
            "POST",
            "/auth/login",
            None,
            Some(&json!({"username": username, "password": password})),
        );
        assert_eq!(r.status, 200, "login {username}: {r:?}");
        r.json()["token"].as_str().expect("token").to_string()
    }

    fn create_user(&self, admin: &str, username: &str, role: &str) -> String {
        let password = format!("{username}-password-123");
        let r = self.call(
            "POST",
            "/users",
            Some(admin),
            Some(&json!({"username": username, "password": password, "role": role})),
        );
        assert_eq!(r.status, 201, "{r:?}");
        assert!(
            r.json().get("password").is_none(),
            "password returned: {}",
            r.body
        );
        self.login(username, &password)
    }

    /// POSTs `body` to `path` as `token` and expects 201 Created.
    fn create(&self, token: &str, path: &str, body: Value) -> CurlResponse {
        let r = self.call("POST", path, Some(token), Some(&body));
        assert_eq!(r.status, 201, "POST {path}: {r:?}");
        r
    }
}

#[test]
fn login_me_logout_and_wrong_passwords() {
    let node = Node::start();
    let api = Api { node: &node };
    let wrong = api.call(
        "POST",
        "/auth/login",
        None,
        Some(&json!({"username": "admin", "password": "nope"})),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(api.call("GET", "/auth/me", None, None).status, 401);
    let token = api.login("admin", ADMIN_PASSWORD);
    let me = api.call("GET", "/auth/me", Some(&token), None);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["username"], "admin");
    assert_eq!(me.json()["role"], "administrator");
    assert!(api.call("POST", "/auth/logout", Some(&token), None).status < 300);
    assert_eq!(
        api.call("GET", "/auth/me", Some(&token), None).status,
        401,
        "token still valid after logout"
    );
    // Both attempts are in the audit log, without the password.
    let admin = api.login("admin", ADMIN_PASSWORD);
    let audit = api.call("GET", "/audit-logs?limit=100", Some(&admin), None);
    assert_eq!(audit.status, 200);
    assert!(audit.body.contains("login"), "{}", audit.body);
    assert!(
        !audit.body.contains("nope") && !audit.body.contains(ADMIN_PASSWORD),
        "secret in audit: {}",
        audit.body
    );
}

#[test]
fn roles_are_enforced_on_endpoints() {
    let node = Node::start();
    let api = Api { node: &node };
    let admin = api.login("admin", ADMIN_PASSWORD);
    let operator = api.create_user(&admin, "olga", "operator");
    let viewer = api.create_user(&admin, "victor", "viewer");
    let share = json!({"name": "media", "path": "/srv/media"});

    assert_eq!(
        api.call("GET", "/shares/smb", None, None).status,
        401,
        "reads need a login"
    );
    assert_eq!(
        api.call("GET", "/shares/smb", Some(&viewer), None).status,
        200
    );
    assert_eq!(
        api.call("POST", "/shares/smb", Some(&viewer), Some(&share))
            .status,
        403
    );
    assert_eq!(
        api.call("GET", "/audit-logs", Some(&viewer), None).status,
        403
    );
    let created = api.call("POST", "/shares/smb", Some(&operator), Some(&share));
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(
        api.call("GET", "/audit-logs", Some(&operator), None).status,
        403
    );
    assert_eq!(
        api.call(
            "POST",
            "/users",
            Some(&operator),
            Some(&json!({"username": "x", "password": "long-enough-pw", "role": "viewer"}))
        )
        .status,
        403
    );
    let id = created.json()["id"].as_i64().expect("id");
    assert_eq!(
        api.call("DELETE", &format!("/shares/smb/{id}"), Some(&viewer), None)
            .status,
        403
    );
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/shares/smb/{id}"),
            Some(&operator),
            None
        )
        .status,
        204
    );
    assert_eq!(
        api.call("GET", &format!("/shares/smb/{id}"), Some(&viewer), None)
            .status,
        404
    );
}

#[test]
fn validation_conflicts_and_malformed_bodies() {
    let node = Node::start();
    let api = Api { node: &node };
    let admin = api.login("admin", ADMIN_PASSWORD);
    let bad = api.call(
        "POST",
        "/shares/smb",
        Some(&admin),
        Some(&json!({"name": "bad/name", "path": "relative/path"})),
    );
    assert_eq!(bad.status, 400, "{bad:?}");
    let fields = &bad.json()["fields"];
    assert!(
        fields.get("name").is_some() && fields.get("path").is_some(),
        "{}",
        bad.body
    );
    let ok = api.call(
        "POST",
        "/shares/smb",
        Some(&admin),
        Some(&json!({"name": "Media", "path": "/srv/media"})),
    );
    assert_eq!(ok.status, 201);
    let dup = api.call(
        "POST",
        "/shares/smb",
        Some(&admin),
        Some(&json!({"name": "media", "path": "/srv/other"})),
    );
    assert_eq!(dup.status, 409, "{dup:?}");
    // Malformed JSON is a 400 naming the problem, never a 500.
    let url = format!("https://{}/api/v1/exports/nfs", node.https_addr());
    let auth = format!("Authorization: Bearer {admin}");
    for body in ["{", "[]", "{\"path\": 5}", "\u{1}\u{2}"] {
        let r = curl(
            &node.ca_path(),
            &url,
            &["-X", "POST", "-H", &auth, "--data-binary", body],
        );
        assert_eq!(r.status, 400, "{body:?}: {r:?}");
        assert!(r.json()["error"].is_string());
    }
    // The audit row of the API's own request carries the client address.
    let audit = api.call(
        "GET",
        "/audit-logs?resource_type=smb_share",
        Some(&admin),
        None,
    );
    assert!(audit.body.contains("127.0.0.1"), "{}", audit.body);
}

#[test]
fn backup_change_restore() {
    let node = Node::start();
    let api = Api { node: &node };
    let admin = api.login("admin", ADMIN_PASSWORD);
    api.create(
        &admin,
        "/exports/nfs",
        json!({"path": "/srv/a", "clients": ["10.0.0.0/8"]}),
    );
    let backup = node.dir().join("nas-backup.db");
    let url = |p: &str| format!("https://{}/api/v1{p}", node.https_addr());
    let auth = format!("Authorization: Bearer {admin}");
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(node.ca_path())
        .args(["-X", "POST", "-H", &auth, "-o"])
        .arg(&backup)
        .arg(url("/config/backup"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&backup)
            .expect("backup")
            .starts_with(b"SQLite format 3")
    );

    api.create(
        &admin,
        "/exports/nfs",
        json!({"path": "/srv/b", "clients": ["*"]}),
    );
    let data = format!("@{}", backup.display());
    // Without an administrator's token the upload is refused before it is read. The client
    // announces the body with `Expect: 100-continue` (as curl does for large uploads) and
    // gets the refusal instead of `100 Continue`, so it never sends the body. Without the
    // header the server closes the connection unread, and a client still sending would see
    // a broken pipe rather than the answer.
    let expect = [
        "--http1.1",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "20",
    ];
    let operator = api.create_user(&admin, "otto", "operator");
    let operator_auth = format!("Authorization: Bearer {operator}");
    let mut args = expect.to_vec();
    args.extend(["-X", "POST", "-H", &operator_auth, "--data-binary", &data]);
    let refused = curl(&node.ca_path(), &url("/config/restore"), &args);
    assert_eq!(refused.status, 403, "{refused:?}");
    let mut args = expect.to_vec();
    args.extend(["-X", "POST", "--data-binary", &data]);
    let anonymous = curl(&node.ca_path(), &url("/config/restore"), &args);
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    // An administrator's upload is told to go on at once (curl would otherwise wait 20 s).
    let mut args = expect.to_vec();
    args.extend(["-X", "POST", "-H", &auth, "--data-binary", &data]);
    let started = std::time::Instant::now();
    let restored = curl(&node.ca_path(), &url("/config/restore"), &args);
    assert!(restored.status < 300, "{restored:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the server did not answer Expect: 100-continue"
    );
    // Restore ends sessions; log in again and see the backed-up state.
    let admin = api.login("admin", ADMIN_PASSWORD);
    let exports = api.call("GET", "/exports/nfs", Some(&admin), None);
    assert!(
        exports.body.contains("/srv/a") && !exports.body.contains("/srv/b"),
        "{}",
        exports.body
    );
    let audit = api.call("GET", "/audit-logs?limit=200", Some(&admin), None);
    assert!(
        audit.body.contains("restore"),
        "restore not audited: {}",
        audit.body
    );
}

#[test]
fn cli_adds_users_the_running_server_accepts() {
    let node = Node::start();
    let out = run_with_input(
        Command::new(atlas_bin())
            .args(["nas", "-c"])
            .arg(node.config_path())
            .args([
                "user",
                "add",
                "carol",
                "--role",
                "operator",
                "--password-stdin",
            ]),
        b"carol-password-123\n",
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api = Api { node: &node };
    let token = api.login("carol", "carol-password-123");
    assert_eq!(
        api.call("GET", "/auth/me", Some(&token), None).json()["role"],
        "operator"
    );
    // The CLI's change is audited like the API's.
    let admin = api.login("admin", ADMIN_PASSWORD);
    let audit = api.call(
        "GET",
        "/audit-logs?resource_type=user&limit=50",
        Some(&admin),
        None,
    );
    assert!(
        audit.body.contains("user added by the CLI"),
        "{}",
        audit.body
    );
    let listed = run_with_input(
        Command::new(atlas_bin())
            .args(["nas", "-c"])
            .arg(node.config_path())
            .args(["user", "list"]),
        b"",
        std::time::Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("carol") && text.contains("admin"), "{text}");
    assert!(!text.contains("argon2"), "hash printed: {text}");
    let backup = node.dir().join("cli-backup.db");
    let out = run_with_input(
        // Exactly as docs/nas.md shows it: `-c` after the subcommand and its argument.
        Command::new(atlas_bin())
            .args(["nas", "backup"])
            .arg(&backup)
            .arg("-c")
            .arg(node.config_path()),
        b"",
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::metadata(&backup).expect("backup file").len() > 0);
}

#[test]
fn openapi_and_preview() {
    let node = Node::start();
    let api = Api { node: &node };
    let doc = api.call("GET", "/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"].get("/shares/smb").is_some() || doc.body.contains("/shares/smb"));
    let admin = api.login("admin", ADMIN_PASSWORD);
    api.create(
        &admin,
        "/shares/smb",
        json!({"name": "docs", "path": "/srv/docs"}),
    );
    let preview = api.call("GET", "/config/preview/smb", Some(&admin), None);
    assert_eq!(preview.status, 200);
    assert!(
        preview.body.contains("[docs]") && preview.body.contains("path = /srv/docs"),
        "{}",
        preview.body
    );
}

#[test]
fn apply_is_a_dry_run_by_default_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("etc");
    let node = Node::start_with(&format!(
        "nas:\n  smb_conf_path: {0}/smb.conf\n  exports_path: {0}/exports\n  lio_config_path: {0}/saveconfig.json",
        out.display()
    ));
    let api = Api { node: &node };
    let admin = api.login("admin", ADMIN_PASSWORD);
    api.create(
        &admin,
        "/shares/smb",
        json!({"name": "docs", "path": "/srv/docs"}),
    );
    let operator = api.create_user(&admin, "opal", "operator");
    let viewer = api.create_user(&admin, "vera", "viewer");
    assert_eq!(
        api.call("POST", "/config/apply", Some(&viewer), None)
            .status,
        403
    );
    let report = api.call("POST", "/config/apply", Some(&operator), None);
    assert_eq!(report.status, 200, "{report:?}");
    assert_eq!(report.json()["dry_run"], true, "{}", report.body);
    assert!(report.body.contains("smb.conf"), "{}", report.body);
    assert!(!out.exists(), "a dry run wrote files");
}
