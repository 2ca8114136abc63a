//! NFS exports: fields, validation (including the overlap rule) and columns (stored by
//! `entity.rs`).

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::entity::{Entity, keyed_by_id};
use super::error::NasError;
use super::input::Input;
use super::policy::PathPolicy;
use super::{list_from_sql, list_to_sql, validate};

pub const SQUASH_OPTIONS: &[&str] = &["root_squash", "no_root_squash", "all_squash"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NfsExport {
    pub id: i64,
    pub path: String,
    pub comment: String,
    pub clients: Vec<String>,
    pub read_only: bool,
    pub sync: bool,
    pub squash: String,
    pub anonuid: Option<u32>,
    pub anongid: Option<u32>,
    pub enabled: bool,
    /// Explicit consent to an insecure export (`no_root_squash` to every client `*`).
    pub allow_insecure: bool,
}

const FIELDS: &[&str] = &[
    "path",
    "comment",
    "clients",
    "read_only",
    "sync",
    "squash",
    "anonuid",
    "anongid",
    "enabled",
    "allow_insecure",
];
const READ_ONLY: &[&str] = &["id"];

/// Clients compare case-insensitively (host names) for duplicates and overlaps.
fn client_key(client: &str) -> String {
    client.to_lowercase()
}

/// `/srv/data/` and `/srv/data` are the same export path.
pub fn normalize_path(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    }
}

fn read(mut input: Input) -> Result<NfsExport, NasError> {
    input.reject_unknown(FIELDS, READ_ONLY);
    let path = input.required_string("path");
    if input.has("path") {
        input.check("path", validate::absolute_path(&path));
        if path.contains('"') {
            input.check("path", Err("must not contain `\"`".into()));
        }
    }
    let comment = input.string_or("comment", "");
    input.check("comment", validate::single_line(&comment, 256));
    let clients = input.string_list("clients");
    if !input.has("clients") || clients.is_empty() {
        input.check("clients", Err("needs at least one client".into()));
    }
    input.check(
        "clients",
        validate::list(&clients, validate::nfs_client, client_key),
    );
    let squash = input.string_or("squash", "root_squash");
    if !SQUASH_OPTIONS.contains(&squash.as_str()) {
        input.check(
            "squash",
            Err("must be root_squash, no_root_squash or all_squash".into()),
        );
    }
    let id_range = |v: Option<i64>| v.map(|v| v as u32);
    let export = NfsExport {
        id: 0,
        path: normalize_path(&path),
        comment,
        clients,
        read_only: input.bool_or("read_only", false),
        sync: input.bool_or("sync", true),
        squash,
        anonuid: id_range(input.optional_int("anonuid", 0, u32::MAX as i64)),
        anongid: id_range(input.optional_int("anongid", 0, u32::MAX as i64)),
        enabled: input.bool_or("enabled", true),
        allow_insecure: input.bool_or("allow_insecure", false),
    };
    if export.squash == "no_root_squash"
        && export.clients.iter().any(|c| c == "*")
        && !export.allow_insecure
    {
        input.check(
            "squash",
            Err("no_root_squash to every client (`*`) needs \"allow_insecure\": true".into()),
        );
    }
    input.finish()?;
    Ok(export)
}

impl Entity for NfsExport {
    const TABLE: &'static str = "nfs_exports";
    const NAME: &'static str = "NFS export";
    const COLUMNS: &'static [&'static str] = FIELDS;
    const ORDER: &'static str = "path, id";

    keyed_by_id!();

    fn from_row(row: &Row<'_>) -> rusqlite::Result<NfsExport> {
        Ok(NfsExport {
            id: row.get(0)?,
            path: row.get(1)?,
            comment: row.get(2)?,
            clients: list_from_sql(&row.get::<_, String>(3)?),
            read_only: row.get(4)?,
            sync: row.get(5)?,
            squash: row.get(6)?,
            anonuid: row.get(7)?,
            anongid: row.get(8)?,
            enabled: row.get(9)?,
            allow_insecure: row.get(10)?,
        })
    }

    fn values(&self) -> Vec<Value> {
        vec![
            self.path.clone().into(),
            self.comment.clone().into(),
            list_to_sql(&self.clients).into(),
            self.read_only.into(),
            self.sync.into(),
            self.squash.clone().into(),
            self.anonuid.into(),
            self.anongid.into(),
            self.enabled.into(),
            self.allow_insecure.into(),
        ]
    }

    fn check(&self, conn: &Connection) -> Result<(), NasError> {
        check_overlap(conn, self)
    }

    fn allowed(&self, policy: &PathPolicy) -> Result<(), NasError> {
        policy.check_path("path", &self.path)
    }
}

