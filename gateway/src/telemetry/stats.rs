//! Counters and the recent-connection ring shown by `callgate status`.
use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use crate::util::sync::LockExt;
use serde::{Deserialize, Serialize};

/// How many finished connections `status` remembers.
const RECENT: usize = 128;

#[derive(Debug, Default)]
pub struct Stats {
    /// Connections the listeners accepted (direct pass-throughs are not: see the kernel's
    /// `direct` counter).
    pub accepted: AtomicU64,
    /// The last connection id handed out: accepted and direct connections share one sequence.
    last_id: AtomicU64,
    pub forwarded: AtomicU64,
    pub refused_no_entry: AtomicU64,
    pub refused_loop: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Refused because the call could not be recorded (disk full, writer behind).
    pub refused_recording: AtomicU64,
    /// Records that could not be queued after their connection ended.
    pub record_errors: AtomicU64,
    pub active: AtomicU64,
    /// Calls (HTTP requests) decided, and how.
    pub calls: AtomicU64,
    pub calls_allowed: AtomicU64,
    pub calls_denied: AtomicU64,
    /// Connections or calls the policy refused before any call could be read (unknown
    /// destination, `tcp: deny`, SNI or Host naming another service, malformed TLS).
    pub refused_policy: AtomicU64,
    /// Bearer tokens checked (a connection reuses its last outcome; that is not counted).
    pub tokens_verified: AtomicU64,
    pub tokens_rejected: AtomicU64,
    /// Calls refused because no per-caller upstream token could be had (`token_exchange`:
    /// no verified caller token, the exchange refused or failed).
    pub token_exchange_failures: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Connections served by another data-path thread than the one that accepted them.
    pub handed_over: AtomicU64,
    /// Connections closed unserved because the data-path thread chosen to serve them could
    /// not take them (its poller refused them).
    pub handover_failed: AtomicU64,
    /// Intercepted TLS clients that refused the gateway's certificate, by workload.
    pub untrusting: crate::telemetry::untrusting::Refusals,
    recent: Mutex<VecDeque<ConnSummary>>,
    /// Each data-path thread's open connections: the accept stage balances new connections
    /// by them, and `status` shows them.
    lanes: Box<[LaneLoad]>,
}

/// One data-path thread's open connections, on a cache line of its own (every accept and
/// close writes it).
#[derive(Debug, Default)]
#[repr(align(128))]
struct LaneLoad(AtomicUsize);

/// One finished connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnSummary {
    pub id: u64,
    pub started_unix_ms: u64,
    pub workload: std::sync::Arc<crate::call::Workload>,
    /// Serialised as its text (`127.0.0.1:443`), as `status` shows it.
    pub original_dst: std::net::SocketAddr,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    /// `ok`, or why the connection ended early.
    pub outcome: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Counters {
    pub accepted: u64,
    pub forwarded: u64,
    pub refused_no_entry: u64,
    pub refused_loop: u64,
    pub upstream_errors: u64,
    #[serde(default)]
    pub refused_recording: u64,
    #[serde(default)]
    pub record_errors: u64,
    pub active: u64,
    #[serde(default)]
    pub calls: u64,
    #[serde(default)]
    pub calls_allowed: u64,
    #[serde(default)]
    pub calls_denied: u64,
    #[serde(default)]
    pub refused_policy: u64,
    #[serde(default)]
    pub tokens_verified: u64,
    #[serde(default)]
    pub tokens_rejected: u64,
    #[serde(default)]
    pub token_exchange_failures: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Connections served by another data-path thread than the one that accepted them.
    #[serde(default)]
    pub handed_over: u64,
    /// Connections closed unserved because the data-path thread chosen to serve them could
    /// not take them (its poller refused them).
    #[serde(default)]
    pub handover_failed: u64,
    /// Intercepted TLS connections whose client refused the gateway's certificate.
    #[serde(default)]
    pub tls_untrusted: u64,
}

