//! Recording in the running daemon: every intercepted connection lands in the call log, the
//! CLI reads and verifies it, and a full disk refuses connections until space returns.
use std::{fs, path::PathBuf, process::Command, time::Duration};

use callgate_e2e::*;
use serde_json::Value;

fn records_cli(args: &[&str], dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(callgate_bin())
        .args(["records"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("callgate records");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn written(gw: &Gateway) -> u64 {
    gw.status()["records"]["written"].as_u64().unwrap_or(0)
}

#[test]
fn connections_are_recorded_listed_replayed_and_verified() {
    if !ebpf_available("records") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start();
    let dir = gw.dir.join("state/records");
    let cg = TestCgroup::new("cg-records");
    gw.enable(&cg);
    for _ in 0..3 {
        assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
    }
    let n = wait_for(Duration::from_secs(10), || {
        (written(&gw) >= 3).then_some(())
    });
    assert!(n.is_some(), "records: {}", gw.status()["records"]);

    let (ok, out) = records_cli(&["list", "--json"], &dir);
    assert!(ok, "{out}");
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    for r in &rows {
        assert_eq!(r["protocol"], "tcp");
        assert_eq!(r["destination"], server.addr.to_string());
        assert_eq!(r["workload"]["comm"], "curl");
        assert_eq!(r["decision"]["action"], "allow");
        assert!(r["bytes_out"].as_u64() > Some(0), "{r}");
    }
    let (ok, table) = records_cli(&["list", "--decision", "allow"], &dir);
    assert!(ok && table.lines().count() == 4, "{table}");

    let session = rows[0]["session"].as_str().expect("session");
    let (ok, replay) = records_cli(&["replay", session], &dir);
    assert!(ok && replay.contains("1 call(s)"), "{replay}");
    let id = rows[1]["id"].as_str().expect("id");
    let (ok, show) = records_cli(&["show", id], &dir);
    assert!(ok && show.contains(id), "{show}");
    let (ok, export) = records_cli(&["export", "--format", "jsonl"], &dir);
    assert!(ok && export.lines().count() == 3, "{export}");
    let (ok, verify) = records_cli(&["verify"], &dir);
    assert!(ok && verify.contains("verified: 3 records"), "{verify}");
    let (ok, missing) = records_cli(&["show", "nope"], &dir);
    assert!(
        !ok && missing.contains("no record with id nope"),
        "{missing}"
    );
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn full_disk_refuses_connections_until_space_returns() {
    if !ebpf_available("records_full_disk") {
        return;
    }
    let mnt = std::env::temp_dir().join(unique("callgate-full"));
    fs::create_dir_all(&mnt).expect("mnt");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "callgate-e2e"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount tmpfs");
    let _mount = Mount(mnt.clone());
    let ballast = mnt.join("ballast");
    fs::write(&ballast, vec![0u8; 48 * 1024]).expect("ballast");
    let config = mnt.join("../").join(unique("callgate-full.yaml"));
    fs::write(
        &config,
        format!(
            "records:\n  dir: {}\n  commit_window_ms: 1\n",
            mnt.join("records").display()
        ),
    )
    .expect("config");

    let server = HttpServer::start("127.0.0.1");
    let gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let cg = TestCgroup::new("cg-full");
    gw.enable(&cg);
    let mut refused = false;
    for _ in 0..400 {
        let (code, _) = curl_in(&cg, &[&server.url("/hello.txt")]);
        if code != 0 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the disk never filled: {}", gw.status()["records"]);
    let status = gw.status();
    assert!(
        status["records"]["failing"]
            .as_str()
            .is_some_and(|f| f.contains("No space")),
        "{}",
        status["records"]
    );
    assert!(status["counters"]["refused_recording"].as_u64() >= Some(1));
    assert!(
        gw.log().contains("call recording is failing"),
        "the refusal is logged"
    );

    fs::remove_file(&ballast).expect("free space");
    let back = wait_for(Duration::from_secs(10), || {
        (curl_in(&cg, &[&server.url("/hello.txt")]).0 == 0).then_some(())
    });
    assert!(
        back.is_some(),
        "connections resume once space returns: {}",
        gw.status()["records"]
    );
    let (ok, verify) = records_cli(&["verify"], &mnt.join("records"));
    assert!(ok, "{verify}");
    let _ = fs::remove_file(&config);
}
