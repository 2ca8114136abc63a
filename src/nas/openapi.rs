//! The OpenAPI 3.0 document served at `/api/v1/openapi.json`.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

fn op(summary: &str, role: Option<&str>, body: Option<&str>, ok: (&str, Option<&str>)) -> Value {
    let mut o = Map::new();
    let description = match role {
        Some(r) => format!("{summary} (role: {r})"),
        None => format!("{summary} (no login needed)"),
    };
    o.insert("summary".into(), description.into());
    if role.is_none() {
        o.insert("security".into(), json!([]));
    }
    if let Some(schema) = body {
        o.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
        );
    }
    let mut responses = Map::new();
    let (status, schema) = ok;
    let mut ok_body = json!({"description": "success"});
    if let Some(schema) = schema {
        let schema = if let Some(item) = schema.strip_suffix("[]") {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}})
        } else {
            json!({"$ref": format!("#/components/schemas/{schema}")})
        };
        ok_body["content"] = json!({"application/json": {"schema": schema}});
    }
    responses.insert(status.into(), ok_body);
    for (code, what) in [
        ("400", "invalid request (field errors in `fields`)"),
        ("401", "not logged in"),
        ("403", "role too low"),
        ("404", "not found"),
        ("409", "conflict"),
    ] {
        responses.insert(code.into(), json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
    }
    o.insert("responses".into(), Value::Object(responses));
    Value::Object(o)
}

/// GET list + POST create, and GET/PUT/PATCH/DELETE one.
fn crud(
    paths: &mut Map<String, Value>,
    base: &str,
    item: &str,
    schema: &str,
    what: &str,
    write_role: &str,
) {
    paths.insert(
        base.into(),
        json!({
            "get": op(&format!("List {what}"), Some("viewer"), None, ("200", Some(&format!("{schema}[]")))),
            "post": op(&format!("Create a {what}"), Some(write_role), Some(schema), ("201", Some(schema))),
        }),
    );
    paths.insert(
        item.into(),
        json!({
            "get": op(&format!("Get a {what}"), Some("viewer"), None, ("200", Some(schema))),
            "put": op(&format!("Update a {what} (absent fields keep their value)"), Some(write_role), Some(schema), ("200", Some(schema))),
            "patch": op(&format!("Update a {what} (same as PUT)"), Some(write_role), Some(schema), ("200", Some(schema))),
            "delete": op(&format!("Delete a {what}"), Some(write_role), None, ("204", None)),
        }),
    );
}

fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn build() -> Value {
    let mut paths = Map::new();
    paths.insert(
        "/health".into(),
        json!({"get": op("Health and schema version", None, None, ("200", None))}),
    );
    paths.insert(
        "/openapi.json".into(),
        json!({"get": op("This document", None, None, ("200", None))}),
    );
    paths.insert("/auth/login".into(), json!({"post": op("Log in; returns a bearer token", None, Some("Login"), ("200", Some("LoginResult")))}));
    paths.insert(
        "/auth/logout".into(),
        json!({"post": op("Revoke the token sent", Some("viewer"), None, ("204", None))}),
    );
    paths.insert(
        "/auth/me".into(),
        json!({"get": op("The logged-in user", Some("viewer"), None, ("200", Some("User")))}),
    );
    crud(
        &mut paths,
        "/users",
        "/users/{id}",
        "User",
        "user",
        "administrator (users may change their own password and email)",
    );
    crud(
        &mut paths,
        "/shares/smb",
        "/shares/smb/{id}",
        "SmbShare",
        "SMB share",
        "operator",
    );
    crud(
        &mut paths,
        "/exports/nfs",
        "/exports/nfs/{id}",
        "NfsExport",
        "NFS export",
        "operator",
    );
    crud(
        &mut paths,
        "/iscsi/targets",
        "/iscsi/targets/{id}",
        "IscsiTarget",
        "iSCSI target (deleting one deletes its LUNs)",
        "operator",
    );
    crud(
        &mut paths,
        "/iscsi/targets/{id}/luns",
        "/iscsi/targets/{id}/luns/{lun}",
        "IscsiLun",
        "LUN (addressed by its number)",
        "operator",
    );
    crud(
        &mut paths,
        "/snapshot-policies",
        "/snapshot-policies/{id}",
        "SnapshotPolicy",
        "snapshot policy",
        "operator",
    );
    paths.insert(
        "/audit-logs".into(),
        json!({"get": op("Audit rows, newest first; query: actor, action, resource_type, since, until (RFC 3339), limit (1-1000, default 100), offset", Some("administrator"), None, ("200", Some("AuditRow[]")))}),
    );
    paths.insert(
        "/config/preview/{kind}".into(),
        json!({"get": op("Rendered file for kind smb | nfs | iscsi (text; iscsi is JSON; CHAP secrets masked)", Some("viewer"), None, ("200", None))}),
    );
    paths.insert(
        "/config/apply".into(),
        json!({"post": op("Write, validate and reload; body optional {\"kinds\": [\"smb\",\"nfs\",\"iscsi\"]}", Some("operator"), None, ("200", Some("ApplyReport")))}),
    );
    paths.insert(
        "/config/backup".into(),
        json!({"post": op("A consistent copy of the database (application/vnd.sqlite3)", Some("administrator"), None, ("200", None))}),
    );
    paths.insert(
        "/config/restore".into(),
        json!({"post": op("Replace the configuration with a backup (body: the database file); ends all sessions", Some("administrator"), None, ("200", None))}),
    );
    let s = |t: &str| json!({"type": t});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let ro = |t: &str| json!({"type": t, "readOnly": true});
    let wo = json!({"type": "string", "writeOnly": true});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Atlas NAS API", "version": env!("CARGO_PKG_VERSION")},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": object(json!({"error": s("string"), "message": s("string"), "fields": {"type": "object", "additionalProperties": {"type": "string"}}}), &["error", "message"]),
                "Login": object(json!({"username": s("string"), "password": s("string")}), &["username", "password"]),
                "LoginResult": object(json!({"token": s("string"), "user": {"$ref": "#/components/schemas/User"}, "expires_in": s("integer")}), &[]),
                "User": object(json!({"id": ro("integer"), "username": s("string"), "password": wo, "role": {"type": "string", "enum": ["administrator", "operator", "viewer"]}, "email": s("string"), "active": s("boolean"), "created_at": ro("string"), "updated_at": ro("string"), "last_login_at": ro("string")}), &["username", "password"]),
                "SmbShare": object(json!({"id": ro("integer"), "name": s("string"), "path": s("string"), "comment": s("string"), "read_only": s("boolean"), "browseable": s("boolean"), "guest_ok": s("boolean"), "valid_users": strings, "hosts_allow": strings, "hosts_deny": strings, "enabled": s("boolean")}), &["name", "path"]),
                "NfsExport": object(json!({"id": ro("integer"), "path": s("string"), "comment": s("string"), "clients": strings, "read_only": s("boolean"), "sync": s("boolean"), "squash": {"type": "string", "enum": ["root_squash", "no_root_squash", "all_squash"]}, "anonuid": s("integer"), "anongid": s("integer"), "enabled": s("boolean"), "allow_insecure": s("boolean")}), &["path", "clients"]),
                "IscsiTarget": object(json!({"id": ro("integer"), "iqn": s("string"), "alias": s("string"), "initiators": strings, "auth": {"type": "string", "enum": ["none", "chap", "mutual_chap"]}, "chap_user": s("string"), "chap_secret": wo, "mutual_user": s("string"), "mutual_secret": wo, "portals": strings, "enabled": s("boolean")}), &["iqn"]),
                "IscsiLun": object(json!({"id": ro("integer"), "target_id": ro("integer"), "lun": {"type": "integer", "minimum": 0, "maximum": 255}, "backstore": {"type": "string", "enum": ["block", "fileio"]}, "device": s("string"), "path": s("string"), "size_bytes": s("integer"), "read_only": s("boolean")}), &["lun", "backstore"]),
                "SnapshotPolicy": object(json!({"id": ro("integer"), "dataset": s("string"), "recursive": s("boolean"), "frequency": {"type": "string", "enum": ["hourly", "daily", "weekly", "monthly"]}, "retention": {"type": "integer", "minimum": 1, "maximum": 512}, "prefix": s("string"), "enabled": s("boolean"), "last_run_at": ro("string")}), &["dataset", "frequency", "retention"]),
                "AuditRow": object(json!({"id": s("integer"), "ts": s("string"), "actor": s("string"), "action": s("string"), "resource_type": s("string"), "resource_id": s("string"), "result": s("string"), "message": s("string"), "client_addr": s("string"), "details": s("object")}), &[]),
                "ApplyReport": object(json!({"dry_run": s("boolean"), "files": {"type": "array", "items": s("object")}, "commands": strings}), &[]),
            }
        }
    })
}

/// Built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(build)
}