impl Stats {
    /// Counters for a gateway with `lanes` data-path threads.
    pub fn with_lanes(lanes: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| LaneLoad::default()).collect(),
            ..Self::default()
        }
    }

    /// The connections data-path thread `lane` serves now.
    pub fn lane_open(&self, lane: usize) -> usize {
        self.lanes.get(lane).map_or(0, |l| l.0.load(Relaxed))
    }

    /// Each data-path thread's open connections.
    pub fn lanes(&self) -> Vec<u64> {
        self.lanes
            .iter()
            .map(|l| l.0.load(Relaxed) as u64)
            .collect()
    }

    /// Counts a new connection that data-path thread `lane` accepted against the thread that
    /// is to serve it: `lane`, unless another thread serves fewer connections, then the one
    /// serving the fewest (of equals, the first after `lane`, so that ties do not all go to
    /// one thread). Another thread's count is claimed with a compare-and-swap, so that two
    /// threads accepting at once do not both hand their connections to the same one.
    pub fn claim_lane(self: &std::sync::Arc<Self>, lane: usize) -> LaneGuard {
        let n = self.lanes.len();
        let mut to = lane;
        // A lost compare-and-swap means another thread just counted one there: look again,
        // a few times at most (then this thread serves it).
        for _ in 0..4 {
            let mine = self.lane_open(lane);
            let Some((least, open)) = (1..n)
                .map(|i| (lane + i) % n)
                .map(|i| (i, self.lanes[i].0.load(Relaxed)))
                .min_by_key(|&(_, open)| open)
            else {
                break;
            };
            if mine <= open {
                break;
            }
            if self.lanes[least]
                .0
                .compare_exchange(open, open + 1, Relaxed, Relaxed)
                .is_ok()
            {
                to = least;
                break;
            }
        }
        if to == lane
            && let Some(l) = self.lanes.get(lane)
        {
            l.0.fetch_add(1, Relaxed);
        }
        LaneGuard {
            stats: self.clone(),
            lane: to,
        }
    }

    /// Counts a new connection against `lane`, the thread that accepted it, whatever the
    /// others serve (at the stop: see [`crate::proxy::accept`]'s dispatch).
    pub fn claim_own_lane(self: &std::sync::Arc<Self>, lane: usize) -> LaneGuard {
        let lane = lane.min(self.lanes.len() - 1);
        self.lanes[lane].0.fetch_add(1, Relaxed);
        LaneGuard {
            stats: self.clone(),
            lane,
        }
    }

    /// A new connection's id: unique across listeners and direct pass-through, easy to read.
    pub fn next_id(&self) -> u64 {
        self.last_id.fetch_add(1, Relaxed) + 1
    }

    pub fn finished(&self, summary: ConnSummary) {
        self.bytes_up.fetch_add(summary.bytes_up, Relaxed);
        self.bytes_down.fetch_add(summary.bytes_down, Relaxed);
        let mut recent = self.recent.locked();
        let oldest = (recent.len() == RECENT).then(|| recent.pop_front());
        recent.push_back(summary);
        // Freed after the lock: every data-path thread comes here once per connection.
        drop(recent);
        drop(oldest);
    }

    pub fn recent(&self) -> Vec<ConnSummary> {
        self.recent.locked().iter().cloned().collect()
    }

    pub fn snapshot(&self) -> Counters {
        Counters {
            accepted: self.accepted.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            refused_no_entry: self.refused_no_entry.load(Relaxed),
            refused_loop: self.refused_loop.load(Relaxed),
            upstream_errors: self.upstream_errors.load(Relaxed),
            refused_recording: self.refused_recording.load(Relaxed),
            record_errors: self.record_errors.load(Relaxed),
            active: self.active.load(Relaxed),
            calls: self.calls.load(Relaxed),
            calls_allowed: self.calls_allowed.load(Relaxed),
            calls_denied: self.calls_denied.load(Relaxed),
            refused_policy: self.refused_policy.load(Relaxed),
            tokens_verified: self.tokens_verified.load(Relaxed),
            tokens_rejected: self.tokens_rejected.load(Relaxed),
            token_exchange_failures: self.token_exchange_failures.load(Relaxed),
            bytes_up: self.bytes_up.load(Relaxed),
            bytes_down: self.bytes_down.load(Relaxed),
            handed_over: self.handed_over.load(Relaxed),
            handover_failed: self.handover_failed.load(Relaxed),
            tls_untrusted: self.untrusting.total(),
        }
    }
}

/// Counts a connection against the data-path thread serving it, until it ends.
#[derive(Debug)]
pub struct LaneGuard {
    stats: std::sync::Arc<Stats>,
    lane: usize,
}

impl LaneGuard {
    /// The data-path thread that serves the connection.
    pub fn lane(&self) -> usize {
        self.lane
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if let Some(l) = self.stats.lanes.get(self.lane) {
            l.0.fetch_sub(1, Relaxed);
        }
    }
}

/// Decrements `active` when a connection ends, however it ends.
pub struct ActiveGuard<'a>(&'a Stats);

impl<'a> ActiveGuard<'a> {
    pub fn new(stats: &'a Stats) -> Self {
        stats.active.fetch_add(1, Relaxed);
        Self(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}
