//! The upstream side. For plain TCP: connect to the original destination and copy bytes both
//! ways until both sides are done, with half-close carried across and an idle timeout. For
//! calls: [`pool`], the pooled HTTP clients.
//!
//! When the kernel splice is set up ([`splice_in_kernel`], `intercept::splice`), the bytes of
//! a pass-through connection never reach the gateway; otherwise a plain buffer copy
//! ([`splice`]): splice(2) through a pipe was measured at 0.52x direct for bulk loopback
//! transfers against 0.83x for this (loopback skbs do not splice cheaply).
use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

use std::os::fd::AsRawFd;

use tokio::{io::Interest, net::TcpStream, time::timeout};

use crate::intercept::splice::{self, Pair, Splicer};

pub mod h1;
pub mod pool;

/// The most one read takes when the gateway copies a pass-through connection's bytes.
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
    #[error(
        "connecting to {dst} to send a credential: no handshake within {after:?} (the kernel keeps such connections from the listeners of governed workloads; or the server does not answer)"
    )]
    CredentialConnectTimeout { dst: SocketAddr, after: Duration },
    #[error("TLS to {dst}: {reason}")]
    Tls { dst: SocketAddr, reason: String },
    #[error("{0}")]
    H1(#[from] h1::H1Error),
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// The connection's task was dropped before it ended: the gateway stopped.
    #[error("{0}")]
    Cut(&'static str),
    /// The call carries a credential, and its connection's peer may not have it.
    #[error("{0}")]
    Withheld(#[from] crate::intercept::peers::PeerError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Bytes moved, reported even when the connection ended with an error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transfer {
    pub up: u64,
    pub down: u64,
}

/// Bytes moved so far, counted as they move: what a connection cut before it ended (the
/// gateway stopped) reports.
#[derive(Debug, Default)]
pub struct Moved {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl Moved {
    pub fn transfer(&self) -> Transfer {
        Transfer {
            up: self.up.load(Relaxed),
            down: self.down.load(Relaxed),
        }
    }
}

pub async fn connect(
    dst: SocketAddr,
    connect_timeout: Duration,
) -> Result<TcpStream, ForwardError> {
    connect_from(None, 0, dst, connect_timeout, false).await
}

/// Connects from inside the network namespace `netns` (the workload's), with a socket that
/// `namespaces` makes there; without them (or from the gateway's own namespace), from here.
/// `credential`: the connection will carry a credential the gateway injects, and its handshake
/// is marked (`CREDENTIAL_DSCP`) so that no socket of an enabled cgroup completes it (see
/// `intercept::peers`).
pub async fn connect_from(
    namespaces: Option<&crate::intercept::netns::Namespaces>,
    netns: u64,
    dst: SocketAddr,
    connect_timeout: Duration,
    credential: bool,
) -> Result<TcpStream, ForwardError> {
    let dial = async {
        let socket = match namespaces {
            Some(ns) => ns.socket(netns, dst.is_ipv6()).await?,
            None if dst.is_ipv6() => tokio::net::TcpSocket::new_v6()?,
            None => tokio::net::TcpSocket::new_v4()?,
        };
        if credential {
            crate::util::net::mark_gateways_own(&socket, dst.is_ipv6())?;
        }
        socket.connect(dst).await
    };
    let stream = timeout(connect_timeout, dial)
        .await
        .map_err(|_| match credential {
            true => ForwardError::CredentialConnectTimeout {
                dst,
                after: connect_timeout,
            },
            false => ForwardError::ConnectTimeout {
                dst,
                after: connect_timeout,
            },
        })?
        .map_err(|source| ForwardError::Connect { dst, source })?;
    let _ = stream.set_nodelay(true);
    if credential {
        crate::util::net::unmark(&stream, dst.is_ipv6())?;
    }
    Ok(stream)
}

/// Copies until both directions reach end of stream, one side fails, or nothing moves for
/// `idle`.
pub async fn splice(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
) -> (Transfer, Result<(), ForwardError>) {
    let moved = Moved::default();
    let result = splice_counted(client, upstream, idle, &moved).await;
    (moved.transfer(), result)
}

/// [`splice`], adding what moves to `moved` as it moves.
pub async fn splice_counted(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    moved: &Moved,
) -> Result<(), ForwardError> {
    let activity = Activity::new();
    tokio::try_join!(
        pump(&client, &upstream, &moved.up, &activity, idle),
        pump(&upstream, &client, &moved.down, &activity, idle)
    )
    .map(|_| ())
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

    /// Waits for `interest` on `stream`; only a connection idle in both directions times out,
    /// since one direction may stream while the other is quiet.
    async fn ready(
        &self,
        stream: &TcpStream,
        interest: Interest,
        idle: Duration,
    ) -> Result<(), ForwardError> {
        loop {
            let wait = idle.saturating_sub(
                self.start
                    .elapsed()
                    .saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed))),
            );
            if wait.is_zero() {
                return Err(ForwardError::Idle(idle));
            }
            if let Ok(ready) = timeout(wait, stream.ready(interest)).await {
                ready?;
                return Ok(());
            }
        }
    }
}

