//! Unmodified HTTPS clients of enabled units calling an intercepted upstream: Python
//! `requests`, Python `httpx`, Node's `fetch`, curl, a Go client built here and Java's
//! `HttpClient`. Each has no CA option in its code. Without trust in the gateway's CA its call
//! fails, and `status` names its unit, its executable and the fix; with the environment of the
//! drop-in `callgate enable --unit NAME --trust` writes (checked by `systemd-analyze verify`),
//! a denied call gets the gateway's 403 and an allowed one the upstream's answer, masked, and
//! both are recorded. curl and Go are served the same way with no variable set and the
//! gateway's CA in the system store, changed for them alone in a mount namespace.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use callgate_e2e::*;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";
/// The variables `callgate trust env` sets; removed (with `SSL_CERT_DIR`) for every run, so
/// that nothing of the test's own environment helps.
const TRUST_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "JAVA_TOOL_OPTIONS",
];

struct Setup {
    dir: PathBuf,
    gw: Gateway,
    port: u16,
    admin: u16,
    /// Where `enable --unit --trust` writes its drop-ins.
    root: PathBuf,
    _upstream: Party,
}

fn setup(name: &str) -> Setup {
    let dir = std::env::temp_dir().join(unique(name));
    fs::create_dir_all(&dir).expect("dir");
    test_pki(&dir);
    let upstream = upstream(&dir, Some((&dir.join("leaf.crt"), &dir.join("leaf.key"))));
    let secure = format!(
        r#"
service: secure
match:
  hosts: ["127.0.0.1:{p}"]
  tls: intercept
  upstream_ca: {ca}
protocol: rest
functions:
  get_payment: {{ route: "GET /v1/payments/{{id}}" }}
  delete_payment: {{ route: "DELETE /v1/payments/{{id}}" }}
rules:
  - {{ name: reads, function: get_payment, action: allow }}
response:
  mask: [card_number]
"#,
        p = upstream.port,
        ca = dir.join("ca.crt").display()
    );
    let policies = policy_repo(&dir, REPO, &[("secure", &secure)]);
    let admin = free_port();
    let gw = gateway_with_config(
        &policies,
        &format!("admin_http:\n  listen: 127.0.0.1:{admin}\n"),
        &dir,
    );
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc/systemd/system")).expect("unit dir");
    Setup {
        port: upstream.port,
        dir,
        gw,
        admin,
        root,
        _upstream: upstream,
    }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self.gw.cli(args);
        assert!(
            out.status.success(),
            "callgate {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The unit's trust drop-in: written by `enable --unit --trust`, accepted by systemd.
    fn enable_with_trust(&self, cg: &TestCgroup) -> Vec<(String, String)> {
        let unit = cg.unit_name();
        let state = self.gw.dir.join("state").display().to_string();
        let root = self.root.display().to_string();
        let said = self.cli(&[
            "enable",
            "--unit",
            &unit,
            "--trust",
            "--root",
            &root,
            "--state-dir",
            &state,
        ]);
        assert!(
            said.contains(&format!("systemctl restart {unit}")),
            "{said}"
        );
        let units = self.root.join("etc/systemd/system");
        let dropin = units.join(format!("{unit}.d/50-callgate-trust.conf"));
        let text = fs::read_to_string(&dropin).expect("the drop-in");
        // systemd reads it as it is: the unit, with the drop-in beside it, verifies and no
        // line of the drop-in is reported.
        fs::write(
            units.join(&unit),
            "[Unit]\nDescription=a workload\n[Service]\nExecStart=/bin/true\n",
        )
        .expect("unit");
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(units.join(&unit))
            .output()
            .expect("systemd-analyze");
        let complaints = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && !complaints.contains("50-callgate-trust.conf"),
            "systemd-analyze verify: {complaints}\n{text}"
        );
        environment_of(&text)
    }
}

