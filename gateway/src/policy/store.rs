//! The policy in force: an immutable snapshot behind an atomic swap. A reload builds a new
//! snapshot off to the side; only a fully valid one replaces the old, so in-flight decisions
//! finish on the snapshot they started with and a broken edit never takes effect.
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::util::sync::LockExt;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    Finding, Snapshot, git::GitState, load_snapshot, load_snapshot_as, remote::Remote,
    sshsig::Signer,
};

/// Where the policy comes from.
enum Source {
    /// A directory (often a git work tree), reloaded when its files change.
    Dir,
    /// A git remote, fetched on a timer; only commits signed by an allowed signer are taken.
    Git(Box<Remote>),
}

/// Told about each snapshot put in force.
type Listener = Box<dyn Fn(&Arc<Snapshot>) + Send + Sync>;
/// Told about each commit refused (and the commit in force, which stays).
type RefusalListener = Box<dyn Fn(&Refused, Option<&str>) + Send + Sync>;

/// The refusal listeners, and the refusals made before the first one came (with the commit
/// in force then).
#[derive(Default)]
struct Refusals {
    listeners: Vec<RefusalListener>,
    early: Vec<(Refused, Option<String>)>,
}

pub struct PolicyStore {
    dir: PathBuf,
    source: Source,
    /// One sync round at a time (the poller and `callgate policy sync`).
    syncing: Mutex<()>,
    current: ArcSwap<Snapshot>,
    status: Mutex<ReloadStatus>,
    listeners: Mutex<Vec<Listener>>,
    /// Refusals: until a listener comes (the recorder opens after the policy), kept here.
    refusals: Mutex<Refusals>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub dir: String,
    pub commit: Option<String>,
    pub dirty: bool,
    pub source: String,
    pub services: usize,
    pub rules: usize,
    pub loaded_at_unix: u64,
    pub reloads: u64,
    pub failed_reloads: u64,
    /// The errors of the last reload, if it failed (the previous policy stayed in force).
    pub last_error: Option<Vec<String>>,
    /// With `policies: { git: … }`: the remote, what was fetched and what was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GitStatus {
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub poll_s: u64,
    /// Who signed the commit in force (principal and key fingerprint).
    pub signer: Option<String>,
    /// The newest commit fetched (in force, or refused).
    pub fetched: Option<String>,
    pub last_fetch_unix: u64,
    /// Why the last fetch failed, if it did (it is retried with backoff).
    pub fetch_error: Option<String>,
    pub fetch_failures: u64,
    /// The newest commit fetched, if it was refused: the one in force stays.
    pub refused: Option<Refused>,
    pub refusals: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refused {
    pub commit: String,
    /// `unsigned`, `unknown_signer`, `bad_signature`, `allowed_signers`, `rollback`,
    /// `policy_error`, …
    pub reason: String,
    /// Details; for `policy_error` the findings, `file:line:col: …` relative to the repository.
    pub errors: Vec<String>,
}

/// The result of one sync round with a git remote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncReport {
    /// `taken`, `unchanged`, `refused` or `fetch_failed`.
    pub outcome: String,
    pub commit: Option<String>,
    pub detail: Vec<String>,
    pub status: ReloadStatus,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verifies, checks that it descends from the last commit taken (unless `allow_rollback`),
/// writes out and compiles commit `oid`.
fn prepare(
    remote: &Remote,
    oid: git2::Oid,
    allow_rollback: bool,
) -> Result<(Snapshot, Signer), Refused> {
    let refused = |reason: &str, errors: Vec<String>| Refused {
        commit: oid.to_string(),
        reason: reason.into(),
        errors,
    };
    let signer = remote
        .verify(oid)
        .map_err(|r| refused(r.kind, vec![r.detail]))?;
    if !allow_rollback {
        remote
            .check_descends(oid)
            .map_err(|e| refused("rollback", vec![e]))?;
    }
    let dir = remote
        .checkout(oid)
        .map_err(|e| refused("checkout", vec![e]))?;
    let git = GitState {
        commit: Some(oid.to_string()),
        dirty: false,
        source: "git".into(),
    };
    match load_snapshot_as(&dir, &git) {
        Ok((_, snap)) => Ok((snap, signer)),
        Err(findings) => {
            let errors = findings
                .into_iter()
                .map(|mut f| {
                    if let Ok(rel) = f.file.strip_prefix(&dir) {
                        f.file = rel.to_path_buf();
                    }
                    f.to_string()
                })
                .collect();
            let _ = std::fs::remove_dir_all(&dir);
            Err(refused("policy_error", errors))
        }
    }
}

impl PolicyStore {
    pub fn open(dir: &Path) -> Result<Self, Vec<Finding>> {
        let (_, snap) = load_snapshot(dir)?;
        let store = Self {
            dir: dir.into(),
            source: Source::Dir,
            syncing: Mutex::new(()),
            current: ArcSwap::from_pointee(snap),
            status: Mutex::new(ReloadStatus::default()),
            listeners: Mutex::new(Vec::new()),
            refusals: Mutex::default(),
        };
        store.record_success();
        Ok(store)
    }

