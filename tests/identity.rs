//! Who is calling, end to end: a real OpenID provider (npm `oidc-provider`) issues access
//! tokens to service accounts; an unmodified curl in an enabled cgroup sends them; the
//! gateway verifies each against the provider's published keys and decides on the groups in
//! it and on the workload the kernel reported. Also: the credential the gateway injects never
//! comes back out, whatever the upstream echoes.
use std::{fs, path::Path, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

struct Setup {
    gw: Gateway,
    /// Enabled; its path is the one the refund rule names.
    home: TestCgroup,
    /// Enabled too, but not the refund rule's.
    other: TestCgroup,
    up: Party,
    idp: Oidc,
    /// Removed with the setup.
    _dir: TestDir,
}

const SECRET: &str = "gw-held-credential-7f3a9c";

fn repo(issuer: &str, provider_extra: &str) -> String {
    format!(
        r#"default_action: deny
unknown_destination: deny
identity:
  providers:
    - name: test-idp
      issuer: "{issuer}"
      audiences: [payments]
      groups_claim: groups
      clock_skew_s: 0
      unknown_key_refresh_s: 1
{provider_extra}"#
    )
}

fn payments(port: u16, home: &TestCgroup, secret: &Path) -> String {
    let home = home.path.file_name().unwrap().to_string_lossy();
    format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  echo: {{ route: "GET /echo" }}
  echo_text: {{ route: "GET /echo.txt" }}
  echo_enc: {{ route: "GET /echo-enc/{{how}}" }}
rules:
  - name: finance-refunds-from-home-as-root
    function: refund
    caller: {{ groups: [finance], workload: {{ cgroup: "{home}", user: root }} }}
    action: allow
  - name: finance-reads
    function: get_payment
    caller: {{ groups: [finance] }}
    action: allow
  - {{ name: echo, function: echo, caller: {{ authenticated: true }}, action: allow }}
  - {{ name: echo-text, function: echo_text, caller: {{ authenticated: true }}, action: allow }}
  - {{ name: echo-enc, function: echo_enc, caller: {{ authenticated: true }}, action: allow }}
credentials:
  inject: {{ header: X-Api-Key, from: {{ file: "{}" }} }}
"#,
        secret.display()
    )
}

fn setup(test: &str, provider_extra: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-identity");
    let secret = dir.join("payments.secret");
    fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    let idp = Oidc::start(&dir);
    let up = upstream(&dir, None);
    let home = TestCgroup::new("id-home");
    let other = TestCgroup::new("id-other");
    let policies = policy_repo(
        &dir,
        &repo(&idp.issuer(), provider_extra),
        &[("payments", &payments(up.port, &home, &secret))],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    gw.enable(&home);
    gw.enable(&other);
    Some(Setup {
        gw,
        home,
        other,
        up,
        idp,
        _dir: dir,
    })
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.up.port)
    }

    /// GET `path` from `cg` with `token` (if any): (HTTP status, body).
    fn get(&self, cg: &TestCgroup, path: &str, token: Option<&str>) -> (u16, String) {
        self.call(cg, &[], path, token, &[])
    }

    fn call(
        &self,
        cg: &TestCgroup,
        prefix: &[&str],
        path: &str,
        token: Option<&str>,
        extra: &[&str],
    ) -> (u16, String) {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let url = self.url(path);
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend(["curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
        if let Some(a) = &auth {
            argv.extend(["-H", a]);
        }
        argv.extend_from_slice(extra);
        argv.push(&url);
        let out = cg.run(&argv);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn refund(&self, cg: &TestCgroup, prefix: &[&str], token: Option<&str>) -> (u16, String) {
        self.call(
            cg,
            prefix,
            "/v1/payments/p_1/refund",
            token,
            &[
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"amount": 5}"#,
            ],
        )
    }

    /// The record of the last call whose caller matches `pred`.
    fn caller_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        record_where(&self.gw, what, |r| pred(&r["caller"]))
    }
}

