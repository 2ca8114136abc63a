//! `atlas nas …`: administration of the NAS store without the API, on the machine itself
//! (e.g. recovering a lost administrator password). Works while the server runs: SQLite
//! serialises the writers, and the server sees the changes on its next query.
//!
//! `main.rs` loads the configuration (`-c FILE`, a global option accepted after the
//! subcommand too) and calls `run`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use atlas::AtlasConfig;
use atlas::nas::users::{self, NewUser, Role, UserChanges};
use atlas::nas::{NasError, NasOptions, NasStore, audit, backup, validate};
use clap::Subcommand;

/// Environment variable read for a password when stdin is not used and no terminal is there.
pub const PASSWORD_ENV: &str = "ATLAS_NAS_PASSWORD";

#[derive(Debug, Subcommand)]
pub enum NasCommand {
    /// Manage NAS users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Write a consistent copy of the NAS database to FILE (works while the server runs).
    Backup { file: PathBuf },
    /// Replace the NAS configuration with the backup in FILE (checks the schema version;
    /// ends all sessions; the audit log is kept).
    Restore { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        username: String,
        /// administrator, operator or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Set a user's password (ends the user's sessions).
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a user (the last active administrator can not be deleted).
    Del { username: String },
}

/// Runs one `atlas nas` command; 0 on success, 1 on failure, 2 on bad input.
pub fn run(command: NasCommand, config: &AtlasConfig) -> ExitCode {
    let options = NasOptions {
        bootstrap_admin: false,
        ..NasOptions::default()
    };
    let store = match NasStore::open_with_options(config, options) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("atlas nas: cannot open the NAS database: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match command {
        NasCommand::User { command } => run_user(&store, command),
        NasCommand::Backup { file } => backup::backup_to_file(&store, &file).map(|bytes| {
            let ts = atlas::nas::format_ts(store.now());
            let audited = store.write(|c| {
                record(
                    c,
                    &ts,
                    "backup",
                    "database",
                    None,
                    "backup written by the CLI",
                )
            });
            if let Err(e) = audited {
                eprintln!("atlas nas: the backup was written but could not be audited: {e}");
            }
            println!("backup written to {} ({bytes} bytes)", file.display());
        }),
        NasCommand::Restore { file } => backup::restore_from_file(&store, &file, &actor(), None)
            .map(|report| {
                println!(
                    "restored {} (schema version {} → {}); all sessions ended",
                    file.display(),
                    report.backup_schema_version,
                    report.schema_version
                );
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (NasError::Invalid(_) | NasError::BadRequest(_))) => {
            eprintln!("atlas nas: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("atlas nas: {e}");
            ExitCode::from(1)
        }
    }
}

/// Audit actor for CLI changes: `cli:<login name>`.
fn actor() -> String {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{who}")
}

/// Writes the audit row of a change in the change's own transaction: no change without its row.
fn record(
    conn: &atlas::nas::Connection,
    ts: &str,
    action: &str,
    resource_type: &str,
    resource_id: Option<i64>,
    message: &str,
) -> Result<(), NasError> {
    let mut entry = audit::Entry::new(&actor(), action, resource_type, ts).message(message);
    entry.resource_id = resource_id.map(|id| id.to_string());
    audit::record(conn, &entry).map(|_| ())
}

fn find(store: &NasStore, username: &str) -> Result<users::User, NasError> {
    store
        .read(|c| users::find_with_hash(c, username))?
        .map(|(user, _)| user)
        .ok_or_else(|| NasError::NotFound(format!("user `{username}`")))
}

fn run_user(store: &NasStore, command: UserCommand) -> Result<(), NasError> {
    match command {
        UserCommand::List => {
            let all = store.read(users::list)?;
            println!(
                "{:<5} {:<24} {:<14} {:<7} {:<25} EMAIL",
                "ID", "USERNAME", "ROLE", "ACTIVE", "LAST LOGIN"
            );
            for u in all {
                println!(
                    "{:<5} {:<24} {:<14} {:<7} {:<25} {}",
                    u.id,
                    u.username,
                    u.role.as_str(),
                    if u.active { "yes" } else { "no" },
                    u.last_login_at.as_deref().unwrap_or("-"),
                    u.email.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        UserCommand::Add {
            username,
            role,
            email,
            password_stdin,
        } => {
            validate::username(&username).map_err(|p| NasError::field("username", p))?;
            let role = Role::parse(&role).ok_or_else(|| {
                NasError::field("role", "must be administrator, operator or viewer")
            })?;
            if let Some(e) = &email {
                validate::email(e).map_err(|p| NasError::field("email", p))?;
            }
            let password = read_password(password_stdin)?;
            let user = NewUser {
                username,
                password_hash: users::hash_password(&password)?,
                role,
                email,
                active: true,
            };
            let now = atlas::nas::format_ts(store.now());
            let created = store.write(|c| {
                let created = users::create(c, &user, &now)?;
                record(
                    c,
                    &now,
                    "create",
                    "user",
                    Some(created.id),
                    "user added by the CLI",
                )?;
                Ok(created)
            })?;
            println!("added {} ({})", created.username, created.role.as_str());
            Ok(())
        }
        UserCommand::Passwd {
            username,
            password_stdin,
        } => {
            let user = find(store, &username)?;
            let password = read_password(password_stdin)?;
            let changes = UserChanges {
                password_hash: Some(users::hash_password(&password)?),
                ..UserChanges::default()
            };
            let now = atlas::nas::format_ts(store.now());
            store.write(|c| {
                users::update(c, user.id, &changes, &now)?;
                record(
                    c,
                    &now,
                    "update",
                    "user",
                    Some(user.id),
                    "password set by the CLI",
                )
            })?;
            println!(
                "password of {} changed; their sessions ended",
                user.username
            );
            Ok(())
        }
        UserCommand::Del { username } => {
            let user = find(store, &username)?;
            let now = atlas::nas::format_ts(store.now());
            store.write(|c| {
                users::delete(c, user.id)?;
                record(
                    c,
                    &now,
                    "delete",
                    "user",
                    Some(user.id),
                    "user deleted by the CLI",
                )
            })?;
            println!("deleted {}", user.username);
            Ok(())
        }
    }
}

/// The password from stdin (`--password-stdin`), else a terminal prompt without echo
/// (asked twice), else `ATLAS_NAS_PASSWORD`.
fn read_password(from_stdin: bool) -> Result<String, NasError> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else if std::io::stdin().is_terminal() {
        let first = prompt_hidden("New password: ")?;
        let second = prompt_hidden("Repeat password: ")?;
        if first != second {
            return Err(NasError::field("password", "the two passwords differ"));
        }
        first
    } else if let Ok(p) = std::env::var(PASSWORD_ENV) {
        p
    } else {
        return Err(NasError::BadRequest(format!(
            "no password: use --password-stdin, a terminal, or {PASSWORD_ENV}"
        )));
    };
    validate::password(&password).map_err(|p| NasError::field("password", p))?;
    Ok(password)
}

/// Turns terminal echo off with `stty` while reading one line.
fn prompt_hidden(prompt: &str) -> Result<String, NasError> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let echo_off = stty("-echo");
    if !echo_off {
        return Err(NasError::BadRequest(
            "cannot turn off terminal echo; use --password-stdin".into(),
        ));
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
