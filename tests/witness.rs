//! Witnesses off the host: the gateway sends each signed records checkpoint to the witnesses
//! of `records.witnesses` (C2SP tlog-witness) and `callgate witness` cosigns it after checking
//! it consistent with the last it cosigned. A witness that hangs or is down costs the calls
//! nothing and is caught up with later; a log rolled back to an older copy, a forked log (same
//! key, other records) and a forged signature are refused, and the witness keeps what it had,
//! across its own restart.
use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

const ORIGIN: &str = "e2e.example/callgate/records";
const WITNESS: &str = "w.example/witness";

/// curl outside any cgroup: (HTTP status, body).
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (code.to_string(), body.to_string())
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("copy dir");
    for e in fs::read_dir(from).expect("read dir").flatten() {
        fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

fn replace_dir(dir: &Path, with: &Path) {
    fs::remove_dir_all(dir).expect("remove records");
    copy_dir(with, dir);
}

fn records_cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(callgate_bin())
        .arg("records")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("callgate records");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn checkpoint_size(dir: &Path) -> u64 {
    records_cli(dir, &["checkpoint"])
        .lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

fn witness_status(gw: &Gateway) -> Value {
    gw.status()["records"]["witnesses"][0].clone()
}

fn gateway(work: &Path, name: &str, witness: &str, admin: Option<u16>) -> Gateway {
    let config = work.join(format!("{name}.yaml"));
    let mut yaml = format!(
        "records:\n  commit_window_ms: 1\n  checkpoint_interval_s: 0\n  origin: {ORIGIN}\n  witnesses: [\"{witness}\"]\n"
    );
    if let Some(p) = admin {
        yaml.push_str(&format!("admin_http:\n  listen: 127.0.0.1:{p}\n"));
    }
    fs::write(&config, yaml).expect("config");
    Gateway::start_with(&["--config", &config.display().to_string()])
}

fn wait_witnessed(gw: &Gateway, size: u64, limit: Duration) -> Value {
    let got = wait_for(limit, || {
        let w = witness_status(gw);
        (w["size"].as_u64() == Some(size)).then_some(w)
    });
    got.unwrap_or_else(|| {
        panic!(
            "the witness did not cosign size {size}: {}\n{}",
            witness_status(gw),
            gw.log()
        )
    })
}

#[test]
fn checkpoints_reach_the_witness_which_may_be_down_without_slowing_calls() {
    if !ebpf_available("witness") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let work = TestDir::new("callgate-wit");
    // The witness hangs: it takes the connection and never answers. On a port outside the
    // kernel's ephemeral range, for the witness to take over later; one found free can be
    // taken before it is bound (by a test running beside this one), so a few are tried.
    let (port, hole) = (0..5)
        .find_map(|_| {
            let port = free_port();
            TcpListener::bind(("127.0.0.1", port))
                .ok()
                .map(|h| (port, h))
        })
        .expect("black hole");
    let admin = free_port();
    let gw = gateway(
        &work,
        "gw",
        &format!("http://127.0.0.1:{port}"),
        Some(admin),
    );
    let dir = gw.dir.join("state/records");
    let cg = TestCgroup::new("cg-wit");
    gw.enable(&cg);
    let calls = |n: usize| {
        let mut slowest = Duration::ZERO;
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
            slowest = slowest.max(t.elapsed());
        }
        slowest
    };
    let slowest = calls(3);
    eprintln!("slowest call while the witness hung: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a call took {slowest:?} while the witness hung"
    );
    assert!(
        wait_for(Duration::from_secs(10), || (checkpoint_size(&dir) == 3)
            .then_some(()))
        .is_some(),
        "no checkpoint of 3: {}",
        gw.log()
    );
    // Down: its connections are reset, and status says so.
    drop(hole);
    let failing = wait_for(Duration::from_secs(15), || {
        let w = witness_status(&gw);
        w["last_error"].as_str().map(str::to_owned)
    });
    assert!(failing.is_some(), "{}", gw.status());
    assert_eq!(witness_status(&gw)["size"], 0);
    let slowest = calls(2);
    eprintln!("slowest call while the witness was down: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "a call took {slowest:?} while the witness was down"
    );

    // Up: it catches up with the latest checkpoint (from nothing: old 0).
    let key = records_cli(&dir, &["key"]).trim().to_string();
    assert!(key.starts_with(&format!("{ORIGIN}+")), "{key}");
    let key_file = work.join("log.pub");
    fs::write(&key_file, format!("{key}\n")).expect("key file");
    let state = work.join("witness");
    let mut w = Witness::start(port, &state, WITNESS, &[&key_file.display().to_string()]);
    let up = Instant::now();
    let st = wait_witnessed(&gw, 5, Duration::from_secs(45));
    eprintln!("caught up {:?} after the witness came up", up.elapsed());
    assert!(st["last_error"].is_null(), "{st}");
    assert!(st["last_success_ms"].as_u64().unwrap_or(0) > 0, "{st}");
    assert!(
        w.held().starts_with(&format!("{ORIGIN}\n5\n")),
        "{}",
        w.held()
    );

    // More calls: consistency proofs from the size it holds.
    calls(3);
    wait_witnessed(&gw, 8, Duration::from_secs(15));
    assert!(
        w.held().starts_with(&format!("{ORIGIN}\n8\n")),
        "{}",
        w.held()
    );

    // The witness's key is private; its verifier key names it; the cosigned checkpoint
    // carries its signature line after the log's.
    let mode = fs::metadata(state.join("witness.key")).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600));
    let out = Command::new(callgate_bin())
        .args(["witness", "key", "--state"])
        .arg(&state)
        .output()
        .expect("witness key");
    let wkey = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(wkey.starts_with(&format!("{WITNESS}+")), "{wkey}");
    let cp = records_cli(&dir, &["checkpoint", "--cosigned"]);
    assert!(cp.starts_with(&format!("{ORIGIN}\n8\n")), "{cp}");
    let sigs: Vec<&str> = cp.lines().filter(|l| l.starts_with('\u{2014}')).collect();
    assert_eq!(sigs.len(), 2, "{cp}");
    assert!(sigs[0].starts_with(&format!("\u{2014} {ORIGIN} ")), "{cp}");
    assert!(sigs[1].starts_with(&format!("\u{2014} {WITNESS} ")), "{cp}");

    // status (text) and /metrics show it.
    let out = gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("witness http://127.0.0.1:{port}: cosigned size 8")),
        "{text}"
    );
    let (code, metrics) = curl(&[&format!("http://127.0.0.1:{admin}/metrics")]);
    assert_eq!(code, "200");
    let line = format!("callgate_witness_size{{witness=\"http://127.0.0.1:{port}\"}} 8");
    assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    assert!(
        metrics.contains(&format!(
            "callgate_witness_failing{{witness=\"http://127.0.0.1:{port}\"}} 0"
        )),
        "{metrics}"
    );

    // The witness restarts and goes on from what it kept.
    w.restart();
    calls(1);
    wait_witnessed(&gw, 9, Duration::from_secs(45));
    assert!(
        w.held().starts_with(&format!("{ORIGIN}\n9\n")),
        "{}",
        w.held()
    );
}

