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

use super::{Finding, Snapshot, load_snapshot};

/// Told about each snapshot put in force.
type Listener = Box<dyn Fn(&Arc<Snapshot>) + Send + Sync>;

pub struct PolicyStore {
    dir: PathBuf,
    current: ArcSwap<Snapshot>,
    status: Mutex<ReloadStatus>,
    listeners: Mutex<Vec<Listener>>,
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
}

impl PolicyStore {
    pub fn open(dir: &Path) -> Result<Self, Vec<Finding>> {
        let (_, snap) = load_snapshot(dir)?;
        let store = Self {
            dir: dir.into(),
            current: ArcSwap::from_pointee(snap),
            status: Mutex::new(ReloadStatus::default()),
            listeners: Mutex::new(Vec::new()),
        };
        store.record_success();
        Ok(store)
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

    pub fn reload(&self) -> Result<(), Vec<Finding>> {
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
            commit: snap.version.commit.clone(),
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
        };
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.locked().clone()
    }

    /// Reloads when files under the directory change (debounced), until the store is dropped.
    pub fn watch(self: &Arc<Self>) -> notify::Result<notify::RecommendedWatcher> {
        use notify::{RecursiveMode, Watcher};
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
        Ok(watcher)
    }
}