    /// Fetches the remote and starts on its commit; if the remote cannot be fetched or its
    /// commit is refused, on the last commit an earlier run took (checked again). With
    /// neither, the start fails with the reasons.
    pub fn open_git(remote: Remote) -> Result<Self, Vec<String>> {
        let mut git = GitStatus {
            url: super::remote::redact(&remote.cfg.url),
            git_ref: remote.cfg.git_ref.clone(),
            poll_s: remote.cfg.poll.as_secs(),
            last_fetch_unix: now_unix(),
            ..GitStatus::default()
        };
        let mut why = Vec::new();
        let mut taken = None;
        match remote.fetch() {
            Ok(oid) => {
                git.fetched = Some(oid.to_string());
                match prepare(&remote, oid, false) {
                    Ok(t) => taken = Some((oid, t)),
                    Err(r) => {
                        why.push(format!(
                            "commit {} refused: {}: {}",
                            r.commit,
                            r.reason,
                            r.errors.join("; ")
                        ));
                        git.refusals += 1;
                        git.refused = Some(r);
                    }
                }
            }
            Err(e) => {
                why.push(e.clone());
                git.fetch_failures += 1;
                git.fetch_error = Some(e);
            }
        }
        if taken.is_none()
            && let Some(oid) = remote.last_good()
        {
            match prepare(&remote, oid, false) {
                Ok(t) => {
                    warn!(commit = %oid, "policy: starting on the last commit taken before: {}", why.join("; "));
                    taken = Some((oid, t));
                }
                Err(r) => why.push(format!(
                    "last good commit {} refused: {}: {}",
                    r.commit,
                    r.reason,
                    r.errors.join("; ")
                )),
            }
        }
        let Some((oid, (snap, signer))) = taken else {
            for w in &why {
                warn!("policy from git refused: {w}");
            }
            return Err(why);
        };
        let _ = remote.mark_good(oid);
        remote.prune(Some(oid));
        git.signer = Some(format!("{} {}", signer.principal, signer.fingerprint));
        info!(commit = %oid, signer = %signer.principal, key = %signer.fingerprint, "policy taken from git");
        let store = Self {
            dir: super::remote::redact(&remote.cfg.url).into(),
            source: Source::Git(Box::new(remote)),
            syncing: Mutex::new(()),
            current: ArcSwap::from_pointee(snap),
            status: Mutex::new(ReloadStatus::default()),
            listeners: Mutex::new(Vec::new()),
            refusals: Mutex::default(),
        };
        store.record_success();
        {
            let mut st = store.status.locked();
            if let Some(r) = &git.refused {
                st.last_error = Some(r.errors.clone());
                st.failed_reloads += 1;
                store
                    .refusals
                    .locked()
                    .early
                    .push((r.clone(), Some(oid.to_string())));
            }
            st.git = Some(git);
        }
        Ok(store)
    }

