//! The policy repository as a git remote, fetched into a bare cache under the state directory,
//! each new commit's signature checked (see [`super::sshsig`]) before its tree is written out
//! to be compiled. Runs on the policy thread, never on the data path.
//!
//! A local path or `file://` is read with libgit2. A network URL (`https://`, `http://`,
//! `ssh://`, `user@host:path`, `git://`) is fetched by the system's `git` run as a child in a
//! fixed environment: libgit2 (as the `git2` crate builds it) can speak HTTPS on Linux only
//! through OpenSSL and SSH only through libssh2 (OpenSSL again), which would put a second TLS
//! stack, in C, beside the gateway's rustls; `git` uses the system's libcurl and OpenSSH, the
//! ones the operator's own `git` uses, updated with the system. Its environment is emptied
//! and fixed: no user or system git configuration, no prompts or credential helpers, only the
//! URL's own protocol allowed, `ssh` without user configuration, in batch mode and checking
//! the host key against a configured known_hosts, objects checked as they arrive, and a
//! wall-clock limit. All commits (and the last good one) live in the same cache, so
//! signature and ancestry checks read them with libgit2 whatever fetched them.
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

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
        match Transport::of(&self.cfg.url) {
            Transport::Local => self.fetch_local(&repo)?,
            Transport::Child(scheme) => self.fetch_child(scheme)?,
        }
        let oid = repo
            .refname_to_id(FETCHED)
            .map_err(|e| format!("{}: {}", self.full_ref(), e.message()))?;
        repo.find_commit(oid)
            .map(|c| c.id())
            .map_err(|e| format!("{}: not a commit: {}", self.full_ref(), e.message()))
    }

    fn fetch_local(&self, repo: &Repository) -> Result<(), String> {
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
        })
    }

    /// `git fetch` as a child, in a fixed environment (see the module's doc), stopped after
    /// `timeout`.
    fn fetch_child(&self, scheme: &'static str) -> Result<(), String> {
        let shown = redact(&self.cfg.url);
        let home = self.dir.join("home");
        std::fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;
        let spec = format!("+{}:{FETCHED}", self.full_ref());
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", &home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_PROTOCOL_FROM_USER", "0")
            .env("LC_ALL", "C");
        let allow = format!("protocol.{scheme}.allow=always");
        for c in [
            "protocol.allow=never",
            allow.as_str(),
            "credential.helper=",
            "core.askPass=",
            "transfer.fsckObjects=true",
            "gc.auto=0",
            "maintenance.auto=false",
            "http.sslVerify=true",
            // A server that stalls below 1 kB/s for 20 s is given up on.
            "http.lowSpeedLimit=1000",
            "http.lowSpeedTime=20",
        ] {
            cmd.arg("-c").arg(c);
        }
        if let Some(ca) = &self.cfg.ca_file {
            cmd.env("GIT_SSL_CAINFO", ca);
        }
        if scheme == "ssh" {
            let Some(kh) = &self.cfg.known_hosts else {
                return Err(format!(
                    "{shown}: an ssh remote needs policies.known_hosts (the server's key is checked against it)"
                ));
            };
            let mut ssh = format!(
                "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout={} -o UserKnownHostsFile={}",
                self.cfg.timeout.as_secs().clamp(1, 30),
                shell_quote(kh)?
            );
            if let Some(key) = &self.cfg.ssh_key {
                ssh.push_str(&format!(
                    " -o IdentitiesOnly=yes -o IdentityFile={}",
                    shell_quote(key)?
                ));
            }
            cmd.env("GIT_SSH_COMMAND", ssh);
        }
        cmd.arg("--git-dir")
            .arg(self.dir.join("cache.git"))
            .args([
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
            ])
            .arg(&self.cfg.url)
            .arg(&spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("fetching {shown}: running git: {e}"))?;
        // Read stderr on the side so a chatty child cannot block on a full pipe.
        let mut stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(64 * 1024).read_to_string(&mut text);
            }
            text
        });
        let deadline = Instant::now() + self.cfg.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Ok(st),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "fetching {shown} {}: no answer within {} s (timeout_s)",
                        self.cfg.git_ref,
                        self.cfg.timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("fetching {shown}: {e}")),
            }
        };
        let text = reader.join().unwrap_or_default();
        let status = status?;
        if status.success() {
            return Ok(());
        }
        let why: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        Err(format!(
            "fetching {shown} {}: {}",
            self.cfg.git_ref,
            redact(&why.join("; "))
        ))
    }

    /// The last commit taken, from an earlier run.
    pub fn last_good(&self) -> Option<Oid> {
        self.repo().ok()?.refname_to_id(GOOD).ok()
    }

    /// Refuses `oid` unless it descends from the last commit taken (or is it): a force-push
    /// of the ref to an older or unrelated commit, even one signed by an allowed signer, would
    /// otherwise roll the policy back to whatever a key ever signed.
    pub fn check_descends(&self, oid: Oid) -> Result<(), String> {
        let Some(good) = self.last_good() else {
            return Ok(());
        };
        if good == oid {
            return Ok(());
        }
        let repo = self.repo()?;
        match repo.graph_descendant_of(oid, good) {
            Ok(true) => Ok(()),
            Ok(false) => {
                let older = repo.graph_descendant_of(good, oid).unwrap_or(false);
                Err(format!(
                    "commit {oid} does not descend from {good}, the last commit taken ({}); `callgate policy sync --allow-rollback` takes it",
                    if older {
                        "it is an older commit: the ref was moved back"
                    } else {
                        "it is on an unrelated history: the ref was force-pushed"
                    }
                ))
            }
            Err(e) => Err(format!(
                "commit {oid} against the last taken {good}: {}",
                e.message()
            )),
        }
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

/// How a URL is fetched.
enum Transport {
    /// A path or `file://`: libgit2.
    Local,
    /// The system's `git`, with this protocol (as `protocol.<name>.allow` spells it) allowed.
    Child(&'static str),
}

impl Transport {
    fn of(url: &str) -> Self {
        let lower = url.to_ascii_lowercase();
        for (prefix, scheme) in [
            ("https://", "https"),
            ("http://", "http"),
            ("ssh://", "ssh"),
            ("git+ssh://", "ssh"),
            ("ssh+git://", "ssh"),
            ("git://", "git"),
        ] {
            if lower.starts_with(prefix) {
                return Self::Child(scheme);
            }
        }
        // scp-like `user@host:path` (no slash before the colon), as git reads it.
        if !lower.contains("://")
            && let Some((host, _)) = url.split_once(':')
            && !host.is_empty()
            && !host.contains('/')
        {
            return Self::Child("ssh");
        }
        Self::Local
    }
}

/// `url` with any password (`https://user:secret@host`) replaced, for messages and status.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let user = &authority[..at];
                match user.split_once(':') {
                    Some((name, _)) => out.push_str(&format!("{name}:***")),
                    None => out.push_str(user),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `path` in single quotes for `GIT_SSH_COMMAND` (which a shell reads).
fn shell_quote(path: &Path) -> Result<String, String> {
    let s = path
        .to_str()
        .ok_or_else(|| format!("{}: not UTF-8", path.display()))?;
    if s.contains('\'') {
        return Err(format!("{s}: a path with a quote cannot be given to ssh"));
    }
    Ok(format!("'{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_by_url() {
        assert!(matches!(Transport::of("/srv/p.git"), Transport::Local));
        assert!(matches!(
            Transport::of("file:///srv/p.git"),
            Transport::Local
        ));
        assert!(matches!(
            Transport::of("https://h/p.git"),
            Transport::Child("https")
        ));
        assert!(matches!(
            Transport::of("http://h/p.git"),
            Transport::Child("http")
        ));
        assert!(matches!(
            Transport::of("ssh://git@h:22/p.git"),
            Transport::Child("ssh")
        ));
        assert!(matches!(
            Transport::of("git@h:org/p.git"),
            Transport::Child("ssh")
        ));
        assert!(matches!(
            Transport::of("git://h/p.git"),
            Transport::Child("git")
        ));
        assert!(matches!(Transport::of("./dir:x/p.git"), Transport::Local));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("fatal: https://ops:tok3n@h/p.git failed"),
            "fatal: https://ops:***@h/p.git failed"
        );
        assert_eq!(redact("ssh://git@h/p.git"), "ssh://git@h/p.git");
        assert_eq!(redact("no url here"), "no url here");
    }
}
