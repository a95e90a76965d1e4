//! Direct pass-through, userspace half: a gateway without a policy decides nothing from a
//! connection's bytes, so the kernel lets intercepted connections go straight to their
//! destination and reports each one's opening and end, with the bytes each way, on a pinned
//! ring buffer ([`maps::DIRECT_EVENTS`]) from which the gateway writes its connection record.
//!
//! The kernel admits a connection only while the gateway vouches that it records: the
//! gateway writes a deadline a second ahead into the state array, renewed four times a
//! second while its recorder is ready. A gateway that stops, hangs or cannot record lets the
//! deadline pass, and connections are redirected to it again (where it refuses what it cannot
//! record, or nothing listens). Admission also keeps room in the ring for both reports of
//! every connection that can be open, so what the kernel let through is reported even when
//! the gateway reads late, and the ring is pinned, so a restarted gateway reads what the
//! previous one left.
//!
//! A cgroup disabled while some of its direct pass-throughs are open takes `sock_ops` with
//! it, so their ends will not be reported: [`Direct::sweep`] takes them out of the kernel's
//! account and hands them to the daemon as ended unseen, for their records.
use std::{collections::HashSet, sync::Mutex, time::Duration};

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, RingBuf},
};
use gateway_common::{DirectConn, DirectEvent, direct, maps};
use serde::{Deserialize, Serialize};

use super::{InterceptError, pins::take_map};
use crate::util::sync::LockExt;

/// The kernel's side of direct pass-through, once the maps are open.
pub struct Direct {
    state: Mutex<Array<MapData, u64>>,
    pending: Mutex<HashMap<MapData, u64, DirectConn>>,
    open: Mutex<HashMap<MapData, u64, DirectConn>>,
    /// The reports, until the daemon takes them.
    events: Mutex<Option<RingBuf<MapData>>>,
    /// Open ones taken out by [`Direct::sweep`], until the daemon records them.
    swept: Mutex<Vec<DirectEvent>>,
}

/// Direct pass-through, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectStatus {
    /// Direct pass-throughs open now (their SYN left, their end not reported yet).
    pub open: u64,
    /// Whether the gateway's word that it records is in force (else connections are
    /// redirected to it).
    pub vouched: bool,
    /// Connects between `connect()` and their SYN, and ones that failed before it (cleared
    /// after a few seconds).
    pub pending: u64,
}

impl Direct {
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Self, InterceptError> {
        Ok(Self {
            state: Mutex::new(take_map(ebpf, maps::DIRECT_STATE)?),
            pending: Mutex::new(take_map(ebpf, maps::DIRECT_PENDING)?),
            open: Mutex::new(take_map(ebpf, maps::DIRECT_OPEN)?),
            events: Mutex::new(Some(take_map(ebpf, maps::DIRECT_EVENTS)?)),
            swept: Mutex::new(Vec::new()),
        })
    }

    /// Takes the open direct pass-throughs made from the cgroups `ids` out of the kernel's
    /// account (call it once their `sock_ops` is detached: their ends will not be reported)
    /// and keeps them for [`Direct::take_swept`]. Returns how many.
    pub fn sweep(&self, ids: &HashSet<u64>) -> usize {
        let mut open = self.open.locked();
        let keys: Vec<u64> = open.keys().flatten().collect();
        let mut swept = Vec::new();
        for cookie in keys {
            let Ok(conn) = open.get(&cookie, 0) else {
                continue;
            };
            // An entry already gone was closed and reported meanwhile.
            if ids.contains(&conn.redirect.workload.cgroup_id) && open.remove(&cookie).is_ok() {
                swept.push(DirectEvent {
                    cookie,
                    at_ns: monotonic_ns(),
                    kind: direct::SWEPT_EVENT,
                    conn,
                    ..DirectEvent::default()
                });
            }
        }
        drop(open);
        let n = swept.len();
        if n > 0 {
            let mut state = self.state.locked();
            let before = state.get(&direct::SWEPT, 0).unwrap_or(0);
            if let Err(e) = state.set(direct::SWEPT, before + n as u64, 0) {
                tracing::warn!(error = %e, "cannot count swept direct pass-throughs");
            }
            self.swept.locked().extend(swept);
        }
        n
    }

    /// Removes the entries of connects that failed before their SYN (the kernel moves every
    /// other one on within the `connect` call that made it, microseconds later). Returns how
    /// many.
    pub fn clear_failed_connects(&self) -> usize {
        const STALE: Duration = Duration::from_secs(10);
        let mut pending = self.pending.locked();
        let Some(before) = monotonic_ns().checked_sub(STALE.as_nanos() as u64) else {
            return 0;
        };
        let stale: Vec<u64> = pending
            .iter()
            .flatten()
            .filter(|(_, c)| c.started_ns < before)
            .map(|(cookie, _)| cookie)
            .collect();
        stale
            .into_iter()
            .filter(|cookie| pending.remove(cookie).is_ok())
            .count()
    }

    /// Whether the kernel still counts the connection with socket `cookie` as open.
    pub fn is_open(&self, cookie: u64) -> bool {
        self.open.locked().get(&cookie, 0).is_ok()
    }

    /// What [`Direct::sweep`] took out since the last call.
    pub fn take_swept(&self) -> Vec<DirectEvent> {
        std::mem::take(&mut *self.swept.locked())
    }

    /// The kernel's reports (once: the daemon reads them).
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.events.locked().take()
    }

    /// Vouches that the gateway records what the kernel reports for `ahead` from now, or
    /// (None) withdraws its word at once: new connections are redirected to it.
    pub fn vouch(&self, ahead: Option<Duration>) -> Result<(), InterceptError> {
        let until = ahead.map_or(0, |d| monotonic_ns().saturating_add(d.as_nanos() as u64));
        self.state
            .locked()
            .set(direct::VOUCHED_UNTIL, until, 0)
            .map_err(|source| InterceptError::Map {
                name: maps::DIRECT_STATE,
                source,
            })
    }

    pub fn status(&self) -> DirectStatus {
        let state = self.state.locked();
        let get = |i| state.get(&i, 0).unwrap_or(0);
        DirectStatus {
            open: get(direct::OPENED)
                .wrapping_sub(get(direct::CLOSED))
                .wrapping_sub(get(direct::SWEPT)),
            vouched: get(direct::VOUCHED_UNTIL) > monotonic_ns(),
            pending: self.pending.locked().keys().count() as u64,
        }
    }
}

/// One report from the ring, or None for a record too short to be one (a newer kernel side
/// writing something else).
pub fn decode(item: &[u8]) -> Option<DirectEvent> {
    if item.len() < size_of::<DirectEvent>() {
        return None;
    }
    // SAFETY: the kernel wrote a DirectEvent (repr(C), no padding, any bit pattern valid);
    // the read is unaligned-safe and within the slice.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) })
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}
