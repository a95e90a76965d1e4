//! The memory the http stage holds for inspection, bounded across all connections: request
//! bodies read whole for a decision and answers held whole (MCP `tools/list`, JSON-RPC
//! batches) draw KiB permits from one shared semaphore (`http.max_inspected_mb`), and the
//! streams of one h2 connection also from that connection's own (`http.max_inspected_per_connection_mb`).
//! A body with a Content-Length reserves it whole before a byte is read, so that bodies are
//! admitted whole or not at all (taken a piece at a time, many bodies could each hold a part
//! and none finish); one without reserves as its bytes arrive. A client that announces a
//! length and sends nothing holds its reservation until `http.body_timeout_s`, as one sending
//! slowly would. A buffer keeps its permits for as long as it lives (they travel inside its
//! [`Bytes`]), and one that cannot get them is refused at once with 503 `inspection_busy`,
//! rather than queued: a queue would hold the waiting clients' connections and bytes as well.
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{proxy::body::BodyError, proxy::reply::Refusal};

const KIB: usize = 1024;

/// The budget shared by every connection, sized by `http.max_inspected_mb`.
#[derive(Debug, Clone)]
pub struct InspectionBudget {
    shared: Arc<Semaphore>,
    total_kib: u32,
    per_connection_kib: u32,
}

/// One h2 connection's share: its streams together hold at most this much.
#[derive(Debug, Clone)]
pub struct ConnectionBudget(Arc<Semaphore>);

impl InspectionBudget {
    /// A budget of `total` bytes in all and `per_connection` bytes for one h2 connection's
    /// streams together (at most `total`).
    pub fn new(total: usize, per_connection: usize) -> Self {
        let kib = |b: usize| u32::try_from(b.div_ceil(KIB)).unwrap_or(u32::MAX).max(1);
        let total_kib = kib(total).min(Semaphore::MAX_PERMITS as u32);
        Self {
            shared: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            per_connection_kib: kib(per_connection).min(total_kib),
        }
    }

    /// The share of a new h2 connection.
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget(Arc::new(Semaphore::new(self.per_connection_kib as usize)))
    }

    /// KiB held for inspection right now, across all connections.
    pub fn in_use_kib(&self) -> u32 {
        self.total_kib
            .saturating_sub(self.shared.available_permits() as u32)
    }

    /// An empty hold on this budget (and on `conn`'s share, for an h2 stream).
    pub(super) fn hold(&self, conn: Option<&ConnectionBudget>) -> Held {
        Held {
            shared: self.shared.clone(),
            conn: conn.map(|c| c.0.clone()),
            permits: None,
            kib: 0,
        }
    }
}

/// Permits one buffer holds; given back when dropped.
pub(super) struct Held {
    shared: Arc<Semaphore>,
    conn: Option<Arc<Semaphore>>,
    /// The permits taken so far, from the shared budget and the connection's share.
    permits: Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)>,
    kib: u32,
}

/// No room left in the budget.
#[derive(Debug)]
pub(super) struct Busy;

impl Held {
    /// Grows the hold to cover `bytes`; fails, taking nothing more, when the shared budget or
    /// the connection's share has no room.
    pub(super) fn cover(&mut self, bytes: usize) -> Result<(), Busy> {
        let want = u32::try_from(bytes.div_ceil(KIB)).map_err(|_| Busy)?;
        let more = want.saturating_sub(self.kib);
        if more == 0 {
            return Ok(());
        }
        let conn = match &self.conn {
            Some(c) => Some(c.clone().try_acquire_many_owned(more).map_err(|_| Busy)?),
            None => None,
        };
        // Dropping `conn` on failure gives its permits back.
        let shared = self
            .shared
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| Busy)?;
        match &mut self.permits {
            Some((s, c)) => {
                s.merge(shared);
                if let (Some(c), Some(more)) = (c.as_mut(), conn) {
                    c.merge(more);
                }
            }
            None => self.permits = Some((shared, conn)),
        }
        self.kib = want;
        Ok(())
    }

    /// `data` as bytes that keep this hold until the last of them is dropped.
    fn attach(self, data: Bytes) -> Bytes {
        if self.kib == 0 {
            return data;
        }
        Bytes::from_owner(Owned { data, _held: self })
    }
}

