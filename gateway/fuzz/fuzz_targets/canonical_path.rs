//! Path canonicalisation (`extract::path`), differentially: the canonical form of a path is
//! canonical itself (nothing is left to normalise a second time, so no upstream can read it
//! another way than the gateway did), carries no escape of an unreserved character and no
//! empty or dot segment, and means what the path meant to a server that decodes every escape
//! and then resolves dot segments (werkzeug's and nginx's reading).
#![no_main]
use callgate::extract::path::{PathRules, canonical};
use libfuzzer_sys::fuzz_target;

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
    assert_eq!(canonical(&c, rules), Ok(None), "{path:?} -> {c:?} is not canonical");
    assert!(!c.contains("//"), "{path:?} -> {c:?}");
    assert!(!c.split('/').any(|s| s == "." || s == ".."), "{path:?} -> {c:?}");
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
        assert_eq!(meaning(path), meaning(&c), "{path:?} -> {c:?} changed meaning");
    }
});
