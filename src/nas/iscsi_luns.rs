//! iSCSI LUNs: number 0–255 unique per target, `block` or `fileio` backstore.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::error::NasError;
use super::input::Input;
use super::validate;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IscsiLun {
    pub id: i64,
    pub target_id: i64,
    pub lun: u8,
    pub backstore: String,
    /// `block`: the device, under `/dev/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `fileio`: the backing file and its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub read_only: bool,
}

const FIELDS: &[&str] = &[
    "lun",
    "backstore",
    "device",
    "path",
    "size_bytes",
    "read_only",
];
const READ_ONLY: &[&str] = &["id", "target_id"];

fn read(mut input: Input, target_id: i64) -> Result<IscsiLun, NasError> {
    input.reject_unknown(FIELDS, READ_ONLY);
    let lun = input.required_int("lun", 0, 255) as u8;
    let backstore = input.required_string("backstore");
    let mut device = input.optional_string("device");
    let mut path = input.optional_string("path");
    let mut size_bytes = input
        .optional_int("size_bytes", 1, i64::MAX)
        .map(|v| v as u64);
    match backstore.as_str() {
        "block" => {
            match &device {
                Some(d) if d.starts_with("/dev/") => {
                    input.check("device", validate::absolute_path(d))
                }
                Some(_) => input.check("device", Err("must be a device under /dev/".into())),
                None => input.check("device", Err("is required for a block backstore".into())),
            }
            path = None;
            size_bytes = None;
        }
        "fileio" => {
            match &path {
                Some(p) => input.check("path", validate::absolute_path(p)),
                None => input.check("path", Err("is required for a fileio backstore".into())),
            }
            if size_bytes.is_none() {
                input.check(
                    "size_bytes",
                    Err("is required for fileio and must be > 0".into()),
                );
            }
            device = None;
        }
        _ if input.has("backstore") => {
            input.check("backstore", Err("must be block or fileio".into()));
        }
        _ => {}
    }
    let lun = IscsiLun {
        id: 0,
        target_id,
        lun,
        backstore,
        device,
        path,
        size_bytes,
        read_only: input.bool_or("read_only", false),
    };
    input.finish()?;
    Ok(lun)
}

pub fn read_new(body: &[u8], target_id: i64) -> Result<IscsiLun, NasError> {
    read(Input::parse(body)?, target_id)
}

/// An update merges into the stored LUN; switching the backstore drops the other kind's
/// fields.
pub fn read_update(body: &[u8], current: &IscsiLun) -> Result<IscsiLun, NasError> {
    let base = serde_json::to_value(current).map_err(|e| NasError::Internal(e.to_string()))?;
    let mut lun = read(Input::parse(body)?.merged_over(base), current.target_id)?;
    lun.id = current.id;
    Ok(lun)
}

const COLUMNS: &str = "id, target_id, lun, backstore, device, path, size_bytes, read_only";

fn from_row(row: &Row<'_>) -> rusqlite::Result<IscsiLun> {
    Ok(IscsiLun {
        id: row.get(0)?,
        target_id: row.get(1)?,
        lun: row.get(2)?,
        backstore: row.get(3)?,
        device: row.get(4)?,
        path: row.get(5)?,
        size_bytes: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        read_only: row.get(7)?,
    })
}

/// LUNs of one target (or of all targets with `None`), ordered by target and number.
pub fn list(conn: &Connection, target_id: Option<i64>) -> Result<Vec<IscsiLun>, NasError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM iscsi_luns WHERE ?1 IS NULL OR target_id = ?1 ORDER BY target_id, lun"
    ))?;
    let rows = stmt
        .query_map([target_id], from_row)?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A LUN by target and LUN number (the API addresses LUNs by number).
pub fn get(conn: &Connection, target_id: i64, lun: i64) -> Result<IscsiLun, NasError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM iscsi_luns WHERE target_id = ?1 AND lun = ?2"),
        params![target_id, lun],
        from_row,
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("LUN {lun} of iSCSI target {target_id}")))
}

fn check_unique(conn: &Connection, lun: &IscsiLun) -> Result<(), NasError> {
    let taken: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM iscsi_luns WHERE target_id = ?1 AND lun = ?2 AND id != ?3)",
        params![lun.target_id, lun.lun, lun.id],
        |r| r.get(0),
    )?;
    if taken {
        return Err(NasError::conflict(
            "lun",
            format!("target {} already has LUN {}", lun.target_id, lun.lun),
        ));
    }
    Ok(())
}