    /// One round with the git remote: fetch, and take the commit if it is new, signed by an
    /// allowed signer and compiles. A commit refused before is checked again only when
    /// `retry_refused` (by hand: `allowed_signers` may have changed); the poller leaves it be
    /// until the ref moves. A commit that does not descend from the last one taken is refused
    /// (`rollback`) unless `allow_rollback` (by hand only). `None` for a directory source.
    pub fn sync(&self, retry_refused: bool, allow_rollback: bool) -> Option<SyncReport> {
        let Source::Git(remote) = &self.source else {
            return None;
        };
        let _one = self.syncing.locked();
        let report = |outcome: &str, commit: Option<String>, detail: Vec<String>| SyncReport {
            outcome: outcome.into(),
            commit,
            detail,
            status: self.status(),
        };
        let fetched = remote.fetch();
        let oid = {
            let mut st = self.status.locked();
            let git = st.git.as_mut()?;
            git.last_fetch_unix = now_unix();
            match fetched {
                Ok(oid) => {
                    git.fetch_error = None;
                    git.fetched = Some(oid.to_string());
                    oid
                }
                Err(e) => {
                    git.fetch_failures += 1;
                    git.fetch_error = Some(e.clone());
                    drop(st);
                    warn!("policy fetch failed (retrying with backoff): {e}");
                    return Some(report("fetch_failed", None, vec![e]));
                }
            }
        };
        let commit = oid.to_string();
        let current = self
            .snapshot()
            .version
            .commit
            .as_deref()
            .map(str::to_string);
        let already_refused = self
            .status()
            .git
            .and_then(|g| g.refused)
            .filter(|r| r.commit == commit && !retry_refused && !allow_rollback);
        if current.as_deref() == Some(commit.as_str()) {
            return Some(report("unchanged", Some(commit), Vec::new()));
        }
        if let Some(r) = already_refused {
            let mut detail = vec![r.reason.clone()];
            detail.extend(r.errors);
            return Some(report("refused", Some(commit), detail));
        }
        match prepare(remote, oid, allow_rollback) {
            Ok((snap, signer)) => {
                let snap = Arc::new(snap);
                self.current.store(snap.clone());
                for f in self.listeners.locked().iter() {
                    f(&snap);
                }
                let _ = remote.mark_good(oid);
                remote.prune(Some(oid));
                let git = self.status().git.map(|mut g| {
                    g.refused = None;
                    g.signer = Some(format!("{} {}", signer.principal, signer.fingerprint));
                    g
                });
                self.record_success();
                self.status.locked().git = git;
                let s = self.status();
                info!(
                    commit = %commit,
                    signer = %signer.principal,
                    key = %signer.fingerprint,
                    rules = s.rules,
                    "policy taken from git"
                );
                Some(report("taken", Some(commit), Vec::new()))
            }
            Err(r) => {
                warn!(
                    commit = %r.commit,
                    reason = %r.reason,
                    "policy commit refused, the previous one stays in force: {}",
                    r.errors.join("; ")
                );
                let mut detail = vec![r.reason.clone()];
                detail.extend(r.errors.iter().cloned());
                {
                    let mut st = self.status.locked();
                    st.failed_reloads += 1;
                    st.last_error = Some(detail.clone());
                    if let Some(g) = st.git.as_mut() {
                        g.refusals += 1;
                        g.refused = Some(r.clone());
                    }
                }
                self.refused(r, current);
                Some(report("refused", Some(commit), detail))
            }
        }
    }

    /// Tells the refusal listeners, or keeps the refusal for the first one to come.
    fn refused(&self, r: Refused, in_force: Option<String>) {
        let mut l = self.refusals.locked();
        if l.listeners.is_empty() {
            l.early.push((r, in_force));
        } else {
            for f in &l.listeners {
                f(&r, in_force.as_deref());
            }
        }
    }

    /// Calls `f` with each commit refused so far (since the start) and each one refused
    /// later, with the commit that stays in force: the call log records them.
    pub fn on_refusal(&self, f: impl Fn(&Refused, Option<&str>) + Send + Sync + 'static) {
        let mut l = self.refusals.locked();
        for (r, in_force) in std::mem::take(&mut l.early) {
            f(&r, in_force.as_deref());
        }
        l.listeners.push(Box::new(f));
    }

