//! Fleet mode end to end: two gateways on this machine stand for two hosts — each with its
//! own state directory, control socket, bpffs directory, redirect port and enabled cgroup —
//! sharing one real PostgreSQL 15 that the test starts (and stops) on a loopback port. A
//! call held on A is listed on both and approved from B's CLI, or by a person on B's web
//! approvals page in headless Chromium; A's client gets the upstream's answer. With the database stopped, new approvals are refused (503
//! `approval_unavailable`) while allowed calls go on; once it is back, approvals work again.
//! A host that dies has its held calls marked interrupted by the other; a database whose
//! schema is newer than the binary knows, or whose encoding is not UTF8, refuses the start. A fleet-wide rate limit is split
//! between the hosts alive, goes whole to the one left, and fails closed once the database
//! has been gone longer than the lease. With `fleet.trusted_keys`, a writer to the database
//! alone can neither approve a call held on A, nor alter what B's approver judges, nor give a
//! grant: only what a trusted host sealed counts.
use std::{
    fs,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

struct Fleet {
    pg: Postgres,
    a: Gateway,
    b: Gateway,
    cg_a: TestCgroup,
    cg_b: TestCgroup,
    _slices: (TestCgroup, TestCgroup),
    up: Party,
    /// With a web page on B: its URL and the OpenID provider its people log in with.
    web_b: Option<(String, Oidc)>,
    dir: TestDir,
}

fn policy(dir: &std::path::Path, port: u16) -> PathBuf {
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{port}"] }}
protocol: rest
functions:
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  show: {{ route: "GET /v1/payments/{{payment_id}}" }}
  tally: {{ route: "GET /v1/payments/{{payment_id}}/tally" }}
  quote: {{ route: "GET /v1/payments/{{payment_id}}/quote" }}
  count: {{ route: "GET /v1/payments/{{payment_id}}/count" }}
  batch: {{ route: "GET /v1/payments/{{payment_id}}/batch" }}
rules:
  - name: two-hundred-a-day-in-the-fleet
    function: batch
    action: allow
    quota: {{ calls: 200/d, scope: fleet }}
  - name: a-million-a-day-in-the-fleet
    function: count
    action: allow
    quota: {{ calls: 1000000/d, scope: fleet }}
  - name: ten-a-minute-in-the-fleet
    function: quote
    action: allow
    limit: {{ per: [args.payment_id], rate: 10/m, scope: fleet }}
  - name: three-a-day-in-the-fleet
    function: tally
    action: allow
    quota: {{ calls: 3/d, scope: fleet }}
  - name: refunds-need-a-lead
    function: refund
    action: approve
    approval: {{ approvers: {{ groups: [finance-leads] }}, timeout: 60s, grant: 1h }}
  - name: reading-is-fine
    function: show
    action: allow
"#
    );
    policy_repo(
        dir,
        "default_action: deny\nunknown_destination: deny\n",
        &[("payments", &service)],
    )
}

fn config(pg: &Postgres, host: &str) -> String {
    // A signed checkpoint every second (default 10 s), for the checkpoints shipped.
    format!(
        "fleet:\n  database: \"{}\"\n  host: {host}\n  heartbeat_s: 1\n  dead_after_s: 3\nrecords:\n  checkpoint_interval_s: 1\n",
        pg.url()
    )
}

fn setup(test: &str) -> Option<Fleet> {
    setup_with(test, false)
}

/// Two hosts; with `web`, B also serves the approvals page (`admin_http` with an OpenID
/// login, the provider started here).
fn setup_with(test: &str, web: bool) -> Option<Fleet> {
    setup_full(test, web, "")
}

/// [`setup_with`], host A's configuration ending with `a_records`: more lines of its
/// `records:` section.
fn setup_full(test: &str, web: bool, a_records: &str) -> Option<Fleet> {
    if !ebpf_available(test) || !parties_available(test) || !postgres_available(test) {
        return None;
    }
    if web && !node_parties_available(test) {
        return None;
    }
    let pg = Postgres::start();
    let dir = TestDir::new("callgate-fleet");
    let up = upstream(&dir, None);
    let policies = policy(&dir, up.port);
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    fs::create_dir_all(&dir_a).expect("dir a");
    fs::create_dir_all(&dir_b).expect("dir b");
    let (web_b, b_extra) = if web {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let idp = Oidc::start_with(&dir, &[format!("{url}/callback")]);
        let secret = dir.join("approvals-client.secret");
        fs::write(&secret, "callgate-approvals-secret\n").expect("client secret");
        let extra = format!(
            "admin_http:\n  listen: 127.0.0.1:{port}\n  login:\n    issuer: \"{}\"\n    client_id: callgate-approvals\n    client_secret_file: {}\n    scopes: [profile, groups]\n",
            idp.issuer(),
            secret.display()
        );
        (Some((url, idp)), extra)
    } else {
        (None, String::new())
    };
    // Both start at once against a fresh database: the migration runs once, under its lock.
    let start = |d: PathBuf, host: &'static str| {
        let mut c = config(&pg, host);
        if host == "host-a" {
            c.push_str(a_records);
        } else {
            c.push_str(&b_extra);
        }
        let p = policies.clone();
        std::thread::spawn(move || gateway_with_config(&p, &c, &d))
    };
    let (ta, tb) = (start(dir_a, "host-a"), start(dir_b, "host-b"));
    let (a, b) = (ta.join().expect("gateway a"), tb.join().expect("gateway b"));
    let applied = pg.psql(
        "callgate",
        "SELECT count(*) = max(version) AND count(DISTINCT applied_by) = 1 FROM callgate_schema",
    );
    assert_eq!(
        applied, "t",
        "each migration ran once, all by the host that won the lock"
    );
    // One job on two hosts: the same unit (so the same caller) in each host's own slice.
    let job = format!("{}.service", unique("fleet-job"));
    let slices = (TestCgroup::slice("fleet-a"), TestCgroup::slice("fleet-b"));
    let cg_a = slices.0.child(&job);
    let cg_b = slices.1.child(&job);
    a.enable(&cg_a);
    b.enable(&cg_b);
    Some(Fleet {
        pg,
        a,
        b,
        cg_a,
        cg_b,
        _slices: slices,
        up,
        web_b,
        dir,
    })
}

/// A curl in a cgroup, its request possibly held.
struct Call {
    child: Child,
    out: PathBuf,
}

impl Call {
    /// Waits (at most 30 s) for curl to end: (HTTP status, body); status 0 if it got none.
    fn finish(mut self) -> (u16, String) {
        let done = wait_for(Duration::from_secs(30), || self.child.try_wait().ok()?);
        assert!(done.is_some(), "curl did not finish");
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Call {
    /// Blocks until curl ends (bounded by its own `--max-time 60`): for timing, where
    /// [`Call::finish`]'s 20 ms polling would be the resolution.
    fn exit_code(mut self) -> u16 {
        let _ = self.child.wait();
        self.finish().0
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Fleet {
    fn curl(&self, cg: &TestCgroup, args: &[&str]) -> Call {
        let out = self.dir.join(unique("curl"));
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ];
        argv.extend(args);
        Call {
            child: cg.spawn(&argv, &out),
            out,
        }
    }

    fn refund(&self, cg: &TestCgroup) -> Call {
        let url = format!("http://127.0.0.1:{}/v1/payments/p_1/refund", self.up.port);
        self.curl(
            cg,
            &[
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"amount": 250}"#,
                &url,
            ],
        )
    }

    fn tally(&self, cg: &TestCgroup) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}/v1/payments/p_1/tally", self.up.port);
        self.curl(cg, &[&url]).finish()
    }

    fn show(&self, cg: &TestCgroup) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}/v1/payments/p_1", self.up.port);
        self.curl(cg, &[&url]).finish()
    }
}

impl Fleet {
    /// `n` calls of `quote` for payment `key` in one curl (one connection, one after the
    /// other), started now: see [`statuses`].
    fn quotes(&self, cg: &TestCgroup, key: &str, n: usize) -> Call {
        self.many(cg, &format!("/v1/payments/{key}/quote"), n)
    }
}

/// The HTTP statuses of a [`Fleet::quotes`] call, in order (waits at most 60 s).
fn statuses(mut call: Call) -> Vec<u16> {
    let done = wait_for(Duration::from_secs(60), || call.child.try_wait().ok()?);
    assert!(done.is_some(), "curl did not finish");
    fs::read_to_string(&call.out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("CODE=")?.trim().parse().ok())
        .collect()
}

fn passed(codes: &[u16]) -> usize {
    codes.iter().filter(|&&c| c == 200).count()
}

/// This host's lease on fleet-wide rates, as its status says: (hosts, ms left).
fn rate_lease(gw: &Gateway) -> Option<(u64, u64)> {
    let l = &gw.status()["approvals"]["fleet"]["rate_lease"];
    Some((l["hosts"].as_u64()?, l["expires_in_ms"].as_u64()?))
}

/// Waits (at most 20 s) until `gw`'s lease splits the rate among `hosts`.
fn lease_of(gw: &Gateway, hosts: u64) {
    let got = wait_for(Duration::from_secs(20), || {
        rate_lease(gw).filter(|l| l.0 == hosts && l.1 > 0)
    });
    assert!(
        got.is_some(),
        "no lease for {hosts} hosts: {}\n{}",
        gw.status(),
        gw.log()
    );
}

