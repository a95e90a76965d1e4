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

/// Stops one thread of another process (ptrace-stop: the rest of the process runs on) until a
/// line arrives on stdin.
const STOP_THREAD: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
SEIZE, INTERRUPT, DETACH = 0x4206, 0x4207, 17
tid = int(sys.argv[1])
if libc.ptrace(SEIZE, tid, None, None) != 0:
    sys.exit("PTRACE_SEIZE: errno %d" % ctypes.get_errno())
libc.ptrace(INTERRUPT, tid, None, None)
os.waitpid(tid, 0x40000000)
print("stopped", flush=True)
sys.stdin.readline()
libc.ptrace(DETACH, tid, None, None)
print("resumed", flush=True)
"#;

/// In strict durability a call's answer ends only once its record is on disk. With the record
/// writer stopped, a client waits without the end of its answer: a Content-Length body, a head
/// that is the whole answer (204, HEAD), a JSON-RPC batch's answer held whole; the answers
/// complete once the writer has made the records durable. Before, the body went
/// out while the record waited, and the client held a whole answer whose record a crash could
/// still lose.
#[test]
fn strict_durability_holds_the_answers_end_until_its_record_is_on_disk() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    if !ebpf_available("records_strict") || !nginx_available("records_strict") {
        return;
    }
    let dir = std::env::temp_dir().join(unique("callgate-strict"));
    fs::create_dir_all(&dir).expect("dir");
    let body = r#"{"id":7,"name":"widget"}"#;
    let up = Nginx::start(
        &dir,
        &format!(
            "location = /v1/items/7 {{ default_type application/json; return 200 '{body}'; }} \
             location = /v1/items/gone {{ return 204; }}"
        ),
    );
    let service = format!(
        "service: items\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  get_item: {{ route: \"GET /v1/items/{{id}}\" }}\n\
         \x20 head_item: {{ route: \"HEAD /v1/items/{{id}}\" }}\n\
         rules:\n  - {{ name: reads, function: get_item, action: allow }}\n\
         \x20 - {{ name: heads, function: head_item, action: allow }}\n",
        up.port()
    );
    // A JSON-RPC batch: its answer is put together by the gateway and held whole.
    let rpc = Nginx::start(
        &dir,
        r#"location = /rpc { default_type application/json; return 200 '[{"jsonrpc":"2.0","id":1,"result":7}]'; }"#,
    );
    let ledger = format!(
        "service: ledger\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: jsonrpc\n\
         functions:\n  balance: {{ method: ledger.balance }}\n\
         rules:\n  - {{ name: balances, function: balance, action: allow }}\n",
        rpc.port()
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\n",
        &[("items", &service), ("ledger", &ledger)],
    );
    let gw = gateway_with_config(&policies, "records:\n  durability: strict\n", &dir);
    let cg = TestCgroup::new("cg-strict");
    gw.enable(&cg);
    let url = format!("http://127.0.0.1:{}/v1/items/7", up.port());
    let whole = format!("200 {}", body.len());
    let curl = ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w"];
    let fetch = || {
        let mut argv = curl.to_vec();
        argv.extend(["%{http_code} %{size_download}", &url]);
        let out = cg.run(&argv);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(fetch(), whole, "{}", gw.log());

    let pid = gw.pid().expect("gateway pid");
    let writer = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .find(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "callgate-record")
        })
        .expect("the record writer thread")
        .file_name()
        .to_string_lossy()
        .into_owned();
    let mut stopper = Command::new("python3")
        .args(["-c", STOP_THREAD, &writer])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut said = BufReader::new(stopper.stdout.take().expect("stdout"));
    let mut line = String::new();
    said.read_line(&mut line).expect("stopper");
    assert_eq!(line.trim(), "stopped", "could not stop the writer thread");

    // A Content-Length answer, and answers that are their head alone (204, HEAD).
    let gone = format!("http://127.0.0.1:{}/v1/items/gone", up.port());
    let rpc_url = format!("http://127.0.0.1:{}/rpc", rpc.port());
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ledger.balance","params":{}}]"#;
    let answers = [
        (vec![url.as_str()], whole.clone()),
        (vec![gone.as_str()], "204 0".to_string()),
        (vec!["-I", url.as_str()], "200 0".to_string()),
        (
            vec![
                "-H",
                "Content-Type: application/json",
                "-d",
                batch,
                &rpc_url,
            ],
            "200 ".to_string(),
        ),
    ];
    let mut held = Vec::new();
    for (i, (args, want)) in answers.iter().enumerate() {
        let log = dir.join(format!("held-curl-{i}.log"));
        let mut argv = curl.to_vec();
        argv.push("%{http_code} %{size_download}");
        argv.extend(args);
        held.push((cg.spawn(&argv, &log), log, want));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let early: Vec<bool> = held
        .iter_mut()
        .map(|(c, _, _)| c.try_wait().expect("curl").is_some())
        .collect();
    let _ = writeln!(stopper.stdin.take().expect("stdin"));
    let _ = stopper.wait();
    for ((mut child, log, want), early) in held.into_iter().zip(early) {
        let status = child.wait().expect("curl");
        let got = fs::read_to_string(&log).unwrap_or_default();
        assert!(
            !early,
            "the client had its whole answer while the record writer was stopped: {got}"
        );
        assert!(
            status.success() && got.starts_with(want.as_str()),
            "the answer completes once its record is durable: {got} (want {want})"
        );
    }
    let recorded = wait_for(Duration::from_secs(10), || {
        let n = records(&gw)
            .iter()
            .filter(|r| {
                ["get_item", "head_item", "balance"].contains(&r["function"].as_str().unwrap_or(""))
            })
            .count();
        (n == 5).then_some(n)
    });
    assert!(recorded.is_some(), "{}", gw.status()["records"]);
}