    /// Calls `f` with the snapshot in force now and with each one a reload puts in force:
    /// for state that lives beside the policy (e.g. identity providers' keys).
    pub fn on_change(&self, f: impl Fn(&Arc<Snapshot>) + Send + Sync + 'static) {
        f(&self.snapshot());
        self.listeners.locked().push(Box::new(f));
    }

    /// The snapshot to decide with; cheap, lock-free.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Reloads the directory (for a git remote: one [`sync`](Self::sync) round, its outcome
    /// in the status).
    pub fn reload(&self) -> Result<(), Vec<Finding>> {
        if self.sync(true, false).is_some() {
            return Ok(());
        }
        match load_snapshot(&self.dir) {
            Ok((_, snap)) => {
                let snap = Arc::new(snap);
                self.current.store(snap.clone());
                for f in self.listeners.locked().iter() {
                    f(&snap);
                }
                self.record_success();
                let s = self.status();
                info!(
                    commit = s.commit.as_deref().unwrap_or("-"),
                    dirty = s.dirty,
                    rules = s.rules,
                    "policy reloaded"
                );
                Ok(())
            }
            Err(findings) => {
                let mut st = self.status.locked();
                st.failed_reloads += 1;
                st.last_error = Some(findings.iter().map(ToString::to_string).collect());
                for f in &findings {
                    warn!("policy rejected, the previous one stays in force: {f}");
                }
                Err(findings)
            }
        }
    }

    fn record_success(&self) {
        let snap = self.snapshot();
        let mut st = self.status.locked();
        *st = ReloadStatus {
            dir: self.dir.display().to_string(),
            commit: snap.version.commit.as_deref().map(str::to_string),
            dirty: snap.version.dirty,
            source: snap.version.source.clone(),
            services: snap.services.len(),
            rules: snap.rule_count,
            loaded_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            reloads: st.reloads + 1,
            failed_reloads: st.failed_reloads,
            last_error: None,
            git: st.git.take(),
        };
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.locked().clone()
    }

    /// Fetches the git remote every `poll_s`; after a failed fetch sooner, backing off (1 s,
    /// 2 s, 4 s … up to `poll_s`). Stops once the store is dropped.
    fn poll(self: &Arc<Self>, every: Duration) -> std::io::Result<()> {
        let store = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("policy-poll".into())
            .spawn(move || {
                let mut failures: u32 = 0;
                let mut delay = every;
                loop {
                    std::thread::sleep(delay);
                    let Some(store) = store.upgrade() else { return };
                    let failed = store
                        .sync(false, false)
                        .is_some_and(|r| r.outcome == "fetch_failed");
                    failures = if failed {
                        failures.saturating_add(1)
                    } else {
                        0
                    };
                    delay = if failed {
                        Duration::from_secs(1u64 << (failures - 1).min(16)).min(every)
                    } else {
                        every
                    };
                }
            })
            .map(|_| ())
    }

    /// Keeps the policy current until the store is dropped: a directory is reloaded when its
    /// files change (debounced; the watcher returned must be kept), a git remote is polled.
    pub fn watch(self: &Arc<Self>) -> notify::Result<Option<notify::RecommendedWatcher>> {
        use notify::{RecursiveMode, Watcher};
        if let Source::Git(remote) = &self.source {
            self.poll(remote.cfg.poll).map_err(notify::Error::io)?;
            return Ok(None);
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev {
                // Reading the files is an event too (inotify reports opens): reacting to it
                // would reload forever. Git's own bookkeeping changes constantly; only the
                // policy files matter.
                if !matches!(ev.kind, notify::EventKind::Access(_))
                    && ev
                        .paths
                        .iter()
                        .any(|p| !p.components().any(|c| c.as_os_str() == ".git"))
                {
                    let _ = tx.send(());
                }
            }
        })?;
        watcher.watch(&self.dir, RecursiveMode::Recursive)?;
        let store = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("policy-watch".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Editors write in several steps: wait for the burst to end.
                    while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
                    let Some(store) = store.upgrade() else { return };
                    let _ = store.reload();
                }
            })
            .map_err(notify::Error::io)?;
        Ok(Some(watcher))
    }
}
