//! Snapshot policies: fields, validation, columns (stored by `entity.rs`). Scheduling is
//! in `snapshots`.

use rusqlite::types::Value;
use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::entity::{Entity, keyed_by_id};
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

impl Entity for SnapshotPolicy {
    const TABLE: &'static str = "snapshot_policies";
    const NAME: &'static str = "snapshot policy";
    const COLUMNS: &'static [&'static str] = FIELDS;
    /// `last_run_at` is the scheduler's (`set_last_run`).
    const KEPT: &'static [&'static str] = &["last_run_at"];
    const ORDER: &'static str = "dataset, id";

    keyed_by_id!();

    fn keep(&mut self, current: &Self) {
        self.last_run_at = current.last_run_at.clone();
    }

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

    fn values(&self) -> Vec<Value> {
        vec![
            self.dataset.clone().into(),
            self.recursive.into(),
            self.frequency.clone().into(),
            self.retention.into(),
            self.prefix.clone().into(),
            self.enabled.into(),
        ]
    }

    fn check(&self, conn: &Connection) -> Result<(), NasError> {
        check_unique(conn, self)
    }
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

pub fn set_last_run(conn: &Connection, id: i64, at: &str) -> Result<(), NasError> {
    conn.execute(
        "UPDATE snapshot_policies SET last_run_at = ?1 WHERE id = ?2",
        params![at, id],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;
    use crate::nas::entity::{self, create};

    fn read_new(body: &[u8]) -> Result<SnapshotPolicy, NasError> {
        entity::read_new(body)
    }

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
