//! The daemon's side of [`super::netns`]: reads the kernel's reports of network namespaces
//! without listeners and opens them, opens those of the processes enabled cgroups hold at
//! start, and sweeps away the namespaces no enabled workload uses any more.
use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use gateway_common::NetnsEvent;
use tokio::{io::unix::AsyncFd, sync::watch, task::JoinHandle};
use tracing::{debug, warn};

use super::{Interceptor, netns::Serve};

/// How often namespaces are checked for workloads still in them.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Starts watching; `serve` hands a namespace's listeners to the data path.
pub fn start(
    interceptor: &Arc<Interceptor>,
    serve: Serve,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let namespaces = interceptor.namespaces().clone();
    namespaces.set_serve(serve);
    interceptor.discover_namespaces();
    let events = interceptor.take_netns_events();
    let interceptor = interceptor.clone();
    tokio::spawn(async move {
        // SAFETY: the ring buffer owns its map's descriptor and keeps it, unchanged, for as
        // long as it lives, which is as long as the AsyncFd that owns it.
        let registered = events.map(|ring| unsafe {
            AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
                .map_err(|e| e.to_string())
        });
        let mut ring = match registered {
            Some(Ok(ring)) => Some(ring),
            Some(Err(e)) => {
                warn!(error = %e, "cannot watch for new network namespaces; only those of processes present at enable are opened");
                None
            }
            None => None,
        };
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sweep.tick() => {
                    let (i, ns) = (interceptor.clone(), namespaces.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        let roots: Vec<_> = i.enabled().into_iter().map(|e| e.path).collect();
                        let closed = ns.sweep(&roots);
                        if closed > 0 {
                            debug!(closed, "closed network namespaces no enabled workload uses");
                        }
                    }).await;
                }
                ready = readable(ring.as_mut()) => {
                    let Ok(mut guard) = ready else {
                        warn!("the network namespace reports stopped");
                        ring = None;
                        continue;
                    };
                    drain(guard.get_inner_mut(), &namespaces);
                    guard.clear_ready();
                }
            }
        }
    })
}

/// Waits for reports, forever when there is no ring.
async fn readable(
    ring: Option<&mut AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await,
        None => std::future::pending().await,
    }
}

fn drain(ring: &mut RingBuf<MapData>, namespaces: &Arc<super::netns::Namespaces>) {
    while let Some(item) = ring.next() {
        if item.len() < size_of::<NetnsEvent>() {
            continue;
        }
        // SAFETY: the kernel wrote a NetnsEvent (repr(C), any bit pattern valid); the read is
        // unaligned-safe.
        let event: NetnsEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        namespaces.reported(event.netns, event.pid);
    }
}
