//! Backup and restore with SQLite's online backup API.
//!
//! A backup is a consistent copy of the whole database taken while the server runs. A
//! restore checks the file (SQLite header, integrity, schema version), migrates an older
//! schema in a staging copy, and then copies the staging database into the live one in a
//! single backup step — one write transaction, so readers see the old state or the new one,
//! never a mix. The running server uses the same connection and sees the restored state at
//! once; another process (the CLI) restoring the file is seen by the server on its next
//! query.
//!
//! Two things survive a restore on purpose: the audit log (a restore must not erase the
//! trail, so the live rows replace the backup's) — and nothing else: all sessions end, since
//! the restored users may differ.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::backup::{Backup, StepResult};
use serde::Serialize;

use super::error::NasError;
use super::policy::PathPolicy;
use super::{NasStore, audit, db, entity, format_ts, iscsi_luns, nfs, smb};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Copies everything from `from` into `to` in one step, retrying while the source is busy.
fn copy_database(from: &Connection, to: &mut Connection) -> Result<(), NasError> {
    let backup = Backup::new(from, to)?;
    for _ in 0..200 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                std::thread::sleep(Duration::from_millis(25))
            }
            _ => std::thread::sleep(Duration::from_millis(25)),
        }
    }
    Err(NasError::Internal(
        "database stayed busy during backup".into(),
    ))
}