#[test]
fn tokens_are_verified_against_the_provider() {
    let Some(mut s) = setup("tokens_are_verified_against_the_provider", "") else {
        return;
    };
    let path = "/v1/payments/p_1";

    // A finance service account: allowed, and the record names it.
    let finance = s.idp.token("billing-agent", None);
    let (code, body) = s.get(&s.home, path, Some(&finance));
    assert_eq!(code, 200, "{body}\n{}", s.gw.log());
    let r = s.caller_record("the finance call", |c| c["subject"] == "billing-agent");
    assert_eq!(r["caller"]["authenticated"], true, "{r}");
    assert_eq!(r["caller"]["groups"], serde_json::json!(["finance"]), "{r}");
    assert_eq!(r["caller"]["provider"], "test-idp", "{r}");
    assert_eq!(r["decision"]["rule"], "finance-reads", "{r}");
    assert!(
        !serde_json::to_string(&r).unwrap().contains(&finance),
        "the token itself is not recorded: {r}"
    );

    // A valid token, but not in the group; and no token at all.
    let support = s.idp.token("support-bot", None);
    let (code, body) = s.get(&s.home, path, Some(&support));
    assert_eq!(code, 403, "{body}");
    let (code, _) = s.get(&s.home, path, None);
    assert_eq!(code, 403);

    // Tokens that must not identify anyone; each reason reaches the caller and the record.
    let expiring = s.idp.token("short-lived", None);
    let wrong_audience = s.idp.token("billing-agent", Some("urn:callgate:other"));
    let cases = [
        ("wrong audience", wrong_audience),
        ("bad signature", s.idp.forged("otherkey")),
        ("alg none", s.idp.forged("none")),
        ("malformed", "not-a-jwt".to_string()),
    ];
    for (why, token) in &cases {
        let (code, body) = s.get(&s.home, path, Some(token));
        assert_eq!(code, 403, "{why}: {body}");
        assert!(
            body.contains(&format!("invalid_token: {why}")),
            "{why}: the answer says why: {body}"
        );
        s.caller_record(why, |c| {
            c["token_error"]
                .as_str()
                .is_some_and(|e| e.starts_with(&format!("invalid_token: {why}")))
                && c["authenticated"] == false
        });
    }
    // The short-lived token (2 s) was good when issued; past its exp it is refused.
    std::thread::sleep(Duration::from_millis(3100));
    let (code, body) = s.get(&s.home, path, Some(&expiring));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("invalid_token: expired"), "{body}");

    // Key rotation: the provider signs with a new key; the gateway has never seen its kid,
    // fetches the key set again (rate-limited) and accepts the token.
    let old_kid = jwt_kid(&finance);
    s.idp.restart(true);
    let rotated = s.idp.token("billing-agent", None);
    assert_ne!(jwt_kid(&rotated), old_kid, "the provider rotated its key");
    let fetches_before = s.gw.status()["identity"][0]["fetches"]
        .as_u64()
        .unwrap_or(0);
    let (code, body) = s.get(&s.home, path, Some(&rotated));
    assert_eq!(code, 200, "rotated key: {body}\n{}", s.gw.log());
    let st = s.gw.status();
    let p = &st["identity"][0];
    assert!(
        p["fetches"].as_u64().unwrap_or(0) > fetches_before,
        "keys were fetched again: {p}"
    );
    assert_eq!(p["usable"], true, "{p}");
    assert!(s.gw.counter("tokens_verified") >= 2);
    assert!(s.gw.counter("tokens_rejected") >= 5);
}

