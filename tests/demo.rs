//! The first run: the example policy repository as a newcomer starts it (its identity
//! provider, `idp.corp.example`, is one nobody has), and `callgate demo`, the demo world that
//! `cargo xtask run` starts.
use std::{fs, path::Path, process::Command, time::Duration};

use callgate_e2e::*;

/// The example policy's provider cannot be reached: the key refresh retries it, but the log
/// says so once and then at a falling rate (1st, 2nd, 4th, 8th failure), and `status` has the
/// whole outage (provider, last error, since when, failures). The refresh is made 1 s here so
/// that a dozen failures fit in a test; before, each one was a warning.
#[test]
fn an_unreachable_provider_is_warned_about_at_a_falling_rate_and_shown_in_status() {
    if !ebpf_available("an_unreachable_provider_is_warned_about") {
        return;
    }
    let dir = TestDir::new("callgate-example");
    let repo = dir.join("policies");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&repo)
            .status()
            .expect("cp")
            .success()
    );
    let top = repo.join("callgate.yaml");
    let text = fs::read_to_string(&top).expect("callgate.yaml");
    assert!(text.contains("https://idp.corp.example"), "{text}");
    let text = text.replacen(
        "groups_claim: groups",
        "groups_claim: groups\n      jwks_refresh_s: 1",
        1,
    );
    fs::write(&top, text).expect("write");
    let gw = Gateway::start_with(&["--policies", &repo.display().to_string()]);
    let failing = |gw: &Gateway| gw.status()["identity"][0]["failing_fetches"].as_u64();
    let n1 = wait_for(Duration::from_secs(30), || {
        failing(&gw).filter(|&n| n >= 12)
    })
    .unwrap_or_else(|| panic!("no dozen failed fetches: {}\n{}", gw.status(), gw.log()));
    let warnings = gw
        .log()
        .lines()
        .filter(|l| l.contains("cannot fetch OIDC signing keys") && l.contains("WARN"))
        .count() as u32;
    let n2 = failing(&gw).expect("still failing");
    assert!(
        (n1.ilog2() + 1..=n2.ilog2() + 1).contains(&warnings),
        "{warnings} warnings for {n1}..{n2} failures:\n{}",
        gw.log()
    );
    let p = &gw.status()["identity"][0];
    assert_eq!(p["name"], "corp", "{p}");
    assert!(p["failing_since_ms"].as_u64().is_some(), "{p}");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("idp.corp.example")),
        "{p}"
    );
    let text = gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("unreachable since") && text.contains("fetches in a row failed"),
        "{text}"
    );
}

