//! Passive health of a route's upstreams: an upstream that fails `EJECT_AFTER` requests in a
//! row (a connection it refused or that timed out, or a `502`/`503`/`504` from it) is left
//! out of the route's choices for `EJECT_FOR`; a success counts it healthy again. When every
//! upstream of a route is out, they are all tried anyway (failing open: a guess beats a sure
//! `502`). Bounded: one entry per configured upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures in a row that take an upstream out.
pub const EJECT_AFTER: u32 = 3;
/// How long an upstream stays out.
pub const EJECT_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Clone, Copy)]
struct State {
    failures: u32,
    out_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct PassiveHealth {
    upstreams: Mutex<HashMap<SocketAddr, State>>,
}

impl PassiveHealth {
    /// Records the outcome of a request to `upstream` at `now`; true when this failure took
    /// it out.
    pub fn record(&self, upstream: SocketAddr, ok: bool, now: Instant) -> bool {
        let mut map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        let state = map.entry(upstream).or_default();
        if ok {
            *state = State::default();
            return false;
        }
        state.failures = state.failures.saturating_add(1);
        if state.failures >= EJECT_AFTER && state.out_until.is_none_or(|t| t <= now) {
            state.out_until = Some(now + EJECT_FOR);
            state.failures = 0;
            return true;
        }
        false
    }

    /// Whether `upstream` is out at `now`.
    pub fn is_out(&self, upstream: SocketAddr, now: Instant) -> bool {
        let map = self.upstreams.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&upstream)
            .and_then(|s| s.out_until)
            .is_some_and(|t| t > now)
    }
}

/// Whether a failed connection may be retried on another upstream: nothing reached the
/// upstream, and the method is idempotent (RFC 9110), so even a client that sent the request
/// twice would change nothing twice.
pub fn retryable(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_take_an_upstream_out_for_a_while() {
        let health = PassiveHealth::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t0 = Instant::now();
        assert!(!health.record(a, false, t0));
        assert!(!health.record(a, false, t0));
        // A success in between starts the count again.
        assert!(!health.record(a, true, t0));
        assert!(!health.record(a, false, t0));
        assert!(!health.record(a, false, t0));
        assert!(!health.is_out(a, t0));
        assert!(health.record(a, false, t0), "the third failure in a row");
        assert!(health.is_out(a, t0 + EJECT_FOR / 2));
        assert!(!health.is_out(a, t0 + EJECT_FOR), "back after EJECT_FOR");
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert!(!health.is_out(b, t0), "others are not affected");
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"] {
            assert!(retryable(m), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!retryable(m), "{m}");
        }
    }
}