fn cli_ok(gw: &Gateway, args: &[&str]) -> String {
    let out = gw.cli(args);
    assert!(
        out.status.success(),
        "callgate {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn list(gw: &Gateway, all: bool) -> Vec<Value> {
    let mut args = vec!["approvals", "list", "--json"];
    if all {
        args.push("--all");
    }
    serde_json::from_str::<Value>(&cli_ok(gw, &args))
        .expect("JSON from approvals list")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The pending request held on `host`, as `gw` lists it (waits up to 20 s).
fn pending_on(gw: &Gateway, host: &str) -> Value {
    wait_for(Duration::from_secs(20), || {
        list(gw, false).into_iter().find(|r| r["host"] == host)
    })
    .unwrap_or_else(|| panic!("no pending request of {host}\n{}", gw.log()))
}

/// The id of a call of `host` held and listed on `gw`.
fn pending_id(gw: &Gateway, host: &str) -> String {
    pending_on(gw, host)["id"].as_str().expect("id").to_string()
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`2026-12-03T07:10:56.943937Z`).
fn log_seconds(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split_once('T')?.1;
    let t = t.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn fleet_connected(gw: &Gateway) -> Option<bool> {
    gw.status()["approvals"]["fleet"]["connected"].as_bool()
}

#[test]
fn held_on_a_approved_on_b_and_the_database_going_away() {
    let Some(mut f) = setup("held_on_a_approved_on_b_and_the_database_going_away") else {
        return;
    };
    assert_eq!(fleet_connected(&f.a), Some(true));
    assert_eq!(f.a.status()["approvals"]["fleet"]["host"], "host-a");

    // Held on A, listed on both with its host, approved from B's CLI.
    let call = f.refund(&f.cg_a);
    let on_b = pending_on(&f.b, "host-a");
    let on_a = pending_on(&f.a, "host-a");
    assert_eq!(on_a["id"], on_b["id"]);
    let id = on_b["id"].as_str().expect("id").to_string();
    let asked = Instant::now();
    let out = cli_ok(&f.b, &["approvals", "approve", &id, "--as", "lee"]);
    assert!(out.contains("approved"), "{out}");
    let (code, body) = call.finish();
    let waited = asked.elapsed();
    assert_eq!(code, 200, "A's client gets the upstream's answer: {body}");
    assert!(body.contains("/v1/payments/p_1/refund"), "{body}");
    eprintln!("fleet: verdict on B (CLI) to A's client answered: {waited:?}");
    let done = list(&f.a, true)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed on A");
    assert_eq!(done["state"], "approved");
    assert_eq!(done["verdict"]["by"], "lee");
    assert_eq!(done["verdict"]["host"], "host-b");
    let rec = record_where(&f.a, "the approved refund", |r| {
        r["approval"]["request"] == id.as_str()
    });
    assert_eq!(rec["approval"]["state"], "approved", "{rec}");

    // How long a verdict given on B takes to reach A's client: from B's CLI returning (the
    // verdict is in the database) to curl's exit with the upstream's answer.
    let mut took = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let call = f.refund(&f.cg_a);
        let id = pending_id(&f.b, "host-a");
        ids.push(id.clone());
        cli_ok(&f.b, &["approvals", "approve", &id, "--as", "lee"]);
        let t = Instant::now();
        let code = call.exit_code();
        took.push(t.elapsed());
        assert_eq!(code, 200);
    }
    took.sort();
    eprintln!(
        "fleet: verdict in the database on B to A's client answered, 20 calls: p50 {:?}, max {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    // Notified, not polled: a verdict reaches A's client well within a second, at worst
    // (a loaded two-vCPU runner, curl's own exit) within a few.
    assert!(took[took.len() / 2] < Duration::from_secs(1), "{took:?}");
    assert!(took[took.len() - 1] < Duration::from_secs(5), "{took:?}");
    // Inside the gateways, from their logs: B's verdict committed → A's client woken.
    let (log_a, log_b) = (f.a.log(), f.b.log());
    let mut inside: Vec<f64> = ids
        .iter()
        .filter_map(|id| {
            let at = |log: &str, what: &str| {
                log.lines()
                    .find(|l| l.contains(what) && l.contains(id.as_str()))
                    .and_then(log_seconds)
            };
            Some(at(&log_a, "approval answered")? - at(&log_b, "approval answered in the fleet")?)
        })
        .collect();
    inside.sort_by(f64::total_cmp);
    if !inside.is_empty() {
        eprintln!(
            "fleet: verdict committed on B to the call woken on A (gateway logs, {}): p50 {:.2} ms, max {:.2} ms",
            inside.len(),
            inside[inside.len() / 2] * 1e3,
            inside[inside.len() - 1] * 1e3
        );
    }

    // A grant given on B for A's call: A's next identical call passes without a new hold.
    let call = f.refund(&f.cg_a);
    let id = pending_id(&f.b, "host-a");
    cli_ok(
        &f.b,
        &["approvals", "approve", &id, "--as", "lee", "--grant", "10m"],
    );
    assert_eq!(call.finish().0, 200);
    let grants: Value =
        serde_json::from_str(&cli_ok(&f.a, &["approvals", "grants", "list", "--json"]))
            .expect("grants");
    assert_eq!(grants[0]["approved_by"], "lee", "{grants}");
    let held_before = list(&f.a, true).len();
    let (code, body) = f.refund(&f.cg_a).finish();
    assert_eq!(code, 200, "granted: {body}");
    // The grant holds fleet-wide: the same job on B is not asked again either.
    let (code, body) = f.refund(&f.cg_b).finish();
    assert_eq!(code, 200, "granted on B too: {body}");
    assert_eq!(list(&f.a, true).len(), held_before, "no new request");
    let grant_id = grants[0]["id"].as_str().expect("grant id").to_string();
    let on_b: Value =
        serde_json::from_str(&cli_ok(&f.b, &["approvals", "grants", "list", "--json"]))
            .expect("grants on B");
    assert_eq!(on_b[0]["id"], grant_id.as_str(), "{on_b}");
    // Revoked on A: B holds the job's next call again (below).
    cli_ok(&f.a, &["approvals", "grants", "revoke", &grant_id]);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let g: Value =
                serde_json::from_str(&cli_ok(&f.b, &["approvals", "grants", "list", "--json"]))
                    .ok()?;
            g.as_array()?.is_empty().then_some(())
        })
        .is_some(),
        "the revocation reached B"
    );

    // A verdict once given is final everywhere.
    let again = f.a.cli(&["approvals", "deny", &id, "--as", "lee"]);
    assert!(!again.status.success());

    // A 3-a-day quota counts across A and B.
    f.clear_of_midnight();
    for (cg, host) in [(&f.cg_a, "A"), (&f.cg_b, "B"), (&f.cg_a, "A")] {
        let (code, body) = f.tally(cg);
        assert_eq!(code, 200, "call on {host} within the fleet's quota: {body}");
    }
    for cg in [&f.cg_b, &f.cg_a] {
        let (code, body) = f.tally(cg);
        assert_eq!(
            code, 429,
            "the fourth call of the day, on either host: {body}"
        );
        assert!(body.contains("fleet-wide"), "{body}");
    }
    assert_eq!(
        f.pg.psql("callgate", "SELECT sum(count) FROM callgate_quotas"),
        "3",
        "refused calls are not counted"
    );

    // The database goes away: held calls are refused with a reason, allowed calls go on.
    f.pg.stop();
    assert!(
        wait_for(Duration::from_secs(15), || (fleet_connected(&f.a)
            == Some(false))
        .then_some(()))
        .is_some(),
        "A's status says the fleet database is gone:\n{}",
        f.a.status()
    );
    assert!(f.a.status()["approvals"]["fleet"]["error"].is_string());
    let (code, body) = f.refund(&f.cg_a).finish();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("approval_unavailable"), "{body}");
    assert!(body.contains("fleet database"), "{body}");
    let (code, body) = f.show(&f.cg_a);
    assert_eq!(code, 200, "allowed calls do not need the database: {body}");
    let (code, body) = f.tally(&f.cg_b);
    assert_eq!(code, 503, "a fleet-wide quota cannot be counted: {body}");
    assert!(body.contains("quota_unavailable"), "{body}");
    // Listing falls back to this host's own calls.
    assert!(list(&f.b, false).is_empty());

    // Back: it reconnects by itself, and approvals work again.
    f.pg.start_again();
    for gw in [&f.a, &f.b] {
        assert!(
            wait_for(Duration::from_secs(20), || (fleet_connected(gw)
                == Some(true))
            .then_some(()))
            .is_some(),
            "reconnected:\n{}",
            gw.status()
        );
    }
    let call = f.refund(&f.cg_a);
    let id = pending_id(&f.b, "host-a");
    cli_ok(&f.b, &["approvals", "approve", &id, "--as", "lee"]);
    let (code, body) = call.finish();
    assert_eq!(code, 200, "{body}");

    // Denied on A's own CLI, a call held on B: B's client is told.
    let call = f.refund(&f.cg_b);
    let id = pending_id(&f.a, "host-b");
    cli_ok(
        &f.a,
        &["approvals", "deny", &id, "--as", "lee", "--comment", "no"],
    );
    let (code, body) = call.finish();
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("approval_denied") && body.contains("no"),
        "{body}"
    );

    // B stops gracefully with a call held: B itself ends it as interrupted in the database,
    // within its stop. (Before, B ended it as cancelled, as if its client had gone away,
    // and sent that from the data thread's runtime as the stop ended it.)
    let call = f.refund(&f.cg_b);
    let id = pending_id(&f.a, "host-b");
    let stopped = Instant::now();
    assert!(f.b.terminate(Duration::from_secs(20)), "{}", f.b.log());
    let (code, body) = call.finish();
    assert_eq!(code, 503, "B's stop answered its held call: {body}");
    assert!(body.contains("approval_interrupted"), "{body}");
    let ended = wait_for(Duration::from_secs(10), || {
        list(&f.a, true)
            .into_iter()
            .find(|r| r["id"] == id.as_str() && r["state"] != "pending")
    })
    .unwrap_or_else(|| panic!("the stopped host's call was not ended:\n{}", f.b.log()));
    assert_eq!(ended["state"], "interrupted", "{ended}");
    assert!(
        f.b.log()
            .contains("the gateway is stopping; held call interrupted"),
        "B ended it itself: {}",
        f.b.log()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "ended by B's stop, not by A's watch: {:?}\n{}",
        stopped.elapsed(),
        f.b.log()
    );
    f.b.restart();

    // B dies with a call held: A marks it interrupted once B has been silent for 3 s.
    let call = f.refund(&f.cg_b);
    let id = pending_id(&f.a, "host-b");
    f.b.kill();
    drop(call);
    let ended = wait_for(Duration::from_secs(20), || {
        list(&f.a, true)
            .into_iter()
            .find(|r| r["id"] == id.as_str() && r["state"] != "pending")
    })
    .unwrap_or_else(|| panic!("the dead host's call was not ended:\n{}", f.a.log()));
    assert_eq!(ended["state"], "interrupted");
}

