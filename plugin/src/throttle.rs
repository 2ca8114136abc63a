//! Throttling of credential guessing on the cluster endpoints (`/atlas/v1/join`, `/remove`,
//! `/snapshot`, `/consensus`, `/faults`), per source address.
//!
//! An address gets `FREE_FAILURES` wrong credentials per `WINDOW`; past that it is refused
//! with `429` for a period that doubles with each further failure (from 1 s up to
//! `MAX_BLOCK`), whatever it presents, so guessing proceeds at a few tries an hour. Peers with
//! the right credentials never fail, so they are never throttled unless they share an
//! address with the guesser. The table is bounded: at `MAX_ADDRESSES` the entries that no
//! longer block anything are dropped, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong credentials an address may present per window before it is blocked.
pub const FREE_FAILURES: u32 = 10;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The longest block.
pub const MAX_BLOCK: Duration = Duration::from_secs(300);
/// Addresses tracked at most.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Default)]
pub struct AuthThrottle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthThrottle {
    /// `Err(retry_after)` while `addr` is blocked.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&addr).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a wrong credential from `addr`; returns the block it now has, if any.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ADDRESSES && !entries.contains_key(&addr) {
            entries.retain(|_, e| {
                let quiet_since = e.blocked_until.unwrap_or(e.window_start);
                now < quiet_since || now - quiet_since < WINDOW
            });
            if entries.len() >= MAX_ADDRESSES
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(a, _)| *a)
            {
                entries.remove(&oldest);
            }
        }
        let entry = entries.entry(addr).or_insert(Entry {
            failures: 0,
            window_start: now,
            blocked_until: None,
        });
        // A quiet window (after the end of the last block, if any): start counting afresh.
        let quiet_since = entry.blocked_until.unwrap_or(entry.window_start);
        if now >= quiet_since && now - quiet_since >= WINDOW {
            entry.failures = 0;
            entry.window_start = now;
            entry.blocked_until = None;
        }
        entry.failures = entry.failures.saturating_add(1);
        let over = entry.failures.checked_sub(FREE_FAILURES)?;
        if over == 0 {
            return None;
        }
        let block = Duration::from_secs(1u64 << (over - 1).min(20)).min(MAX_BLOCK);
        entry.blocked_until = Some(now + block);
        entry.window_start = now;
        Some(block)
    }

    pub fn tracked(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_free_failures_for_doubling_periods() {
        let throttle = AuthThrottle::default();
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        let peer: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.failed(guesser, t0), None);
            assert!(throttle.check(guesser, t0).is_ok());
        }
        assert_eq!(throttle.failed(guesser, t0), Some(Duration::from_secs(1)));
        assert!(throttle.check(guesser, t0).is_err());
        assert!(throttle.check(peer, t0).is_ok(), "another address is not");
        // After the block, the next failure blocks twice as long.
        let t1 = t0 + Duration::from_secs(2);
        assert!(throttle.check(guesser, t1).is_ok());
        assert_eq!(throttle.failed(guesser, t1), Some(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(3);
        assert_eq!(throttle.failed(guesser, t2), Some(Duration::from_secs(4)));
        // Up to the maximum.
        let mut t = t2;
        for _ in 0..30 {
            // Each guess as soon as the block it caused ends.
            t += throttle.check(guesser, t).err().unwrap_or_default();
            throttle.failed(guesser, t);
        }
        assert_eq!(throttle.check(guesser, t), Err(MAX_BLOCK));
        // A quiet window later, an address starts again with its free failures.
        let later = t + MAX_BLOCK + WINDOW;
        assert_eq!(throttle.failed(peer, later), None);
        assert_eq!(throttle.failed(guesser, later + WINDOW), None);
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let throttle = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 500) {
            throttle.failed(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(throttle.tracked() <= MAX_ADDRESSES);
    }
}
