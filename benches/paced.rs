//! `callgate-paced`: an open-loop HTTP/1.1 load generator for latency at a fixed request rate.
//!
//! wrk is closed-loop: a connection sends its next request only when the last answer is in, so
//! it measures latency at whatever load it produces, and a slow answer hides the ones that
//! should have been sent meanwhile. The l7 bench's "added p99 at half load" needs the same
//! request rate through every path, and latency counted from when each request was due
//! (wrk2's correction for coordinated omission). wrk2 is not packaged in Debian, so this is
//! the small part of it the bench needs.
//!
//! One thread, one epoll: request `i` is due at `start + i / rate`; a timerfd armed to the
//! nanosecond wakes the loop when the next one is due (tokio's timer has 1 ms ticks, which
//! would send in bursts), and it goes out on any idle keep-alive connection, or waits for the
//! first one to free up. Latency is from due time to the answer's last byte. Output is one
//! JSON object.
use std::{
    collections::VecDeque,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream as StdStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::ExitCode,
    time::Duration,
};

use mio::{Events, Interest, Poll, Token, net::TcpStream, unix::SourceFd};

const TIMER: Token = Token(usize::MAX);
/// An answer head longer than this is an error.
const MAX_HEAD: usize = 64 * 1024;

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    rate: f64,
    connections: usize,
    duration: Duration,
    warmup: Duration,
}

fn usage() -> String {
    "usage: callgate-paced --rate REQ_PER_S [--connections N] [--duration SECS] [--warmup SECS] \
     http://IP:PORT/PATH"
        .to_string()
}

fn parse_args() -> Result<Args, String> {
    let mut rate = None;
    let mut connections = 32;
    let mut duration = 5.0;
    let mut warmup = 1.0;
    let mut url = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or(format!("{name} needs a number\n{}", usage()))
        };
        match a.as_str() {
            "--rate" => rate = Some(value("--rate")?),
            "--connections" => connections = value("--connections")? as usize,
            "--duration" => duration = value("--duration")?,
            "--warmup" => warmup = value("--warmup")?,
            "-h" | "--help" => return Err(usage()),
            _ if url.is_none() && !a.starts_with('-') => url = Some(a),
            _ => return Err(format!("unexpected argument {a:?}\n{}", usage())),
        }
    }
    let rate = rate.filter(|r| *r > 0.0).ok_or_else(usage)?;
    let url = url.ok_or_else(usage)?;
    let rest = url.strip_prefix("http://").ok_or_else(usage)?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = host
        .parse()
        .map_err(|e| format!("{host:?} is not IP:PORT: {e}"))?;
    Ok(Args {
        addr,
        host: host.to_string(),
        path: if path.is_empty() { "/" } else { path }.to_string(),
        rate,
        connections: connections.max(1),
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
    })
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the timerfd is armed on.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned from here on.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn arm(fd: &OwnedFd, at_ns: u64) -> io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
        },
    };
    // SAFETY: `spec` is valid; a null old value is allowed.
    let r = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One keep-alive connection with at most one request in flight.
struct Conn {
    io: TcpStream,
    buf: Vec<u8>,
    /// When the request in flight was due.
    due: Option<u64>,
}

/// How far an answer in `buf` has arrived: its length and status once complete.
fn complete_answer(buf: &[u8]) -> Result<Option<(usize, u16)>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut answer = httparse::Response::new(&mut fields);
    let body = match answer.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err("answer head too large".into());
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad answer head: {e}")),
    };
    let status = answer.code.unwrap_or(0);
    let field = |name: &str| {
        answer
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if field("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
        let mut at = body;
        loop {
            let (size_end, size) = match httparse::parse_chunk_size(&buf[at..]) {
                Ok(httparse::Status::Complete(c)) => c,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(_) => return Err("bad chunk size".into()),
            };
            at += size_end;
            if size == 0 {
                // No trailers expected: the empty line ends the answer.
                return Ok((buf.len() >= at + 2).then_some((at + 2, status)));
            }
            let next = at + size as usize + 2;
            if buf.len() < next {
                return Ok(None);
            }
            at = next;
        }
    }
    let length = match field("content-length") {
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or("bad content-length")?,
        None => 0,
    };
    let end = body + length;
    Ok((buf.len() >= end).then_some((end, status)))
}

#[derive(Default)]
struct Tally {
    /// Microseconds from due time to answer, for answers to requests due after the warm-up.
    latencies: Vec<u32>,
    /// Microseconds from due time to the request's write (the generator's own lateness).
    send_late: Vec<u32>,
    non_2xx: u64,
}

