//! The audit log: one row per mutation and per login attempt, with secrets masked.

use rusqlite::{Connection, params_from_iter, types::Value as SqlValue};
use serde::Serialize;
use serde_json::Value;

use super::error::{FieldErrors, NasError};

/// Keys whose values never reach the audit log.
const SECRET_KEYS: &[&str] = &[
    "password",
    "password_hash",
    "chap_secret",
    "mutual_secret",
    "token",
    "secret",
];
pub const MASK: &str = "***";
/// Fragments that mark a key as secret whatever its exact spelling (`Password`,
/// `new_password`, `passwd`, `api_token`, …): a mistyped field is still masked.
const SECRET_FRAGMENTS: &[&str] = &["pass", "secret", "token", "hash", "key"];

fn is_secret_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SECRET_KEYS.contains(&lower.as_str()) || SECRET_FRAGMENTS.iter().any(|f| lower.contains(f))
}

/// One audit row to write (and, with its id, as the API returns it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    pub ts: String,
    pub actor: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub result: String,
    pub message: String,
    pub client_addr: Option<String>,
    pub details: Option<Value>,
}

impl Entry {
    pub fn new(actor: &str, action: &str, resource_type: &str, ts: &str) -> Entry {
        Entry {
            ts: ts.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            resource_type: resource_type.to_string(),
            resource_id: None,
            result: "success".to_string(),
            message: String::new(),
            client_addr: None,
            details: None,
        }
    }

    pub fn resource_id(mut self, id: impl ToString) -> Entry {
        self.resource_id = Some(id.to_string());
        self
    }

