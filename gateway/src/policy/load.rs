//! Reading a policy repository from disk: every file is parsed, every error is kept (with file,
//! line and column), and nothing is half-loaded: the result is all files or all errors.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
};

use saphyr_parser::{Event, Parser};
use serde::{Serialize, de::DeserializeOwned};

use super::schema::{RepoFile, ServiceFile, TestFile};

/// Larger files are refused: a policy file is hand-written text, not a data dump.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// How many files of one kind a repository may hold.
const MAX_FILES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem, at a place in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// A file's text, kept to locate findings in it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub locator: Locator,
}

impl Source {
    pub fn finding(
        &self,
        severity: Severity,
        path: &[&str],
        message: impl Into<String>,
    ) -> Finding {
        let (line, col) = self.locator.find(path);
        Finding {
            severity,
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    pub fn error(&self, path: &[&str], message: impl Into<String>) -> Finding {
        self.finding(Severity::Error, path, message)
    }
}

/// The repository as read: each file with its source.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub root: PathBuf,
    pub repo: RepoFile,
    pub repo_source: Source,
    pub services: Vec<(Source, ServiceFile)>,
    pub tests: Vec<(Source, TestFile)>,
}

pub fn load(root: &Path) -> Result<Loaded, Vec<Finding>> {
    let mut errors = Vec::new();
    if !root.is_dir() {
        return Err(vec![Finding {
            severity: Severity::Error,
            file: root.into(),
            line: 1,
            col: 1,
            message:
                "not a directory (expected a policy repository with callgate.yaml and services/)"
                    .into(),
        }]);
    }
    let repo_path = root.join("callgate.yaml");
    let (repo_source, repo) = if repo_path.exists() {
        match parse_file::<RepoFile>(&repo_path) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                (
                    Source {
                        path: repo_path,
                        locator: Locator::default(),
                    },
                    RepoFile::default(),
                )
            }
        }
    } else {
        // Without it the defaults apply, deny included.
        (
            Source {
                path: repo_path,
                locator: Locator::default(),
            },
            RepoFile::default(),
        )
    };
    let mut services = Vec::new();
    for path in yaml_files(&root.join("services"), &mut errors) {
        match parse_file::<ServiceFile>(&path) {
            Ok(v) => services.push(v),
            Err(e) => errors.push(e),
        }
    }
    let mut tests = Vec::new();
    for path in yaml_files(&root.join("tests"), &mut errors) {
        match parse_file::<TestFile>(&path) {
            Ok(v) => tests.push(v),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(Loaded {
            root: root.into(),
            repo,
            repo_source,
            services,
            tests,
        })
    } else {
        Err(errors)
    }
}

/// `*.yaml` / `*.yml` directly in `dir`, sorted so that loading is deterministic.
fn yaml_files(dir: &Path, errors: &mut Vec<Finding>) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    if files.len() > MAX_FILES {
        errors.push(Finding {
            severity: Severity::Error,
            file: dir.into(),
            line: 1,
            col: 1,
            message: format!("{} files; at most {MAX_FILES} are read", files.len()),
        });
        files.truncate(MAX_FILES);
    }
    files
}

fn file_error(path: &Path, line: usize, col: usize, message: impl Into<String>) -> Finding {
    Finding {
        severity: Severity::Error,
        file: path.into(),
        line,
        col,
        message: message.into(),
    }
}

pub fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<(Source, T), Finding> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, 1, 1, e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(file_error(
            path,
            1,
            1,
            format!(
                "file is {} bytes; policy files are limited to {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| file_error(path, 1, 1, e.to_string()))?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = line_col(&bytes[..e.valid_up_to()]);
            return Err(file_error(path, line, col, "invalid UTF-8"));
        }
    };
    parse_str(path, text)
}

/// Parses YAML text as `T`, with errors located in `path`.
pub fn parse_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<(Source, T), Finding> {
    let value = if text.trim().is_empty() {
        // An empty document is an empty mapping, so defaults apply (or required keys are named).
        yaml_serde::from_str::<T>("{}")
    } else {
        yaml_serde::from_str::<T>(text)
    };
    match value {
        Ok(v) => {
            let locator = Locator::new(text);
            // yaml_serde lets a repeated key in a map silently replace the first; a policy
            // that says one thing twice is a mistake to report, not to guess at.
            if let Some((key, line, col)) = locator.duplicates.first() {
                return Err(file_error(
                    path,
                    *line,
                    *col,
                    format!("duplicate key `{key}`"),
                ));
            }
            Ok((
                Source {
                    path: path.into(),
                    locator,
                },
                v,
            ))
        }
        Err(e) => {
            let (line, col) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            Err(file_error(path, line, col, strip_location(&e.to_string())))
        }
    }
}

