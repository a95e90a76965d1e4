//! Signed checkpoints in the running daemon: a checkpoint taken off the host catches what
//! root on the host can do to the records directory and `records verify` alone cannot (roll
//! it back to an older copy; rewrite the tail with the hash chain and `head.json`
//! recomputed), and an exported record's inclusion proof verifies on a copy elsewhere.
use std::{fs, path::Path, process::Command, time::Duration};

use callgate_e2e::*;

fn cli(args: &[&str], dir: Option<&Path>, cwd: &Path) -> (bool, String) {
    let mut c = Command::new(callgate_bin());
    c.arg("records").args(args).current_dir(cwd);
    if let Some(d) = dir {
        c.arg("--dir").arg(d);
    }
    let out = c.output().expect("callgate records");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The tree size of the latest signed checkpoint.
fn checkpoint_size(dir: &Path) -> u64 {
    let (_, out) = cli(&["checkpoint"], Some(dir), dir);
    out.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0)
}

/// `records export --with-proofs` of the log in `dir`, against the checkpoint file `cp`.
fn export_with_proofs(dir: &Path, cwd: &Path, cp: &str, key: &str) -> (bool, String) {
    cli(
        &["export", "--with-proofs", "--checkpoint", cp, "--key", key],
        Some(dir),
        cwd,
    )
}

