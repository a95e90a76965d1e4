//! Policy hot reload in the running daemon: a broken edit is rejected with located errors and
//! the last good policy stays in force; fixing it (file watcher, SIGHUP or `policy reload`)
//! brings the new one in, each of the three shown to work by itself.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

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

/// A copy of the example policy repo at a new temp path.
fn copy_repo(prefix: &str) -> PathBuf {
    let repo = std::env::temp_dir().join(unique(prefix));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(&repo)
        .status()
        .expect("cp");
    assert!(cp.success());
    repo
}

/// Points the symlink `link` at `to` in one step (a rename over it).
fn repoint(link: &Path, to: &Path) {
    let tmp = link.with_extension("new");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(to, &tmp).expect("symlink");
    fs::rename(&tmp, link).expect("rename symlink");
}

/// `text` with one more rule, named `name`, at the top of its rules.
fn with_rule(text: &str, name: &str) -> String {
    text.replacen(
        "rules:",
        &format!(
            "rules:\n  - name: {name}\n    function: \"*\"\n    caller: {{ subject: nobody }}\n    action: deny"
        ),
        1,
    )
}

/// Each way in is shown on its own: the file watcher with no signal; SIGHUP and
/// `callgate policy reload` with a change the watcher cannot see (the repo path is a symlink
/// the gateway was started with, pointed elsewhere: no event in the watched tree), which
/// stays unloaded until the signal or the command.
#[test]
fn broken_edit_keeps_last_good_policy_until_fixed() {
    if !ebpf_available("policy_reload") {
        return;
    }
    let repo = copy_repo("callgate-policies");
    let other = copy_repo("callgate-policies-b");
    let link = std::env::temp_dir().join(unique("callgate-policies-link"));
    repoint(&link, &repo);
    let gw = Gateway::start_with(&["--policies", &link.display().to_string()]);
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

    // The file watcher alone: fixed while adding a rule, no signal, no command.
    fs::write(&ledger, with_rule(&good, "added-by-the-watcher")).expect("write");
    let ok = wait_policy(&gw, "the watcher did not load the fix", |p| {
        p["last_error"].is_null() && p["rules"].as_u64() == Some(rules + 1)
    });
    let reloads = ok["reloads"].as_u64().expect("reload count");

    // SIGHUP alone: a repo with two added rules, put in place where the watcher sees nothing.
    let other_ledger = other.join("services/ledger.yaml");
    let two = with_rule(&with_rule(&good, "added-for-sighup"), "added-for-sighup-2");
    fs::write(&other_ledger, two).expect("write");
    repoint(&link, &other);
    std::thread::sleep(Duration::from_millis(1500));
    let unseen = policy(&gw);
    assert_eq!(
        (unseen["rules"].as_u64(), unseen["reloads"].as_u64()),
        (Some(rules + 1), Some(reloads)),
        "the watcher saw the repointed repo, so SIGHUP would show nothing: {unseen}"
    );
    let pid = gw.pid().expect("gateway pid").to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let hup = wait_policy(&gw, "SIGHUP did not reload", |p| {
        p["rules"].as_u64() == Some(rules + 2)
    });
    assert_eq!(hup["reloads"].as_u64(), Some(reloads + 1), "{hup}");

    // `callgate policy reload` alone: back to the first repo, unseen until asked.
    repoint(&link, &repo);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(policy(&gw)["rules"].as_u64(), Some(rules + 2));
    let out = gw.cli(&["policy", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{} rules", rules + 1)));
    assert_eq!(policy(&gw)["rules"].as_u64(), Some(rules + 1));
    for p in [&repo, &other] {
        let _ = fs::remove_dir_all(p);
    }
    let _ = fs::remove_file(&link);
}