fn run(args: &Args) -> Result<serde_json::Value, String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: callgate-paced\r\nAccept: */*\r\n\r\n",
        args.path, args.host
    );
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let s = StdStream::connect(args.addr).map_err(|e| format!("connect {}: {e}", args.addr))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut io = TcpStream::from_std(s);
        poll.registry()
            .register(&mut io, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        conns.push(Conn {
            io,
            buf: Vec::with_capacity(4096),
            due: None,
        });
    }
    let timer = timerfd().map_err(|e| e.to_string())?;
    poll.registry()
        .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)
        .map_err(|e| e.to_string())?;

    let interval_ns = 1e9 / args.rate;
    let start = now_ns() + 1_000_000;
    let measure_from = start + args.warmup.as_nanos() as u64;
    let end = measure_from + args.duration.as_nanos() as u64;
    let total = ((end - start) as f64 / interval_ns) as u64;
    let due_of = |i: u64| start + (i as f64 * interval_ns) as u64;
    let mut next = 0u64;
    arm(&timer, due_of(0)).map_err(|e| e.to_string())?;

    // First in, first out, so that every connection carries requests, as wrk's do; one left
    // idle would meet the gateway's first-bytes timeout.
    let mut idle: VecDeque<usize> = (0..conns.len()).collect();
    let mut waiting: VecDeque<u64> = VecDeque::new();
    let mut tally = Tally::default();
    let mut outstanding = 0u64;
    let mut events = Events::with_capacity(1024);
    // Bounded: the run ends at `end` plus at most 5 s for the last answers.
    let deadline = end + 5_000_000_000;

    let send = |c: &mut Conn, due: u64, tally: &mut Tally| -> Result<(), String> {
        c.io.write_all(request.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        c.due = Some(due);
        if due >= measure_from {
            tally
                .send_late
                .push(((now_ns().saturating_sub(due)) / 1000) as u32);
        }
        Ok(())
    };

    while next < total || outstanding > 0 {
        if now_ns() > deadline {
            return Err(format!(
                "{outstanding} requests still unanswered 5 s after the run"
            ));
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            if ev.token() == TIMER {
                let mut b = [0u8; 8];
                // SAFETY: reads the 8-byte expiry count into `b`.
                unsafe { libc::read(timer.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
                let now = now_ns();
                while next < total && due_of(next) <= now {
                    let due = due_of(next);
                    next += 1;
                    outstanding += 1;
                    match idle.pop_front() {
                        Some(i) => send(&mut conns[i], due, &mut tally)?,
                        None => waiting.push_back(due),
                    }
                }
                if next < total {
                    arm(&timer, due_of(next)).map_err(|e| e.to_string())?;
                }
                continue;
            }
            let i = ev.token().0;
            let c = &mut conns[i];
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match c.io.read(&mut chunk) {
                    Ok(0) => return Err("the server closed a connection".into()),
                    Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            let Some((len, status)) = complete_answer(&c.buf)? else {
                continue;
            };
            let due = c.due.take().ok_or("an answer no request asked for")?;
            c.buf.drain(..len);
            outstanding -= 1;
            if due >= measure_from {
                tally
                    .latencies
                    .push(((now_ns().saturating_sub(due)) / 1000) as u32);
                if !(200..400).contains(&status) {
                    tally.non_2xx += 1;
                }
            }
            match waiting.pop_front() {
                Some(due) => send(c, due, &mut tally)?,
                None => idle.push_back(i),
            }
        }
    }
    let secs = args.duration.as_secs_f64();
    let pct = |v: &mut Vec<u32>, p: f64| -> u32 {
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
    };
    let mut lat = tally.latencies;
    let mut late = tally.send_late;
    Ok(serde_json::json!({
        "rate": args.rate,
        "answered": lat.len(),
        "rps": lat.len() as f64 / secs,
        "non_2xx": tally.non_2xx,
        "p50_us": pct(&mut lat, 50.0),
        "p90_us": pct(&mut lat, 90.0),
        "p99_us": pct(&mut lat, 99.0),
        "p999_us": pct(&mut lat, 99.9),
        "max_us": lat.last().copied().unwrap_or(0),
        "send_late_p99_us": pct(&mut late, 99.0),
    }))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("callgate-paced: {e}");
            ExitCode::FAILURE
        }
    }
}
