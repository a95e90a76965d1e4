//! TLS end to end: interception (the client trusts the gateway's CA through the system trust
//! store, set up in a mount namespace of the test's own), passthrough decided on SNI, and a
//! broken handshake.
use std::fs;

use callgate_e2e::*;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

#[test]
fn tls_is_intercepted_or_passed_through_by_policy() {
    let test = "tls_is_intercepted_or_passed_through_by_policy";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = std::env::temp_dir().join(unique("callgate-tls"));
    fs::create_dir_all(&dir).expect("dir");
    test_pki(&dir);
    let (cert, key) = (dir.join("leaf.crt"), dir.join("leaf.key"));
    let inspected = upstream(&dir, Some((&cert, &key)));
    let spliced = upstream(&dir, Some((&cert, &key)));
    let secure = format!(
        r#"
service: secure
match:
  hosts: ["127.0.0.1:{}", "api.test:{}"]
  tls: intercept
  upstream_ca: {}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{id}}" }}
rules:
  - {{ name: reads, function: get_payment, action: allow }}
response:
  mask: [card_number]
"#,
        inspected.port,
        inspected.port,
        dir.join("ca.crt").display()
    );
    let opaque = format!(
        r#"
service: opaque
match:
  hosts: ["127.0.0.1:{}", "api.test:{}"]
  tls: passthrough
"#,
        spliced.port, spliced.port
    );
    let policies = policy_repo(&dir, REPO, &[("secure", &secure), ("opaque", &opaque)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("tls");
    gw.enable(&cg);
    let gateway_ca = gw.dir.join("state/ca.crt");
    assert!(gateway_ca.exists(), "the gateway made its CA");

    // Intercepted: curl trusts the gateway's CA only through the system store, in a mount
    // namespace where that store is the gateway's CA.
    let curl = format!(
        "mount --bind '{}' /etc/ssl/certs/ca-certificates.crt && \
         exec curl -sS --max-time 10 --resolve api.test:{p}:127.0.0.1 \
         https://api.test:{p}/v1/payments/p_7",
        gateway_ca.display(),
        p = inspected.port
    );
    let out = cg.run(&["unshare", "-m", "sh", "-c", &curl]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("\"path\": \"/v1/payments/p_7\""), "{body}");
    assert!(!body.contains("4111 1111 1111 1111"), "card leaked: {body}");
    let r = record_where(&gw, "the intercepted call", |r| {
        r["function"] == "get_payment"
    });
    assert_eq!(r["service"], "secure");
    assert_eq!(r["args"]["id"], "p_7");

    // httpx negotiates h2 with the gateway (ALPN), which speaks HTTP/1.1 to this upstream.
    // Its code names no CA: it trusts the gateway through the environment of `trust env`.
    let py = party_python().display().to_string();
    let code = format!(
        "import httpx\n\
         with httpx.Client(http2=True) as c:\n\
         \x20   r = c.get('https://127.0.0.1:{}/v1/payments/p_8')\n\
         \x20   print(r.http_version, r.status_code, r.json()['card'])\n",
        inspected.port
    );
    let bundle = format!(
        "SSL_CERT_FILE={}",
        gw.dir.join("state-trust/bundle.pem").display()
    );
    let out = cg.run(&["env", &bundle, &py, "-c", &code]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "httpx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), "HTTP/2 200 ************1111");

    // Passthrough: end-to-end TLS with the upstream's own certificate, decided on SNI.
    let (code, body) = curl_in(
        &cg,
        &[
            "--cacert",
            &dir.join("ca.crt").display().to_string(),
            "--resolve",
            &format!("api.test:{}:127.0.0.1", spliced.port),
            &format!("https://api.test:{}/text", spliced.port),
        ],
    );
    assert_eq!(code, 0, "{body}");
    assert!(
        body.contains("4111 1111 1111 1111"),
        "passthrough is not inspected: {body}"
    );
    record_where(&gw, "the passthrough connection", |r| {
        r["protocol"] == "tls" && r["function"] == "api.test" && r["decision"]["action"] == "allow"
    });
    // An SNI that does not name the service is refused before anything reaches it.
    let before = spliced.requests().len();
    let (code, _) = curl_in(
        &cg,
        &[
            "-k",
            "--resolve",
            &format!("evil.test:{}:127.0.0.1", spliced.port),
            &format!("https://evil.test:{}/text", spliced.port),
        ],
    );
    assert_ne!(code, 0);
    assert_eq!(spliced.requests().len(), before);
    record_where(&gw, "the refused SNI", |r| {
        r["function"] == "evil.test" && r["decision"]["action"] == "deny"
    });

    // Garbage after a real ClientHello: the handshake fails, the gateway goes on serving.
    let code = format!(
        "import socket, ssl\n\
         ctx = ssl.create_default_context()\n\
         inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()\n\
         obj = ctx.wrap_bio(inc, out, server_hostname='api.test')\n\
         try:\n\
         \x20   obj.do_handshake()\n\
         except ssl.SSLWantReadError:\n\
         \x20   pass\n\
         s = socket.create_connection(('127.0.0.1', {}), timeout=5)\n\
         s.sendall(out.read() + b'\\x00garbage' * 100)\n\
         try:\n\
         \x20   data = s.recv(4096)\n\
         \x20   while data and not data.startswith(b'\\x15'):\n\
         \x20       data = s.recv(4096)\n\
         except TimeoutError:\n\
         \x20   data = b'timed out'\n\
         except ConnectionResetError:\n\
         \x20   data = b''\n\
         print('closed' if not data or data.startswith(b'\\x15') else repr(data[:20]))\n",
        inspected.port
    );
    let out = cg.run(&[&py, "-c", &code]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "closed",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    record_where(&gw, "the broken handshake", |r| {
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|x| x.contains("TLS handshake"))
    });
    let out = cg.run(&["unshare", "-m", "sh", "-c", &curl]);
    assert!(
        out.status.success(),
        "the gateway stopped serving after bad TLS"
    );
    let _ = fs::remove_dir_all(&dir);
}
