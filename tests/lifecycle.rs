//! Gateway lifecycle: fail closed while it is down, resume after a restart without re-enabling,
//! go direct after disable; and clear errors for bad input.
use callgate_e2e::*;

#[test]
fn stop_fails_closed_restart_resumes_disable_goes_direct() {
    if !ebpf_available("lifecycle") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let mut gw = Gateway::start();
    let cg = TestCgroup::new("cg-life");
    gw.enable(&cg);
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );

    gw.kill();
    let (code, _) = curl_in(&cg, &[&server.url("/hello.txt")]);
    assert_eq!(
        code, 7,
        "with the gateway down the connection is refused, not sent direct"
    );

    gw.restart();
    let enabled = gw.status()["enabled"].clone();
    assert_eq!(
        enabled[0]["path"],
        cg.path.display().to_string(),
        "still enabled after restart"
    );
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );
    assert_eq!(
        gw.counter("forwarded"),
        1,
        "the restarted gateway forwarded it"
    );
    // Only this run's links remain pinned.
    let links = std::fs::read_dir(gw.bpffs.join("links").join(cg.id().to_string()))
        .expect("links")
        .count();
    assert_eq!(links, 10);

    gw.disable(&cg);
    assert_eq!(
        curl_in(&cg, &[&server.url("/hello.txt")]),
        (0, HELLO.to_string())
    );
    assert_eq!(
        gw.counter("accepted"),
        1,
        "after disable the connection went direct"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    if !ebpf_available("bad_input") {
        return;
    }
    let gw = Gateway::start();
    let check = |args: &[&str], expect: &str| {
        let out = gw.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(expect),
            "{args:?}: {err:?} should mention {expect:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
    };
    check(&["enable", "no-such-cgroup-here"], "does not exist");
    check(&["enable", "/etc"], "does not exist");
    check(&["enable", "../../etc"], "outside the cgroup v2 mount");
    let mount = cgroup_mount().expect("mount");
    check(
        &["enable", &mount.join("cgroup.procs").display().to_string()],
        "is not a cgroup v2 directory",
    );
    check(
        &["enable", "--unit", "no-such-unit-callgate.service"],
        "no-such-unit-callgate.service",
    );
    let cg = TestCgroup::new("cg-bad");
    check(
        &["disable", &cg.path.display().to_string()],
        "is not enabled",
    );

    // A second daemon on the same port says so.
    let mut args = gw.args();
    let sock = gw.dir.join("other.sock").display().to_string();
    let last = args.len() - 1;
    args[last] = sock;
    let out = std::process::Command::new(callgate_bin())
        .args(&args)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("port {} on 127.0.0.1 is already in use", gw.port)),
        "{err}"
    );

    // The CLI without a daemon.
    let out = std::process::Command::new(callgate_bin())
        .args(["status", "--control-socket", "/nonexistent/admin.sock"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the callgate daemon"),
        "{err}"
    );

    // A malformed config file names the file and the line.
    let bad = gw.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "listen_port: 1\nintercept:\n  include: [\"10.0.0.0/99\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(callgate_bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.yaml") && err.contains("prefix"),
        "{err}"
    );
}
