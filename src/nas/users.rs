//! Users and roles; their password hashes come from `passwords`.

use rand::Rng;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use super::error::NasError;
use super::input::Input;
pub use super::passwords::{hash_password, verify_against_dummy, verify_password};
use super::{NasStore, audit, validate};

/// Roles, ordered by what they may do: each includes the rights of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Administrator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Administrator => "administrator",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "administrator" => Some(Role::Administrator),
            _ => None,
        }
    }
}

/// A user as the API shows it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub email: Option<String>,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
    pub last_login_at: Option<String>,
}

const USER_COLUMNS: &str =
    "id, username, role, email, active, created_at, updated_at, last_login_at";

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = row.get(2)?;
    Ok(User {
        id: row.get(0)?,
        username: row.get(1)?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        email: row.get(3)?,
        active: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        last_login_at: row.get(7)?,
    })
}

pub fn list(conn: &Connection) -> Result<Vec<User>, NasError> {
    let mut stmt = conn.prepare(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))?;
    let users = stmt
        .query_map([], user_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(users)
}

pub fn get(conn: &Connection, id: i64) -> Result<User, NasError> {
    conn.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
        [id],
        user_from_row,
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("user {id}")))
}

/// The user and the stored hash, by name (case-insensitive).
pub fn find_with_hash(
    conn: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, NasError> {
    Ok(conn
        .query_row(
            &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = ?1"),
            [username],
            |row| Ok((user_from_row(row)?, row.get::<_, String>(8)?)),
        )
        .optional()?)
}

/// A validated new user; the password is already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub email: Option<String>,
    pub active: bool,
}

/// Changes to a user; `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub username: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    /// `Some(None)` clears the e-mail.
    pub email: Option<Option<String>>,
    pub active: Option<bool>,
}

impl UserChanges {
    /// True when only the password and/or e-mail change (what users may do to themselves).
    pub fn is_self_service(&self) -> bool {
        self.username.is_none() && self.role.is_none() && self.active.is_none()
    }
}

const USER_FIELDS: &[&str] = &[
    "username",
    "password",
    "current_password",
    "role",
    "email",
    "active",
];
const USER_READ_ONLY: &[&str] = &["id", "created_at", "updated_at", "last_login_at"];

fn read_role(input: &mut Input) -> Option<Role> {
    let text = input.optional_string("role")?;
    let role = Role::parse(&text);
    if role.is_none() {
        input.check(
            "role",
            Err("must be administrator, operator or viewer".into()),
        );
    }
    role
}

fn read_email(input: &mut Input) -> Option<String> {
    let email = input.optional_string("email").filter(|e| !e.is_empty());
    if let Some(e) = &email {
        input.check("email", validate::email(e));
    }
    email
}

/// Reads a create body: `username`, `password`, `role` (default viewer), `email`, `active`.
/// Returns the user with the plain password; hashing is left to the caller (outside locks).
pub fn read_new(body: &[u8]) -> Result<(NewUser, String), NasError> {
    let mut input = Input::parse(body)?;
    input.reject_unknown(USER_FIELDS, USER_READ_ONLY);
    let username = input.required_string("username");
    if input.has("username") {
        input.check("username", validate::username(&username));
    }
    let password = input.required_string("password");
    if input.has("password") {
        input.check("password", validate::password(&password));
    }
    let role = read_role(&mut input).unwrap_or(Role::Viewer);
    let email = read_email(&mut input);
    let active = input.bool_or("active", true);
    input.finish()?;
    Ok((
        NewUser {
            username,
            password_hash: String::new(),
            role,
            email,
            active,
        },
        password,
    ))
}

/// Reads an update body (every field optional). Returns the changes and the new plain
/// password, if any.
/// What a `PUT /users/{id}` asks: the changes, the new password (to hash) and the current
/// one (required when users change their own password).
pub struct ChangeRequest {
    pub changes: UserChanges,
    pub password: Option<String>,
    pub current_password: Option<String>,
}

pub fn read_changes(body: &[u8]) -> Result<ChangeRequest, NasError> {
    let mut input = Input::parse(body)?;
    input.reject_unknown(USER_FIELDS, USER_READ_ONLY);
    let username = input.optional_string("username");
    if let Some(u) = &username {
        input.check("username", validate::username(u));
    }
    let password = input.optional_string("password");
    if let Some(p) = &password {
        input.check("password", validate::password(p));
    }
    let current_password = input.optional_string("current_password");
    let role = read_role(&mut input);
    let email_present = input.has("email") || body_sets_null(&input, "email");
    let email = read_email(&mut input);
    let active = if input.has("active") {
        Some(input.bool_or("active", true))
    } else {
        None
    };
    input.finish()?;
    Ok(ChangeRequest {
        changes: UserChanges {
            username,
            password_hash: None,
            role,
            email: email_present.then_some(email),
            active,
        },
        password,
        current_password,
    })
}

