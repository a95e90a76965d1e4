//! Intercepted clients that refuse the gateway's certificate (the proxy tells them apart:
//! `proxy::trust::refusal`).
//!
//! Each such connection is counted per workload (its unit, else its executable) for
//! `status` and `/metrics`, recorded, and logged at most once a minute per workload, with
//! the command that fixes it.
use std::{
    collections::HashMap,
    sync::{Mutex, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::call::Workload;

/// Workloads remembered; past this, new ones are counted in the total only.
const MAX_WORKLOADS: usize = 256;
/// One log line per workload per this long.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// The reason records and `status` give start with this.
pub const REASON: &str = "the client does not trust the gateway's CA";

/// One workload that refused the CA, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Untrusting {
    /// Its systemd unit, else its executable, else its command name.
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    /// Connections it refused the gateway's certificate on.
    pub refused: u64,
    pub last_unix_ms: u64,
    /// How the last one ended (`alert unknown_ca`, `closed before Finished`, …).
    pub last: String,
    /// What makes it trust the gateway.
    pub fix: String,
}

#[derive(Debug)]
struct Entry {
    shown: Untrusting,
    logged: Option<Instant>,
}

/// The per-workload count of trust refusals.
#[derive(Debug, Default)]
pub struct Refusals {
    by_workload: Mutex<HashMap<String, Entry>>,
    total: std::sync::atomic::AtomicU64,
}

/// The command that makes `w` trust the gateway.
pub fn fix_for(w: &Workload) -> String {
    match &w.unit {
        Some(u) => format!("callgate enable --unit {u} --trust && systemctl restart {u}"),
        None => format!(
            "start {} with the environment of `callgate trust env` (e.g. eval \"$(callgate trust env)\")",
            w.exe
                .as_deref()
                .or(w.comm.as_deref())
                .unwrap_or("the client")
        ),
    }
}

impl Refusals {
    /// Counts one refusal by `w`; logs it unless this workload was logged within a minute.
    pub fn note(&self, w: &Workload, dst: &str, how: &str, now_unix_ms: u64) {
        self.total.fetch_add(1, Relaxed);
        let key = w
            .unit
            .clone()
            .or_else(|| w.exe.clone())
            .or_else(|| w.comm.clone())
            .unwrap_or_else(|| "?".into());
        let mut map = self.by_workload.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= MAX_WORKLOADS {
            debug!(workload = %key, %dst, how, "{REASON} (not listed: too many workloads)");
            return;
        }
        let e = map.entry(key.clone()).or_insert_with(|| Entry {
            shown: Untrusting {
                workload: key.clone(),
                unit: w.unit.clone(),
                exe: w.exe.clone(),
                comm: w.comm.clone(),
                uid: w.uid,
                cgroup: w.cgroup.clone(),
                refused: 0,
                last_unix_ms: 0,
                last: String::new(),
                fix: fix_for(w),
            },
            logged: None,
        });
        e.shown.refused += 1;
        e.shown.last_unix_ms = now_unix_ms;
        how.clone_into(&mut e.shown.last);
        let due = e.logged.is_none_or(|t| t.elapsed() >= LOG_EVERY);
        if due {
            e.logged = Some(Instant::now());
            warn!(
                workload = %key, pid = w.pid, exe = w.exe.as_deref().unwrap_or("?"), %dst, how,
                refused = e.shown.refused, fix = %e.shown.fix,
                "{REASON}: its TLS calls fail (logged once a minute per workload)"
            );
        } else {
            debug!(workload = %key, %dst, how, "{REASON}");
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// Every workload counted, most refusals first.
    pub fn snapshot(&self) -> Vec<Untrusting> {
        let map = self.by_workload.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<Untrusting> = map.values().map(|e| e.shown.clone()).collect();
        v.sort_by(|a, b| {
            b.refused
                .cmp(&a.refused)
                .then_with(|| a.workload.cmp(&b.workload))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(unit: Option<&str>) -> Workload {
        Workload {
            pid: Some(7),
            tid: Some(7),
            uid: Some(1000),
            gid: Some(1000),
            comm: Some("python3".into()),
            cgroup_id: Some(1),
            cgroup: Some("/system.slice/agent.service".into()),
            unit: unit.map(str::to_string),
            exe: Some("/usr/bin/python3.11".into()),
            ..Workload::default()
        }
    }

    #[test]
    fn refusals_are_counted_per_workload_with_the_fix() {
        let r = Refusals::default();
        for _ in 0..3 {
            r.note(
                &workload(Some("agent.service")),
                "10.0.0.1:443",
                "alert unknown_ca",
                5,
            );
        }
        r.note(&workload(None), "10.0.0.1:443", "closed before Finished", 6);
        assert_eq!(r.total(), 4);
        let s = r.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].workload, "agent.service");
        assert_eq!(s[0].refused, 3);
        assert_eq!(
            s[0].fix,
            "callgate enable --unit agent.service --trust && systemctl restart agent.service"
        );
        assert_eq!(s[1].workload, "/usr/bin/python3.11");
        assert!(s[1].fix.contains("/usr/bin/python3.11"), "{}", s[1].fix);
        assert_eq!(s[1].last, "closed before Finished");
    }
}
