//! Login, bearer tokens and login rate limiting.
//!
//! A token is `<selector>.<verifier>`: the selector (8 random bytes, hex) finds the session
//! row; the verifier (32 random bytes, hex) is stored only as a digest and compared in
//! constant time. A stolen database copy therefore yields no usable token.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use argon2::{Algorithm, Argon2, Params, Version};
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::error::NasError;
use super::users::{self, User};
use super::{NasStore, audit, format_ts, parse_ts};

/// Failed logins allowed per user name and client address within [`FAILURE_WINDOW_MINUTES`].
pub const MAX_FAILURES_PER_USER: usize = 5;
/// Failed logins allowed per client address within the window.
pub const MAX_FAILURES_PER_ADDR: usize = 20;
pub const FAILURE_WINDOW_MINUTES: i64 = 15;
/// Bound on remembered keys, so a flood of random names can not grow memory without limit.
const MAX_TRACKED_KEYS: usize = 10_000;

const SELECTOR_BYTES: usize = 8;
const VERIFIER_BYTES: usize = 32;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Digest of a token verifier. The verifier has 256 random bits, so no stretching is needed:
/// argon2id at its smallest cost serves as a plain keyed hash (the crate has no SHA-2).
fn verifier_digest(verifier: &str) -> Result<[u8; 32], NasError> {
    let params = Params::new(8, 1, 1, Some(32)).map_err(|e| NasError::Internal(e.to_string()))?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(verifier.as_bytes(), b"atlas-session-token", &mut out)
        .map_err(|e| NasError::Internal(e.to_string()))?;
    Ok(out)
}

fn split_token(token: &str) -> Option<(&str, &str)> {
    let (selector, verifier) = token.trim().split_once('.')?;
    let hex_of =
        |s: &str, bytes: usize| s.len() == bytes * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(selector, SELECTOR_BYTES) && hex_of(verifier, VERIFIER_BYTES))
        .then_some((selector, verifier))
}

/// Creates a session and returns its token (shown to the client once, never stored).
pub fn create_session(
    conn: &Connection,
    user_id: i64,
    now: DateTime<Utc>,
    ttl: Duration,
    client_addr: Option<&str>,
) -> Result<String, NasError> {
    let mut selector = [0u8; SELECTOR_BYTES];
    let mut verifier = [0u8; VERIFIER_BYTES];
    rand::rng().fill(&mut selector);
    rand::rng().fill(&mut verifier);
    let (selector, verifier) = (hex(&selector), hex(&verifier));
    let digest = verifier_digest(&verifier)?;
    // Forget sessions that ended more than a day ago.
    conn.execute(
        "DELETE FROM sessions WHERE expires_at < ?1 OR revoked_at < ?1",
        [format_ts(now - Duration::days(1))],
    )?;
    conn.execute(
        "INSERT INTO sessions (selector, verifier_hash, user_id, created_at, expires_at, client_addr)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            selector,
            digest.to_vec(),
            user_id,
            format_ts(now),
            format_ts(now + ttl),
            client_addr
        ],
    )?;
    Ok(format!("{selector}.{verifier}"))
}

/// The active user a token belongs to, or `Unauthorized`.
pub fn authenticate(conn: &Connection, token: &str, now: DateTime<Utc>) -> Result<User, NasError> {
    let invalid = || NasError::Unauthorized("invalid or expired token".into());
    let (selector, verifier) = split_token(token).ok_or_else(invalid)?;
    let row: Option<(Vec<u8>, i64, String, Option<String>)> = conn
        .query_row(
            "SELECT verifier_hash, user_id, expires_at, revoked_at FROM sessions WHERE selector = ?1",
            [selector],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((stored, user_id, expires_at, revoked_at)) = row else {
        return Err(invalid());
    };
    let digest = verifier_digest(verifier)?;
    if !bool::from(digest.as_slice().ct_eq(stored.as_slice())) {
        return Err(invalid());
    }
    let expired = parse_ts(&expires_at).is_none_or(|t| t <= now);
    if revoked_at.is_some() || expired {
        return Err(invalid());
    }
    let user = users::get(conn, user_id).map_err(|_| invalid())?;
    if !user.active {
        return Err(invalid());
    }
    Ok(user)
}

/// Revokes the session of `token`; true if there was one to revoke.
pub fn revoke(conn: &Connection, token: &str, now: DateTime<Utc>) -> Result<bool, NasError> {
    let Some((selector, _)) = split_token(token) else {
        return Ok(false);
    };
    let changed = conn.execute(
        "UPDATE sessions SET revoked_at = ?1 WHERE selector = ?2 AND revoked_at IS NULL",
        params![format_ts(now), selector],
    )?;
    Ok(changed > 0)
}

pub fn revoke_all_for_user(conn: &Connection, user_id: i64, now: &str) -> Result<(), NasError> {
    conn.execute(
        "UPDATE sessions SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL",
        params![now, user_id],
    )?;
    Ok(())
}

/// Recent login failures per (user name, client address) and per client address. Failures
/// are never counted per user alone: a guesser elsewhere cannot lock the real administrator
/// out, only their own address.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    by_user: HashMap<String, VecDeque<DateTime<Utc>>>,
    by_addr: HashMap<String, VecDeque<DateTime<Utc>>>,
}

