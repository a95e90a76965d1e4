//! Policy pulled from git and verified: the daemon fetches a bare repository on disk
//! (`file://`), takes a commit only when it is SSH-signed (`git commit -S`, `gpg.format=ssh`)
//! by a key in `allowed_signers` and compiles, and keeps the last good policy deciding
//! otherwise, saying why in `status` and `/metrics`. `callgate policy sync` does one round by
//! hand; the poller picks a change up within `poll_s`.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use callgate_e2e::*;
use serde_json::Value;

const POLL_S: u64 = 3;

fn payments(port: u16, deny_reads: bool) -> String {
    let first = if deny_reads {
        "  - { name: no-reads, function: get_payment, action: deny, reason: reads are closed }\n"
    } else {
        ""
    };
    format!(
        "service: payments\nmatch:\n  hosts: [\"127.0.0.1:{port}\"]\nprotocol: rest\nfunctions:\n  get_payment: {{ route: \"GET /v1/payments/{{payment_id}}\" }}\nrules:\n{first}  - {{ name: reads, function: get_payment, action: allow }}\n"
    )
}

/// A work tree that commits and pushes to a bare repository the gateway fetches.
struct Repo<'a> {
    dir: &'a Path,
}

impl Repo<'_> {
    fn work(&self) -> std::path::PathBuf {
        self.dir.join("work")
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=Ops", "-c", "user.email=ops@example.com"])
            .args(["-c", "gpg.format=ssh"])
            .args(args)
            .current_dir(self.work())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes the service file, commits (signed with `key`, or unsigned), pushes; the commit.
    fn commit(&self, service: &str, key: Option<&str>, msg: &str) -> String {
        fs::write(self.work().join("services/payments.yaml"), service).expect("write");
        self.git(&["add", "-A"]);
        match key {
            Some(k) => {
                let signing = format!("user.signingkey={}", self.dir.join(k).display());
                self.git(&[
                    "-c",
                    &signing,
                    "commit",
                    "-q",
                    "--allow-empty",
                    "-S",
                    "-m",
                    msg,
                ]);
            }
            None => {
                self.git(&["commit", "-q", "--allow-empty", "--no-gpg-sign", "-m", msg]);
            }
        }
        self.git(&["push", "-q", "origin", "main"]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn keygen(dir: &Path, name: &str) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(dir.join(name))
        .status()
        .expect("ssh-keygen (openssh-client, installed by `cargo xtask setup`)");
    assert!(st.success());
    fs::read_to_string(dir.join(format!("{name}.pub")))
        .expect("pub")
        .trim()
        .to_string()
}

fn policy(gw: &Gateway) -> Value {
    gw.status()["policy"].clone()
}

fn sync(gw: &Gateway) -> (bool, String) {
    let out = gw.cli(&["policy", "sync"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn metrics(admin: u16) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{admin}/metrics"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A call's answer code and the policy commit its record names.
fn call(gw: &Gateway, cg: &TestCgroup, port: u16, id: &str) -> (String, String) {
    let code = status_in(cg, &[&format!("http://127.0.0.1:{port}/v1/payments/{id}")]);
    let rec = record_where(gw, id, |r| r["args"]["payment_id"] == id);
    let commit = rec["decision"]["policy_commit"]
        .as_str()
        .unwrap_or_else(|| panic!("no decision.policy_commit in {rec}"))
        .to_string();
    (code, commit)
}

#[test]
fn signed_commits_are_taken_and_others_refused_with_the_last_good_deciding() {
    if !ebpf_available("policy_git") || !parties_available("policy_git") {
        return;
    }
    let dir = TestDir::new("callgate-policy-git");
    let up = upstream(&dir, None);
    let ops = keygen(&dir, "ops");
    keygen(&dir, "stranger");
    let signers = dir.join("allowed_signers");
    fs::write(&signers, format!("ops@example.com {ops}\n")).expect("allowed_signers");

    // The remote: a bare repository; the operator's work tree pushes to it.
    let bare = dir.join("remote.git");
    let st = Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare)
        .status()
        .expect("git init");
    assert!(st.success());
    let repo = Repo { dir: &dir };
    fs::create_dir_all(repo.work().join("services")).expect("mkdir");
    let st = Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .arg(repo.work())
        .status()
        .expect("git init");
    assert!(st.success());
    fs::write(
        repo.work().join("callgate.yaml"),
        "default_action: deny\nunknown_destination: deny\n",
    )
    .expect("callgate.yaml");
    repo.git(&["remote", "add", "origin", &bare.display().to_string()]);
    let c1 = repo.commit(&payments(up.port, false), Some("ops"), "reads open");

    let admin = free_port();
    let config = dir.join("callgate.yaml");
    fs::write(
        &config,
        format!(
            "policies:\n  git: file://{}\n  ref: main\n  poll_s: {POLL_S}\n  allowed_signers: {}\nadmin_http:\n  listen: 127.0.0.1:{admin}\n",
            bare.display(),
            signers.display()
        ),
    )
    .expect("config");
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let p = policy(&gw);
    assert_eq!(p["commit"], c1.as_str(), "{p}\n{}", gw.log());
    assert!(
        p["git"]["signer"]
            .as_str()
            .is_some_and(|s| s.starts_with("ops@example.com SHA256:")),
        "{p}"
    );
    let cg = TestCgroup::new("policy-git");
    gw.enable(&cg);
    assert_eq!(call(&gw, &cg, up.port, "p_1"), ("200".into(), c1.clone()));

    // Nothing new: unchanged.
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("unchanged"), "{out}");

    // Each refused commit closes reads; none may take effect.
    let closed = payments(up.port, true);
    let unsigned = repo.commit(&closed, None, "unsigned");
    let (ok, out) = sync(&gw);
    assert!(
        !ok && out.contains("refused") && out.contains("unsigned"),
        "{out}"
    );
    let p = policy(&gw);
    assert_eq!(p["commit"], c1.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["commit"], unsigned.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["reason"], "unsigned", "{p}");
    let m = metrics(admin);
    assert!(
        m.contains(&format!(
            "policy_git_refused{{commit=\"{unsigned}\",reason=\"unsigned\"}} 1"
        )),
        "{m}"
    );
    assert!(gw.log().contains(&unsigned), "no log line names {unsigned}");
    assert_eq!(call(&gw, &cg, up.port, "p_2"), ("200".into(), c1.clone()));

    let stranger = repo.commit(&closed, Some("stranger"), "signed by a stranger");
    let (ok, out) = sync(&gw);
    assert!(!ok && out.contains("unknown_signer"), "{out}");
    let p = policy(&gw);
    assert_eq!(p["commit"], c1.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["commit"], stranger.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["reason"], "unknown_signer", "{p}");

    // Trusting the stranger's key takes that commit on a sync by hand (the refused commit is
    // checked again); distrusting it again leaves it in force until the next good commit.
    let stranger_pub = fs::read_to_string(dir.join("stranger.pub")).expect("pub");
    fs::write(
        &signers,
        format!(
            "ops@example.com {ops}\nops@example.com {}",
            stranger_pub.trim()
        ),
    )
    .expect("allowed_signers");
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("taken"), "{out}");
    assert_eq!(policy(&gw)["commit"], stranger.as_str());
    fs::write(&signers, format!("ops@example.com {ops}\n")).expect("allowed_signers");

    // Signed by ops but does not compile: refused with file and line; the stranger's commit
    // decides on.
    let broken = repo.commit(&closed.replacen("rules:", "rulez:", 1), Some("ops"), "typo");
    let (ok, out) = sync(&gw);
    assert!(!ok && out.contains("policy_error"), "{out}");
    let p = policy(&gw);
    assert_eq!(p["commit"], stranger.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["commit"], broken.as_str(), "{p}");
    let errors = p["git"]["refused"]["errors"].to_string();
    assert!(errors.contains("services/payments.yaml:"), "{p}");
    assert!(
        !errors.contains("trees/"),
        "errors name the repository's own paths: {p}"
    );
    assert_eq!(
        call(&gw, &cg, up.port, "p_3"),
        ("403".into(), stranger.clone())
    );
    let text = gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("commit {broken} REFUSED (policy_error)"))
            && text.contains("services/payments.yaml:"),
        "{text}"
    );
    let m = metrics(admin);
    assert!(m.contains("reason=\"policy_error\""), "{m}");

    // A later good signed commit is taken, and decides.
    let good = repo.commit(&closed, Some("ops"), "reads closed, signed");
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("taken"), "{out}");
    let p = policy(&gw);
    assert_eq!(p["commit"], good.as_str(), "{p}");
    assert!(p["git"]["refused"].is_null(), "{p}");
    assert_eq!(call(&gw, &cg, up.port, "p_4"), ("403".into(), good.clone()));

    // The poller, with no sync: picked up within poll_s (plus a fetch).
    let reopened = repo.commit(&payments(up.port, false), Some("ops"), "reads open again");
    let pushed = Instant::now();
    let seen = wait_for(Duration::from_secs(POLL_S + 5), || {
        (policy(&gw)["commit"] == reopened.as_str()).then_some(())
    });
    assert!(
        seen.is_some(),
        "not picked up in {}s: {}\n{}",
        POLL_S + 5,
        policy(&gw),
        gw.log()
    );
    eprintln!(
        "policy_git: poll picked up a pushed commit in {} ms (poll_s {POLL_S})",
        pushed.elapsed().as_millis()
    );
    assert_eq!(
        call(&gw, &cg, up.port, "p_5"),
        ("200".into(), reopened.clone())
    );

    // The remote gone: the fetch fails, is said so, and the policy stays.
    let away = dir.join("remote-away.git");
    fs::rename(&bare, &away).expect("rename");
    let (ok, out) = sync(&gw);
    assert!(!ok && out.starts_with("fetch_failed"), "{out}");
    let p = policy(&gw);
    assert_eq!(p["commit"], reopened.as_str(), "{p}");
    assert!(p["git"]["fetch_error"].is_string(), "{p}");
    let m = metrics(admin);
    assert!(m.contains("policy_git_fetch_failing 1"), "{m}");

    // A restart with the remote still gone starts on the last commit taken.
    let mut gw = gw;
    gw.restart();
    let p = policy(&gw);
    assert_eq!(p["commit"], reopened.as_str(), "{p}\n{}", gw.log());
    assert!(p["git"]["fetch_error"].is_string(), "{p}");
    assert_eq!(
        call(&gw, &cg, up.port, "p_6"),
        ("200".into(), reopened.clone())
    );

    // Back: the next poll clears the failure.
    fs::rename(&away, &bare).expect("rename back");
    let cleared = wait_for(Duration::from_secs(POLL_S + 5), || {
        policy(&gw)["git"]["fetch_error"].is_null().then_some(())
    });
    assert!(cleared.is_some(), "{}", policy(&gw));
}

