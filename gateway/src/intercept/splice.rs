//! Kernel splicing of pass-through connections: the two sockets of a connection the policy
//! lets through untouched (`tcp: allow`, TLS passthrough) go into a sock hash, and the
//! `sk_skb` stream verdict on that map sends what one receives out of the other without the
//! bytes reaching user space. Each socket's entry in the peers map names its peer and counts
//! the bytes it handed on; the gateway reads the counts for idleness and for the record.
//!
//! Both sockets join a second sock hash, without programs, before either joins the one
//! with the verdict: the verdict redirects through that second map, so the first byte
//! either receives always finds its peer (a verdict cannot leave data queued for later).
//!
//! The kernel does not carry end of stream across: the gateway still sees EOF and errors on
//! each socket (the verdict consumes data; a FIN or reset stays visible to `read` and poll)
//! and passes a half-close on itself, once the bytes before it have left (see
//! [`written`]). The verdict drops a bare FIN rather than redirect it: the peer's backlog
//! takes its empty send for a hard error (EPIPE on the peer, its transmit stopped).
//!
//! When the program cannot load or attach (an old kernel, a missing capability), the
//! gateway copies in user space instead ([`SpliceMode::Copy`]).
use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, SockHash},
    programs::SkSkb,
};
use gateway_common::{SplicePeer, maps, programs};
use serde::{Deserialize, Serialize};

use crate::util::sync::LockExt;

/// The reason `status` gives when the config leaves the kernel splice off.
pub const OFF: &str = "off in the config (kernel_splice: false)";

/// How pass-through connections are copied, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum SpliceMode {
    /// In the kernel (`sk_skb` redirect between the two sockets).
    Kernel,
    /// By the gateway, through a buffer, because the kernel splice could not be set up.
    Copy { reason: String },
}

/// What `status` shows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpliceStatus {
    #[serde(flatten)]
    pub mode: SpliceMode,
    /// Entries in the two splice maps now (four per spliced connection).
    pub sockets: usize,
    /// Entries in the peers map now (two per spliced connection).
    #[serde(default)]
    pub peers: usize,
}

struct Maps {
    /// With the verdict attached.
    socks: SockHash<MapData, u64>,
    /// Redirect targets, no program.
    targets: SockHash<MapData, u64>,
    peers: HashMap<MapData, u64, SplicePeer>,
}

/// The loaded and attached splice program's maps.
pub struct Splicer {
    maps: Mutex<Maps>,
}

/// Why [`Splicer::add`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct AddError {
    pub source: io::Error,
    /// Set when one socket's verdict was on before the other's insert failed: it may have
    /// handed bytes to its peer's queue, which taking the pair out of the maps would purge
    /// (the kernel drops a socket's queued skbs when it leaves its last map). The pair stays
    /// in the peers and targets maps, without the verdict, until [`Splicer::remove`]: call it
    /// once [`written`] shows those bytes have left.
    pub unsettled: Option<Pair>,
}

/// The two sockets of one spliced connection, by cookie. Taken out of the maps by
/// [`Splicer::remove`].
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    pub client: u64,
    pub upstream: u64,
}