/// With no masks in its policy, the recorder masks an answer itself before it reaches disk:
/// a key right after a line feed (`"line\nAKIA…"` as JSON writes it, and as text, short and
/// long enough to be kept beside the record's JSON) and a secret key in quotes after its name
/// (`\"` once in a JSON string) from a real upstream are masked in the log's bytes, not only
/// in what `records` shows. An escape's letter (or backslash) once stood where the detectors
/// look for a boundary (or a separator), and the key reached disk. So did a key after
/// `\u000a` in JSON only a lenient reader takes (a record keeps such an answer as text,
/// which Python's `json` still parses and decodes): the callgate of 64d997a wrote it.
#[test]
fn a_key_after_a_line_feed_never_reaches_disk() {
    let test = "a_key_after_a_line_feed_never_reaches_disk";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("callgate-records-keys");
    let up = upstream(&work, None);
    let policies = payments_reads(&work, up.port);
    let gw = gateway_with_config(&policies, "records:\n  commit_window_ms: 1\n", &work);
    let cg = TestCgroup::new("records-keys");
    gw.enable(&cg);
    let keys = [
        "AKIAI44QH8DHBEXAMPLE",
        "AKIAJ7777777777EXAMP",
        "bPxRfiCYEXAMPLEKEY",
        // `\u0034111 1111 1111 1111`: the card, its first digit escaped (two of its groups:
        // a mask that kept more than the last four digits shows them).
        "111 1111",
    ];
    // `escaped`: a key after `\u000a` (or a card behind `\u0034`) in JSON that only a lenient
    // reader (Python's, which takes 1e400 for infinity) reads; `tabs`: a secret 30 escaped
    // tabs (180 bytes) after its name.
    let queries = [
        "json",
        "text",
        "json&pad=3000",
        "text&pad=3000",
        "quoted",
        "escaped",
        "escaped&card",
        "tabs",
    ];
    for query in queries {
        let url = format!(
            "http://127.0.0.1:{}/v1/payments/p_1?secretlog={query}",
            up.port
        );
        let (code, body) = curl_in(&cg, &[&url]);
        // The policy masks nothing for the client: the key is its upstream's answer.
        assert!(
            code == 0 && keys.iter().any(|k| body.contains(k)),
            "{query}: {code} {body}"
        );
    }
    let answers = wait_for(Duration::from_secs(10), || {
        let r: Vec<Value> = records(&gw)
            .into_iter()
            .filter(|r| r["function"] == "get_payment")
            .collect();
        (r.len() == queries.len()).then_some(r)
    })
    .unwrap_or_else(|| panic!("{} records: {}", queries.len(), gw.status()["records"]));
    // Each kept masked, but the two answers in lenient JSON, whose escapes spell values: those
    // are not kept at all.
    let mut not_kept = 0;
    for r in &answers {
        let text = r["response"].to_string();
        if text.contains("bytes not recorded") {
            not_kept += 1;
        } else {
            assert!(text.contains("aws_secret_access_key"), "{r}");
        }
        assert!(!keys.iter().any(|k| text.contains(k)), "{r}");
    }
    assert_eq!(not_kept, 2, "{answers:?}");
    let mut seen = 0;
    for (path, text) in log_texts(&gw) {
        seen += text.matches("aws_secret_access_key").count();
        for k in keys {
            assert!(!text.contains(k), "{k} is on disk in {}", path.display());
        }
    }
    // Every answer's but the two not kept.
    assert!(
        seen >= queries.len() - 2,
        "the answers' records were not found on disk"
    );
}