/// With no commit ever taken, a refused one stops the start, naming why.
#[test]
fn an_unsigned_first_commit_stops_the_start() {
    let dir = TestDir::new("callgate-policy-git-start");
    let ops = keygen(&dir, "ops");
    let signers = dir.join("allowed_signers");
    fs::write(&signers, format!("ops@example.com {ops}\n")).expect("allowed_signers");
    let repo = Repo { dir: &dir };
    fs::create_dir_all(repo.work().join("services")).expect("mkdir");
    let bare = dir.join("remote.git");
    for (args, at) in [
        (vec!["init", "-q", "--bare", "-b", "main"], bare.clone()),
        (vec!["init", "-q", "-b", "main"], repo.work()),
    ] {
        assert!(
            Command::new("git")
                .args(args)
                .arg(at)
                .status()
                .expect("git")
                .success()
        );
    }
    fs::write(repo.work().join("callgate.yaml"), "default_action: deny\n").expect("write");
    repo.git(&["remote", "add", "origin", &bare.display().to_string()]);
    let unsigned = repo.commit(&payments(1, false), None, "unsigned");
    let config = dir.join("callgate.yaml");
    fs::write(
        &config,
        format!(
            "policies: {{ git: {}, allowed_signers: {} }}\n",
            bare.display(),
            signers.display()
        ),
    )
    .expect("config");
    let state = dir.join("state");
    let out = Command::new(callgate_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .arg("--control-socket")
        .arg(dir.join("admin.sock"))
        .arg("--bpffs-dir")
        .arg(PathBuf::from("/sys/fs/bpf").join(unique("callgate-pgs")))
        .arg("--listen-port")
        .arg(free_port().to_string())
        .output()
        .expect("callgate run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&unsigned) && err.contains("unsigned"), "{err}");
}
