//! iSCSI targets: IQN and CHAP rules, storage. LUNs are in `iscsi_luns`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::error::NasError;
use super::input::Input;
use super::{list_from_sql, list_to_sql, validate, value_taken};

pub const AUTH_MODES: &[&str] = &["none", "chap", "mutual_chap"];
pub const CHAP_SECRET_MIN: usize = 12;
pub const CHAP_SECRET_MAX: usize = 16;

/// A target. Secrets are write-only: stored, rendered into LIO's file, never serialised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IscsiTarget {
    pub id: i64,
    pub iqn: String,
    pub alias: String,
    pub initiators: Vec<String>,
    pub auth: String,
    pub chap_user: Option<String>,
    #[serde(skip_serializing)]
    pub chap_secret: Option<String>,
    pub mutual_user: Option<String>,
    #[serde(skip_serializing)]
    pub mutual_secret: Option<String>,
    pub portals: Vec<String>,
    pub enabled: bool,
}

impl IscsiTarget {
    /// The full stored form, secrets included (the base an update merges into).
    fn stored_value(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("chap_secret".into(), self.chap_secret.clone().into());
            map.insert("mutual_secret".into(), self.mutual_secret.clone().into());
        }
        value
    }
}

const FIELDS: &[&str] = &[
    "iqn",
    "alias",
    "initiators",
    "auth",
    "chap_user",
    "chap_secret",
    "mutual_user",
    "mutual_secret",
    "portals",
    "enabled",
];
const READ_ONLY: &[&str] = &["id"];

fn chap_user(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > 255 {
        return Err("is required (1 to 255 characters)".into());
    }
    if !user.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may use only printable ASCII without spaces".into());
    }
    Ok(())
}

fn chap_secret(secret: &str) -> Result<(), String> {
    let len = secret.chars().count();
    if !(CHAP_SECRET_MIN..=CHAP_SECRET_MAX).contains(&len) {
        return Err(format!(
            "must be {CHAP_SECRET_MIN} to {CHAP_SECRET_MAX} characters"
        ));
    }
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may use only printable ASCII without spaces".into());
    }
    Ok(())
}

fn read(mut input: Input) -> Result<IscsiTarget, NasError> {
    input.reject_unknown(FIELDS, READ_ONLY);
    let iqn = input.required_string("iqn");
    if input.has("iqn") {
        input.check("iqn", validate::iscsi_name(&iqn));
    }
    let alias = input.string_or("alias", "");
    input.check("alias", validate::single_line(&alias, 255));
    let initiators = input.string_list("initiators");
    input.check(
        "initiators",
        validate::list(&initiators, validate::iscsi_name, |s| s.to_lowercase()),
    );
    let portals = input.string_list("portals");
    input.check(
        "portals",
        validate::list(&portals, validate::portal, str::to_string),
    );
    let auth = input.string_or("auth", "none");
    if !AUTH_MODES.contains(&auth.as_str()) {
        input.check("auth", Err("must be none, chap or mutual_chap".into()));
    }
    let mut chap_user_v = input.optional_string("chap_user").filter(|s| !s.is_empty());
    let mut chap_secret_v = input
        .optional_string("chap_secret")
        .filter(|s| !s.is_empty());
    let mut mutual_user_v = input
        .optional_string("mutual_user")
        .filter(|s| !s.is_empty());
    let mut mutual_secret_v = input
        .optional_string("mutual_secret")
        .filter(|s| !s.is_empty());
    if auth == "chap" || auth == "mutual_chap" {
        input.check("chap_user", chap_user(chap_user_v.as_deref().unwrap_or("")));
        match &chap_secret_v {
            Some(s) => input.check("chap_secret", chap_secret(s)),
            None => input.check("chap_secret", Err(format!("is required with auth {auth}"))),
        }
    } else {
        chap_user_v = None;
        chap_secret_v = None;
    }
    if auth == "mutual_chap" {
        input.check(
            "mutual_user",
            chap_user(mutual_user_v.as_deref().unwrap_or("")),
        );
        match &mutual_secret_v {
            Some(s) => {
                input.check("mutual_secret", chap_secret(s));
                if chap_secret_v.as_ref() == Some(s) {
                    input.check("mutual_secret", Err("must differ from chap_secret".into()));
                }
            }
            None => input.check(
                "mutual_secret",
                Err("is required with auth mutual_chap".into()),
            ),
        }
    } else {
        mutual_user_v = None;
        mutual_secret_v = None;
    }
    let target = IscsiTarget {
        id: 0,
        iqn,
        alias,
        initiators,
        auth,
        chap_user: chap_user_v,
        chap_secret: chap_secret_v,
        mutual_user: mutual_user_v,
        mutual_secret: mutual_secret_v,
        portals,
        enabled: input.bool_or("enabled", true),
    };
    input.finish()?;
    Ok(target)
}