/// Every byte of `gw`'s log, by file, its segments decompressed (the last one may be open: what
/// `zstd` reads of it is searched too).
fn log_texts(gw: &Gateway) -> Vec<(PathBuf, String)> {
    let dir = gw.dir.join("state/records");
    let mut texts = vec![];
    for e in fs::read_dir(&dir).expect("records dir").flatten() {
        let path = e.path();
        let bytes = if path.extension().is_some_and(|x| x == "zst") {
            Command::new("zstd")
                .arg("-dcq")
                .arg(&path)
                .output()
                .expect("zstd")
                .stdout
        } else {
            fs::read(&path).unwrap_or_default()
        };
        texts.push((path, String::from_utf8_lossy(&bytes).into_owned()));
    }
    texts
}

/// An answer longer than the record's cap is left out of its record, which says how long it
/// was; none of it is kept, not even the part before the cap, which here ends inside a card
/// number (its first digits would be on disk, whole to no detector). Answers under the cap are
/// kept, masked, with a length or without, and when their upstream declared a length over the
/// cap and sent less. The callgate of 85cae1b recorded the same note with the length of the
/// captured part escaped as a JSON string (1,033 bytes for this 1,112-byte answer), after
/// masking it only to drop it.
#[test]
fn an_answer_over_the_record_cap_leaves_only_its_length() {
    let test = "an_answer_over_the_record_cap_leaves_only_its_length";
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let work = TestDir::new("callgate-records-cap");
    let up = upstream(&work, None);
    let policies = payments_reads(&work, up.port);
    let gw = gateway_with_config(
        &policies,
        "records:\n  commit_window_ms: 1\n  response_cap_kb: 1\n",
        &work,
    );
    let cg = TestCgroup::new("records-cap");
    gw.enable(&cg);
    let over = ["straddle=1024", "straddle=1024&chunked=1"];
    let under = ["straddle=1024&under=1", "straddle=1024&under=1&chunked=1"];
    let mut lengths = vec![];
    for (i, query) in over.iter().chain(&under).enumerate() {
        let url = format!("http://127.0.0.1:{}/v1/payments/p_{i}?{query}", up.port);
        let (code, body) = curl_in(&cg, &[&url]);
        // The policy masks nothing for the client: it gets the whole answer.
        assert!(
            code == 0 && body.contains("4111 1111 1111 1111"),
            "{query}: {code} {body}"
        );
        lengths.push(body.len());
    }
    // An upstream that declares more than the cap and sends less (then hangs up): what the
    // client got is under the cap, so it is kept, masked by the record.
    let url = format!(
        "http://127.0.0.1:{}/v1/payments/p_lie?straddle=1024&under=1&lie=1",
        up.port
    );
    // curl fails (the answer ended early), with however much of it the gateway had passed on.
    let (code, body) = curl_in(&cg, &[&url]);
    assert!(code != 0, "{code} {body}");
    let recs = wait_for(Duration::from_secs(10), || {
        let r: Vec<Value> = records(&gw)
            .into_iter()
            .filter(|r| r["function"] == "get_payment")
            .collect();
        (r.len() == over.len() + under.len() + 1).then_some(r)
    })
    .unwrap_or_else(|| panic!("5 records: {}", gw.status()["records"]));
    let lie = recs
        .iter()
        .find(|r| r["args"]["payment_id"] == "p_lie")
        .unwrap_or_else(|| panic!("no record of the short answer in {recs:?}"));
    let card = lie["response"]["card"].as_str().unwrap_or_default();
    assert!(
        !card.is_empty() && !card.contains("1111 1111") && lie.get("response_truncated").is_none(),
        "{lie}"
    );
    for (i, query) in over.iter().chain(&under).enumerate() {
        let r = recs
            .iter()
            .find(|r| r["args"]["payment_id"] == format!("p_{i}"))
            .unwrap_or_else(|| panic!("{query}: no record in {recs:?}"));
        if i < over.len() {
            assert!(lengths[i] > 1024, "{query}: {}", lengths[i]);
            assert_eq!(
                r["response"],
                format!("[{} bytes, over the record cap of 1024]", lengths[i]),
                "{query}: {r}"
            );
            assert_eq!(r["response_truncated"], true, "{query}: {r}");
        } else {
            let card = r["response"]["card"].as_str().unwrap_or_default();
            assert!(
                !card.is_empty() && !card.contains("1111 1111"),
                "{query}: {r}"
            );
            assert!(r.get("response_truncated").is_none(), "{query}: {r}");
        }
    }
    for (path, text) in log_texts(&gw) {
        for k in ["4111 11", "wJalrXUtnFEMI", "EXAMPLEKEY"] {
            assert!(!text.contains(k), "{k} is on disk in {}", path.display());
        }
    }
    let (ok, verify) = records_cli(&["verify"], &gw.dir.join("state/records"));
    assert!(ok, "{verify}");
}