#[test]
fn a_rule_can_require_both_the_token_and_the_workload() {
    let Some(s) = setup("a_rule_can_require_both_the_token_and_the_workload", "") else {
        return;
    };
    let finance = s.idp.token("billing-agent", None);

    // Finance token, the named cgroup, as root: the only combination allowed.
    let (code, body) = s.refund(&s.home, &[], Some(&finance));
    assert_eq!(code, 200, "{body}\n{}", s.gw.log());
    let r = record_where(&s.gw, "the allowed refund", |r| {
        r["function"] == "refund" && r["decision"]["action"] == "allow"
    });
    assert_eq!(r["workload"]["user"], "root", "{r}");
    assert!(
        r["workload"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("/curl")),
        "{r}"
    );

    // The same call from another cgroup, without the token, or as another user: denied.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    for (what, cg, prefix, token) in [
        ("another cgroup", &s.other, &[][..], Some(finance.as_str())),
        ("no token", &s.home, &[][..], None),
        ("another user", &s.home, &nobody[..], Some(finance.as_str())),
    ] {
        let before = s.up.requests().len();
        let (code, body) = s.refund(cg, prefix, token);
        assert_eq!(code, 403, "{what}: {body}");
        assert_eq!(s.up.requests().len(), before, "{what}: upstream untouched");
    }
    let denied = wait_for(Duration::from_secs(10), || {
        let d: Vec<Value> = records(&s.gw)
            .into_iter()
            .filter(|r| r["function"] == "refund" && r["decision"]["action"] == "deny")
            .collect();
        (d.len() == 3).then_some(d)
    })
    .unwrap_or_else(|| panic!("three denied refunds on record: {:#?}", records(&s.gw)));
    assert!(
        denied
            .iter()
            .any(|r| r["workload"]["uid"] == 65534 && r["workload"]["user"] == "nobody"),
        "{denied:#?}"
    );
}

#[test]
fn cached_keys_outlive_the_provider_then_fail_closed() {
    let Some(mut s) = setup(
        "cached_keys_outlive_the_provider_then_fail_closed",
        "      jwks_refresh_s: 1\n      jwks_max_age_s: 4\n",
    ) else {
        return;
    };
    let path = "/v1/payments/p_1";
    let finance = s.idp.token("billing-agent", None);
    let (code, body) = s.get(&s.home, path, Some(&finance));
    assert_eq!(code, 200, "{body}\n{}", s.gw.log());

    // The provider goes away: the keys fetched last keep working for a while…
    s.idp.stop();
    let (code, body) = s.get(&s.home, path, Some(&finance));
    assert_eq!(code, 200, "cached keys: {body}");

    // …and once they are older than jwks_max_age_s, tokens identify nobody.
    let refused = wait_for(Duration::from_secs(15), || {
        let (code, body) = s.get(&s.home, path, Some(&finance));
        (code == 403).then_some(body)
    })
    .expect("calls are refused once the keys are too old");
    assert!(refused.contains("invalid_token: keys expired"), "{refused}");
    let st = s.gw.status();
    let p = &st["identity"][0];
    assert_eq!(p["usable"], false, "{p}");
    assert!(p["last_error"].is_string(), "status says why: {p}");
    let out = s.gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("KEYS EXPIRED"), "{text}");
}

