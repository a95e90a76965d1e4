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
    refusal_recorded(&gw, &unsigned, "unsigned", &c1);
    refusal_recorded(&gw, &stranger, "unknown_signer", &c1);

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
    refusal_recorded(&gw, &broken, "policy_error", &stranger);

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

/// A server child, started in its own process group, killed with its group when dropped
/// (`git daemon` runs `git-daemon` as a child of its own).
struct Server(std::process::Child);

impl Server {
    fn spawn(cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        Self(cmd.process_group(0).spawn().expect("spawn a server"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16, what: &str) {
    let up = wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    assert!(up.is_some(), "{what} did not listen on {port}");
}

fn openssl(args: &[&str], at: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(at)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA `<name>-ca.pem` and a server certificate for 127.0.0.1 it signed
/// (`<name>.pem`, `<name>.key`) in `dir`.
fn ca_and_cert(dir: &Path, name: &str) -> PathBuf {
    let ca = format!("{name}-ca");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    let (cakey, capem) = (format!("{ca}.key"), format!("{ca}.pem"));
    let subj = format!("/CN={name} test CA");
    a.extend([
        "-keyout", &cakey, "-out", &capem, "-days", "2", "-subj", &subj,
    ]);
    openssl(&a, dir);
    let mut r = vec!["req"];
    r.extend(ec);
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    r.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    openssl(&r, dir);
    fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &capem,
            "-CAkey",
            &cakey,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    );
    dir.join(capem)
}

/// `git http-backend` over HTTPS (tests/parties/git_https.py) serving the repositories in `root`.
fn https_git(dir: &Path, root: &Path, port: u16, cert: &str) -> Server {
    let s = Server::spawn(
        Command::new("/usr/bin/python3")
            .arg(party_script("git_https.py"))
            .arg(port.to_string())
            .arg(root)
            .arg(dir.join(format!("{cert}.pem")))
            .arg(dir.join(format!("{cert}.key")))
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(dir.join(format!("https-{cert}.log"))).expect("log")),
    );
    wait_port(port, "git_https.py");
    s
}

fn system_records(gw: &Gateway) -> Vec<Value> {
    records(gw)
        .into_iter()
        .filter(|r| r["protocol"] == "system")
        .collect()
}

/// A system record for `commit` refused for `reason`, naming the commit that stayed.
fn refusal_recorded(gw: &Gateway, commit: &str, reason: &str, in_force: &str) {
    let rec = record_where(gw, commit, |r| {
        r["protocol"] == "system" && r["args"]["commit"] == commit && r["args"]["reason"] == reason
    });
    assert_eq!(rec["args"]["in_force"], in_force, "{rec}");
    assert_eq!(rec["decision"]["action"], "deny", "{rec}");
    assert_eq!(rec["decision"]["policy_commit"], in_force, "{rec}");
    let why = rec["decision"]["reason"].as_str().unwrap_or_default();
    assert!(why.contains(commit) && why.contains(reason), "{rec}");
}

/// The remote served the way operators serve one: over HTTPS (`git http-backend` with a
/// certificate from a test CA), `git daemon` (`git://`) and OpenSSH (`ssh://`). A force-push
/// back to an older signed commit, or to an unrelated signed history, is refused (also after
/// a restart) until `policy sync --allow-rollback`; every refusal is a system record in the
/// call log; a server down or a certificate not trusted is a failed fetch, the policy stays.
#[test]
fn served_over_https_git_and_ssh_with_rollbacks_refused_and_recorded() {
    if !ebpf_available("policy_git_remote") {
        return;
    }
    let dir = TestDir::new("callgate-policy-git-net");
    let ops = keygen(&dir, "ops");
    let signers = dir.join("allowed_signers");
    fs::write(&signers, format!("ops@example.com {ops}\n")).expect("allowed_signers");
    let srv = dir.join("srv");
    fs::create_dir_all(&srv).expect("srv");
    let bare = srv.join("remote.git");
    let repo = Repo { dir: &dir };
    fs::create_dir_all(repo.work().join("services")).expect("mkdir");
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
    fs::write(
        repo.work().join("callgate.yaml"),
        "default_action: deny\nunknown_destination: deny\n",
    )
    .expect("callgate.yaml");
    repo.git(&["remote", "add", "origin", &bare.display().to_string()]);
    let c1 = repo.commit(&payments(1, false), Some("ops"), "first");

    // HTTPS, trusting the test CA through ca_file.
    let ca = ca_and_cert(&dir, "good");
    ca_and_cert(&dir, "rogue");
    let hport = free_port();
    let mut https = Some(https_git(&dir, &srv, hport, "good"));
    let admin = free_port();
    let config = dir.join("callgate.yaml");
    fs::write(
        &config,
        format!(
            "policies:\n  git: https://127.0.0.1:{hport}/remote.git\n  poll_s: 3600\n  allowed_signers: {}\n  ca_file: {}\n  timeout_s: 20\nadmin_http:\n  listen: 127.0.0.1:{admin}\n",
            signers.display(),
            ca.display()
        ),
    )
    .expect("config");
    let mut gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let p = policy(&gw);
    assert_eq!(p["commit"], c1.as_str(), "{p}\n{}", gw.log());
    assert_eq!(
        p["git"]["url"],
        format!("https://127.0.0.1:{hport}/remote.git")
    );
    let c2 = repo.commit(&payments(1, true), Some("ops"), "second");
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("taken"), "{out}\n{}", gw.log());
    assert_eq!(policy(&gw)["commit"], c2.as_str());

    // Rollback: the ref moved back to the older (signed) c1.
    repo.git(&[
        "push",
        "-q",
        "-f",
        "origin",
        &format!("{c1}:refs/heads/main"),
    ]);
    let (ok, out) = sync(&gw);
    assert!(
        !ok && out.contains("rollback") && out.contains("older"),
        "{out}"
    );
    let p = policy(&gw);
    assert_eq!(p["commit"], c2.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["commit"], c1.as_str(), "{p}");
    assert_eq!(p["git"]["refused"]["reason"], "rollback", "{p}");
    assert!(metrics(admin).contains(&format!(
        "policy_git_refused{{commit=\"{c1}\",reason=\"rollback\"}} 1"
    )));
    refusal_recorded(&gw, &c1, "rollback", &c2);
    let listed = Command::new(callgate_bin())
        .args(["records", "list", "--dir"])
        .arg(gw.dir.join("state/records"))
        .output()
        .expect("records list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("callgate.policy/refuse_commit") && l.contains("deny")),
        "{listed}"
    );

    // Persisted: a restart (remote still at c1) starts on c2, refusing c1 again.
    gw.restart();
    let p = policy(&gw);
    assert_eq!(p["commit"], c2.as_str(), "{p}\n{}", gw.log());
    assert_eq!(p["git"]["refused"]["reason"], "rollback", "{p}");
    let n = wait_for(Duration::from_secs(10), || {
        let n = system_records(&gw)
            .iter()
            .filter(|r| r["args"]["commit"] == c1.as_str())
            .count();
        (n >= 2).then_some(n)
    });
    assert_eq!(n, Some(2), "the refusal at the start is recorded too");

    // The poller-style sync leaves it refused; the operator's override takes it.
    let (ok, out) = sync(&gw);
    assert!(!ok && out.contains("rollback"), "{out}");
    let out = gw.cli(&["policy", "sync", "--allow-rollback"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("taken"), "{text}");
    assert_eq!(policy(&gw)["commit"], c1.as_str());

    // An unrelated, signed history force-pushed: refused too.
    repo.git(&["checkout", "-q", "--orphan", "other"]);
    let orphan = {
        fs::write(
            repo.work().join("services/payments.yaml"),
            payments(1, false),
        )
        .expect("w");
        repo.git(&["add", "-A"]);
        let signing = format!("user.signingkey={}", dir.join("ops").display());
        repo.git(&["-c", &signing, "commit", "-q", "-S", "-m", "unrelated"]);
        repo.git(&["push", "-q", "-f", "origin", "other:main"]);
        repo.git(&["rev-parse", "HEAD"])
    };
    repo.git(&["checkout", "-q", "-f", "main"]);
    let (ok, out) = sync(&gw);
    assert!(
        !ok && out.contains("rollback") && out.contains("unrelated"),
        "{out}"
    );
    assert_eq!(policy(&gw)["commit"], c1.as_str());
    refusal_recorded(&gw, &orphan, "rollback", &c1);

    // Forward again (c2 descends from c1); an unsigned commit is refused and recorded.
    repo.git(&["push", "-q", "-f", "origin", "main"]);
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("taken"), "{out}");
    let unsigned = repo.commit(&payments(1, false), None, "unsigned");
    let (ok, out) = sync(&gw);
    assert!(!ok && out.contains("unsigned"), "{out}");
    refusal_recorded(&gw, &unsigned, "unsigned", &c2);
    let c3 = repo.commit(&payments(1, false), Some("ops"), "third");
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("taken"), "{out}");