/// The `Environment=` assignments of a unit file, unquoted as systemd does for these.
fn environment_of(unit: &str) -> Vec<(String, String)> {
    let vars: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment=\""))
        .filter_map(|l| l.strip_suffix('"'))
        .map(|l| {
            let v = l
                .replace("\\\"", "\"")
                .replace("\\\\", "\\")
                .replace("%%", "%");
            let (k, v) = v.split_once('=').expect("NAME=value");
            (k.to_string(), v.to_string())
        })
        .collect();
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, TRUST_VARS, "{unit}");
    vars
}

/// Runs `argv` + `url` in `cg` with `env` set and every trust variable not in it unset.
fn run(cg: &TestCgroup, env: &[(String, String)], argv: &[String], url: &str) -> Output {
    let mut a: Vec<String> = vec!["env".into(), "-u".into(), "SSL_CERT_DIR".into()];
    for v in TRUST_VARS {
        a.push("-u".into());
        a.push(v.to_string());
    }
    a.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    a.extend(argv.iter().cloned());
    a.push(url.into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    cg.run(&a)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One client, start to end: refused without trust (and reported), served with it.
/// Every client prints `STATUS BODY` and exits 0 on an HTTP answer.
/// With `system_store`, the client is also served when it trusts the CA through the system
/// store alone (see [`trusted_through_the_system_store`]).
fn check(s: &Setup, name: &str, exe_hint: &str, argv: &[String], system_store: bool) {
    let cg = TestCgroup::unit(name);
    let unit = cg.unit_name();
    let env = s.enable_with_trust(&cg);
    let allowed = s.url("/v1/payments/p_1");

    // Three refused calls: all counted, one log line.
    let mut out = None;
    for _ in 0..3 {
        let o = run(&cg, &[], argv, &allowed);
        assert!(!o.status.success(), "{name} without trust: {}", text(&o));
        out = Some(o);
    }
    let out = out.expect("ran");
    let entry = wait_for(Duration::from_secs(10), || {
        s.gw.status()["untrusting"]
            .as_array()?
            .iter()
            .find(|u| u["workload"] == unit.as_str() && u["refused"].as_u64() >= Some(3))
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "{name}: status does not name {unit} as not trusting the CA 3 times: {:#}\n{}",
            s.gw.status(),
            text(&out)
        )
    });
    // The text status says it too, with the fix.
    let shown = s.cli(&["status"]);
    assert!(
        shown.contains("NOT TRUSTING THE GATEWAY'S CA")
            && shown.contains(&format!("{unit} (exe "))
            && shown.contains(&format!("fix: callgate enable --unit {unit} --trust")),
        "{shown}"
    );
    let logged =
        s.gw.log()
            .lines()
            .filter(|l| l.contains("its TLS calls fail") && l.contains(&unit))
            .count();
    assert_eq!(logged, 1, "{name}: one log line a minute:\n{}", s.gw.log());
    println!(
        "{name}: refused the gateway's certificate: {}",
        entry["last"]
    );
    assert!(entry["refused"].as_u64() >= Some(1), "{entry}");
    assert!(
        entry["exe"].as_str().is_some_and(|e| e.contains(exe_hint)),
        "{name}: {entry}"
    );
    assert_eq!(
        entry["fix"],
        format!("callgate enable --unit {unit} --trust && systemctl restart {unit}").as_str()
    );
    record_where(&s.gw, &format!("{name}'s trust refusal"), |r| {
        r["workload"]["unit"] == unit.as_str()
            && r["decision"]["reason"]
                .as_str()
                .is_some_and(|x| x.starts_with("the client does not trust the gateway's CA"))
    });

    // With the drop-in's environment: the upstream's answer, masked…
    let out = run(&cg, &env, argv, &allowed);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{name} with trust: {}", text(&out));
    assert!(body.starts_with("200 "), "{name}: {body}");
    assert!(body.contains("************1111"), "{name}: {body}");
    assert!(
        !body.contains("4111 1111 1111 1111"),
        "{name}: card leaked: {body}"
    );
    record_where(&s.gw, &format!("{name}'s allowed call"), |r| {
        r["workload"]["unit"] == unit.as_str() && r["function"] == "get_payment"
    });
    // …and the gateway's 403 for a call the policy does not allow.
    let denied = s.url("/v1/admin/users");
    let out = run(&cg, &env, argv, &denied);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.starts_with("403 "), "{name}: {}", text(&out));
    record_where(&s.gw, &format!("{name}'s denied call"), |r| {
        r["workload"]["unit"] == unit.as_str() && r["status"] == 403
    });

    if system_store {
        trusted_through_the_system_store(s, name, &cg, &env, argv);
    }

    // Calls that trusted the gateway were not taken for refusals.
    let refused = s.gw.status()["untrusting"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["workload"] == unit.as_str()).cloned())
        .expect("still listed");
    assert_eq!(refused["refused"], 3, "{name}: {refused}");

    // `disable --unit` takes the drop-in away.
    let root = s.root.display().to_string();
    s.cli(&["disable", "--unit", &unit, "--root", &root]);
    assert!(
        !s.root
            .join(format!(
                "etc/systemd/system/{unit}.d/50-callgate-trust.conf"
            ))
            .exists()
    );
}