fn prune(map: &mut HashMap<String, VecDeque<DateTime<Utc>>>, now: DateTime<Utc>) {
    let horizon = now - Duration::minutes(FAILURE_WINDOW_MINUTES);
    map.retain(|_, times| {
        while times.front().is_some_and(|t| *t <= horizon) {
            times.pop_front();
        }
        !times.is_empty()
    });
}

/// The key of a user name tried from an address (no address: a key of its own).
fn user_key(user: &str, addr: Option<&str>) -> String {
    format!(
        "{}\u{0}{}",
        user.to_lowercase(),
        addr.map(address_key).unwrap_or_default()
    )
}

fn over(map: &HashMap<String, VecDeque<DateTime<Utc>>>, key: &str, max: usize) -> bool {
    map.get(key).is_some_and(|t| t.len() >= max)
}

impl LoginLimiter {
    /// `Err(message)` when the user name or the address has too many recent failures.
    pub fn check(
        &mut self,
        user: &str,
        addr: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        prune(&mut self.by_user, now);
        prune(&mut self.by_addr, now);
        if over(&self.by_user, &user_key(user, addr), MAX_FAILURES_PER_USER) {
            return Err(format!(
                "too many failed logins for this user from this address; try again in {FAILURE_WINDOW_MINUTES} minutes"
            ));
        }
        if let Some(addr) = addr
            && over(&self.by_addr, &address_key(addr), MAX_FAILURES_PER_ADDR)
        {
            return Err(format!(
                "too many failed logins from this address; try again in {FAILURE_WINDOW_MINUTES} minutes"
            ));
        }
        Ok(())
    }

    pub fn record_failure(&mut self, user: &str, addr: Option<&str>, now: DateTime<Utc>) {
        for (map, key) in [
            (&mut self.by_user, Some(user_key(user, addr))),
            (&mut self.by_addr, addr.map(address_key)),
        ] {
            let Some(key) = key else { continue };
            if map.len() >= MAX_TRACKED_KEYS && !map.contains_key(&key) {
                prune(map, now);
                if map.len() >= MAX_TRACKED_KEYS {
                    // Still full of fresh entries: drop the key whose last failure is oldest,
                    // so a flood of new keys cannot erase a recent attack on one account.
                    let oldest = map
                        .iter()
                        .min_by_key(|(_, times)| times.back().copied())
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        map.remove(&k);
                    }
                }
            }
            map.entry(key).or_default().push_back(now);
        }
    }

    /// Clears the user's failures and takes back the attempt counted against the address.
    pub fn record_success(&mut self, user: &str, addr: Option<&str>) {
        self.by_user.remove(&user_key(user, addr));
        if let Some(times) = addr.and_then(|a| self.by_addr.get_mut(&address_key(a))) {
            times.pop_back();
        }
    }
}

/// The IP of `ip:port`, so one client is one key whatever its source port; IPv6 clients are
/// keyed by their /64, since one host usually holds a whole /64.
fn address_key(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(SocketAddr::V6(v6)) => {
            let s = v6.ip().segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(a) => a.ip().to_string(),
        Err(_) => addr.to_string(),
    }
}

/// What a successful login returns.
#[derive(Debug, Clone, Serialize)]
pub struct LoginResult {
    pub token: String,
    pub user: User,
    pub expires_in: i64,
}