    // A certificate from a CA the gateway does not trust: a failed fetch, c3 stays.
    drop(https.take());
    https = Some(https_git(&dir, &srv, hport, "rogue"));
    repo.commit(&payments(1, true), Some("ops"), "fourth");
    let (ok, out) = sync(&gw);
    assert!(
        !ok && out.starts_with("fetch_failed") && out.contains("certificate"),
        "{out}"
    );
    let p = policy(&gw);
    assert_eq!(p["commit"], c3.as_str(), "{p}");
    assert!(
        p["git"]["fetch_error"]
            .as_str()
            .is_some_and(|e| e.contains("certificate")),
        "{p}"
    );
    assert!(metrics(admin).contains("policy_git_fetch_failing 1"));
    // The server down: the same.
    drop(https.take());
    let (ok, out) = sync(&gw);
    assert!(!ok && out.starts_with("fetch_failed"), "{out}");
    assert_eq!(policy(&gw)["commit"], c3.as_str());
    drop(gw);
    let head = repo.git(&["rev-parse", "HEAD"]);

    // git://, from `git daemon`.
    let gport = free_port();
    let _daemon = Server::spawn(
        Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={gport}"))
            .arg(format!("--base-path={}", srv.display()))
            .arg(&srv)
            .stderr(std::process::Stdio::null()),
    );
    wait_port(gport, "git daemon");
    let config = dir.join("callgate-git.yaml");
    fs::write(
        &config,
        format!(
            "policies: {{ git: \"git://127.0.0.1:{gport}/remote.git\", allowed_signers: {} }}\n",
            signers.display()
        ),
    )
    .expect("config");
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    assert_eq!(policy(&gw)["commit"], head.as_str(), "{}", gw.log());
    drop(gw);

