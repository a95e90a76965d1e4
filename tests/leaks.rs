//! What a masked service's upstream sends back must not get out unmasked, nor cost the gateway
//! more than a small constant per byte (issue 30, "Leaks" and #15). Each test drives a real
//! upstream (`tests/parties/upstream.py`, nginx) that sends the value, through a gateway that
//! must keep it from the client in an enabled cgroup.
use std::time::{Duration, Instant};

use callgate_e2e::*;

const REPO: &str = "default_action: deny\nunknown_destination: deny\n";

/// A REST service that allows every call and masks cards and e-mail addresses.
fn leaky(port: u16) -> String {
    format!(
        r#"
service: leaky
match:
  hosts: ["127.0.0.1:{port}"]
protocol: rest
rules:
  - name: everything
    action: allow
response:
  mask: [card_number, email]
"#
    )
}

struct Setup {
    gw: Gateway,
    cg: TestCgroup,
    up: Party,
    _dir: TestDir,
}

fn setup(test: &str) -> Option<Setup> {
    if !ebpf_available(test) || !parties_available(test) {
        return None;
    }
    let dir = TestDir::new("callgate-leaks");
    let up = upstream(&dir, None);
    let policies = policy_repo(&dir, REPO, &[("leaky", &leaky(up.port))]);
    let gw = gateway_with_config(&policies, "http:\n  header_timeout_s: 5\n", &dir);
    let cg = TestCgroup::new("leaks");
    gw.enable(&cg);
    Some(Setup {
        gw,
        cg,
        up,
        _dir: dir,
    })
}

/// `4 4 4 …` is every reading a card: 256 KiB of it cost 23 s of CPU, quadratic in the size,
/// and pinned a data thread. Now it is masked whole in a time linear in its size (bounded
/// here generously, for a debug build on a shared machine), and no digit of it gets out.
#[test]
fn overlapping_card_readings_are_masked_in_linear_time() {
    let Some(s) = setup("overlapping_card_readings_are_masked_in_linear_time") else {
        return;
    };
    let size = 256 * 1024;
    let url = format!("http://127.0.0.1:{}/worst?size={size}", s.up.port);
    let t = Instant::now();
    let (code, body) = curl_in(&s.cg, &["-sS", "--max-time", "60", &url]);
    let took = t.elapsed();
    assert_eq!(code, 0, "curl failed: {}", &body[..body.len().min(300)]);
    assert!(
        body.len() >= size / 2,
        "a short answer: {} bytes",
        body.len()
    );
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    assert!(digits < 64, "{digits} digits of the answer got out");
    assert!(
        took < Duration::from_secs(15),
        "256 KiB of overlapping cards took {took:?}"
    );
    // The gateway still answers promptly afterwards.
    let (code, _) = curl_in(
        &s.cg,
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{}/text", s.up.port),
        ],
    );
    assert_eq!(code, 0);
    assert!(s.gw.pid().is_some());
}