fn temp_sibling(path: &Path, tag: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{tag}-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a consistent copy of the live database to `dest` (atomically: temp file + rename).
/// Returns the size in bytes.
pub fn backup_to_file(store: &NasStore, dest: &Path) -> Result<u64, NasError> {
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_sibling(dest, "atlas-tmp");
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> Result<u64, NasError> {
        super::db::create_private_file(&tmp)?;
        let mut out = Connection::open(&tmp)?;
        copy_database(&store.connection(), &mut out)?;
        // A self-contained file: no -wal beside it.
        out.pragma_update(None, "journal_mode", "DELETE")?;
        drop(out);
        crate::files::rename_durably(&tmp, dest)?;
        Ok(std::fs::metadata(dest)?.len())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A consistent copy of the live database as bytes (`POST /config/backup`).
pub fn backup_to_bytes(store: &NasStore) -> Result<Vec<u8>, NasError> {
    let dir = scratch_dir()?;
    let path = dir.join("backup.db");
    let result = backup_to_file(store, &path).and_then(|_| Ok(std::fs::read(&path)?));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn scratch_dir() -> Result<PathBuf, NasError> {
    let dir = std::env::temp_dir().join(format!(
        "atlas-nas-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    // Owner-only: it briefly holds a copy of the database.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
    Ok(dir)
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RestoreReport {
    pub restored: bool,
    /// Schema version of the backup file (older ones are migrated).
    pub backup_schema_version: i64,
    pub schema_version: i64,
}

/// Checks a backup file and loads it into a migrated in-memory staging database. SQLite
/// errors here mean a damaged or foreign file, so they are the client's problem (400).
fn stage(src: &Path) -> Result<(Connection, i64), NasError> {
    stage_checked(src).map_err(|e| match e {
        NasError::Db(e) => NasError::NotABackup(e.to_string()),
        other => other,
    })
}

fn stage_checked(src: &Path) -> Result<(Connection, i64), NasError> {
    let mut header = [0u8; 16];
    {
        use std::io::Read;
        let mut file = std::fs::File::open(src)?;
        if file.read_exact(&mut header).is_err() || &header != SQLITE_MAGIC {
            return Err(NasError::NotABackup("not an SQLite database".into()));
        }
    }
    let source = db::open_existing_readonly(src)
        .map_err(|e| NasError::NotABackup(format!("cannot open: {e}")))?;
    let version = db::schema_version(&source)?;
    if version > db::SCHEMA_VERSION {
        return Err(NasError::SchemaTooNew {
            found: version,
            supported: db::SCHEMA_VERSION,
        });
    }
    let has_users: bool = source.query_row(
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users')",
        [],
        |r| r.get(0),
    )?;
    if version < 1 || !has_users {
        return Err(NasError::NotABackup(
            "no Atlas NAS schema in the file".into(),
        ));
    }
    // Atlas's schema has no triggers or views: one in a backup could rewrite the live data
    // (e.g. erase audit rows) after the restore.
    let foreign: i64 = source.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type IN ('trigger', 'view')",
        [],
        |r| r.get(0),
    )?;
    if foreign > 0 {
        return Err(NasError::NotABackup(
            "the file holds triggers or views, which Atlas never creates".into(),
        ));
    }
    // Sessions end with a restore: a backup without an active administrator would lock
    // everyone out.
    let has_admin: bool = source
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE role = 'administrator' AND active = 1)",
            [],
            |r| r.get(0),
        )
        .unwrap_or(false);
    if !has_admin {
        return Err(NasError::NotABackup(
            "the backup has no active administrator".into(),
        ));
    }
    let integrity: String = source.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        return Err(NasError::NotABackup(format!(
            "integrity check failed: {integrity}"
        )));
    }
    let mut staging = Connection::open_in_memory()?;
    copy_database(&source, &mut staging)?;
    db::configure(&staging, &db::DbLocation::Memory)?;
    db::migrate(&staging)?;
    Ok((staging, version))
}

/// Rows in a backup obey the rules of rows made through the API: a restore cannot bring in
/// a share of `/`, an export of `/etc` or a LUN over `/dev/sda` past `nas.allowed_paths`
/// and `nas.allowed_devices`, nor `no_root_squash` to `*` without `allow_insecure`.
fn check_policy(conn: &Connection, policy: &PathPolicy) -> Result<(), NasError> {
    // A field error names the row: `smb_shares[3].path`.
    let of_row = |row: String| {
        move |e: NasError| match e {
            NasError::Invalid(fields) => NasError::Invalid(
                fields
                    .into_iter()
                    .map(|(k, v)| (format!("{row}.{k}"), format!("in the backup: {v}")))
                    .collect(),
            ),
            other => other,
        }
    };
    for share in entity::list::<smb::SmbShare>(conn)? {
        policy
            .check_path("path", &share.path)
            .map_err(of_row(format!("smb_shares[{}]", share.id)))?;
    }
    for export in entity::list::<nfs::NfsExport>(conn)? {
        let row = format!("nfs_exports[{}]", export.id);
        policy
            .check_path("path", &export.path)
            .map_err(of_row(row.clone()))?;
        if export.squash == "no_root_squash"
            && export.clients.iter().any(|c| c == "*")
            && !export.allow_insecure
        {
            return Err(NasError::field(
                &format!("{row}.squash"),
                "in the backup: no_root_squash to every client (`*`) needs allow_insecure",
            ));
        }
    }
    for lun in iscsi_luns::list(conn, None)? {
        let row = format!("iscsi_luns[{}]", lun.id);
        if let Some(device) = &lun.device {
            policy
                .check_device("device", device)
                .map_err(of_row(row.clone()))?;
        }
        if let Some(path) = &lun.path {
            policy.check_path("path", path).map_err(of_row(row))?;
        }
    }
    Ok(())
}

/// Replaces the live database with the backup at `src`. Audited as `restore` by `actor`.
pub fn restore_from_file(
    store: &NasStore,
    src: &Path,
    actor: &str,
    client_addr: Option<&str>,
) -> Result<RestoreReport, NasError> {
    let (mut staging, backup_version) = stage(src)?;
    check_policy(&staging, &store.options().paths)?;
    let _serialised = store.apply_guard();
    let mut live = store.connection();
    let ts = format_ts(store.now());
    {
        let tx = staging.transaction()?;
        tx.execute("DELETE FROM sessions", [])?;
        tx.execute("DELETE FROM audit_logs", [])?;
        copy_audit_log(&live, &tx)?;
        audit::record(
            &tx,
            &audit::Entry::new(actor, "restore", "database", &ts)
                .client_addr(client_addr)
                .message("configuration restored from a backup; all sessions ended")
                .details(serde_json::json!({"backup_schema_version": backup_version})),
        )?;
        tx.commit()?;
    }
    copy_database(&staging, &mut live)?;
    tracing::warn!(actor, "NAS configuration restored from a backup");
    Ok(RestoreReport {
        restored: true,
        backup_schema_version: backup_version,
        schema_version: db::SCHEMA_VERSION,
    })
}

fn copy_audit_log(live: &Connection, staging: &Connection) -> Result<(), NasError> {
    let mut read = live.prepare(
        "SELECT id, ts, actor, action, resource_type, resource_id, result, message, client_addr, details
         FROM audit_logs ORDER BY id",
    )?;
    let mut write = staging.prepare(
        "INSERT INTO audit_logs (id, ts, actor, action, resource_type, resource_id, result,
             message, client_addr, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut rows = read.query([])?;
    while let Some(row) = rows.next()? {
        let values: Vec<rusqlite::types::Value> =
            (0..10).map(|i| row.get(i)).collect::<Result<_, _>>()?;
        write.execute(rusqlite::params_from_iter(values))?;
    }
    Ok(())
}

/// `POST /config/restore`: the body is a database file.
pub fn restore_from_bytes(
    store: &NasStore,
    bytes: &[u8],
    actor: &str,
    client_addr: Option<&str>,
) -> Result<RestoreReport, NasError> {
    if bytes.len() < SQLITE_MAGIC.len() || &bytes[..16] != SQLITE_MAGIC {
        return Err(NasError::NotABackup("not an SQLite database".into()));
    }
    let dir = scratch_dir()?;
    let path = dir.join("restore.db");
    let result = std::fs::write(&path, bytes)
        .map_err(NasError::from)
        .and_then(|_| restore_from_file(store, &path, actor, client_addr));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::{DbLocation, NasOptions};
    use std::sync::Arc;

    fn file_store(path: &Path) -> NasStore {
        NasStore::open_with(
            DbLocation::File(path.to_path_buf()),
            NasOptions {
                initial_admin_password: Some("initial-admin-pw".into()),
                ..Default::default()
            },
            Arc::new(crate::nas::DryRunRunner::default()),
        )
        .unwrap()
    }

    fn share_names(store: &NasStore) -> Vec<String> {
        store
            .read(entity::list::<smb::SmbShare>)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    #[test]
    fn backup_change_restore_keeps_audit_and_ends_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir.path().join("live.db"));
        let add = |name: &str| {
            let s = entity::read_new::<smb::SmbShare>(
                format!(r#"{{"name": "{name}", "path": "/srv/{name}"}}"#).as_bytes(),
            )
            .unwrap();
            store.write(|c| entity::create(c, &s, "t")).unwrap();
        };
        add("before");
        let backup = dir.path().join("backups/nas.db");
        assert!(backup_to_file(&store, &backup).unwrap() > 0);
        add("after");
        store
            .write(|c| {
                audit::record(
                    c,
                    &audit::Entry::new("x", "create", "smb_share", "2099-01-01T00:00:00.000Z"),
                )
            })
            .unwrap();
        let token = crate::nas::auth::login(&store, "admin", "initial-admin-pw", None)
            .unwrap()
            .token;
        let report = restore_from_file(&store, &backup, "admin", Some("127.0.0.1:1")).unwrap();
        assert_eq!(report.schema_version, db::SCHEMA_VERSION);
        assert_eq!(
            share_names(&store),
            vec!["before"],
            "running store sees the restored state"
        );
        let now = store.now();
        assert!(
            store
                .read(|c| crate::nas::auth::authenticate(c, &token, now))
                .is_err()
        );
        let rows = store
            .read(|c| {
                audit::query(
                    c,
                    &audit::Filter {
                        limit: 1000,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        assert!(
            rows.iter().any(|r| r.ts.starts_with("2099")),
            "audit rows after the backup survive"
        );
        assert_eq!(rows.iter().filter(|r| r.action == "restore").count(), 1);
        // Another connection to the same file (another process, e.g. the CLI) sees it too.
        let other = file_store(&dir.path().join("live.db"));
        assert_eq!(share_names(&other), vec!["before"]);
    }

    #[test]
    fn a_backup_cannot_bring_in_what_the_policy_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir.path().join("live.db"));
        let share: smb::SmbShare =
            entity::read_new(br#"{"name": "data", "path": "/srv/data"}"#).unwrap();
        store.write(|c| entity::create(c, &share, "t")).unwrap();
        let backup = dir.path().join("nas.db");
        backup_to_file(&store, &backup).unwrap();
        // Another node allows only /tank: the backup's share of /srv/data is refused, and
        // nothing changes.
        let strict = NasStore::open_with(
            DbLocation::File(dir.path().join("strict.db")),
            NasOptions {
                initial_admin_password: Some("initial-admin-pw".into()),
                paths: PathPolicy {
                    paths: vec!["/tank".into()],
                    devices: vec!["/dev/zvol/".into()],
                },
                ..Default::default()
            },
            Arc::new(crate::nas::DryRunRunner::default()),
        )
        .unwrap();
        let err = restore_from_file(&strict, &backup, "admin", None).unwrap_err();
        let NasError::Invalid(fields) = &err else {
            panic!("{err}")
        };
        assert!(fields.contains_key("smb_shares[1].path"), "{fields:?}");
        assert!(share_names(&strict).is_empty());
        // The node that made it restores it.
        assert!(restore_from_file(&store, &backup, "admin", None).is_ok());
    }

    #[test]
    fn bytes_round_trip_and_garbage_is_refused() {
        let store = NasStore::in_memory(NasOptions {
            initial_admin_password: Some("initial-admin-pw".into()),
            ..Default::default()
        })
        .unwrap();
        let bytes = backup_to_bytes(&store).unwrap();
        assert!(bytes.starts_with(SQLITE_MAGIC));
        restore_from_bytes(&store, &bytes, "admin", None).unwrap();
        assert!(matches!(
            restore_from_bytes(&store, b"hello", "a", None),
            Err(NasError::NotABackup(_))
        ));
        let mut truncated = bytes.clone();
        truncated.truncate(4096);
        assert!(restore_from_bytes(&store, &truncated, "a", None).is_err());
    }

    #[test]
    fn newer_schema_is_refused_and_the_live_state_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_store(&dir.path().join("live.db"));
        let backup = dir.path().join("b.db");
        backup_to_file(&store, &backup).unwrap();
        Connection::open(&backup)
            .unwrap()
            .pragma_update(None, "user_version", db::SCHEMA_VERSION + 1)
            .unwrap();
        let err = restore_from_file(&store, &backup, "admin", None).unwrap_err();
        assert!(matches!(err, NasError::SchemaTooNew { .. }), "{err}");
        let plain = dir.path().join("plain.db");
        Connection::open(&plain)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        assert!(matches!(
            restore_from_file(&store, &plain, "a", None),
            Err(NasError::NotABackup(_))
        ));
        assert_eq!(store.read(crate::nas::users::list).unwrap().len(), 1);
    }
}
