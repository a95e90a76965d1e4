//! What a masked service's upstream sends back must not get out unmasked, nor cost the gateway
//! more than a small constant per byte (issue 30, "Leaks" and #15). Each test drives a real
//! upstream (`tests/parties/upstream.py`, nginx) that sends the value, through a gateway that
//! must keep it from the client in an enabled cgroup.
use std::time::{Duration, Instant};

use callgate_e2e::*;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

/// A REST service that allows every call and masks cards, e-mail addresses, private and
/// secret keys; `response` adds to its `response:` block.
fn leaky(name: &str, port: u16, response: &str) -> String {
    format!(
        r#"
service: {name}
match:
  hosts: ["127.0.0.1:{port}"]
protocol: rest
rules:
  - name: everything
    action: allow
response:
  mask: [card_number, email, private_key, aws_access_key, secret_key]
  {response}
"#
    )
}

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    up: Party,
    /// The same upstream behind a service that lets unmaskable answers pass.
    passing: Party,
    _dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-leaks");
    let up = upstream(&dir, None);
    let passing = upstream(&dir, None);
    let policies = policy_repo(
        &dir,
        REPO,
        &[
            ("leaky", &leaky("leaky", up.port, "")),
            (
                "passing",
                &leaky("passing", passing.port, "unmaskable: pass"),
            ),
        ],
    );
    let gw = gateway_with_config(&policies, "http:\n  header_timeout_s: 5\n", &dir);
    let cg = TestCgroup::new("leaks");
    gw.enable(&cg);
    Some(Setup {
        gw,
        cg,
        up,
        passing,
        _dir: dir,
    })
}

/// `4 4 4 …` is every reading a card: 256 KiB of it cost 23 s of CPU, quadratic in the size,
/// and pinned a data thread. Now it is masked whole in a time linear in its size (bounded
/// here generously, for a debug build on a shared machine), and no digit of it gets out.
#[test]
fn overlapping_card_readings_are_masked_in_linear_time() {
    let Some(s) = setup("overlapping_card_readings_are_masked_in_linear_time") else {
        return;
    };
    let size = 256 * 1024;
    let url = format!("http://127.0.0.1:{}/worst?size={size}", s.up.port);
    let t = Instant::now();
    let (code, body) = curl_in(&s.cg, &["-sS", "--max-time", "60", &url]);
    let took = t.elapsed();
    assert_eq!(code, 0, "curl failed: {}", &body[..body.len().min(300)]);
    assert!(
        body.len() >= size / 2,
        "a short answer: {} bytes",
        body.len()
    );
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    assert!(digits < 64, "{digits} digits of the answer got out");
    assert!(
        took < Duration::from_secs(15),
        "256 KiB of overlapping cards took {took:?}"
    );
    // The gateway still answers promptly afterwards.
    let (code, _) = curl_in(
        &s.cg,
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{}/text", s.up.port),
        ],
    );
    assert_eq!(code, 0);
    assert!(s.gw.pid().is_some());
}

/// Escapes the client's JSON reader decodes carry no value past the masker: a key right after
/// `\u000a` (its escape's last hex digit stands where a boundary is looked for), a card whose
/// first digit is `\u0034`, in JSON only a lenient reader takes (Python's reads 1e400 as
/// infinity); a secret 30 escaped tabs after its name (180 bytes as written, 30 separators as
/// read: past the detector's reach when it counted bytes); a key after `\n`.
#[test]
fn escapes_carry_no_value_past_the_masker() {
    let Some(s) = setup("escapes_carry_no_value_past_the_masker") else {
        return;
    };
    // (the answer's query, the value, the field that holds it)
    for (query, value, field) in [
        ("escaped", "AKIAI44QH8DHBEXAMPLE", "log"),
        // Two groups of the card: a mask that left more than its last four digits shows them.
        ("escaped&card", "111 1111", "card"),
        ("tabs", "bPxRfiCYEXAMPLEKEY", "env"),
        // `\u00b` and `\u0030` (a `0`) in two chunks: `°` and the card, once decoded.
        ("split", "4111111111111111", "card"),
        ("json", "AKIAI44QH8DHBEXAMPLE", "log"),
    ] {
        let url = format!(
            "http://127.0.0.1:{}/v1/payments/p_1?secretlog={query}",
            s.up.port
        );
        let (code, body) = curl_in(&s.cg, &["-sS", "--max-time", "10", &url]);
        assert_eq!(code, 0, "{query}: {body}");
        // The answer, masked (not refused).
        assert!(body.contains(&format!("\"{field}\"")), "{query}: {body}");
        assert!(!body.contains(value), "{query}: {value} got out: {body}");
    }
}

