//! No bypass: what the policy decides is exactly what the upstream runs. Each attack is an
//! unmodified client in an enabled cgroup spelling a denied call some other way, against a
//! real upstream that would run it if the gateway had decided on one reading and forwarded
//! another: Flask (werkzeug decodes `%72efund` and routes it to `refund`, reads JSON sent as
//! text, coerces `"5000"`), nginx (removes `/./` and `/x/../`, merges slashes), and an
//! upstream that logs every JSON-RPC message it gets. Every test ends by asserting what the
//! upstream ran, not only what the client was told.
use std::{fs, path::Path, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

/// Refunds over 100 are denied, refunds to the customer allowed, other refunds denied, and
/// anything the service does not declare allowed: a spelling the gateway fails to recognise as
/// `refund` would be let through by the last rule.
fn payments(port: u16) -> String {
    format!(
        r#"
service: payments
match:
  hosts: ["127.0.0.1:{port}", "payments.test:{port}"]
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
rules:
  - name: big-refunds
    function: refund
    args: {{ amount: {{ gt: 100 }} }}
    action: deny
  - name: customer-refunds
    function: refund
    args: {{ to: {{ eq: customer }} }}
    action: allow
  - {{ name: other-refunds, function: refund, action: deny }}
  - {{ name: everything-else, function: "*", action: allow }}
"#
    )
}

fn flask(dir: &Path) -> Party {
    let port = free_port();
    let log = dir.join(format!("flask-{port}.jsonl"));
    let (py, script) = (party_python(), party_script("flask_app.py"));
    Party::start(
        &[
            &py.display().to_string(),
            &script.display().to_string(),
            "--port",
            &port.to_string(),
            "--log",
            &log.display().to_string(),
        ],
        port,
        log,
    )
}

/// What the Flask upstream ran: (view, logged fields).
fn ran(up: &Party, view: &str) -> Vec<Value> {
    up.requests()
        .into_iter()
        .filter(|r| r["ran"] == view)
        .collect()
}

/// Sends `raw` (one or more HTTP/1.1 requests) from inside `cg` and returns all it got back.
fn raw_in(cg: &TestCgroup, port: u16, raw: &str) -> String {
    let code = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), 5)\n\
         s.settimeout(5)\ns.sendall({raw:?}.encode())\nout = b''\n\
         try:\n    while len(out) < 1 << 20:\n        c = s.recv(65536)\n        if not c: break\n        out += c\n\
         except socket.timeout:\n    pass\nprint(out.decode(errors='replace'))"
    );
    python_in(cg, &code)
}

struct Setup {
    _gw: Gateway,
    cg: TestCgroup,
    _dir: TestDir,
}

/// A gateway deciding with `services`, and an enabled cgroup to call from.
fn setup(test: &str, services: &[(&str, &str)]) -> Setup {
    let dir = TestDir::new(test);
    let policies = policy_repo(&dir, REPO, services);
    let gw = Gateway::start_with(&["--policies", &policies.display().to_string()]);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    Setup {
        _gw: gw,
        cg,
        _dir: dir,
    }
}

/// A Flask payments upstream behind a gateway whose `payments` service declares `refund` and
/// decides it with `rules` (YAML list items), and a way to post JSON refunds to it.
struct Refunds {
    up: Party,
    s: Setup,
    url: String,
    _work: TestDir,
}

