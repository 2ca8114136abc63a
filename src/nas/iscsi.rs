//! iSCSI targets: fields, IQN and CHAP rules, columns (stored by `entity.rs`; deleting a
//! target deletes its LUNs, `ON DELETE CASCADE`). LUNs are in `iscsi_luns`.

use rusqlite::types::Value;
use rusqlite::{Connection, Row};
use serde::Serialize;

use super::entity::{Entity, keyed_by_id};
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

impl Entity for IscsiTarget {
    const TABLE: &'static str = "iscsi_targets";
    const NAME: &'static str = "iSCSI target";
    const COLUMNS: &'static [&'static str] = FIELDS;
    const ORDER: &'static str = "iqn, id";

    keyed_by_id!();

    /// The full stored form, secrets included: an update keeps the secrets it does not send.
    fn merge_base(&self) -> Result<serde_json::Value, NasError> {
        let mut value =
            serde_json::to_value(self).map_err(|e| NasError::Internal(e.to_string()))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("chap_secret".into(), self.chap_secret.clone().into());
            map.insert("mutual_secret".into(), self.mutual_secret.clone().into());
        }
        Ok(value)
    }

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

    fn values(&self) -> Vec<Value> {
        vec![
            self.iqn.clone().into(),
            self.alias.clone().into(),
            list_to_sql(&self.initiators).into(),
            self.auth.clone().into(),
            self.chap_user.clone().into(),
            self.chap_secret.clone().into(),
            self.mutual_user.clone().into(),
            self.mutual_secret.clone().into(),
            list_to_sql(&self.portals).into(),
            self.enabled.into(),
        ]
    }

    fn check(&self, conn: &Connection) -> Result<(), NasError> {
        if value_taken(conn, Self::TABLE, "iqn", &self.iqn, Some(self.id))? {
            return Err(NasError::conflict(
                "iqn",
                format!("a target with IQN `{}` already exists", self.iqn),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;
    use crate::nas::entity::{self, create, read_update, update};

    fn read_new(body: &[u8]) -> Result<IscsiTarget, NasError> {
        entity::read_new(body)
    }

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
