//! Opening the SQLite database: where it lives, connection settings and migrations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::error::NasError;
use crate::config::AtlasConfig;

/// Environment variable that overrides `nas.db_path`.
pub const DB_PATH_ENV: &str = "ATLAS_DB_PATH";
/// How long a connection waits for another writer (e.g. the CLI while the server runs).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// `:memory:`: everything is lost when the process exits.
    Memory,
    File(PathBuf),
}

impl DbLocation {
    /// `ATLAS_DB_PATH` (when `env_override` is set) > `nas.db_path` > `<data_dir>/atlas.db`.
    pub fn resolve(config: &AtlasConfig, env_override: Option<&str>) -> DbLocation {
        let chosen = match env_override.filter(|v| !v.trim().is_empty()) {
            Some(value) => PathBuf::from(value),
            None => config
                .nas
                .db_path
                .clone()
                .unwrap_or_else(|| config.data_dir.join("atlas.db")),
        };
        if chosen.as_os_str() == ":memory:" {
            DbLocation::Memory
        } else {
            DbLocation::File(chosen)
        }
    }

    /// As [`DbLocation::resolve`], reading `ATLAS_DB_PATH` from the environment.
    pub fn from_config(config: &AtlasConfig) -> DbLocation {
        let env = std::env::var(DB_PATH_ENV).ok();
        DbLocation::resolve(config, env.as_deref())
    }

    pub fn describe(&self) -> String {
        match self {
            DbLocation::Memory => ":memory:".to_string(),
            DbLocation::File(path) => path.display().to_string(),
        }
    }
}

/// Opens a connection with the settings every connection needs, then migrates.
/// Creates `path` readable by its owner only (0600) if it does not exist yet: the database
/// holds password hashes and CHAP secrets. SQLite gives its -wal/-shm files the same mode.
pub(crate) fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn open(location: &DbLocation) -> Result<Connection, NasError> {
    let conn = match location {
        DbLocation::Memory => {
            tracing::warn!(
                "NAS database runs in memory (:memory:): all NAS configuration is lost when \
                 the process exits"
            );
            Connection::open_in_memory()?
        }
        DbLocation::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::files::create_dirs(dir)?;
            }
            tracing::info!(path = %path.display(), "opening NAS database");
            create_private_file(path)?;
            Connection::open(path)?
        }
    };
    configure(&conn, location)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Opens an existing file without creating or migrating it (used to inspect backups).
pub fn open_existing_readonly(path: &Path) -> Result<Connection, NasError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Per-connection settings: foreign keys are off by default in SQLite and per connection.
pub fn configure(conn: &Connection, location: &DbLocation) -> Result<(), NasError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if matches!(location, DbLocation::File(_)) {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode = %mode, "SQLite refused WAL journal mode");
        }
        // FULL: a committed change and its audit row survive a power loss (NORMAL in WAL
        // mode may lose the last transactions).
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    Ok(())
}

/// Migrations in order; migration `i` (0-based) brings the schema to version `i + 1`.
/// Append only: never edit a released migration.
const MIGRATIONS: &[&str] = &[MIGRATION_1, MIGRATION_2];

/// Version 2: an NFS export's explicit consent to `no_root_squash` for every client.
const MIGRATION_2: &str =
    "ALTER TABLE nfs_exports ADD COLUMN allow_insecure INTEGER NOT NULL DEFAULT 0;";

