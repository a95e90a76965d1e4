//! This host's reservations on fleet-wide quotas (`quota: { calls: N/w, scope: fleet }`):
//! the database off the call's path for quotas big enough to allow it.
//!
//! **The rule.** A host takes a *block* of k counts of a (key, window) from the database in
//! one statement that succeeds only if the whole block fits under the quota; its calls then
//! count against the block here, under a short lock, with no round trip. A reserved count is
//! counted in the database whether it is used or not, so the fleet never admits more than the
//! quota. The block size adapts like TCP's slow start: the first call of a key takes k = 1
//! synchronously (each call one round trip, as before reservations); k doubles while blocks
//! are used up within [`FAST`] and halves when one lasts longer than [`SLOW`]; it is capped by
//! `remaining / (4 × hosts alive)` and by [`MAX_BLOCK`], so a small quota (3 a day on two
//! hosts) stays exact and synchronous. When a block falls to half, one background refill
//! (per key, at most one in flight) takes the next; a call that finds its block empty with no
//! refill in flight takes one itself and waits for it; a block that does not fit is retried
//! at k = 1, and a k = 1 that does not fit is the quota used up (429).
//!
//! **Counts go back** — a block untouched for [`IDLE_RETURN`], every block at a graceful
//! stop, and the excess when k shrinks — by subtracting the unused counts from the same
//! window's row. **The window edge**: a block is used only until [`edge_margin`] before its
//! window ends on the database's clock (estimated from the statement's `now()`, measured from
//! when the statement was sent, so the estimate errs early); a call after that takes a count
//! synchronously, so no call of a new window is counted against an old block.
//!
//! **Tolerance.** Never more than the quota fleet-wide. Fewer, in two ways: a host may be
//! refused (429) while others still hold unused counts — at most `remaining / 4` across the
//! fleet at the moment each block was taken, and at most [`MAX_BLOCK`] per key and host —
//! until they use them or give them back (≤ [`IDLE_RETURN`] of idleness); and a host that
//! dies (or loses the database while holding counts) loses its unused counts for the window.
//! With the database gone, counts already reserved are still spent (they are counted); once
//! the block is empty the call fails closed (503 `quota_unavailable`).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, futures::OwnedNotified};

use crate::util::sync::LockExt;

/// Blocks used up faster than this grow (double).
pub(super) const FAST: Duration = Duration::from_secs(1);
/// Blocks that last longer than this shrink (halve).
pub(super) const SLOW: Duration = Duration::from_secs(4);
/// The largest block a host takes of one key.
pub(super) const MAX_BLOCK: u64 = 1024;
/// A block untouched this long gives its unused counts back.
pub(super) const IDLE_RETURN: Duration = Duration::from_secs(2);
/// A key with nothing reserved and no call for this long leaves the map.
const IDLE_FORGET: Duration = Duration::from_secs(30);
/// Keys held at most; the calls of other keys take one count at a time, synchronously.
pub(super) const MAX_KEYS: usize = 100_000;

/// How long before its window ends (on the database's clock) a block stops being used: 1 %
/// of the window, between 200 ms and 2 s.
pub(super) fn edge_margin(window_s: u64) -> Duration {
    Duration::from_millis(window_s.saturating_mul(10))
        .clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// The next block's size: `prev` doubled when the last one `lasted` less than [`FAST`],
/// halved when it lasted more than [`SLOW`]; at most `remaining / (4 × hosts)` and
/// [`MAX_BLOCK`]; at least 1.
pub(super) fn next_size(prev: u64, lasted: Duration, remaining: u64, hosts: u64) -> u64 {
    let want = if lasted < FAST {
        prev.saturating_mul(2)
    } else if lasted > SLOW {
        prev / 2
    } else {
        prev
    };
    let cap = (remaining / (4 * hosts.max(1))).clamp(1, MAX_BLOCK);
    want.clamp(1, cap)
}

/// What the database granted: the count after the block, its window's start, and the
/// database's clock when it counted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    pub count: u64,
    pub window_start: i64,
    pub db_now: f64,
}

