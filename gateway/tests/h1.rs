//! The forward stage's own HTTP/1.1 client against a real TCP upstream that answers from a
//! script: framing (length, chunked with trailers, no body, until close), 1xx skipped, the
//! connection kept across requests, replaced when the upstream closed it, and malformed
//! answers refused.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use callgate::proxy::body::ProxyBody;
use callgate::proxy::upstream::pool::{Http1Slot, Owner, UpstreamBody, Upstreams};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// The workload of the tests where only one calls (a cgroup id and a uid, as the kernel
/// reports them; an owner is never a default).
const ONE_WORKLOAD: Owner = Owner {
    cgroup_id: 1,
    uid: 0,
};

/// What the upstream does with each request, in order, across all connections.
enum Step {
    Answer(&'static [u8]),
    /// Answer, then close the connection.
    AnswerAndClose(&'static [u8]),
}

/// A scripted upstream; the count of connections it accepted.
async fn upstream(script: Vec<Step>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let script = Arc::new(std::sync::Mutex::new(script.into_iter()));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let script = script.clone();
            // Each connection served on its own: a client may hold one open while using another.
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request (heads only, or a short body after the head) at a time.
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = s.read(&mut chunk).await else {
                        break;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let body_len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + body_len {
                        continue;
                    }
                    buf.drain(..end + 4 + body_len);
                    let step = script.lock().map(|mut s| s.next()).unwrap_or(None);
                    match step {
                        Some(Step::Answer(a)) => {
                            let _ = s.write_all(a).await;
                        }
                        Some(Step::AnswerAndClose(a)) => {
                            let _ = s.write_all(a).await;
                            break;
                        }
                        None => break,
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn get(path: &str) -> Request<ProxyBody> {
    request("GET", path, Bytes::new())
}

fn request(method: &str, path: &str, body: Bytes) -> Request<ProxyBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "upstream.test")
        .body(Full::new(body).map_err(|e| match e {}).boxed_unsync())
        .expect("request")
}

/// The body and trailers, read to the end.
async fn read(resp: Response<UpstreamBody>) -> (u16, String, Option<String>) {
    let status = resp.status().as_u16();
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected
        .trailers()
        .and_then(|t| t.get("x-checksum"))
        .map(|v| v.to_str().unwrap_or("").to_string());
    let body = String::from_utf8_lossy(&collected.to_bytes()).to_string();
    (status, body, trailers)
}

/// One call to `addr` (answered `ok`) on a fresh slot of `lane`; then the slot's connection
/// goes to the lane's idle list.
async fn call_and_release(ups: &Upstreams, lane: usize, addr: SocketAddr) {
    call_and_release_as(ups, lane, ONE_WORKLOAD, addr).await;
}

/// [`call_and_release`] from a connection of the workload `owner`.
async fn call_and_release_as(ups: &Upstreams, lane: usize, owner: Owner, addr: SocketAddr) {
    let slot = Http1Slot::new(lane, owner);
    let resp = ups
        .send_http1(&slot, addr, 0, None, false, get("/"))
        .await
        .expect("call");
    assert_eq!(read(resp).await.1, "ok");
    ups.release_http1(addr, 0, &slot);
}

fn upstreams() -> Upstreams {
    Upstreams::new(Duration::from_secs(2), Duration::from_secs(30), 1)
}

#[tokio::test]
async fn answers_are_framed_and_one_connection_carries_them_all() {
    let (addr, accepted) = upstream(vec![
        Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
        Step::Answer(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nchunk\r\n2\r\ned\r\n0\r\nx-checksum: abc\r\n\r\n",
        ),
        Step::Answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"),
        Step::Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"),
        Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nsent"),
    ])
    .await;
    let ups = upstreams();
    let slot = Http1Slot::new(0, ONE_WORKLOAD);
    let send = |req| ups.send_http1(&slot, addr, 0, None, false, req);

    assert_eq!(
        read(send(get("/a")).await.expect("a")).await,
        (200, "hello".into(), None)
    );
    assert_eq!(
        read(send(get("/b")).await.expect("b")).await,
        (200, "chunked".into(), Some("abc".into()))
    );
    assert_eq!(
        read(send(get("/c")).await.expect("c")).await,
        (204, String::new(), None)
    );
    // A HEAD answer says how long the body would be, and has none.
    let head = request("HEAD", "/d", Bytes::new());
    assert_eq!(
        read(send(head).await.expect("d")).await,
        (200, String::new(), None)
    );
    assert_eq!(
        read(send(get("/e")).await.expect("e")).await,
        (201, "ok".into(), None)
    );
    let post = request("POST", "/f", Bytes::from_static(b"{\"x\":1}"));
    assert_eq!(
        read(send(post).await.expect("f")).await,
        (200, "sent".into(), None)
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
}

#[tokio::test]
async fn a_kept_connection_the_upstream_closed_is_replaced() {
    let (addr, accepted) = upstream(vec![
        Step::AnswerAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none"),
        Step::AnswerAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo"),
        Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain"),
        Step::AnswerAndClose(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"),
        Step::Answer(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfour"),
    ])
    .await;
    let ups = upstreams();
    let slot = Http1Slot::new(0, ONE_WORKLOAD);
    let send = |req| ups.send_http1(&slot, addr, 0, None, false, req);
    assert_eq!(read(send(get("/1")).await.expect("1")).await.1, "one");
    // Whether or not the close was seen before this request went out, the request arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(read(send(get("/2")).await.expect("2")).await.1, "two");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // At once: the close may not be known yet, and the request goes out on the closed
    // connection; it finds no answer there and goes again on a new one.
    assert_eq!(read(send(get("/2b")).await.expect("2b")).await.1, "again");
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    // Delimited by the close: read to the end, and the connection is not used again.
    assert_eq!(
        read(send(get("/3")).await.expect("3")).await.1,
        "until the end"
    );
    assert_eq!(read(send(get("/4")).await.expect("4")).await.1, "four");
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn malformed_answers_are_errors_not_guesses() {
    let (addr, _) = upstream(vec![
        Step::AnswerAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        ),
        Step::AnswerAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 3x\r\n\r\nabc"),
        Step::AnswerAndClose(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc"),
        Step::AnswerAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"),
        Step::AnswerAndClose(b"NOT HTTP AT ALL\r\n\r\n"),
    ])
    .await;
    let ups = upstreams();
    let slot = Http1Slot::new(0, ONE_WORKLOAD);
    let send = |req| ups.send_http1(&slot, addr, 0, None, false, req);
    for (path, why) in [
        ("/conflict", "Content-Length"),
        ("/invalid", "Content-Length"),
    ] {
        let e = send(get(path)).await.err().expect("an error");
        assert!(e.to_string().contains(why), "{path}: {e}");
    }
    for (path, why) in [("/chunk", "chunk"), ("/short", "closed")] {
        let resp = send(get(path)).await.expect("a head");
        let e = resp.into_body().collect().await.expect_err("a body error");
        assert!(e.to_string().contains(why), "{path}: {e}");
    }
    let e = send(get("/garbage")).await.err().expect("an error");
    assert!(e.to_string().contains("malformed"), "{e}");
}

/// A connection released by an intercepted connection goes back to the idle lists of the
/// data-path thread (lane) it was opened on: the next connection on that lane reuses it, one
/// on another lane opens its own. A socket's readiness arrives on the thread that registered
/// it, so a connection handed across would wait on a thread that may be busy or parked on
/// something else.
#[test]
fn kept_connections_stay_on_the_lane_that_opened_them() {
    let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    let upstream_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, accepted) =
        upstream_rt.block_on(upstream((0..3).map(|_| Step::Answer(answer)).collect()));
    // Two data-path threads (lanes): A serves on lane 0, B on lane 1.
    let ups = Arc::new(Upstreams::new(
        Duration::from_secs(2),
        Duration::from_secs(30),
        2,
    ));

    // Thread A makes two calls over one connection, then holds its runtime without driving it.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let a = {
        let ups = ups.clone();
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(call_and_release(&ups, 0, addr));
            rt.block_on(call_and_release(&ups, 0, addr));
            let _ = ready_tx.send(());
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("thread A made its calls");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "reused on its own thread"
    );

    // Thread B gets a connection of its own; A's would wait on A's parked reactor.
    let b = std::thread::spawn(move || {
        runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(5), call_and_release(&ups, 1, addr))
                .await
                .expect("thread B's call was answered")
        })
    });
    let b = b.join();
    let _ = done_tx.send(());
    a.join().expect("thread A");
    b.expect("thread B");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "another thread opens its own connection"
    );
}

/// Idle connections past the idle timeout are closed, not only skipped: their lane's sweep
/// (which its thread runs about once a second, calls or not) closes them, and the upstream
/// sees the end of its connection; it leaves the others.
#[tokio::test]
async fn idle_connections_past_the_timeout_are_closed_by_their_lanes_sweep() {
    // Upstreams that answer one request, then count the connections that ended.
    let closed = Arc::new(AtomicUsize::new(0));
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        let closed = closed.clone();
        tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
            {
                closed.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let idle = Duration::from_millis(300);
    let ups = Upstreams::new(Duration::from_secs(2), idle, 1);
    call_and_release(&ups, 0, addrs[0]).await;
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    call_and_release(&ups, 0, addrs[1]).await;
    // The first connection idled out, the second did not: the sweep closes the first.
    ups.sweep_idle(0);
    let waited = std::time::Instant::now();
    while closed.load(Ordering::SeqCst) < 1 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(closed.load(Ordering::SeqCst), 1, "the idled-out one closed");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(closed.load(Ordering::SeqCst), 1, "the fresh one kept");
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A kept connection is taken again only by a connection of the workload (cgroup and user)
/// it was opened for: a server may have authenticated the TCP connection itself (NTLM,
/// Negotiate with persistent auth), and another workload would then call as that one's user.
#[tokio::test]
async fn kept_connections_serve_only_the_workload_that_opened_them() {
    let (addr, accepted) = upstream((0..4).map(|_| Step::Answer(OK)).collect()).await;
    let ups = upstreams();
    let alice = Owner {
        cgroup_id: 7,
        uid: 1000,
    };
    let other_cgroup = Owner {
        cgroup_id: 8,
        uid: 1000,
    };
    let other_user = Owner {
        cgroup_id: 7,
        uid: 1001,
    };
    call_and_release_as(&ups, 0, alice, addr).await;
    call_and_release_as(&ups, 0, other_cgroup, addr).await;
    call_and_release_as(&ups, 0, other_user, addr).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "another workload took a kept connection"
    );
    call_and_release_as(&ups, 0, alice, addr).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "the same workload opened a new connection instead of taking its kept one"
    );
}

/// A quiet connection's upstream connection goes to the idle list only while that has room:
/// with the list full it stays with its connection, which then needs no new one.
#[tokio::test]
async fn a_quiet_connection_keeps_its_upstream_connection_when_the_idle_list_is_full() {
    const FULL: usize = 64;
    let (addr, accepted) = upstream((0..2 * FULL + 4).map(|_| Step::Answer(OK)).collect()).await;
    let ups = upstreams();
    let busy: Vec<Http1Slot> = (0..=FULL)
        .map(|_| Http1Slot::new(0, ONE_WORKLOAD))
        .collect();
    for slot in &busy {
        call(&ups, slot, addr, get("/")).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), FULL + 1);
    // The first goes quiet while the list has room; the others close, filling it.
    ups.quiet_http1(addr, 0, &busy[0]);
    for slot in &busy[1..FULL] {
        ups.release_http1(addr, 0, slot);
    }
    // The last goes quiet with the list full: it keeps its connection.
    let last = &busy[FULL];
    ups.quiet_http1(addr, 0, last);
    // The idle list still holds all it had: as many new connections' calls take them all.
    let fresh: Vec<Http1Slot> = (0..FULL).map(|_| Http1Slot::new(0, ONE_WORKLOAD)).collect();
    for slot in &fresh {
        call(&ups, slot, addr, get("/")).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        FULL + 1,
        "a kept connection went missing from the full idle list"
    );
    // With the list emptied, the quiet one's next call can only go on its own connection.
    call(&ups, last, addr, get("/")).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        FULL + 1,
        "the quiet connection lost its upstream connection"
    );
}