pub fn read_new(body: &[u8]) -> Result<IscsiTarget, NasError> {
    read(Input::parse(body)?)
}

/// An update merges into the stored target; secrets not sent are kept.
pub fn read_update(body: &[u8], current: &IscsiTarget) -> Result<IscsiTarget, NasError> {
    let mut target = read(Input::parse(body)?.merged_over(current.stored_value()))?;
    target.id = current.id;
    Ok(target)
}

const COLUMNS: &str = "id, iqn, alias, initiators, auth, chap_user, chap_secret, mutual_user, \
                       mutual_secret, portals, enabled";

fn from_row(row: &Row<'_>) -> rusqlite::Result<IscsiTarget> {
    Ok(IscsiTarget {
        id: row.get(0)?,
        iqn: row.get(1)?,
        alias: row.get(2)?,
        initiators: list_from_sql(&row.get::<_, String>(3)?),
        auth: row.get(4)?,
        chap_user: row.get(5)?,
        chap_secret: row.get(6)?,
        mutual_user: row.get(7)?,
        mutual_secret: row.get(8)?,
        portals: list_from_sql(&row.get::<_, String>(9)?),
        enabled: row.get(10)?,
    })
}

/// All targets ordered by IQN.
pub fn list(conn: &Connection) -> Result<Vec<IscsiTarget>, NasError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM iscsi_targets ORDER BY iqn, id"
    ))?;
    let rows = stmt.query_map([], from_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, id: i64) -> Result<IscsiTarget, NasError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM iscsi_targets WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("iSCSI target {id}")))
}

fn check_unique(
    conn: &Connection,
    target: &IscsiTarget,
    except: Option<i64>,
) -> Result<(), NasError> {
    if value_taken(conn, "iscsi_targets", "iqn", &target.iqn, except)? {
        return Err(NasError::conflict(
            "iqn",
            format!("a target with IQN `{}` already exists", target.iqn),
        ));
    }
    Ok(())
}

pub fn create(conn: &Connection, t: &IscsiTarget, now: &str) -> Result<IscsiTarget, NasError> {
    check_unique(conn, t, None)?;
    conn.execute(
        "INSERT INTO iscsi_targets (iqn, alias, initiators, auth, chap_user, chap_secret,
             mutual_user, mutual_secret, portals, enabled, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
        params![
            t.iqn,
            t.alias,
            list_to_sql(&t.initiators),
            t.auth,
            t.chap_user,
            t.chap_secret,
            t.mutual_user,
            t.mutual_secret,
            list_to_sql(&t.portals),
            t.enabled,
            now
        ],
    )?;
    get(conn, conn.last_insert_rowid())
}

