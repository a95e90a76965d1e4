//! The training run of a profile-guided build (`cargo xtask build --release --pgo`): a short
//! mix of the work the gateway does for real, so that the compiler learns which paths are hot.
//! It runs the l7 bench's world, briefly: an nginx upstream, a gateway (`CALLGATE_BIN`, an
//! instrumented build) with the l7 bench's policy, masking and recording, governing a cgroup
//! from which wrk and h2load call it — keep-alive at full and light load, 16 KiB answers, a new
//! connection per call, denied calls, HTTP/2, TLS interception — and a second gateway without a
//! policy passing TCP through. Both gateways stop with SIGTERM, so each writes its profile as
//! it exits (a killed one would write nothing), to `CALLGATE_PGO_PROFILE` (an
//! `LLVM_PROFILE_FILE` pattern, which xtask sets): only the gateways', not the CLI runs'.
//!
//! It prints what each step served and fails if a step served nothing: a profile trained on
//! errors would teach the compiler the wrong paths.
use std::{fs, time::Duration};

use callgate_benches::{Wrk, h2load, items_service, items_tls_service, nginx, wrk, wrk_any};
use callgate_e2e::{
    Gateway, TestCgroup, ebpf_available, free_port, gateway_with_config_env, json_of_size,
    policy_repo, test_pki, unique,
};

/// One step of the training: its name, and the load it runs.
type Step<'a> = Box<dyn Fn() -> Wrk + 'a>;

/// How long a gateway may take to flush its records and exit on SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(30);

fn main() {
    if !ebpf_available("pgo training") {
        // xtask requires a profile to come out of this; without eBPF there is none.
        std::process::exit(3);
    }
    let dir = std::env::temp_dir().join(unique("callgate-pgo-train"));
    let www = dir.join("www");
    fs::create_dir_all(&www).expect("www");
    fs::write(www.join("16k"), json_of_size(16 * 1024)).expect("answer file");
    test_pki(&dir);
    let (cert, key) = (dir.join("leaf.crt"), dir.join("leaf.key"));
    let (up_port, tls_port) = (free_port(), free_port());
    let _upstream = nginx(
        &dir,
        "upstream",
        1,
        &format!(
            "server {{ listen 127.0.0.1:{up_port}; \
             listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; \
             keepalive_requests 1000000; \
             location = /v1/items/42 {{ default_type application/json; return 200 '{BODY}'; }} \
             location /v1/items/ {{ default_type application/json; alias {}/; }} \
             location / {{ return 404; }} }}",
            www.display(),
            BODY = callgate_benches::BODY,
            cert = cert.display(),
            key = key.display(),
        ),
        up_port,
    );
    let secure = items_tls_service(tls_port, &dir.join("ca.crt"));
    let policies = policy_repo(
        &dir,
        "default_action: deny\n",
        &[("items", &items_service(up_port)), ("items-tls", &secure)],
    );
    let profile = std::env::var("CALLGATE_PGO_PROFILE").unwrap_or_default();
    let env: &[(&str, &str)] = if profile.is_empty() {
        &[]
    } else {
        &[("LLVM_PROFILE_FILE", &profile)]
    };
    let gw_dir = dir.join("gateway");
    fs::create_dir_all(&gw_dir).expect("gateway dir");
    let mut gw = gateway_with_config_env(&policies, "records:\n  backlog_mb: 1024\n", &gw_dir, env);
    let cg = TestCgroup::new("pgo-train");
    gw.enable(&cg);
    let mut plain = Gateway::start_with_env(&[], env);
    let cg_plain = TestCgroup::new("pgo-train-plain");
    plain.enable(&cg_plain);

    let http = |path: &str| format!("http://127.0.0.1:{up_port}{path}");
    let tls = format!("https://127.0.0.1:{tls_port}/v1/items/42");
    let steps: [(&str, Step); 8] = [
        (
            "keep-alive, full load",
            Box::new(|| wrk(Some(&cg), &["-t2", "-c32", "-d5s"], &http("/v1/items/42"))),
        ),
        (
            "keep-alive, light load",
            Box::new(|| wrk(Some(&cg), &["-t1", "-c1", "-d2s"], &http("/v1/items/42"))),
        ),
        (
            "16 KiB answers",
            Box::new(|| wrk(Some(&cg), &["-t2", "-c8", "-d2s"], &http("/v1/items/16k"))),
        ),
        (
            "a new connection per call",
            Box::new(|| {
                wrk(
                    Some(&cg),
                    &["-t2", "-c16", "-d3s", "-H", "Connection: close"],
                    &http("/v1/items/42"),
                )
            }),
        ),
        (
            "denied calls",
            Box::new(|| wrk_any(Some(&cg), &["-t2", "-c8", "-d1s"], &http("/v1/orders/7"))),
        ),
        (
            "HTTP/2",
            Box::new(|| {
                h2load(
                    Some(&cg),
                    &["-D2", "-c4", "-m100", "-t2"],
                    &http("/v1/items/42"),
                )
            }),
        ),
        (
            "TLS intercepted",
            Box::new(|| wrk(Some(&cg), &["-t2", "-c16", "-d2s"], &tls)),
        ),
        (
            "TCP passed through",
            Box::new(|| {
                wrk(
                    Some(&cg_plain),
                    &["-t2", "-c16", "-d2s"],
                    &http("/v1/items/42"),
                )
            }),
        ),
    ];
    for (name, step) in &steps {
        let w = step();
        println!(
            "pgo training: {name}: {} calls ({} not 2xx), {} errors",
            w.requests, w.non_2xx, w.errors
        );
        assert!(w.requests > 0, "pgo training: {name} served no call");
    }
    for g in [&mut gw, &mut plain] {
        assert!(
            g.terminate(STOP_WITHIN),
            "pgo training: a gateway did not exit on SIGTERM within {STOP_WITHIN:?}, so it \
             wrote no profile:\n{}",
            g.log()
        );
    }
    let _ = fs::remove_dir_all(&dir);
}