/// `callgate run` on `pg`'s database: it must refuse to start; its stderr.
fn refused_start(pg: &Postgres, name: &str) -> String {
    let dir = TestDir::new(name);
    let policies = policy(&dir, 9);
    let config = dir.join("callgate.yaml");
    fs::write(&config, config_text(pg)).expect("config");
    let bpffs = PathBuf::from("/sys/fs/bpf").join(unique("callgate-e2e"));
    let mut child = Command::new(callgate_bin())
        .args(["run", "--listen-port", &free_port().to_string()])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--bpffs-dir")
        .arg(&bpffs)
        .arg("--control-socket")
        .arg(dir.join("admin.sock"))
        .arg("--policies")
        .arg(&policies)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn callgate");
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok()?);
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("callgate output");
    let _ = fs::remove_dir_all(&bpffs);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(status.is_some(), "callgate started: {stderr}");
    assert!(!out.status.success(), "{stderr}");
    stderr
}

#[test]
fn a_newer_schema_refuses_the_start() {
    let test = "a_newer_schema_refuses_the_start";
    if !ebpf_available(test) || !postgres_available(test) {
        return;
    }
    let pg = Postgres::start();
    pg.psql(
        "callgate",
        "CREATE TABLE callgate_schema (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now(), applied_by text NOT NULL); \
         INSERT INTO callgate_schema (version, applied_by) VALUES (1, 'x'), (99, 'tomorrow')",
    );
    let stderr = refused_start(&pg, "callgate-fleet-schema");
    assert!(
        stderr.contains("schema is version 99, newer than this callgate knows ("),
        "{stderr}"
    );
    // Nothing was written.
    assert_eq!(
        pg.psql("callgate", "SELECT max(version) FROM callgate_schema"),
        "99"
    );
}

/// A database in another encoding than UTF8 refuses some of the text records hold (jsonb's
/// `\u00e9` in SQL_ASCII): one such row would stall a host's shipping for good, so fleet mode
/// does not start on it, and says why.
#[test]
fn a_database_not_in_utf8_refuses_the_start() {
    let test = "a_database_not_in_utf8_refuses_the_start";
    if !ebpf_available(test) || !postgres_available(test) {
        return;
    }
    let pg = Postgres::start();
    pg.psql("postgres", "DROP DATABASE callgate");
    pg.psql(
        "postgres",
        "CREATE DATABASE callgate ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'",
    );
    let stderr = refused_start(&pg, "callgate-fleet-encoding");
    assert!(
        stderr.contains("the database's encoding is SQL_ASCII, not UTF8"),
        "{stderr}"
    );
    // Nothing was written.
    assert_eq!(
        pg.psql(
            "callgate",
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'callgate%'"
        ),
        "0"
    );
}

fn config_text(pg: &Postgres) -> String {
    config(pg, "host-new")
}

/// `records list --fleet --json` with host `a`'s configuration: every host's records.
fn fleet_records(f: &Fleet) -> Vec<Value> {
    records_fleet_json(f, &["list", "--fleet", "--json", "--limit", "10000"])
}