/// The overlap rule: the same path may not be exported to the same client twice, across
/// all exports (enabled or not, since enabling one later would create the clash).
fn check_overlap(conn: &Connection, export: &NfsExport) -> Result<(), NasError> {
    let mut stmt =
        conn.prepare("SELECT id, clients FROM nfs_exports WHERE path = ?1 AND id != ?2")?;
    let others = stmt
        .query_map(params![export.path, export.id], |r| {
            Ok((r.get::<_, i64>(0)?, list_from_sql(&r.get::<_, String>(1)?)))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (other_id, clients) in others {
        if let Some(clash) = export
            .clients
            .iter()
            .find(|c| clients.iter().any(|o| client_key(o) == client_key(c)))
        {
            return Err(NasError::conflict(
                "clients",
                format!(
                    "`{}` is already exported to `{clash}` by export {other_id}",
                    export.path
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;
    use crate::nas::entity::{self, create, read_update, update};

    fn read_new(body: &[u8]) -> Result<NfsExport, NasError> {
        entity::read_new(body)
    }

    #[test]
    fn same_path_same_client_twice_is_a_conflict() {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let a =
            read_new(br#"{"path": "/srv/a", "clients": ["10.0.0.0/24", "Host.example"]}"#).unwrap();
        create(&conn, &a, "t").unwrap();
        let clash = read_new(br#"{"path": "/srv/a/", "clients": ["host.EXAMPLE"]}"#).unwrap();
        let err = create(&conn, &clash, "t").unwrap_err();
        assert!(matches!(err, NasError::Conflict { .. }), "{err}");
        let other_client = read_new(br#"{"path": "/srv/a", "clients": ["10.0.1.0/24"]}"#).unwrap();
        let b = create(&conn, &other_client, "t").unwrap();
        let other_path = read_new(br#"{"path": "/srv/b", "clients": ["10.0.0.0/24"]}"#).unwrap();
        create(&conn, &other_path, "t").unwrap();
        // An update may not move an export onto a clash either, but may keep its own clients.
        let moved = read_update(br#"{"clients": ["10.0.0.0/24"]}"#, &b).unwrap();
        assert!(matches!(
            update(&conn, &moved, "t"),
            Err(NasError::Conflict { .. })
        ));
        let same = read_update(br#"{"comment": "x"}"#, &b).unwrap();
        update(&conn, &same, "t").unwrap();
    }

    #[test]
    fn validation_errors_per_field() {
        let err = read_new(
            br#"{"path": "x", "clients": ["a b", "*", "*"], "squash": "all", "anonuid": -1}"#,
        )
        .unwrap_err();
        let NasError::Invalid(fields) = err else {
            panic!()
        };
        for f in ["path", "clients", "squash", "anonuid"] {
            assert!(fields.contains_key(f), "{f}: {fields:?}");
        }
        let NasError::Invalid(f) = read_new(br#"{"path": "/x", "clients": []}"#).unwrap_err()
        else {
            panic!()
        };
        assert!(f.contains_key("clients"));
        let NasError::Invalid(f) =
            read_new(br#"{"path": "/x", "clients": ["*", "*"]}"#).unwrap_err()
        else {
            panic!()
        };
        assert!(f["clients"].contains("twice"), "{f:?}");
    }
}
