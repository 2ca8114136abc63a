//! SMB shares: validation and storage.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::error::NasError;
use super::input::Input;
use super::{list_from_sql, list_to_sql, validate, value_taken};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmbShare {
    pub id: i64,
    pub name: String,
    pub path: String,
    pub comment: String,
    pub read_only: bool,
    pub browseable: bool,
    pub guest_ok: bool,
    pub valid_users: Vec<String>,
    pub hosts_allow: Vec<String>,
    pub hosts_deny: Vec<String>,
    pub enabled: bool,
}

const FIELDS: &[&str] = &[
    "name",
    "path",
    "comment",
    "read_only",
    "browseable",
    "guest_ok",
    "valid_users",
    "hosts_allow",
    "hosts_deny",
    "enabled",
];
const READ_ONLY: &[&str] = &["id"];

/// Reads and validates a share from a JSON object (defaults: writable, browseable, no guests,
/// enabled).
fn read(mut input: Input) -> Result<SmbShare, NasError> {
    input.reject_unknown(FIELDS, READ_ONLY);
    let name = input.required_string("name");
    if input.has("name") {
        input.check("name", validate::smb_share_name(&name));
    }
    let path = input.required_string("path");
    if input.has("path") {
        input.check("path", validate::absolute_path(&path));
    }
    let comment = input.string_or("comment", "");
    input.check("comment", validate::single_line(&comment, 256));
    let share = SmbShare {
        id: 0,
        name,
        path,
        comment,
        read_only: input.bool_or("read_only", false),
        browseable: input.bool_or("browseable", true),
        guest_ok: input.bool_or("guest_ok", false),
        valid_users: input.string_list("valid_users"),
        hosts_allow: input.string_list("hosts_allow"),
        hosts_deny: input.string_list("hosts_deny"),
        enabled: input.bool_or("enabled", true),
    };
    let lower = |s: &str| s.to_lowercase();
    input.check(
        "valid_users",
        validate::list(&share.valid_users, validate::smb_valid_user, lower),
    );
    for (key, list) in [
        ("hosts_allow", &share.hosts_allow),
        ("hosts_deny", &share.hosts_deny),
    ] {
        input.check(key, validate::list(list, validate::smb_host_entry, lower));
    }
    input.finish()?;
    Ok(share)
}

pub fn read_new(body: &[u8]) -> Result<SmbShare, NasError> {
    read(Input::parse(body)?)
}

/// An update: the body's fields replace those of `current`; absent fields stay.
pub fn read_update(body: &[u8], current: &SmbShare) -> Result<SmbShare, NasError> {
    let base = serde_json::to_value(current).map_err(|e| NasError::Internal(e.to_string()))?;
    let mut share = read(Input::parse(body)?.merged_over(base))?;
    share.id = current.id;
    Ok(share)
}

const COLUMNS: &str = "id, name, path, comment, read_only, browseable, guest_ok, valid_users, hosts_allow, hosts_deny, enabled";

fn from_row(row: &Row<'_>) -> rusqlite::Result<SmbShare> {
    Ok(SmbShare {
        id: row.get(0)?,
        name: row.get(1)?,
        path: row.get(2)?,
        comment: row.get(3)?,
        read_only: row.get(4)?,
        browseable: row.get(5)?,
        guest_ok: row.get(6)?,
        valid_users: list_from_sql(&row.get::<_, String>(7)?),
        hosts_allow: list_from_sql(&row.get::<_, String>(8)?),
        hosts_deny: list_from_sql(&row.get::<_, String>(9)?),
        enabled: row.get(10)?,
    })
}

/// All shares ordered by name (case-insensitive), then id: the order renderers use.
pub fn list(conn: &Connection) -> Result<Vec<SmbShare>, NasError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM smb_shares ORDER BY name COLLATE NOCASE, id"
    ))?;
    let rows = stmt.query_map([], from_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, id: i64) -> Result<SmbShare, NasError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM smb_shares WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("SMB share {id}")))
}

fn check_unique(conn: &Connection, share: &SmbShare, except: Option<i64>) -> Result<(), NasError> {
    if value_taken(conn, "smb_shares", "name", &share.name, except)? {
        return Err(NasError::conflict(
            "name",
            format!(
                "a share named `{}` already exists (names ignore case)",
                share.name
            ),
        ));
    }
    Ok(())
}

pub fn create(conn: &Connection, share: &SmbShare, now: &str) -> Result<SmbShare, NasError> {
    check_unique(conn, share, None)?;
    conn.execute(
        "INSERT INTO smb_shares (name, path, comment, read_only, browseable, guest_ok, valid_users,
             hosts_allow, hosts_deny, enabled, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        params![
            share.name,
            share.path,
            share.comment,
            share.read_only,
            share.browseable,
            share.guest_ok,
            list_to_sql(&share.valid_users),
            list_to_sql(&share.hosts_allow),
            list_to_sql(&share.hosts_deny),
            share.enabled,
            now
        ],
    )?;
    get(conn, conn.last_insert_rowid())
}

pub fn update(conn: &Connection, share: &SmbShare, now: &str) -> Result<SmbShare, NasError> {
    get(conn, share.id)?;
    check_unique(conn, share, Some(share.id))?;
    conn.execute(
        "UPDATE smb_shares SET name = ?1, path = ?2, comment = ?3, read_only = ?4, browseable = ?5,
             guest_ok = ?6, valid_users = ?7, hosts_allow = ?8, hosts_deny = ?9, enabled = ?10,
             updated_at = ?11
         WHERE id = ?12",
        params![
            share.name,
            share.path,
            share.comment,
            share.read_only,
            share.browseable,
            share.guest_ok,
            list_to_sql(&share.valid_users),
            list_to_sql(&share.hosts_allow),
            list_to_sql(&share.hosts_deny),
            share.enabled,
            now,
            share.id
        ],
    )?;
    get(conn, share.id)
}

pub fn delete(conn: &Connection, id: i64) -> Result<SmbShare, NasError> {
    let share = get(conn, id)?;
    conn.execute("DELETE FROM smb_shares WHERE id = ?1", [id])?;
    Ok(share)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;

    #[test]
    fn create_update_delete_with_case_insensitive_uniqueness() {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let share = read_new(br#"{"name": "Data", "path": "/srv/data"}"#).unwrap();
        let created = create(&conn, &share, "t").unwrap();
        assert!(!created.read_only && created.browseable && created.enabled);
        let dup = read_new(br#"{"name": "DATA", "path": "/srv/x"}"#).unwrap();
        assert!(matches!(
            create(&conn, &dup, "t"),
            Err(NasError::Conflict { .. })
        ));
        let changed = read_update(br#"{"read_only": true}"#, &created).unwrap();
        let updated = update(&conn, &changed, "t").unwrap();
        assert!(updated.read_only);
        assert_eq!(updated.name, "Data");
        delete(&conn, created.id).unwrap();
        assert!(matches!(get(&conn, created.id), Err(NasError::NotFound(_))));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let err = read_new(
            br#"{"name": "homes", "path": "rel", "read_only": "yes",
                 "valid_users": ["ok", "bad user"], "hosts_allow": ["999.1.1.1"],
                 "hosts_deny": ["10.0.0.1", "10.0.0.1"], "comment": "a\nb", "extra": 1}"#,
        )
        .unwrap_err();
        let NasError::Invalid(fields) = err else {
            panic!("{err}")
        };
        for f in [
            "name",
            "path",
            "read_only",
            "valid_users",
            "hosts_allow",
            "hosts_deny",
            "comment",
            "extra",
        ] {
            assert!(fields.contains_key(f), "{f}: {fields:?}");
        }
    }
}