/// A client that closes its connection while the upstream works on its call cancels the call
/// in the gateway, but the upstream has it and carries it out: the call is recorded all the
/// same (no status, and a reason that says it was cut), over HTTP/1.1 and h2, and each call of
/// a JSON-RPC batch (the one allowed, sent; the one denied, not). The callgate of 483d7f1
/// dropped such a call's record with the cancelled call: a workload had any allowed call
/// carried out unrecorded by giving up on its answer.
#[test]
fn a_call_whose_client_gives_up_is_recorded_all_the_same() {
    if !ebpf_available("records_cut") || !parties_available("records_cut") {
        return;
    }
    let dir = std::env::temp_dir().join(unique("callgate-cut"));
    fs::create_dir_all(&dir).expect("dir");
    let up = upstream(&dir, None);
    let rpc = upstream(&dir, None);
    let payments = format!(
        "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  get_payment: {{ route: \"GET /v1/payments/{{payment_id}}\" }}\n\
         rules:\n  - {{ name: reads, function: get_payment, action: allow }}\n",
        up.port
    );
    let ledger = format!(
        "service: ledger\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: jsonrpc\n\
         functions:\n  balance: {{ method: ledger.balance }}\n  transfer: {{ method: ledger.transfer }}\n\
         rules:\n  - {{ name: balances, function: balance, action: allow }}\n",
        rpc.port
    );
    let policies = policy_repo(
        &dir,
        "default_action: deny\n",
        &[("payments", &payments), ("ledger", &ledger)],
    );
    let gw = gateway_with_config(&policies, "", &dir);
    let cg = TestCgroup::new("cg-cut");
    gw.enable(&cg);

    // Each client gives up after 1 s; the upstream answers after 4.
    let rest = |id: &str| format!("http://127.0.0.1:{}/v1/payments/{id}?slow=4000", up.port);
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ledger.balance","params":{}},{"jsonrpc":"2.0","id":2,"method":"ledger.transfer","params":{"to":"x"}}]"#;
    let rpc_url = format!("http://127.0.0.1:{}/rpc?slow=4000", rpc.port);
    let (h1, h2) = (rest("p_cut_h1"), rest("p_cut_h2"));
    let gave_up = [
        vec!["--http1.1", h1.as_str()],
        vec!["--http2-prior-knowledge", h2.as_str()],
        vec![
            "-H",
            "Content-Type: application/json",
            "-d",
            batch,
            &rpc_url,
        ],
    ];
    for args in &gave_up {
        let mut argv = vec!["curl", "-sS", "--max-time", "1", "-o", "/dev/null"];
        argv.extend(args.iter().copied());
        let out = cg.run(&argv);
        assert_eq!(
            out.status.code(),
            Some(28),
            "curl gave up (timed out): {args:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The upstream had every call the gateway allowed.
    let seen = |p: &Party, what: &str| {
        p.requests()
            .iter()
            .any(|r| r["path"].as_str().unwrap_or("").contains(what))
    };
    for (p, what) in [(&up, "p_cut_h1"), (&up, "p_cut_h2"), (&rpc, "/rpc?slow")] {
        assert!(seen(p, what), "the upstream has {what}");
    }
    assert!(
        rpc.requests()
            .iter()
            .all(|r| !r["body"].as_str().unwrap_or("").contains("transfer")),
        "the denied call of the batch was not sent"
    );

    // Each is on record: the allowed ones as cut, without a status.
    let cut = |r: &Value| {
        r["status"].is_null()
            && r["decision"]["reason"]
                .as_str()
                .is_some_and(|why| why.contains("cut before the upstream's answer came back"))
    };
    let on_record = wait_for(Duration::from_secs(15), || {
        let recs = records(&gw);
        let payment = |id: &str| {
            recs.iter().any(|r| {
                r["args"]["payment_id"] == id && r["decision"]["action"] == "allow" && cut(r)
            })
        };
        let balance = recs
            .iter()
            .any(|r| r["function"] == "balance" && r["decision"]["action"] == "allow" && cut(r));
        let transfer = recs
            .iter()
            .any(|r| r["function"] == "transfer" && r["decision"]["action"] == "deny" && !cut(r));
        (payment("p_cut_h1") && payment("p_cut_h2") && balance && transfer).then_some(())
    });
    assert!(
        on_record.is_some(),
        "every call is on record: {:#?}\n{}",
        records(&gw),
        gw.log()
    );
}

/// A stop lets the calls in flight finish within its grace (`stop_grace_s`), over HTTP/1
/// and h2, and takes no new connection meanwhile; what is still open at the end of the grace
/// is cut. Before the drain, every connection was cut at once: the calls that were about to
/// be answered too.
///
/// What the stop cuts is on record as cut by the stop. A pass-through connection open at that
/// moment once left no record (its record was written when its copy ended, which it never
/// did), and a call cut at the upstream said it was cut by "the client going away, or the
/// gateway stopping". Both are now on record as cut by the stop: the connection with the
/// bytes it moved until then, copied by the gateway or spliced by the kernel.
#[test]
fn a_stop_lets_calls_in_flight_finish_and_records_what_it_cuts() {
    stop_cuts("records_stop_cut", "stop_grace_s: 3\n");
}

#[test]
fn what_a_stop_cuts_in_a_kernel_splice_is_on_record_with_what_it_moved() {
    stop_cuts(
        "records_stop_cut_spliced",
        "kernel_splice: true\nstop_grace_s: 3\n",
    );
}

/// A gateway with `config` whose policy lets a cgroup read payments from a test upstream.
fn reading_payments(test: &str, config: &str) -> Option<(PathBuf, Party, Gateway, TestCgroup)> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = std::env::temp_dir().join(unique(test));
    fs::create_dir_all(&dir).expect("dir");
    let up = upstream(&dir, None);
    let service = format!(
        "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
         functions:\n  get_payment: {{ route: \"GET /v1/payments/{{payment_id}}\" }}\n\
         rules:\n  - {{ name: reads, function: get_payment, action: allow }}\n",
        up.port
    );
    let policies = policy_repo(&dir, "default_action: deny\n", &[("payments", &service)]);
    let gw = gateway_with_config(&policies, config, &dir);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);
    Some((dir, up, gw, cg))
}

/// A stop does not wait out its grace for connections that are only open: a keep-alive
/// HTTP/1 connection between calls is closed, an h2 one once quiet, and the gateway ends
/// in seconds though its grace is 30 s. (Broken, the stop would take the whole grace.)
#[test]
fn a_stop_closes_idle_keep_alive_and_h2_connections_at_once() {
    let Some((dir, up, mut gw, cg)) = reading_payments("records_stop_idle", "stop_grace_s: 30\n")
    else {
        return;
    };

    // One call on each connection, then both stay open, idle, until told.
    let (ready, done) = (dir.join("ready"), dir.join("done"));
    let client = format!(
        "import httpx, os, time\n\
         h1 = httpx.Client(http1=True, http2=False, timeout=10)\n\
         h2 = httpx.Client(http1=False, http2=True, timeout=10)\n\
         a = h1.get('http://127.0.0.1:{port}/v1/payments/p_idle_h1')\n\
         b = h2.get('http://127.0.0.1:{port}/v1/payments/p_idle_h2')\n\
         open('{ready}', 'w').write(f'{{a.status_code}} {{b.status_code}} {{b.http_version}}')\n\
         for _ in range(400):\n    if os.path.exists('{done}'): break\n    time.sleep(0.05)\n",
        port = up.port,
        ready = ready.display(),
        done = done.display(),
    );
    let python = party_python().display().to_string();
    std::thread::scope(|scope| {
        let held = scope.spawn(|| cg.run(&[&python, "-c", &client]));
        // The file exists before Python has written to it: wait for its words.
        let said = wait_for(Duration::from_secs(15), || {
            fs::read_to_string(&ready).ok().filter(|s| !s.is_empty())
        });
        let said = said.unwrap_or_else(|| panic!("the client's calls: {}", gw.log()));
        assert_eq!(said, "200 200 HTTP/2", "{}", gw.log());
        let stopped = std::time::Instant::now();
        assert!(gw.terminate(Duration::from_secs(25)), "{}", gw.log());
        let took = stopped.elapsed();
        fs::write(&done, "").expect("done");
        let _ = held.join();
        assert!(
            took < Duration::from_secs(8),
            "the stop waited for idle connections: {took:?}\n{}",
            gw.log()
        );
    });
}

/// A large answer read slowly over h2 is read to its end across a stop: the drain does not
/// close an h2 connection whose answer h2 still holds for the client's window, though the
/// answer's body was handed over long before.
#[test]
fn a_stop_lets_a_slow_h2_reader_have_its_whole_answer() {
    let Some((dir, up, mut gw, cg)) =
        reading_payments("records_stop_slow_h2", "stop_grace_s: 30\n")
    else {
        return;
    };
    let (reading, result) = (dir.join("reading"), dir.join("result"));
    // 600 KB read 64 KiB at a time, 0.3 s apart: about three seconds, the stop in between.
    let client = format!(
        "import httpx, json, time\n\
         c = httpx.Client(http1=False, http2=True, timeout=30)\n\
         got = b''\n\
         with c.stream('GET', 'http://127.0.0.1:{port}/v1/payments/p_slow?size=600000') as r:\n\
         \x20   for chunk in r.iter_bytes(65536):\n\
         \x20       got += chunk\n\
         \x20       open('{reading}', 'w').write(str(len(got)))\n\
         \x20       time.sleep(0.3)\n\
         \x20   status = r.status_code\n\
         open('{result}', 'w').write(f'{{status}} {{len(json.loads(got)[\"pad\"])}}')\n",
        port = up.port,
        reading = reading.display(),
        result = result.display(),
    );
    let python = party_python().display().to_string();
    std::thread::scope(|scope| {
        let read = scope.spawn(|| cg.run(&[&python, "-c", &client]));
        let begun = wait_for(Duration::from_secs(15), || {
            fs::read_to_string(&reading).ok()
        });
        assert!(begun.is_some(), "the answer began to come: {}", gw.log());
        let pid = gw.pid().expect("running") as i32;
        // SAFETY: kill(2) on the gateway, our own child, still running.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        assert!(gw.wait_exit(Duration::from_secs(30)), "{}", gw.log());
        let out = read.join().expect("client");
        let said = fs::read_to_string(&result).unwrap_or_default();
        assert_eq!(
            said,
            "200 600000",
            "the whole answer: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
    });
}

/// A second SIGTERM during the drain ends its grace: the call still in flight is cut at once,
/// and its record says the stop cut it (not its client).
#[test]
fn a_second_stop_signal_cuts_what_the_grace_waits_for() {
    let Some((_dir, up, mut gw, cg)) = reading_payments("records_stop_twice", "stop_grace_s: 60\n")
    else {
        return;
    };
    let slow = format!(
        "http://127.0.0.1:{}/v1/payments/p_twice?slow=30000",
        up.port
    );
    std::thread::scope(|scope| {
        let call = scope.spawn(|| cg.run(&["curl", "-sS", "--max-time", "40", &slow]));
        let arrived = wait_for(Duration::from_secs(15), || {
            up.requests()
                .iter()
                .any(|r| r["path"].as_str().unwrap_or("").contains("p_twice"))
                .then_some(())
        });
        assert!(
            arrived.is_some(),
            "the call reached the upstream: {}",
            gw.log()
        );
        let pid = gw.pid().expect("running") as i32;
        // SAFETY: kill(2) on the gateway, our own child, still running.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let draining = wait_for(Duration::from_secs(5), || {
            gw.log()
                .contains("letting the connections in flight finish")
                .then_some(())
        });
        assert!(draining.is_some(), "the drain began: {}", gw.log());
        let again = std::time::Instant::now();
        // SAFETY: as above; the gateway is draining, still our running child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        assert!(gw.wait_exit(Duration::from_secs(20)), "{}", gw.log());
        assert!(
            again.elapsed() < Duration::from_secs(8),
            "the second signal did not end the grace: {:?}\n{}",
            again.elapsed(),
            gw.log()
        );
        let _ = call.join();
    });
    let recs = records(&gw);
    let call = recs.iter().find(|r| r["args"]["payment_id"] == "p_twice");
    let call = call.unwrap_or_else(|| panic!("the call on record: {recs:#?}"));
    assert!(
        call["decision"]["reason"]
            .as_str()
            .is_some_and(|why| why.contains("cut by the gateway's stop")),
        "{call:#}"
    );
}

fn stop_cuts(test: &str, config: &str) {
    if !ebpf_available(test) || !parties_available(test) {
        return;
    }
    let dir = std::env::temp_dir().join(unique(test));
    fs::create_dir_all(&dir).expect("dir");
    let up = upstream(&dir, None);
    // A TCP upstream that is not HTTP: it reads what comes and answers nothing.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("sink");
    let sink_port = sink.local_addr().expect("addr").port();
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let Ok((mut s, _)) = sink.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let (mut buf, mut n) = ([0u8; 4096], 0);
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
            let _ = got_tx.send(n);
        }
    });
    let services = [
        (
            "payments",
            format!(
                "service: payments\nmatch: {{ hosts: [\"127.0.0.1:{}\"] }}\nprotocol: rest\n\
                 functions:\n  get_payment: {{ route: \"GET /v1/payments/{{payment_id}}\" }}\n\
                 rules:\n  - {{ name: reads, function: get_payment, action: allow }}\n",
                up.port
            ),
        ),
        (
            "sink",
            format!(
                "service: sink\nmatch: {{ hosts: [\"127.0.0.1:{sink_port}\"] }}\nprotocol: http\ntcp: allow\n"
            ),
        ),
    ];
    let services: Vec<(&str, &str)> = services.iter().map(|(n, s)| (*n, s.as_str())).collect();
    let policies = policy_repo(&dir, "default_action: deny\n", &services);
    let mut gw = gateway_with_config(&policies, config, &dir);
    let cg = TestCgroup::new(test);
    gw.enable(&cg);

    // Both clients wait at most 20 s; the stop comes before. The connection sends 1,000
    // bytes (what the gateway sniffs), then 1,000 more (what it copies, or the kernel
    // splices) once the first reached the sink.
    let slow = format!("http://127.0.0.1:{}/v1/payments/p_stop?slow=20000", up.port);
    let go = dir.join("send-more");
    let sink_client = format!(
        "import socket, time, os\ns = socket.create_connection(('127.0.0.1', {sink_port}), 5)\n\
         s.sendall(b'\\x00\\x01' * 500)\n\
         for _ in range(200):\n    if os.path.exists('{go}'): break\n    time.sleep(0.05)\n\
         s.sendall(b'\\x02\\x03' * 500)\ns.settimeout(20)\ntry:\n    s.recv(1)\nexcept Exception:\n    pass\n",
        go = go.display()
    );
    let moved_to = |want: usize, log: &dyn Fn() -> String| {
        let mut moved = 0;
        while moved < want {
            match got_rx.recv_timeout(Duration::from_secs(15)) {
                Ok(n) => moved = n,
                Err(e) => panic!("{want} bytes reached the sink: {e}\n{}", log()),
            }
        }
    };
    // Two calls the upstream answers in 1.5 s, within the grace: over HTTP/1 and h2.
    let quick = |id: &str| format!("http://127.0.0.1:{}/v1/payments/{id}?slow=1500", up.port);
    let (quick_h1, quick_h2) = (quick("p_drain_h1"), quick("p_drain_h2"));
    let arrived = |what: &str| {
        up.requests()
            .iter()
            .any(|r| r["path"].as_str().unwrap_or("").contains(what))
    };
    let answered = |url: &str, version: &str| {
        let out = cg.run(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            version,
            "-w",
            " %{http_code}",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let clients = std::thread::scope(|scope| {
        let call = scope.spawn(|| cg.run(&["curl", "-sS", "--max-time", "20", &slow]));
        let conn = scope.spawn(|| cg.run(&["python3", "-c", &sink_client]));
        // Both are at their upstreams: the call arrived, the connection's bytes came.
        let at = wait_for(Duration::from_secs(15), || arrived("p_stop").then_some(()));
        assert!(at.is_some(), "the call reached the upstream: {}", gw.log());
        moved_to(1000, &|| gw.log());
        fs::write(&go, "").expect("go");
        moved_to(2000, &|| gw.log());
        let drained = [
            scope.spawn(|| answered(&quick_h1, "--http1.1")),
            scope.spawn(|| answered(&quick_h2, "--http2-prior-knowledge")),
        ];
        let at = wait_for(Duration::from_secs(15), || {
            (arrived("p_drain_h1") && arrived("p_drain_h2")).then_some(())
        });
        assert!(
            at.is_some(),
            "the quick calls reached the upstream: {}",
            gw.log()
        );
        let pid = gw.pid().expect("running");
        // SAFETY: kill(2) on the gateway, our own child, still running.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        // While the stop drains, a new connection is not served.
        let stopping = wait_for(Duration::from_secs(5), || {
            gw.log()
                .contains("letting the connections in flight finish")
                .then_some(())
        })
        .is_some();
        let late = cg.run(&["curl", "-sS", "--max-time", "3", &quick("p_late")]);
        // Refused (or reset), not left to hang until curl gives up (28).
        assert!(
            !late.status.success() && late.status.code() != Some(28),
            "a call after the stop began was served, or hung: {:?} {}",
            late.status.code(),
            String::from_utf8_lossy(&late.stderr)
        );
        assert!(gw.wait_exit(Duration::from_secs(20)), "{}", gw.log());
        let drained = drained.map(|t| t.join().expect("client"));
        (call.join(), conn.join(), drained, stopping)
    });
    assert!(clients.0.is_ok() && clients.1.is_ok(), "the clients ended");
    for (version, out) in ["HTTP/1", "h2"].iter().zip(&clients.2) {
        assert!(
            out.ends_with(" 200"),
            "the {version} call in flight was answered within the grace: {out}"
        );
    }
    assert!(clients.3, "the gateway said the drain began: {}", gw.log());
    assert!(
        !arrived("p_late"),
        "the call after the stop began reached the upstream"
    );

    let recs = records(&gw);
    for id in ["p_drain_h1", "p_drain_h2"] {
        let drained = recs.iter().find(|r| r["args"]["payment_id"] == id);
        let drained = drained.unwrap_or_else(|| panic!("{id} on record: {recs:#?}"));
        assert_eq!(drained["status"], 200, "{drained:#}");
    }
    let by_stop = |r: &&Value| {
        r["decision"]["reason"]
            .as_str()
            .is_some_and(|why| why.contains("cut by the gateway's stop"))
    };
    let call = recs
        .iter()
        .filter(by_stop)
        .find(|r| r["args"]["payment_id"] == "p_stop" && r["status"].is_null());
    assert!(call.is_some(), "the call, cut by the stop: {recs:#?}");
    let conn = recs
        .iter()
        .filter(by_stop)
        .find(|r| r["service"] == "sink" && r["protocol"] == "tcp");
    let conn = conn.unwrap_or_else(|| panic!("the connection, cut by the stop: {recs:#?}"));
    assert_eq!(conn["decision"]["action"], "allow", "{conn:#}");
    assert_eq!(
        conn["bytes_in"], 2000,
        "what it moved until the stop: {conn:#}"
    );
}