/// The system store the client reads when no variable names another (Debian's, for OpenSSL,
/// curl and Go alike).
const SYSTEM_STORE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What `callgate install --trust-ca` gives a client: the gateway's CA in the system store.
/// Here the store is changed for the client alone: it joins its cgroup, then runs in a mount
/// namespace of its own with [`SYSTEM_STORE`] bind-mounted from a copy of the gateway's
/// bundle (the system roots and its CA), no trust variable set. The namespace ends with the
/// client; the host's store is left as it was.
fn trusted_through_the_system_store(
    s: &Setup,
    name: &str,
    cg: &TestCgroup,
    env: &[(String, String)],
    argv: &[String],
) {
    let unit = cg.unit_name();
    let bundle = env
        .iter()
        .find(|(k, _)| k == "SSL_CERT_FILE")
        .map(|(_, v)| PathBuf::from(v))
        .expect("SSL_CERT_FILE in the drop-in");
    let store = s.dir.join(format!("{name}-ca-certificates.crt"));
    fs::copy(&bundle, &store).expect("a copy of the gateway's bundle");
    let ca = first_line(&s.gw.dir.join("state/ca.crt"));
    assert!(
        fs::read_to_string(&store).expect("store").contains(&ca),
        "the bundle {} holds the gateway's CA",
        bundle.display()
    );
    let mut wrapped = strings(&[
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" \"$1\" && shift && exec \"$@\"",
    ]);
    wrapped.push(store.display().to_string());
    wrapped.push(SYSTEM_STORE.to_string());
    wrapped.extend(argv.iter().cloned());

    let allowed = |r: &serde_json::Value| {
        r["workload"]["unit"] == unit.as_str() && r["function"] == "get_payment"
    };
    let denied =
        |r: &serde_json::Value| r["workload"]["unit"] == unit.as_str() && r["status"] == 403;
    let seen = records(&s.gw);
    let (allowed_before, denied_before) = (
        seen.iter().filter(|r| allowed(r)).count(),
        seen.iter().filter(|r| denied(r)).count(),
    );

    let out = run(cg, &[], &wrapped, &s.url("/v1/payments/p_1"));
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} with the CA in the system store: {}",
        text(&out)
    );
    assert!(body.starts_with("200 "), "{name}: {body}");
    assert!(body.contains("************1111"), "{name}: {body}");
    assert!(
        !body.contains("4111 1111 1111 1111"),
        "{name}: card leaked: {body}"
    );
    let out = run(cg, &[], &wrapped, &s.url("/v1/admin/users"));
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("403 "),
        "{name} with the CA in the system store: {}",
        text(&out)
    );
    let recorded = wait_for(Duration::from_secs(10), || {
        let now = records(&s.gw);
        (now.iter().filter(|r| allowed(r)).count() > allowed_before
            && now.iter().filter(|r| denied(r)).count() > denied_before)
            .then_some(())
    });
    assert!(
        recorded.is_some(),
        "{name}: the calls through the system store are not both recorded:\n{:#?}",
        records(&s.gw)
    );
    assert!(
        !fs::read_to_string(SYSTEM_STORE)
            .expect("the host's store")
            .contains(&ca),
        "the gateway's CA leaked into the host's {SYSTEM_STORE}"
    );
    println!("{name}: served with the gateway's CA in its namespace's {SYSTEM_STORE}");
    let _ = fs::remove_file(&store);
}

