//! SMB shares: fields, validation and columns (stored by `entity.rs`).

use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use serde::Serialize;

use super::entity::{Entity, keyed_by_id};
use super::error::NasError;
use super::input::Input;
use super::policy::PathPolicy;
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

impl Entity for SmbShare {
    const TABLE: &'static str = "smb_shares";
    const NAME: &'static str = "SMB share";
    const COLUMNS: &'static [&'static str] = FIELDS;
    const ORDER: &'static str = "name COLLATE NOCASE, id";

    keyed_by_id!();

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

    fn values(&self) -> Vec<Value> {
        vec![
            self.name.clone().into(),
            self.path.clone().into(),
            self.comment.clone().into(),
            self.read_only.into(),
            self.browseable.into(),
            self.guest_ok.into(),
            list_to_sql(&self.valid_users).into(),
            list_to_sql(&self.hosts_allow).into(),
            list_to_sql(&self.hosts_deny).into(),
            self.enabled.into(),
        ]
    }

    fn check(&self, conn: &Connection) -> Result<(), NasError> {
        if value_taken(conn, Self::TABLE, "name", &self.name, Some(self.id))? {
            return Err(NasError::conflict(
                "name",
                format!(
                    "a share named `{}` already exists (names ignore case)",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    fn allowed(&self, policy: &PathPolicy) -> Result<(), NasError> {
        policy.check_path("path", &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;
    use crate::nas::entity::{create, delete, get, read_new, read_update, update};

    #[test]
    fn create_update_delete_with_case_insensitive_uniqueness() {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let share: SmbShare = read_new(br#"{"name": "Data", "path": "/srv/data"}"#).unwrap();
        let created = create(&conn, &share, "t").unwrap();
        assert!(!created.read_only && created.browseable && created.enabled);
        let dup: SmbShare = read_new(br#"{"name": "DATA", "path": "/srv/x"}"#).unwrap();
        assert!(matches!(
            create(&conn, &dup, "t"),
            Err(NasError::Conflict { .. })
        ));
        let changed = read_update(br#"{"read_only": true}"#, &created).unwrap();
        let updated = update(&conn, &changed, "t").unwrap();
        assert!(updated.read_only);
        assert_eq!(updated.name, "Data");
        delete::<SmbShare>(&conn, created.id).unwrap();
        assert!(matches!(
            get::<SmbShare>(&conn, created.id),
            Err(NasError::NotFound(_))
        ));
    }

    #[test]
    fn every_bad_field_is_reported() {
        let err = read_new::<SmbShare>(
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
