//! The NAS configuration store: the desired state of a NAS (users, SMB shares, NFS exports,
//! iSCSI targets and LUNs, snapshot policies) in SQLite, rendered to Samba, NFS and LIO
//! configuration files and applied through a [`apply::CommandRunner`].
//!
//! [`NasStore`] owns the database connection; [`api::NasApi`] is the HTTP-framework-agnostic
//! REST handler the Pingora listener mounts under `/api/v1`.

pub mod api;
#[cfg(test)]
mod api_apply_tests;
mod api_entities;
#[cfg(test)]
mod api_fuzz_tests;
#[cfg(test)]
mod api_tests;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod db;
mod entity;
pub mod error;
mod input;
pub mod iscsi;
pub mod iscsi_luns;
pub mod nfs;
mod openapi;
pub mod passwords;
pub mod policy;
pub mod render;
pub mod runner;
pub mod smb;
pub mod snapshot_policies;
pub mod snapshots;
pub mod users;
pub mod validate;

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::TransactionBehavior;

pub use api::{ApiRequest, ApiResponse, NasApi};
pub use apply::ApplyPaths;
pub use db::DbLocation;
pub use error::NasError;
pub use runner::{CommandOutput, CommandRunner, DryRunRunner, RecordingRunner, SystemRunner};
/// The connection type `NasStore::read`/`write` hand to their closures.
pub use rusqlite::Connection;

use crate::config::AtlasConfig;

/// Environment variable with the password of the first administrator (`admin`).
pub const ADMIN_PASSWORD_ENV: &str = "ATLAS_ADMIN_PASSWORD";
/// Environment variable that switches apply and the snapshot scheduler from dry-run to
/// really running commands: `ATLAS_NAS_APPLY=live`.
pub const APPLY_MODE_ENV: &str = "ATLAS_NAS_APPLY";

/// Settings of the store that are not in the configuration file.
#[derive(Debug, Clone)]
pub struct NasOptions {
    /// Lifetime of a login token.
    pub session_ttl: chrono::Duration,
    /// Password for the `admin` user created when the database has no users.
    pub initial_admin_password: Option<String>,
    /// Where apply writes the rendered files.
    pub apply_paths: ApplyPaths,
    /// Largest JSON request body.
    pub max_body_bytes: usize,
    /// Largest body of `POST /config/restore` (a database file).
    pub max_restore_bytes: usize,
    /// Create the first administrator when there are no users (the server does; the
    /// `atlas nas` CLI does not, since it can add users itself).
    pub bootstrap_admin: bool,
    /// Where shares, exports and LUNs may point.
    pub paths: policy::PathPolicy,
}

impl Default for NasOptions {
    fn default() -> Self {
        NasOptions {
            session_ttl: chrono::Duration::hours(8),
            initial_admin_password: None,
            apply_paths: ApplyPaths::default(),
            max_body_bytes: 1024 * 1024,
            max_restore_bytes: 256 * 1024 * 1024,
            bootstrap_admin: true,
            paths: policy::PathPolicy::default(),
        }
    }
}

/// The NAS store: one SQLite connection behind a mutex (SQLite serialises writers anyway),
/// the login rate limiter and the command runner. `Send + Sync`; share it in an `Arc`.
pub struct NasStore {
    conn: Mutex<Connection>,
    location: DbLocation,
    options: NasOptions,
    limiter: Mutex<auth::LoginLimiter>,
    runner: Arc<dyn CommandRunner>,
    /// Serialises apply runs and snapshot runs (they run commands outside the DB lock).
    apply_lock: Mutex<()>,
    frozen_now: Mutex<Option<DateTime<Utc>>>,
}

impl NasStore {
    /// Opens the store the way the server does: database from `ATLAS_DB_PATH` >
    /// `nas.db_path` > `<data_dir>/atlas.db`, first administrator from
    /// `ATLAS_ADMIN_PASSWORD`, dry-run runner unless `ATLAS_NAS_APPLY=live`.
    pub fn open(config: &AtlasConfig) -> Result<NasStore, NasError> {
        NasStore::open_with_options(config, NasOptions::default())
    }

