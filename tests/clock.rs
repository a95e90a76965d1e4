//! Wall-clock jumps (an NTP step, an operator's `date -s`) under a running gateway, made with
//! libfaketime preloaded into it (only the wall clock moves; the monotonic one does not):
//! setting the clock back neither refills a rate limit, nor hands out a fresh daily quota,
//! nor lengthens an approval grant; moving it forward opens the next day's quota; the record
//! chain still verifies.
use std::{fs, path::Path, process::Command, time::Duration};

use callgate_e2e::*;

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn set_clock(file: &Path, when: &str) {
    fs::write(file, format!("@{when}\n")).expect("faketime file");
    // libfaketime re-reads the file on every call (FAKETIME_NO_CACHE), so this is at once.
}

fn status(cg: &TestCgroup, method: &str, url: &str) -> String {
    let mut args = vec!["-X", method];
    if method == "POST" {
        args.extend(["-H", "Content-Type: application/json", "-d", "{}"]);
    }
    args.push(url);
    status_in(cg, &args)
}

/// Starts an empty JSON POST from `cg`, its HTTP status written to `out`.
fn post_in(cg: &TestCgroup, url: &str, max_time: u32, out: &Path) -> std::process::Child {
    let max_time = max_time.to_string();
    cg.spawn(
        &[
            "curl",
            "-sS",
            "--max-time",
            &max_time,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{}",
            url,
        ],
        out,
    )
}

#[test]
fn wall_clock_jumps_open_nothing() {
    let test = "wall_clock_jumps_open_nothing";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    if !Path::new(FAKETIME).exists()
        && !skip(
            test,
            "libfaketime is not installed (Debian package faketime)",
        )
    {
        return;
    }
    let dir = TestDir::new("callgate-clock");
    let clock = dir.join("faketime");
    set_clock(&clock, "2026-11-24 12:00:00");
    let up = upstream(&dir, None);
    let service = format!(
        r#"
service: payments
match: {{ hosts: ["127.0.0.1:{}"] }}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{payment_id}}" }}
  refund: {{ route: "POST /v1/payments/{{payment_id}}/refund" }}
  capture: {{ route: "POST /v1/payments/{{payment_id}}/capture" }}
rules:
  - name: reads-are-paced
    function: get_payment
    action: allow
    limit: {{ per: [workload.cgroup], rate: 3/h }}
  - name: two-refunds-a-day
    function: refund
    action: allow
    quota: {{ per: [workload.cgroup], calls: 2/d }}
  - name: captures-need-a-nod
    function: capture
    action: approve
    approval: {{ approvers: {{ groups: [finance] }}, timeout: 20s, grant: 1h }}
"#,
        up.port
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("payments", &service)]);
    let clock_file = clock.display().to_string();
    let gw = gateway_with_config_env(
        &policies,
        "{}\n",
        &dir,
        &[
            ("LD_PRELOAD", FAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", &clock_file),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let cg = TestCgroup::new("clock");
    gw.enable(&cg);
    let base = format!("http://127.0.0.1:{}", up.port);
    let get = format!("{base}/v1/payments/p_1");
    let refund = format!("{base}/v1/payments/p_1/refund");
    let capture = format!("{base}/v1/payments/p_1/capture");

    // 24 November: three reads, two refunds, then both are spent.
    for _ in 0..3 {
        assert_eq!(status(&cg, "GET", &get), "200");
    }
    assert_eq!(status(&cg, "GET", &get), "429");
    for _ in 0..2 {
        assert_eq!(status(&cg, "POST", &refund), "200");
    }
    assert_eq!(status(&cg, "POST", &refund), "429");
    // A capture approved with a 3-second grant; a second one passes on the grant.
    let out = dir.join("capture.out");
    let mut held = post_in(&cg, &capture, 30, &out);
    let id = wait_for(Duration::from_secs(20), || {
        let o = gw.cli(&["approvals", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?.first()?["id"].as_str().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("the capture was not held\n{}", gw.log()));
    let o = gw.cli(&["approvals", "approve", &id, "--grant", "3s"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done = wait_for(Duration::from_secs(20), || held.try_wait().ok()?);
    assert!(done.is_some(), "the approved capture did not finish");
    assert_eq!(fs::read_to_string(&out).unwrap_or_default(), "200");
    assert_eq!(status(&cg, "POST", &capture), "200", "on the grant");

    // The wall clock is set back a day. The read bucket does not refill, yesterday's quota
    // is not handed out again, and the grant still ends three seconds after it began.
    set_clock(&clock, "2026-11-23 12:00:00");
    assert_eq!(
        status(&cg, "GET", &get),
        "429",
        "a clock set back refilled the bucket"
    );
    assert_eq!(
        status(&cg, "POST", &refund),
        "429",
        "a clock set back reopened the quota"
    );
    std::thread::sleep(Duration::from_secs(4));
    // Past the grant's three seconds, a capture is held for a verdict again (not passed on
    // the grant), and does not reach the upstream until one comes; denied, it never does.
    let captures = || {
        up.requests()
            .iter()
            .filter(|r| r["path"] == "/v1/payments/p_1/capture")
            .count()
    };
    assert_eq!(captures(), 2);
    let late_out = dir.join("late.out");
    let mut late = post_in(&cg, &capture, 20, &late_out);
    let again = wait_for(Duration::from_secs(10), || {
        let o = gw.cli(&["approvals", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v.as_array()?
            .iter()
            .filter_map(|r| r["id"].as_str())
            .find(|i| *i != id)
            .map(str::to_string)
    });
    let Some(again) = again else {
        let _ = late.kill();
        panic!(
            "a clock set back lengthened the grant: the late capture was not held ({})\n{}",
            fs::read_to_string(&late_out).unwrap_or_default(),
            gw.log()
        );
    };
    assert_eq!(captures(), 2, "a held capture reached the upstream");
    let o = gw.cli(&["approvals", "deny", &again]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let done = wait_for(Duration::from_secs(10), || late.try_wait().ok()?);
    let _ = late.kill();
    assert!(done.is_some(), "the denied capture did not finish");
    assert_eq!(fs::read_to_string(&late_out).unwrap_or_default(), "403");
    assert_eq!(captures(), 2, "a denied capture reached the upstream");

    // Forward two days: a new day's quota.
    set_clock(&clock, "2026-11-25 12:00:00");
    assert_eq!(status(&cg, "POST", &refund), "200", "the next day's quota");

    // Every call was recorded and the chain verifies, wall times out of order or not.
    let verify = Command::new(callgate_bin())
        .args(["records", "verify", "--dir"])
        .arg(gw.dir.join("state/records"))
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let recs = records(&gw);
    assert!(recs.len() >= 12, "{} records", recs.len());
    // The gateway did live through the jumps: its records carry all three days.
    let days: std::collections::BTreeSet<u64> = recs
        .iter()
        .filter_map(|r| r["time_ms"].as_u64())
        .map(|ms| ms / 86_400_000)
        .collect();
    let nov_23 = 1_795_392_000_000 / 86_400_000;
    assert_eq!(
        days.into_iter().collect::<Vec<_>>(),
        vec![nov_23, nov_23 + 1, nov_23 + 2],
        "record days"
    );
}