fn script(s: &Setup, name: &str, code: &str) -> String {
    let p = s.dir.join(name);
    fs::write(&p, code).expect("script");
    p.display().to_string()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn unmodified_clients_trust_the_gateway_through_the_units_drop_in() {
    let test = "unmodified_clients_trust_the_gateway_through_the_units_drop_in";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let s = setup("callgate-trust");
    let py = party_python().display().to_string();

    let requests = script(
        &s,
        "requests_client.py",
        "import sys, requests\n\
         r = requests.get(sys.argv[1], timeout=10)\n\
         print(r.status_code, r.text)\n",
    );
    check(
        &s,
        "py-requests",
        "python",
        &strings(&[&py, &requests]),
        false,
    );

    let httpx = script(
        &s,
        "httpx_client.py",
        "import sys, httpx\n\
         r = httpx.get(sys.argv[1], timeout=10)\n\
         print(r.status_code, r.text)\n",
    );
    check(&s, "py-httpx", "python", &strings(&[&py, &httpx]), false);

    let node = script(
        &s,
        "fetch_client.mjs",
        "const r = await fetch(process.argv[2]);\n\
         console.log(r.status, await r.text());\n",
    );
    check(&s, "node-fetch", "node", &strings(&["node", &node]), false);

    // `STATUS BODY` from curl: the status is written after the body, then moved first.
    let curl = "out=$(curl -sS --max-time 10 -w ' %{http_code}' \"$0\") || exit 1; \
                echo \"${out##* } ${out% *}\"";
    check(&s, "curl", "curl", &strings(&["sh", "-c", curl]), true);

    if Command::new("java").arg("-version").output().is_ok() {
        let java = script(
            &s,
            "Client.java",
            "import java.net.URI;\n\
             import java.net.http.*;\n\
             public class Client {\n\
             \x20 public static void main(String[] a) throws Exception {\n\
             \x20   var r = HttpClient.newHttpClient().send(\n\
             \x20     HttpRequest.newBuilder(URI.create(a[0])).build(),\n\
             \x20     HttpResponse.BodyHandlers.ofString());\n\
             \x20   System.out.println(r.statusCode() + \" \" + r.body());\n\
             \x20 }\n\
             }\n",
        );
        check(&s, "java", "java", &strings(&["java", &java]), false);
    } else {
        skip(test, "java is not installed: the Java client is not tried");
    }

    match go_client(&s.dir) {
        Some(bin) => check(&s, "go", "go-client", &[bin.display().to_string()], true),
        None => {
            skip(
                test,
                "go (Debian's golang-go) is not installed: the Go client is not tried",
            );
        }
    }

    // /metrics counts the refusals per workload.
    let (code, metrics) = curl_outside(&format!("http://127.0.0.1:{}/metrics", s.admin));
    assert_eq!(code, 0);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("callgate_tls_untrusted_total{name=\"py-requests-"))
        .unwrap_or_else(|| panic!("no per-workload trust refusals in /metrics:\n{metrics}"));
    assert!(!line.ends_with(" 0"), "{line}");
    let _ = fs::remove_dir_all(&s.dir);
}

/// A Go client, built here with the Go toolchain (Debian's golang-go), or None without one.
fn go_client(dir: &Path) -> Option<PathBuf> {
    Command::new("go").arg("version").output().ok()?;
    let src = dir.join("go-client.go");
    fs::write(
        &src,
        "package main\n\
         import (\"fmt\"; \"io\"; \"net/http\"; \"os\")\n\
         func main() {\n\
         \tr, err := http.Get(os.Args[1])\n\
         \tif err != nil { fmt.Fprintln(os.Stderr, err); os.Exit(1) }\n\
         \tb, _ := io.ReadAll(r.Body)\n\
         \tfmt.Printf(\"%d %s\\n\", r.StatusCode, b)\n\
         }\n",
    )
    .ok()?;
    let bin = dir.join("go-client");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(bin)
}

