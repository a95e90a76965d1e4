//! Which commit of the policy repository is in force, and whether the tree differs from it.
//! Read with libgit2 at load time; nothing here runs on the data path.
use std::path::Path;

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GitState {
    pub commit: Option<String>,
    /// Files under the policy directory differ from the commit (or are untracked).
    pub dirty: bool,
    /// `git`, or why there is no commit.
    pub source: String,
}

pub fn inspect(dir: &Path) -> GitState {
    let repo = match git2::Repository::discover(dir) {
        Ok(r) => r,
        Err(_) => {
            return GitState {
                commit: None,
                dirty: false,
                source: "not a git repository".into(),
            };
        }
    };
    let commit = repo
        .head()
        .ok()
        .and_then(|h| h.peel_to_commit().ok())
        .map(|c| c.id().to_string());
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    let rel = repo
        .workdir()
        .and_then(|w| w.canonicalize().ok())
        .zip(dir.canonicalize().ok())
        .and_then(|(w, d)| d.strip_prefix(&w).ok().map(|p| p.to_path_buf()));
    if let Some(rel) = rel.as_ref().filter(|r| !r.as_os_str().is_empty()) {
        opts.pathspec(rel);
    }
    // If the status cannot be read, say dirty: a decision must not claim a clean commit it
    // cannot vouch for.
    let dirty = repo
        .statuses(Some(&mut opts))
        .map(|s| !s.is_empty())
        .unwrap_or(true);
    let source = if commit.is_some() {
        "git".into()
    } else {
        "git repository without commits".into()
    };
    GitState {
        commit,
        dirty,
        source,
    }
}
