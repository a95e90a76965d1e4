//! Call extraction from a request a workload sends (REST route matching, JSON-RPC batches,
//! MCP, gRPC metadata, raw HTTP) against the example policy repository, then a decision:
//! calls or a clear error, never a panic.
//!
//! Input: `METHOD path\nheader: value\n...\n\nbody`.
#![no_main]
use std::{path::Path, sync::OnceLock};

use callgate::{extract, policy};
use libfuzzer_sys::fuzz_target;

fn snapshot() -> &'static policy::Snapshot {
    static SNAP: OnceLock<policy::Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        match policy::load_snapshot(&repo) {
            Ok((_, snap)) => snap,
            Err(e) => panic!("example policy repo: {e:?}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut words = first.splitn(2, |&b| b == b' ');
    let method = words.next().unwrap_or_default();
    let path = words.next().unwrap_or(b"/");
    let mut req = http::Request::builder().method(method).uri(path);
    for line in lines {
        if let Some(i) = line.iter().position(|&b| b == b':') {
            req = req.header(&line[..i], line[i + 1..].trim_ascii());
        }
    }
    let Ok(req) = req.body(()) else { return };
    let (parts, ()) = req.into_parts();
    let snap = snapshot();
    for svc in snap.services_by_name().values() {
        let kind = extract::kind_of(&svc.surface);
        let _ = svc.surface.route(parts.method.as_str(), parts.uri.path());
        let _ = extract::extract(kind, &svc.surface, &parts, Some(body), false);
        let _ = extract::extract(kind, &svc.surface, &parts, None, true);
    }
});