/// The stored password hash of user `id`.
pub fn password_hash_of(conn: &Connection, id: i64) -> Result<String, NasError> {
    conn.query_row(
        "SELECT password_hash FROM users WHERE id = ?1",
        [id],
        |row| row.get(0),
    )
    .optional()?
    .ok_or_else(|| NasError::NotFound(format!("user {id}")))
}

fn body_sets_null(input: &Input, key: &str) -> bool {
    // `"email": null` clears the address; `has` is false for null, so ask separately.
    !input.has(key) && input.contains_key(key)
}

pub fn create(conn: &Connection, user: &NewUser, now: &str) -> Result<User, NasError> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1)",
        [&user.username],
        |r| r.get(0),
    )?;
    if exists {
        return Err(NasError::conflict(
            "username",
            format!("user `{}` already exists", user.username),
        ));
    }
    conn.execute(
        "INSERT INTO users (username, password_hash, role, email, active, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            user.username,
            user.password_hash,
            user.role.as_str(),
            user.email,
            user.active,
            now
        ],
    )?;
    get(conn, conn.last_insert_rowid())
}

/// Refuses a change that would leave no active administrator.
fn protect_last_admin(
    conn: &Connection,
    current: &User,
    stays_active_admin: bool,
) -> Result<(), NasError> {
    if current.role != Role::Administrator || !current.active || stays_active_admin {
        return Ok(());
    }
    let others: i64 = conn.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'administrator' AND active = 1 AND id != ?1",
        [current.id],
        |r| r.get(0),
    )?;
    if others == 0 {
        return Err(NasError::Conflict {
            message: "the last active administrator can not be deleted, demoted or deactivated"
                .into(),
            fields: Default::default(),
        });
    }
    Ok(())
}

pub fn update(
    conn: &Connection,
    id: i64,
    changes: &UserChanges,
    now: &str,
) -> Result<User, NasError> {
    let current = get(conn, id)?;
    let role = changes.role.unwrap_or(current.role);
    let active = changes.active.unwrap_or(current.active);
    protect_last_admin(conn, &current, role == Role::Administrator && active)?;
    if let Some(username) = &changes.username {
        let taken: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE username = ?1 AND id != ?2)",
            params![username, id],
            |r| r.get(0),
        )?;
        if taken {
            return Err(NasError::conflict(
                "username",
                format!("user `{username}` already exists"),
            ));
        }
    }
    let email = match &changes.email {
        Some(e) => e.clone(),
        None => current.email.clone(),
    };
    conn.execute(
        "UPDATE users SET username = ?1, role = ?2, email = ?3, active = ?4, updated_at = ?5
         WHERE id = ?6",
        params![
            changes.username.as_ref().unwrap_or(&current.username),
            role.as_str(),
            email,
            active,
            now,
            id
        ],
    )?;
    if let Some(hash) = &changes.password_hash {
        conn.execute(
            "UPDATE users SET password_hash = ?1 WHERE id = ?2",
            params![hash, id],
        )?;
    }
    // A new password or a deactivation ends every session of the user.
    if changes.password_hash.is_some() || !active {
        super::auth::revoke_all_for_user(conn, id, now)?;
    }
    get(conn, id)
}

pub fn delete(conn: &Connection, id: i64) -> Result<User, NasError> {
    let current = get(conn, id)?;
    protect_last_admin(conn, &current, false)?;
    conn.execute("DELETE FROM users WHERE id = ?1", [id])?;
    Ok(current)
}

pub fn record_login(conn: &Connection, id: i64, now: &str) -> Result<(), NasError> {
    conn.execute(
        "UPDATE users SET last_login_at = ?1 WHERE id = ?2",
        params![now, id],
    )?;
    Ok(())
}

/// A random password for the first administrator: 20 alphanumeric characters.
pub fn generate_password() -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

