//! Peer health from periodic pings: RTT averaged over time, and ACTIVE / SUSPECT / DOWN.
//!
//! Pure state: the caller pings, then reports the outcome with the current monotonic time.
//! A peer is SUSPECT after `suspect_after` without a successful ping and DOWN after
//! `down_after`; one success makes it ACTIVE again. Quorums prefer ACTIVE peers and avoid
//! DOWN ones.

use std::fmt;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerStatus {
    Active,
    Suspect,
    Down,
}

impl fmt::Display for PeerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PeerStatus::Active => "ACTIVE",
            PeerStatus::Suspect => "SUSPECT",
            PeerStatus::Down => "DOWN",
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub ping_interval: Duration,
    pub suspect_after: Duration,
    pub down_after: Duration,
    /// Weight of a new RTT sample in the moving average (0..=1).
    pub rtt_weight: f64,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            ping_interval: Duration::from_millis(500),
            suspect_after: Duration::from_millis(1500),
            down_after: Duration::from_secs(5),
            rtt_weight: 0.2,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerHealth {
    status: PeerStatus,
    rtt_ms: Option<f64>,
    last_success: Option<Instant>,
    /// When we started watching: a peer never heard from is judged from here.
    watched_since: Instant,
}

impl PeerHealth {
    /// A new peer starts SUSPECT until its first ping answers.
    pub fn new(now: Instant) -> Self {
        PeerHealth {
            status: PeerStatus::Suspect,
            rtt_ms: None,
            last_success: None,
            watched_since: now,
        }
    }

    pub fn status(&self) -> PeerStatus {
        self.status
    }

    /// Averaged round-trip time, once measured.
    pub fn rtt_ms(&self) -> Option<f64> {
        self.rtt_ms
    }

    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    pub fn record_success(&mut self, rtt: Duration, now: Instant, policy: &HealthPolicy) {
        let sample = rtt.as_secs_f64() * 1000.0;
        self.rtt_ms = Some(match self.rtt_ms {
            None => sample,
            Some(avg) => avg + policy.rtt_weight * (sample - avg),
        });
        self.last_success = Some(now);
        self.status = PeerStatus::Active;
    }

    /// Re-evaluates the status from elapsed time (call after failures and on every tick).
    pub fn tick(&mut self, now: Instant, policy: &HealthPolicy) {
        let since = self.last_success.unwrap_or(self.watched_since);
        let silent = now.saturating_duration_since(since);
        self.status = if self.last_success.is_some() && silent < policy.suspect_after {
            PeerStatus::Active
        } else if silent < policy.down_after {
            PeerStatus::Suspect
        } else {
            PeerStatus::Down
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_silence_and_recovers_on_success() {
        let policy = HealthPolicy::default();
        let t0 = Instant::now();
        let mut peer = PeerHealth::new(t0);
        assert_eq!(peer.status(), PeerStatus::Suspect);
        peer.record_success(Duration::from_millis(10), t0, &policy);
        assert_eq!(peer.status(), PeerStatus::Active);
        peer.tick(t0 + Duration::from_millis(1499), &policy);
        assert_eq!(peer.status(), PeerStatus::Active);
        peer.tick(t0 + Duration::from_millis(1500), &policy);
        assert_eq!(peer.status(), PeerStatus::Suspect);
        peer.tick(t0 + Duration::from_secs(5), &policy);
        assert_eq!(peer.status(), PeerStatus::Down);
        peer.record_success(
            Duration::from_millis(20),
            t0 + Duration::from_secs(6),
            &policy,
        );
        assert_eq!(peer.status(), PeerStatus::Active);
    }

    #[test]
    fn a_peer_never_heard_from_goes_down() {
        let policy = HealthPolicy::default();
        let t0 = Instant::now();
        let mut peer = PeerHealth::new(t0);
        peer.tick(t0 + Duration::from_secs(1), &policy);
        assert_eq!(peer.status(), PeerStatus::Suspect);
        peer.tick(t0 + Duration::from_secs(5), &policy);
        assert_eq!(peer.status(), PeerStatus::Down);
    }

    #[test]
    fn rtt_is_a_moving_average() {
        let policy = HealthPolicy::default();
        let t0 = Instant::now();
        let mut peer = PeerHealth::new(t0);
        peer.record_success(Duration::from_millis(10), t0, &policy);
        assert_eq!(peer.rtt_ms(), Some(10.0));
        peer.record_success(Duration::from_millis(60), t0, &policy);
        let rtt = peer.rtt_ms().unwrap();
        assert!((rtt - 20.0).abs() < 1e-9, "{rtt}");
    }
}