    pub fn result(mut self, result: &str) -> Entry {
        self.result = result.to_string();
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Entry {
        self.message = message.into();
        self
    }

    pub fn client_addr(mut self, addr: Option<&str>) -> Entry {
        self.client_addr = addr.map(str::to_string);
        self
    }

    pub fn details(mut self, details: Value) -> Entry {
        self.details = Some(details);
        self
    }
}

/// Replaces the values of secret keys, at any depth, with `***`.
pub fn mask_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret_key(key) {
                    *v = Value::String(MASK.into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// Appends a row. Details are masked here, so no caller can forget.
pub fn record(conn: &Connection, entry: &Entry) -> Result<i64, NasError> {
    let details = entry.details.clone().map(|mut d| {
        mask_secrets(&mut d);
        d.to_string()
    });
    conn.execute(
        "INSERT INTO audit_logs
            (ts, actor, action, resource_type, resource_id, result, message, client_addr, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        rusqlite::params![
            entry.ts,
            truncate(&entry.actor, 128),
            entry.action,
            entry.resource_type,
            entry.resource_id,
            entry.result,
            truncate(&entry.message, 1024),
            entry.client_addr,
            details
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

/// An audit row as the API returns it: its id and the entry's fields, flat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    #[serde(flatten)]
    pub entry: Entry,
}

impl std::ops::Deref for AuditRow {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

/// Filters of `GET /audit-logs`; `since`/`until` are inclusive RFC 3339 instants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

impl Filter {
    /// Reads the query pairs; unknown or malformed parameters are field errors.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Filter, NasError> {
        let mut filter = Filter {
            limit: DEFAULT_LIMIT,
            ..Filter::default()
        };
        let mut errors = FieldErrors::new();
        for (key, value) in pairs {
            match key.as_str() {
                "actor" => filter.actor = Some(value.clone()),
                "action" => filter.action = Some(value.clone()),
                "resource_type" => filter.resource_type = Some(value.clone()),
                "since" | "until" => match super::parse_ts(value) {
                    Some(ts) => {
                        let ts = Some(super::format_ts(ts));
                        if key == "since" {
                            filter.since = ts;
                        } else {
                            filter.until = ts;
                        }
                    }
                    None => {
                        errors.insert(key.clone(), "must be an RFC 3339 time".into());
                    }
                },
                "limit" => match value.parse::<i64>() {
                    Ok(n) if (1..=MAX_LIMIT).contains(&n) => filter.limit = n,
                    _ => {
                        errors.insert(key.clone(), format!("must be 1 to {MAX_LIMIT}"));
                    }
                },
                "offset" => match value.parse::<i64>() {
                    Ok(n) if n >= 0 => filter.offset = n,
                    _ => {
                        errors.insert(key.clone(), "must be 0 or more".into());
                    }
                },
                _ => {
                    errors.insert(key.clone(), "unknown query parameter".into());
                }
            }
        }
        super::error::check_fields(errors)?;
        Ok(filter)
    }
}

/// Rows matching `filter`, newest first.
pub fn query(conn: &Connection, filter: &Filter) -> Result<Vec<AuditRow>, NasError> {
    let mut sql = String::from(
        "SELECT id, ts, actor, action, resource_type, resource_id, result, message, \
         client_addr, details FROM audit_logs WHERE 1 = 1",
    );
    let mut args: Vec<SqlValue> = Vec::new();
    let mut add = |clause: &str, value: &Option<String>| {
        if let Some(v) = value {
            sql.push_str(clause);
            args.push(SqlValue::Text(v.clone()));
        }
    };
    add(" AND actor = ?", &filter.actor);
    add(" AND action = ?", &filter.action);
    add(" AND resource_type = ?", &filter.resource_type);
    add(" AND ts >= ?", &filter.since);
    add(" AND ts <= ?", &filter.until);
    sql.push_str(" ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?");
    args.push(SqlValue::Integer(filter.limit));
    args.push(SqlValue::Integer(filter.offset));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(args), |row| {
            let details: Option<String> = row.get(9)?;
            let entry = Entry {
                ts: row.get(1)?,
                actor: row.get(2)?,
                action: row.get(3)?,
                resource_type: row.get(4)?,
                resource_id: row.get(5)?,
                result: row.get(6)?,
                message: row.get(7)?,
                client_addr: row.get(8)?,
                details: details.and_then(|d| serde_json::from_str(&d).ok()),
            };
            Ok(AuditRow {
                id: row.get(0)?,
                entry,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let mut v = serde_json::json!({
            "username": "a", "password": "hunter2hunter2",
            "nested": [{"chap_secret": "abcdefghijkl", "mutual_secret": "x", "ok": 1}]
        });
        mask_secrets(&mut v);
        let text = v.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("abcdefghijkl"),
            "{text}"
        );
        assert!(text.contains("\"ok\":1"));
    }

    #[test]
    fn filters_and_paging() {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        for (i, (actor, action)) in [("alice", "create"), ("bob", "delete"), ("alice", "login")]
            .iter()
            .enumerate()
        {
            let ts = format!("2024-01-0{}T00:00:00.000Z", i + 1);
            record(
                &conn,
                &Entry::new(actor, action, "smb_share", &ts)
                    .details(serde_json::json!({"password": "secret-value"})),
            )
            .unwrap();
        }
        let all = query(
            &conn,
            &Filter {
                limit: 10,
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].action, "login", "newest first");
        assert!(
            !serde_json::to_string(&all)
                .unwrap()
                .contains("secret-value")
        );
        let q = |s: &str| {
            let pairs = crate::nas::input::parse_query(Some(s));
            query(&conn, &Filter::from_query(&pairs).unwrap()).unwrap()
        };
        assert_eq!(q("actor=alice").len(), 2);
        assert_eq!(q("action=delete").len(), 1);
        assert_eq!(q("since=2024-01-02T00:00:00Z").len(), 2);
        assert_eq!(q("until=2024-01-02T00:00:00Z").len(), 2);
        assert_eq!(
            q("since=2024-01-02T00:00:00Z&until=2024-01-02T00:00:00Z").len(),
            1
        );
        assert_eq!(q("limit=1&offset=1")[0].actor, "bob");
        assert!(Filter::from_query(&[("limit".into(), "0".into())]).is_err());
        assert!(Filter::from_query(&[("since".into(), "yesterday".into())]).is_err());
        assert!(Filter::from_query(&[("bogus".into(), "1".into())]).is_err());
    }
}

#[cfg(test)]
mod masking_tests {
    use super::*;

    #[test]
    fn secret_like_keys_are_masked_whatever_their_spelling() {
        let mut v = serde_json::json!({
            "Password": "a", "new_password": "b", "passwd": "c", "api_token": "d",
            "nested": [{"Chap_Secret": "e"}], "username": "alice"
        });
        mask_secrets(&mut v);
        let text = v.to_string();
        for secret in ["\"a\"", "\"b\"", "\"c\"", "\"d\"", "\"e\""] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("alice"));
    }
}
