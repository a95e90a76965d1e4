//! The gateway's layout, checked: every top-level module imports only the modules below it in
//! the order `lib.rs` states, so the folders keep reading as the pipeline and no import cycle
//! comes back. A new `crate::x` import that goes upwards fails here with the file and line.
use std::{
    fs,
    path::{Path, PathBuf},
};

/// Top to bottom: a module may import only those after it. `lib.rs` says the same in words.
const LAYERS: &[&str] = &[
    "daemon",
    "admin",
    "proxy",
    "mcp",
    "intercept",
    "record",
    "telemetry",
    "policy",
    "extract",
    "approve",
    "identity",
    "obligations",
    "fleet",
    "config",
    "call",
    "util",
];

/// The binary's own modules (`main.rs`, `cli/`, its allocator) may use anything of the library.
const BINARY: &[&str] = &["main.rs", "cli.rs", "cli", "alloc.rs"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`proxy/http/held.rs` → `proxy`).
fn owner(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel
        .components()
        .next()
        .expect("a component")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The file's code with comments and the insides of string and character literals taken
/// out, so that neither can hide or fake a path.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'#') | Some(b'"'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"'
                        && b[j + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|c| **c == b'#')
                            .count()
                            == hashes
                    {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\')) => {
                // A character literal: '"', '\'', '\\'.
                let mut j = i + 1;
                if b.get(j) == Some(&b'\\') {
                    j += 2;
                } else {
                    j += 1;
                }
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                out.push_str("' '");
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    // `a :: b` and a path broken over lines read as `a::b`.
    let mut tight = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("::") {
        tight.push_str(rest[..at].trim_end());
        tight.push_str("::");
        rest = rest[at + 2..].trim_start();
    }
    tight.push_str(rest);
    tight
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The paths a `use` tree names, braces expanded: `crate::{a, b::{c, d}}` → `crate::a`,
/// `crate::b::c`, `crate::b::d`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            for item in tree.split(',') {
                let item = item.split(" as ").next().unwrap_or("").trim();
                if !item.is_empty() {
                    out.push(format!("{prefix}{item}"));
                }
            }
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand(&inner[start..], &format!("{prefix}{head}"), out);
        }
    }
}

/// Every path a file names through `crate::`, `super::` or a `use` tree, as written.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before_ok = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before_ok {
            expand(&after[..end], "", &mut out);
        }
        rest = &after[end.min(after.len())..];
    }
    for root in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let before = rest[..at].chars().last();
            let after = &rest[at..];
            let mut len = 0;
            let mut tail = after;
            loop {
                let seg = ident_at(tail);
                if seg.is_empty() {
                    break;
                }
                len += seg.len();
                tail = &tail[seg.len()..];
                match tail.strip_prefix("::") {
                    Some(t) => {
                        len += 2;
                        tail = t;
                    }
                    None => break,
                }
            }
            if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
                out.push(after[..len].trim_end_matches("::").to_string());
            }
            rest = &rest[at + root.len()..];
        }
    }
    out
}

/// The top-level module a path from the module `me` (its path from the crate root) reaches,
/// if it leaves `me`'s own top-level module.
fn top_level(path: &str, me: &[String]) -> Option<String> {
    let mut segs = path.split("::").map(str::trim).filter(|s| !s.is_empty());
    let first = segs.next()?;
    let mut base: Vec<String> = match first {
        "crate" => Vec::new(),
        "super" => me[..me.len().saturating_sub(1)].to_vec(),
        _ => return None,
    };
    let mut next = segs.next();
    while next == Some("super") {
        base.pop();
        next = segs.next();
    }
    match base.first() {
        Some(top) => Some(top.clone()),
        None => next
            .filter(|n| {
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .map(str::to_string),
    }
}

/// Every top-level module a file names, with the line of the first mention.
fn named(text: &str, me: &[String]) -> Vec<(usize, String)> {
    let code = code_only(text);
    let mut out: Vec<(usize, String)> = Vec::new();
    for p in paths(&code) {
        if let Some(top) = top_level(&p, me) {
            if !out.iter().any(|(_, t)| *t == top) {
                let needle = p.rsplit("::").next().unwrap_or(&p);
                let line = text
                    .lines()
                    .position(|l| l.contains(needle))
                    .map_or(0, |i| i + 1);
                out.push((line, top));
            }
        }
    }
    out
}

/// The module path of a file: `proxy/http/held.rs` → `proxy::http::held`.
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_string();
    }
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts
}

#[test]
fn imports_go_down_the_pipeline_only() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut wrong = Vec::new();
    for file in &files {
        let me = owner(file);
        if BINARY.contains(&me.as_str()) || BINARY.iter().any(|b| me == b.trim_end_matches(".rs")) {
            continue;
        }
        if me == "lib" {
            continue;
        }
        let Some(mine) = rank(&me) else {
            wrong.push(format!(
                "{}: top-level module {me:?} is not in the layer list (tests/layout.rs, lib.rs)",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).expect("read source");
        for (line, other) in named(&text, &module_path(file)) {
            if other == me {
                continue;
            }
            match rank(&other) {
                Some(theirs) if theirs > mine => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: {me} imports {other}, which sits above it",
                    file.display()
                )),
                None => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_every_spelling() {
    let me = ["policy".to_string(), "compile".to_string()];
    let text = "use crate::{daemon, util::fs};\nuse crate::{\n    proxy,\n    record::X,\n};\n\
        let a = super::super::admin::f();\nlet b = crate::\n    intercept::g();\n\
        let s = \"// crate::call\"; // crate::config\nuse super::schema;\n";
    let mut names: Vec<String> = named(text, &me).into_iter().map(|(_, n)| n).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "admin",
            "daemon",
            "intercept",
            "policy",
            "proxy",
            "record",
            "util"
        ]
    );
}

#[test]
fn lib_states_the_same_order() {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let stated: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join(" ");
    let at = stated
        .find("Imports go one way")
        .expect("lib.rs states the layering");
    let list = &stated[at..];
    let order: Vec<&str> = LAYERS
        .iter()
        .map(|l| list.find(&format!("`{l}`")).map_or("", |_| *l))
        .collect();
    assert_eq!(order, LAYERS, "lib.rs names every layer");
    let positions: Vec<usize> = LAYERS
        .iter()
        .filter_map(|l| list.find(&format!("`{l}`")))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "lib.rs lists them in this order"
    );
}