async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    moved: &AtomicU64,
    activity: &Activity,
    idle: Duration,
) -> Result<(), ForwardError> {
    loop {
        // `ready` takes nothing from tokio's cooperative budget: without this, a connection
        // whose two ends both keep up would hold its data-path thread from every other.
        tokio::task::consume_budget().await;
        activity.ready(from, Interest::READABLE, idle).await?;
        let (n, rest) = match forward(from, to) {
            Ok(Forwarded::End) => {
                // Half-close: the peer finished sending; pass it on, keep the other way open.
                // SAFETY: shutdown(2) on a descriptor `to` keeps open; an error only means the
                // peer is gone, which the other pump will see.
                unsafe { libc::shutdown(to.as_raw_fd(), libc::SHUT_WR) };
                return Ok(());
            }
            Ok(Forwarded::Moved { read, rest }) => (read, rest),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        // Counted as it goes out: a connection cut while `to` is slow reports what it took.
        moved.fetch_add((n - rest.len()) as u64, Relaxed);
        let mut written = 0;
        while written < rest.len() {
            activity.ready(to, Interest::WRITABLE, idle).await?;
            match to.try_write(&rest[written..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(w) => {
                    written += w;
                    moved.fetch_add(w as u64, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        activity.touch();
    }
}

/// What one [`forward`] did.
#[derive(Debug)]
enum Forwarded {
    /// `from` reached end of stream.
    End,
    /// `read` bytes came in; `to` took all but `rest`, which waits for it to be writable.
    Moved { read: usize, rest: Vec<u8> },
}

/// Reads what `from` holds into a buffer on the thread's stack and writes it to `to` at once.
/// Only what `to` will not take now is copied to the heap, to wait for it: a copied
/// connection holds no buffer of its own, idle or busy, and allocates only while its receiver
/// falls behind.
fn forward(from: &TcpStream, to: &TcpStream) -> io::Result<Forwarded> {
    let mut buf = [MaybeUninit::<u8>::uninit(); BUF];
    let data = read_draining(from, &mut buf)?;
    if data.is_empty() {
        return Ok(Forwarded::End);
    }
    let mut written = 0;
    while written < data.len() {
        match to.try_write(&data[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(w) => written += w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(Forwarded::Moved {
        read: data.len(),
        rest: data[written..].to_vec(),
    })
}

/// Reads what `from` holds into `buf` and returns it (empty at end of stream). A read shorter
/// than `buf` emptied the socket, so it also clears the socket's readiness, as tokio's own
/// `AsyncRead` does: the next wait sleeps until new bytes arrive instead of returning at once
/// for a `recvfrom` that fails with `EAGAIN` (one wasted system call per direction per
/// exchange: a pass-through call at light load made four `recvfrom`, two of them empty).
/// Bytes that arrive after the read raise readiness again: the readiness is cleared as of
/// before the read (`try_io`'s tick), never a later event.
fn read_draining<'b>(from: &TcpStream, buf: &'b mut [MaybeUninit<u8>]) -> io::Result<&'b [u8]> {
    let mut got = 0;
    let r = from.try_io(Interest::READABLE, || {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`, which stays borrowed
        // for the call; the descriptor is `from`'s, open for the call.
        let n = unsafe { libc::recv(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match usize::try_from(n) {
            Err(_) => Err(io::Error::last_os_error()),
            Ok(n) if 0 < n && n < buf.len() => {
                got = n;
                // Tells `try_io` to clear the readiness it saw before the read.
                Err(io::ErrorKind::WouldBlock.into())
            }
            Ok(n) => Ok(n),
        }
    });
    let n = match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => got,
        other => other?,
    };
    let filled: &'b [MaybeUninit<u8>] = &buf[..n];
    // SAFETY: recv(2) initialised the first `n` bytes of `buf` (`n` is what it returned, at
    // most `buf.len()`, as the slicing above checks); `MaybeUninit<u8>` has `u8`'s layout.
    Ok(unsafe { &*(filled as *const [MaybeUninit<u8>] as *const [u8]) })
}

/// Splices `client` and `upstream` in the kernel ([`Splicer`]) until both directions reach
/// end of stream, one side fails, or nothing moves for `idle`. `prefix` is what the gateway
/// already wrote to `upstream` (counted in the transfer). Returns the sockets, and what the
/// kernel moved before it gave up, when they cannot be spliced (the caller copies instead).
/// Cut before either (its task dropped), what the kernel moved is added to `cut`.
pub async fn splice_in_kernel(
    splicer: &Splicer,
    client: TcpStream,
    upstream: TcpStream,
    prefix: u64,
    idle: Duration,
    cut: &Moved,
) -> Result<(Transfer, Result<(), ForwardError>), (TcpStream, TcpStream, Transfer)> {
    let pair = match splicer.add(&client, &upstream) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "kernel splice refused; copying this connection");
            let Some(pair) = e.unsettled else {
                return Err((client, upstream, Transfer::default()));
            };
            // Bytes the verdict already handed over must leave before the pair leaves the
            // maps; when that cannot be known, the connection ends (fail closed).
            let spliced = Spliced { splicer, pair, cut };
            let settled = settle(&spliced, &client, &upstream, prefix, idle).await;
            let (up, down) = spliced.take();
            return match settled {
                Ok(()) => Err((client, upstream, Transfer { up, down })),
                Err(e) => Ok((
                    Transfer {
                        up: prefix + up,
                        down,
                    },
                    Err(e),
                )),
            };
        }
    };
    let spliced = Spliced { splicer, pair, cut };
    let result = run_spliced(&spliced, &client, &upstream, prefix, idle).await;
    let (up, down) = spliced.take();
    Ok((
        Transfer {
            up: prefix + up,
            down,
        },
        result,
    ))
}

/// Waits until what the verdict counted each way has gone into the other socket (see
/// [`splice::written`]), for at most `idle`.
async fn settle(
    s: &Spliced<'_>,
    client: &TcpStream,
    upstream: &TcpStream,
    prefix: u64,
    idle: Duration,
) -> Result<(), ForwardError> {
    let start = Instant::now();
    let mut wait = Duration::from_micros(200);
    loop {
        let up_done =
            splice::written(upstream.as_raw_fd(), true)? >= prefix + s.splicer.bytes(s.pair.client);
        let down_done =
            splice::written(client.as_raw_fd(), false)? >= s.splicer.bytes(s.pair.upstream);
        if up_done && down_done {
            return Ok(());
        }
        if start.elapsed() >= idle {
            return Err(ForwardError::Idle(idle));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
}

/// A pair in the splice maps, taken out when dropped (also when the connection's task is
/// cancelled, when what the kernel moved is added to `cut`).
struct Spliced<'a> {
    splicer: &'a Splicer,
    pair: Pair,
    cut: &'a Moved,
}

impl Spliced<'_> {
    fn take(self) -> (u64, u64) {
        let counts = self.splicer.remove(self.pair);
        std::mem::forget(self);
        counts
    }
}

impl Drop for Spliced<'_> {
    fn drop(&mut self) {
        let (up, down) = self.splicer.remove(self.pair);
        self.cut.up.fetch_add(up, Relaxed);
        self.cut.down.fetch_add(down, Relaxed);
    }
}

/// Watches a spliced pair: the kernel moves the bytes; the gateway sees each side's end of
/// stream or error, passes a half-close on once the bytes before it have left, and ends an
/// idle connection.
async fn run_spliced(
    s: &Spliced<'_>,
    client: &TcpStream,
    upstream: &TcpStream,
    prefix: u64,
    idle: Duration,
) -> Result<(), ForwardError> {
    let tick = (idle / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let (mut client_open, mut upstream_open) = (true, true);
    let moved = || s.splicer.bytes(s.pair.client) + s.splicer.bytes(s.pair.upstream);
    let (mut last, mut since) = (moved(), Instant::now());
    // Bytes `ended` copied in user space, which `written` counts on the other side too.
    let (mut copied_up, mut copied_down) = (0u64, 0u64);
    while client_open || upstream_open {
        tokio::select! {
            r = client.readable(), if client_open => {
                r?;
                if ended(client, upstream, &mut copied_up).await? {
                    let sent = || prefix + copied_up + s.splicer.bytes(s.pair.client);
                    half_close(upstream, true, sent, idle).await?;
                    client_open = false;
                }
            }
            r = upstream.readable(), if upstream_open => {
                r?;
                if ended(upstream, client, &mut copied_down).await? {
                    let sent = || copied_down + s.splicer.bytes(s.pair.upstream);
                    half_close(client, false, sent, idle).await?;
                    upstream_open = false;
                }
            }
            _ = tokio::time::sleep(tick) => {
                let now = moved();
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= idle {
                    return Err(ForwardError::Idle(idle));
                }
            }
        }
    }
    Ok(())
}

/// Whether `from` reached end of stream. The verdict consumes the data of a spliced socket,
/// so a read sees only its end (0), an error, or nothing; bytes the kernel left to the
/// gateway after all are sent on to `to` here.
async fn ended(from: &TcpStream, to: &TcpStream, copied: &mut u64) -> Result<bool, ForwardError> {
    let mut buf = [0u8; 4096];
    match from.try_read(&mut buf) {
        Ok(0) => Ok(true),
        Ok(n) => {
            let mut written = 0;
            while written < n {
                to.writable().await?;
                match to.try_write(&buf[written..n]) {
                    Ok(w) => written += w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            }
            *copied += n as u64;
            Ok(false)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Shuts `to` for writing once `sent` bytes have gone into it: the kernel hands spliced bytes
/// over from a work queue, and a FIN sent before they are queued would lose them. `sent` is
/// read again each round, so bytes counted after the end of stream was seen are waited for
/// too (bounded by `idle`).
/// `connected`: `to` is the socket the gateway connected (see [`splice::written`]).
async fn half_close(
    to: &TcpStream,
    connected: bool,
    sent: impl Fn() -> u64,
    idle: Duration,
) -> Result<(), ForwardError> {
    let fd = to.as_raw_fd();
    let mut wait = Duration::from_micros(200);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let now = splice::written(fd, connected)?;
        if now >= sent() {
            break;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= idle {
            return Err(ForwardError::Idle(idle));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(50));
    }
    // SAFETY: shutdown(2) on a descriptor `to` keeps open; an error only means the peer is
    // gone, which its own readiness reports.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    Ok(())
}

/// Reads what already waits on `client` and writes it to `upstream`, until nothing waits
/// (at most `rounds` reads): the kernel splice must start at a packet boundary, and the
/// sniffer may have read part of one. Returns the bytes moved and whether nothing waits now
/// (false: the client kept sending or closed; copy instead).
pub async fn drain_waiting(
    client: &TcpStream,
    upstream: &TcpStream,
    rounds: usize,
) -> Result<(u64, bool), ForwardError> {
    let mut moved = 0u64;
    let mut buf: Vec<u8> = Vec::new();
    for _ in 0..rounds {
        let waiting = inq(client.as_raw_fd())?;
        if waiting == 0 {
            return Ok((moved, true));
        }
        buf.resize(waiting.min(BUF), 0);
        let n = match client.try_read(&mut buf) {
            Ok(0) => return Ok((moved, false)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        let mut written = 0;
        while written < n {
            upstream.writable().await?;
            match upstream.try_write(&buf[written..n]) {
                Ok(w) => written += w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        moved += n as u64;
    }
    Ok((moved, false))
}

/// Bytes waiting in the socket's receive queue (`SIOCINQ`).
fn inq(fd: std::os::fd::RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ (FIONREAD) writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt, Interest},
        net::{TcpListener, TcpSocket, TcpStream},
    };

    use super::{read_draining, splice};

    /// A connected pair: (the end the test holds, the end given to the gateway's copy). Small
    /// buffers on both (the copy's end inherits its listener's), so that a slow reader at the
    /// test's end makes the copy's writes fall short, whatever the host's TCP autotuning.
    async fn pair() -> (TcpStream, TcpStream) {
        let listening = TcpSocket::new_v4().expect("socket");
        listening.set_send_buffer_size(4096).expect("sndbuf");
        listening
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = listening.listen(16).expect("listen");
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let outer = socket
            .connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (inner, _) = listener.accept().await.expect("accept");
        (outer, inner)
    }

    /// Bytes that do not repeat with any short period (xorshift), so that a chunk delivered
    /// twice or out of order shows.
    fn pattern(n: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn a_receiver_that_falls_behind_gets_every_byte_in_order() {
        const N: usize = 2 << 20;
        let sent = pattern(N);
        let expected = sent.clone();
        let (mut client, client_in) = pair().await;
        let (mut upstream, upstream_in) = pair().await;
        let copy = tokio::spawn(splice(client_in, upstream_in, Duration::from_secs(20)));
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).await.expect("answer");
            answer
        });
        // Nothing read for a while: the copy's writes to the upstream fall short and it has
        // to hold the rest until the upstream's socket drains.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut got = Vec::with_capacity(N);
        let mut chunk = [0u8; 1500];
        let read_all = async {
            loop {
                let n = upstream.read(&mut chunk).await.expect("read");
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read_all)
            .await
            .expect("the copy stalled");
        assert_eq!(got.len(), N);
        if let Some(i) = (0..N).find(|&i| got[i] != expected[i]) {
            panic!("byte {i} differs: the copy lost or reordered data");
        }
        upstream.write_all(b"done").await.expect("answer");
        upstream.shutdown().await.expect("half-close");
        let answer = tokio::time::timeout(Duration::from_secs(20), writer)
            .await
            .expect("the client never saw the end")
            .expect("writer");
        assert_eq!(answer, b"done");
        let (transfer, result) = tokio::time::timeout(Duration::from_secs(20), copy)
            .await
            .expect("the copy did not end")
            .expect("copy task");
        result.expect("the copy ended with an error");
        assert_eq!((transfer.up, transfer.down), (N as u64, 4));
    }

    #[tokio::test]
    async fn a_short_read_clears_readiness_and_later_bytes_still_wake() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut peer = TcpStream::connect(addr).await.expect("connect");
        let (from, _) = listener.accept().await.expect("accept");
        let mut buf = [std::mem::MaybeUninit::uninit(); 64];

        peer.write_all(b"first").await.expect("write");
        from.ready(Interest::READABLE).await.expect("ready");
        assert_eq!(read_draining(&from, &mut buf).expect("read").len(), 5);
        // Drained: the next wait sleeps instead of returning for an empty read.
        let waited =
            tokio::time::timeout(Duration::from_millis(50), from.ready(Interest::READABLE)).await;
        assert!(
            waited.is_err(),
            "readiness was not cleared by the short read"
        );

        // Bytes that come later wake the wait again.
        peer.write_all(b"second").await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), from.ready(Interest::READABLE))
            .await
            .expect("later bytes must wake the wait")
            .expect("ready");
        assert_eq!(read_draining(&from, &mut buf).expect("read"), b"second");

        // A read that fills the buffer keeps the readiness: more may be waiting.
        peer.write_all(&[7u8; 100]).await.expect("write");
        from.ready(Interest::READABLE).await.expect("ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(read_draining(&from, &mut buf).expect("read").len(), 64);
        assert_eq!(read_draining(&from, &mut buf).expect("read").len(), 36);

        // End of stream still reads as 0 after a short read cleared the readiness.
        peer.write_all(b"last").await.expect("write");
        drop(peer);
        tokio::time::sleep(Duration::from_millis(20)).await;
        from.ready(Interest::READABLE).await.expect("ready");
        assert_eq!(read_draining(&from, &mut buf).expect("read").len(), 4);
        tokio::time::timeout(Duration::from_secs(5), from.ready(Interest::READABLE))
            .await
            .expect("end of stream must wake the wait")
            .expect("ready");
        assert_eq!(read_draining(&from, &mut buf).expect("read").len(), 0);
    }
}
