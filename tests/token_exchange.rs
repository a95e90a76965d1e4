//! Per-caller upstream tokens, end to end: a real OpenID provider (npm `oidc-provider`, with
//! an RFC 8693 token-exchange grant registered by the test fixture) issues callers their
//! access tokens; an unmodified curl in an enabled cgroup sends them; the gateway exchanges
//! each caller's verified token for one issued to the upstream and injects that instead. The
//! upstream (a real server that echoes what it got) sees a token for each caller, never the
//! caller's own; the answer never carries the issued token back; every way of not getting one
//! fails the call closed, saying why.
use std::{fs, process::Command, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    up: Party,
    idp: Oidc,
    _dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-tx");
    let idp = Oidc::start(&dir);
    let up = upstream(&dir, None);
    let secret = dir.join("gateway-client.secret");
    fs::write(&secret, "callgate-gateway-secret\n").expect("secret");
    let repo = format!(
        r#"default_action: deny
unknown_destination: deny
identity:
  providers:
    - {{ name: test-idp, issuer: "{issuer}", audiences: [payments], clock_skew_s: 0 }}
credentials:
  ledger-for-caller:
    token_exchange:
      token_url: "{issuer}/token"
      client_id: callgate-gateway
      client_secret: {{ file: "{secret}" }}
      audience: ledger
      scopes: [ledger.read]
"#,
        issuer = idp.issuer(),
        secret = secret.display()
    );
    // Anyone may call (so that a call without a token reaches the credential step); the
    // credential is the caller's own, exchanged.
    let service = format!(
        r#"
service: ledger
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  echo: {{ route: "GET /echo" }}
rules:
  - {{ name: echo, function: echo, action: allow }}
credentials:
  inject: {{ header: Authorization, from: {{ credential: ledger-for-caller }}, format: "Bearer {{}}" }}
"#,
        up.port
    );
    let policies = policy_repo(&dir, &repo, &[("ledger", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("tx");
    gw.enable(&cg);
    Some(Setup {
        gw,
        cg,
        up,
        idp,
        _dir: dir,
    })
}

impl Setup {
    /// GET /echo with `token` (if any): (HTTP status, body).
    fn echo(&self, token: Option<&str>) -> (u16, String) {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let url = format!("http://127.0.0.1:{}/echo", self.up.port);
        let mut argv = vec!["-w", "\n%{http_code}"];
        if let Some(a) = &auth {
            argv.extend(["-H", a]);
        }
        argv.push(&url);
        let (_, text) = curl_in(&self.cg, &argv);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// The Authorization the upstream got with its last request.
    fn upstream_saw(&self) -> String {
        let seen = self.up.requests();
        seen.last().expect("a request upstream")["headers"]["authorization"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// How many exchanges the provider made.
    fn exchanges(&self) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("{}/test/exchanges", self.idp.issuer()))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
    }
}

/// A JWT's claims.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys,base64; p=sys.argv[1]; print(base64.urlsafe_b64decode(p+'='*(-len(p)%4)).decode())",
            payload,
        ])
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn each_caller_reaches_the_upstream_with_its_own_exchanged_token() {
    let Some(s) = setup("each_caller_reaches_the_upstream_with_its_own_exchanged_token") else {
        return;
    };
    let a = s.idp.token("billing-agent", None);
    let b = s.idp.token("support-bot", None);

    // Caller A: the upstream gets a token the provider issued for the ledger, naming A and
    // the gateway as the actor; not A's own token.
    let first = std::time::Instant::now();
    let (code, body) = s.echo(Some(&a));
    let first = first.elapsed();
    assert_eq!(code, 200, "{body}\n{}", s.gw.log());
    let sent_a = s.upstream_saw();
    let token_a = sent_a
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("{sent_a}"))
        .to_string();
    assert_ne!(token_a, a, "the caller's own token went upstream");
    let c = claims(&token_a);
    assert_eq!(c["sub"], "billing-agent", "{c}");
    assert_eq!(c["aud"], "ledger", "{c}");
    assert_eq!(c["scope"], "ledger.read", "{c}");
    assert_eq!(c["act"]["sub"], "callgate-gateway", "{c}");
    // The upstream echoes what it got: the issued token never comes back.
    assert!(!body.contains(&token_a), "leaked to the caller: {body}");
    assert!(
        !body.contains(&token_a[token_a.len() - 43..]),
        "the signature's end leaked: {body}"
    );
    assert!(body.contains("[MASKED:credential]"), "{body}");

    // Caller B: a token of its own.
    let (code, body) = s.echo(Some(&b));
    assert_eq!(code, 200, "{body}");
    let sent_b = s.upstream_saw();
    let token_b = sent_b
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_string();
    assert_ne!(token_b, token_a);
    assert_ne!(token_b, b);
    assert_eq!(claims(&token_b)["sub"], "support-bot");
    assert!(!body.contains(&token_b), "leaked to the caller: {body}");
    assert_eq!(s.exchanges(), 2);

    // Kept per caller: A and B again reuse theirs, the provider is not asked.
    for _ in 0..3 {
        let (code, _) = s.echo(Some(&a));
        assert_eq!(code, 200);
        assert_eq!(s.upstream_saw(), sent_a, "A's token was reused");
        let (code, _) = s.echo(Some(&b));
        assert_eq!(code, 200);
        assert_eq!(s.upstream_saw(), sent_b, "B's token was reused");
    }
    assert_eq!(s.exchanges(), 2, "cached: no further exchange");
    let cached = std::time::Instant::now();
    s.echo(Some(&a));
    eprintln!(
        "first call (with the exchange) {first:?}, a cached one {:?}",
        cached.elapsed()
    );

    // The records name each caller and never hold either token.
    let r = record_where(&s.gw, "A's call", |r| {
        r["caller"]["subject"] == "billing-agent" && r["decision"]["action"] == "allow"
    });
    assert_eq!(r["status"], 200, "{r}");
    let exported = serde_json::to_string(&records(&s.gw)).unwrap();
    for t in [&token_a, &token_b, &a, &b] {
        assert!(!exported.contains(t.as_str()), "a token in the records");
    }
}

#[test]
fn no_token_or_no_exchange_fails_closed() {
    let Some(mut s) = setup("no_token_or_no_exchange_fails_closed") else {
        return;
    };
    let calls_before = s.up.requests().len();

    // No caller token: refused before anything goes out, saying why.
    let (code, body) = s.echo(None);
    assert_eq!(code, 401, "{body}\n{}", s.gw.log());
    assert!(body.contains("caller_token_required"), "{body}");
    assert!(body.contains("no bearer token"), "{body}");

    // A token that does not verify is not exchanged either.
    let (code, body) = s.echo(Some("not-a-jwt"));
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("invalid_token"), "{body}");
    assert_eq!(s.exchanges(), 0, "nothing was exchanged");

    // The provider refuses (it will not let `intern` act at the ledger): 502 with its words.
    let intern = s.idp.token("intern", None);
    let (code, body) = s.echo(Some(&intern));
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("token_exchange_refused"), "{body}");
    assert!(body.contains("may not act at ledger"), "{body}");
    let r = record_where(&s.gw, "the refused exchange", |r| {
        r["caller"]["subject"] == "intern"
    });
    let reason = r["decision"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("token_exchange_refused"), "{r}");
    assert_eq!(r["status"], 502, "{r}");

    // The provider goes away: a caller with no token yet is refused (503), not let through
    // with something else; a caller whose token is cached carries on.
    let a = s.idp.token("billing-agent", None);
    let b = s.idp.token("support-bot", None);
    let (code, _) = s.echo(Some(&a));
    assert_eq!(code, 200, "{}", s.gw.log());
    s.idp.stop();
    let started = std::time::Instant::now();
    let (code, body) = s.echo(Some(&b));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("token_exchange_unavailable"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(8), "bounded");
    let r = record_where(&s.gw, "the unavailable exchange", |r| {
        r["caller"]["subject"] == "support-bot"
    });
    let reason = r["decision"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("token_exchange_unavailable"), "{r}");
    let (code, _) = s.echo(Some(&a));
    assert_eq!(code, 200, "A's cached token");

    // Only A's two calls reached the upstream; the four refused are counted.
    assert_eq!(s.up.requests().len(), calls_before + 2);
    assert_eq!(s.gw.counter("token_exchange_failures"), 4);
}
