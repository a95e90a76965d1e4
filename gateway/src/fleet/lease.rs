//! This host's lease on its share of the fleet's rate limits (`limit: { …, scope: fleet }`).
//!
//! Each heartbeat that reaches the database also counts the hosts alive there (heard from
//! within `dead_after`, on the database's clock) and renews the lease: this host may spend
//! 1/n of every fleet-wide rate until `dead_after` after the heartbeat was *sent*. The other
//! hosts count this one alive until `dead_after` after the heartbeat *arrived* (later), and
//! take its share only at their first heartbeat after that — so a host cut off from the
//! database stops spending its share before anyone else starts, and the fleet-wide rate
//! holds. A host that joins takes its share at once while the others give theirs up at their
//! next heartbeat: for up to one heartbeat the fleet may admit up to rate × (1 + 1/n).
//!
//! The call path reads two atomics; it never waits on the database.
use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// What `status` shows of the lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaseStatus {
    /// The hosts alive the rate is split among (this host's share is 1/hosts).
    pub hosts: u64,
    /// How long the lease still runs without another heartbeat (0: it ran out).
    pub expires_in_ms: u64,
}

pub(super) struct Lease {
    base: Instant,
    /// Hosts alive at the last renewal; 0 before the first.
    hosts: AtomicU64,
    /// Microseconds after `base` the lease ends.
    until_us: AtomicU64,
}

impl Lease {
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            hosts: AtomicU64::new(0),
            until_us: AtomicU64::new(0),
        }
    }

    /// Renews the lease: `hosts` alive, counted after a heartbeat sent at `sent`.
    pub(super) fn renew(&self, hosts: u64, sent: Instant, dead_after: Duration) {
        let until = sent.saturating_duration_since(self.base) + dead_after;
        self.hosts.store(hosts.max(1), Relaxed);
        self.until_us.store(until.as_micros() as u64, Relaxed);
    }

    /// This host's share of the fleet's rate at `now`, or how long ago the lease ran out.
    pub(super) fn share_at(&self, now: Instant) -> Result<f64, Option<Duration>> {
        let hosts = self.hosts.load(Relaxed);
        if hosts == 0 {
            return Err(None);
        }
        let until = Duration::from_micros(self.until_us.load(Relaxed));
        let at = now.saturating_duration_since(self.base);
        if at >= until {
            return Err(Some(at - until));
        }
        Ok(1.0 / hosts as f64)
    }

    /// The hosts alive at the last renewal (at least 1: this one).
    pub(super) fn hosts(&self) -> u64 {
        self.hosts.load(Relaxed).max(1)
    }

    pub(super) fn status(&self, now: Instant) -> Option<LeaseStatus> {
        let hosts = self.hosts.load(Relaxed);
        (hosts > 0).then(|| {
            let until = Duration::from_micros(self.until_us.load(Relaxed));
            let at = now.saturating_duration_since(self.base);
            LeaseStatus {
                hosts,
                expires_in_ms: until.saturating_sub(at).as_millis() as u64,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_splits_the_rate_and_runs_out() {
        let l = Lease::new();
        // Whole microseconds after the lease's base, as it keeps them.
        let t0 = l.base + Duration::from_secs(1);
        assert_eq!(
            l.share_at(t0),
            Err(None),
            "no lease before the first heartbeat"
        );
        assert_eq!(l.status(t0), None);
        let dead_after = Duration::from_secs(3);
        l.renew(2, t0, dead_after);
        assert_eq!(l.share_at(t0 + Duration::from_secs(1)), Ok(0.5));
        assert_eq!(
            l.status(t0 + Duration::from_secs(1)),
            Some(LeaseStatus {
                hosts: 2,
                expires_in_ms: 2000
            })
        );
        assert_eq!(
            l.share_at(t0 + Duration::from_secs(4)),
            Err(Some(Duration::from_secs(1))),
            "ran out a second ago"
        );
        l.renew(1, t0 + Duration::from_secs(4), dead_after);
        assert_eq!(l.share_at(t0 + Duration::from_secs(5)), Ok(1.0));
        l.renew(0, t0 + Duration::from_secs(5), dead_after);
        assert_eq!(
            l.share_at(t0 + Duration::from_secs(5)),
            Ok(1.0),
            "this host counts itself"
        );
    }
}