/// `records verify-export FILE` off the host: in `offhost`, against its `checkpoint` file.
fn verify_export(offhost: &Path, file: &str, key: &str) -> (bool, String) {
    cli(
        &[
            "verify-export",
            file,
            "--checkpoint",
            "checkpoint",
            "--key",
            key,
        ],
        None,
        offhost,
    )
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

/// What root on the host does to hide the last call: decompress the segments, change the last
/// record, write the log again as one plain segment chained over the payloads, as older
/// versions wrote (callgate still reads both), with the hash chain recomputed, and `head.json`
/// to match.
const REWRITE_TAIL: &str = r#"
import glob, hashlib, json, os, struct, subprocess, sys
d = sys.argv[1]
frames = []
for s in sorted(glob.glob(os.path.join(d, "*.seg.zst"))):
    raw = subprocess.run(["zstd", "-dcq", s], capture_output=True, check=True).stdout
    off = 64
    while off + 44 <= len(raw):
        n, = struct.unpack_from("<I", raw, off)
        frames.append(raw[off + 44:off + 44 + n])
        off += 44 + n
    os.remove(s)
assert b'"allow"' in frames[-1], frames[-1]
frames[-1] = frames[-1].replace(b'"allow"', b'"deny"')
out = b"CALLGATE-RECORDS" + struct.pack("<QQ", 1, 1) + bytes(32)
prev = bytes(32)
for i, p in enumerate(frames):
    seq = struct.pack("<Q", i + 1)
    prev = hashlib.sha256(prev + seq + p).digest()
    out += struct.pack("<I", len(p)) + seq + prev + p
open(os.path.join(d, "%020d.seg" % 1), "wb").write(out)
json.dump({"seq": len(frames), "hash": prev.hex(), "time_ms": 1}, open(os.path.join(d, "head.json"), "w"))
"#;

#[test]
fn an_offhost_checkpoint_catches_rollback_and_a_rewritten_tail() {
    if !ebpf_available("records_checkpoint") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let work = std::env::temp_dir().join(unique("callgate-cp"));
    fs::create_dir_all(&work).expect("work dir");
    let config = work.join("callgate.yaml");
    fs::write(
        &config,
        "records:\n  commit_window_ms: 1\n  checkpoint_interval_s: 0\n  origin: e2e.example/callgate/records\n",
    )
    .expect("config");
    let mut gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let dir = gw.dir.join("state/records");
    let cg = TestCgroup::new("cg-cp");
    gw.enable(&cg);
    let calls = |n: usize| {
        for _ in 0..n {
            assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
        }
    };
    calls(3);
    let signed = wait_for(Duration::from_secs(10), || {
        (checkpoint_size(&dir) == 3).then_some(())
    });
    assert!(signed.is_some(), "no checkpoint of 3: {}", gw.log());
    let older = work.join("older-copy");
    copy_dir(&dir, &older);
    calls(3);
    let signed = wait_for(Duration::from_secs(10), || {
        (checkpoint_size(&dir) == 6).then_some(())
    });
    assert!(signed.is_some(), "no checkpoint of 6: {}", gw.log());

    // What an auditor keeps off the host: the checkpoint and the verifier key.
    let (ok, cp) = cli(&["checkpoint"], Some(&dir), &work);
    assert!(
        ok && cp.starts_with("e2e.example/callgate/records\n6\n"),
        "{cp}"
    );
    assert!(
        cp.contains("\n\n\u{2014} e2e.example/callgate/records "),
        "{cp}"
    );
    let (ok, key) = cli(&["key"], Some(&dir), &work);
    assert!(
        ok && key.starts_with("e2e.example/callgate/records+"),
        "{key}"
    );
    let key = key.trim().to_string();
    let offhost = work.join("auditor");
    fs::create_dir_all(&offhost).expect("auditor dir");
    let cp_file = offhost.join("checkpoint");
    fs::write(&cp_file, &cp).expect("checkpoint file");
    let cp_arg = cp_file.display().to_string();
    let verify = |d: &Path| {
        cli(
            &["verify", "--checkpoint", &cp_arg, "--key", &key],
            Some(d),
            &work,
        )
    };
    let key_file = gw.dir.join("state/records-checkpoint.key");
    let mode = fs::metadata(&key_file).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.ok(), Some(0o600), "the signer key is private");

    // Untouched: passes.
    let (ok, out) = verify(&dir);
    assert!(
        ok && out.contains("contained in the log of 6 records"),
        "{out}"
    );

    // An inclusion proof, exported with its record, verifies elsewhere with only the
    // checkpoint and the key; an altered line does not.
    let (ok, rows) = cli(&["list", "--json"], Some(&dir), &work);
    assert!(ok, "{rows}");
    let id = rows
        .lines()
        .nth(4)
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .expect("the fifth record's id");
    let (ok, proof) = cli(
        &["prove", &id, "--checkpoint", &cp_arg, "--key", &key],
        Some(&dir),
        &work,
    );
    assert!(
        ok && proof.contains("\"seq\": 5") && proof.contains("\"tree_size\": 6"),
        "{proof}"
    );
    let (ok, export) = export_with_proofs(&dir, &work, &cp_arg, &key);
    assert!(ok && export.lines().count() == 6, "{export}");
    fs::write(offhost.join("export.jsonl"), &export).expect("export");
    let (ok, out) = verify_export(&offhost, "export.jsonl", &key);
    assert!(ok && out.contains("verified: 6 record(s)"), "{out}");
    let altered = export.replacen("\"action\":\"allow\"", "\"action\":\"deny\"", 1);
    assert_ne!(altered, export);
    fs::write(offhost.join("altered.jsonl"), &altered).expect("altered");
    let (ok, out) = verify_export(&offhost, "altered.jsonl", &key);
    assert!(!ok && out.contains("altered export"), "{out}");

    // A forged checkpoint is refused.
    let forged = cp.replacen("\n6\n", "\n2\n", 1);
    fs::write(offhost.join("forged"), forged).expect("forged");
    let (ok, out) = cli(
        &[
            "verify",
            "--checkpoint",
            &offhost.join("forged").display().to_string(),
            "--key",
            &key,
        ],
        Some(&dir),
        &work,
    );
    assert!(!ok && out.contains("does not verify"), "{out}");

    // Root on the host: stop the daemon and tamper with its records.
    gw.kill();
    let current = work.join("current");
    copy_dir(&dir, &current);

    // Rolled back to the older copy: its chain verifies, the checkpoint does not.
    replace_dir(&dir, &older);
    let (ok, out) = cli(&["verify"], Some(&dir), &work);
    assert!(ok, "the older copy verifies on its own: {out}");
    let (ok, out) = verify(&dir);
    assert!(!ok && out.contains("records 4–6 are missing"), "{out}");

    // The last record rewritten, chain and head.json recomputed.
    replace_dir(&dir, &current);
    let py = Command::new("python3")
        .args(["-c", REWRITE_TAIL])
        .arg(&dir)
        .output()
        .expect("python3");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let (ok, out) = cli(&["verify"], Some(&dir), &work);
    assert!(
        ok && out.contains("verified: 6 records"),
        "the rewrite passes the chain: {out}"
    );
    let (ok, out) = verify(&dir);
    assert!(
        !ok && out.contains("not the ones the checkpoint signed"),
        "{out}"
    );

    // The genuine log again: passes, and the daemon goes on from it.
    replace_dir(&dir, &current);
    let (ok, out) = verify(&dir);
    assert!(ok, "{out}");
    gw.restart();
    calls(1);
    let signed = wait_for(Duration::from_secs(10), || {
        (checkpoint_size(&dir) == 7).then_some(())
    });
    assert!(signed.is_some(), "no checkpoint of 7: {}", gw.log());
    let (ok, out) = verify(&dir);
    assert!(
        ok && out.contains("contained in the log of 7 records"),
        "{out}"
    );
    let _ = fs::remove_dir_all(&work);
}