/// One call on `slot`, answered `ok`.
async fn call(ups: &Upstreams, slot: &Http1Slot, addr: SocketAddr, req: Request<ProxyBody>) {
    let resp = ups
        .send_http1(slot, addr, 0, None, false, req)
        .await
        .expect("call");
    assert_eq!(read(resp).await.1, "ok");
}

/// An upstream connection that NTLM or Negotiate authenticated (the request's Authorization,
/// or the answer's WWW-Authenticate or Persistent-Auth) is its client connection's alone: kept
/// with it when it goes quiet, closed when it ends, never taken by another connection, even
/// of the same workload (a process may act for several users, one connection each).
#[tokio::test]
async fn a_connection_authenticated_as_a_connection_is_never_kept_for_another() {
    const NEGOTIATE: &[u8] = b"HTTP/1.1 200 OK\r\nwww-authenticate: Negotiate oRQwEqADCgEA\r\ncontent-length: 2\r\n\r\nok";
    const PERSISTENT: &[u8] =
        b"HTTP/1.1 200 OK\r\npersistent-auth: true\r\ncontent-length: 2\r\n\r\nok";
    let owner = Owner {
        cgroup_id: 7,
        uid: 1000,
    };

    // The request's credentials bind it.
    let (addr, accepted) = upstream((0..3).map(|_| Step::Answer(OK)).collect()).await;
    let ups = upstreams();
    let alice = Http1Slot::new(0, owner);
    let mut authorized = get("/");
    authorized.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_static("NTLM TlRMTVNTUAADAAAA"),
    );
    call(&ups, &alice, addr, authorized).await;
    // Quiet: it stays with its client, whose next call needs no new connection.
    ups.quiet_http1(addr, 0, &alice);
    call(&ups, &alice, addr, get("/")).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Closed: another connection of the same workload opens its own.
    ups.release_http1(addr, 0, &alice);
    call(&ups, &Http1Slot::new(0, owner), addr, get("/")).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "an NTLM-authenticated connection was handed to another client connection"
    );

    // The answer's challenge binds it too, and so does Persistent-Auth.
    for (name, answer) in [("Negotiate", NEGOTIATE), ("Persistent-Auth", PERSISTENT)] {
        let (addr, accepted) = upstream(vec![Step::Answer(answer), Step::Answer(OK)]).await;
        let ups = upstreams();
        let carol = Http1Slot::new(0, owner);
        call(&ups, &carol, addr, get("/")).await;
        ups.release_http1(addr, 0, &carol);
        call(&ups, &Http1Slot::new(0, owner), addr, get("/")).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "a connection bound by {name} was handed to another client connection"
        );
    }
}