#[test]
fn the_injected_credential_never_comes_back() {
    let Some(s) = setup("the_injected_credential_never_comes_back", "") else {
        return;
    };
    let finance = s.idp.token("billing-agent", None);

    // The upstream quotes the request's headers in its JSON body, in a response header and
    // as plain text: the secret reached it, and none of it reaches the caller.
    let (code, body) = s.call(&s.home, &[], "/echo", Some(&finance), &["-i"]);
    assert_eq!(code, 200, "{body}");
    let seen = s.up.requests();
    assert_eq!(seen.last().unwrap()["headers"]["x-api-key"], SECRET);
    assert!(!body.contains(SECRET), "leaked to the caller: {body}");
    assert!(body.contains("[MASKED:credential]"), "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("x-echo-key: [masked:credential]"),
        "{body}"
    );
    let (code, body) = s.get(&s.home, "/echo.txt", Some(&finance));
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains(SECRET), "leaked to the caller: {body}");
    assert!(body.contains("[MASKED:credential]"), "{body}");

    // Re-spelled (JSON \u escapes, percent-encoding, HTML entities): still scrubbed. Compressed
    // (the service masks nothing, so nothing else would look): refused, never passed on. In
    // a trailer: scrubbed like a header.
    let spellings = [
        (
            "unicode",
            SECRET
                .chars()
                .map(|c| format!("\\u{:04x}", c as u32))
                .collect::<String>(),
        ),
        ("pct", SECRET.bytes().map(|b| format!("%{b:02X}")).collect()),
        ("html", SECRET.bytes().map(|b| format!("&#{b};")).collect()),
    ];
    for (how, spelled) in &spellings {
        let (code, body) = s.get(&s.home, &format!("/echo-enc/{how}"), Some(&finance));
        assert_eq!(code, 200, "{how}: {body}");
        assert!(!body.contains(spelled.as_str()), "{how}: leaked: {body}");
        assert!(body.contains("[MASKED:credential]"), "{how}: {body}");
    }
    // Whole-value encodings: base64 in a Flask-style session cookie and a Basic
    // authorization, UTF-16 in a binary body, hex, upper case. The previous binary passed
    // each as it came.
    for how in ["session", "basic", "utf16", "hex", "upper"] {
        let (code, body) = s.call(
            &s.home,
            &[],
            &format!("/echo-enc/{how}"),
            Some(&finance),
            &["-i"],
        );
        assert_eq!(code, 200, "{how}: {body}");
        let body = body.replace('\0', "");
        assert!(body.contains("[MASKED:credential]"), "{how}: {body}");
        assert!(
            !body
                .to_ascii_uppercase()
                .contains(&SECRET.to_ascii_uppercase()),
            "{how}: {body}"
        );
    }
    let (code, body) = s.call(
        &s.home,
        &[],
        "/echo-enc/gzip",
        Some(&finance),
        &["-H", "Accept-Encoding: gzip"],
    );
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("unmaskable_response"), "{body}");
    let seen = s.up.requests();
    assert!(
        seen.last().unwrap()["headers"]
            .get("accept-encoding")
            .is_none(),
        "a call that carries a credential asks for a readable answer: {}",
        seen.last().unwrap()
    );
    let raw = python_in(
        &s.home,
        &format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {}), 5)\n\
             s.sendall(b'GET /echo-enc/trailer HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nTE: trailers\\r\\n\
             Authorization: Bearer {finance}\\r\\nConnection: close\\r\\n\\r\\n')\n\
             out = b''\nwhile len(out) < 65536:\n    c = s.recv(4096)\n    if not c: break\n    out += c\n\
             print(out.decode(errors='replace'))",
            s.up.port
        ),
    );
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(!raw.contains(SECRET), "leaked in a trailer: {raw}");

    // Nothing the gateway wrote holds it: records (exported, and the files themselves),
    // its log, its state.
    record_where(&s.gw, "the echo", |r| r["function"] == "echo_text");
    let exported = serde_json::to_string(&records(&s.gw)).unwrap();
    assert!(exported.contains("[MASKED:credential]"), "{exported}");
    assert!(!exported.contains(SECRET), "in the records: {exported}");
    let mut files = 0;
    let mut stack = vec![s.gw.dir.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = fs::read(&p) {
                files += 1;
                assert!(
                    !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "{} holds the secret",
                    p.display()
                );
            }
        }
    }
    assert!(files >= 3, "looked at {files} files");
}