/// A long answer is kept beside its record's JSON in the log (`record::beside`): `prove`,
/// `export --with-proofs` and an auditor's `verify-export` elsewhere read the record it is,
/// its answer as JSON with the card masked; a changed byte of the answer fails the proof.
#[test]
fn a_long_answer_kept_beside_its_record_is_proved_and_exported() {
    let test = "a_long_answer_kept_beside_its_record_is_proved_and_exported";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("callgate-cp-beside");
    let up = upstream(&work, None);
    // Cards masked for the client: a long answer that came in one read is then kept in the
    // buffer the client's copy went from, and its record's head written apart from it.
    let policies = payments_reads_with(&work, up.port, "response:\n  mask: [card_number]\n");
    let gw = gateway_with_config(
        &policies,
        "records:\n  commit_window_ms: 1\n  checkpoint_interval_s: 0\n  origin: e2e.example/callgate/records\n",
        &work,
    );
    let dir = gw.dir.join("state/records");
    let cg = TestCgroup::new("cp-beside");
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/payments/p_1?size=3000", up.port);
    let (code, body) = curl_in(&cg, &[&url]);
    assert!(
        code == 0 && body.len() > 3000 && !body.contains("4111 1111"),
        "{code} {body}"
    );
    // A long answer that is not one JSON value, built to end `response` and write a
    // decision and a status of its own: kept beside, it is a string and writes nothing.
    let url = format!("http://127.0.0.1:{}/v1/payments/p_2?hostile=3000", up.port);
    let (code, body) = curl_in(&cg, &[&url]);
    assert!(
        code == 0 && body.starts_with("1,\"decision\""),
        "{code} {body}"
    );
    // A call's record is written as its answer ends, which may be just after the client has
    // it: wait until both are listed.
    let rows = wait_for(Duration::from_secs(10), || {
        let (ok, rows) = cli(&["list", "--json"], Some(&dir), &work);
        (ok && rows.contains("\"p_1\"") && rows.contains("\"p_2\"")).then_some(rows)
    })
    .unwrap_or_else(|| panic!("the two calls' records are not listed: {}", gw.log()));
    let n = rows.lines().count() as u64;
    let signed = wait_for(Duration::from_secs(10), || {
        (checkpoint_size(&dir) >= n).then_some(())
    });
    assert!(signed.is_some(), "no checkpoint of {n}: {}", gw.log());
    let long = rows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["response"]["pad"].as_str().map(str::len) == Some(3000))
        .unwrap_or_else(|| panic!("no record with the long answer: {rows}"));
    assert_eq!(long["response"]["card"], "************1111", "{long}");
    let hostile = rows
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["args"]["payment_id"] == "p_2")
        .unwrap_or_else(|| panic!("no record of the hostile answer: {rows}"));
    assert!(
        hostile["response"]
            .as_str()
            .is_some_and(|r| r.starts_with("1,\"decision\"")),
        "{hostile}"
    );
    assert_eq!(hostile["status"], 200, "{hostile}");
    assert_eq!(hostile["decision"]["rule"], "reads", "{hostile}");
    let id = long["id"].as_str().expect("id");

    let (ok, verify) = cli(&["verify"], Some(&dir), &work);
    assert!(
        ok && verify.contains(&format!("verified: {n} records")),
        "{verify}"
    );
    let (ok, cp) = cli(&["checkpoint"], Some(&dir), &work);
    assert!(ok, "{cp}");
    let (ok, key) = cli(&["key"], Some(&dir), &work);
    assert!(ok, "{key}");
    let key = key.trim();
    let offhost = work.join("auditor");
    fs::create_dir_all(&offhost).expect("auditor dir");
    fs::write(offhost.join("checkpoint"), &cp).expect("checkpoint file");
    let cp_arg = offhost.join("checkpoint").display().to_string();
    let (ok, proof) = cli(
        &["prove", id, "--checkpoint", &cp_arg, "--key", key],
        Some(&dir),
        &work,
    );
    assert!(ok && proof.contains("\"leaf\": \"\\u001e{"), "{proof}");
    let (ok, export) = export_with_proofs(&dir, &work, &cp_arg, key);
    assert!(ok, "{export}");
    let line = export
        .lines()
        .find(|l| l.contains(id))
        .expect("the long answer's line");
    let exported: serde_json::Value = serde_json::from_str(line).expect("JSON line");
    assert_eq!(exported["response"], long["response"]);
    fs::write(offhost.join("export.jsonl"), &export).expect("export");
    let (ok, out) = verify_export(&offhost, "export.jsonl", key);
    assert!(
        ok && out.contains(&format!("verified: {n} record(s)")),
        "{out}"
    );
    // The answer changed in the record and in its proof's text alike: the proof fails.
    let altered = export.replace("xxxxx", "xxyxx");
    assert_ne!(altered, export);
    fs::write(offhost.join("altered.jsonl"), &altered).expect("altered");
    let (ok, out) = verify_export(&offhost, "altered.jsonl", key);
    assert!(!ok && out.contains("BROKEN"), "{out}");
}