impl Splicer {
    /// Loads the verdict program and attaches it to the splice map.
    pub(super) fn load(ebpf: &mut Ebpf) -> Result<Self, String> {
        let prog: &mut SkSkb = ebpf
            .program_mut(programs::SPLICE)
            .ok_or("the eBPF object has no splice program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.load()
            .map_err(|e| format!("loading {}: {e}", programs::SPLICE))?;
        let socks: SockHash<MapData, u64> = ebpf
            .take_map(maps::SPLICE)
            .ok_or("the eBPF object has no splice map")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let targets: SockHash<MapData, u64> = ebpf
            .take_map(maps::SPLICE_TO)
            .ok_or("the eBPF object has no splice target map")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let peers: HashMap<MapData, u64, SplicePeer> = ebpf
            .take_map(maps::SPLICE_PEERS)
            .ok_or("the eBPF object has no splice peers map")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        let prog: &mut SkSkb = ebpf
            .program_mut(programs::SPLICE)
            .ok_or("the eBPF object has no splice program")?
            .try_into()
            .map_err(|e| format!("{e}"))?;
        prog.attach(socks.fd())
            .map_err(|e| format!("attaching {} to its map: {e}", programs::SPLICE))?;
        Ok(Self {
            maps: Mutex::new(Maps {
                socks,
                targets,
                peers,
            }),
        })
    }

    /// Splices `client` and `upstream`: from here on what either receives is sent out of the
    /// other by the kernel. Data that arrived before is handed on too (the kernel is asked
    /// to look at each receive queue once both are in place). On error the verdict is off
    /// for both; see [`AddError::unsettled`] for what may still be in the maps.
    pub fn add(&self, client: &impl AsRawFd, upstream: &impl AsRawFd) -> Result<Pair, AddError> {
        let refused = |source| AddError {
            source,
            unsettled: None,
        };
        let pair = Pair {
            client: cookie(client.as_raw_fd()).map_err(refused)?,
            upstream: cookie(upstream.as_raw_fd()).map_err(refused)?,
        };
        let mut verdict_on = false;
        let mut m = self.maps.locked();
        let err = |e: aya::maps::MapError| io::Error::other(e.to_string());
        // Peers and targets first: the first byte either socket hands the verdict must find
        // where it goes. A socket in the targets map only is not spliced (no program there):
        // what arrives meanwhile waits in its receive queue.
        let entry = |peer| SplicePeer { peer, bytes: 0 };
        let added = (|| {
            m.peers
                .insert(pair.client, entry(pair.upstream), 0)
                .map_err(err)?;
            m.peers
                .insert(pair.upstream, entry(pair.client), 0)
                .map_err(err)?;
            m.targets
                .insert(pair.upstream, upstream.as_raw_fd(), 0)
                .map_err(err)?;
            m.targets
                .insert(pair.client, client.as_raw_fd(), 0)
                .map_err(err)?;
            m.socks
                .insert(pair.upstream, upstream.as_raw_fd(), 0)
                .map_err(err)?;
            verdict_on = true;
            m.socks
                .insert(pair.client, client.as_raw_fd(), 0)
                .map_err(err)
        })();
        if let Err(source) = added {
            if !verdict_on {
                remove_pair(&mut m, pair);
                return Err(refused(source));
            }
            // The upstream's verdict ran meanwhile (the client's insert fails when its FIN
            // came first: a socket in CLOSE_WAIT cannot join a sock map): what it handed to
            // the client waits in the client's queue, which leaving the maps would purge.
            for c in [pair.client, pair.upstream] {
                let _ = m.socks.remove(&c);
            }
            return Err(AddError {
                source,
                unsettled: Some(pair),
            });
        }
        drop(m);
        kick(upstream.as_raw_fd());
        kick(client.as_raw_fd());
        Ok(pair)
    }

    /// Bytes the socket with this cookie has received and handed on so far.
    pub fn bytes(&self, cookie: u64) -> u64 {
        self.maps
            .locked()
            .peers
            .get(&cookie, 0)
            .map_or(0, |p| p.bytes)
    }

    /// Takes the pair out of the maps; returns the bytes each side handed on (client to
    /// upstream, upstream to client).
    pub fn remove(&self, pair: Pair) -> (u64, u64) {
        let mut m = self.maps.locked();
        let up = m.peers.get(&pair.client, 0).map_or(0, |p| p.bytes);
        let down = m.peers.get(&pair.upstream, 0).map_or(0, |p| p.bytes);
        remove_pair(&mut m, pair);
        (up, down)
    }

    /// Sockets in the splice maps (both) and entries in the peers map.
    pub fn entries(&self) -> (usize, usize) {
        let m = self.maps.locked();
        (
            m.socks.keys().count() + m.targets.keys().count(),
            m.peers.keys().count(),
        )
    }
}

fn remove_pair(m: &mut Maps, pair: Pair) {
    for c in [pair.client, pair.upstream] {
        let _ = m.socks.remove(&c);
    }
    for c in [pair.client, pair.upstream] {
        let _ = m.targets.remove(&c);
        let _ = m.peers.remove(&c);
    }
}

/// The socket's cookie (`SO_COOKIE`), what `bpf_get_socket_cookie` returns for it.
fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// Makes the kernel run the verdict over what already waits in the receive queue: setting
/// `SO_RCVLOWAT` calls the socket's data-ready callback when data is there, and a socket in
/// the map has the verdict as that callback. Without it, bytes that arrived before the socket
/// went into the map would wait for the next packet.
fn kick(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `one`.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Bytes written into the socket so far (sent or still queued), a lower bound that is exact
/// once no acknowledgement arrives between its two reads: acknowledged bytes (`TCP_INFO`)
/// plus what is still in the send queue (`SIOCOUTQ`, read second, so that an acknowledgement
/// in between can only make the sum smaller). `connected`: the socket opened the connection,
/// and the acknowledgement of its SYN counts one byte (an accepted socket is made after the
/// handshake, with nothing acknowledged).
pub fn written(fd: RawFd, connected: bool) -> io::Result<u64> {
    /// `tcpi_bytes_acked` in `struct tcp_info` (since Linux 4.1).
    const BYTES_ACKED: usize = 120;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < BYTES_ACKED + 8 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO without tcpi_bytes_acked",
        ));
    }
    let mut acked = [0u8; 8];
    acked.copy_from_slice(&info[BYTES_ACKED..BYTES_ACKED + 8]);
    let acked = u64::from_ne_bytes(acked);
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked.saturating_sub(u64::from(connected)) + queued.max(0) as u64)
}