#[test]
fn a_witness_refuses_a_rolled_back_or_forked_log_and_a_forged_signature() {
    if !ebpf_available("witness") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let work = TestDir::new("callgate-witfork");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut gw = gateway(&work, "a", &url, None);
    let dir = gw.dir.join("state/records");
    let key = records_cli(&dir, &["key"]).trim().to_string();
    let state = work.join("witness");
    let mut w = Witness::start(port, &state, WITNESS, &[&key]);
    let cg = TestCgroup::new("cg-witfork");
    gw.enable(&cg);
    for _ in 0..3 {
        assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
    }
    wait_witnessed(&gw, 3, Duration::from_secs(15));
    let older = work.join("older-copy");
    copy_dir(&dir, &older);
    for _ in 0..2 {
        assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
    }
    wait_witnessed(&gw, 5, Duration::from_secs(15));
    let genuine = w.held();
    assert!(genuine.starts_with(&format!("{ORIGIN}\n5\n")), "{genuine}");
    let current = work.join("current");
    gw.kill();
    copy_dir(&dir, &current);

    // Root on the host rolls the records back to the older copy (whose chain verifies) and
    // goes on: the witness holds more than the log has, and then refuses the proof from it.
    replace_dir(&dir, &older);
    gw.restart();
    assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
    let refused = wait_for(Duration::from_secs(20), || {
        witness_status(&gw)["last_error"]
            .as_str()
            .filter(|e| e.contains("rolled back"))
            .map(str::to_owned)
    });
    assert!(refused.is_some(), "{}\n{}", witness_status(&gw), gw.log());
    for _ in 0..3 {
        assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
    }
    let refused = wait_for(Duration::from_secs(40), || {
        witness_status(&gw)["last_error"]
            .as_str()
            .filter(|e| e.contains("422"))
            .map(str::to_owned)
    });
    assert!(refused.is_some(), "{}\n{}", witness_status(&gw), gw.log());
    assert_eq!(w.held(), genuine, "the witness kept the genuine checkpoint");

    // The genuine log again.
    gw.kill();
    replace_dir(&dir, &current);
    gw.restart();
    let dir_note = fs::read_to_string(dir.join("checkpoint")).expect("checkpoint");
    assert!(
        dir_note.starts_with(&format!("{ORIGIN}\n5\n")),
        "{dir_note}"
    );

    // A forged signature: the genuine checkpoint with another size is refused (403).
    let note = dir_note;
    let forged = note.replacen("\n5\n", "\n4\n", 1);
    let body = work.join("forged.req");
    fs::write(&body, format!("old 5\n\n{forged}")).expect("forged");
    let post = |file: &Path| {
        curl(&[
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{url}/add-checkpoint"),
        ])
    };
    let (code, _) = post(&body);
    assert_eq!(code, "403");
    // A log it does not know: 404.
    fs::write(
        &body,
        format!("old 0\n\n{}", note.replace(ORIGIN, "other.example/log")),
    )
    .expect("unknown");
    assert_eq!(post(&body).0, "404");
    // A stale old size: 409 with the size it holds.
    fs::write(&body, format!("old 0\n\n{note}")).expect("stale");
    let (code, held) = post(&body);
    assert_eq!((code.as_str(), held.as_str()), ("409", "5\n"));

    // A second host with the same key and origin but records of its own: a fork. The
    // witness, restarted meanwhile, still holds the genuine tree and refuses it.
    gw.kill();
    w.restart();
    let mut fork = gateway(&work, "b", &url, None);
    let fork_dir = fork.dir.join("state/records");
    fork.kill();
    let key_file = "records-checkpoint.key";
    fs::copy(
        gw.dir.join("state").join(key_file),
        fork.dir.join("state").join(key_file),
    )
    .expect("key");
    let _ = fs::remove_dir_all(&fork_dir);
    fork.restart();
    assert_eq!(records_cli(&fork_dir, &["key"]).trim(), key);
    let cg2 = TestCgroup::new("cg-witfork2");
    fork.enable(&cg2);
    // One more record than the genuine log's 5: a proof from 5 is asked for, and fails.
    for i in 0..6 {
        let u = server.url(&format!("/other-{i}"));
        let _ = curl_in(&cg2, &[&u]);
    }
    assert!(
        wait_for(Duration::from_secs(10), || (checkpoint_size(&fork_dir)
            == 6)
            .then_some(()))
        .is_some(),
        "{}",
        fork.log()
    );
    let refused = wait_for(Duration::from_secs(20), || {
        witness_status(&fork)["last_error"]
            .as_str()
            .filter(|e| e.contains("422"))
            .map(str::to_owned)
    });
    assert!(
        refused.is_some(),
        "{}\n{}",
        witness_status(&fork),
        fork.log()
    );
    assert_eq!(witness_status(&fork)["size"], 0);
    assert_eq!(w.held(), genuine, "the witness kept the genuine checkpoint");
    assert!(w.log().contains("inconsistent"), "{}", w.log());
    // The refused request is kept as evidence: two checkpoints the log's key signed that
    // cannot both be true.
    let kept: Vec<_> = fs::read_dir(state.join("refused"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let evidence = fs::read_to_string(&kept[0]).expect("evidence");
    assert!(
        evidence.starts_with("old 5\n") && evidence.contains(&format!("{ORIGIN}\n6\n")),
        "{evidence}"
    );
}
