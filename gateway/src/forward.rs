//! The forward stage for plain TCP: connect to the original destination and copy bytes both
//! ways until both sides are done, with half-close carried across and an idle timeout.
//!
//! Buffers are taken only while data is flowing and dropped when a socket has nothing to read,
//! so thousands of idle connections cost no buffer memory.
use std::{
    io,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    time::timeout,
};

const BUF: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("connecting to {dst}: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {dst}: timed out after {after:?}")]
    ConnectTimeout { dst: SocketAddr, after: Duration },
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Bytes moved, reported even when the connection ended with an error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transfer {
    pub up: u64,
    pub down: u64,
}

pub async fn connect(
    dst: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, ForwardError> {
    let stream = timeout(connect_timeout, TcpStream::connect(dst))
        .await
        .map_err(|_| ForwardError::ConnectTimeout {
            dst,
            after: connect_timeout,
        })?
        .map_err(|source| ForwardError::Connect { dst, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies until both directions reach end of stream, one side fails, or nothing moves for
/// `idle`.
pub async fn splice(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
) -> (Transfer, Result<(), ForwardError>) {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let activity = Activity::new();
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let result = tokio::try_join!(
        pump(cr, uw, &up, &activity, idle),
        pump(ur, cw, &down, &activity, idle)
    )
    .map(|_| ());
    (
        Transfer {
            up: up.load(Relaxed),
            down: down.load(Relaxed),
        },
        result,
    )
}

/// Last time either direction moved a byte, shared by both pumps.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed)))
    }
}

async fn pump(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    moved: &AtomicU64,
    activity: &Activity,
    idle: Duration,
) -> Result<(), ForwardError> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The other direction may be busy while this one is quiet: only a connection that is
        // idle both ways times out.
        loop {
            let wait = idle.saturating_sub(activity.idle_for());
            if wait.is_zero() {
                return Err(ForwardError::Idle(idle));
            }
            if let Ok(ready) = timeout(wait, from.readable()).await {
                ready?;
                break;
            }
        }
        if buf.is_empty() {
            buf.resize(BUF, 0);
        }
        match from.try_read(&mut buf) {
            Ok(0) => {
                // Half-close: the peer finished sending; tell the other side and keep the
                // opposite direction running.
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(n) => {
                timeout(idle, to.write_all(&buf[..n]))
                    .await
                    .map_err(|_| ForwardError::Idle(idle))??;
                moved.fetch_add(n as u64, Relaxed);
                activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err(e.into()),
        }
    }
}