#[test]
fn an_upstream_token_is_got_with_client_credentials() {
    let test = "an_upstream_token_is_got_with_client_credentials";
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return;
    }
    let dir = TestDir::new("callgate-oauth2");
    let mut idp = Oidc::start(&dir);
    let up = upstream(&dir, None);
    let secret = dir.join("client.secret");
    fs::write(&secret, "support-bot-secret\n").expect("secret");
    // The gateway is its own OAuth2 client (support-bot) for tokens meant for other-api; the
    // caller's own token only says who is calling.
    let repo = format!(
        r#"{}
credentials:
  upstream-token:
    oauth2:
      token_url: "{}/token"
      client_id: support-bot
      client_secret: {{ file: "{}" }}
      resource: urn:callgate:other
"#,
        repo(&idp.issuer(), ""),
        idp.issuer(),
        secret.display()
    );
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  echo: {{ route: "GET /echo" }}
rules:
  - {{ name: echo, function: echo, caller: {{ authenticated: true }}, action: allow }}
credentials:
  inject: {{ header: Authorization, from: {{ credential: upstream-token }}, format: "Bearer {{}}" }}
"#,
        up.port
    );
    let policies = policy_repo(&dir, &repo, &[("payments", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new("oauth2");
    gw.enable(&cg);
    let caller = idp.token("billing-agent", None);
    let echo = || {
        let (code, body) = curl_in(
            &cg,
            &[
                "-H",
                &format!("Authorization: Bearer {caller}"),
                &format!("http://127.0.0.1:{}/echo", up.port),
            ],
        );
        assert_eq!(code, 0, "{body}");
        let sent = up.requests().last().expect("a request upstream")["headers"]["authorization"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (body, sent)
    };

    // The upstream gets the gateway's token, not the caller's; the caller never sees it.
    let (body, first) = echo();
    let token = first
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("{first}\n{}", gw.log()));
    assert_eq!(
        token.split('.').count(),
        3,
        "a JWT from the provider: {first}"
    );
    assert_ne!(token, caller, "the caller's token was replaced");
    assert!(!body.contains(token), "leaked to the caller: {body}");
    assert!(body.contains("[MASKED:credential]"), "{body}");

    // Kept until shortly before it expires: the next call reuses it, even with the provider
    // down meanwhile.
    idp.stop();
    let (_, second) = echo();
    assert_eq!(second, first, "the token was reused");
}

/// GET `url` with curl from `cg` (as `prefix`, e.g. setpriv): the HTTP status.
fn get_status(cg: &TestCgroup, prefix: &[&str], url: &str) -> u16 {
    let mut argv: Vec<&str> = prefix.to_vec();
    argv.extend([
        "curl",
        "-sS",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    ]);
    let out = cg.run(&argv);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn workload_names_below_a_delegation_boundary_do_not_identify() {
    let test = "workload_names_below_a_delegation_boundary_do_not_identify";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new("callgate-identity");
    let up = upstream(&dir, None);
    // A slice of the test's own, laid out as systemd lays out units: a system service, and a
    // user manager (user@4242.service, which systemd delegates to uid 4242) in which the user
    // made a cgroup with the service's name.
    let mount = cgroup_mount().expect("cgroup v2 mount");
    let slice = format!("{}.slice", unique("id-deleg"));
    fs::create_dir_all(mount.join(&slice)).expect("mkdir slice");
    let top = TestCgroup {
        path: mount.join(&slice),
    };
    let agent = top.child("billing-agent.service");
    let users = top.child("x.slice");
    let manager = users.child("user@4242.service");
    let apps = manager.child("app.slice");
    let fake = apps.child("billing-agent.service");
    let trusted = top.child("trusted");
    let trusted_x = top.child("trustedX");
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  echo: {{ route: "GET /echo" }}
rules:
  - name: billing-agent-reads
    function: get_payment
    caller: {{ workload: {{ unit: billing-agent.service }} }}
    action: allow
  - name: trusted-echo
    function: echo
    caller: {{ workload: {{ cgroup: "{slice}/trusted" }} }}
    action: allow
"#,
        port = up.port
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &service)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    gw.enable(&top);
    let payment = format!("http://127.0.0.1:{}/v1/payments/p_1", up.port);
    let echo = format!("http://127.0.0.1:{}/echo", up.port);
    let as_user = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups"];

    // The real unit: allowed.
    assert_eq!(get_status(&agent, &[], &payment), 200, "{}", gw.log());
    let r = record_where(&gw, "the allowed read", |r| {
        r["function"] == "get_payment" && r["decision"]["action"] == "allow"
    });
    assert_eq!(r["workload"]["unit"], "billing-agent.service", "{r}");

    // The user's look-alike below its own manager: denied, the upstream never sees it, and
    // the record names the unit systemd would (with the user unit apart).
    let before = up.requests().len();
    assert_eq!(get_status(&fake, &as_user, &payment), 403);
    assert_eq!(up.requests().len(), before, "upstream untouched");
    let r = record_where(&gw, "the denied look-alike", |r| {
        r["function"] == "get_payment" && r["decision"]["action"] == "deny"
    });
    assert_eq!(r["workload"]["unit"], "user@4242.service", "{r}");
    assert_eq!(r["workload"]["user_unit"], "billing-agent.service", "{r}");
    assert_eq!(r["workload"]["user_unit_uid"], 4242, "{r}");
    assert_eq!(r["workload"]["uid"], 4242, "{r}");

    // A cgroup prefix is whole components: `trusted` matches, `trustedX` does not.
    assert_eq!(get_status(&trusted, &[], &echo), 200, "{}", gw.log());
    let before = up.requests().len();
    assert_eq!(get_status(&trusted_x, &[], &echo), 403);
    assert_eq!(up.requests().len(), before, "upstream untouched");
    let r = record_where(&gw, "the denied sibling", |r| {
        r["function"] == "echo" && r["decision"]["action"] == "deny"
    });
    assert!(
        r["workload"]["cgroup"]
            .as_str()
            .is_some_and(|c| c.ends_with("/trustedX")),
        "{r}"
    );
}

#[test]
fn a_partner_providers_groups_are_not_corps() {
    let test = "a_partner_providers_groups_are_not_corps";
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return;
    }
    // Two real providers, each with its own keys and audience; both put `groups: [finance]`
    // in billing-agent's token.
    let dir = TestDir::new("callgate-identity");
    let partner_dir = TestDir::new("callgate-identity-partner");
    let corp = Oidc::start(&dir);
    let partner = Oidc::start(&partner_dir);
    let up = upstream(&dir, None);
    let cg = TestCgroup::new("id-providers");
    let repo = format!(
        r#"default_action: deny
unknown_destination: deny
identity:
  default_provider: corp
  providers:
    - {{ name: corp, issuer: "{}", audiences: [payments], clock_skew_s: 0 }}
    - {{ name: partner, issuer: "{}", audiences: [other-api], clock_skew_s: 0 }}
"#,
        corp.issuer(),
        partner.issuer()
    );
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  echo: {{ route: "GET /echo" }}
rules:
  - name: corp-finance-reads
    function: get_payment
    caller: {{ provider: corp, groups: [finance] }}
    action: allow
  - name: finance-echo
    function: echo
    caller: {{ groups: [finance] }}   # the default provider's: corp
    action: allow
"#,
        up.port
    );
    let policies = policy_repo(&dir, &repo, &[("payments", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    gw.enable(&cg);
    let corp_token = corp.token("billing-agent", None);
    let partner_token = partner.token("billing-agent", Some("urn:callgate:other"));
    let call = |path: &str, token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        let url = format!("http://127.0.0.1:{}{path}", up.port);
        let out = cg.run(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &auth,
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u16>()
            .unwrap_or(0)
    };

    for path in ["/v1/payments/p_1", "/echo"] {
        assert_eq!(call(path, &corp_token), 200, "corp: {path}\n{}", gw.log());
        let before = up.requests().len();
        assert_eq!(call(path, &partner_token), 403, "partner: {path}");
        assert_eq!(up.requests().len(), before, "{path}: upstream untouched");
    }
    // The partner's token did verify (it is a caller of the partner), and was refused only
    // because its groups are not corp's.
    let r = record_where(&gw, "the partner's refused read", |r| {
        r["function"] == "get_payment"
            && r["decision"]["action"] == "deny"
            && r["caller"]["provider"] == "partner"
    });
    assert_eq!(r["caller"]["authenticated"], true, "{r}");
    assert_eq!(r["caller"]["groups"], serde_json::json!(["finance"]), "{r}");
    let r = record_where(&gw, "corp's read", |r| {
        r["function"] == "get_payment" && r["decision"]["action"] == "allow"
    });
    assert_eq!(r["caller"]["provider"], "corp", "{r}");
}

/// A request carries one bearer token, or none: the call is decided on the token the gateway
/// verifies and forwarded as sent. Found by an attacker's pass: with `token_headers:
/// [authorization, x-mcp-token]`, an intern's token in `Authorization` and a support bot's in
/// `X-Mcp-Token` (or `Authorization` twice) was decided as the intern and reached the upstream
/// carrying the bot's token, which the policy denies refunds. Now refused with 400
/// `ambiguous_token`; so is an `access_token` in the query (RFC 6750 servers read it).
/// Basic credentials for the upstream beside a token in a header of its own stay allowed.
#[test]
fn a_request_carries_one_bearer_token() {
    let test = "a_request_carries_one_bearer_token";
    if !ebpf_available(test) || !parties_available(test) || !node_parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    let idp = Oidc::start(&dir);
    let up = upstream(&dir, None);
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
rules:
  - name: support-may-not-refund
    function: refund
    caller: {{ groups: [support] }}
    action: deny
  - name: authenticated-may-refund
    function: refund
    caller: {{ authenticated: true }}
    action: allow
"#,
        port = up.port
    );
    let repo = format!(
        "default_action: deny\nunknown_destination: deny\nidentity:\n  token_headers: [authorization, x-mcp-token]\n  providers:\n    - name: test-idp\n      issuer: \"{}\"\n      audiences: [payments]\n      groups_claim: groups\n",
        idp.issuer()
    );
    let policies = policy_repo(&dir, &repo, &[("payments", &service)]);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1/refund", up.port);
    let (support, intern) = (idp.token("support-bot", None), idp.token("intern", None));
    let send = |headers: &[String], url: &str, body: &str| {
        let mut argv = vec![
            "curl".to_string(),
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-w".into(),
            "\n%{http_code}".into(),
            "-d".into(),
            body.to_string(),
        ];
        for h in headers {
            argv.push("-H".into());
            argv.push(h.clone());
        }
        argv.push(url.to_string());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = cg.run(&argv);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().to_string(), body.to_string())
    };
    let json = "Content-Type: application/json".to_string();
    let post = |headers: &[String], url: &str| {
        let mut all = vec![json.clone()];
        all.extend_from_slice(headers);
        send(&all, url, r#"{"amount": 5}"#)
    };
    let auth = |t: &str| format!("Authorization: Bearer {t}");
    let mcp = |t: &str| format!("X-Mcp-Token: {t}");
    // Each token alone is decided on its own, in any spelling a server reads as a bearer
    // token (a tab after the scheme: Django REST framework and Go split on any whitespace).
    assert_eq!(post(&[auth(&support)], &url).0, "403");
    assert_eq!(
        post(&[format!("Authorization: Bearer\t{support}")], &url).0,
        "403"
    );
    assert_eq!(post(&[mcp(&support)], &url).0, "403");
    assert_eq!(post(&[auth(&intern)], &url).0, "200");
    let ran = up.requests().len();
    for (what, headers, target) in [
        (
            "two headers",
            vec![auth(&intern), mcp(&support)],
            url.clone(),
        ),
        (
            "Authorization twice",
            vec![auth(&intern), auth(&support)],
            url.clone(),
        ),
        (
            "a bearer token after another scheme",
            vec![format!(
                "Authorization: Basic Zm9vOmJhcg==, Bearer {support}"
            )],
            url.clone(),
        ),
        (
            "a token without a scheme",
            vec![format!("Authorization: {support}")],
            url.clone(),
        ),
        (
            "a query token",
            vec![auth(&intern)],
            format!("{url}?access_token={support}"),
        ),
    ] {
        let (code, body) = post(&headers, &target);
        assert!(
            code == "400" && body.contains("ambiguous_token"),
            "{what}: {code} {body}"
        );
    }
    // A token in the body (RFC 6750's form parameter, read from JSON too) and a header of
    // the gateway's own with another scheme.
    for (what, headers, body) in [
        (
            "a form's access_token",
            vec![
                auth(&intern),
                "Content-Type: application/x-www-form-urlencoded".to_string(),
            ],
            format!("amount=5&access_token={support}"),
        ),
        (
            "a JSON body's access_token",
            vec![auth(&intern), json.clone()],
            format!(r#"{{"amount": 5, "Access_Token": "{support}"}}"#),
        ),
        (
            "another scheme in X-Mcp-Token",
            vec![
                auth(&intern),
                json.clone(),
                format!("X-Mcp-Token: Token {support}"),
            ],
            r#"{"amount": 5}"#.to_string(),
        ),
    ] {
        let (code, out) = send(&headers, &url, &body);
        assert!(
            code == "400" && out.contains("ambiguous_token"),
            "{what}: {code} {out}"
        );
    }
    assert_eq!(
        up.requests().len(),
        ran,
        "nothing more reached the upstream"
    );
    // The same token twice over is one token; Basic credentials beside a token are the
    // upstream's.
    assert_eq!(post(&[auth(&intern), mcp(&intern)], &url).0, "200");
    assert_eq!(
        post(
            &["Authorization: Basic dXNlcjpwdw==".into(), mcp(&intern)],
            &url
        )
        .0,
        "200"
    );
}

/// A credential with a quote, a backslash or HTML's specials in it never comes back either:
/// an upstream that echoes its request as JSON writes it `gw-key\"7f3a\\9c…`, which the
/// scrubber did not know (found by an attacker's pass: the caller decoded the exact secret
/// from the echo, and the record held it).
#[test]
fn a_credential_with_a_quote_never_comes_back() {
    let test = "a_credential_with_a_quote_never_comes_back";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = TestDir::new(test);
    const SECRET: &str = r#"gw-key"7f3a\9c&x<y"#;
    let secret = dir.join("k.secret");
    fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    let up = upstream(&dir, None);
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  echo: {{ route: "GET /echo" }}
rules:
  - {{ name: echo, function: echo, action: allow }}
credentials:
  inject: {{ header: X-Api-Key, from: {{ file: "{file}" }} }}
"#,
        port = up.port,
        file = secret.display()
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &service)],
    );
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    let out = cg.run(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        &format!("http://127.0.0.1:{}/echo", up.port),
    ]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        up.requests()
            .last()
            .map(|r| r["headers"]["x-api-key"].clone()),
        Some(Value::String(SECRET.into())),
        "the upstream got the credential"
    );
    // Looked for by its parts that are not hex: "7f3a" alone turns up in record ids and hashes.
    let holds = |s: &str| s.contains("gw-key") || s.contains("9c&x") || s.contains("9c\\u0026x");
    assert!(
        !holds(&body) && body.contains("[MASKED:credential]"),
        "the echo came back scrubbed: {body}"
    );
    let recs = wait_for(Duration::from_secs(10), || {
        let r = records(&gw);
        r.iter().any(|r| r["function"] == "echo").then_some(r)
    })
    .expect("the call's record");
    let all = serde_json::to_string(&recs).expect("records");
    assert!(!holds(&all), "a record holds the credential: {all}");
}
