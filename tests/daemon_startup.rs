//! What `callgate run` checks before it serves: the control socket named in its
//! configuration file is the one it uses, and a live daemon's socket is never taken over; the
//! state directory (records, keys) is private, and so are the record files in it.
use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::{Command, Stdio},
    time::Duration,
};

use callgate_e2e::*;

/// Runs `cmd`, which must refuse to start: its standard error (at most 20 s).
fn refused(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("callgate run");
    let ended = wait_for(Duration::from_secs(20), || child.try_wait().ok()?);
    if ended.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("callgate run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        ended.is_some_and(|s| !s.success()),
        "callgate run started: {err}"
    );
    err
}

#[test]
fn a_second_daemon_never_takes_the_control_socket() {
    if !ebpf_available("a_second_daemon_never_takes_the_control_socket") {
        return;
    }
    // The first daemon answers on its socket (given on the command line, as the harness does).
    let first = Gateway::start();
    assert!(first.try_status().is_ok(), "{}", first.log());

    // A second one whose configuration file names the same socket, with no --control-socket:
    // the key takes effect, and the daemon refuses to start, naming the socket.
    let dir = TestDir::new("callgate-startup");
    let config = dir.join("config.yaml");
    fs::write(
        &config,
        format!("control_socket: {}\n", first.socket().display()),
    )
    .expect("config");
    let bpffs = std::path::PathBuf::from("/sys/fs/bpf").join(unique("callgate-startup"));
    let err = refused(
        Command::new(callgate_bin())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--listen-port", &free_port().to_string(), "--state-dir"])
            .arg(dir.join("state"))
            .arg("--bpffs-dir")
            .arg(&bpffs)
            .env_remove("CALLGATE_CONTROL_SOCKET"),
    );
    let _ = fs::remove_dir_all(&bpffs);
    assert!(
        err.contains(&format!("control socket {}", first.socket().display()))
            && err.contains("another callgate daemon is answering on it"),
        "{err}"
    );
    // The first one still answers on it, and the CLI finds it through the same key.
    assert!(first.try_status().is_ok(), "{}", first.log());
    let out = Command::new(callgate_bin())
        .args(["status", "--json"])
        .env("CALLGATE_CONFIG", &config)
        .env_remove("CALLGATE_CONTROL_SOCKET")
        .output()
        .expect("callgate status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn state_and_records_are_private() {
    if !ebpf_available("state_and_records_are_private") {
        return;
    }
    let mut gw = Gateway::start();
    let state = gw.dir.join("state");
    let records = state.join("records");
    let mode = |p: &std::path::Path| fs::metadata(p).expect("exists").mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "a new state directory is 0700");

    // Loosened (say by a hand-made directory or a umask), it is made private again on start.
    gw.kill();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).expect("chmod");
    gw.restart();
    assert!(gw.try_status().is_ok(), "{}", gw.log());
    assert_eq!(mode(&state), 0o700, "{}", gw.log());
    assert!(gw.log().contains("made it 0700"), "{}", gw.log());

    // Record files are owner-only whatever the directory's mode and the umask.
    let files: Vec<_> = fs::read_dir(&records)
        .expect("records dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    assert!(
        !files.is_empty(),
        "no record segment in {}",
        records.display()
    );
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }

    // A state directory that belongs to someone else is refused.
    gw.kill();
    std::os::unix::fs::chown(&state, Some(65534), None).expect("chown");
    let err = refused(Command::new(callgate_bin()).args(gw.args()));
    assert!(
        err.contains(&format!("state directory {}", state.display()))
            && err.contains("owned by uid 65534"),
        "{err}"
    );
}