/// A graceful stop signs a checkpoint of every record it wrote, however recently the last
/// one was signed (`checkpoint_interval_s: 3600` here): the stop's last records, and the calls
/// since the last signature, are covered before the process ends. Before, the stop's final
/// signature ran only once the last recorder handle was gone, which handles held in the
/// daemon's own structures kept from happening: the tail stayed unsigned until the next start.
#[test]
fn a_graceful_stop_signs_every_record_it_wrote() {
    if !ebpf_available("records_checkpoint_stop") {
        return;
    }
    let server = HttpServer::start("127.0.0.1");
    let work = std::env::temp_dir().join(unique("callgate-cp-stop"));
    fs::create_dir_all(&work).expect("work dir");
    let config = work.join("callgate.yaml");
    fs::write(
        &config,
        "records:\n  checkpoint_interval_s: 3600\n  origin: e2e.example/callgate/records\n",
    )
    .expect("config");
    let mut gw = Gateway::start_with(&["--config", &config.display().to_string()]);
    let dir = gw.dir.join("state/records");
    let cg = TestCgroup::new("cg-cp-stop");
    gw.enable(&cg);
    let calls = |n: usize| {
        for _ in 0..n {
            assert_eq!(curl_in(&cg, &[&server.url("/hello.txt")]).0, 0);
        }
    };
    calls(2);
    let first = wait_for(Duration::from_secs(10), || {
        let n = checkpoint_size(&dir);
        (n > 0).then_some(n)
    });
    assert!(first.is_some(), "no first checkpoint: {}", gw.log());
    calls(3);
    assert!(gw.terminate(Duration::from_secs(20)), "{}", gw.log());
    let written = records_in(&dir).len() as u64;
    assert!(written >= 5, "{written} records");
    assert_eq!(
        checkpoint_size(&dir),
        written,
        "the last checkpoint signs every record: {}",
        gw.log()
    );
}
