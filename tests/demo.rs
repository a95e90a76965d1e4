//! The first run: the example policy repository as a newcomer starts it (its identity
//! provider, `idp.corp.example`, is one nobody has), and `callgate demo`, the demo world that
//! `cargo xtask run` starts.
use std::{fs, path::Path, process::Command, time::Duration};

use callgate_e2e::*;

/// The example policy's provider cannot be reached: the key refresh retries it, but the log
/// says so once and then at a falling rate (1st, 2nd, 4th, 8th failure), and `status` has the
/// whole outage (provider, last error, since when, failures). The refresh is made 1 s here so
/// that a dozen failures fit in a test; before, each one was a warning.
#[test]
fn an_unreachable_provider_is_warned_about_at_a_falling_rate_and_shown_in_status() {
    if !ebpf_available("an_unreachable_provider_is_warned_about") {
        return;
    }
    let dir = TestDir::new("callgate-example");
    let repo = dir.join("policies");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    assert!(
        Command::new("cp")
            .arg("-r")
            .arg(&src)
            .arg(&repo)
            .status()
            .expect("cp")
            .success()
    );
    let top = repo.join("callgate.yaml");
    let text = fs::read_to_string(&top).expect("callgate.yaml");
    assert!(text.contains("https://idp.corp.example"), "{text}");
    let text = text.replacen(
        "groups_claim: groups",
        "groups_claim: groups\n      jwks_refresh_s: 1",
        1,
    );
    fs::write(&top, text).expect("write");
    let gw = Gateway::start_with(&["--policies", &repo.display().to_string()]);
    let failing = |gw: &Gateway| gw.status()["identity"][0]["failing_fetches"].as_u64();
    let n1 = wait_for(Duration::from_secs(30), || {
        failing(&gw).filter(|&n| n >= 12)
    })
    .unwrap_or_else(|| panic!("no dozen failed fetches: {}\n{}", gw.status(), gw.log()));
    let warnings = gw
        .log()
        .lines()
        .filter(|l| l.contains("cannot fetch OIDC signing keys") && l.contains("WARN"))
        .count() as u32;
    let n2 = failing(&gw).expect("still failing");
    assert!(
        (n1.ilog2() + 1..=n2.ilog2() + 1).contains(&warnings),
        "{warnings} warnings for {n1}..{n2} failures:\n{}",
        gw.log()
    );
    let p = &gw.status()["identity"][0];
    assert_eq!(p["name"], "corp", "{p}");
    assert!(p["failing_since_ms"].as_u64().is_some(), "{p}");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("idp.corp.example")),
        "{p}"
    );
    let text = gw.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("unreachable since") && text.contains("fetches in a row failed"),
        "{text}"
    );
}
