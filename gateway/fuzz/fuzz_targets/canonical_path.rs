//! Path canonicalisation (`extract::path`), differentially: the canonical form of a path is
//! canonical itself (nothing is left to normalise a second time, so no upstream can read it
//! another way than the gateway did), carries no escape of an unreserved character and no
//! empty or dot segment, and means what the path meant to a server that decodes every escape
//! and then resolves dot segments (werkzeug's and nginx's reading). And against the route
//! matcher: whenever such a server's router would send the path to one of the example policy
//! repository's REST routes, the gateway decides the canonical path as a declared function
//! that router also accepts — never as an undeclared one a catch-all rule might allow.
#![no_main]
use std::{path::Path, sync::OnceLock};

use callgate::{
    extract::path::{PathRules, canonical},
    policy,
};
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

/// A decode-then-route server's verdict: does `route` (`METHOD /a/{p}/b`) take `segments`?
/// Literals in any case (Express, ASP.NET), parameters non-empty.
fn routes(route: &str, segments: &[Vec<u8>]) -> Option<String> {
    let (method, template) = route.split_once(' ')?;
    let want: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
    let fits = want.len() == segments.len()
        && want.iter().zip(segments).all(|(w, got)| {
            if w.starts_with('{') {
                !got.is_empty()
            } else {
                w.as_bytes().eq_ignore_ascii_case(got)
            }
        });
    fits.then(|| method.to_string())
}

/// A server's reading: every segment decoded, empty and `.` segments dropped, `..` resolved.
fn meaning(path: &str) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for seg in path.split('/') {
        let seg: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
        match &seg[..] {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            _ => out.push(seg),
        }
    }
    Some(out)
}

fuzz_target!(|data: (&str, bool, bool)| {
    let (path, encoded_slashes, semicolons) = data;
    let rules = PathRules {
        encoded_slashes,
        semicolons,
        ..PathRules::default()
    };
    let Ok(result) = canonical(path, rules) else {
        return;
    };
    let Some(c) = result else {
        // Called canonical: then it must be.
        if path != "*" {
            assert!(!path.contains("//"), "{path:?}");
            assert!(!path.split('/').any(|s| s == "." || s == ".."), "{path:?}");
        }
        return;
    };
    assert_eq!(
        canonical(&c, rules),
        Ok(None),
        "{path:?} -> {c:?} is not canonical"
    );
    assert!(!c.contains("//"), "{path:?} -> {c:?}");
    assert!(
        !c.split('/').any(|s| s == "." || s == ".."),
        "{path:?} -> {c:?}"
    );
    for (i, _) in c.match_indices('%') {
        let hex = &c[i + 1..i + 3];
        let b = u8::from_str_radix(hex, 16).expect("two hex digits");
        assert!(
            !(b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
            "{path:?} -> {c:?} keeps an escaped unreserved character"
        );
        assert_eq!(hex, hex.to_ascii_uppercase(), "{path:?} -> {c:?}");
    }
    // Encoded slashes (when kept) are one segment to the gateway but two to a server that
    // decodes before splitting: the service opted into that.
    if !encoded_slashes {
        assert_eq!(
            meaning(path),
            meaning(&c),
            "{path:?} -> {c:?} changed meaning"
        );
    }
    // A request's path never holds `?` or `#` (the query and fragment are split off first),
    // and a service that keeps encoded slashes routes them its own way.
    if encoded_slashes || path.contains(['?', '#']) {
        return;
    }
    let Some(segments) = meaning(path) else {
        return;
    };
    for svc in snapshot().services_by_name().values() {
        for f in &svc.functions {
            let Some(method) = f.route.as_deref().and_then(|r| routes(r, &segments)) else {
                continue;
            };
            let decided = svc.surface.route(&method, &c).map(|(g, _)| g.to_string());
            let Some(decided) = decided else {
                panic!(
                    "{path:?} -> {c:?}: a router sends it to {}, the gateway to no function",
                    f.name
                );
            };
            let theirs = svc.functions.iter().find(|g| *g.name == *decided);
            assert!(
                theirs
                    .and_then(|g| g.route.as_deref())
                    .and_then(|r| routes(r, &segments))
                    .is_some(),
                "{path:?} -> {c:?}: decided as {decided}, which a router would not pick"
            );
        }
    }
});
