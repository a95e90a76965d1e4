//! The policy repository as a git remote: fetched with libgit2 into a bare cache under the
//! state directory, each new commit's signature checked (see [`super::sshsig`]) before its
//! tree is written out to be compiled. Runs on the policy thread, never on the data path.
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use super::sshsig::{AllowedSigners, Refusal, Signer};
use crate::config::PolicyGit;

/// Where the fetched ref lands, and where the last commit taken is remembered (so a restart
/// with the remote unreachable starts on it).
const FETCHED: &str = "refs/callgate/fetched";
const GOOD: &str = "refs/callgate/good";

pub struct Remote {
    pub cfg: PolicyGit,
    dir: PathBuf,
}

impl Remote {
    /// The cache lives in `state_dir/policy-git`.
    pub fn new(cfg: PolicyGit, state_dir: &Path) -> Self {
        Self {
            cfg,
            dir: state_dir.join("policy-git"),
        }
    }

    fn repo(&self) -> Result<Repository, String> {
        let path = self.dir.join("cache.git");
        match Repository::open_bare(&path) {
            Ok(r) => Ok(r),
            Err(_) => Repository::init_bare(&path)
                .map_err(|e| format!("creating {}: {}", path.display(), e.message())),
        }
    }

    fn full_ref(&self) -> String {
        if self.cfg.git_ref.starts_with("refs/") {
            self.cfg.git_ref.clone()
        } else {
            format!("refs/heads/{}", self.cfg.git_ref)
        }
    }

    /// Fetches the configured ref; the commit it points at.
    pub fn fetch(&self) -> Result<Oid, String> {
        let repo = self.repo()?;
        let mut remote = repo
            .remote_anonymous(&self.cfg.url)
            .map_err(|e| format!("{}: {}", self.cfg.url, e.message()))?;
        let spec = format!("+{}:{FETCHED}", self.full_ref());
        remote.fetch(&[spec.as_str()], None, None).map_err(|e| {
            format!(
                "fetching {} {}: {}",
                self.cfg.url,
                self.cfg.git_ref,
                e.message()
            )
        })?;
        let oid = repo
            .refname_to_id(FETCHED)
            .map_err(|e| format!("{}: {}", self.full_ref(), e.message()))?;
        repo.find_commit(oid)
            .map(|c| c.id())
            .map_err(|e| format!("{}: not a commit: {}", self.full_ref(), e.message()))
    }

    /// The last commit taken, from an earlier run.
    pub fn last_good(&self) -> Option<Oid> {
        self.repo().ok()?.refname_to_id(GOOD).ok()
    }

    pub fn mark_good(&self, oid: Oid) -> Result<(), String> {
        let repo = self.repo()?;
        repo.reference(GOOD, oid, true, "policy taken")
            .map(|_| ())
            .map_err(|e| e.message().to_string())
    }

    /// Whether `oid` is signed by a key in `allowed_signers` (read afresh each time, so an
    /// operator's edit applies to the next commit).
    pub fn verify(&self, oid: Oid) -> Result<Signer, Refusal> {
        let signers = AllowedSigners::load(&self.cfg.allowed_signers)
            .map_err(|e| Refusal::new("allowed_signers", e))?;
        let repo = self.repo().map_err(|e| Refusal::new("cache", e))?;
        signers.verify_commit(&repo, oid)
    }

    /// Writes the tree of `oid` to `policy-git/trees/<oid>` (fresh) and returns that directory.
    pub fn checkout(&self, oid: Oid) -> Result<PathBuf, String> {
        let repo = self.repo()?;
        let tree = repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| e.message().to_string())?;
        let root = self.dir.join("trees").join(oid.to_string());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let mut failed = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
            let Ok(name) = entry.name() else {
                return git2::TreeWalkResult::Skip;
            };
            if name == ".." || name == "." || name.contains('/') {
                return git2::TreeWalkResult::Skip;
            }
            let path = root.join(parent).join(name);
            let res = match entry.kind() {
                Some(git2::ObjectType::Tree) => std::fs::create_dir_all(&path),
                // Regular files only: a symlink in the policy could point anywhere.
                Some(git2::ObjectType::Blob) if entry.filemode() & 0o170000 == 0o100000 => {
                    match repo.find_blob(entry.id()) {
                        Ok(b) => std::fs::write(&path, b.content()),
                        Err(e) => Err(std::io::Error::other(e.message().to_string())),
                    }
                }
                _ => Ok(()),
            };
            match res {
                Ok(()) => git2::TreeWalkResult::Ok,
                Err(e) => {
                    failed = Some(format!("{}: {e}", path.display()));
                    git2::TreeWalkResult::Abort
                }
            }
        })
        .map_err(|e| failed.clone().unwrap_or_else(|| e.message().to_string()))?;
        if let Some(f) = failed {
            return Err(f);
        }
        Ok(root)
    }

    /// Removes written-out trees other than `keep`'s.
    pub fn prune(&self, keep: Option<Oid>) {
        let keep = keep.map(|o| o.to_string());
        if let Ok(rd) = std::fs::read_dir(self.dir.join("trees")) {
            for e in rd.flatten() {
                if keep.as_deref() != e.file_name().to_str() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}