    /// As [`NasStore::open`], starting from `base` options (the CLI turns off the first
    /// administrator bootstrap; the environment still fills in the password and runner).
    pub fn open_with_options(config: &AtlasConfig, base: NasOptions) -> Result<NasStore, NasError> {
        let location = DbLocation::from_config(config);
        let defaults = ApplyPaths::default();
        let nas = &config.nas;
        let options = NasOptions {
            initial_admin_password: std::env::var(ADMIN_PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty()),
            apply_paths: ApplyPaths {
                smb_conf: nas.smb_conf_path.clone().unwrap_or(defaults.smb_conf),
                exports: nas.exports_path.clone().unwrap_or(defaults.exports),
                lio_saveconfig: nas
                    .lio_config_path
                    .clone()
                    .unwrap_or(defaults.lio_saveconfig),
            },
            paths: policy::PathPolicy::from_config(nas),
            ..base
        };
        let live = nas.apply == crate::config::NasApplyMode::Live
            || std::env::var(APPLY_MODE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("live"));
        let runner: Arc<dyn CommandRunner> = if live {
            tracing::warn!("NAS apply runs commands for real ({APPLY_MODE_ENV}=live)");
            Arc::new(SystemRunner::default())
        } else {
            tracing::info!(
                "NAS apply and snapshots run in dry-run mode (set {APPLY_MODE_ENV}=live to change)"
            );
            Arc::new(DryRunRunner::default())
        };
        NasStore::open_with(location, options, runner)
    }

    /// Opens (creating and migrating as needed) with explicit settings.
    pub fn open_with(
        location: DbLocation,
        options: NasOptions,
        runner: Arc<dyn CommandRunner>,
    ) -> Result<NasStore, NasError> {
        let conn = db::open(&location)?;
        let store = NasStore {
            conn: Mutex::new(conn),
            location,
            options,
            limiter: Mutex::new(auth::LoginLimiter::default()),
            runner,
            apply_lock: Mutex::new(()),
            frozen_now: Mutex::new(None),
        };
        if store.options.bootstrap_admin {
            users::ensure_initial_admin(&store)?;
        }
        Ok(store)
    }

    /// An in-memory store with a dry-run runner (tests, throwaway servers).
    pub fn in_memory(options: NasOptions) -> Result<NasStore, NasError> {
        NasStore::open_with(
            DbLocation::Memory,
            options,
            Arc::new(DryRunRunner::default()),
        )
    }

    pub fn location(&self) -> &DbLocation {
        &self.location
    }

    pub fn options(&self) -> &NasOptions {
        &self.options
    }

    pub fn runner(&self) -> Arc<dyn CommandRunner> {
        Arc::clone(&self.runner)
    }

    /// The current time; tests may freeze it.
    pub fn now(&self) -> DateTime<Utc> {
        lock(&self.frozen_now).unwrap_or_else(Utc::now)
    }

    /// Freezes (or with `None` unfreezes) the clock the store uses for sessions and audit.
    pub fn set_clock(&self, now: Option<DateTime<Utc>>) {
        *lock(&self.frozen_now) = now;
    }

    pub(crate) fn connection(&self) -> MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    /// Runs `f` with the connection (reads).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NasError>,
    ) -> Result<T, NasError> {
        f(&self.connection())
    }

    /// Runs `f` inside an immediate transaction; commits on `Ok`, rolls back on `Err`.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, NasError>,
    ) -> Result<T, NasError> {
        let mut conn = self.connection();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }

    pub(crate) fn limiter(&self) -> MutexGuard<'_, auth::LoginLimiter> {
        lock(&self.limiter)
    }

    pub(crate) fn apply_guard(&self) -> MutexGuard<'_, ()> {
        lock(&self.apply_lock)
    }
}

/// A poisoned mutex only means another thread panicked mid-request; the SQLite state is
/// still consistent (transactions roll back), so keep serving.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// RFC 3339 UTC with milliseconds and `Z`: fixed width, so text order is time order.
pub fn format_ts(ts: DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn now_rfc3339() -> String {
    format_ts(Utc::now())
}

pub fn parse_ts(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Lists are stored as JSON text columns.
pub(crate) fn list_to_sql(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn list_from_sql(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// `Ok(true)` if a row of `table` other than `except_id` has `column = value`.
pub(crate) fn value_taken(
    conn: &Connection,
    table: &str,
    column: &str,
    value: &str,
    except_id: Option<i64>,
) -> Result<bool, NasError> {
    let sql = format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE {column} = ?1 AND id != ?2)");
    Ok(conn.query_row(
        &sql,
        rusqlite::params![value, except_id.unwrap_or(-1)],
        |r| r.get(0),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_api_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NasStore>();
        assert_send_sync::<NasApi>();
    }

    #[test]
    fn first_start_without_a_password_generates_one() {
        let store = NasStore::in_memory(NasOptions::default()).unwrap();
        let users = store.read(users::list).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].username, "admin");
        assert_eq!(users[0].role, users::Role::Administrator);
        // The CLI opens without creating one.
        let bare = NasStore::in_memory(NasOptions {
            bootstrap_admin: false,
            ..NasOptions::default()
        })
        .unwrap();
        assert!(bare.read(users::list).unwrap().is_empty());
    }

    #[test]
    fn generated_passwords_are_long_and_random() {
        let a = users::generate_password();
        assert_eq!(a.len(), 20);
        assert!(validate::password(&a).is_ok());
        assert_ne!(a, users::generate_password());
    }
}
