//! The stop's drain: once the gateway stops accepting, the connections it serves finish what
//! they are doing instead of being cut, within the configured grace (`stop_grace_s`).
//!
//! - An HTTP/1 connection waiting for its next request closes (within a second: a connection
//!   that waited less sees the drain at its quiet mark, so that a busy connection's wait for
//!   its next call costs no registration with the drain); one in the middle of a call
//!   answers it with `connection: close`, then closes.
//! - An h2 connection (and HTTP/1 served by hyper) is closed once quiet for a second: no
//!   call in flight and no byte moved, so that an answer's last bytes reach a slow reader
//!   (see `proxy::http`'s `quiet` for why no GOAWAY is sent).
//! - A pass-through connection, a WebSocket or a streamed answer goes on until it ends.
//!
//! Each data-path thread waits for its own connections, at most the grace (a second stop
//! signal ends it early); what is still open then is cut with the thread's runtime, and its
//! record says the stop cut it.
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// One data-path thread's drain signal.
#[derive(Debug, Default)]
pub struct Drain {
    begun: AtomicBool,
    notify: Notify,
    /// The grace is over: what this thread still serves is being cut by the stop.
    cutting: AtomicBool,
}

impl Drain {
    /// A drain not begun.
    pub const fn new() -> Self {
        Self {
            begun: AtomicBool::new(false),
            notify: Notify::const_new(),
            cutting: AtomicBool::new(false),
        }
    }

    /// Whether the drain has begun.
    pub fn begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Resolves once the drain has begun (at once if it already has).
    pub async fn begins(&self) {
        // Created before the flag is read: a `notify_waiters` between the two still wakes it.
        let notified = self.notify.notified();
        if self.begun() {
            return;
        }
        notified.await;
    }

    /// A future that resolves once the drain begins, for a caller that polls it by hand
    /// between other work: it sees a drain that begins after this call, and the caller checks
    /// [`Self::begun`] for one that began before.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Whether the grace is over and what this thread still serves is being cut by the
    /// stop: what a record of it says (not that its client went away).
    pub fn cutting(&self) -> bool {
        self.cutting.load(Ordering::Acquire)
    }

    /// Says the grace is over ([`Self::cutting`]), as the thread ends what it still serves.
    pub fn cut(&self) {
        self.cutting.store(true, Ordering::Release);
    }

    fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Begins this one lane's drain, for a test of what serves it.
    #[cfg(test)]
    pub fn begin_for_tests(&self) {
        self.begin();
    }
}

/// Every data-path thread's [`Drain`], by lane.
#[derive(Debug)]
pub struct Drains {
    lanes: Box<[Drain]>,
    /// A second stop signal came: the grace ends now.
    cut_now: AtomicBool,
}

impl Drains {
    pub fn new(lanes: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| Drain::new()).collect(),
            cut_now: AtomicBool::new(false),
        }
    }

    /// Ends the grace now (a second SIGTERM or SIGINT): what is still open is cut.
    pub fn end_grace(&self) {
        self.cut_now.store(true, Ordering::Release);
    }

    /// Whether the grace was ended early ([`Self::end_grace`]).
    pub fn cut_now(&self) -> bool {
        self.cut_now.load(Ordering::Acquire)
    }

    /// Lane `lane`'s drain (the last lane's for a number past the end, which no lane has).
    pub fn lane(&self, lane: usize) -> &Drain {
        let last = self.lanes.len() - 1;
        &self.lanes[lane.min(last)]
    }

    /// Begins the drain on every lane.
    pub fn begin(&self) {
        for d in self.lanes.iter() {
            d.begin();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_wakes_who_waits_and_who_comes_later() {
        let drains = std::sync::Arc::new(Drains::new(2));
        let waiting = tokio::spawn({
            let d = drains.clone();
            async move { d.lane(1).begins().await }
        });
        tokio::task::yield_now().await;
        assert!(!drains.lane(0).begun());
        drains.begin();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("joined");
        // After the drain began, a wait ends at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), drains.lane(0).begins())
            .await
            .expect("at once");
        assert!(drains.lane(7).begun(), "a lane past the end reads the last");
    }
}