pub fn update(conn: &Connection, t: &IscsiTarget, now: &str) -> Result<IscsiTarget, NasError> {
    get(conn, t.id)?;
    check_unique(conn, t, Some(t.id))?;
    conn.execute(
        "UPDATE iscsi_targets SET iqn = ?1, alias = ?2, initiators = ?3, auth = ?4, chap_user = ?5,
             chap_secret = ?6, mutual_user = ?7, mutual_secret = ?8, portals = ?9, enabled = ?10,
             updated_at = ?11
         WHERE id = ?12",
        params![
            t.iqn,
            t.alias,
            list_to_sql(&t.initiators),
            t.auth,
            t.chap_user,
            t.chap_secret,
            t.mutual_user,
            t.mutual_secret,
            list_to_sql(&t.portals),
            t.enabled,
            now,
            t.id
        ],
    )?;
    get(conn, t.id)
}

/// Deletes the target; its LUNs go with it (`ON DELETE CASCADE`).
pub fn delete(conn: &Connection, id: i64) -> Result<IscsiTarget, NasError> {
    let target = get(conn, id)?;
    conn.execute("DELETE FROM iscsi_targets WHERE id = ?1", [id])?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;

    const IQN: &str = "iqn.2024-01.com.example:disk1";

    #[test]
    fn chap_rules() {
        let body = |extra: &str| format!(r#"{{"iqn": "{IQN}", {extra}}}"#);
        let fields = |extra: &str| match read_new(body(extra).as_bytes()) {
            Err(NasError::Invalid(f)) => f,
            other => panic!("{other:?}"),
        };
        assert!(fields(r#""auth": "chap""#).contains_key("chap_user"));
        assert!(fields(r#""auth": "chap", "chap_user": "u""#).contains_key("chap_secret"));
        assert!(
            fields(r#""auth": "chap", "chap_user": "u", "chap_secret": "short""#)
                .contains_key("chap_secret")
        );
        assert!(
            fields(r#""auth": "chap", "chap_user": "u", "chap_secret": "seventeen-chars!!""#)
                .contains_key("chap_secret")
        );
        let same = fields(
            r#""auth": "mutual_chap", "chap_user": "u", "chap_secret": "twelve-chars",
               "mutual_user": "m", "mutual_secret": "twelve-chars""#,
        );
        assert!(same["mutual_secret"].contains("differ"), "{same:?}");
        let ok = read_new(
            body(
                r#""auth": "mutual_chap", "chap_user": "u", "chap_secret": "twelve-chars",
                 "mutual_user": "m", "mutual_secret": "sixteen-chars-ok""#,
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(ok.mutual_secret.as_deref(), Some("sixteen-chars-ok"));
        let json = serde_json::to_string(&ok).unwrap();
        assert!(
            !json.contains("twelve-chars") && !json.contains("sixteen"),
            "{json}"
        );
        // auth none drops any CHAP fields.
        let none = read_new(body(r#""chap_user": "u", "chap_secret": "x""#).as_bytes()).unwrap();
        assert_eq!(none.chap_user, None);
    }

    #[test]
    fn update_keeps_unsent_secrets_and_iqn_is_unique() {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let t = read_new(
            format!(r#"{{"iqn": "{IQN}", "auth": "chap", "chap_user": "u", "chap_secret": "twelve-chars"}}"#)
                .as_bytes(),
        )
        .unwrap();
        let created = create(&conn, &t, "now").unwrap();
        let changed = read_update(br#"{"alias": "renamed"}"#, &created).unwrap();
        let updated = update(&conn, &changed, "now").unwrap();
        assert_eq!(updated.chap_secret.as_deref(), Some("twelve-chars"));
        assert!(matches!(
            create(&conn, &t, "now"),
            Err(NasError::Conflict { .. })
        ));
    }

    #[test]
    fn initiators_and_portals_are_checked() {
        let err = read_new(
            format!(r#"{{"iqn": "{IQN}", "initiators": ["iqn.bad"], "portals": ["1.2.3.4"]}}"#)
                .as_bytes(),
        )
        .unwrap_err();
        let NasError::Invalid(f) = err else { panic!() };
        assert!(
            f.contains_key("initiators") && f.contains_key("portals"),
            "{f:?}"
        );
    }
}
