//! Direct pass-through, the daemon's side (see [`crate::intercept::direct`]): reads the
//! kernel's reports of connections it let go straight to their destination, writes each
//! one's connection record (the same record a pass-through copied by the gateway gets), and
//! renews its word that it records four times a second, a second ahead, as long as its
//! recorder is ready.
//!
//! Who made a connection is read when its opening is reported, while the process is most
//! likely still there (its executable, its unit), and no executable is named for a thread
//! that exec'd since; a connection whose opening this gateway did not see (it started before
//! a restart) is described at its end instead.
use std::{
    collections::HashMap,
    io,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use gateway_common::{DirectEvent, direct};
use tokio::{io::unix::AsyncFd, sync::watch, task::JoinHandle};
use tracing::{debug, warn};

use super::{
    ProxyInputs,
    accept::{self, Connection, Ended},
    upstream::{ForwardError, Transfer},
};
use crate::{
    identity::workload,
    intercept::{self, direct::monotonic_ns},
};

/// How often the gateway renews its word, and how far ahead it gives it: a gateway that stops
/// or cannot record lets direct pass-through end within `VOUCH_AHEAD`. What goes direct in
/// that second is queued for the recorder like any record (and written once it can). A
/// gateway too busy to renew in time costs nothing but speed: connections come to it.
const VOUCH_EVERY: Duration = Duration::from_millis(250);
const VOUCH_AHEAD: Duration = Duration::from_secs(1);

/// Why a direct pass-through went through, as its record says.
const WHY: &str = "tcp pass-through (no policy loaded), direct: recorded from the kernel";

/// Starts reading and vouching, when the interceptor has direct pass-through on.
pub fn start(
    inputs: Arc<ProxyInputs>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let ring = inputs.interceptor.direct()?.take_events()?;
    // SAFETY: the ring buffer owns its map's descriptor and keeps it, unchanged, for as long
    // as it lives, which is as long as the AsyncFd that owns it.
    let ring = match unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
    {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read the kernel's direct pass-through reports; connections go through the gateway");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut reader = Reader {
            inputs,
            open: HashMap::new(),
        };
        let mut ring = ring;
        let mut tick = tokio::time::interval(VOUCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    // Stopping: connections are redirected to the listeners from now on, and
                    // what the kernel still reports is read by the next gateway.
                    reader.vouch(false);
                    reader.drain(ring.get_mut());
                    return;
                }
                _ = tick.tick() => {
                    let ready = reader.inputs.recorder.as_ref().is_none_or(|r| r.ready().is_ok());
                    reader.vouch(ready);
                    // A wake-up the ring's poll missed costs at most a tick.
                    reader.drain(ring.get_mut());
                    reader.tidy();
                }
                ready = ring.readable_mut() => {
                    let Ok(mut guard) = ready else {
                        warn!("the kernel's direct pass-through reports stopped; connections go through the gateway");
                        reader.vouch(false);
                        return;
                    };
                    reader.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
            }
        }
    }))
}

struct Reader {
    inputs: Arc<ProxyInputs>,
    /// Connections whose opening was read, by socket cookie.
    open: HashMap<u64, Connection>,
}

impl Reader {
    fn vouch(&self, ready: bool) {
        let Some(d) = self.inputs.interceptor.direct() else {
            return;
        };
        if let Err(e) = d.vouch(ready.then_some(VOUCH_AHEAD)) {
            warn!(error = %e, "cannot renew direct pass-through; connections go through the gateway");
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let Some(event) = intercept::direct::decode(&item) else {
                continue;
            };
            drop(item);
            self.event(&event);
        }
    }

    /// Every tick: records the open ones a `disable` took out of the kernel's account;
    /// forgets openings whose end can no longer come (a report lost, see
    /// `direct_unreported`) once there are more than can be open, so the table stays
    /// bounded; and clears the kernel's entries of connects that failed before their SYN.
    fn tidy(&mut self) {
        let inputs = self.inputs.clone();
        let Some(d) = inputs.interceptor.direct() else {
            return;
        };
        for e in d.take_swept() {
            self.event(&e);
        }
        if self.open.len() > direct::OPEN_ENTRIES as usize {
            self.open.retain(|cookie, _| d.is_open(*cookie));
        }
        let failed = d.clear_failed_connects();
        if failed > 0 {
            debug!(
                failed,
                "cleared direct pass-throughs whose connect failed before the SYN"
            );
        }
    }

    fn event(&mut self, e: &DirectEvent) {
        match e.kind {
            direct::OPENED_EVENT => {
                let conn = self.connection(e);
                debug!(conn = conn.id, dst = %conn.dst, "direct pass-through opened");
                self.open.insert(e.cookie, conn);
            }
            direct::CLOSED_EVENT => {
                let conn = match self.open.remove(&e.cookie) {
                    Some(c) => c,
                    None => self.connection(e),
                };
                let transfer = Transfer {
                    up: e.bytes_up,
                    down: e.bytes_down,
                };
                // The SYN got no answer it could use: what the gateway's own connect says.
                let r = if e.old_state == direct::TCP_SYN_SENT {
                    self.inputs.stats.upstream_errors.fetch_add(1, Relaxed);
                    Err(ForwardError::Connect {
                        dst: conn.dst,
                        source: io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            "refused or unanswered (the kernel saw the SYN fail)",
                        ),
                    })
                } else {
                    self.inputs.stats.forwarded.fetch_add(1, Relaxed);
                    Ok(())
                };
                let ended = Ended::spliced(WHY, transfer, r);
                let took = Duration::from_nanos(e.at_ns.saturating_sub(e.conn.started_ns));
                accept::finish_after(&conn, &self.inputs, ended, took);
            }
            direct::SWEPT_EVENT => {
                let conn = match self.open.remove(&e.cookie) {
                    Some(c) => c,
                    None => self.connection(e),
                };
                let r = Err(ForwardError::Io(io::Error::other(
                    "its cgroup was disabled while it was open: its end and bytes were not seen",
                )));
                let took = Duration::from_nanos(e.at_ns.saturating_sub(e.conn.started_ns));
                accept::finish_after(
                    &conn,
                    &self.inputs,
                    Ended::spliced(WHY, Transfer::default(), r),
                    took,
                );
            }
            _ => {}
        }
    }

    /// The connection a report is about, described now.
    fn connection(&self, e: &DirectEvent) -> Connection {
        let inputs = &self.inputs;
        let id = inputs.stats.next_id();
        let ago = Duration::from_nanos(monotonic_ns().saturating_sub(e.conn.started_ns));
        let redirect = &e.conn.redirect;
        let mut workload = accept::workload_of(redirect, inputs);
        // Its executable is read now, not at `connect()`: a thread that exec'd since has
        // another command name (or is gone), and the executable it has now is not the one
        // that connected, so the record names none rather than a wrong one.
        let w = &redirect.workload;
        if workload.comm != workload::thread_comm(w.tgid, w.pid) {
            workload.exe = None;
        }
        Connection {
            id,
            session: accept::session_id(&inputs.session_prefix, id),
            started: Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
            started_unix_ms: crate::util::time::now_ms().saturating_sub(ago.as_millis() as u64),
            dst: intercept::original_destination(redirect),
            netns: redirect.workload.netns,
            workload: Arc::new(workload),
            owner: accept::owner_of(redirect),
            // Served by no data-path thread: it goes straight to its destination.
            lane: 0,
        }
    }
}