/// The schema version this program writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATION_1: &str = r#"
CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  TEXT NOT NULL
);
CREATE TABLE users (
    id             INTEGER PRIMARY KEY,
    username       TEXT NOT NULL COLLATE NOCASE UNIQUE,
    password_hash  TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('administrator', 'operator', 'viewer')),
    email          TEXT,
    active         INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    last_login_at  TEXT
);
CREATE TABLE sessions (
    id             INTEGER PRIMARY KEY,
    selector       TEXT NOT NULL UNIQUE,
    verifier_hash  BLOB NOT NULL,
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    revoked_at     TEXT,
    client_addr    TEXT
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE TABLE audit_logs (
    id             INTEGER PRIMARY KEY,
    ts             TEXT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_id    TEXT,
    result         TEXT NOT NULL,
    message        TEXT NOT NULL DEFAULT '',
    client_addr    TEXT,
    details        TEXT
);
CREATE INDEX audit_logs_ts ON audit_logs(ts);
CREATE INDEX audit_logs_actor ON audit_logs(actor, ts);
CREATE INDEX audit_logs_action ON audit_logs(action, ts);
CREATE INDEX audit_logs_resource ON audit_logs(resource_type, resource_id, ts);
CREATE TABLE smb_shares (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL COLLATE NOCASE UNIQUE,
    path         TEXT NOT NULL,
    comment      TEXT NOT NULL DEFAULT '',
    read_only    INTEGER NOT NULL,
    browseable   INTEGER NOT NULL,
    guest_ok     INTEGER NOT NULL,
    valid_users  TEXT NOT NULL DEFAULT '[]',
    hosts_allow  TEXT NOT NULL DEFAULT '[]',
    hosts_deny   TEXT NOT NULL DEFAULT '[]',
    enabled      INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE nfs_exports (
    id          INTEGER PRIMARY KEY,
    path        TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    clients     TEXT NOT NULL DEFAULT '[]',
    read_only   INTEGER NOT NULL,
    sync        INTEGER NOT NULL,
    squash      TEXT NOT NULL CHECK (squash IN ('root_squash', 'no_root_squash', 'all_squash')),
    anonuid     INTEGER,
    anongid     INTEGER,
    enabled     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX nfs_exports_path ON nfs_exports(path);
CREATE TABLE iscsi_targets (
    id             INTEGER PRIMARY KEY,
    iqn            TEXT NOT NULL UNIQUE,
    alias          TEXT NOT NULL DEFAULT '',
    initiators     TEXT NOT NULL DEFAULT '[]',
    auth           TEXT NOT NULL CHECK (auth IN ('none', 'chap', 'mutual_chap')),
    chap_user      TEXT,
    chap_secret    TEXT,
    mutual_user    TEXT,
    mutual_secret  TEXT,
    portals        TEXT NOT NULL DEFAULT '[]',
    enabled        INTEGER NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE iscsi_luns (
    id          INTEGER PRIMARY KEY,
    target_id   INTEGER NOT NULL REFERENCES iscsi_targets(id) ON DELETE CASCADE,
    lun         INTEGER NOT NULL CHECK (lun BETWEEN 0 AND 255),
    backstore   TEXT NOT NULL CHECK (backstore IN ('block', 'fileio')),
    device      TEXT,
    path        TEXT,
    size_bytes  INTEGER,
    read_only   INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (target_id, lun)
);
CREATE TABLE snapshot_policies (
    id           INTEGER PRIMARY KEY,
    dataset      TEXT NOT NULL,
    recursive    INTEGER NOT NULL,
    frequency    TEXT NOT NULL CHECK (frequency IN ('hourly', 'daily', 'weekly', 'monthly')),
    retention    INTEGER NOT NULL CHECK (retention BETWEEN 1 AND 512),
    prefix       TEXT NOT NULL,
    enabled      INTEGER NOT NULL,
    last_run_at  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    UNIQUE (dataset, prefix, frequency)
);
"#;

/// The schema version recorded in a database (`PRAGMA user_version`).
pub fn schema_version(conn: &Connection) -> Result<i64, NasError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the schema up to [`SCHEMA_VERSION`] in one transaction. A current database is left
/// untouched; a newer one is refused.
pub fn migrate(conn: &Connection) -> Result<(), NasError> {
    let found = schema_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(NasError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> Result<(), NasError> {
        // Re-read under the write lock: another process may have migrated meanwhile.
        let found = schema_version(conn)?;
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
            let version = index as i64 + 1;
            conn.execute_batch(sql)?;
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                rusqlite::params![version, super::now_rfc3339()],
            )?;
            conn.pragma_update(None, "user_version", version)?;
            tracing::info!(version, "NAS database migrated");
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            Ok(())
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_names(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrations_create_every_table_and_record_the_version() {
        let conn = open(&DbLocation::Memory).unwrap();
        let tables = table_names(&conn);
        for t in [
            "users",
            "audit_logs",
            "smb_shares",
            "nfs_exports",
            "iscsi_targets",
            "iscsi_luns",
            "snapshot_policies",
            "sessions",
            "schema_migrations",
        ] {
            assert!(tables.contains(&t.to_string()), "{t} missing: {tables:?}");
        }
        assert_eq!(schema_version(&conn).unwrap(), SCHEMA_VERSION);
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn rerunning_migrations_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let location = DbLocation::File(dir.path().join("a.db"));
        drop(open(&location).unwrap());
        let conn = open(&location).unwrap();
        migrate(&conn).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, SCHEMA_VERSION);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // FULL (2): an acknowledged change and its audit row are synced before the answer.
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2);
    }

    #[test]
    fn a_newer_database_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let err = open(&DbLocation::File(path)).unwrap_err();
        assert!(matches!(err, NasError::SchemaTooNew { .. }), "{err}");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn location_precedence_env_then_config_then_data_dir() {
        let mut config = AtlasConfig {
            data_dir: PathBuf::from("/srv/data"),
            ..AtlasConfig::default()
        };
        assert_eq!(
            DbLocation::resolve(&config, None),
            DbLocation::File(PathBuf::from("/srv/data/atlas.db"))
        );
        config.nas.db_path = Some(PathBuf::from("/etc/nas.db"));
        assert_eq!(
            DbLocation::resolve(&config, None),
            DbLocation::File(PathBuf::from("/etc/nas.db"))
        );
        assert_eq!(
            DbLocation::resolve(&config, Some(":memory:")),
            DbLocation::Memory
        );
        config.nas.db_path = Some(PathBuf::from(":memory:"));
        assert_eq!(DbLocation::resolve(&config, None), DbLocation::Memory);
    }
}
