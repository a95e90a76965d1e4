//! `callgate install` / `uninstall` into a directory of the test's own (`--root`), the unit
//! checked by systemd's own tools, and the gateway run under exactly the unit's capability
//! bounding set to show that set is enough to intercept.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use callgate_e2e::*;

fn callgate(args: &[&str]) -> Output {
    let out = Command::new(callgate_bin())
        .args(args)
        .output()
        .expect("run callgate");
    assert!(
        out.status.success(),
        "callgate {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The `CapabilityBoundingSet=` of a unit, as setpriv spells it: `-all,+bpf,…`.
fn bounding_set(unit: &str) -> String {
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    let mut set = String::from("-all");
    for c in caps.split_whitespace() {
        set.push_str(",+");
        set.push_str(&c.trim_start_matches("CAP_").to_ascii_lowercase());
    }
    set
}

fn install_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(unique(name));
    fs::create_dir_all(&root).expect("root");
    let r = root.display().to_string();
    callgate(&["install", "--root", &r, "--trust-ca"]);
    root
}

#[test]
fn install_writes_a_hardened_service_and_uninstall_takes_it_away() {
    let root = install_root("callgate-install");
    let r = root.display().to_string();
    let bin = root.join("usr/local/bin/callgate");
    let unit_path = root.join("etc/systemd/system/callgate.service");
    let config = root.join("etc/callgate/callgate.yaml");
    let state = root.join("var/lib/callgate");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&state), 0o700, "state is the daemon's alone");
    assert_eq!(mode(&state.join("ca.key")), 0o600);
    assert_eq!(
        fs::read(state.join("ca.crt")).unwrap(),
        fs::read(root.join("usr/local/share/ca-certificates/callgate-local-ca.crt")).unwrap(),
        "--trust-ca put the CA in the trust store's directory"
    );
    // The trust bundle for runtimes with roots of their own, readable by every workload.
    let trust = root.join("var/lib/callgate-trust");
    assert_eq!(mode(&trust), 0o755);
    for f in ["bundle.pem", "ca.pem", "bundle.p12"] {
        assert_eq!(mode(&trust.join(f)), 0o644, "{f}");
    }
    assert!(
        fs::read_to_string(trust.join("ca.pem"))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    // --trust-ca says what the system store covers and what it does not.
    let said = callgate(&["install", "--root", &r, "--trust-ca"]);
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.contains("It does NOT cover") && said.contains("--trust"),
        "{said}"
    );
    let unit = fs::read_to_string(&unit_path).expect("unit");
    assert!(
        unit.contains("ReadWritePaths=/sys/fs/bpf -/var/lib/callgate-trust"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecStart=/usr/local/bin/callgate run --config /etc/callgate/callgate.yaml"),
        "{unit}"
    );
    assert!(
        fs::read_to_string(&config)
            .unwrap()
            .contains("policies: /etc/callgate/policies")
    );

    // The starter policy repository is valid, and starts in dry-run.
    let policies = root.join("etc/callgate/policies");
    let starter = fs::read_to_string(policies.join("callgate.yaml")).unwrap();
    assert!(starter.contains("mode: dry-run"), "{starter}");
    callgate(&["policy", "lint", &policies.display().to_string()]);

    // systemd accepts the unit (ExecStart pointed at the copy under the test's root), and
    // rates its exposure as low.
    let checked = std::env::temp_dir().join(format!("{}.service", unique("callgate")));
    fs::write(
        &checked,
        unit.replace(
            "ExecStart=/usr/local/bin/",
            &format!("ExecStart={}/usr/local/bin/", r),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&checked)
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&checked)
        .stderr(Stdio::inherit())
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 4.0, "exposure {exposure}:\n{text}");
    let _ = fs::remove_file(&checked);

    // The stop's timeout covers the drain's default grace and the rest of the stop.
    assert!(unit.contains("\nTimeoutStopSec=20s\n"), "{unit}");

    // Installing again keeps what the operator changed, and the unit's stop timeout follows
    // the grace they gave.
    let mine = "# mine\npolicies: /srv/policies\nstop_grace_s: 60\n";
    fs::write(&config, mine).unwrap();
    callgate(&["install", "--root", &r]);
    assert_eq!(fs::read_to_string(&config).unwrap(), mine);
    let unit = fs::read_to_string(&unit_path).expect("unit");
    assert!(unit.contains("\nTimeoutStopSec=75s\n"), "{unit}");

    // Uninstall removes the service and the trust, keeps configuration and state…
    callgate(&["uninstall", "--root", &r]);
    for gone in [
        &bin,
        &unit_path,
        &root.join("usr/local/share/ca-certificates/callgate-local-ca.crt"),
    ] {
        assert!(!gone.exists(), "{} is still there", gone.display());
    }
    assert!(config.exists() && state.join("ca.crt").exists());
    // …unless told to purge.
    callgate(&["uninstall", "--root", &r, "--purge"]);
    assert!(!root.join("etc/callgate").exists() && !state.exists() && !trust.exists());
    let _ = fs::remove_dir_all(&root);
}

#[test]
fn the_units_capabilities_are_enough_to_intercept() {
    if !ebpf_available("the_units_capabilities_are_enough_to_intercept") {
        return;
    }
    let root = install_root("callgate-caps");
    let unit = fs::read_to_string(root.join("etc/systemd/system/callgate.service")).unwrap();
    let caps = bounding_set(&unit);
    let server = HttpServer::start("127.0.0.1");
    let mut gw = Gateway::start();
    // Root, but only with the unit's capabilities, as systemd would start it.
    let bin = callgate_bin().display().to_string();
    let mut argv: Vec<String> = vec![
        "--bounding-set".into(),
        caps.clone(),
        "--inh-caps".into(),
        "-all".into(),
        "--".into(),
        bin,
    ];
    argv.extend(gw.args());
    let log = fs::File::create(gw.dir.join("gateway.log")).expect("log");
    gw.adopt(|| {
        Command::new("setpriv")
            .args(&argv)
            .env("CALLGATE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("setpriv")
    });
    let cg = TestCgroup::new("caps");
    gw.enable(&cg);
    let (code, body) = curl_in(&cg, &[&server.url("/hello.txt")]);
    assert_eq!((code, body.as_str()), (0, HELLO), "{caps}\n{}", gw.log());
    assert_eq!(gw.counter("forwarded"), 1, "through the gateway ({caps})");
    let _ = fs::remove_dir_all(&root);
}
