//! Fleet mode end to end: two gateways on this machine stand for two hosts — each with its
//! own state directory, control socket, bpffs directory, redirect port and enabled cgroup —
//! sharing one real PostgreSQL 15 that the test starts (and stops) on a loopback port. A
//! call held on A is listed on both and approved from B's CLI; A's client gets the
//! upstream's answer. With the database stopped, new approvals are refused (503
//! `approval_unavailable`) while allowed calls go on; once it is back, approvals work again.
//! A host that dies has its held calls marked interrupted by the other; a database whose
//! schema is newer than the binary knows refuses the start.
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
rules:
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
    format!(
        "fleet:\n  database: \"{}\"\n  host: {host}\n  heartbeat_s: 1\n  dead_after_s: 3\n",
        pg.url()
    )
}

fn setup(test: &str) -> Option<Fleet> {
    if !ebpf_available(test) || !parties_available(test) || !postgres_available(test) {
        return None;
    }
    let pg = Postgres::start();
    let dir = TestDir::new("callgate-fleet");
    let up = upstream(&dir, None);
    let policies = policy(&dir, up.port);
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    fs::create_dir_all(&dir_a).expect("dir a");
    fs::create_dir_all(&dir_b).expect("dir b");
    // Both start at once against a fresh database: the migration runs once, under its lock.
    let start = |d: PathBuf, host: &'static str| {
        let (p, c) = (policies.clone(), config(&pg, host));
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
        let id = pending_on(&f.b, "host-a")["id"]
            .as_str()
            .expect("id")
            .to_string();
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
    assert!(took[took.len() - 1] < Duration::from_secs(2), "{took:?}");
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
    let id = pending_on(&f.b, "host-a")["id"]
        .as_str()
        .expect("id")
        .to_string();
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
    let id = pending_on(&f.b, "host-a")["id"]
        .as_str()
        .expect("id")
        .to_string();
    cli_ok(&f.b, &["approvals", "approve", &id, "--as", "lee"]);
    let (code, body) = call.finish();
    assert_eq!(code, 200, "{body}");

    // Denied on A's own CLI, a call held on B: B's client is told.
    let call = f.refund(&f.cg_b);
    let id = pending_on(&f.a, "host-b")["id"]
        .as_str()
        .expect("id")
        .to_string();
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

    // B dies with a call held: A marks it interrupted once B has been silent for 3 s.
    let call = f.refund(&f.cg_b);
    let id = pending_on(&f.a, "host-b")["id"]
        .as_str()
        .expect("id")
        .to_string();
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
    let dir = TestDir::new("callgate-fleet-schema");
    let policies = policy(&dir, 9);
    let config = dir.join("callgate.yaml");
    fs::write(&config, config_text(&pg)).expect("config");
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.is_some(), "callgate started on a newer schema");
    assert!(!out.status.success());
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

fn config_text(pg: &Postgres) -> String {
    config(pg, "host-new")
}

/// `records list --fleet --json` with host `a`'s configuration: every host's records.
fn fleet_records(f: &Fleet) -> Vec<Value> {
    let out = Command::new(callgate_bin())
        .args(["records", "list", "--fleet", "--json", "--limit", "10000"])
        .arg("--config")
        .arg(f.dir.join("a").join("callgate.yaml"))
        .output()
        .expect("records list --fleet");
    assert!(
        out.status.success(),
        "records list --fleet: {}",
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
    let why = st["error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("no encryption"), "{why}");
    eprintln!("fleet: plaintext to a TLS-only server, status says: {why}");
}
