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

/// What is counted: an IPv4 address, or an IPv6 address's /64 (one host usually holds a
/// whole /64, and would otherwise get fresh free guesses on every address of it).
fn key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Default)]
pub struct AuthThrottle {
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

impl AuthThrottle {
    /// `Err(retry_after)` while `addr` is blocked.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let addr = key(addr);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&addr).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a wrong credential from `addr`; returns the block it now has, if any.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let addr = key(addr);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ADDRESSES && !entries.contains_key(&addr) {
            entries.retain(|_, e| {
                let quiet_since = e.blocked_until.unwrap_or(e.window_start);
                now < quiet_since || now - quiet_since < WINDOW
            });
            // Still full: drop the oldest entry that blocks nothing; never a blocked one
            // (a flood of new addresses must not unblock a guesser).
            if entries.len() >= MAX_ADDRESSES {
                let oldest = entries
                    .iter()
                    .filter(|(_, e)| e.blocked_until.is_none_or(|u| u <= now))
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(a, _)| *a);
                match oldest {
                    Some(oldest) => {
                        entries.remove(&oldest);
                    }
                    // Every tracked address is blocked: block the new one too.
                    None => return Some(MAX_BLOCK),
                }
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
    fn an_ipv6_host_cannot_rotate_addresses_within_its_64() {
        let throttle = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..=FREE_FAILURES as u16 {
            let addr: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
            throttle.failed(addr, now);
        }
        let another: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(throttle.check(another, now).is_err(), "same /64");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(throttle.check(elsewhere, now).is_ok());
    }

    #[test]
    fn a_flood_of_new_addresses_does_not_unblock_a_guesser() {
        let throttle = AuthThrottle::default();
        let now = Instant::now();
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..=FREE_FAILURES {
            throttle.failed(guesser, now);
        }
        assert!(throttle.check(guesser, now).is_err());
        for i in 0..(MAX_ADDRESSES as u32 + 100) {
            throttle.failed(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), now);
        }
        assert!(throttle.check(guesser, now).is_err(), "still blocked");
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