/// `callgate demo` run as `cargo xtask run` does, unattended.
struct Demo {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Demo {
    fn output(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// SIGINT, as Ctrl-C at the terminal; waits (at most 30 s) for the demo to exit.
    fn interrupt(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child, whose pid stays reserved until we wait for it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        wait_for(Duration::from_secs(30), || self.child.try_wait().ok()?)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.interrupt().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("demo output:\n{}", self.output());
        }
    }
}

/// Starts `callgate demo` as `cargo xtask run` does, in `dir`, with `extra` arguments: the
/// demo, its state directory, its cgroup (relative) and its bpffs directory.
fn start_demo(
    dir: &TestDir,
    extra: &[&str],
) -> (Demo, std::path::PathBuf, String, std::path::PathBuf) {
    let state = dir.join("state");
    let cgroup = format!("callgate-demo/{}", unique("e2e"));
    let bpffs = Path::new("/sys/fs/bpf").join(unique("callgate-demo-e2e"));
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/demo");
    let out = dir.join("demo.out");
    let log = fs::File::create(&out).expect("demo.out");
    let child = Command::new(callgate_bin())
        .arg("demo")
        .arg("--policies")
        .arg(&policies)
        .arg("--state-dir")
        .arg(&state)
        .arg("--python")
        .arg(party_python())
        .args(["--cgroup", &cgroup])
        .args(["--listen-port", &free_port().to_string()])
        .args(["--admin-port", &free_port().to_string()])
        .arg("--bpffs-dir")
        .arg(&bpffs)
        .args(extra)
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn callgate demo");
    (Demo { child, out }, state, cgroup, bpffs)
}

/// The pids of the processes whose command line names `needle`, other than `except`.
fn processes_naming(needle: &str, except: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != except)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// The demo unattended: each of the agent's five calls gets the decision it is meant to get
/// (shown in the live table, the held one approved by `--auto-approve-after`), the card
/// number and e-mail never reach the agent, the records hold the five and verify, and SIGINT
/// leaves no cgroup, process or bpffs pin behind.
#[test]
fn the_demo_shows_five_outcomes_and_ctrl_c_cleans_up() {
    if !ebpf_available("the_demo_shows_five_outcomes") || !parties_available("the_demo") {
        return;
    }
    let dir = TestDir::new("callgate-demo-e2e");
    let (mut demo, state, cgroup, bpffs) = start_demo(&dir, &["--auto-approve-after", "1"]);
    let ready = wait_for(Duration::from_secs(120), || {
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("the demo exited ({status}):\n{}", demo.output());
        }
        demo.output().contains("Ctrl-C stops it").then_some(())
    });
    assert!(ready.is_some(), "the demo did not finish its calls");
    let text = demo.output();
    let row = |call: &str, decision: &str, rule: &str| {
        text.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(3).any(|w| w == [call, decision, rule])
        })
    };
    for (call, decision, rule) in [
        ("payments.list_payments", "allow", "agents-read-payments"),
        ("payments.refund", "deny", "agents-never-refund-over-1000"),
        ("tools.search_docs", "allow", "agents-search-docs"),
        ("payments.refund", "HELD", "large-refunds-need-approval"),
        ("payments.refund", "approved", "large-refunds-need-approval"),
        ("tools.search_docs", "limited", "agents-search-docs"),
    ] {
        assert!(
            row(call, decision, rule),
            "no row {call} {decision} {rule}:\n{text}"
        );
    }
    assert!(
        text.contains("approvals approve ") && text.contains("/approvals/"),
        "the held call says how to approve it:\n{text}"
    );
    // The masked answer, as the agent got it; the values themselves nowhere.
    assert!(
        text.contains("agent: 3 search the docs: results for jane doe")
            && text.contains("[MASKED:email]"),
        "{text}"
    );
    assert!(
        !text.contains("4111 1111 1111 1111") && !text.contains("jane.doe@example.com"),
        "{text}"
    );
    assert!(text.contains("agent: done: 5 calls"), "{text}");

    // The records hold the five and verify.
    let records = state.join("gateway/records");
    let cli = |args: &[&str]| {
        Command::new(callgate_bin())
            .args(args)
            .arg("--dir")
            .arg(&records)
            .output()
            .expect("callgate records")
    };
    let listed = cli(&["records", "list", "--json"]);
    let mut listed: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // A record is written when its call ends, so the list is in the order the
    // calls finished: the agent may already have its answer (and send the next
    // call) before the last bytes' record lands. The order they were made in is
    // the order of their ids (UUIDv7, monotonic within the gateway).
    listed.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    let decided: Vec<(String, String)> = listed
        .iter()
        .filter(|r| r["decision"]["rule"].is_string())
        .map(|r| {
            let d = &r["decision"];
            let outcome = if d["limit"].is_object() {
                "limited".to_string()
            } else {
                d["action"].as_str().unwrap_or("?").to_string()
            };
            (r["function"].as_str().unwrap_or("?").to_string(), outcome)
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("list_payments", "allow"),
        ("refund", "deny"),
        ("search_docs", "allow"),
        ("refund", "approve"),
        ("search_docs", "limited"),
    ]
    .iter()
    .map(|(f, d)| (f.to_string(), d.to_string()))
    .collect();
    assert_eq!(decided, want, "{listed:#?}");
    let verified = cli(&["records", "verify"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    // Ctrl-C: everything it started is gone.
    let needle = state.display().to_string();
    let started = processes_naming(&needle, demo.child.id());
    assert!(
        started.len() >= 3,
        "gateway and two servers expected, found {started:?}"
    );
    let status = demo.interrupt().expect("the demo did not stop on SIGINT");
    assert!(status.success(), "{status}:\n{}", demo.output());
    assert!(demo.output().contains("stopped;"), "{}", demo.output());
    let cg = cgroup_mount().expect("cgroup mount").join(&cgroup);
    assert!(!cg.exists(), "{} left behind", cg.display());
    assert!(!bpffs.exists(), "{} left behind", bpffs.display());
    let left = processes_naming(&needle, demo.child.id());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Logs in to the approvals page as a browser would, with the credentials the demo printed,
/// and approves `id` with the page's form. A wrong password is refused first.
const PAGE_APPROVER: &str = r#"
import html, re, sys, requests
web, rid, password = sys.argv[1:4]
s = requests.Session()
r = s.get(f"{web}/approvals/{rid}", timeout=20)
assert r.status_code == 200 and "name=password" in r.text, (r.status_code, r.url, r.text[:500])
login = r.url.split("?")[0]
fields = {k: html.unescape(v) for k, v in re.findall(r'<input type=hidden name="([^"]+)" value="([^"]*)">', r.text)}
r = s.post(login, data=dict(fields, username="approver", password="wrong"), timeout=20)
assert r.status_code == 401 and "wrong user or password" in r.text, (r.status_code, r.text[:500])
r = s.post(login, data=dict(fields, username="approver", password=password), timeout=20)
assert r.status_code == 200 and r.url.startswith(f"{web}/approvals/{rid}"), (r.status_code, r.url, r.text[:500])
csrf = re.search(r'name=csrf value="([^"]+)"', r.text).group(1)
r = s.post(f"{web}/approvals/{rid}", data={"csrf": csrf, "verdict": "approve", "comment": "on the page"}, timeout=20)
assert r.status_code == 200 and "done=approved" in r.url, (r.status_code, r.url, r.text[:500])
print("approved on the page:", r.url)
"#;

/// The approvals page works in the demo without setup: the demo prints the page's URL with
/// a login of its own (user and a password made for the run); logging in with them and
/// approving the held call with the page's form lets the agent's call complete.
#[test]
fn the_held_call_is_approved_on_the_page_with_the_printed_login() {
    if !ebpf_available("the_held_call_is_approved_on_the_page") || !parties_available("the_demo") {
        return;
    }
    let dir = TestDir::new("callgate-demo-page");
    let (mut demo, _state, cgroup, bpffs) = start_demo(&dir, &[]);
    let held = wait_for(Duration::from_secs(120), || {
        if let Ok(Some(status)) = demo.child.try_wait() {
            panic!("the demo exited ({status}):\n{}", demo.output());
        }
        let text = demo.output();
        let line = text
            .lines()
            .find(|l| l.contains("or the approvals page: "))?;
        let url = line
            .split("approvals page: ")
            .nth(1)?
            .split_whitespace()
            .next()?;
        let password = line.split("password ").nth(1)?.split_whitespace().next()?;
        let (web, id) = url.split_once("/approvals/")?;
        Some((web.to_string(), id.to_string(), password.to_string()))
    });
    let (web, id, password) = held.unwrap_or_else(|| panic!("no held call:\n{}", demo.output()));
    let out = Command::new(party_python())
        .args(["-c", PAGE_APPROVER, &web, &id, &password])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        demo.output()
    );
    let done = wait_for(Duration::from_secs(60), || {
        demo.output().contains("Ctrl-C stops it").then_some(())
    });
    assert!(
        done.is_some(),
        "the demo did not finish:\n{}",
        demo.output()
    );
    let text = demo.output();
    assert!(
        text.lines()
            .any(|l| l.contains("payments.refund") && l.contains("approved")),
        "{text}"
    );
    assert!(text.contains("approved by approver"), "{text}");
    assert!(text.contains("agent: done: 5 calls"), "{text}");
    let status = demo.interrupt().expect("the demo did not stop on SIGINT");
    assert!(status.success(), "{status}:\n{}", demo.output());
    let cg = cgroup_mount().expect("cgroup mount").join(&cgroup);
    assert!(!cg.exists(), "{} left behind", cg.display());
    assert!(!bpffs.exists(), "{} left behind", bpffs.display());
}