/// Counts to give back: `n` of `key`'s row of the window starting at `window_start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GiveBack {
    pub key: String,
    pub window_start: i64,
    pub n: u64,
}

/// What a call is to do.
pub(super) enum Take {
    /// Counted against this host's block; `refill`: take a block of this size in the
    /// background (this host marked it in flight).
    Spent { refill: Option<u64> },
    /// The block is empty and a refill is in flight: wait for it, then try again.
    Wait(OwnedNotified),
    /// Take a block of `k` from the database for this call (it waits for it).
    Fetch { k: u64 },
}

/// What `status` shows of the reservations (totals over the keys held).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ReserveStatus {
    /// Keys this host keeps a block of.
    pub keys: u64,
    /// Counts this host holds reserved in the database in the blocks' current windows.
    pub reserved: u64,
    /// Of those, not used yet.
    pub unused: u64,
    /// Blocks taken since the start, and counts given back.
    pub blocks_taken: u64,
    pub counts_returned: u64,
}

struct Block {
    window_s: u64,
    limit: u64,
    /// The window's start on the database's clock (Unix seconds).
    window_start: i64,
    /// Counts reserved and not used yet.
    left: u64,
    /// Counts this host holds in the window (used or not, given back ones taken off).
    reserved: u64,
    /// The size of the last block.
    k: u64,
    /// The count in the database after the last block (what the fleet used, as last seen).
    count: u64,
    taken_at: Instant,
    last_used: Instant,
    /// The block is not used from here on (a little before its window's end).
    usable_until: Instant,
    /// Its window's end, as estimated.
    ends_at: Instant,
    /// A block is being taken (by a refill or a call) for this key.
    in_flight: bool,
    woken: Arc<Notify>,
}

impl Block {
    fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.count)
    }
}

#[derive(Default)]
struct Totals {
    blocks_taken: u64,
    counts_returned: u64,
}

pub(super) struct Reserves {
    map: Mutex<(HashMap<String, Block>, Totals)>,
    max_keys: usize,
}

impl Reserves {
    pub(super) fn new(max_keys: usize) -> Self {
        Self {
            map: Mutex::new((HashMap::new(), Totals::default())),
            max_keys,
        }
    }

    /// One call of `key` (a quota of `limit` per `window_s`) at `now`, `hosts` alive: counted
    /// here, or what to do instead. `back`: counts to give back found on the way.
    pub(super) fn spend(
        &self,
        key: &str,
        window_s: u64,
        limit: u64,
        hosts: u64,
        now: Instant,
        back: &mut Vec<GiveBack>,
    ) -> Take {
        let mut g = self.map.locked();
        let (map, totals) = &mut *g;
        let Some(b) = map.get_mut(key) else {
            return Take::Fetch { k: 1 };
        };
        if b.in_flight && (b.left == 0 || now >= b.usable_until) {
            return Take::Wait(b.woken.clone().notified_owned());
        }
        if b.window_s != window_s || b.limit != limit || now >= b.usable_until {
            // The policy changed the quota, or the block's window is (nearly) over: what is
            // left goes back, and this call counts by itself.
            if b.left > 0 && now < b.ends_at {
                back.push(GiveBack {
                    key: key.to_string(),
                    window_start: b.window_start,
                    n: b.left,
                });
                totals.counts_returned += b.left;
            }
            map.remove(key);
            return Take::Fetch { k: 1 };
        }
        b.last_used = now;
        if b.left == 0 {
            let k = next_size(
                b.k,
                now.saturating_duration_since(b.taken_at),
                b.remaining(),
                hosts,
            );
            if k > 1 {
                // Calls meanwhile wait for this one's block rather than each take their own.
                b.in_flight = true;
            }
            return Take::Fetch { k };
        }
        b.left -= 1;
        let mut refill = None;
        if b.left * 2 <= b.k && !b.in_flight {
            // Half used: how long would the whole block have lasted at this pace?
            let lasted = now.saturating_duration_since(b.taken_at) * 2;
            let k = next_size(b.k, lasted, b.remaining(), hosts);
            if k < b.k {
                // Shrinking: no refill; what this host holds beyond the new size goes back.
                if b.left > k {
                    let n = b.left - k;
                    back.push(GiveBack {
                        key: key.to_string(),
                        window_start: b.window_start,
                        n,
                    });
                    b.left -= n;
                    b.reserved -= n;
                    totals.counts_returned += n;
                }
                b.k = k;
            } else if k > 1 {
                b.in_flight = true;
                refill = Some(k);
            }
        }
        Take::Spent { refill }
    }