pub fn create(conn: &Connection, lun: &IscsiLun, now: &str) -> Result<IscsiLun, NasError> {
    super::entity::get::<super::iscsi::IscsiTarget>(conn, lun.target_id)?;
    check_unique(conn, lun)?;
    conn.execute(
        "INSERT INTO iscsi_luns (target_id, lun, backstore, device, path, size_bytes, read_only,
             created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        params![
            lun.target_id,
            lun.lun,
            lun.backstore,
            lun.device,
            lun.path,
            lun.size_bytes.map(|v| v as i64),
            lun.read_only,
            now
        ],
    )?;
    get(conn, lun.target_id, lun.lun as i64)
}

pub fn update(conn: &Connection, lun: &IscsiLun, now: &str) -> Result<IscsiLun, NasError> {
    check_unique(conn, lun)?;
    conn.execute(
        "UPDATE iscsi_luns SET lun = ?1, backstore = ?2, device = ?3, path = ?4, size_bytes = ?5,
             read_only = ?6, updated_at = ?7
         WHERE id = ?8",
        params![
            lun.lun,
            lun.backstore,
            lun.device,
            lun.path,
            lun.size_bytes.map(|v| v as i64),
            lun.read_only,
            now,
            lun.id
        ],
    )?;
    get(conn, lun.target_id, lun.lun as i64)
}

pub fn delete(conn: &Connection, target_id: i64, lun: i64) -> Result<IscsiLun, NasError> {
    let found = get(conn, target_id, lun)?;
    conn.execute("DELETE FROM iscsi_luns WHERE id = ?1", [found.id])?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{db, entity, iscsi};

    fn setup() -> (Connection, i64) {
        let conn = db::open(&db::DbLocation::Memory).unwrap();
        let t: iscsi::IscsiTarget =
            entity::read_new(br#"{"iqn": "iqn.2024-01.com.example:t"}"#).unwrap();
        let id = entity::create(&conn, &t, "now").unwrap().id;
        (conn, id)
    }

    #[test]
    fn range_uniqueness_and_cascade() {
        let (conn, target) = setup();
        for bad in [
            r#"{"lun": 256, "backstore": "block", "device": "/dev/sdb"}"#,
            r#"{"lun": -1, "backstore": "block", "device": "/dev/sdb"}"#,
        ] {
            let NasError::Invalid(f) = read_new(bad.as_bytes(), target).unwrap_err() else {
                panic!()
            };
            assert!(f.contains_key("lun"), "{f:?}");
        }
        let l0 = read_new(
            br#"{"lun": 0, "backstore": "block", "device": "/dev/sdb"}"#,
            target,
        )
        .unwrap();
        create(&conn, &l0, "now").unwrap();
        let l255 = read_new(br#"{"lun": 255, "backstore": "fileio", "path": "/srv/lun.img", "size_bytes": 1048576}"#, target).unwrap();
        create(&conn, &l255, "now").unwrap();
        assert!(matches!(
            create(&conn, &l0, "now"),
            Err(NasError::Conflict { .. })
        ));
        assert_eq!(list(&conn, Some(target)).unwrap().len(), 2);
        entity::delete::<iscsi::IscsiTarget>(&conn, target).unwrap();
        assert!(list(&conn, None).unwrap().is_empty(), "cascade");
    }

    #[test]
    fn backstore_rules() {
        let fields = |b: &str| match read_new(b.as_bytes(), 1) {
            Err(NasError::Invalid(f)) => f,
            other => panic!("{other:?}"),
        };
        assert!(
            fields(r#"{"lun": 1, "backstore": "block", "device": "/srv/x"}"#)
                .contains_key("device")
        );
        assert!(fields(r#"{"lun": 1, "backstore": "block"}"#).contains_key("device"));
        assert!(
            fields(r#"{"lun": 1, "backstore": "fileio", "path": "/x", "size_bytes": 0}"#)
                .contains_key("size_bytes")
        );
        assert!(
            fields(r#"{"lun": 1, "backstore": "fileio", "size_bytes": 5}"#).contains_key("path")
        );
        assert!(fields(r#"{"lun": 1, "backstore": "rbd"}"#).contains_key("backstore"));
        let json = serde_json::to_value(
            read_new(
                br#"{"lun": 1, "backstore": "block", "device": "/dev/sdc"}"#,
                1,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(json.get("path").is_none() && json["device"] == "/dev/sdc");
    }

    #[test]
    fn luns_need_an_existing_target() {
        let (conn, _) = setup();
        let l = read_new(
            br#"{"lun": 1, "backstore": "block", "device": "/dev/sdb"}"#,
            999,
        )
        .unwrap();
        assert!(matches!(
            create(&conn, &l, "now"),
            Err(NasError::NotFound(_))
        ));
    }
}