/// A buffer and the budget it holds.
struct Owned {
    data: Bytes,
    _held: Held,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub(super) enum Collect {
    /// Longer than the limit.
    TooLarge,
    /// The budget has no room for it.
    Busy,
    /// The body itself failed.
    Failed(BodyError),
}

impl Collect {
    /// The refusal for an inspected request body.
    pub(super) fn busy() -> Refusal {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "inspection_busy",
            "the gateway holds as much for inspection as it may; try again shortly",
        )
    }
}

/// `body`'s data whole, at most `max` bytes, holding `held` for what it reads (and, in the
/// bytes returned, until they are dropped). By hand rather than with `Limited`: over a boxed
/// body that trips a compiler bug about higher-ranked lifetimes (rust-lang/rust#102211)
/// where the future must be Send.
pub(super) async fn collect<B>(mut body: B, max: usize, mut held: Held) -> Result<Bytes, Collect>
where
    B: Body<Data = Bytes, Error = BodyError> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Collect::Failed)?.into_data() else {
            continue;
        };
        len += data.len();
        if len > max {
            return Err(Collect::TooLarge);
        }
        held.cover(len).map_err(|Busy| Collect::Busy)?;
        // A body that comes in one piece (the usual case) is not copied.
        match &first {
            None => first = Some(data),
            Some(f) => {
                if more.is_empty() {
                    more.extend_from_slice(f);
                }
                more.extend_from_slice(&data);
            }
        }
    }
    let whole = match first {
        Some(f) if more.is_empty() => f,
        _ => more.freeze(),
    };
    Ok(held.attach(whole))
}

#[cfg(test)]
mod tests {
    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;
    use crate::proxy::body::ProxyBody;

    /// A body of these pieces, one per poll.
    fn pieces(p: &[&'static [u8]]) -> ProxyBody {
        let frames = p.iter().map(|p| Ok(Frame::data(Bytes::from_static(p))));
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = frames.collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_in_pieces_is_measured_once_against_the_limit() {
        let budget = InspectionBudget::new(1 << 20, 1 << 20);
        let body = || pieces(&[&[b'a'; 40], &[b'b'; 40], &[b'c'; 15]]);
        let whole = collect(body(), 95, budget.hold(None))
            .await
            .expect("95 bytes fit 95");
        assert_eq!(whole.len(), 95);
        assert!(whole.starts_with(&[b'a'; 40]) && whole.ends_with(&[b'c'; 15]));
        let over = collect(body(), 94, budget.hold(None)).await;
        assert!(matches!(over, Err(Collect::TooLarge)));
        let one = collect(pieces(&[b"only"]), 4, budget.hold(None)).await;
        assert_eq!(one.ok(), Some(Bytes::from_static(b"only")));
    }

    #[tokio::test]
    async fn bodies_hold_the_budget_while_they_live_and_the_excess_is_refused() {
        static KB: [u8; 1024] = [b'x'; 1024];
        let budget = InspectionBudget::new(4 * KIB, 3 * KIB);
        let kib = |n: usize| pieces(&vec![&KB[..]; n]);
        let a = collect(kib(3), 1 << 20, budget.hold(None))
            .await
            .expect("3 of 4 KiB");
        assert_eq!(budget.in_use_kib(), 3);
        // A second body runs out half-way, and what it took so far goes back.
        let b = collect(kib(2), 1 << 20, budget.hold(None)).await;
        assert!(matches!(b, Err(Collect::Busy)), "{b:?}");
        assert_eq!(budget.in_use_kib(), 3);
        // A copy of the bytes keeps the hold; the last one dropped gives it back.
        let copy = a.slice(1..);
        drop(a);
        assert_eq!(budget.in_use_kib(), 3);
        drop(copy);
        assert_eq!(budget.in_use_kib(), 0);

        // One h2 connection's streams share 3 KiB between them, whatever is left in all.
        let conn = budget.connection();
        let s1 = collect(kib(2), 1 << 20, budget.hold(Some(&conn)))
            .await
            .expect("2 of the connection's 3");
        let s2 = collect(kib(2), 1 << 20, budget.hold(Some(&conn))).await;
        assert!(matches!(s2, Err(Collect::Busy)), "the connection's share");
        let other = collect(kib(2), 1 << 20, budget.hold(Some(&budget.connection())))
            .await
            .expect("another connection gets the rest");
        assert_eq!(budget.in_use_kib(), 4);
        drop((s1, other));
        assert_eq!(budget.in_use_kib(), 0);
        // An empty body holds nothing.
        let empty = collect(pieces(&[]), 10, budget.hold(None))
            .await
            .expect("empty");
        assert!(empty.is_empty());
        assert_eq!(budget.in_use_kib(), 0);
    }
}
