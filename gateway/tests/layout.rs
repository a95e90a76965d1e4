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
    "config",
    "call",
    "util",
];

/// The binary's own modules (`main.rs`, `cli/`) may use anything of the library.
const BINARY: &[&str] = &["main.rs", "cli.rs", "cli"];

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

/// Every top-level module a line names with `crate::x`, or inside a `use crate::{x, ...}` group.
fn named(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_group = false;
    for (i, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if after.starts_with('{') {
                in_group = true;
            } else if !name.is_empty() {
                out.push((i + 1, name));
            }
            rest = after;
        }
        if in_group {
            // Group members start a line: `    proxy::forward::pool::Upstreams,`
            let t = code.trim_start();
            let name: String = t
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && t[name.len()..].starts_with("::") {
                out.push((i + 1, name));
            }
            if code.contains("};") {
                in_group = false;
            }
        }
    }
    out
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
        for (line, other) in named(&text) {
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
fn the_checker_sees_both_spellings() {
    let text = "use crate::{\n    proxy::http,\n    util::fs,\n};\nlet x = crate::record::now();\n";
    let names: Vec<String> = named(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["proxy", "util", "record"]);
}