/// First start: with no users at all, creates `admin` (administrator) with the configured
/// password, or with a generated one that is printed once to the log.
pub fn ensure_initial_admin(store: &NasStore) -> Result<(), NasError> {
    let count: i64 =
        store.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?))?;
    if count > 0 {
        return Ok(());
    }
    let (password, generated) = match &store.options().initial_admin_password {
        Some(p) => {
            validate::password(p).map_err(|problem| {
                NasError::Bootstrap(format!("{}: {problem}", super::ADMIN_PASSWORD_ENV))
            })?;
            (p.clone(), false)
        }
        None => (generate_password(), true),
    };
    let user = NewUser {
        username: "admin".into(),
        password_hash: hash_password(&password)?,
        role: Role::Administrator,
        email: None,
        active: true,
    };
    let now = super::format_ts(store.now());
    let created = store.write(|conn| {
        let empty: bool =
            conn.query_row("SELECT NOT EXISTS(SELECT 1 FROM users)", [], |r| r.get(0))?;
        if !empty {
            return Ok(None);
        }
        let created = create(conn, &user, &now)?;
        audit::record(
            conn,
            &audit::Entry::new("system", "create", "user", &now)
                .resource_id(created.id)
                .message("initial administrator created")
                .details(serde_json::json!({"username": "admin", "generated_password": generated})),
        )?;
        Ok(Some(created))
    })?;
    if created.is_some() {
        if generated {
            tracing::warn!(
                "created the initial NAS administrator `admin` with the one-time password \
                 {password} — it is shown only this once; log in and change it \
                 (or set {} before the first start)",
                super::ADMIN_PASSWORD_ENV
            );
        } else {
            tracing::info!(
                "created the initial NAS administrator `admin` from {}",
                super::ADMIN_PASSWORD_ENV
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::NasOptions;

    fn store() -> NasStore {
        NasStore::in_memory(NasOptions {
            initial_admin_password: Some("initial-admin-pw".into()),
            ..NasOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn hashes_are_argon2id_phc_with_owasp_parameters() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(
            phc,
            hash_password("correct horse battery").unwrap(),
            "salted"
        );
    }

    #[test]
    fn first_start_creates_admin_from_env_password_once() {
        let store = store();
        let (user, hash) = store.read(|c| find_with_hash(c, "ADMIN")).unwrap().unwrap();
        assert_eq!(user.role, Role::Administrator);
        assert!(verify_password("initial-admin-pw", &hash));
        ensure_initial_admin(&store).unwrap();
        assert_eq!(store.read(list).unwrap().len(), 1);
    }

    #[test]
    fn weak_initial_password_is_refused() {
        let err = NasStore::in_memory(NasOptions {
            initial_admin_password: Some("short".into()),
            ..NasOptions::default()
        })
        .err()
        .unwrap();
        assert!(
            err.to_string().contains(crate::nas::ADMIN_PASSWORD_ENV),
            "{err}"
        );
    }

    #[test]
    fn last_active_admin_is_protected() {
        let store = store();
        let now = "2024-01-01T00:00:00.000Z";
        let demote = UserChanges {
            role: Some(Role::Operator),
            ..Default::default()
        };
        let deactivate = UserChanges {
            active: Some(false),
            ..Default::default()
        };
        for changes in [&demote, &deactivate] {
            let err = store.write(|c| update(c, 1, changes, now)).unwrap_err();
            assert!(matches!(err, NasError::Conflict { .. }), "{err}");
        }
        assert!(matches!(
            store.write(|c| delete(c, 1)).unwrap_err(),
            NasError::Conflict { .. }
        ));
        // With a second active administrator the first may go.
        let second = NewUser {
            username: "root2".into(),
            password_hash: "x".into(),
            role: Role::Administrator,
            email: None,
            active: true,
        };
        store.write(|c| create(c, &second, now)).unwrap();
        store.write(|c| update(c, 1, &demote, now)).unwrap();
        // An inactive administrator does not count.
        assert!(store.write(|c| update(c, 2, &deactivate, now)).is_err());
    }

    #[test]
    fn usernames_are_unique_ignoring_case() {
        let store = store();
        let dup = NewUser {
            username: "Admin".into(),
            password_hash: "x".into(),
            role: Role::Viewer,
            email: None,
            active: true,
        };
        let err = store.write(|c| create(c, &dup, "t")).unwrap_err();
        assert!(matches!(err, NasError::Conflict { .. }));
    }

    #[test]
    fn read_new_reports_each_field() {
        let err = read_new(br#"{"username": "", "password": "short", "role": "god", "x": 1}"#)
            .unwrap_err();
        let NasError::Invalid(fields) = err else {
            panic!()
        };
        for f in ["username", "password", "role", "x"] {
            assert!(fields.contains_key(f), "{f}: {fields:?}");
        }
    }
}