/// `callgate records ARGS` (with `--json`) with host `a`'s configuration, which must succeed:
/// its output's JSON lines.
fn records_fleet_json(f: &Fleet, args: &[&str]) -> Vec<Value> {
    let out = records_fleet_cli(f, args);
    assert!(
        out.status.success(),
        "records {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The sequence numbers `host` has in the fleet database, sorted, and the local log's.
fn shipped_and_local(f: &Fleet, gw: &Gateway, host: &str) -> (Vec<u64>, Vec<u64>) {
    let mut shipped: Vec<u64> = fleet_records(f)
        .iter()
        .filter(|r| r["host"] == host)
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    shipped.sort_unstable();
    let mut local: Vec<u64> = records(gw)
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    local.sort_unstable();
    (shipped, local)
}

/// Waits (at most 20 s) until the database has exactly the local log of `host`.
fn all_shipped(f: &Fleet, gw: &Gateway, host: &str) -> Vec<u64> {
    let mut last = (vec![], vec![]);
    let done = wait_for(Duration::from_secs(20), || {
        last = shipped_and_local(f, gw, host);
        (!last.1.is_empty() && last.0 == last.1).then(|| last.0.clone())
    });
    done.unwrap_or_else(|| {
        panic!(
            "{host}'s records in the database {:?} are not its log's {:?}\n{}",
            last.0,
            last.1,
            gw.log()
        )
    })
}

#[test]
fn records_of_both_hosts_are_shipped_without_loss_or_doubling() {
    let Some(mut f) = setup("records_of_both_hosts_are_shipped_without_loss_or_doubling") else {
        return;
    };
    for _ in 0..2 {
        assert_eq!(f.show(&f.cg_a).0, 200);
        assert_eq!(f.show(&f.cg_b).0, 200);
    }
    all_shipped(&f, &f.a, "host-a");
    all_shipped(&f, &f.b, "host-b");
    let listed = fleet_records(&f);
    assert!(
        listed
            .iter()
            .any(|r| r["host"] == "host-a" && r["id"].is_string())
    );
    assert!(
        listed
            .iter()
            .any(|r| r["host"] == "host-b" && r["id"].is_string())
    );

    // Filters apply in the database.
    let filtered = |args: &[&str]| -> Vec<Value> {
        let out = Command::new(callgate_bin())
            .args(["records", "list", "--fleet", "--json"])
            .args(args)
            .arg("--config")
            .arg(f.dir.join("a").join("callgate.yaml"))
            .output()
            .expect("records list --fleet");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let allowed = filtered(&[
        "--service",
        "payments",
        "--decision",
        "allow",
        "--since",
        "1h",
    ]);
    assert!(allowed.len() >= 4, "{allowed:?}");
    assert!(allowed.iter().all(|r| r["decision"]["action"] == "allow"));
    assert!(filtered(&["--decision", "deny"]).is_empty());
    assert!(filtered(&["--service", "nothing-such"]).is_empty());
    assert_eq!(filtered(&["--limit", "1"]).len(), 1);

    // The database goes away: calls do not wait on it; their records follow once it is back.
    f.pg.stop();
    assert!(
        wait_for(Duration::from_secs(15), || (fleet_connected(&f.a)
            == Some(false))
        .then_some(()))
        .is_some()
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let (code, body) = f.show(&f.cg_a);
        assert_eq!(code, 200, "{body}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    f.pg.start_again();
    let shipped = all_shipped(&f, &f.a, "host-a");
    eprintln!(
        "fleet: host-a's {} records shipped after the outage",
        shipped.len()
    );

    // A restart resumes where the database is: nothing sent twice, nothing missing.
    f.a.restart();
    assert_eq!(f.show(&f.cg_a).0, 200);
    // The call's record reaches the local log with the writer's next group: wait for it, or
    // the database and a log still without it would look "all shipped".
    let grown = wait_for(Duration::from_secs(10), || {
        (shipped_and_local(&f, &f.a, "host-a").1.len() > shipped.len()).then_some(())
    });
    assert!(
        grown.is_some(),
        "the call after the restart was not recorded"
    );
    let after = all_shipped(&f, &f.a, "host-a");
    assert!(after.len() > shipped.len());
    assert_eq!(
        f.pg.psql(
            "callgate",
            "SELECT count(*) = count(DISTINCT (host, seq)) FROM callgate_records"
        ),
        "t"
    );
    assert!(
        !f.a.log().contains("already had"),
        "a restart re-sent records:\n{}",
        f.a.log()
    );
}

/// `callgate records ARGS` with host `a`'s configuration (the fleet database's URL).
fn records_fleet_cli(f: &Fleet, args: &[&str]) -> std::process::Output {
    Command::new(callgate_bin())
        .arg("records")
        .args(args)
        .arg("--config")
        .arg(f.dir.join("a").join("callgate.yaml"))
        .output()
        .expect("callgate records")
}

/// `records verify --fleet --host host-a --key KEY`: (passed, stdout and stderr).
fn verify_fleet(f: &Fleet, key: &str) -> (bool, String) {
    verify_fleet_with(f, key, &[])
}

/// [`verify_fleet`] with more arguments.
fn verify_fleet_with(f: &Fleet, key: &str, more: &[&str]) -> (bool, String) {
    let mut args = vec!["verify", "--fleet", "--host", "host-a", "--key", key];
    args.extend_from_slice(more);
    let out = records_fleet_cli(f, &args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A host's checkpoint verifier key (`records key`).
fn verifier_key(gw: &Gateway) -> String {
    let out = Command::new(callgate_bin())
        .args(["records", "key", "--dir"])
        .arg(gw.dir.join("state/records"))
        .output()
        .expect("records key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Each host ships its signed checkpoints once their records are in; `records checkpoints
/// --fleet` lists them; `records verify --fleet` rebuilds host A's tree from the database's
/// rows and checks it against A's latest signed checkpoint with A's key — and names what
/// was altered, deleted or forged in the database, or refuses another host's key.
#[test]
fn signed_checkpoints_are_shipped_and_the_fleet_records_verified() {
    let Some(f) = setup("signed_checkpoints_are_shipped_and_the_fleet_records_verified") else {
        return;
    };
    for _ in 0..3 {
        assert_eq!(f.show(&f.cg_a).0, 200);
    }
    assert_eq!(f.show(&f.cg_b).0, 200);
    // A long answer (a card at its end): the log keeps it beside its record's JSON; the row
    // holds that text as its `leaf` and the record it reads as.
    let long = format!("http://127.0.0.1:{}/v1/payments/p_2?size=3000", f.up.port);
    let (code, body) = f.curl(&f.cg_a, &[&long]).finish();
    assert_eq!(code, 200, "{body}");
    // A NUL in an argument: PostgreSQL's jsonb refuses `\u0000`, and one row it refused kept
    // every later record of the host from being shipped. Recorded as U+FFFD, it ships.
    let nul = format!("http://127.0.0.1:{}/v1/payments/p_3?note=a%00b", f.up.port);
    let (code, body) = f.curl(&f.cg_a, &[&nul]).finish();
    assert_eq!(code, 200, "{body}");
    // Numbers as Python writes them (`1e+16`, which jsonb gives back as an integer: the
    // fleet's check once called that record altered), and numbers beyond what serde_json or
    // jsonb hold (kept as the answer's text, in a string: as they were, they stalled shipping).
    for numbers in ["python", "far"] {
        let url = format!(
            "http://127.0.0.1:{}/v1/payments/p_4?numbers={numbers}",
            f.up.port
        );
        let (code, body) = f.curl(&f.cg_a, &[&url]).finish();
        assert_eq!(code, 200, "{body}");
    }
    let seqs = all_shipped(&f, &f.a, "host-a");
    assert_eq!(
        f.pg.psql(
            "callgate",
            "SELECT count(*) FROM callgate_records WHERE host = 'host-a' \
             AND record::text LIKE '%a\u{fffd}b%'"
        ),
        "1"
    );
    assert_eq!(
        f.pg.psql(
            "callgate",
            "SELECT (record->'response'->>'big')::numeric = 1e16 \
             AND (record->'response'->>'n')::numeric = 10000000000000001 \
             FROM callgate_records WHERE host = 'host-a' AND record->'response' ? 'big'"
        ),
        "t"
    );
    assert_eq!(
        f.pg.psql(
            "callgate",
            "SELECT jsonb_typeof(record->'response') FROM callgate_records \
             WHERE host = 'host-a' AND record->>'response' LIKE '%1e400%'"
        ),
        "string"
    );
    let last = *seqs.last().expect("records");

    // The checkpoint of A's whole log reaches the database (the log may have grown since).
    let listed = |host: &str| -> Vec<Value> {
        records_fleet_json(&f, &["checkpoints", "--fleet", "--json", "--host", host])
    };
    let got = wait_for(Duration::from_secs(30), || {
        listed("host-a")
            .first()
            .filter(|c| c["size"].as_u64() >= Some(last))
            .cloned()
    });
    let cp = got.unwrap_or_else(|| panic!("no checkpoint of host-a shipped\n{}", f.a.log()));
    assert!(
        cp["note"]
            .as_str()
            .unwrap_or_default()
            .contains("\n\n\u{2014} "),
        "{cp}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || (!listed("host-b").is_empty())
            .then_some(()))
        .is_some(),
        "no checkpoint of host-b shipped\n{}",
        f.b.log()
    );
    // Never ahead of its records.
    assert_eq!(
        f.pg.psql(
            "callgate",
            "SELECT count(*) FROM callgate_checkpoints c WHERE c.size > \
             (SELECT coalesce(max(seq), 0) FROM callgate_records r WHERE r.host = c.host)"
        ),
        "0"
    );
    let table = records_fleet_cli(&f, &["checkpoints", "--fleet"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("HOST") && table.contains("host-a") && table.contains("host-b"),
        "{table}"
    );

    let key_a = verifier_key(&f.a);
    let key_b = verifier_key(&f.b);
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(ok && out.contains("verified: host host-a"), "{out}");
    // The key from a file works too.
    let key_file = f.dir.join("host-a.pub");
    fs::write(&key_file, &key_a).expect("key file");
    let (ok, out) = verify_fleet(&f, &key_file.display().to_string());
    assert!(ok, "{out}");

    // Another host's key: refused.
    let (ok, out) = verify_fleet(&f, &key_b);
    assert!(!ok && out.contains("is not signed by the key"), "{out}");

    // The long answer's row: its leaf is the log's text, its record the JSON it reads as,
    // the card masked in both.
    let row = f.pg.psql(
        "callgate",
        "SELECT seq || ' ' || (record->'response'->>'card') || ' ' \
         || length(record->'response'->>'pad') || ' ' || (strpos(leaf, '4111') > 0) \
         FROM callgate_records WHERE host = 'host-a' AND ascii(leaf) = 30",
    );
    let row: Vec<&str> = row.split(' ').collect();
    assert_eq!(row[1..], ["************1111", "3000", "false"], "{row:?}");
    let long_seq = row[0];
    // Its answer altered in the leaf alone, then in the leaf and the record alike.
    let alter = |sql: &str| {
        f.pg.psql(
            "callgate",
            &format!(
                "CREATE TABLE IF NOT EXISTS kept_long AS SELECT * FROM callgate_records \
                 WHERE host = 'host-a' AND seq = {long_seq}; {sql}"
            ),
        )
    };
    alter(&format!(
        "UPDATE callgate_records SET leaf = replace(leaf, 'xxxx', 'xyxx') \
         WHERE host = 'host-a' AND seq = {long_seq}"
    ));
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(
        !ok && out.contains(&format!("record seq {long_seq} was altered")),
        "{out}"
    );
    alter(&format!(
        "UPDATE callgate_records SET record = jsonb_set(record, '{{response,pad}}', \
         to_jsonb(replace(record->'response'->>'pad', 'xxxx', 'xyxx'))) \
         WHERE host = 'host-a' AND seq = {long_seq}"
    ));
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(
        !ok && out.contains(&format!("record seq {long_seq} was altered"))
            && out.contains("chain hash"),
        "{out}"
    );
    f.pg.psql(
        "callgate",
        &format!(
            "DELETE FROM callgate_records WHERE host = 'host-a' AND seq = {long_seq}; \
             INSERT INTO callgate_records SELECT * FROM kept_long"
        ),
    );
    assert!(verify_fleet(&f, &key_a).0);

    // One record's JSON altered in the database.
    f.pg.psql(
        "callgate",
        "UPDATE callgate_records SET record = jsonb_set(record, '{status}', '500') \
         WHERE host = 'host-a' AND seq = 2",
    );
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(!ok && out.contains("record seq 2 was altered"), "{out}");
    f.pg.psql(
        "callgate",
        "UPDATE callgate_records SET record = leaf::jsonb WHERE host = 'host-a' AND seq = 2",
    );
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(ok, "restored: {out}");

    // One record replaced, its JSON and text alike (its chain hash not recomputed).
    f.pg.psql(
        "callgate",
        "CREATE TABLE kept3 AS SELECT * FROM callgate_records WHERE host = 'host-a' AND seq = 3; \
         UPDATE callgate_records SET record = jsonb_set(record, '{status}', '500') \
         WHERE host = 'host-a' AND seq = 3; \
         UPDATE callgate_records SET leaf = record::text WHERE host = 'host-a' AND seq = 3",
    );
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(
        !ok && out.contains("record seq 3 was altered") && out.contains("chain hash"),
        "{out}"
    );
    f.pg.psql(
        "callgate",
        "DELETE FROM callgate_records WHERE host = 'host-a' AND seq = 3; \
         INSERT INTO callgate_records SELECT * FROM kept3",
    );
    assert!(verify_fleet(&f, &key_a).0);

    // One record deleted.
    f.pg.psql(
        "callgate",
        "CREATE TABLE kept AS SELECT * FROM callgate_records WHERE host = 'host-a' AND seq = 2; \
         DELETE FROM callgate_records WHERE host = 'host-a' AND seq = 2",
    );
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(!ok && out.contains("record seq 2 is missing"), "{out}");
    f.pg.psql(
        "callgate",
        "INSERT INTO callgate_records SELECT * FROM kept",
    );
    assert!(verify_fleet(&f, &key_a).0);

    // A record inserted after the checkpoint's records: not covered (said), until the host's
    // own record of that sequence, skipped as already there, breaks the next checkpoint.
    f.pg.psql(
        "callgate",
        "INSERT INTO callgate_records (host, seq, hash, at_ms, record, leaf) \
         SELECT host, seq + 1000, hash, at_ms, record, leaf FROM callgate_records \
         WHERE host = 'host-a' ORDER BY seq DESC LIMIT 1",
    );
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(
        ok && out.contains("not covered by a shipped checkpoint"),
        "{out}"
    );
    f.pg.psql(
        "callgate",
        "DELETE FROM callgate_records WHERE host = 'host-a' AND seq > 1000",
    );

    // A forged checkpoint row: A's latest note claiming more records (its signature no
    // longer verifies).
    f.pg.psql(
        "callgate",
        "INSERT INTO callgate_checkpoints (host, size, root, note) \
         SELECT host, size + 100, root, regexp_replace(note, E'\\n[0-9]+\\n', E'\\n' || (size + 100) || E'\\n') \
         FROM callgate_checkpoints WHERE host = 'host-a' ORDER BY size DESC LIMIT 1",
    );
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(!ok && out.contains("is not signed by the key"), "{out}");
}

/// A call held on A is approved by a person on B's approvals page, in headless Chromium
/// (tests/parties/approvals_browser.mjs: the OpenID login, the list, the request's page, its
/// approve button): the request is listed on B with A's host, the verdict reaches A, and
/// A's client gets the upstream's answer.
#[test]
fn held_on_a_approved_on_b_web_page_in_chromium() {
    let Some(f) = setup_with("held_on_a_approved_on_b_web_page_in_chromium", true) else {
        return;
    };
    let (web, _idp) = f.web_b.as_ref().expect("B's page");
    let call = f.refund(&f.cg_a);
    let id = pending_id(&f.b, "host-a");
    let script = node_script("approvals_browser.mjs");
    let out = f.dir.join("browser.out");
    let shot = f.dir.join("browser.png");
    let log = fs::File::create(&out).expect("browser output");
    let mut browser = Command::new("timeout")
        .args(["90", "node"])
        .arg(&script)
        .args(["--page", web.as_str(), "--person", "alice", "--id", &id])
        .args(["--approve", "--comment", "approved on B's page"])
        .arg("--screenshot")
        .arg(&shot)
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("node");
    let started = Instant::now();
    let status = wait_for(Duration::from_secs(100), || browser.try_wait().ok()?)
        .expect("the browser did not finish");
    let _ = fs::remove_file(&script);
    let text = fs::read_to_string(&out).unwrap_or_default();
    let seen: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        status.success() && seen["error"].is_null(),
        "the browser failed: {text}\n{}",
        f.b.log()
    );
    assert_eq!(
        seen["listed"], true,
        "A's request listed on B's page: {seen}"
    );
    assert_eq!(
        seen["forged_status"], 403,
        "a form without the page's token: {seen}"
    );
    assert!(
        seen["flash"]
            .as_str()
            .is_some_and(|s| s.starts_with("Approved")),
        "{seen}"
    );
    let (code, body) = call.finish();
    assert_eq!(code, 200, "A's client gets the upstream's answer: {body}");
    assert!(body.contains("/v1/payments/p_1/refund"), "{body}");
    eprintln!(
        "fleet: approved on B's page in Chromium (login included) and answered on A in {:?}",
        started.elapsed()
    );
    let done = list(&f.a, true)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .expect("listed on A");
    assert_eq!(done["state"], "approved", "{done}");
    assert_eq!(done["verdict"]["by"], "alice", "{done}");
    assert_eq!(done["verdict"]["host"], "host-b", "{done}");
    let rec = record_where(&f.a, "the refund approved on B's page", |r| {
        r["approval"]["request"] == id.as_str()
    });
    assert_eq!(rec["approval"]["state"], "approved", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
}

#[test]
fn a_fleet_rate_limit_is_split_rebalanced_and_fails_closed() {
    let Some(mut f) = setup("a_fleet_rate_limit_is_split_rebalanced_and_fails_closed") else {
        return;
    };
    // 10/m (burst 10) per payment, fleet-wide: with A and B alive, 5 each.
    lease_of(&f.a, 2);
    lease_of(&f.b, 2);
    let started = Instant::now();
    let (on_a, on_b) = (
        f.quotes(&f.cg_a, "p_split", 15),
        f.quotes(&f.cg_b, "p_split", 15),
    );
    let (on_a, on_b) = (statuses(on_a), statuses(on_b));
    let took = started.elapsed();
    assert_eq!((on_a.len(), on_b.len()), (15, 15), "{on_a:?} {on_b:?}");
    assert!(
        on_a.iter().chain(&on_b).all(|&c| c == 200 || c == 429),
        "{on_a:?} {on_b:?}"
    );
    // Tolerance: what a host's bucket refills meanwhile, 5/m each (one call per 12 s).
    let refill = (took.as_secs_f64() / 12.0).ceil() as usize;
    let (a, b) = (passed(&on_a), passed(&on_b));
    eprintln!("fleet rate 10/m split: A let {a} through, B {b}, in {took:?}");
    assert!((5..=5 + refill).contains(&a), "A: {on_a:?}");
    assert!((5..=5 + refill).contains(&b), "B: {on_b:?}");
    assert!(
        a + b <= 10 + 2 * refill,
        "at most the fleet's rate in total"
    );
    let (code, body) = f
        .curl(
            &f.cg_a,
            &[&format!(
                "http://127.0.0.1:{}/v1/payments/p_split/quote",
                f.up.port
            )],
        )
        .finish();
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("fleet-wide"), "{body}");

    // B dies: once it has been silent for dead_after, A takes the whole rate.
    f.b.kill();
    lease_of(&f.a, 1);
    let alone = statuses(f.quotes(&f.cg_a, "p_alone", 15));
    assert!(
        (10..=11).contains(&passed(&alone)),
        "A alone lets the whole burst through: {alone:?}"
    );

    // The database goes away: A's lease holds until it runs out, then such calls are
    // refused with the reason; everything else goes on.
    f.pg.stop();
    let asked = Instant::now();
    if let Some((_, left)) = rate_lease(&f.a).filter(|l| l.1 > 1000) {
        let within = statuses(f.quotes(&f.cg_a, "p_within", 1));
        // On a loaded runner the call may reach the gateway after the lease ran out.
        assert!(
            within == [200] || asked.elapsed() >= Duration::from_millis(left),
            "the lease still runs: {within:?}"
        );
    }
    let url = |key: &str| format!("http://127.0.0.1:{}/v1/payments/{key}/quote", f.up.port);
    let mut n = 0;
    let refused = wait_for(Duration::from_secs(20), || {
        n += 1;
        let (code, body) = f.curl(&f.cg_a, &[&url(&format!("p_out_{n}"))]).finish();
        (code == 503).then_some(body)
    })
    .unwrap_or_else(|| panic!("never refused without the database:\n{}", f.a.log()));
    assert!(refused.contains("rate_unavailable"), "{refused}");
    assert!(
        refused.contains("lease on the fleet's rate ran out"),
        "{refused}"
    );
    assert_eq!(f.show(&f.cg_a).0, 200, "allowed calls go on");

    // Back: a new lease, calls pass again.
    f.pg.start_again();
    let back = wait_for(Duration::from_secs(20), || {
        n += 1;
        let (code, _) = f.curl(&f.cg_a, &[&url(&format!("p_back_{n}"))]).finish();
        (code == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "no lease after the database came back:\n{}",
        f.a.log()
    );
}

impl Fleet {
    /// `n` calls of `path` under the upstream in one curl (one connection, one after the
    /// other), started now: see [`statuses`].
    fn many(&self, cg: &TestCgroup, path: &str, n: usize) -> Call {
        let url = format!("http://127.0.0.1:{}{path}", self.up.port);
        let mut argv = vec![
            "curl",
            "-sS",
            "--max-time",
            "60",
            "-w",
            "CODE=%{http_code}\n",
        ];
        for _ in 0..n {
            argv.extend(["-o", "/dev/null", url.as_str()]);
        }
        let out = self.dir.join(unique("curl"));
        Call {
            child: cg.spawn(&argv, &out),
            out,
        }
    }

    /// Waits out the last two minutes of the database's day, when a quota of so many calls
    /// a day would start afresh in the middle of a test.
    fn clear_of_midnight(&self) {
        let left: u64 = self
            .pg
            .psql(
                "callgate",
                "SELECT 86400 - floor(extract(epoch FROM now()))::bigint % 86400",
            )
            .trim()
            .parse()
            .unwrap_or(86400);
        if left < 120 {
            eprintln!("waiting {left} s for the database's day to turn");
            std::thread::sleep(Duration::from_secs(left + 2));
        }
    }

    /// The database's count of a rule's fleet-wide quota (0: no row).
    fn counted(&self, rule: &str) -> u64 {
        self.pg
            .psql(
                "callgate",
                &format!(
                    "SELECT coalesce(sum(count), 0) FROM callgate_quotas \
                     WHERE key LIKE '%' || chr(31) || '{rule}%'"
                ),
            )
            .trim()
            .parse()
            .unwrap_or(u64::MAX)
    }
}

/// A host's reservations on fleet-wide quotas, as its status shows them.
fn quota_blocks(gw: &Gateway) -> Value {
    gw.status()["approvals"]["fleet"]["quota_blocks"].clone()
}

/// SIGTERM, and waits (at most 20 s) for the gateway to have ended (a zombie, or gone).
fn stop_gracefully(gw: &Gateway) {
    let pid = gw.pid().expect("a running gateway");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let ended = wait_for(Duration::from_secs(20), || {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => Some(()),
            Ok(s) => s
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                .then_some(()),
        }
    });
    assert!(ended.is_some(), "the gateway did not stop:\n{}", gw.log());
}

/// A host that stops gracefully right after its calls ships them, and the checkpoint its
/// stop signs, before it ends: the database has its whole log and a checkpoint of all of it at
/// once, not at its next start (a host retired or scaled in has none).
#[test]
fn a_graceful_stop_ships_the_last_records_and_their_checkpoint() {
    let Some(f) = setup("a_graceful_stop_ships_the_last_records_and_their_checkpoint") else {
        return;
    };
    assert_eq!(f.show(&f.cg_a).0, 200);
    // The first records shipped and signed; the calls after them are the stop's to ship.
    all_shipped(&f, &f.a, "host-a");
    for _ in 0..3 {
        assert_eq!(f.show(&f.cg_a).0, 200);
    }
    stop_gracefully(&f.a);
    let (shipped, local) = shipped_and_local(&f, &f.a, "host-a");
    assert!(local.len() >= 4, "{local:?}");
    assert_eq!(
        shipped,
        local,
        "the whole log is in the database\n{}",
        f.a.log()
    );
    let cps = records_fleet_json(
        &f,
        &["checkpoints", "--fleet", "--json", "--host", "host-a"],
    );
    let size = cps.first().and_then(|c| c["size"].as_u64());
    assert_eq!(
        size,
        local.last().copied(),
        "the stop's checkpoint signs it all: {cps:?}\n{}",
        f.a.log()
    );
}

/// A host that stops gracefully is alive to the fleet until its drain ends: while a call it
/// carries finishes, it still beats, and the other hosts still split a fleet-wide rate with
/// it; once it has ended they stop counting it.
#[test]
fn a_draining_host_is_alive_to_the_fleet_until_its_calls_end() {
    let test = "a_draining_host_is_alive_to_the_fleet_until_its_calls_end";
    let Some(f) = setup_full(test, false, "stop_grace_s: 30\n") else {
        return;
    };
    lease_of(&f.a, 2);
    lease_of(&f.b, 2);
    // A call on A that its upstream answers in 10 s: A's drain lasts as long.
    let slow = f.curl(
        &f.cg_a,
        &[&format!(
            "http://127.0.0.1:{}/v1/payments/p_1?slow=10000",
            f.up.port
        )],
    );
    std::thread::sleep(Duration::from_millis(800));
    let pid = f.a.pid().expect("a running gateway");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    // Past `dead_after_s` (3) and two heartbeats: B would count A dead by now had A stopped
    // beating when its stop began.
    std::thread::sleep(Duration::from_secs(6));
    let hosts = rate_lease(&f.b).map(|l| l.0);
    assert_eq!(
        hosts,
        Some(2),
        "B stopped counting A {:?} into its drain\nA:\n{}",
        stopped.elapsed(),
        f.a.log()
    );
    let (code, _) = slow.finish();
    assert_eq!(code, 200, "the call in flight finished\n{}", f.a.log());
    lease_of(&f.b, 1);
}

/// Reservations (`fleet/reserve.rs`): a quota big enough to reserve (200 a day) is spent from
/// per-host blocks, yet A and B together, calling at once, admit exactly 200 and never more;
/// idle blocks give their unused counts back (the database's count is then the calls
/// admitted); a graceful stop gives a host's unused counts back too.
#[test]
fn reserved_blocks_admit_exactly_the_quota_and_give_back_what_is_unused() {
    let Some(mut f) = setup("reserved_blocks_admit_exactly_the_quota_and_give_back_what_is_unused")
    else {
        return;
    };
    lease_of(&f.a, 2);
    lease_of(&f.b, 2);
    f.clear_of_midnight();
    let rule = "two-hundred-a-day-in-the-fleet";
    let path = "/v1/payments/p_1/batch";
    let mut admitted = 0;
    let mut refused = 0;
    // Rounds of 4 × 30 calls at once (two connections on each host), then idle: at most 6.
    for round in 0..6 {
        let calls = [
            f.many(&f.cg_a, path, 30),
            f.many(&f.cg_b, path, 30),
            f.many(&f.cg_a, path, 30),
            f.many(&f.cg_b, path, 30),
        ];
        let codes: Vec<u16> = calls.into_iter().flat_map(statuses).collect();
        assert_eq!(codes.len(), 120, "every call answered: {codes:?}");
        let ok = passed(&codes);
        let over = codes.iter().filter(|&&c| c == 429).count();
        assert_eq!(ok + over, 120, "only 200 or 429: {codes:?}");
        admitted += ok;
        refused += over;
        let (sa, sb) = (quota_blocks(&f.a), quota_blocks(&f.b));
        eprintln!(
            "round {round}: {ok} admitted ({admitted} in all), {over} refused; A {sa}, B {sb}"
        );
        assert!(admitted <= 200, "never more than the quota: {admitted}");
        // Idle: the blocks' unused counts go back; the database's count is the calls
        // admitted.
        let back = wait_for(Duration::from_secs(10), || {
            (f.counted(rule) == admitted as u64).then_some(())
        });
        assert!(
            back.is_some(),
            "after {round} rounds the database counts {}, {admitted} admitted; A {}, B {}",
            f.counted(rule),
            quota_blocks(&f.a),
            quota_blocks(&f.b)
        );
        for gw in [&f.a, &f.b] {
            assert_eq!(quota_blocks(gw)["unused"], 0, "{}", quota_blocks(gw));
        }
        if admitted == 200 {
            break;
        }
    }
    assert_eq!(admitted, 200, "the whole quota was admitted in the end");
    assert!(refused > 0);
    assert!(
        quota_blocks(&f.a)["blocks_taken"].as_u64().unwrap_or(0) < 100,
        "A took blocks, not one count a call: {}",
        quota_blocks(&f.a)
    );
    // Used up on both hosts: one more of each is refused.
    for cg in [&f.cg_a, &f.cg_b] {
        assert_eq!(statuses(f.many(cg, path, 1)), vec![429]);
    }
    assert_eq!(f.counted(rule), 200, "refused calls are not counted");

    // A stop gives back what A holds unused: the database counts the calls admitted.
    let count = "a-million-a-day-in-the-fleet";
    let codes = statuses(f.many(&f.cg_a, "/v1/payments/p_1/count", 60));
    assert_eq!(passed(&codes), 60, "{codes:?}");
    let held = quota_blocks(&f.a);
    eprintln!(
        "before the stop, A holds {held}; the database counts {}",
        f.counted(count)
    );
    stop_gracefully(&f.a);
    assert_eq!(
        f.counted(count),
        60,
        "A's unused counts went back at its stop: {held}"
    );
    // (The idle sweep may have given them back before the stop: the count says it all.)
    let log = f.a.log();
    // The stop's statements ran on connections that lived through it: none a data thread's
    // runtime drove (they end first) was found closed, in flight or taken from the pool.
    let stopped = log.split("stopping;").nth(1).unwrap_or_default();
    for bad in [
        "lost the fleet database",
        "could not be recycled",
        "not all given back",
        "refills still running",
    ] {
        assert!(!stopped.contains(bad), "{bad} at the stop:\n{log}");
    }
    f.a.kill();
}

/// The client of [`fleet_quota_added_latency`]: one kept connection, calls of `count` (a
/// fleet-wide quota) and `show` (none) alternating, each timed from sending to the whole
/// answer read; prints `[[count ns…], [show ns…]]`.
const TIMED_CLIENT: &str = r#"
import http.client, json, sys, time
port, n, warm = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
paths = ["/v1/payments/p_1/count", "/v1/payments/p_1"]
out = [[], []]
for i in range(2 * (n + warm)):
    which = i % 2 if (i // 2) % 2 == 0 else 1 - i % 2
    t = time.perf_counter_ns()
    c.request("GET", paths[which])
    r = c.getresponse()
    r.read()
    dt = time.perf_counter_ns() - t
    if r.status != 200:
        sys.exit("status %d on %s" % (r.status, paths[which]))
    if i >= 2 * warm:
        out[which].append(dt)
print(json.dumps(out))
"#;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A witness's cosignatures checked against the database: `records verify --fleet
/// --witness-key` takes the largest checkpoint of the host that the witnesses cosigned and
/// checks each cosignature with its key, so neither the database nor the host alone can pass
/// off a log the witness did not see. A cosignature stripped or altered in the database, or
/// a cosigned copy of another checkpoint, fails.
#[test]
fn fleet_records_verify_checks_witness_cosignatures() {
    let test = "fleet_records_verify_checks_witness_cosignatures";
    let port = free_port();
    let witnessed = format!("  witnesses: [\"http://127.0.0.1:{port}\"]\n");
    let Some(f) = setup_full(test, false, &witnessed) else {
        return;
    };
    let key_a = verifier_key(&f.a);
    let w = Witness::start(port, &f.dir.join("witness"), "w.example/fleet", &[&key_a]);
    for _ in 0..3 {
        assert_eq!(f.show(&f.cg_a).0, 200);
    }
    let last = *all_shipped(&f, &f.a, "host-a").last().expect("records");
    // Settled: the largest checkpoint shipped covers the whole log and carries the
    // witness's cosignature.
    let listed = || {
        records_fleet_json(
            &f,
            &["checkpoints", "--fleet", "--json", "--host", "host-a"],
        )
    };
    let cp = wait_for(Duration::from_secs(40), || {
        listed()
            .first()
            .filter(|c| c["size"].as_u64() >= Some(last) && c["cosigned"].is_string())
            .cloned()
    })
    .unwrap_or_else(|| panic!("no cosigned checkpoint of host-a shipped\n{}", f.a.log()));
    let size = cp["size"].as_u64().expect("size");
    let cosigned = cp["cosigned"].as_str().expect("cosigned").to_string();
    let wkey = w.key();
    let (ok, out) = verify_fleet_with(&f, &key_a, &["--witness-key", &wkey]);
    assert!(
        ok && out.contains("cosignatures: 1 of 1 witness(es) valid, quorum 1 met")
            && out.contains("verified: host host-a"),
        "{out}"
    );

    let put = |text: &str| {
        f.pg.psql(
            "callgate",
            &format!(
                "UPDATE callgate_checkpoints SET cosigned = $cg${text}$cg$ \
                 WHERE host = 'host-a' AND size = {size}"
            ),
        )
    };
    // The witness's line stripped: its cosignature is missing, the quorum not met.
    put(cp["note"].as_str().expect("note"));
    let (ok, out) = verify_fleet_with(&f, &key_a, &["--witness-key", &wkey]);
    assert!(
        !ok && out.contains("no cosignature of this checkpoint") && out.contains("NOT met"),
        "{out}"
    );
    // One character of the witness's signature changed (well inside its base64 text).
    let altered: String = cosigned
        .lines()
        .map(|l| {
            let mut l = l.to_string();
            if l.starts_with("\u{2014} w.example/fleet ") {
                let at = l.trim_end_matches('=').len() - 10;
                let c = if &l[at..at + 1] == "A" { "B" } else { "A" };
                l.replace_range(at..at + 1, c);
            }
            l + "\n"
        })
        .collect();
    assert_ne!(altered, cosigned);
    put(&altered);
    let (ok, out) = verify_fleet_with(&f, &key_a, &["--witness-key", &wkey]);
    assert!(
        !ok && out.contains("BROKEN: witness w.example/fleet: its cosignature does not verify"),
        "{out}"
    );
    // Another checkpoint's text under this row's size: not this checkpoint.
    let other = cosigned.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1), 1);
    put(&other);
    let (ok, out) = verify_fleet_with(&f, &key_a, &["--witness-key", &wkey]);
    assert!(!ok && out.contains("is not that checkpoint"), "{out}");
    // Restored, it verifies again; without --witness-key the latest is checked as before.
    put(&cosigned);
    let (ok, out) = verify_fleet_with(&f, &key_a, &["--witness-key", &wkey]);
    assert!(ok, "{out}");
    let (ok, out) = verify_fleet(&f, &key_a);
    assert!(ok, "{out}");
}

/// The fleet quota check's added latency as a client sees it (docs/FLEET.md, "Measured
/// here"): run by hand, on a release (`--profile demo`) build, with
/// `CALLGATE_BIN=$PWD/target/demo/callgate cargo test -p callgate-e2e --test fleet --
/// --include-ignored --nocapture --test-threads 1 fleet_quota_added_latency`; `CALLGATE_BENCH_CALLS` calls of each (default 2000).
#[test]
#[ignore = "a latency probe for docs/FLEET.md (an idle machine, a --profile demo build), not a test"]
fn fleet_quota_added_latency() {
    let Some(f) = setup("fleet_quota_added_latency") else {
        return;
    };
    let n: usize = std::env::var("CALLGATE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let out = f.dir.join("timed.json");
    let (port, calls) = (f.up.port.to_string(), n.to_string());
    let python = party_python();
    let argv = [
        python.to_str().expect("python path"),
        "-c",
        TIMED_CLIENT,
        &port,
        &calls,
        "200",
    ];
    let mut child = f.cg_a.spawn(&argv, &out);
    let done = wait_for(Duration::from_secs(600), || child.try_wait().ok()?);
    assert!(
        done.is_some_and(|s| s.success()),
        "{}",
        fs::read_to_string(&out).unwrap_or_default()
    );
    let text = fs::read_to_string(&out).expect("timings");
    let timed: Vec<Vec<f64>> = serde_json::from_str(text.trim()).expect("timings as JSON");
    let ms = |v: &[f64]| {
        let mut v: Vec<f64> = v.iter().map(|ns| ns / 1e6).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (quota, plain) = (ms(&timed[0]), ms(&timed[1]));
    // Each call with the quota against the call without it right next to it.
    let mut paired: Vec<f64> = timed[0]
        .iter()
        .zip(&timed[1])
        .map(|(q, p)| (q - p) / 1e6)
        .collect();
    paired.sort_by(f64::total_cmp);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let row = |name: &str, v: &[f64]| {
        eprintln!(
            "{name:>22}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v[v.len() - 1]
        )
    };
    eprintln!(
        "fleet quota latency, {n} calls each, load average {}",
        load.trim()
    );
    row("with a fleet quota", &quota);
    row("without", &plain);
    row("paired difference", &paired);
    eprintln!(
        "{:>22}: p50 {:.3} ms, p99 {:.3} ms",
        "difference of",
        percentile(&quota, 0.5) - percentile(&plain, 0.5),
        percentile(&quota, 0.99) - percentile(&plain, 0.99)
    );
    let held = quota_blocks(&f.a);
    eprintln!("{:>22}: {held}", "A's blocks at the end");
    // Blocks left idle give their unused counts back within seconds: then the database
    // counts every call admitted, and no more.
    let counted = wait_for(Duration::from_secs(10), || {
        let c =
            f.pg.psql("callgate", "SELECT sum(count) FROM callgate_quotas");
        (c == (n + 200).to_string()).then_some(c)
    });
    assert!(
        counted.is_some(),
        "every call was counted in the database, and no more: {} (A's blocks {})",
        f.pg.psql("callgate", "SELECT sum(count) FROM callgate_quotas"),
        quota_blocks(&f.a)
    );
}

/// TLS to the database (rustls): against a server that takes TLS only, `verify-full` with
/// the CA that signed its certificate connects; an unrelated CA is refused with the reason
/// in `status` and fleet features fail closed; plaintext is refused by the server.
#[test]
fn tls_to_the_database() {
    let test = "tls_to_the_database";
    if !ebpf_available(test) || !parties_available(test) || !postgres_available(test) {
        return;
    }
    let (pg, ca) = Postgres::start_tls();
    let dir = TestDir::new("callgate-fleet-tls");
    let up = upstream(&dir, None);
    let policies = policy(&dir, up.port);
    let gateway = |name: &str, query: &str, ca: Option<&std::path::Path>| {
        let d = dir.join(name);
        fs::create_dir_all(&d).expect("gateway dir");
        let mut c = format!(
            "fleet:\n  database: \"postgresql://postgres@127.0.0.1:{}/callgate{query}\"\n  \
             host: {name}\n  heartbeat_s: 1\n  dead_after_s: 3\n  pool_size: 2\n",
            pg.port
        );
        if let Some(ca) = ca {
            c.push_str(&format!("  ca: \"{}\"\n", ca.display()));
        }
        gateway_with_config(&policies, &c, &d)
    };
    let fleet_status = |gw: &Gateway| gw.status()["approvals"]["fleet"].clone();

    // verify-full with the right CA: connected, over TLS as the server sees it.
    let good = gateway("good", "?sslmode=verify-full", Some(&ca));
    let st = wait_for(Duration::from_secs(20), || {
        let s = fleet_status(&good);
        (s["connected"] == true).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "verify-full did not connect: {}\n{}",
            fleet_status(&good),
            good.log()
        )
    });
    assert_eq!(st["tls"], "verify-full", "{st}");
    cli_ok(&good, &["approvals", "list", "--json"]);
    assert_eq!(
        pg.psql(
            "callgate",
            "SELECT count(*) > 0 AND bool_and(s.ssl) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'callgate good'"
        ),
        "t",
        "every connection of the gateway is TLS"
    );
    // The CLI's own connection (records list --fleet) takes the same settings.
    let out = Command::new(callgate_bin())
        .args(["records", "list", "--fleet", "--json"])
        .arg("--config")
        .arg(dir.join("good").join("callgate.yaml"))
        .output()
        .expect("records list --fleet");
    assert!(
        out.status.success(),
        "records list --fleet over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.psql("callgate", "SELECT count(*) FROM callgate_schema"),
        pg.psql("callgate", "SELECT max(version) FROM callgate_schema"),
    );

    // An unrelated CA: refused, the reason in status; a call that needs approval is refused.
    let other = Postgres::unrelated_ca(&dir);
    let bad = gateway("bad", "?sslmode=verify-full", Some(&other));
    let st = fleet_status(&bad);
    assert_eq!(st["connected"], false, "{st}");
    let why = st["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("invalid peer certificate"), "{why}");
    eprintln!("fleet: wrong CA, status says: {why}");
    let slice = TestCgroup::slice("fleet-tls");
    let cg = slice.child(&format!("{}.service", unique("tls-job")));
    bad.enable(&cg);
    let out = dir.join(unique("curl"));
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1/refund", up.port);
    let call = Call {
        child: cg.spawn(
            &[
                "curl",
                "-sS",
                "--max-time",
                "30",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}",
                &url,
            ],
            &out,
        ),
        out,
    };
    let (code, body) = call.finish();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("approval_unavailable"), "{body}");

    // Plaintext to a server that takes TLS only: refused by the server, said in status.
    let plain = gateway("plain", "", None);
    let st = fleet_status(&plain);
    assert_eq!(st["connected"], false, "{st}");
    assert_eq!(st["tls"], "off", "{st}");
    // A retry that times out on a loaded machine says so instead, for a while.
    let why = wait_for(Duration::from_secs(15), || {
        let why = fleet_status(&plain)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        why.contains("no encryption").then_some(why)
    });
    let why = why.unwrap_or_else(|| panic!("{}", fleet_status(&plain)));
    eprintln!("fleet: plaintext to a TLS-only server, status says: {why}");
}

/// Each host's verifier key (the records key it seals with) in a `trusted_keys` file both
/// configurations name; both restart with it (same state, keys and enabled cgroups). A also
/// serves `/metrics` on `admin` when given.
fn trust_each_other(f: &mut Fleet, trusted: bool, admin: Option<u16>) {
    let key = |gw: &Gateway| {
        fs::read_to_string(gw.dir.join("state/records/checkpoint.pub"))
            .expect("the host's verifier key")
            .trim()
            .to_string()
    };
    let file = f.dir.join("trusted-keys");
    fs::write(
        &file,
        format!("# the fleet's hosts\n{}\n{}\n", key(&f.a), key(&f.b)),
    )
    .expect("trusted keys");
    for (gw, host) in [(&mut f.a, "a"), (&mut f.b, "b")] {
        let path = f.dir.join(host).join("callgate.yaml");
        let text = fs::read_to_string(&path).expect("config");
        let line = format!("  trusted_keys: {}\n", file.display());
        let mut text = if trusted {
            text.replace("  dead_after_s: 3\n", &format!("  dead_after_s: 3\n{line}"))
        } else {
            text.replace(&line, "")
        };
        if let (Some(port), "a") = (admin, host) {
            text.push_str(&format!("admin_http:\n  listen: 127.0.0.1:{port}\n"));
        }
        fs::write(&path, text).expect("config");
        gw.restart();
    }
}

/// A's `/metrics`, the line of `name` (with its value).
fn metric(admin: u16, name: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{admin}/metrics"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics: {text}"))
        .to_string()
}

fn refunds_upstream(f: &Fleet) -> usize {
    f.up.requests()
        .iter()
        .filter(|r| r.to_string().contains("/refund"))
        .count()
}

/// Waits (at most 10 s) until `gw` holds `n` calls itself.
fn held_here(gw: &Gateway, n: u64) {
    let ok = wait_for(Duration::from_secs(10), || {
        (gw.status()["approvals"]["pending"].as_u64() == Some(n)).then_some(())
    });
    assert!(
        ok.is_some(),
        "{} calls held, not {n}:\n{}",
        gw.status(),
        gw.log()
    );
}

fn trust(gw: &Gateway) -> Value {
    gw.status()["approvals"]["fleet_trust"].clone()
}

/// Hosts that trust each other's seals: a verdict given on B still reaches A; a writer to the
/// database who approves a held call with a copied verdict, alters a held call's request, or
/// inserts a grant gets nothing: the call stays held (and is never sent upstream), B's
/// approver is refused to judge the altered request, the next call is held despite the grant;
/// A records and counts each refusal.
#[test]
fn the_database_alone_cannot_approve() {
    let Some(mut f) = setup("the_database_alone_cannot_approve") else {
        return;
    };
    assert_eq!(trust(&f.a)["sealed"], false, "{}", f.a.status());
    let status = cli_ok(&f.a, &["status"]);
    assert!(status.contains("fleet trust: database trusted"), "{status}");
    let admin = free_port();
    trust_each_other(&mut f, true, Some(admin));
    assert_eq!(
        metric(admin, "callgate_fleet_sealed"),
        "callgate_fleet_sealed 1"
    );
    assert_eq!(trust(&f.a)["sealed"], true, "{}", f.a.status());
    assert_eq!(trust(&f.a)["trusted_keys"], 2);
    let status = cli_ok(&f.b, &["status"]);
    assert!(
        status.contains("fleet trust: sealed (2 trusted keys)"),
        "{status}"
    );

    // Sealed end to end: held on A, approved on B, A's client gets the upstream's answer.
    let call = f.refund(&f.cg_a);
    let genuine = pending_id(&f.b, "host-a");
    cli_ok(&f.b, &["approvals", "approve", &genuine, "--as", "lee"]);
    let (code, body) = call.finish();
    assert_eq!(code, 200, "approved on B: {body}\n{}", f.a.log());
    let row = f.pg.psql(
        "callgate",
        &format!("SELECT request->>'seal', verdict->>'seal' FROM callgate_approvals WHERE id = '{genuine}'"),
    );
    assert!(
        row.contains("callgate fleet request v1") && row.contains("callgate fleet verdict v1"),
        "{row}"
    );

    // (a) A writer approves a held call with a verdict copied from another (sealed, by a
    // trusted host, but for another request).
    let sent = refunds_upstream(&f);
    let call = f.refund(&f.cg_a);
    let forged = pending_id(&f.b, "host-a");
    f.pg.psql(
        "callgate",
        &format!(
            "UPDATE callgate_approvals SET state = 'approved', \
             verdict = (SELECT verdict FROM callgate_approvals WHERE id = '{genuine}') \
             WHERE id = '{forged}'"
        ),
    );
    let rec = record_where(&f.a, "the refused verdict", |r| {
        r["service"] == "callgate.fleet"
            && r["function"] == "refuse_verdict"
            && r["args"]["id"] == forged.as_str()
    });
    let why = rec["decision"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains("its seal is for request"), "{rec}");
    assert_eq!(rec["decision"]["action"], "deny");
    assert_eq!(trust(&f.a)["refused_verdicts"], 1, "{}", f.a.status());
    assert_eq!(
        metric(admin, "callgate_fleet_verdicts_refused_total"),
        "callgate_fleet_verdicts_refused_total 1"
    );
    std::thread::sleep(Duration::from_secs(1));
    held_here(&f.a, 1);
    assert!(
        f.a.log()
            .contains("refused a verdict from the fleet database")
    );
    assert_eq!(
        refunds_upstream(&f),
        sent,
        "the forged approval sent nothing upstream"
    );
    drop(call);

    // (b) A writer alters a held call's request (so that a refund looks like a read): B's
    // approver is refused to judge it.
    let call = f.refund(&f.cg_a);
    let altered = pending_id(&f.b, "host-a");
    f.pg.psql(
        "callgate",
        &format!(
            "UPDATE callgate_approvals SET request = jsonb_set(request, '{{function}}', '\"show\"') \
             WHERE id = '{altered}'"
        ),
    );
    let out = f.b.cli(&["approvals", "approve", &altered, "--as", "lee"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "B approved an altered request");
    assert!(
        err.contains("is not judged") && err.contains("differs from what its host sealed"),
        "{err}"
    );
    assert_eq!(trust(&f.b)["refused_requests"], 1);
    held_here(&f.a, 1);
    drop(call);

    // (c) A writer inserts a grant for A's caller (built from a held call's own scope): A's
    // next identical call is held all the same.
    let call = f.refund(&f.cg_a);
    // (The altered call of (b) may still be listed pending until its end reaches the database.)
    let held = wait_for(Duration::from_secs(20), || {
        list(&f.b, false)
            .into_iter()
            .find(|r| r["host"] == "host-a" && r["id"] != altered.as_str())
    })
    .expect("the call held on A")["id"]
        .as_str()
        .expect("id")
        .to_string();
    f.pg.psql(
        "callgate",
        &format!(
            "INSERT INTO callgate_grants (id, grant_json, expires_at_ms) \
             SELECT 'forged-grant', jsonb_build_object('id', 'forged-grant', \
               'caller', request->'scope'->>'caller', 'service', request->'scope'->>'service', \
               'function', request->'scope'->>'function', 'args_digest', request->'scope'->'args', \
               'rule', request->'scope'->>'rule', 'policy_commit', request->'scope'->'policy', \
               'expires_at_ms', floor(extract(epoch FROM now()) * 1000)::bigint + 3600000, \
               'approved_by', 'mallory', 'request', id, 'uses', 0), \
               floor(extract(epoch FROM now()) * 1000)::bigint + 3600000 \
             FROM callgate_approvals WHERE id = '{held}'"
        ),
    );
    drop(call);
    let rec = record_where(&f.a, "the refused grant", |r| {
        r["service"] == "callgate.fleet" && r["function"] == "refuse_grant"
    });
    assert_eq!(rec["args"]["id"], "forged-grant", "{rec}");
    assert_eq!(trust(&f.a)["refused_grants"], 1, "{}", f.a.status());
    assert_eq!(
        metric(admin, "callgate_fleet_grants_refused_total"),
        "callgate_fleet_grants_refused_total 1"
    );
    held_here(&f.a, 0);
    let sent = refunds_upstream(&f);
    let call = f.refund(&f.cg_a);
    held_here(&f.a, 1);
    assert_eq!(refunds_upstream(&f), sent, "held, not granted");
    drop(call);

    // The same grant with the database trusted (no trusted_keys) is honoured: the forgery
    // above was well formed, and it is the seal that stopped it.
    trust_each_other(&mut f, false, None);
    assert_eq!(trust(&f.a)["sealed"], false);
    let grants = cli_ok(&f.a, &["approvals", "grants", "list", "--json"]);
    let row = f.pg.psql(
        "callgate",
        "SELECT grant_json::text FROM callgate_grants WHERE id = 'forged-grant'",
    );
    let (code, body) = f.refund(&f.cg_a).finish();
    assert_eq!(
        code,
        200,
        "the database trusted, its grant holds: {body}\n{grants}\n{row}\n{}",
        f.a.log()
    );
}