impl Refunds {
    fn start(test: &str, rules: &str) -> Option<Self> {
        if !ebpf_available(test) || !parties_available(test) {
            return None;
        }
        let work = TestDir::new(test);
        let up = flask(&work);
        let policy = format!(
            "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
             functions:\n  refund: {{ route: \"POST /v1/payments/{{payment_id}}/refund\" }}\n\
             rules:\n{rules}",
            up.port
        );
        let s = setup(test, &[("payments", &policy)]);
        let url = format!("http://127.0.0.1:{}/v1/payments/p1/refund", up.port);
        Some(Self {
            up,
            s,
            url,
            _work: work,
        })
    }

    /// POSTs `body` as JSON with `query` after the path: the status.
    fn post(&self, body: &str, query: &str) -> String {
        let url = format!("{}{query}", self.url);
        status_in(
            &self.s.cg,
            &[
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &url,
            ],
        )
    }

    fn refunds(&self) -> Vec<Value> {
        ran(&self.up, "refund")
    }
}

#[test]
fn path_spellings_of_a_denied_call_never_run() {
    let test = "path_spellings_of_a_denied_call_never_run";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("flask-paths");
    let up = flask(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let base = format!("http://127.0.0.1:{}", up.port);
    let big = r#"{"amount": 5000, "to": "customer"}"#;
    let post = |path: &str| {
        status_in(
            &s.cg,
            &[
                "--path-as-is",
                "-H",
                "Content-Type: application/json",
                "-d",
                big,
                &format!("{base}{path}"),
            ],
        )
    };
    // The control: the canonical spelling is denied, and an allowed refund runs.
    assert_eq!(post("/v1/payments/p1/refund"), "403");
    let ok = status_in(
        &s.cg,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"amount": 5, "to": "customer"}"#,
            &format!("{base}/v1/payments/p1/refund"),
        ],
    );
    assert_eq!(ok, "200");
    assert_eq!(
        ran(&up, "refund").len(),
        1,
        "the allowed refund did not run"
    );
    // Spellings werkzeug routes to `refund`: each is decided as `refund` (403) or refused as
    // ambiguous (400); none is an undeclared function that `everything-else` allows.
    for (path, want) in [
        ("/v1/payments/p2/%72efund", "403"),
        ("/v1/payments/p2/refun%64", "403"),
        ("/v1/%70ayments/p2/refund", "403"),
        ("/v1/payments/p2/%72%65%66%75%6E%64", "403"),
        ("//v1/payments/p2/refund", "403"),
        ("/v1//payments/p2//refund", "403"),
        ("/v1/./payments/p2/refund", "403"),
        ("/v1/x/../payments/p2/refund", "403"),
        ("/v1/x/%2e%2e/payments/p2/refund", "403"),
        // No route to werkzeug, `refund` to an any-case match: refused.
        ("/V1/Payments/p2/REFUND", "400"),
        ("/v1/payments/p2/refund/", "403"),
        ("/v1/payments/p8%2Frefund", "400"),
        ("/v1/payments/p8%2frefund", "400"),
        ("/v1/payments/p8%5Crefund", "400"),
        ("/v1/payments/p2/refund;x=1", "400"),
        ("/v1/payments/p2;x/refund", "400"),
        ("/v1/payments/p2/refund%00", "400"),
        ("/v1/payments/p2/%ff", "400"),
        ("/../v1/payments/p2/refund", "400"),
    ] {
        assert_eq!(post(path), want, "{path}");
    }
    // A backslash (curl would not send one as is).
    let got = raw_in(
        &s.cg,
        up.port,
        "POST /v1/payments\\p2\\refund HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert_eq!(
        ran(&up, "refund").len(),
        1,
        "a spelling of a denied refund ran: {:?}",
        ran(&up, "refund")
    );
    // What was forwarded is the canonical form: an allowed spelling arrives as decided.
    let ok = status_in(
        &s.cg,
        &["--path-as-is", &format!("{base}/v1/./%70ayments//p3")],
    );
    assert_eq!(ok, "200");
    let got = ran(&up, "get_payment");
    assert_eq!(
        got.last().map(|r| r["path"].clone()),
        Some("/v1/payments/p3".into())
    );
}

/// Items 7 and "secret" and the admin's user list are denied, everything else allowed: a
/// spelling that the gateway decides as anything but those would be let through by the last
/// rule.
fn items(port: u16) -> String {
    format!(
        r#"
service: items
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  list_items: {{ route: "GET /items" }}
  get_item: {{ route: "GET /items/{{id}}" }}
  delete_item: {{ route: "DELETE /items/{{id}}" }}
  admin_users: {{ route: "GET /admin/users" }}
  admin_status: {{ route: "GET /admin/status" }}
  admin_section: {{ route: "GET /admin/{{section}}" }}
rules:
  - {{ name: not-seven, function: [get_item, delete_item], args: {{ id: {{ eq: "7" }} }}, action: deny }}
  - {{ name: not-secret, function: [get_item, delete_item], args: {{ id: {{ eq: secret }} }}, action: deny }}
  - {{ name: no-admin, function: [admin_users, admin_section], action: deny }}
  - {{ name: everything-else, function: "*", action: allow }}
"#
    )
}

/// Rails' router on WEBrick (`tests/parties/rails_routes.rb`), started for `test`; None (the
/// test skipped) without Ruby's actionpack, activemodel, rack and webrick.
fn rails(test: &str, work: &Path) -> Option<Party> {
    let have_rails = std::process::Command::new("ruby")
        .args([
            "-rrack",
            "-rwebrick",
            "-raction_dispatch",
            "-raction_controller",
            "-ractive_model",
            "-e",
            "1",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_rails {
        skip(
            test,
            "ruby with ruby-actionpack, ruby-activemodel, ruby-rack and ruby-webrick is not \
             installed",
        );
        return None;
    }
    let port = free_port();
    let log = work.join(format!("rails-{port}.jsonl"));
    Some(Party::start(
        &[
            "ruby",
            &party_script("rails_routes.rb").display().to_string(),
            &port.to_string(),
            &log.display().to_string(),
        ],
        port,
        log,
    ))
}

#[test]
fn format_suffixes_rails_routes_are_decided_as_rails_reads_them() {
    let test = "format_suffixes_rails_routes_are_decided_as_rails_reads_them";
    if !ebpf_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let Some(up) = rails(test, &work) else {
        return;
    };
    let port = up.port;
    let s = setup(test, &[("items", &items(port))]);
    let base = format!("http://127.0.0.1:{port}");
    let call = |method: &str, path: &str| {
        status_in(
            &s.cg,
            &["--path-as-is", "-X", method, &format!("{base}{path}")],
        )
    };
    // Rails runs `show` for the item "secret" for each of these: decided as spelled, each is
    // a call the last rule allows (`id` "secret.json"). Both readings are decided, and they
    // differ.
    for (method, path) in [
        ("GET", "/items/secret.json"),
        ("GET", "/items/secret.xml/"),
        ("GET", "/items/%73ecret.j%73on"),
        ("DELETE", "/items/secret.json"),
        // Rails matches literals in their own case: these are sections, not the status.
        ("GET", "/admin/STATUS"),
        ("GET", "/admin/Status.json"),
        // No route to Rails, where it is the admin's section to the gateway's any-case match.
        ("GET", "/Admin/Users.csv"),
    ] {
        assert_eq!(call(method, path), "400", "{method} {path}");
    }
    // The admin's user list, or a section, to Rails: denied in every reading.
    for path in ["/admin/users.json", "/admin/users.json/"] {
        assert_eq!(call("GET", path), "403", "{path}");
    }
    // Ids ActiveRecord's `find` casts to 7 (`to_i`'s reading, which stops at the first
    // character that is not a digit): text the deny on "7" cannot tell from 7, so it matches,
    // as spelled and (`7.json`) as Rails routes it.
    for (method, path) in [
        ("GET", "/items/7.json"),
        ("GET", "/items/7.xml"),
        ("GET", "/items/%37.json"),
        ("GET", "/items/7.j%73on"),
        ("GET", "/items/7.json/"),
        ("DELETE", "/items/7.json"),
        ("GET", "/items/7abc"),
        ("GET", "/items/0_7x"),
        ("GET", "/items/07"),
        ("GET", "/items/7-x"),
        ("GET", "/items/%207"),
        ("GET", "/items/7.9"),
        ("DELETE", "/items/7abc"),
    ] {
        assert_eq!(call(method, path), "403", "{method} {path}");
    }
    // The controls: the plain spellings are denied, and a suffix both readings decide alike
    // is served as sent.
    assert_eq!(call("GET", "/items/7"), "403");
    assert_eq!(call("GET", "/admin/users"), "403");
    assert_eq!(call("GET", "/items/42.json"), "200");
    assert_eq!(call("GET", "/items.json"), "200");
    assert_eq!(call("GET", "/admin/status"), "200");
    let ran: Vec<Value> = up.requests();
    let denied: Vec<&Value> = ran
        .iter()
        .filter(|r| {
            r["ran"] == "admin_users"
                || r["ran"] == "admin_section"
                || r["record"] == 7
                || r["params"]["id"] == "secret"
        })
        .collect();
    assert!(
        denied.is_empty(),
        "DENIED CALLS THAT RAN on Rails: {denied:?}"
    );
    let served: Vec<(&Value, &Value)> = ran.iter().map(|r| (&r["ran"], &r["params"])).collect();
    assert_eq!(
        served,
        [
            (
                &"show".into(),
                &serde_json::json!({"id": "42", "format": "json"})
            ),
            (&"index".into(), &serde_json::json!({"format": "json"})),
            (&"admin_status".into(), &serde_json::json!({})),
        ],
        "{ran:?}"
    );
    // The refusal says what the two readings are and how a service whose server reads no
    // suffix says so.
    let (_, body) = curl_in(
        &s.cg,
        &["-w", "\n%{http_code}", &format!("{base}/items/secret.json")],
    );
    assert!(body.ends_with("\n400"), "{body}");
    for want in [
        "ambiguous_path",
        "as /items/secret",
        "not-secret",
        "everything-else",
        "no_format_suffix",
    ] {
        assert!(body.contains(want), "{want} not in {body}");
    }
}

/// A quota per item and a limit per function count a call under the key its server reads:
/// `/items/5.json`, `/items/05` and `/items/5abc` are item 5 to Rails (and `find`), and
/// `/admin/users.json` is its admin list; none is a fresh count.
#[test]
fn limits_count_a_call_as_the_server_reads_it() {
    let test = "limits_count_a_call_as_the_server_reads_it";
    if !ebpf_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let Some(up) = rails(test, &work) else {
        return;
    };
    let policy = format!(
        r#"
service: items
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_item: {{ route: "GET /items/{{id}}" }}
  admin_users: {{ route: "GET /admin/users" }}
rules:
  - name: one-show-per-item-a-day
    function: get_item
    action: allow
    quota: {{ per: [args.id], calls: 1/d }}
  - name: each-once-a-day
    function: "*"
    action: allow
    limit: {{ per: [function], rate: 1/d, burst: 1 }}
"#,
        up.port
    );
    let s = setup(test, &[("items", &policy)]);
    let call = |path: &str| {
        status_in(
            &s.cg,
            &[
                "--path-as-is",
                &format!("http://127.0.0.1:{}{path}", up.port),
            ],
        )
    };
    assert_eq!(call("/items/5"), "200");
    assert_eq!(call("/admin/users"), "200");
    for path in [
        "/items/5",
        "/items/5.json",
        "/items/05",
        "/items/5abc",
        "/items/+5",
        "/items/%35.xml",
        "/admin/users",
        "/admin/users.json",
        "/admin/users.anything/",
    ] {
        assert_eq!(call(path), "429", "{path}");
    }
    // Read as 1000 by some servers and 1 by others: no one count is its.
    assert_eq!(call("/items/1e3"), "429");
    assert_eq!(call("/items/6"), "200", "another item has its own count");
    let ran = up.requests();
    let fives = ran.iter().filter(|r| r["record"] == 5).count();
    let lists = ran.iter().filter(|r| r["ran"] == "admin_users").count();
    assert_eq!((fives, lists), (1, 1), "COUNTED CALLS RAN AGAIN: {ran:?}");
}

#[test]
fn arguments_are_read_as_the_server_reads_them() {
    let test = "arguments_are_read_as_the_server_reads_them";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("flask-args");
    let up = flask(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let url = format!("http://127.0.0.1:{}/v1/payments/p1/refund", up.port);
    let send = |ctype: &str, body: &str, query: &str| {
        status_in(
            &s.cg,
            &[
                "-H",
                &format!("Content-Type: {ctype}"),
                "--data-binary",
                body,
                &format!("{url}{query}"),
            ],
        )
    };
    let json = "application/json";
    for (what, ctype, body, query, want) in [
        // Numbers as text are numbers to Flask's views and to pydantic.
        (
            "amount as text",
            json,
            r#"{"amount": "5000", "to": "customer"}"#,
            "",
            "403",
        ),
        (
            "amount as an exponent",
            json,
            r#"{"amount": "5e3", "to": "customer"}"#,
            "",
            "403",
        ),
        // A deny condition on a value that is not there fails closed.
        ("no amount", json, r#"{"to": "customer"}"#, "", "403"),
        (
            "amount not a number",
            json,
            r#"{"amount": [5000], "to": "customer"}"#,
            "",
            "403",
        ),
        // The query names what the body also names, differently: the server picks one.
        (
            "query shadows body",
            json,
            r#"{"amount": 5000, "to": "customer"}"#,
            "?amount=5",
            "400",
        ),
        (
            "body shadows query",
            json,
            r#"{"amount": 5}"#,
            "?to=customer&amount=5000",
            "400",
        ),
        (
            "query twice",
            json,
            r#"{"to": "customer"}"#,
            "?amount=5&amount=5000",
            "400",
        ),
        // The label does not decide whether the body is read: Flask's get_json(force=True).
        (
            "JSON labelled text",
            "text/plain",
            r#"{"amount": 5000, "to": "customer"}"#,
            "",
            "403",
        ),
        (
            "JSON labelled gRPC",
            "application/grpc+json",
            r#"{"amount": 5000, "to": "customer"}"#,
            "",
            "403",
        ),
        (
            "JSON unlabelled",
            "",
            r#"{"amount": 5000, "to": "customer"}"#,
            "",
            "403",
        ),
        (
            "a form",
            "application/x-www-form-urlencoded",
            "amount=5000&to=customer",
            "",
            "403",
        ),
        (
            "a form twice",
            "application/x-www-form-urlencoded",
            "amount=5&to=customer&amount=5000",
            "",
            "400",
        ),
        // A body the gateway cannot read for arguments: no condition on them can be trusted.
        (
            "multipart",
            "multipart/form-data; boundary=XX",
            "--XX\r\nContent-Disposition: form-data; name=\"amount\"\r\n\r\n5000\r\n--XX\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\ncustomer\r\n--XX--\r\n",
            "",
            "403",
        ),
    ] {
        assert_eq!(send(ctype, body, query), want, "{what}");
    }
    assert!(
        ran(&up, "refund").is_empty(),
        "a denied refund ran: {:?}",
        ran(&up, "refund")
    );
    let (_, body) = curl_in(
        &s.cg,
        &[
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"amount": 5}"#,
            &format!("{url}?amount=5000"),
        ],
    );
    assert!(body.contains("\"ambiguous_argument\""), "{body}");
    // The control: the same request within the rules runs, the amount coerced as Flask does.
    assert_eq!(
        send(json, r#"{"amount": "50", "to": "customer"}"#, ""),
        "200"
    );
    assert_eq!(ran(&up, "refund").len(), 1);
}

#[test]
fn every_name_for_the_destination_must_agree() {
    let test = "every_name_for_the_destination_must_agree";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("flask-hosts");
    let up = flask(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let p = up.port;
    for (what, head, want) in [
        (
            "absolute form naming the service, Host another",
            format!(
                "GET http://payments.test:{p}/v1/payments/p1 HTTP/1.1\r\nHost: admin.test:{p}\r\n"
            ),
            "400",
        ),
        (
            "two Host headers",
            format!(
                "GET /v1/payments/p1 HTTP/1.1\r\nHost: payments.test:{p}\r\nHost: admin.test:{p}\r\n"
            ),
            "400",
        ),
        (
            "user information",
            format!(
                "GET http://payments.test@admin.test:{p}/v1/payments/p1 HTTP/1.1\r\nHost: payments.test@admin.test:{p}\r\n"
            ),
            "400",
        ),
        (
            "a method in lower case",
            format!(
                "post /v1/payments/p1/refund HTTP/1.1\r\nHost: payments.test:{p}\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n{{\"amount\": 5000, \"to\": \"customer\"}}"
            ),
            "400",
        ),
        (
            "absolute form and Host agreeing",
            format!(
                "GET http://payments.test:{p}/v1/payments/p1 HTTP/1.1\r\nHost: PAYMENTS.test:{p}\r\n"
            ),
            "200",
        ),
    ] {
        let head = if head.ends_with("\r\n") {
            format!("{head}Connection: close\r\n\r\n")
        } else {
            head.replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
        };
        let got = raw_in(&s.cg, p, &head);
        // A connection that opens with a lower-case method is not taken for HTTP at all, and
        // is closed unanswered (non-HTTP TCP to a service is denied).
        let closed = what.contains("lower case") && got.is_empty();
        assert!(
            closed || got.starts_with(&format!("HTTP/1.1 {want}")),
            "{what}: {got}"
        );
    }
    let hosts: Vec<Value> = up.requests().iter().map(|r| r["host"].clone()).collect();
    assert_eq!(
        hosts,
        vec![Value::from(format!("PAYMENTS.test:{p}"))],
        "{hosts:?}"
    );
    assert!(ran(&up, "refund").is_empty());
}

/// nginx removes dot segments and merges slashes before it picks a location: a spelling the
/// gateway did not canonicalise would be decided as one path and served as another.
#[test]
fn nginx_serves_only_what_was_decided() {
    let test = "nginx_serves_only_what_was_decided";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("nginx-paths");
    let port = free_port();
    let root = &*work.join("nginx");
    fs::create_dir_all(root).expect("nginx dir");
    let conf = root.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {r}/nginx.pid; error_log {r}/error.log; \
             events {{}} http {{ log_format uri '$request_method $uri'; \
             access_log {r}/access.log uri; client_body_temp_path {r}; \
             server {{ listen 127.0.0.1:{port}; \
               location = /admin/secret {{ return 200 'SECRET'; }} \
               location / {{ return 200 'public'; }} }} }}",
            r = root.display()
        ),
    )
    .expect("nginx.conf");
    let mut nginx = Party::start(
        &[
            "nginx",
            "-c",
            &conf.display().to_string(),
            "-p",
            &root.display().to_string(),
        ],
        port,
        root.join("nginx.log"),
    );
    let policy = format!(
        r#"
service: site
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  secret: {{ route: "GET /admin/secret" }}
rules:
  - {{ name: no-secret, function: secret, action: deny }}
  - {{ name: rest, function: "*", action: allow }}
"#
    );
    let s = setup(test, &[("site", &policy)]);
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(curl_in(&s.cg, &[&format!("{base}/public")]).1, "public");
    assert_ne!(
        status_in(&s.cg, &[&format!("{base}/admin/secret")]),
        "200",
        "the plain spelling must be denied"
    );
    for path in [
        "/admin/./secret",
        "/public/../admin/secret",
        "/admin//secret",
        "//admin/secret",
        "/admin/secre%74",
        "/admin/%73ecret",
        "/admin/x/%2e%2e/secret",
    ] {
        let (_, body) = curl_in(&s.cg, &["--path-as-is", &format!("{base}{path}")]);
        assert!(!body.contains("SECRET"), "{path}: {body}");
    }
    nginx.terminate(Duration::from_secs(5));
    let log = fs::read_to_string(root.join("access.log")).unwrap_or_default();
    assert!(
        !log.lines().any(|l| l.ends_with(" /admin/secret")),
        "nginx served the secret:\n{log}"
    );
    assert!(log.contains("GET /public"), "nginx saw nothing:\n{log}");
}

fn mcp_service(port: u16) -> String {
    format!(
        r#"
service: tools
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  search: {{ method: search }}
rules:
  - {{ name: search, function: search, action: allow }}
"#
    )
}

/// Only a closed list of MCP messages passes as session traffic; every other method is a
/// call that the policy decides, and an allow-list policy denies.
#[test]
fn mcp_methods_no_rule_names_are_denied() {
    let test = "mcp_methods_no_rule_names_are_denied";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("mcp-methods");
    let up = upstream(&work, None);
    let s = setup(test, &[("tools", &mcp_service(up.port))]);
    let url = format!("http://127.0.0.1:{}/rpc", up.port);
    let rpc = |body: &str| {
        curl_in(
            &s.cg,
            &[
                "-H",
                "Content-Type: application/json",
                "-H",
                "Accept: application/json, text/event-stream",
                "-d",
                body,
                &url,
            ],
        )
        .1
    };
    // Allowed: a session message and the allowed tool.
    let out = rpc(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#);
    assert!(out.contains("\"result\""), "{out}");
    let out = rpc(
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search","arguments":{}}}"#,
    );
    assert!(out.contains("\"result\""), "{out}");
    for method in [
        "admin/exec",
        "tools/execute",
        "completion/complete",
        "resources/read",
        "logging/setLevel",
        "Tools/call",
        "initialize ",
    ] {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":3,"method":"{method}","params":{{"name":"search"}}}}"#
        );
        let out = rpc(&body);
        assert!(out.contains("\"error\""), "{method}: {out}");
    }
    // A tool no rule names, alone and inside a batch.
    let out =
        rpc(r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_all"}}"#);
    assert!(out.contains("\"error\""), "{out}");
    let out = rpc(
        r#"[{"jsonrpc":"2.0","id":5,"method":"admin/exec"},{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"delete_all"}}]"#,
    );
    assert!(!out.contains("\"result\""), "{out}");
    // Methods MCP does not have, and a method in lower case on a kept connection.
    assert_eq!(status_in(&s.cg, &["-X", "PUT", "-d", "{}", &url]), "400");
    let good = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search"}}"#;
    let evil = r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_all"}}"#;
    let got = raw_in(
        &s.cg,
        up.port,
        &format!(
            "POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{good}\
             post /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{evil}",
            good.len(),
            evil.len()
        ),
    );
    assert!(got.contains("HTTP/1.1 400"), "{got}");
    let seen: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r["body"].as_str().unwrap_or_default().to_string())
        .collect();
    for body in &seen {
        assert!(
            ![
                "admin/exec",
                "tools/execute",
                "completion",
                "resources/read",
                "logging",
                "Tools/call",
                "delete_all",
                "initialize \""
            ]
            .iter()
            .any(|m| body.contains(m)),
            "the upstream got a denied message: {body}"
        );
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

fn ledger(port: u16, secret: &Path) -> String {
    format!(
        r#"
service: ledger
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: jsonrpc
functions:
  balance: {{ method: ledger.balance }}
  transfer: {{ method: ledger.transfer }}
rules:
  - {{ name: balances, function: balance, action: allow, inject: false }}
  - {{ name: transfers, function: transfer, action: allow }}
credentials:
  inject: {{ header: X-Api-Key, from: {{ file: "{}" }} }}
"#,
        secret.display()
    )
}

/// A batch goes up with its calls' own obligations: a rule that withholds the credential is
/// not overridden by the service's, and calls with different obligations do not share one
/// request.
#[test]
fn batches_keep_their_calls_obligations() {
    let test = "batches_keep_their_calls_obligations";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("batch-obligations");
    let secret = &*work.join("secret");
    fs::write(secret, "s3cr3t-k3y").expect("secret");
    let up = upstream(&work, None);
    let s = setup(test, &[("ledger", &ledger(up.port, secret))]);
    let url = format!("http://127.0.0.1:{}/rpc", up.port);
    let rpc = |body: &str| {
        curl_in(
            &s.cg,
            &["-H", "Content-Type: application/json", "-d", body, &url],
        )
        .1
    };
    let out = rpc(
        r#"[{"jsonrpc":"2.0","id":1,"method":"ledger.balance"},{"jsonrpc":"2.0","id":2,"method":"ledger.balance"}]"#,
    );
    assert_eq!(out.matches("\"result\"").count(), 2, "{out}");
    let out = rpc(
        r#"[{"jsonrpc":"2.0","id":1,"method":"ledger.balance"},{"jsonrpc":"2.0","id":2,"method":"ledger.transfer"}]"#,
    );
    assert!(out.contains("batch_mixed_obligations"), "{out}");
    assert!(!out.contains("\"result\""), "{out}");
    let out = rpc(r#"{"jsonrpc":"2.0","id":3,"method":"ledger.transfer"}"#);
    assert!(out.contains("\"result\""), "{out}");
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(
        reqs[0]["headers"].get("x-api-key").is_none(),
        "the credential went out with calls whose rule withholds it: {}",
        reqs[0]
    );
    assert_eq!(reqs[1]["headers"]["x-api-key"], "s3cr3t-k3y");
}

/// Sends `raw` bytes (one or more HTTP/1.1 requests) from inside `cg`; what came back.
fn raw_bytes_in(cg: &TestCgroup, port: u16, raw: &[u8]) -> String {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let code = format!(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), 5)\n\
         s.settimeout(5)\ns.sendall(bytes.fromhex('{hex}'))\nout = b''\n\
         try:\n    while len(out) < 1 << 20:\n        c = s.recv(65536)\n        if not c: break\n        out += c\n\
         except socket.timeout:\n    pass\nprint(out.decode(errors='replace'))"
    );
    python_in(cg, &code)
}

/// One request with `head` (request line and headers, without the blank line) and `body`,
/// its length given, the connection closed after it.
fn request(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Bodies a Python server reads its own way: JSON it accepts and serde does not (UTF-16, a
/// BOM, NaN), numbers as text it coerces, duplicate keys, and a body labelled a form that is
/// also JSON — Flask's `get_json(force=True)` reads the JSON, a form reader the form, and the
/// form spelled inside a JSON string says something else.
#[test]
fn bodies_are_read_as_every_reader_reads_them() {
    let test = "bodies_are_read_as_every_reader_reads_them";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("flask-bodies");
    let up = flask(&work);
    let s = setup(test, &[("payments", &payments(up.port))]);
    let p = up.port;
    let post = |ctype: &str, body: &[u8]| {
        let head = format!(
            "POST /v1/payments/p1/refund HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nContent-Type: {ctype}"
        );
        raw_bytes_in(&s.cg, p, &request(&head, body))
    };
    let utf16: Vec<u8> = {
        let mut v = vec![0xff, 0xfe];
        for u in r#"{"amount": 5000, "to": "customer"}"#.encode_utf16() {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v
    };
    // UTF-16 JSON whose string holds code units that are, byte by byte, a form: Python's
    // json reads the JSON (it detects UTF-16 by its NULs), a form reader the form.
    let utf16_form: Vec<u8> = {
        let le = |t: &str| {
            t.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        [
            le(r#"{"amount": 5000, "to": "customer", "x": ""#),
            b"&amount=5&to=customer&".to_vec(),
            le(r#""}"#),
        ]
        .concat()
    };
    let bom = [
        &[0xef, 0xbb, 0xbf][..],
        br#"{"amount": 5000, "to": "customer"}"#,
    ]
    .concat();
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";
    for (what, ctype, body, refused) in [
        (
            "JSON labelled a form, a form inside it",
            form,
            &br#"{"amount": 5000, "to": "customer", "x": "&amount=5&to=customer&"}"#[..],
            true,
        ),
        (
            "JSON labelled a form, the form naming what JSON does not",
            form,
            br#"{"to": "customer", "x": "&amount=5000&"}"#,
            true,
        ),
        (
            "JSON only Python reads (NaN), labelled a form, a form inside it",
            form,
            br#"{"amount": 5000, "to": "customer", "x": "&amount=5&to=customer&", "y": NaN}"#,
            true,
        ),
        (
            "JSON only Python reads (1e400), labelled a form, a form inside it",
            form,
            br#"{"amount": 5000, "to": "customer", "x": "&amount=5&to=customer&", "y": 1e400}"#,
            true,
        ),
        (
            "UTF-16 JSON labelled a form, a form in its code units",
            form,
            &utf16_form,
            true,
        ),
        ("UTF-16 JSON", "application/json; charset=utf-16", &utf16, true),
        ("UTF-16 JSON as text", "text/plain", &utf16, true),
        ("JSON with a BOM", json, &bom, true),
        ("JSON with a BOM as text", "text/plain", &bom, true),
        (
            "NaN",
            "text/plain",
            br#"{"amount": NaN, "to": "customer"}"#,
            true,
        ),
        (
            "NaN as text",
            json,
            br#"{"amount": "NaN", "to": "customer"}"#,
            true,
        ),
        (
            "an infinite number",
            json,
            br#"{"amount": 1e400, "to": "customer"}"#,
            true,
        ),
        (
            "full-width digits",
            json,
            "{\"amount\": \"\u{ff15}\u{ff10}\u{ff10}\u{ff10}\", \"to\": \"customer\"}".as_bytes(),
            true,
        ),
        (
            "digits with an underscore",
            json,
            br#"{"amount": "5_000", "to": "customer"}"#,
            true,
        ),
        (
            "true as the amount",
            json,
            br#"{"amount": true, "to": "customer"}"#,
            true,
        ),
        (
            "a key twice, the big one last",
            json,
            br#"{"amount": 5, "to": "customer", "amount": 5000}"#,
            true,
        ),
        (
            "gzip",
            "application/json\r\nContent-Encoding: gzip",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\x56\x4a\xcc\xcd\x2f\xcd\x2b\x51\xb2\x52\x30\x35\x30\x30\xa8\x05\x00",
            true,
        ),
        // Read as sent, a coded body says what a server that inflates it (Jetty, ASP.NET)
        // does not: no condition on it can allow it.
        (
            "a form with a content coding",
            "application/x-www-form-urlencoded\r\nContent-Encoding: gzip",
            b"amount=5&to=customer",
            true,
        ),
        // Another method than the request's, as Rails, Laravel and Express middleware read it.
        (
            "a _method field",
            form,
            b"amount=5&to=customer&_method=DELETE",
            true,
        ),
        (
            "a method override header",
            "application/json\r\nX-HTTP-Method-Override: DELETE",
            br#"{"amount": 5, "to": "customer"}"#,
            true,
        ),
        (
            "two Content-Types, text first",
            "text/plain\r\nContent-Type: application/x-www-form-urlencoded",
            b"amount=5000&to=customer",
            true,
        ),
    ] {
        let got = post(ctype, body);
        assert!(
            got.starts_with("HTTP/1.1 200") != refused,
            "{what}: {got}"
        );
    }
    assert!(
        ran(&up, "refund").is_empty(),
        "a denied refund ran: {:?}",
        ran(&up, "refund")
    );
    // The control: a key given twice reads as its last, here and in Flask.
    let got = post(json, br#"{"amount": 5000, "to": "customer", "amount": 5}"#);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let refunds = ran(&up, "refund");
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["amount"], 5);
}

/// A JSON-RPC or MCP message is a call whatever the HTTP method carrying it: a server that
/// reads the body of a GET or DELETE (as the logging upstream does) would run it.
#[test]
fn rpc_messages_on_other_methods_are_decided() {
    let test = "rpc_messages_on_other_methods_are_decided";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("rpc-methods");
    let up = upstream(&work, None);
    let s = setup(test, &[("tools", &mcp_service(up.port))]);
    let p = up.port;
    let evil = br#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"delete_all"}}"#;
    for method in ["GET", "DELETE"] {
        let head = format!(
            "{method} /rpc HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream"
        );
        let got = raw_bytes_in(&s.cg, p, &request(&head, evil));
        assert!(!got.contains("\"result\""), "{method}: {got}");
        // Chunked, so no length says a body comes.
        let chunked = format!(
            "{head}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            evil.len(),
            String::from_utf8_lossy(evil)
        );
        let got = raw_bytes_in(&s.cg, p, chunked.as_bytes());
        assert!(!got.contains("\"result\""), "{method} chunked: {got}");
    }
    // Duplicate names and odd shapes: each read as the upstream's JSON reads them.
    for body in [
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","name":"delete_all"}}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","method":"admin/exec","params":{"name":"search"}}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":["delete_all"]}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call\u0000","params":{"name":"delete_all"}}"#,
        r#"[{"jsonrpc":"2.0","id":5,"method":"initialize","params":{}},{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"delete_all"}}]"#,
    ] {
        let head =
            format!("POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nContent-Type: application/json");
        raw_bytes_in(&s.cg, p, &request(&head, body.as_bytes()));
    }
    for r in up.requests() {
        let body = r["body"].as_str().unwrap_or_default();
        assert!(
            !body.contains("delete_all") && !body.contains("admin/exec"),
            "the upstream got a denied message: {r}"
        );
    }
}

/// Numbers are compared as the server reads them: an integer is exact, and a value given in
/// two places is one value only when both spell it the same. Refunds go only to one account,
/// whose id is above 2^53: the `f64` of the id is shared by its neighbours, which Python reads
/// as other accounts.
#[test]
fn numbers_are_compared_as_the_server_reads_them() {
    let Some(r) = Refunds::start(
        "numbers_are_compared_as_the_server_reads_them",
        "  - name: the-account\n    function: refund\n    \
         args: { to: { in: [\"1234567890123456789\", 1234567890123456789] } }\n    action: allow\n  \
         - { name: other-refunds, function: refund, action: deny }\n",
    ) else {
        return;
    };
    for (what, body, query) in [
        (
            "the neighbour of the account",
            r#"{"amount": 5, "to": 1234567890123456790}"#,
            "",
        ),
        (
            "the account in the query, its neighbour in the body",
            r#"{"amount": 5, "to": 1234567890123456790}"#,
            "?to=1234567890123456789",
        ),
        (
            "the account as a fraction",
            r#"{"amount": 5, "to": 1234567890123456789.0}"#,
            "",
        ),
    ] {
        assert_ne!(r.post(body, query), "200", "{what}");
    }
    assert!(
        r.refunds().is_empty(),
        "a refund to another account ran: {:?}",
        r.refunds()
    );
    // The control: the account itself.
    assert_eq!(
        r.post(r#"{"amount": 5, "to": 1234567890123456789}"#, ""),
        "200"
    );
    let refunds = r.refunds();
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0]["to"], 1234567890123456789u64);
}

/// A deny rule on a JSON `false`: the same name given as text in the query and as JSON in the
/// body is one value to the join, and the decision must not read the text where the server
/// reads the JSON.
/// Accounts 7 and 8 are kept (a deny on the number 7, one on the text "8"), any other may be
/// closed. Flask's `<int:account>` reads `07`, `٧` (Arabic-Indic), `７` (full width) and `𝟕`
/// (mathematical bold) as 7: each is a spelling of a kept account.
#[test]
fn digits_of_any_script_are_the_number_the_server_reads() {
    let test = "digits_of_any_script_are_the_number_the_server_reads";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let up = flask(&work);
    let policy = format!(
        "service: accounts\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  close_account: {{ route: \"DELETE /v1/accounts/{{account}}\" }}\n\
         rules:\n\
         \x20 - {{ name: keep-seven, function: close_account, args: {{ account: {{ eq: 7 }} }}, action: deny }}\n\
         \x20 - {{ name: keep-eight, function: close_account, args: {{ account: {{ in: [\"8\"] }} }}, action: deny }}\n\
         \x20 - {{ name: others, function: close_account, action: allow }}\n",
        up.port
    );
    let s = setup(test, &[("accounts", &policy)]);
    let close = |account: &str| {
        status_in(
            &s.cg,
            &[
                "-X",
                "DELETE",
                &format!("http://127.0.0.1:{}/v1/accounts/{account}", up.port),
            ],
        )
    };
    for account in [
        "7",
        "07",
        "%D9%A7",
        "%EF%BC%97",
        "%F0%9D%9F%95",
        "8",
        "08",
        "%D9%A8",
        "%DB%B8",
    ] {
        assert_eq!(close(account), "403", "{account}");
    }
    assert_eq!(close("9"), "200");
    let closed: Vec<Value> = ran(&up, "close_account");
    let accounts: Vec<&Value> = closed.iter().map(|r| &r["account"]).collect();
    assert_eq!(
        accounts,
        [&Value::from(9)],
        "KEPT ACCOUNTS CLOSED: {closed:?}"
    );
}

/// Exports are denied, anything else allowed. Flask (as Rails, Express, Spring and Go's
/// `ServeMux`) answers a `HEAD` by running the `GET` view: a `HEAD` of an export is an export.
#[test]
fn a_head_is_decided_as_the_get_it_runs() {
    let test = "a_head_is_decided_as_the_get_it_runs";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let up = flask(&work);
    let policy = format!(
        "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  export: {{ route: \"GET /v1/payments/{{payment_id}}/export\" }}\n\
         \x20 get_payment: {{ route: \"GET /v1/payments/{{payment_id}}\" }}\n\
         \x20 exists: {{ route: \"HEAD /v1/payments/{{payment_id}}/{{what}}\" }}\n\
         rules:\n\
         \x20 - {{ name: no-exports, function: export, action: deny }}\n\
         \x20 - {{ name: everything-else, function: \"*\", action: allow }}\n",
        up.port
    );
    let s = setup(test, &[("payments", &policy)]);
    let head = |path: &str| {
        status_in(
            &s.cg,
            &["-I", &format!("http://127.0.0.1:{}{path}", up.port)],
        )
    };
    // A HEAD route names the path too, as another function: werkzeug runs the export's GET
    // view all the same (the more specific path wins), so both readings are decided.
    assert_eq!(head("/v1/payments/p1/export"), "400");
    // Another case: no route to Flask, the export to an any-case match: refused.
    assert_eq!(head("/V1/Payments/p1/EXPORT/"), "400");
    assert_eq!(head("/v1/payments/p1"), "200", "a HEAD of an allowed GET");
    assert!(
        ran(&up, "export").is_empty(),
        "AN EXPORT RAN: {:?}",
        ran(&up, "export")
    );
    assert_eq!(ran(&up, "get_payment").len(), 1);
}

#[test]
fn text_and_json_spellings_of_one_value_fail_closed() {
    let Some(r) = Refunds::start(
        "text_and_json_spellings_of_one_value_fail_closed",
        "  - { name: not-to-false, function: refund, args: { to: { eq: false } }, action: deny }\n  \
         - { name: rest, function: \"*\", action: allow }\n",
    ) else {
        return;
    };
    assert_eq!(r.post(r#"{"amount": 5, "to": false}"#, ""), "403");
    assert_eq!(r.post(r#"{"amount": 5, "to": false}"#, "?to=false"), "403");
    assert!(r.refunds().is_empty(), "{:?}", r.refunds());
    assert_eq!(r.post(r#"{"amount": 5, "to": true}"#, "?to=true"), "200");
    assert_eq!(r.refunds().len(), 1);
}

/// A deny on the items of a list: a first item within it does not carry a second that is not.
#[test]
fn a_deny_on_a_list_matches_any_item() {
    let Some(r) = Refunds::start(
        "a_deny_on_a_list_matches_any_item",
        "  - { name: big-items, function: refund, args: { \"$.amount[*]\": { gt: 100 } }, action: deny }\n  \
         - { name: rest, function: \"*\", action: allow }\n",
    ) else {
        return;
    };
    assert_eq!(r.post(r#"{"amount": [5000, 5]}"#, ""), "403");
    assert_eq!(r.post(r#"{"amount": [5, 5000]}"#, ""), "403");
    assert!(r.refunds().is_empty(), "{:?}", r.refunds());
    assert_eq!(r.post(r#"{"amount": [5, 6]}"#, ""), "200");
    assert_eq!(r.refunds().len(), 1);
}

/// FastMCP (the official Python SDK) with typed tools (`tests/parties/mcp_typed_server.py`),
/// logging each tool that runs.
fn typed_tools(work: &Path) -> Party {
    let port = free_port();
    let log = work.join(format!("typed-{port}.jsonl"));
    let (py, script) = (party_python(), party_script("mcp_typed_server.py"));
    let argv = [
        &py.display().to_string(),
        &script.display().to_string(),
        &port.to_string(),
        &log.display().to_string(),
    ];
    Party::start(&argv.each_ref().map(|a| a.as_str()), port, log)
}

/// `tool` called with `args` (JSON) from `cg` by the official SDK's client: what it printed.
fn call_tool(cg: &TestCgroup, port: u16, tool: &str, args: &str) -> String {
    let (py, client) = (party_python(), party_script("mcp_call.py"));
    let url = format!("http://127.0.0.1:{port}/mcp");
    let (py, client) = (py.display().to_string(), client.display().to_string());
    let out = cg.run(&[&py, &client, &url, tool, args]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An MCP tool served by the official SDK: pydantic reads `"yes"`, `"on"`, `"1"` and `1` as
/// `True` for a `bool` argument, so a deny on `live: true` must match them too.
#[test]
fn values_a_coercing_server_reads_as_the_denied_one_are_denied() {
    let test = "values_a_coercing_server_reads_as_the_denied_one_are_denied";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("mcp-typed");
    let up = typed_tools(&work);
    let port = up.port;
    let policy = format!(
        r#"
service: typed
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  transfer: {{}}
rules:
  - {{ name: no-live, function: transfer, args: {{ live: {{ eq: true }} }}, action: deny }}
  - {{ name: dry-runs, function: transfer, action: allow }}
"#
    );
    let s = setup(test, &[("typed", &policy)]);
    let call = |args: &str| call_tool(&s.cg, port, "transfer", args);
    for live in [r#""yes""#, r#""on""#, r#""1""#, "1", r#""True""#, "true"] {
        let out = call(&format!(r#"{{"amount": 5, "live": {live}}}"#));
        assert!(!out.contains("transferred"), "live {live}: {out}");
    }
    // `"no"` is false to pydantic but true to a handler that tests it (`if live:`): denied
    // too; `false` passes.
    let out = call(r#"{"amount": 5, "live": "no"}"#);
    assert!(!out.contains("transferred"), "{out}");
    let out = call(r#"{"amount": 5, "live": false}"#);
    assert!(out.contains("transferred 5 live=False"), "{out}");
    let ran = up.requests();
    assert!(
        ran.iter().all(|r| r["live"] == false) && ran.len() == 1,
        "a live transfer ran: {ran:?}"
    );
}

/// FastMCP parses an argument given as JSON text into the dict or list its parameter's type
/// asks for, so `"options": "{\"allow_writes\": true}"` holds `$.options.allow_writes` to
/// the tool and nothing to a reader of the call as sent: a deny on `present: true` did not
/// match, and the tool ran a write. A path that goes on below text holding JSON is now
/// unknown: a deny holds, an allow does not.
#[test]
fn json_text_a_tool_parses_is_decided_as_the_tool_reads_it() {
    let test = "json_text_a_tool_parses_is_decided_as_the_tool_reads_it";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("mcp-json-text");
    let up = typed_tools(&work);
    let port = up.port;
    let policy = format!(
        r#"
service: typed
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: mcp
functions:
  run_query: {{}}
rules:
  - name: no-writes
    function: run_query
    args: {{ "$.options.allow_writes": {{ present: true }} }}
    action: deny
  - {{ name: reads, function: run_query, action: allow }}
"#
    );
    let s = setup(test, &[("typed", &policy)]);
    let call = |args: &str| call_tool(&s.cg, port, "run_query", args);
    for options in [
        r#"{"allow_writes": true}"#,
        r#""{\"allow_writes\": true}""#,
        r#"" \n{\"ALLOW_WRITES\": true}""#,
    ] {
        let out = call(&format!(
            r#"{{"sql": "DROP TABLE users", "options": {options}}}"#
        ));
        assert!(!out.contains("ran DROP"), "options {options}: {out}");
    }
    let out = call(r#"{"sql": "SELECT 1", "options": {"limit": 5}}"#);
    assert!(out.contains("ran SELECT 1"), "{out}");
    let ran = up.requests();
    assert!(
        ran.len() == 1 && ran[0]["sql"] == "SELECT 1",
        "a write ran: {ran:?}"
    );
}

/// Sends `pieces` from inside `cg`, sleeping after each the seconds given, and returns all it got
/// back.
fn paced_in(cg: &TestCgroup, port: u16, pieces: &[(&str, f64)]) -> String {
    let pieces: Vec<String> = pieces
        .iter()
        .map(|(p, s)| format!("({p:?}, {s})"))
        .collect();
    let code = format!(
        "import socket, time\ns = socket.create_connection(('127.0.0.1', {port}), 5)\n\
         s.settimeout(5)\nfor p, pause in [{}]:\n    s.sendall(p.encode())\n    time.sleep(pause)\n\
         out = b''\ntry:\n    while len(out) < 1 << 20:\n        c = s.recv(65536)\n        if not c: break\n        out += c\n\
         except socket.timeout:\n    pass\nprint(out.decode(errors='replace'))",
        pieces.join(", ")
    );
    python_in(cg, &code)
}

/// On a service that also lets other TCP through (`tcp: allow`), an HTTP request must still be
/// read as one however it opens: with a method the sniffer's list does not name (werkzeug
/// upper-cases `post` and routes it; the gateway refuses it), after blank lines, or a byte at
/// a time past the sniff's second. Taken for another protocol, each would be spliced to Flask unread and the denied
/// refund would run.
#[test]
fn an_http_call_dressed_as_other_tcp_is_still_decided() {
    let test = "an_http_call_dressed_as_other_tcp_is_still_decided";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("flask-tcp-allow");
    let up = flask(&work);
    let service = format!("{}tcp: allow\n", payments(up.port));
    let s = setup(test, &[("payments", &service)]);
    let big = r#"{"amount": 5000, "to": "customer"}"#;
    let request = |method: &str| {
        format!(
            "{method} /v1/payments/p1/refund HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}",
            up.port,
            big.len()
        )
    };
    for (what, got) in [
        (
            "a lowercase method",
            raw_in(&s.cg, up.port, &request("post")),
        ),
        (
            "blank lines first",
            raw_in(&s.cg, up.port, &format!("\r\n\n{}", request("POST"))),
        ),
        (
            "a lone CR first",
            raw_in(&s.cg, up.port, &format!("\r{}", request("POST"))),
        ),
        (
            "tabs between the words",
            raw_in(&s.cg, up.port, &request("POST").replacen(' ', "\t", 2)),
        ),
        (
            "the method's first byte, then a pause past the sniff",
            paced_in(&s.cg, up.port, &[("P", 1.4), (&request("POST")[1..], 0.0)]),
        ),
        (
            "nothing until the sniff's second has passed",
            paced_in(&s.cg, up.port, &[("", 1.4), (&request("POST"), 0.0)]),
        ),
        (
            "half a request line, then a pause",
            paced_in(
                &s.cg,
                up.port,
                &[
                    ("post /v1/payments/p1/ref", 1.4),
                    (&request("post")[24..], 0.0),
                ],
            ),
        ),
    ] {
        // Decided (403: big refunds are denied), refused as a spelling the gateway does not
        // take (400: methods are case-sensitive), or, sent too late to be decided, refused by
        // closing; never spliced.
        assert!(
            got.starts_with("HTTP/1.1 403") || got.starts_with("HTTP/1.1 400") || got.is_empty(),
            "{what}: {got}"
        );
    }
    assert_eq!(
        ran(&up, "refund").len(),
        0,
        "a denied refund ran: {:?}",
        ran(&up, "refund")
    );
    // Other TCP still goes through: the service's `tcp: allow` is unchanged.
    let got = raw_in(&s.cg, up.port, "hello\n");
    assert!(!got.starts_with("HTTP/1.1 403"), "{got}");
}

/// The other side of the rule above: on a `tcp: allow` service, a protocol whose server speaks
/// first (SMTP, MySQL, FTP) still works. Its client says nothing until the banner comes, so the
/// sniff ends silent; the gateway connects, the upstream speaks first, and the connection is
/// spliced both ways.
#[test]
fn a_server_that_speaks_first_is_spliced_on_tcp_allow() {
    let test = "a_server_that_speaks_first_is_spliced_on_tcp_allow";
    if !ebpf_available(test) {
        return;
    }
    let work = TestDir::new("banner");
    let port = free_port();
    let server = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port}))\ns.listen(16)\nwhile True:\n    c, _ = s.accept()\n\
         \x20   try:\n        c.settimeout(10)\n        c.sendall(b'220 banner\\r\\n')\n\
         \x20       d = c.recv(100)\n        c.sendall(b'echo ' + d)\n    except Exception:\n        pass\n\
         \x20   c.close()\n"
    );
    let _up = Party::start(&["python3", "-c", &server], port, work.join("banner.log"));
    let service = format!("service: banner\nmatch:\n  hosts: [\"127.0.0.1:{port}\"]\ntcp: allow\n");
    let s = setup(test, &[("banner", &service)]);
    let got = python_in(
        &s.cg,
        &format!(
            "import socket\nc = socket.create_connection(('127.0.0.1', {port}), 5)\nc.settimeout(10)\n\
             banner = c.recv(100)\nc.sendall(b'QUIT\\r\\n')\nprint(repr(banner + c.recv(100)))"
        ),
    );
    assert_eq!(got, r"b'220 banner\r\necho QUIT\r\n'");
}

/// JavaScript reads a value as a handler uses it: `if (force)` is true for `"false"`, `"0"`,
/// `2` and `[]`, and `accounts[to]` finds `"mallory"` under `["mallory"]`. A deny on
/// `force: {eq: true}` and on `to: {eq: mallory}` let those spellings through to Express
/// (an attacker's pass); they are now neither equal nor different: a deny holds.
#[test]
fn values_are_compared_as_javascript_uses_them() {
    let test = "values_are_compared_as_javascript_uses_them";
    if !ebpf_available(test) || !node_parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let script = node_script("express_bodies.mjs").display().to_string();
    let (port, log) = (free_port(), work.join("close.jsonl"));
    let up = Party::start(
        &[
            "node",
            &script,
            &port.to_string(),
            &log.display().to_string(),
        ],
        port,
        log,
    );
    let policy = format!(
        "service: accounts\nmatch: {{ hosts: [\"127.0.0.1:{port}\"] }}\nprotocol: rest\n\
         functions:\n  close: {{ route: \"POST /v1/close\" }}\n\
         rules:\n  - {{ name: no-force, function: close, args: {{ force: {{ eq: true }} }}, action: deny }}\n\
         \x20 - {{ name: no-mallory, function: close, args: {{ to: {{ eq: mallory }} }}, action: deny }}\n\
         \x20 - {{ name: close, function: close, action: allow }}\n"
    );
    let s = setup(test, &[("accounts", &policy)]);
    let url = format!("http://127.0.0.1:{port}/v1/close");
    let post = |body: &str| {
        let h = "Content-Type: application/json";
        status_in(&s.cg, &["-H", h, "--data-binary", body, &url])
    };
    for body in [
        r#"{"force": "false", "to": "alice"}"#,
        r#"{"force": "0", "to": "alice"}"#,
        r#"{"force": 2, "to": "alice"}"#,
        r#"{"force": [], "to": "alice"}"#,
        r#"{"force": false, "to": ["mallory"]}"#,
        r#"{"force": false, "to": [["mallory"]]}"#,
    ] {
        assert_eq!(post(body), "403", "{body}");
    }
    assert_eq!(post(r#"{"force": false, "to": "alice"}"#), "200");
    let ran: Vec<String> = up.requests().iter().map(|r| r.to_string()).collect();
    assert_eq!(ran, [r#"{"ran":"pay","to":"alice"}"#], "{ran:?}");
}

/// `s` as one shifted run of UTF-7 (`+`, the base64 of its UTF-16BE, `-`): printable ASCII
/// that a UTF-7 decoder reads as `s`.
fn utf7(s: &str) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = s.encode_utf16().flat_map(u16::to_be_bytes).collect();
    let mut out = String::from("+");
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out.push('-');
    out
}

/// Express's JSON parser (body-parser, and so the MCP TypeScript SDK's own Express app)
/// decodes a body by its `charset`, UTF-7 included, where the gateway reads UTF-8. In UTF-7
/// `+ACI-` is a `"`: a run that is harmless text inside a string to the gateway closes the
/// string to Express, which then reads members the gateway never saw. A body labelled with
/// any set but UTF-8 is refused before it reaches the upstream. Express also routes a path
/// in any case and with a trailing `/`: the MCP endpoint is read so too.
#[test]
fn bodies_are_read_in_the_charset_the_server_decodes() {
    let test = "bodies_are_read_in_the_charset_the_server_decodes";
    if !ebpf_available(test) || !node_parties_available(test) {
        return;
    }
    let work = TestDir::new(test);
    let script = node_script("express_bodies.mjs").display().to_string();
    let express = |name: &str| {
        let (port, log) = (free_port(), work.join(format!("{name}.jsonl")));
        let argv = [
            "node",
            script.as_str(),
            &port.to_string(),
            &log.display().to_string(),
        ];
        Party::start(&argv, port, log)
    };
    let (mcp, rest) = (express("mcp"), express("rest"));
    let tools = format!(
        "service: tools\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: mcp\nendpoint: [/mcp]\n\
         functions:\n  search_docs: {{ method: search_docs }}\n  delete_table: {{ method: delete_table }}\n\
         rules:\n  - {{ name: search, function: search_docs, action: allow }}\n\
         \x20 - {{ name: no-drops, function: delete_table, action: deny }}\n\
         \x20 - {{ name: the-rest, function: \"*\", action: allow }}\n",
        mcp.port
    );
    let refunds = format!(
        "service: refunds\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  refund: {{ route: \"POST /v1/refunds\" }}\n\
         rules:\n  - {{ name: big, function: refund, args: {{ amount: {{ gt: 100 }} }}, action: deny }}\n\
         \x20 - {{ name: small, function: refund, action: allow }}\n",
        rest.port
    );
    let s = setup(test, &[("tools", &tools), ("refunds", &refunds)]);
    let post = |url: &str, charset: &str, body: &str| {
        let ct = format!("Content-Type: application/json{charset}");
        let args = [
            "-w",
            " %{http_code}",
            "-H",
            &ct,
            "-H",
            "Accept: application/json, text/event-stream",
            "--data-binary",
            body,
            url,
        ];
        curl_in(&s.cg, &args).1
    };
    let mcp_url = format!("http://127.0.0.1:{}/mcp", mcp.port);
    let rest_url = format!("http://127.0.0.1:{}/v1/refunds", rest.port);
    let search = |extra: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"search_docs","arguments":{{"query":"x"}},"z":"{extra}"}}}}"#
        )
    };
    // As the gateway reads it, a search with some text in `z`; as Express reads UTF-7, a
    // `delete_table` (the last `name` wins).
    let drop = utf7(r#"","name":"delete_table","arguments":{"table":"users"},"z":""#);
    let big = format!(
        r#"{{"amount":5,"z":"{}"}}"#,
        utf7(r#"","amount":5000,"z":""#)
    );
    for charset in ["; charset=utf-7", "; charset=\"UTF-7\"", ";charset=utf-16"] {
        let out = post(&mcp_url, charset, &search(&drop));
        assert!(!out.contains("deleted"), "{charset}: {out}");
        let out = post(&rest_url, charset, &big);
        assert!(out.ends_with(" 400"), "{charset}: {out}");
    }
    // The endpoint as Express routes it: in any case, with a trailing `/`. Decided as the
    // undeclared `POST /MCP`, the catch-all allowed it and the SDK dropped the table.
    let drop_it = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_table","arguments":{"table":"users"}}}"#;
    for path in ["/MCP", "/mcp/", "/Mcp/"] {
        let url = format!("http://127.0.0.1:{}{path}", mcp.port);
        let out = post(&url, "", drop_it);
        assert!(!out.contains("deleted"), "{path}: {out}");
    }
    // Labelled twice: readers differ on which label they take.
    let out = post(&rest_url, "; charset=utf-8; charset=utf-7", &big);
    assert!(out.ends_with(" 400"), "{out}");
    // UTF-8 still passes, in any case (body-parser itself takes no other name for it).
    let out = post(&mcp_url, "; charset=UTF-8", &search("plain"));
    assert!(out.contains("found x"), "{out}");
    let out = post(&rest_url, "; charset=\"utf-8\"", r#"{"amount":5}"#);
    assert!(out.ends_with(" 200"), "{out}");
    let ran = |up: &Party| {
        up.requests()
            .into_iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ran(&mcp),
        [r#"{"query":"x","ran":"search_docs"}"#],
        "MCP ran"
    );
    assert_eq!(ran(&rest), [r#"{"amount":5,"ran":"refund"}"#], "REST ran");
}
