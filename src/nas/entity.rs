//! The entity layer: one implementation of reading, listing, creating, updating and
//! deleting for every NAS entity kept in a table of its own and keyed by `id` (SMB shares,
//! NFS exports, iSCSI targets, snapshot policies). Each kind says only what is its own — its
//! fields and columns, its validation, its uniqueness rule, where it may point — by
//! implementing [`Entity`].

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use serde::Serialize;

use super::error::NasError;
use super::input::Input;
use super::policy::PathPolicy;

/// The members every entity implements alike: its `id` field, and `read` by the module's
/// own `read(Input)`.
macro_rules! keyed_by_id {
    () => {
        fn id(&self) -> i64 {
            self.id
        }

        fn set_id(&mut self, id: i64) {
            self.id = id;
        }

        fn read(input: Input) -> Result<Self, NasError> {
            read(input)
        }
    };
}
pub(crate) use keyed_by_id;

pub(crate) trait Entity: Serialize + Sized {
    /// The SQLite table.
    const TABLE: &'static str;
    /// How one is named in a "not found" answer (`SMB share 7`).
    const NAME: &'static str;
    /// The columns a create or update writes, in the order of [`Entity::values`]; `from_row`
    /// reads `id` (row index 0), these, then [`Entity::KEPT`].
    const COLUMNS: &'static [&'static str];
    /// Columns read but never written by the API (another part of Atlas keeps them).
    const KEPT: &'static [&'static str] = &[];
    /// How a listing is ordered (the order renderers use).
    const ORDER: &'static str;

    fn id(&self) -> i64;
    fn set_id(&mut self, id: i64);
    /// Validates a JSON object (fields, defaults, every bad field reported at once).
    fn read(input: Input) -> Result<Self, NasError>;
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self>;
    /// The values of [`Entity::COLUMNS`].
    fn values(&self) -> Vec<Value>;

    /// What an update's body is merged over (the entity as the API shows it, unless the
    /// kind keeps more than it shows, such as secrets).
    fn merge_base(&self) -> Result<serde_json::Value, NasError> {
        serde_json::to_value(self).map_err(|e| NasError::Internal(e.to_string()))
    }
    /// What an update keeps from the stored entity whatever its body says (beyond `id`).
    fn keep(&mut self, _current: &Self) {}
    /// Uniqueness (or overlap) against the other rows; `self.id` is 0 for a new one.
    fn check(&self, _conn: &Connection) -> Result<(), NasError> {
        Ok(())
    }
    /// Where it points, judged against `nas.allowed_paths` / `nas.allowed_devices`.
    fn allowed(&self, _policy: &PathPolicy) -> Result<(), NasError> {
        Ok(())
    }
}

fn select<E: Entity>() -> String {
    let columns: Vec<&str> = E::COLUMNS.iter().chain(E::KEPT).copied().collect();
    format!("SELECT id, {} FROM {}", columns.join(", "), E::TABLE)
}

/// A new entity from a request body.
pub(crate) fn read_new<E: Entity>(body: &[u8]) -> Result<E, NasError> {
    E::read(Input::parse(body)?)
}

/// An update: the body's fields replace those of `current`; absent fields stay.
pub(crate) fn read_update<E: Entity>(body: &[u8], current: &E) -> Result<E, NasError> {
    let mut changed = E::read(Input::parse(body)?.merged_over(current.merge_base()?))?;
    changed.set_id(current.id());
    changed.keep(current);
    Ok(changed)
}

/// Every row, in the kind's order.
pub(crate) fn list<E: Entity>(conn: &Connection) -> Result<Vec<E>, NasError> {
    let mut stmt = conn.prepare(&format!("{} ORDER BY {}", select::<E>(), E::ORDER))?;
    let rows = stmt.query_map([], E::from_row)?.collect::<Result<_, _>>()?;
    Ok(rows)
}

pub(crate) fn get<E: Entity>(conn: &Connection, id: i64) -> Result<E, NasError> {
    conn.query_row(
        &format!("{} WHERE id = ?1", select::<E>()),
        [id],
        E::from_row,
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("{} {id}", E::NAME)))
}

pub(crate) fn create<E: Entity>(conn: &Connection, entity: &E, now: &str) -> Result<E, NasError> {
    entity.check(conn)?;
    let columns = E::COLUMNS.join(", ");
    let n = E::COLUMNS.len();
    let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
    let mut values = entity.values();
    values.push(Value::from(now.to_string()));
    conn.execute(
        &format!(
            "INSERT INTO {} ({columns}, created_at, updated_at) VALUES ({}, ?{}, ?{})",
            E::TABLE,
            marks.join(", "),
            n + 1,
            n + 1
        ),
        params_from_iter(values),
    )?;
    get(conn, conn.last_insert_rowid())
}

pub(crate) fn update<E: Entity>(conn: &Connection, entity: &E, now: &str) -> Result<E, NasError> {
    get::<E>(conn, entity.id())?;
    entity.check(conn)?;
    let n = E::COLUMNS.len();
    let sets: Vec<String> = E::COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 1))
        .collect();
    let mut values = entity.values();
    values.push(Value::from(now.to_string()));
    values.push(Value::from(entity.id()));
    conn.execute(
        &format!(
            "UPDATE {} SET {}, updated_at = ?{} WHERE id = ?{}",
            E::TABLE,
            sets.join(", "),
            n + 1,
            n + 2
        ),
        params_from_iter(values),
    )?;
    get(conn, entity.id())
}

pub(crate) fn delete<E: Entity>(conn: &Connection, id: i64) -> Result<E, NasError> {
    let entity = get::<E>(conn, id)?;
    conn.execute(&format!("DELETE FROM {} WHERE id = ?1", E::TABLE), [id])?;
    Ok(entity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::db;
    use crate::nas::snapshot_policies::{SnapshotPolicy, set_last_run};

    #[test]
    fn one_crud_path_for_every_kind_with_kept_columns_untouched() {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let p: SnapshotPolicy =
            read_new(br#"{"dataset": "tank/a", "frequency": "daily", "retention": 3}"#).unwrap();
        let created = create(&conn, &p, "t0").unwrap();
        assert!(created.id > 0 && created.last_run_at.is_none());
        set_last_run(&conn, created.id, "2026-01-01T00:00:00Z").unwrap();
        let stored: SnapshotPolicy = get(&conn, created.id).unwrap();
        // An update can neither set nor clear what the scheduler keeps.
        let changed = read_update(
            br#"{"retention": 5, "last_run_at": "1999-01-01T00:00:00Z"}"#,
            &stored,
        )
        .unwrap();
        let updated = update(&conn, &changed, "t1").unwrap();
        assert_eq!(updated.retention, 5);
        assert_eq!(updated.last_run_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        let second: SnapshotPolicy =
            read_new(br#"{"dataset": "tank/0", "frequency": "daily", "retention": 1}"#).unwrap();
        create(&conn, &second, "t2").unwrap();
        let listed: Vec<String> = list::<SnapshotPolicy>(&conn)
            .unwrap()
            .into_iter()
            .map(|p| p.dataset)
            .collect();
        assert_eq!(listed, ["tank/0", "tank/a"], "in the kind's order");
        let mut ghost = updated.clone();
        ghost.id = 999;
        assert!(
            matches!(update(&conn, &ghost, "t"), Err(NasError::NotFound(m)) if m == "snapshot policy 999")
        );
        assert_eq!(
            delete::<SnapshotPolicy>(&conn, updated.id).unwrap(),
            updated
        );
        assert!(matches!(
            get::<SnapshotPolicy>(&conn, updated.id),
            Err(NasError::NotFound(_))
        ));
    }
}