/// Checks the rate limits and the password, records the attempt in the audit log, and
/// creates a session. The password is verified outside the database lock (argon2 is slow).
pub fn login(
    store: &NasStore,
    username: &str,
    password: &str,
    client_addr: Option<&str>,
) -> Result<LoginResult, NasError> {
    let now = store.now();
    let ts = format_ts(now);
    let attempt = |result: &str, message: &str, user_id: Option<i64>| {
        let mut entry = audit::Entry::new(username, "login", "session", &ts)
            .result(result)
            .message(message)
            .client_addr(client_addr)
            .details(serde_json::json!({"username": username}));
        entry.resource_id = user_id.map(|id| id.to_string());
        entry
    };
    if let Err(message) = store.limiter().check(username, client_addr, now) {
        store.write(|c| audit::record(c, &attempt("rate_limited", &message, None)))?;
        return Err(NasError::RateLimited(message));
    }
    // The attempt counts as a failure until the password is verified, so parallel attempts
    // cannot all pass the limit check before any of them is counted.
    store.limiter().record_failure(username, client_addr, now);
    let found = store.read(|c| users::find_with_hash(c, username))?;
    // argon2 takes ~20 MiB and tens of ms: `users` bounds how many hashes run at once.
    let verified = match &found {
        Some((user, hash)) => users::verify_password(password, hash) && user.active,
        None => {
            users::verify_against_dummy(password);
            false
        }
    };
    let Some((user, _)) = found.filter(|_| verified) else {
        store.write(|c| audit::record(c, &attempt("failure", "invalid credentials", None)))?;
        return Err(NasError::Unauthorized(
            "invalid user name or password".into(),
        ));
    };
    store.limiter().record_success(username, client_addr);
    let ttl = store.options().session_ttl;
    let token = store.write(|c| {
        let token = create_session(c, user.id, now, ttl, client_addr)?;
        users::record_login(c, user.id, &ts)?;
        audit::record(c, &attempt("success", "logged in", Some(user.id)))?;
        Ok(token)
    })?;
    let user = store.read(|c| users::get(c, user.id))?;
    Ok(LoginResult {
        token,
        user,
        expires_in: ttl.num_seconds(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nas::NasOptions;

    fn store() -> NasStore {
        NasStore::in_memory(NasOptions {
            initial_admin_password: Some("initial-admin-pw".into()),
            session_ttl: Duration::minutes(10),
            ..NasOptions::default()
        })
        .unwrap()
    }

    #[test]
    fn tokens_expire_and_can_be_revoked() {
        let store = store();
        let t0 = Utc::now();
        store.set_clock(Some(t0));
        let login = login(&store, "admin", "initial-admin-pw", Some("10.0.0.1:5555")).unwrap();
        assert_eq!(login.expires_in, 600);
        let token = login.token;
        assert!(store.read(|c| authenticate(c, &token, t0)).is_ok());
        // The database holds only a digest of the verifier.
        let stored: Vec<u8> = store
            .read(|c| Ok(c.query_row("SELECT verifier_hash FROM sessions", [], |r| r.get(0))?))
            .unwrap();
        let verifier = token.split_once('.').unwrap().1;
        assert!(!String::from_utf8_lossy(&stored).contains(verifier));
        let late = t0 + Duration::minutes(10);
        assert!(store.read(|c| authenticate(c, &token, late)).is_err());
        assert!(store.write(|c| revoke(c, &token, t0)).unwrap());
        assert!(store.read(|c| authenticate(c, &token, t0)).is_err());
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let store = store();
        let token = login(&store, "admin", "initial-admin-pw", None)
            .unwrap()
            .token;
        let now = store.now();
        let (sel, ver) = token.split_once('.').unwrap();
        let last = if ver.ends_with('0') { '1' } else { '0' };
        let flipped = format!("{sel}.{}{last}", &ver[..63]);
        for bad in [
            flipped.as_str(),
            "",
            "abc",
            sel,
            &format!("{}.{ver}", "0".repeat(16)),
        ] {
            assert!(store.read(|c| authenticate(c, bad, now)).is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_are_limited_per_user_and_audited() {
        let store = store();
        for _ in 0..MAX_FAILURES_PER_USER {
            let err = login(&store, "admin", "wrong-password!", Some("10.0.0.9:1")).unwrap_err();
            assert!(matches!(err, NasError::Unauthorized(_)));
        }
        // Even the right password is refused while limited, from that address.
        let err = login(&store, "admin", "initial-admin-pw", Some("10.0.0.9:2")).unwrap_err();
        assert!(matches!(err, NasError::RateLimited(_)), "{err}");
        // The real administrator elsewhere is not locked out by the guesser.
        assert!(login(&store, "admin", "initial-admin-pw", Some("10.0.0.7:1")).is_ok());
        // The window passes.
        store.set_clock(Some(
            Utc::now() + Duration::minutes(FAILURE_WINDOW_MINUTES + 1),
        ));
        assert!(login(&store, "admin", "initial-admin-pw", None).is_ok());
        let rows = store
            .read(|c| {
                audit::query(
                    c,
                    &audit::Filter {
                        action: Some("login".into()),
                        limit: 100,
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        let results: Vec<&str> = rows.iter().map(|r| r.result.as_str()).collect();
        assert_eq!(
            results.iter().filter(|r| **r == "failure").count(),
            MAX_FAILURES_PER_USER
        );
        assert!(results.contains(&"rate_limited") && results.contains(&"success"));
        assert_eq!(
            rows.last().unwrap().client_addr.as_deref(),
            Some("10.0.0.9:1")
        );
    }

    #[test]
    fn failures_are_limited_per_address() {
        let mut limiter = LoginLimiter::default();
        let now = Utc::now();
        for i in 0..MAX_FAILURES_PER_ADDR {
            limiter.record_failure(&format!("user{i}"), Some("192.0.2.1:1000"), now);
        }
        assert!(limiter.check("fresh", Some("192.0.2.1:2000"), now).is_err());
        assert!(limiter.check("fresh", Some("192.0.2.2:2000"), now).is_ok());
    }

    #[test]
    fn unknown_users_and_inactive_users_fail_alike() {
        let store = store();
        let a = login(&store, "nobody", "whatever-password", None).unwrap_err();
        assert!(matches!(a, NasError::Unauthorized(_)));
    }
}
