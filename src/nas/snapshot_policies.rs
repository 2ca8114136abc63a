//! Snapshot policies: validation and storage. Scheduling is in `snapshots`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::error::NasError;
use super::input::Input;
use super::validate;

pub const FREQUENCIES: &[&str] = &["hourly", "daily", "weekly", "monthly"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotPolicy {
    pub id: i64,
    pub dataset: String,
    pub recursive: bool,
    pub frequency: String,
    pub retention: u32,
    pub prefix: String,
    pub enabled: bool,
    pub last_run_at: Option<String>,
}

const FIELDS: &[&str] = &[
    "dataset",
    "recursive",
    "frequency",
    "retention",
    "prefix",
    "enabled",
];
/// `last_run_at` belongs to the scheduler; a client echoing it back is ignored.
const READ_ONLY: &[&str] = &["id", "last_run_at"];

fn read(mut input: Input) -> Result<SnapshotPolicy, NasError> {
    input.reject_unknown(FIELDS, READ_ONLY);
    let dataset = input.required_string("dataset");
    if input.has("dataset") {
        input.check("dataset", validate::zfs_dataset(&dataset));
    }
    let frequency = input.required_string("frequency");
    if input.has("frequency") && !FREQUENCIES.contains(&frequency.as_str()) {
        input.check(
            "frequency",
            Err("must be hourly, daily, weekly or monthly".into()),
        );
    }
    let retention = input.required_int("retention", 1, 512) as u32;
    let prefix = input.string_or("prefix", "auto");
    input.check("prefix", validate::snapshot_prefix(&prefix));
    let policy = SnapshotPolicy {
        id: 0,
        dataset,
        recursive: input.bool_or("recursive", false),
        frequency,
        retention,
        prefix,
        enabled: input.bool_or("enabled", true),
        last_run_at: None,
    };
    input.finish()?;
    Ok(policy)
}

pub fn read_new(body: &[u8]) -> Result<SnapshotPolicy, NasError> {
    read(Input::parse(body)?)
}

pub fn read_update(body: &[u8], current: &SnapshotPolicy) -> Result<SnapshotPolicy, NasError> {
    let base = serde_json::to_value(current).map_err(|e| NasError::Internal(e.to_string()))?;
    let mut policy = read(Input::parse(body)?.merged_over(base))?;
    policy.id = current.id;
    policy.last_run_at = current.last_run_at.clone();
    Ok(policy)
}

const COLUMNS: &str = "id, dataset, recursive, frequency, retention, prefix, enabled, last_run_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<SnapshotPolicy> {
    Ok(SnapshotPolicy {
        id: row.get(0)?,
        dataset: row.get(1)?,
        recursive: row.get(2)?,
        frequency: row.get(3)?,
        retention: row.get(4)?,
        prefix: row.get(5)?,
        enabled: row.get(6)?,
        last_run_at: row.get(7)?,
    })
}

pub fn list(conn: &Connection) -> Result<Vec<SnapshotPolicy>, NasError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM snapshot_policies ORDER BY dataset, id"
    ))?;
    let rows = stmt.query_map([], from_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, id: i64) -> Result<SnapshotPolicy, NasError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM snapshot_policies WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("snapshot policy {id}")))
}

/// Two policies with the same dataset, prefix and frequency would prune each other's
/// snapshots.
fn check_unique(conn: &Connection, p: &SnapshotPolicy) -> Result<(), NasError> {
    let taken: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM snapshot_policies
                       WHERE dataset = ?1 AND prefix = ?2 AND frequency = ?3 AND id != ?4)",
        params![p.dataset, p.prefix, p.frequency, p.id],
        |r| r.get(0),
    )?;
    if taken {
        return Err(NasError::conflict(
            "prefix",
            format!(
                "a {} policy with prefix `{}` already exists for `{}`",
                p.frequency, p.prefix, p.dataset
            ),
        ));
    }
    Ok(())
}

pub fn create(
    conn: &Connection,
    p: &SnapshotPolicy,
    now: &str,
) -> Result<SnapshotPolicy, NasError> {
    check_unique(conn, p)?;
    conn.execute(
        "INSERT INTO snapshot_policies (dataset, recursive, frequency, retention, prefix, enabled,
             created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            p.dataset,
            p.recursive,
            p.frequency,
            p.retention,
            p.prefix,
            p.enabled,
            now
        ],
    )?;
    get(conn, conn.last_insert_rowid())
}

pub fn update(
    conn: &Connection,
    p: &SnapshotPolicy,
    now: &str,
) -> Result<SnapshotPolicy, NasError> {
    get(conn, p.id)?;
    check_unique(conn, p)?;
    conn.execute(
        "UPDATE snapshot_policies SET dataset = ?1, recursive = ?2, frequency = ?3, retention = ?4,
             prefix = ?5, enabled = ?6, updated_at = ?7
         WHERE id = ?8",
        params![
            p.dataset,
            p.recursive,
            p.frequency,
            p.retention,
            p.prefix,
            p.enabled,
            now,
            p.id
        ],
    )?;
    get(conn, p.id)
}

pub fn set_last_run(conn: &Connection, id: i64, at: &str) -> Result<(), NasError> {
    conn.execute(
        "UPDATE snapshot_policies SET last_run_at = ?1 WHERE id = ?2",
        params![at, id],
    )?;
    Ok(())
}

pub fn delete(conn: &Connection, id: i64) -> Result<SnapshotPolicy, NasError> {
    let p = get(conn, id)?;
    conn.execute("DELETE FROM snapshot_policies WHERE id = ?1", [id])?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;

    #[test]
    fn validation_and_uniqueness() {
        let NasError::Invalid(f) = read_new(
            br#"{"dataset": "tank/", "frequency": "yearly", "retention": 513, "prefix": "a b"}"#,
        )
        .unwrap_err() else {
            panic!()
        };
        for k in ["dataset", "frequency", "retention", "prefix"] {
            assert!(f.contains_key(k), "{k}: {f:?}");
        }
        for r in ["0", "513"] {
            let body = format!(r#"{{"dataset": "tank", "frequency": "daily", "retention": {r}}}"#);
            assert!(read_new(body.as_bytes()).is_err());
        }
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let p =
            read_new(br#"{"dataset": "tank/data", "frequency": "daily", "retention": 1}"#).unwrap();
        assert_eq!(p.prefix, "auto");
        create(&conn, &p, "t").unwrap();
        assert!(matches!(
            create(&conn, &p, "t"),
            Err(NasError::Conflict { .. })
        ));
        let p512 =
            read_new(br#"{"dataset": "tank/data", "frequency": "hourly", "retention": 512}"#)
                .unwrap();
        create(&conn, &p512, "t").unwrap();
    }
}