/// Every record a gateway wrote, as the raw lines `records export --format jsonl` prints.
fn export_lines(gw: &Gateway) -> Vec<String> {
    let out = std::process::Command::new(callgate_bin())
        .args(["records", "export", "--format", "jsonl", "--dir"])
        .arg(gw.dir.join("state/records"))
        .output()
        .expect("records export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What reaches the call log goes through the detectors, whichever field it is in: a REST
/// path with an e-mail address and a card number in it becomes the `function` of an
/// undeclared route, and was written as it came (#13). A credential in a query parameter never
/// reaches a record. And an upstream answer whose JSON whitespace holds line breaks, with a
/// whole record on its middle line, must not add a line to a JSONL export (#14).
#[test]
fn records_hold_no_raw_values_credentials_or_forged_lines() {
    let Some(s) = setup("records_hold_no_raw_values_credentials_or_forged_lines") else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", s.up.port);
    let (code, _) = curl_in(
        &s.cg,
        &[&format!(
            "{base}/users/alice@example.com/cards/4111111111111111?api_key=k3y-0f-the-caller\
             &X-Amz-Signature=s1gn4ture-of-the-url&sig=s4s-s1gnature&client_assertion=a55ert10n"
        )],
    );
    assert_eq!(code, 0);
    let (code, body) = curl_in(&s.cg, &[&format!("{base}/forge")]);
    assert_eq!(code, 0);
    assert!(
        body.contains("forged"),
        "the upstream sent its answer: {body}"
    );
    let lines = wait_for(Duration::from_secs(10), || {
        let l = export_lines(&s.gw);
        (l.len() >= 2).then_some(l)
    })
    .expect("two records");
    assert_eq!(lines.len(), 2, "one line per record:\n{}", lines.join("\n"));
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a record ({e}): {line}"));
        assert_ne!(v["id"], "forged", "{line}");
        assert!(v["seq"].is_u64(), "{line}");
    }
    let all = lines.join("\n");
    for raw in [
        "alice@example.com",
        "4111111111111111",
        "k3y-0f-the-caller",
        "s1gn4ture-of-the-url",
        "s4s-s1gnature",
        "a55ert10n",
    ] {
        assert!(!all.contains(raw), "{raw} reached a record:\n{all}");
    }
    let r = record_where(&s.gw, "the call to a path with an e-mail in it", |r| {
        r["function"]
            .as_str()
            .is_some_and(|f| f.starts_with("GET /users/"))
    });
    assert!(
        r["function"]
            .as_str()
            .unwrap_or_default()
            .contains("[MASKED:email]"),
        "{r}"
    );
}

/// A gRPC service (grpcio's server, `tests/parties/grpc_server.py`) that masks cards and
/// e-mail addresses and injects a credential header, behind a gateway. Its messages are
/// protobuf, which cannot be masked: `unmaskable` says whether they pass.
struct Grpc {
    gw: Gateway,
    cg: TestCgroup,
    port: u16,
    py: String,
    _server: Party,
    _dir: TestDir,
}

fn grpc_setup(test: &str, unmaskable: &str) -> Option<Grpc> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-leaks-grpc");
    let port = free_port();
    let py = party_python().display().to_string();
    let server = party_script("grpc_server.py").display().to_string();
    let _server = Party::start(&[&py, &server, &port.to_string()], port, dir.join("server"));
    let secret = dir.join("greeter.secret");
    std::fs::write(&secret, "upstream-secret-value\n").expect("secret");
    let service = format!(
        r#"
service: greeter
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: grpc
functions:
  hello: {{ method: /demo.Greeter/SayHello }}
  leak: {{ method: /demo.Greeter/Leak }}
rules:
  - {{ name: calls, function: [hello, leak], action: allow }}
response:
  mask: [card_number, email]
  unmaskable: {unmaskable}
credentials:
  inject: {{ header: x-upstream-key, from: {{ file: "{}" }} }}
"#,
        secret.display(),
    );
    let policies = policy_repo(&dir, REPO, &[("greeter", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("leaks-grpc");
    gw.enable(&cg);
    Some(Grpc {
        gw,
        cg,
        port,
        py,
        _server,
        _dir: dir,
    })
}

impl Grpc {
    /// Runs `code` (Python with grpcio) in the cgroup; its stdout.
    fn client(&self, code: &str) -> String {
        let out = self.cg.run(&[&self.py, "-c", code]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A gRPC call's metadata is its arguments, and was recorded header for header: cookies, API
/// keys, the credential header the gateway injects (here sent by the caller too). None of
/// them reaches a record; the rest is masked like any argument (#13).
#[test]
fn grpc_metadata_records_no_credentials() {
    let Some(g) = grpc_setup("grpc_metadata_records_no_credentials", "pass") else {
        return;
    };
    let port = g.port;
    let out = g.client(&format!(
        r#"
import grpc
with grpc.insecure_channel("127.0.0.1:{port}") as ch:
    call = ch.unary_unary("/demo.Greeter/SayHello")
    print(call(b"world", timeout=10, metadata=(
        ("cookie", "sid=c00kie-of-the-caller"),
        ("x-api-key", "api-k3y-of-the-caller"),
        ("x-upstream-key", "caller-sets-the-injected-header"),
        ("x-auth-token", "t0ken-of-the-caller"),
        ("x-team", "alice@example.com"),
    )).decode())
"#
    ));
    assert_eq!(out, "hello world");
    let r = record_where(&g.gw, "the SayHello call", |r| r["function"] == "hello");
    let text = r.to_string();
    for raw in [
        "c00kie-of-the-caller",
        "api-k3y-of-the-caller",
        "caller-sets-the-injected-header",
        "t0ken-of-the-caller",
        "upstream-secret-value",
        "alice@example.com",
    ] {
        assert!(!text.contains(raw), "{raw} reached the record: {r}");
    }
    assert!(r["args"]["metadata"].get("cookie").is_none(), "{r}");
    assert!(r["args"]["metadata"].get("x-upstream-key").is_none(), "{r}");
}

/// Response headers and trailers were never masked (#10): `X-Card`, a `Location` with an
/// e-mail address, chunked trailers. Curl over HTTP/1.1 (asking for trailers) and h2 must
/// see them masked, never raw.
#[test]
fn response_headers_and_trailers_are_masked() {
    let Some(s) = setup("response_headers_and_trailers_are_masked") else {
        return;
    };
    let base = format!("http://127.0.0.1:{}", s.up.port);
    let (code, head) = curl_in(
        &s.cg,
        &["-D", "-", "-o", "/dev/null", &format!("{base}/hdr")],
    );
    assert_eq!(code, 0, "{head}");
    assert!(head.contains(" 200"), "{head}");
    for raw in ["4111 1111 1111 1111", "alice@example.com"] {
        assert!(!head.contains(raw), "{raw} in the head:\n{head}");
    }
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-card: ************1111"), "{head}");
    assert!(lower.contains("location: /users/[masked:email]"), "{head}");
    let mut seen_trailer = false;
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (code, out) = curl_in(
            &s.cg,
            &[
                proto,
                "--raw",
                "-H",
                "TE: trailers",
                "-D",
                "-",
                &format!("{base}/trailers"),
            ],
        );
        assert_eq!(code, 0, "{proto}: {out}");
        for raw in ["4111 1111 1111 1111", "alice@example.com"] {
            assert!(!out.contains(raw), "{proto}: {raw} got out:\n{out}");
        }
        seen_trailer |= out
            .to_ascii_lowercase()
            .contains("x-card: ************1111");
    }
    assert!(seen_trailer, "the trailers never reached the client masked");
}

/// gRPC trailing metadata is where a server puts what it sends after the message: it must be
/// masked like headers (#10).
#[test]
fn grpc_trailing_metadata_is_masked() {
    let Some(g) = grpc_setup("grpc_trailing_metadata_is_masked", "pass") else {
        return;
    };
    let port = g.port;
    let out = g.client(&format!(
        r#"
import grpc, json
with grpc.insecure_channel("127.0.0.1:{port}") as ch:
    resp, call = ch.unary_unary("/demo.Greeter/Leak").with_call(b"x", timeout=10)
    print(json.dumps({{"resp": resp.decode(), "trailers": dict(call.trailing_metadata())}}))
"#
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("client output");
    assert_eq!(v["resp"], "ok", "{v}");
    assert_eq!(v["trailers"]["x-card"], "************1111", "{v}");
    assert!(
        !out.contains("alice@example.com") && !out.contains("4111 1111"),
        "{v}"
    );
}

/// A misbehaving upstream defeated the compressed-answer check (#12): `Transfer-Encoding:
/// gzip, chunked` (gzip bytes once the chunking is undone), `Connection: Content-Encoding`
/// (hop-by-hop stripping removed the encoding before the check) and two `Content-Type`s
/// (the masker read the first, binary). Each, and a plainly gzipped answer, is refused with
/// 502, and the card, plain or gzipped, never reaches the client.
#[test]
fn misframed_answers_are_refused() {
    let Some(s) = setup("misframed_answers_are_refused") else {
        return;
    };
    let dir = TestDir::new("callgate-leaks-out");
    for how in ["ce-gzip", "te-gzip", "conn-ce", "two-ct"] {
        let out = dir.join(format!("{how}.body"));
        let url = format!("http://127.0.0.1:{}/misframed/{how}", s.up.port);
        let status = status_in(&s.cg, &[&url]);
        assert_eq!(status, "502", "{how}");
        let (_, _) = curl_in(&s.cg, &["-o", &out.display().to_string(), &url]);
        let body = std::fs::read(&out).unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("unmaskable_response"), "{how}: {text}");
        assert!(!text.contains("4111"), "{how}: {text}");
        // Not gzip that would hold the card either.
        assert!(!body.starts_with(&[0x1f, 0x8b]), "{how}: gzip got out");
    }
    let seen = s.up.requests();
    assert!(
        seen.iter()
            .filter(|r| r["path"].as_str().unwrap_or("").starts_with("/misframed/"))
            .count()
            >= 4,
        "the upstream answered each"
    );
}

/// Bodies that are not JSON or plain text passed unmasked (#11). What can be read as text
/// (CSV, YAML, JSON Lines, `+xml`, `+json`) is masked; what cannot (octet-stream, multipart,
/// gRPC, an unknown type) is refused with 502 by default, and passes only on a service that
/// says `unmaskable: pass`.
#[test]
fn bodies_of_every_type_are_masked_or_refused() {
    let Some(s) = setup("bodies_of_every_type_are_masked_or_refused") else {
        return;
    };
    let card = "4111 1111 1111 1111";
    for t in [
        "csv", "yaml", "jsonl", "ndjson", "soap", "problem", "escaped", "begin", "keyhtml",
    ] {
        let url = format!("http://127.0.0.1:{}/typed/{t}", s.up.port);
        let (code, body) = curl_in(&s.cg, &["-w", "\n%{http_code}", &url]);
        assert_eq!(code, 0, "{t}: {body}");
        let (body, status) = body.rsplit_once('\n').expect("status");
        assert_eq!(status, "200", "{t}: {body}");
        assert!(!body.contains(card), "{t}: the card got out: {body}");
        assert!(body.contains("************1111"), "{t}: not masked: {body}");
        assert!(
            !body.contains("keybodyline"),
            "{t}: the key got out: {body}"
        );
        if t == "escaped" || t == "begin" {
            // Still JSON, and what a client decodes holds neither value.
            let v: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let text = v.to_string();
            assert!(
                !text.contains(card) && !text.contains("jane.doe@"),
                "{text}"
            );
        }
    }
    for t in ["octet", "multipart", "unknown", "grpc"] {
        let url = format!("http://127.0.0.1:{}/typed/{t}", s.up.port);
        let (code, body) = curl_in(&s.cg, &["-w", "\n%{http_code}", &url]);
        assert_eq!(code, 0, "{t}: {body}");
        let (body, status) = body.rsplit_once('\n').expect("status");
        assert_eq!(status, "502", "{t}: {body}");
        assert!(body.contains("unmaskable_response"), "{t}: {body}");
        assert!(!body.contains(card), "{t}: the card got out: {body}");
        // The service that chose to let them pass: they do, as the upstream sent them.
        let url = format!("http://127.0.0.1:{}/typed/{t}", s.passing.port);
        let (code, body) = curl_in(&s.cg, &["-w", "\n%{http_code}", &url]);
        assert_eq!(code, 0, "{t}: {body}");
        assert!(
            body.ends_with("\n200") && body.contains(card),
            "{t} passes: {body}"
        );
    }
}

/// gRPC messages are protobuf, which the masker cannot read: a service that masks and does
/// not say `unmaskable: pass` refuses them (#11), and the client gets an error, not the
/// message.
#[test]
fn grpc_messages_on_a_masked_service_are_refused_by_default() {
    let Some(g) = grpc_setup(
        "grpc_messages_on_a_masked_service_are_refused_by_default",
        "refuse",
    ) else {
        return;
    };
    let port = g.port;
    let out = g.client(&format!(
        r#"
import grpc, json
with grpc.insecure_channel("127.0.0.1:{port}") as ch:
    try:
        print(json.dumps({{"ok": ch.unary_unary("/demo.Greeter/SayHello")(b"x", timeout=10).decode()}}))
    except grpc.RpcError as e:
        print(json.dumps({{"code": e.code().name, "details": e.details()}}))
"#
    ));
    let v: serde_json::Value = serde_json::from_str(&out).expect("client output");
    assert!(v.get("ok").is_none(), "the message got out: {v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap_or("")
            .contains("unmaskable_response"),
        "{v}"
    );
}

/// A running nginx serving `root`, stopped (workers too) when dropped.
struct Nginx(Party);

impl Drop for Nginx {
    fn drop(&mut self) {
        self.0.terminate(Duration::from_secs(5));
    }
}

fn nginx(dir: &std::path::Path, root: &std::path::Path, port: u16) -> Nginx {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; user root; worker_processes 1; pid {d}/nginx.pid; \
             error_log {d}/error.log; events {{ worker_connections 64; }} \
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d}; \
             types {{ application/json json; }} default_type application/octet-stream; \
             server {{ listen 127.0.0.1:{port}; root {r}; }} }}",
            d = dir.display(),
            r = root.display()
        ),
    )
    .expect("nginx.conf");
    Nginx(Party::start(
        &[
            "nginx",
            "-c",
            &conf.display().to_string(),
            "-p",
            &dir.display().to_string(),
        ],
        port,
        dir.join("nginx.log"),
    ))
}

/// nginx answers a `Range:` request for a JSON file with the ranges asked for: several as
/// `multipart/byteranges`, which was passed unmasked, one as a fragment cut where the card
/// may be. On a service that masks, ranges are taken off the request so nginx answers whole,
/// and the card is masked; it never reaches the client, in pieces or whole (#11).
#[test]
fn ranges_of_a_json_file_from_nginx_never_carry_the_card() {
    let test = "ranges_of_a_json_file_from_nginx_never_carry_the_card";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    if std::process::Command::new("nginx")
        .arg("-v")
        .output()
        .is_err()
    {
        skip(test, "nginx is not installed");
        return;
    }
    let dir = TestDir::new("callgate-leaks-nginx");
    let root = dir.join("www");
    std::fs::create_dir_all(&root).expect("www");
    let doc = r#"{"id": 7, "holder": "Jane", "card": "4111 1111 1111 1111", "note": "ok"}"#;
    std::fs::write(root.join("account.json"), doc).expect("json file");
    let at = doc.find("4111").expect("card");
    let port = free_port();
    let _nginx = nginx(&dir, &root, port);
    let policies = policy_repo(&dir, REPO, &[("files", &leaky("files", port, ""))]);
    let gw = gateway_with_config(&policies, "http:\n  header_timeout_s: 5\n", &dir);
    let cg = TestCgroup::new("leaks-nginx");
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{port}/account.json");
    // Straight to nginx (no cgroup): it does answer ranges, as multipart and as a fragment.
    let direct = std::process::Command::new("curl")
        .args([
            "-sS",
            "-H",
            &format!("Range: bytes=0-{},{}-", at + 6, at + 7),
            &url,
        ])
        .output()
        .expect("curl");
    let direct = String::from_utf8_lossy(&direct.stdout);
    assert!(
        direct.contains("multipart/byteranges") || direct.contains("--"),
        "{direct}"
    );
    for range in [
        format!("bytes=0-{},{}-", at + 6, at + 7),
        format!("bytes={}-{}", at + 5, at + 14),
        format!("bytes={at}-"),
    ] {
        for extra in [&[][..], &["-H", "If-Range: \"x\""][..]] {
            let mut args = vec!["-D", "-", "-H"];
            let h = format!("Range: {range}");
            args.push(&h);
            args.extend_from_slice(extra);
            args.push(&url);
            let (code, out) = curl_in(&cg, &args);
            assert_eq!(code, 0, "{range}: {out}");
            let digits: String = out.chars().filter(char::is_ascii_digit).collect();
            assert!(!out.contains("4111"), "{range}: {out}");
            assert!(!digits.contains("41111111"), "{range}: {out}");
            assert!(out.contains(" 200"), "answered whole: {range}: {out}");
            assert!(out.contains("************1111"), "{range}: {out}");
        }
    }
}

/// A service that masks a JSON field (`$.customer.ssn`) and cards: the same payment asked for
/// as XML or CSV has the SSN under no field path, and in UTF-16 the card's digits have a zero
/// byte between each, which no detector reads. Such answers are refused (502
/// `unmaskable_response`) unless the service lets them pass (XML then masked by the
/// detectors, the SSN with them only if a detector finds it). The callgate of d22a992 gave
/// the client the SSN in XML and CSV, and the card in UTF-16, with a 200.
#[test]
fn answers_a_field_mask_or_detector_cannot_read_are_refused() {
    let test = "answers_a_field_mask_or_detector_cannot_read_are_refused";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let up = upstream(&dir, None);
    let service = format!(
        "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         rules:\n  - {{ name: everything, action: allow }}\n\
         response:\n  mask: [card_number, email, {{ field: \"$.customer.ssn\" }}]\n",
        up.port
    );
    let policies = policy_repo(&dir, REPO, &[("payments", &service)]);
    let gw = gateway_with_config(&policies, "", &dir);
    let cg = TestCgroup::new("leaks-formats");
    gw.enable(&cg);
    let get = |query: &str| {
        let url = format!("http://127.0.0.1:{}/v1/payments/p_1{query}", up.port);
        let out = dir.join(unique("answer"));
        let (_, code) = curl_in(
            &cg,
            &[
                "-sS",
                "--max-time",
                "10",
                "-o",
                &out.display().to_string(),
                "-w",
                "%{http_code}",
                &url,
            ],
        );
        (code, std::fs::read(&out).unwrap_or_default())
    };
    let utf16 = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let has = |body: &[u8], v: &str| {
        body.windows(v.len()).any(|w| w == v.as_bytes())
            || body.windows(2 * v.len()).any(|w| w == utf16(v).as_slice())
    };
    // JSON: masked, both the field and the card.
    let (code, body) = get("");
    assert_eq!(code, "200", "{}", String::from_utf8_lossy(&body));
    assert!(
        !has(&body, "078-05-1120") && !has(&body, "4111 1111 1111 1111"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Keys in another case (`Customer.SSN`, as .NET and Go services write them, and Go and
    // .NET clients read them): the field path names them too (the callgate of 98d71bc gave
    // the client the SSN).
    let (code, body) = get("?format=pascal");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, "200", "{text}");
    assert!(!has(&body, "078-05-1120") && text.contains("SSN"), "{text}");
    // A list of payments: the field path reaches each element (the callgate of 79888ef gave
    // the client the SSN of `[{"customer": {"ssn": …}}]`).
    let (code, body) = get("?format=list");
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, "200", "{text}");
    assert!(
        !has(&body, "078-05-1120") && !has(&body, "4111 1111 1111 1111"),
        "{text}"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON list");
    assert_eq!(v[0]["customer"]["ssn"], "[MASKED:field]", "{text}");
    for query in ["?format=xml", "?format=csv", "?charset=utf-16"] {
        let (code, body) = get(query);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, "502", "{query}: {text}");
        assert!(text.contains("unmaskable_response"), "{query}: {text}");
        assert!(
            !has(&body, "078-05-1120") && !has(&body, "1111 1111"),
            "{query}: {text}"
        );
    }
}

/// A text label on bytes that are not UTF-8 text: UTF-16 and UTF-32 (which Python's
/// `json.loads` and browsers read by their zero bytes or byte-order mark, whatever the
/// label), and a gzip file served as `text/plain`. The detectors read ASCII and saw digits
/// apart; the previous binary let the card out in each. Now the body fails at its first such
/// bytes, and neither the client nor the record gets a digit of it, in any decoding.
#[test]
fn text_labels_on_bytes_that_are_not_text_carry_nothing_out() {
    let Some(s) = setup("text_labels_on_bytes_that_are_not_text_carry_nothing_out") else {
        return;
    };
    for t in ["utf16", "utf32", "gzipped"] {
        let url = format!("http://127.0.0.1:{}/typed/{t}", s.up.port);
        let code = format!(
            r#"
import gzip, http.client, urllib.request
try:
    b = urllib.request.urlopen({url:?}, timeout=5).read()
except http.client.IncompleteRead as e:
    b = e.partial
except Exception as e:
    b = b""
texts = [b.decode("utf-16", "ignore"), b.decode("utf-32-le", "ignore"), b.decode("latin-1")]
try:
    texts.append(gzip.decompress(b).decode("latin-1"))
except Exception:
    pass
print("LEAK" if any("4111" in x or "1111" in x for x in texts) else "CLEAN", len(b))
"#
        );
        let out = python_in(&s.cg, &code);
        assert!(out.starts_with("CLEAN"), "{t}: {out}");
    }
    // Each call is recorded as cut for that reason, with no answer kept.
    let recs = records(&s.gw);
    for t in ["utf16", "utf32", "gzipped"] {
        let r = recs
            .iter()
            .find(|r| r["function"].as_str() == Some(&format!("GET /typed/{t}")))
            .unwrap_or_else(|| panic!("no record of {t}: {recs:#?}"));
        let text = r.to_string();
        assert!(text.contains("holds bytes no text has"), "{t}: {text}");
        assert!(
            !text.contains("4\\u0000") && !text.contains("4\u{fffd}1") && !text.contains("1111"),
            "{t}: {text}"
        );
    }
}

/// A service that masks nothing still never writes raw values to disk: its record kept a
/// UTF-16 answer with each zero byte replaced (`4�1�1�1…`, read at a glance) and a gzip
/// file's bytes as they came. An answer that is not UTF-8 text is now not kept; the record
/// says how many bytes it had and why. The client gets the answer as the policy says.
#[test]
fn records_never_keep_answers_that_are_not_text() {
    let test = "records_never_keep_answers_that_are_not_text";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let up = upstream(&dir, None);
    let service = format!(
        "service: plain\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         rules:\n  - {{ name: everything, action: allow }}\n",
        up.port
    );
    let policies = policy_repo(&dir, REPO, &[("plain", &service)]);
    let gw = gateway_with_config(&policies, "", &dir);
    let cg = TestCgroup::new("leaks-not-text");
    gw.enable(&cg);
    for t in ["utf16", "utf32", "gzipped"] {
        let url = format!("http://127.0.0.1:{}/typed/{t}", up.port);
        assert_eq!(status_in(&cg, &[&url]), "200", "{t}: not masked, passed");
    }
    let recs = wait_for(Duration::from_secs(10), || {
        let r: Vec<_> = records(&gw)
            .into_iter()
            .filter(|r| {
                r["function"]
                    .as_str()
                    .is_some_and(|f| f.starts_with("GET /typed/"))
            })
            .collect();
        (r.len() == 3).then_some(r)
    })
    .unwrap_or_else(|| panic!("three records: {:#?}", records(&gw)));
    for r in &recs {
        let text = r["response"].to_string();
        assert!(text.contains("bytes not recorded: not UTF-8 text"), "{r}");
        assert!(!text.contains('\u{fffd}') && !text.contains("1111"), "{r}");
    }
}
