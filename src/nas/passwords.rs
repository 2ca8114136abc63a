//! Password hashes: argon2id PHC strings, every hash and verification under a bounded
//! number of slots.

use std::sync::{Condvar, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::Rng;

use super::error::NasError;

/// OWASP's minimum for argon2id: 19 MiB of memory, 2 iterations, 1 lane.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_LANES: u32 = 1;

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_LANES, None)
        .expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A counting semaphore for blocking threads (argon2 runs on tokio's blocking pool).
struct Permits {
    free: Mutex<usize>,
    released: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Permits {
    const fn new(n: usize) -> Permits {
        Permits {
            free: Mutex::new(n),
            released: Condvar::new(),
        }
    }

    fn acquire(&self) -> Permit<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.released.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.released.notify_one();
    }
}

/// argon2 runs (hashes and verifications: logins, password changes, new users) allowed at
/// once; each takes ~19 MiB and tens of milliseconds, so a flood of requests waits here
/// instead of growing memory.
pub(crate) const HASH_SLOTS: usize = 2;
static HASH_PERMITS: Permits = Permits::new(HASH_SLOTS);
/// argon2 runs now, and the most seen at once (what the bound is tested by).
static HASHING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST_HASHING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Runs one argon2 operation under a permit.
fn hashing<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::atomic::Ordering;
    let _permit = HASH_PERMITS.acquire();
    let now = HASHING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_HASHING.fetch_max(now, Ordering::SeqCst);
    let out = f();
    HASHING.fetch_sub(1, Ordering::SeqCst);
    out
}

/// Hashes a password into an argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, NasError> {
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| NasError::Internal(e.to_string()))?;
    hashing(|| {
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .map_err(|e| NasError::Internal(format!("password hashing failed: {e}")))
}

/// Verifies in constant time (argon2's comparison); an unparsable hash never matches.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => hashing(|| argon2().verify_password(password.as_bytes(), &hash).is_ok()),
        Err(_) => false,
    }
}

/// Burns the same time as a real verification, so an unknown user name answers as slowly as
/// a wrong password.
pub fn verify_against_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash_password("atlas-dummy-password").unwrap_or_default());
    let _ = verify_password(password, phc);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_argon2_run_takes_one_of_the_bounded_slots() {
        let threads: Vec<_> = (0..6)
            .map(|i| {
                std::thread::spawn(move || {
                    let phc = hash_password(&format!("password number {i}")).unwrap();
                    assert!(verify_password(&format!("password number {i}"), &phc));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let most = MOST_HASHING.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=HASH_SLOTS).contains(&most),
            "{most} argon2 runs at once"
        );
    }
}
