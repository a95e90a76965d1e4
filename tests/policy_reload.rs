//! Policy hot reload in the running daemon: a broken edit is rejected with located errors and
//! the last good policy stays in force; fixing it (file watcher, SIGHUP or `policy reload`)
//! brings the new one in.
use std::{fs, path::Path, process::Command, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

fn policy(gw: &Gateway) -> Value {
    gw.status()["policy"].clone()
}

fn wait_policy(gw: &Gateway, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(10), || {
        let p = policy(gw);
        f(&p).then_some(p)
    })
    .unwrap_or_else(|| panic!("{what}; policy status: {}\n{}", policy(gw), gw.log()))
}

#[test]
fn broken_edit_keeps_last_good_policy_until_fixed() {
    if !ebpf_available("policy_reload") {
        return;
    }
    let repo = std::env::temp_dir().join(unique("callgate-policies"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&repo)
        .status()
        .expect("cp");
    assert!(cp.success());
    let gw = Gateway::start_with(&["--policies", &repo.display().to_string()]);
    let first = policy(&gw);
    let rules = first["rules"].as_u64().expect("rule count");
    assert!(rules > 0, "{first}");

    // A typo in a key: the watcher picks it up, rejects it, and says where.
    let ledger = repo.join("services/ledger.yaml");
    let good = fs::read_to_string(&ledger).expect("ledger.yaml");
    fs::write(&ledger, good.replacen("rules:", "rulez:", 1)).expect("write");
    let failed = wait_policy(&gw, "the broken edit was not reported", |p| {
        p["failed_reloads"].as_u64() >= Some(1)
    });
    let errors = failed["last_error"].to_string();
    assert!(
        errors.contains("ledger.yaml:") && errors.contains("rulez"),
        "error names the file, line and key: {errors}"
    );
    assert_eq!(failed["rules"].as_u64(), Some(rules), "old policy in force");
    let reloaded = gw.cli(&["policy", "reload"]);
    assert!(!reloaded.status.success(), "explicit reload fails too");
    assert!(
        String::from_utf8_lossy(&reloaded.stderr).contains("ledger.yaml"),
        "{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );

    // Fix it while adding a rule; SIGHUP as an operator would.
    let fixed = good.replacen(
        "rules:",
        "rules:\n  - name: added-by-reload-test\n    function: \"*\"\n    caller: { subject: nobody }\n    action: deny",
        1,
    );
    fs::write(&ledger, fixed).expect("write");
    let pid = gw.pid().expect("gateway pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let ok = wait_policy(&gw, "the fixed policy was not loaded", |p| {
        p["last_error"].is_null() && p["rules"].as_u64() == Some(rules + 1)
    });
    assert!(ok["reloads"].as_u64() >= Some(1), "{ok}");
    let out = gw.cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules", rules + 1)));
    let _ = fs::remove_dir_all(&repo);
}
