//! Test helper for the bypass matrix: connects with io_uring (`IORING_OP_CONNECT`) instead of
//! the connect() system call, then fetches `/hello.txt` over the socket and prints the body.
//!
//!   uring-connect 127.0.0.1:PORT
use std::{
    io::{Read, Write},
    mem::size_of,
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd,
    process::ExitCode,
};

use io_uring::{IoUring, opcode, types};

fn main() -> ExitCode {
    match run() {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("uring-connect: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<String, String> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: uring-connect ADDR:PORT")?
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let SocketAddr::V4(v4) = addr else {
        return Err("IPv4 only".into());
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh socket no one else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut ring = IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let connect = opcode::Connect::new(
        types::Fd(fd),
        (&sa as *const libc::sockaddr_in).cast(),
        size_of::<libc::sockaddr_in>() as libc::socklen_t,
    )
    .build();
    // SAFETY: `sa` outlives the submission, which completes before this function returns.
    unsafe { ring.submission().push(&connect) }.map_err(|e| format!("push: {e}"))?;
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let cqe = ring.completion().next().ok_or("no completion")?;
    if cqe.result() < 0 {
        return Err(format!(
            "IORING_OP_CONNECT: {}",
            std::io::Error::from_raw_os_error(-cqe.result())
        ));
    }
    let mut stream = stream;
    stream
        .write_all(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}