    // ssh://, from OpenSSH's sshd on loopback, the host key checked against known_hosts.
    let sshd = Path::new("/usr/sbin/sshd");
    if !sshd.exists() && !skip("policy_git_remote", "no sshd (openssh-server)") {
        return;
    }
    let fetcher = keygen(&dir, "fetcher");
    let host = keygen(&dir, "hostkey");
    fs::write(dir.join("authorized_keys"), format!("{fetcher}\n")).expect("authorized_keys");
    let sport = free_port();
    fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{sport} {host}\n"),
    )
    .expect("known_hosts");
    let sshd_config = dir.join("sshd_config");
    fs::write(
        &sshd_config,
        format!(
            "Port {sport}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile {}\n",
            dir.join("hostkey").display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        ),
    )
    .expect("sshd_config");
    fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let _sshd = Server::spawn(
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&sshd_config)
            .stderr(fs::File::create(dir.join("sshd.log")).expect("log")),
    );
    wait_port(sport, "sshd");
    let config = dir.join("callgate-ssh.yaml");
    let write_ssh_config = |known_hosts: &Path| {
        fs::write(
            &config,
            format!(
                "policies:\n  git: ssh://root@127.0.0.1:{sport}{}\n  allowed_signers: {}\n  ssh_key: {}\n  known_hosts: {}\n",
                bare.display(),
                signers.display(),
                dir.join("fetcher").display(),
                known_hosts.display()
            ),
        )
        .expect("config");
    };
    write_ssh_config(&dir.join("known_hosts"));
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    assert_eq!(
        policy(&gw)["commit"],
        head.as_str(),
        "{}\n{}",
        gw.log(),
        fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
    );
    let c5 = repo.commit(&payments(1, false), Some("ops"), "fifth");
    let (ok, out) = sync(&gw);
    assert!(ok && out.starts_with("taken"), "{out}");
    assert_eq!(policy(&gw)["commit"], c5.as_str());
    drop(gw);
    // A host key not in known_hosts: no start (nothing was ever taken in this state).
    fs::write(
        dir.join("other_hosts"),
        format!("[127.0.0.1]:{sport} {ops}\n"),
    )
    .expect("w");
    write_ssh_config(&dir.join("other_hosts"));
    let out = Command::new(callgate_bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state-ssh2"))
        .arg("--control-socket")
        .arg(dir.join("ssh2.sock"))
        .arg("--bpffs-dir")
        .arg(PathBuf::from("/sys/fs/bpf").join(unique("callgate-pgs")))
        .arg("--listen-port")
        .arg(free_port().to_string())
        .output()
        .expect("callgate run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Host key verification failed"),
        "{err}"
    );
}