/// curl from the test itself (not intercepted): (exit code, body).
fn curl_outside(url: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The first line of base64 of the (first) certificate in a PEM file: enough to find it.
fn first_line(pem_path: &Path) -> String {
    fs::read_to_string(pem_path)
        .expect("pem")
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .nth(1)
        .expect("a certificate")
        .to_string()
}

#[test]
fn the_bundle_follows_the_system_roots_and_the_ca() {
    let test = "the_bundle_follows_the_system_roots_and_the_ca";
    if !ebpf_available(test) {
        return;
    }
    let dir = std::env::temp_dir().join(unique("callgate-trust-roots"));
    let second = dir.join("second");
    fs::create_dir_all(&second).expect("dir");
    test_pki(&dir);
    test_pki(&second);
    // The gateway reads the system roots where rustls-native-certs does: SSL_CERT_FILE first.
    let roots = dir.join("roots.pem");
    fs::copy(dir.join("ca.crt"), &roots).expect("roots");
    let policies = policy_repo(&dir, REPO, &[]);
    let roots_env = roots.display().to_string();
    // An empty SSL_CERT_DIR: one inherited from the test's environment would add its roots.
    let no_dir = dir.join("no-certs");
    fs::create_dir_all(&no_dir).expect("dir");
    let no_dir = no_dir.display().to_string();
    let mut gw = Gateway::start_with_env(
        &["--policies", &policies.display().to_string()],
        &[("SSL_CERT_FILE", &roots_env), ("SSL_CERT_DIR", &no_dir)],
    );
    let trust = gw.dir.join("state-trust");
    let bundle = trust.join("bundle.pem");
    let holds = |n: usize, wanted: &[String]| {
        wait_for(Duration::from_secs(10), || {
            let text = fs::read_to_string(&bundle).ok()?;
            (text.matches("BEGIN CERTIFICATE").count() == n
                && wanted.iter().all(|w| text.contains(w.as_str())))
            .then_some(())
        })
        .is_some()
    };
    let first_root = first_line(&dir.join("ca.crt"));
    let ca = first_line(&gw.dir.join("state/ca.crt"));
    assert!(
        holds(2, &[ca.clone(), first_root.clone()]),
        "the bundle is the gateway's CA and the one system root:\n{}",
        fs::read_to_string(&bundle).unwrap_or_default()
    );

    // update-ca-certificates added a root; `systemctl reload` (SIGHUP) rewrites the bundle.
    let mut text = fs::read_to_string(&roots).expect("roots");
    text.push_str(&fs::read_to_string(second.join("ca.crt")).expect("second"));
    fs::write(&roots, text).expect("roots");
    let pid = gw.pid().expect("running") as i32;
    // SAFETY: kill(2) on the gateway this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let second_root = first_line(&second.join("ca.crt"));
    assert!(
        holds(3, &[ca.clone(), first_root.clone(), second_root.clone()]),
        "the new system root is in the bundle:\n{}",
        fs::read_to_string(&bundle).unwrap_or_default()
    );

    // A new CA (the old one removed, the gateway restarted): the bundle carries it instead.
    fs::remove_file(gw.dir.join("state/ca.key")).expect("ca.key");
    fs::remove_file(gw.dir.join("state/ca.crt")).expect("ca.crt");
    gw.restart();
    let new_ca = first_line(&gw.dir.join("state/ca.crt"));
    assert_ne!(new_ca, ca);
    assert!(
        holds(3, &[new_ca.clone(), first_root, second_root]),
        "the new CA is in the bundle"
    );
    assert_eq!(first_line(&trust.join("ca.pem")), new_ca);
    assert!(!fs::read_to_string(&bundle).expect("bundle").contains(&ca));
    let _ = fs::remove_dir_all(&dir);
}
