//! `cargo xtask bench --suite micro` (with decide, mask and record): criterion benches of the
//! first stages of a call — sniffing a connection's first bytes (a real TLS ClientHello made
//! by rustls, an HTTP/1 request, the h2 preface) and extracting the call from a request (REST
//! route, JSON-RPC, MCP `tools/call`) against the example policy repository.
use std::{hint::black_box, path::Path, sync::Arc};

use callgate::{extract, policy, proxy::sniff};
use criterion::Criterion;

fn client_hello() -> Vec<u8> {
    let roots = rustls::RootCertStore::empty();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("payments.internal").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

fn request(method: &str, path: &str, ct: &str) -> http::request::Parts {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let hello = client_hello();
    let mut g = c.benchmark_group("sniff");
    g.bench_function("tls client hello", |b| {
        b.iter(|| sniff::classify(black_box(&hello)))
    });
    let get = b"GET /v1/payments/p_1 HTTP/1.1\r\nHost: payments.internal\r\n\r\n";
    g.bench_function("http/1 request", |b| {
        b.iter(|| sniff::classify(black_box(get)))
    });
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    g.bench_function("h2 preface", |b| {
        b.iter(|| sniff::classify(black_box(preface)))
    });
    g.finish();

    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let (_, snap) = policy::load_snapshot(&repo).unwrap_or_else(|e| panic!("policies: {e:?}"));
    let mut g = c.benchmark_group("extract");
    let cases = [
        (
            "payments",
            request("POST", "/v1/payments/pay_123/refund?source=batch", "application/json"),
            br#"{"amount": 120, "currency": "EUR", "reason": "duplicate"}"#.to_vec(),
            "rest route + body",
        ),
        (
            "ledger",
            request("POST", "/", "application/json"),
            br#"{"jsonrpc":"2.0","id":1,"method":"ledger.transfer","params":{"from":"a","to":"b","amount":5}}"#.to_vec(),
            "json-rpc",
        ),
        (
            "tools",
            request("POST", "/mcp", "application/json"),
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"run_query","arguments":{"sql":"select 1"}}}"#.to_vec(),
            "mcp tools/call",
        ),
    ];
    for (service, parts, body, name) in &cases {
        let svc = snap.service(service).expect("example service");
        let kind = extract::kind_of(&svc.surface);
        assert!(
            extract::extract(kind, &svc.surface, parts, Some(body), false).is_ok(),
            "{name}"
        );
        g.bench_function(*name, |b| {
            b.iter(|| {
                extract::extract(
                    kind,
                    &svc.surface,
                    black_box(parts),
                    Some(black_box(body)),
                    false,
                )
            })
        });
    }
    g.finish();
    c.final_summary();
}