/// yaml_serde appends " at line L column C"; the finding already says where.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_string(),
        _ => msg.to_string(),
    }
}

fn line_col(prefix: &[u8]) -> (usize, usize) {
    let line = prefix.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = prefix.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

/// Positions of every key and sequence item in a YAML document, by dotted path
/// (`rules.2.function`), so that findings made after deserialization can point at their line.
#[derive(Debug, Clone, Default)]
pub struct Locator {
    spans: HashMap<String, (usize, usize)>,
    /// Keys repeated within one mapping, with where the repeat is.
    pub duplicates: Vec<(String, usize, usize)>,
}

enum Frame {
    Map {
        path: String,
        key: Option<String>,
        seen: HashSet<String>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

impl Locator {
    pub fn new(text: &str) -> Self {
        let mut spans = HashMap::new();
        let mut duplicates = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        // Bounded by the file size limit; an error just ends the walk (the parse proper has
        // already succeeded or reported it).
        while let Some(Ok((event, span))) = parser.next_event() {
            let at = (span.start.line(), span.start.col() + 1);
            let node_path = match &event {
                Event::Scalar(..)
                | Event::MappingStart(..)
                | Event::SequenceStart(..)
                | Event::Alias(..) => match stack.last_mut() {
                    Some(Frame::Map {
                        path,
                        key: key @ None,
                        seen,
                    }) => {
                        if let Event::Scalar(k, ..) = &event {
                            let full = join(path, k);
                            spans.entry(full).or_insert(at);
                            if !seen.insert(k.to_string()) {
                                duplicates.push((k.to_string(), at.0, at.1));
                            }
                            *key = Some(k.to_string());
                        }
                        continue;
                    }
                    Some(Frame::Map { path, key, .. }) => {
                        join(path, &key.take().unwrap_or_default())
                    }
                    Some(Frame::Seq { path, next }) => {
                        let p = join(path, &next.to_string());
                        *next += 1;
                        spans.entry(p.clone()).or_insert(at);
                        p
                    }
                    None => String::new(),
                },
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    continue;
                }
                _ => continue,
            };
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map {
                    path: node_path,
                    key: None,
                    seen: HashSet::new(),
                }),
                Event::SequenceStart(..) => stack.push(Frame::Seq {
                    path: node_path,
                    next: 0,
                }),
                _ => {}
            }
        }
        Self { spans, duplicates }
    }

    /// The position of `path`, or of its longest prefix that exists, or the file's start.
    pub fn find(&self, path: &[&str]) -> (usize, usize) {
        for n in (1..=path.len()).rev() {
            if let Some(&at) = self.spans.get(&path[..n].join(".")) {
                return at;
            }
        }
        (1, 1)
    }
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locator_finds_keys_and_items() {
        let text = "service: x\nrules:\n  - name: a\n    function: f\n  - name: b\n    args:\n      amount: { max: 1 }\n";
        let l = Locator::new(text);
        assert_eq!(l.find(&["service"]), (1, 1));
        assert_eq!(l.find(&["rules", "1", "name"]), (5, 5));
        assert_eq!(l.find(&["rules", "0", "function"]), (4, 5));
        assert_eq!(l.find(&["rules", "1", "args", "amount", "max"]), (7, 17));
        assert_eq!(
            l.find(&["rules", "1", "nope"]),
            (5, 5),
            "falls back to the nearest known prefix"
        );
        assert_eq!(l.find(&["missing"]), (1, 1));
    }

    #[test]
    fn parse_errors_name_file_line_and_column() {
        let err =
            parse_str::<ServiceFile>(Path::new("s.yaml"), "service: x\nmatch: {}\nrulez: []\n")
                .unwrap_err();
        assert_eq!((err.line, err.col), (3, 1), "{err}");
        assert!(err.message.contains("unknown field `rulez`"), "{err}");
        assert!(err.to_string().starts_with("s.yaml:3:1: error: "), "{err}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let dir = std::env::temp_dir().join(format!("cg-utf8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.yaml");
        std::fs::write(&p, b"service: x\nmatch: \xff\n").unwrap();
        let err = parse_file::<ServiceFile>(&p).unwrap_err();
        assert_eq!(
            (err.line, err.col, err.message.as_str()),
            (2, 8, "invalid UTF-8")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