    /// The database granted a block of `k` for `key` (asked at `sent`, answered at `now`);
    /// `for_call`: one of its counts is the asking call's. Counts that cannot be used (the
    /// window ends too soon) are pushed to `back`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn granted(
        &self,
        key: &str,
        window_s: u64,
        limit: u64,
        k: u64,
        grant: Grant,
        sent: Instant,
        now: Instant,
        for_call: bool,
        back: &mut Vec<GiveBack>,
    ) {
        let ends_in = (grant.window_start as f64 + window_s as f64 - grant.db_now).max(0.0);
        let ends_at = sent + Duration::from_secs_f64(ends_in);
        let usable_until = ends_at.checked_sub(edge_margin(window_s)).unwrap_or(sent);
        let fresh = k - u64::from(for_call);
        let mut g = self.map.locked();
        let (map, totals) = &mut *g;
        totals.blocks_taken += 1;
        match map
            .get(key)
            .map(|b| b.window_s == window_s && b.limit == limit)
        {
            Some(true) => {}
            Some(false) => {
                if let Some(old) = map.remove(key)
                    && old.left > 0
                    && now < old.ends_at
                {
                    back.push(GiveBack {
                        key: key.to_string(),
                        window_start: old.window_start,
                        n: old.left,
                    });
                    totals.counts_returned += old.left;
                }
            }
            None if map.len() >= self.max_keys => {
                // Too many keys held: nothing is kept.
                if fresh > 0 {
                    back.push(GiveBack {
                        key: key.to_string(),
                        window_start: grant.window_start,
                        n: fresh,
                    });
                    totals.counts_returned += fresh;
                }
                return;
            }
            None => {}
        }
        let b = map.entry(key.to_string()).or_insert_with(|| Block {
            window_s,
            limit,
            window_start: grant.window_start,
            left: 0,
            reserved: 0,
            k,
            count: grant.count,
            taken_at: sent,
            last_used: now,
            usable_until,
            ends_at,
            in_flight: false,
            woken: Arc::new(Notify::new()),
        });
        if b.window_start != grant.window_start {
            // A new window on the database: the old block's counts are of a window that
            // ended; they are dropped.
            b.window_start = grant.window_start;
            b.left = 0;
            b.reserved = 0;
        }
        b.reserved += k;
        b.left += fresh;
        b.k = k;
        b.count = grant.count;
        b.taken_at = sent;
        b.last_used = now;
        b.ends_at = ends_at;
        b.usable_until = usable_until;
        b.in_flight = false;
        b.woken.notify_waiters();
        if now >= usable_until && b.left > 0 {
            let n = b.left;
            back.push(GiveBack {
                key: key.to_string(),
                window_start: grant.window_start,
                n,
            });
            b.reserved -= n;
            b.left = 0;
            totals.counts_returned += n;
        }
    }

    /// A block asked for `key` did not fit, or the database failed: nothing is in flight any
    /// more; the next block is of 1.
    pub(super) fn not_granted(&self, key: &str) {
        let mut g = self.map.locked();
        if let Some(b) = g.0.get_mut(key) {
            b.in_flight = false;
            b.k = 1;
            b.woken.notify_waiters();
        }
    }

    /// Counts to give back at `now`: blocks untouched for [`IDLE_RETURN`]; blocks of windows
    /// that ended are dropped, and keys idle for long leave the map.
    pub(super) fn idle(&self, now: Instant) -> Vec<GiveBack> {
        let mut back = Vec::new();
        let mut g = self.map.locked();
        let (map, totals) = &mut *g;
        map.retain(|key, b| {
            if b.in_flight {
                return true;
            }
            let quiet = now.saturating_duration_since(b.last_used);
            if now >= b.ends_at {
                // The window ended: nothing to give back to; the key starts afresh.
                return false;
            }
            if b.left > 0 && (quiet >= IDLE_RETURN || now >= b.usable_until) {
                back.push(GiveBack {
                    key: key.clone(),
                    window_start: b.window_start,
                    n: b.left,
                });
                totals.counts_returned += b.left;
                b.reserved -= b.left;
                b.left = 0;
                // Idle: the next burst starts small again.
                b.k = 1;
            }
            b.left > 0 || quiet < IDLE_FORGET
        });
        back
    }

    /// Every unused count, at a graceful stop (the map is emptied).
    pub(super) fn drain(&self) -> Vec<GiveBack> {
        let now = Instant::now();
        let mut g = self.map.locked();
        let (map, totals) = &mut *g;
        let mut back = Vec::new();
        for (key, b) in map.drain() {
            if b.left > 0 && now < b.ends_at {
                totals.counts_returned += b.left;
                back.push(GiveBack {
                    key,
                    window_start: b.window_start,
                    n: b.left,
                });
            }
        }
        back
    }

    pub(super) fn status(&self) -> ReserveStatus {
        let g = self.map.locked();
        let mut s = ReserveStatus {
            keys: g.0.len() as u64,
            blocks_taken: g.1.blocks_taken,
            counts_returned: g.1.counts_returned,
            ..ReserveStatus::default()
        };
        for b in g.0.values() {
            s.reserved += b.reserved;
            s.unused += b.left;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn blocks_grow_while_used_fast_shrink_when_they_last_and_stay_small_for_small_quotas() {
        // Used up fast: doubles; steady: stays; lasting: halves; never below 1.
        assert_eq!(next_size(1, 100 * MS, 1_000_000, 2), 2);
        assert_eq!(next_size(64, 100 * MS, 1_000_000, 2), 128);
        assert_eq!(next_size(64, 2000 * MS, 1_000_000, 2), 64);
        assert_eq!(next_size(64, 5000 * MS, 1_000_000, 2), 32);
        assert_eq!(next_size(1, 5000 * MS, 1_000_000, 2), 1);
        // The absolute cap.
        assert_eq!(next_size(1024, MS, u64::MAX, 1), MAX_BLOCK);
        // At most a quarter of what remains, shared among the hosts alive.
        assert_eq!(next_size(64, MS, 200, 2), 25);
        assert_eq!(next_size(64, MS, 200, 0), 50, "this host counts itself");
        // 3 a day on two hosts: 2 left after the first call → blocks of 1, exact.
        assert_eq!(next_size(1, MS, 2, 2), 1);
        assert_eq!(next_size(1, MS, 0, 2), 1);
    }

    fn grant(
        r: &Reserves,
        key: &str,
        k: u64,
        count: u64,
        ends_in_s: f64,
        at: Instant,
    ) -> Vec<GiveBack> {
        let mut back = Vec::new();
        let g = Grant {
            count,
            window_start: 3600,
            db_now: 3600.0 + 3600.0 - ends_in_s,
        };
        r.granted(key, 3600, 1000, k, g, at, at, true, &mut back);
        back
    }

    fn spend(r: &Reserves, key: &str, at: Instant) -> (Take, Vec<GiveBack>) {
        let mut back = Vec::new();
        let t = r.spend(key, 3600, 1000, 2, at, &mut back);
        (t, back)
    }

    #[test]
    fn the_first_call_waits_then_blocks_grow_and_refill_at_half() {
        let r = Reserves::new(10);
        let t0 = Instant::now();
        assert!(matches!(spend(&r, "k", t0).0, Take::Fetch { k: 1 }));
        assert!(grant(&r, "k", 1, 1, 1000.0, t0).is_empty());
        // Used up at once: the next block is 2, taken by the call (others wait for it).
        assert!(matches!(spend(&r, "k", t0 + MS).0, Take::Fetch { k: 2 }));
        assert!(matches!(spend(&r, "k", t0 + MS).0, Take::Wait(_)));
        grant(&r, "k", 2, 3, 1000.0, t0 + MS);
        // Its one spare count: spent, and half gone → a refill of 4 in the background.
        assert!(matches!(
            spend(&r, "k", t0 + 2 * MS).0,
            Take::Spent { refill: Some(4) }
        ));
        let s = r.status();
        assert_eq!((s.keys, s.reserved, s.unused), (1, 3, 0));
        // A refill's block is all spare.
        let mut back = Vec::new();
        let g = Grant {
            count: 7,
            window_start: 3600,
            db_now: 6200.0,
        };
        r.granted(
            "k",
            3600,
            1000,
            4,
            g,
            t0 + 3 * MS,
            t0 + 3 * MS,
            false,
            &mut back,
        );
        assert_eq!(r.status().unused, 4);
        assert!(matches!(
            spend(&r, "k", t0 + 4 * MS).0,
            Take::Spent { refill: None }
        ));
        assert!(matches!(
            spend(&r, "k", t0 + 4 * MS).0,
            Take::Spent { refill: Some(8) }
        ));
    }

    #[test]
    fn a_block_is_not_used_near_its_windows_end_and_its_rest_goes_back() {
        let r = Reserves::new(10);
        let t0 = Instant::now();
        // A block of 8 taken 10 s before the window ends (on the database's clock).
        grant(&r, "k", 8, 8, 10.0, t0);
        assert!(matches!(
            spend(&r, "k", t0 + Duration::from_secs(7)).0,
            Take::Spent { .. }
        ));
        // Within the margin (2 s for an hour): not used; the rest goes back, the call
        // counts by itself (in whichever window the database is in).
        let (t, back) = spend(&r, "k", t0 + Duration::from_secs(8) + 10 * MS);
        assert!(matches!(t, Take::Fetch { k: 1 }));
        assert_eq!(
            back,
            vec![GiveBack {
                key: "k".into(),
                window_start: 3600,
                n: 6
            }]
        );
        // A block granted too close to the end: its spare counts go straight back.
        let back = grant(&r, "j", 4, 4, 1.0, t0);
        assert_eq!(back.iter().map(|b| b.n).sum::<u64>(), 3);
        assert_eq!(r.status().unused, 0);
        // A grant of a new window replaces the old window's block; nothing of it goes back.
        let r = Reserves::new(10);
        grant(&r, "k", 4, 4, 1000.0, t0);
        let mut back = Vec::new();
        let g = Grant {
            count: 2,
            window_start: 7200,
            db_now: 7201.0,
        };
        r.granted("k", 3600, 1000, 2, g, t0, t0, true, &mut back);
        assert!(back.is_empty());
        assert_eq!(r.status().unused, 1);
        assert_eq!(r.status().reserved, 2);
        assert_eq!(edge_margin(60), Duration::from_millis(600));
        assert_eq!(edge_margin(1), Duration::from_millis(200));
        assert_eq!(edge_margin(86_400), Duration::from_secs(2));
    }

    #[test]
    fn idle_blocks_give_back_and_a_stop_drains_all() {
        let r = Reserves::new(10);
        let t0 = Instant::now();
        grant(&r, "a", 8, 8, 1000.0, t0);
        grant(&r, "b", 4, 12, 1000.0, t0);
        assert!(r.idle(t0 + Duration::from_secs(1)).is_empty());
        spend(&r, "b", t0 + Duration::from_secs(1));
        let back = r.idle(t0 + Duration::from_millis(2500));
        assert_eq!(
            back,
            vec![GiveBack {
                key: "a".into(),
                window_start: 3600,
                n: 7
            }]
        );
        let back = r.drain();
        assert_eq!(back.iter().map(|b| b.n).sum::<u64>(), 2);
        assert_eq!(r.status().keys, 0);
        assert_eq!(r.status().counts_returned, 9);
    }

    #[test]
    fn the_keys_held_are_bounded() {
        let r = Reserves::new(1);
        let t0 = Instant::now();
        grant(&r, "a", 1, 1, 1000.0, t0);
        assert!(grant(&r, "b", 1, 1, 1000.0, t0).is_empty());
        assert_eq!(r.status().keys, 1);
        assert!(matches!(spend(&r, "b", t0).0, Take::Fetch { k: 1 }));
    }
}
