//! The approve stage: a call whose rule says `approve` is held — the client's request stays
//! open and the upstream is not contacted — until an approver's verdict, the rule's timeout,
//! or the client giving up. Approvers answer over the control socket (`callgate approvals`);
//! each new request is announced to a webhook ([`notify`]).
//!
//! An approver may approve once, or grant a window in which the same caller's calls of the
//! same function (and, if the rule says so, the same arguments) pass without asking again.
//! Requests and grants live in the state directory: a restart loses neither. Requests held
//! when the gateway stopped come back `interrupted` (their clients are gone); grants stay in
//! force until they expire or are revoked.
//!
//! In fleet mode ([`crate::fleet`]) every held call is also in the fleet's database: every
//! host lists it and any may answer it. Verdicts are decided there (the first one wins, by a
//! conditional update) and reach the holding host at once through its notification; a call
//! is not held at all while the database is unreachable.
//!
//! Every held call, verdict and grant a host puts in the database is sealed with its key
//! ([`seal`]); with `fleet.trusted_keys` a host judges, applies and honours only what a
//! trusted host sealed, so that writing to the database is not enough to approve a call.
pub mod notify;
mod request;
pub mod seal;

pub use request::{
    ApprovalError, ApprovalSpec, ApprovalsStatus, Approver, Approvers, CallerSummary, Grant,
    GrantedCall, NewRequest, Outcome, Refused, Request, State, Verdict,
};
use request::{Scope, grant_for, may_approve};
pub use seal::{Trust, TrustStatus};

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crate::util::sync::LockExt;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::config::ApprovalLimits;
use crate::fleet::{self, Fleet, SharedApproval};
use crate::{util::fs::write_atomic_mode, util::time::now_ms};

/// Finished requests kept for `approvals list --all` and the record of restarts.
const KEEP_FINISHED: usize = 500;

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    requests: Vec<Request>,
    grants: Vec<Grant>,
}

struct Inner {
    requests: BTreeMap<String, Request>,
    waiters: HashMap<String, oneshot::Sender<()>>,
    grants: BTreeMap<String, Grant>,
    /// Announcements in the current minute, and since when.
    announced: (Option<Instant>, u32),
    /// Announcements not sent because too many came at once.
    suppressed: u64,
    /// Fleet mode: the digest of the seal of each call held here, as shared.
    seals: HashMap<String, String>,
    /// Verdicts and grants refused already (each is counted and recorded once).
    refused: HashSet<String>,
}

/// Refusals remembered at most (a database writer must not grow this host's memory).
const REFUSED_KEPT: usize = 10_000;

/// A verdict or grant read from the fleet's database and refused: its seal does not open
/// with a trusted key, or does not state what the row says.
#[derive(Debug, Clone)]
pub struct FleetRefusal {
    /// `verdict` or `grant`.
    pub kind: &'static str,
    /// The held call's id, or the grant's.
    pub id: String,
    /// The state the database gave the call (verdicts).
    pub state: Option<String>,
    pub reason: String,
}

/// Told of each refusal (the daemon records it).
pub type RefusalHook = Box<dyn Fn(&FleetRefusal) + Send + Sync>;

#[derive(Default)]
struct Refusals {
    verdicts: AtomicU64,
    grants: AtomicU64,
    requests: AtomicU64,
}

/// Announcements sent per minute at most: a workload that fills its approval slots over and
/// over must not flood the approvers' channel (the requests still show in `approvals list`).
const ANNOUNCE_PER_MINUTE: u32 = 30;
/// How long a stop asks the fleet's database about the calls held here (see
/// [`Approvals::stop`]).
const STOP_SETTLE: Duration = Duration::from_secs(3);

pub struct Approvals {
    path: PathBuf,
    limits: ApprovalLimits,
    inner: Mutex<Inner>,
    /// Bumped on every change, for live views.
    changes: watch::Sender<u64>,
    notifier: Option<notify::Notifier>,
    fleet: Option<Arc<Fleet>>,
    /// Fleet mode: this host's seal, and the keys whose seals it trusts.
    trust: Option<Trust>,
    refusals: Refusals,
    on_refusal: Option<RefusalHook>,
    /// The gateway is stopping: a held call dropped from now on was interrupted by the stop,
    /// not cancelled by its client.
    stopping: std::sync::atomic::AtomicBool,
}

impl Approvals {
    /// Says that the gateway is stopping, and ends every call held here now, rather than the
    /// stop's drain waiting out its grace for a verdict: interrupted, its client answered and
    /// its record saying so. No call is held from here on ([`Self::hold`]); one whose hold is
    /// dropped is interrupted too (see [`Hold`]'s drop).
    ///
    /// In fleet mode the database decides, as between a verdict and a timeout: a verdict it
    /// took before this host's end of the call stands, and the call is carried out (or
    /// refused) within the drain's grace. Bounded by [`STOP_SETTLE`]; what is still held then
    /// is interrupted here, and the database hears of it later.
    pub async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let held: Vec<String> = self.lock().waiters.keys().cloned().collect();
        if let Some(f) = &self.fleet {
            // All at once (the pool's connections bound how many run together).
            let settle = futures_util::future::join_all(held.iter().map(|id| async move {
                match f
                    .finish_approval(id, State::Interrupted.as_str(), None, None)
                    .await
                {
                    Ok(true) => self.interrupt_at_stop(id, false),
                    // Decided in the database first: its verdict reaches the call.
                    Ok(false) => self.settle(id).await,
                    Err(_) => {}
                }
            }));
            let _ = tokio::time::timeout(STOP_SETTLE, settle).await;
        }
        for id in &held {
            self.interrupt_at_stop(id, self.fleet.is_some());
        }
    }

    /// Ends held call `id` as interrupted by the stop, unless it has ended already; `tell`
    /// sends that to the fleet's database (in the background: it catches up otherwise).
    fn interrupt_at_stop(&self, id: &str, tell: bool) {
        let ended = self.end_waking(id, State::Interrupted);
        if ended.is_some_and(|r| r.state == State::Interrupted) {
            info!(id, "the gateway is stopping; held call interrupted");
            if let (true, Some(f)) = (tell, &self.fleet) {
                f.finish_approval_later(id.to_string(), State::Interrupted.as_str());
            }
        }
    }

    /// Whether the gateway is stopping: a held call dropped now was interrupted by the stop.
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the state at `path`; requests that were held when the gateway stopped are
    /// returned (now `interrupted`) so that their calls can be recorded.
    pub fn open(
        path: PathBuf,
        limits: ApprovalLimits,
        notifier: Option<notify::Notifier>,
    ) -> Result<(Self, Vec<Request>), ApprovalError> {
        let saved: Saved = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| ApprovalError::State {
                path: path.display().to_string(),
                reason: format!("not readable state ({e}); move it away to start afresh"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Saved::default(),
            Err(e) => {
                return Err(ApprovalError::State {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        let mut interrupted = Vec::new();
        let mut requests = BTreeMap::new();
        for mut r in saved.requests {
            if r.state == State::Pending {
                r.state = State::Interrupted;
                interrupted.push(r.clone());
            }
            requests.insert(r.id.clone(), r);
        }
        let now = now_ms();
        let grants = saved
            .grants
            .into_iter()
            .filter(|g| g.live(now))
            .map(|mut g| {
                g.deadline = Some(Instant::now() + Duration::from_millis(g.expires_at_ms - now));
                (g.id.clone(), g)
            })
            .collect();
        let a = Self {
            path,
            limits,
            inner: Mutex::new(Inner {
                requests,
                waiters: HashMap::new(),
                grants,
                announced: (None, 0),
                suppressed: 0,
                seals: HashMap::new(),
                refused: HashSet::new(),
            }),
            changes: watch::channel(0).0,
            notifier,
            fleet: None,
            trust: None,
            refusals: Refusals::default(),
            on_refusal: None,
            stopping: Default::default(),
        };
        if !interrupted.is_empty() {
            a.save(&a.lock());
        }
        Ok((a, interrupted))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// Writes the state; a failure is logged, the state in memory stays authoritative.
    fn save(&self, inner: &Inner) {
        let saved = Saved {
            requests: inner.requests.values().cloned().collect(),
            grants: inner.grants.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).unwrap_or_default();
        if let Err(e) = write_atomic_mode(&self.path, &bytes, 0o600) {
            warn!(path = %self.path.display(), error = %e, "could not save approval state");
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// A live grant covering this call, held by `rule` of the policy at `policy_commit`, if
    /// any (its use is counted).
    pub fn granted(&self, call: GrantedCall<'_>) -> Option<Grant> {
        let key = CallerSummary::of(call.caller).key();
        let now = now_ms();
        let mut inner = self.lock();
        let g = inner.grants.values_mut().find(|g| {
            g.live(now)
                && g.caller == key
                && g.service == call.service
                && g.function == call.function
                && !g.rule.is_empty()
                && g.rule == call.rule
                && g.policy_commit.as_deref() == call.policy_commit
                && g.args_digest
                    .as_deref()
                    .is_none_or(|d| Some(d) == call.args_digest)
        })?;
        g.uses += 1;
        Some(g.clone())
    }

    /// Holds a call: the returned [`Hold`] resolves on a verdict. Refused at once (with why)
    /// when too many are waiting, or in fleet mode when the fleet's database is unreachable
    /// (a call no other host could see or answer is not held).
    pub async fn hold(self: &Arc<Self>, new: NewRequest<'_>) -> Result<Hold, Refused> {
        if let Some(f) = &self.fleet {
            if !f.connected() {
                return Err(Refused::Unavailable(unavailable(f, None)));
            }
        }
        let caller = CallerSummary::of(new.caller);
        let key = caller.key();
        let now = now_ms();
        let (tx, rx) = oneshot::channel();
        let (request, announce) = {
            let mut inner = self.lock();
            // Read under the lock [`Self::stop`] takes to end the held calls: a call is
            // either held before the stop, and ended by it, or refused here.
            if self.stopping() {
                return Err(Refused::Unavailable(
                    "the gateway is stopping: no call is held for approval now; send it again once the gateway is back".into(),
                ));
            }
            let pending: Vec<&Request> = inner
                .requests
                .values()
                .filter(|r| r.state == State::Pending)
                .collect();
            if pending.len() >= self.limits.max_pending {
                return Err(Refused::Full(format!(
                    "{} approvals are already pending, the most this gateway holds",
                    pending.len()
                )));
            }
            let slot = caller.slot();
            let mine = pending.iter().filter(|r| r.caller.slot() == slot).count();
            if mine >= self.limits.max_pending_per_caller {
                return Err(Refused::Full(format!(
                    "this caller already has {mine} calls waiting for approval"
                )));
            }
            let r = Request {
                id: uuid::Uuid::now_v7().to_string(),
                state: State::Pending,
                service: new.service.into(),
                function: new.function.into(),
                args: new.args,
                caller,
                rule: new.rule.into(),
                policy_commit: new.policy_commit.clone(),
                approvers: Approvers {
                    groups: new.spec.groups.clone(),
                    subjects: new.spec.subjects.clone(),
                },
                max_grant_s: new.spec.grant.map(|g| g.as_secs()),
                requested_at_ms: now,
                expires_at_ms: now + new.spec.timeout.as_millis() as u64,
                verdict: None,
                session: new.session.into(),
                destination: new.destination,
                host: self.fleet.as_ref().map(|f| f.host().to_string()),
                scope: Scope {
                    caller: key,
                    service: new.service.into(),
                    function: new.function.into(),
                    args: new.spec.grant_same_args.then_some(new.args_digest),
                    rule: new.rule.into(),
                    policy: new.policy_commit.clone(),
                },
            };
            inner.requests.insert(r.id.clone(), r.clone());
            inner.waiters.insert(r.id.clone(), tx);
            trim(&mut inner);
            self.save(&inner);
            (r, announce_now(&mut inner))
        };
        let mut hold = Hold {
            approvals: self.clone(),
            id: request.id.clone(),
            timeout: new.spec.timeout,
            rx: Some(rx),
            done: false,
        };
        if let Some(f) = &self.fleet {
            // Shared before anyone is told: a verdict may come from any host from now on.
            let row = self.sealed_request(&request);
            if let Err(e) = f
                .insert_approval(&request.id, &row, request.expires_at_ms)
                .await
            {
                hold.done = true;
                self.forget(&request.id);
                return Err(Refused::Unavailable(unavailable(f, Some(e))));
            }
            // The stop may have ended it while the row was on its way: its own end, sent
            // then, may have reached the database first and found no row. Said again now
            // that the row is there, and not announced (no approver is to see it).
            if self
                .get(&request.id)
                .is_some_and(|r| r.state != State::Pending)
            {
                if let Err(e) = f
                    .finish_approval(&request.id, State::Interrupted.as_str(), None, None)
                    .await
                {
                    debug!(error = %e, id = %request.id, "a held call's end not told to the fleet (it catches up)");
                }
                return Ok(hold);
            }
        }
        info!(
            id = %request.id, service = %request.service, function = %request.function,
            caller = %request.caller.describe(), rule = %request.rule,
            "call held for approval"
        );
        // Not announced once the stop ends it: no approver is to see it.
        let announce = announce && !self.stopping();
        match (&self.notifier, announce) {
            (Some(n), true) => n.announce(&request),
            (Some(_), false) => {
                debug!(id = %request.id, "announcement suppressed: {ANNOUNCE_PER_MINUTE} a minute at most");
            }
            (None, _) => {}
        }
        Ok(hold)
    }

    /// Announces something other than a held call to the webhook (an MCP tool that changed
    /// since it was pinned, or a new unpinned one: see `crate::mcp::pins`), within the same
    /// per-minute budget as approval requests. Without a webhook, nothing is sent.
    pub fn announce_event(&self, event: Json) {
        let Some(n) = &self.notifier else { return };
        if announce_now(&mut self.lock()) {
            n.event(event);
        } else {
            debug!("event announcement suppressed: {ANNOUNCE_PER_MINUTE} a minute at most");
        }
    }

    /// An approver's answer to request `id`. In fleet mode the request may be held by any
    /// host; the verdict is decided in the database (the first one there wins) and reaches
    /// the holding host through its notification.
    pub async fn answer(
        &self,
        id: &str,
        approve: bool,
        approver: &Approver,
        grant: Option<Duration>,
        comment: Option<String>,
    ) -> Result<Request, String> {
        let Some(f) = &self.fleet else {
            let r = self
                .get(id)
                .ok_or_else(|| format!("no approval request {id}"))?;
            let (verdict, window) = judge(&r, approve, approver, grant, comment, None)?;
            return self.apply(id, verdict, window);
        };
        let (r, request_digest) = match self.get(id) {
            Some(r) => {
                let d = self.lock().seals.get(id).cloned().unwrap_or_default();
                (r, d)
            }
            None => match f.approval(id).await.map_err(|e| e.to_string())? {
                Some(row) => self.open_shared(id, row)?,
                None => return Err(format!("no approval request {id}")),
            },
        };
        let (verdict, window) = judge(&r, approve, approver, grant, comment, Some(f.host()))?;
        if self.stopping() && r.host.as_deref() == Some(f.host()) {
            return Err(interrupted_by_the_stop(id));
        }
        let state = if approve {
            State::Approved
        } else {
            State::Denied
        };
        let grant_ms = window.map(|w| w.as_millis() as i64);
        let shared = self.sealed_verdict(id, state, grant_ms, request_digest, &verdict);
        let won = f
            .finish_approval(id, state.as_str(), Some(&shared), grant_ms)
            .await
            .map_err(|e| format!("{e}: no verdict was given"))?;
        if !won {
            let now = match f.approval(id).await {
                Ok(Some(row)) => row.state,
                _ => "gone".into(),
            };
            return Err(format!("request {id} is already {now}"));
        }
        info!(id, approved = approve, by = %approver.name, host = ?r.host, "approval answered in the fleet");
        // The grant holds on every host: a job that moves is not asked again.
        if let Some(g) = grant_for(&r, &verdict, window) {
            let shared = self.sealed_grant(&g);
            if let Err(e) = f.put_grant(&g.id, &shared, g.expires_at_ms).await {
                warn!(id = %g.id, error = %e, "the grant holds on the holding host only");
            }
        }
        if r.host.as_deref() == Some(f.host()) {
            // Held here: the client is woken now; the notification finds it answered.
            if let Ok(r) = self.apply(id, verdict.clone(), window) {
                return Ok(r);
            }
        }
        Ok(Request {
            state,
            verdict: Some(verdict),
            ..r
        })
    }

    /// Gives a verdict to a request held here that is still pending; wakes its client.
    fn apply(
        &self,
        id: &str,
        verdict: Verdict,
        window: Option<Duration>,
    ) -> Result<Request, String> {
        let mut inner = self.lock();
        let r = inner
            .requests
            .get(id)
            .ok_or_else(|| format!("no approval request {id}"))?;
        if r.state != State::Pending {
            return Err(format!("request {id} is already {}", r.state.as_str()));
        }
        if self.stopping() && self.fleet.is_none() {
            // Its call is being cut by the stop and recorded as interrupted: a verdict kept
            // now would say approved (or denied) of a call that was never carried out. (In
            // fleet mode the database decided already: see [`Self::stop`].)
            return Err(interrupted_by_the_stop(id));
        }
        if let Some(g) = grant_for(r, &verdict, window) {
            inner.grants.insert(g.id.clone(), g);
        }
        let (approved, by) = (verdict.approved, verdict.by.clone());
        let r = inner.requests.get_mut(id).expect("checked above");
        r.state = if approved {
            State::Approved
        } else {
            State::Denied
        };
        r.verdict = Some(verdict);
        let r = r.clone();
        if let Some(w) = inner.waiters.remove(id) {
            let _ = w.send(());
        }
        self.save(&inner);
        info!(id, approved, by = %by, "approval answered");
        Ok(r)
    }

    /// Takes back a request that was never held (the fleet's database refused it).
    fn forget(&self, id: &str) {
        let mut inner = self.lock();
        inner.waiters.remove(id);
        inner.requests.remove(id);
        self.save(&inner);
    }

    /// Every host's held calls in fleet mode (this host's alone while the database is
    /// unreachable); this host's otherwise. Newest first.
    pub async fn list_fleet(&self, all: bool) -> Vec<Request> {
        if let Some(f) = &self.fleet {
            match f.approvals(all).await {
                Ok(rows) => {
                    return rows
                        .into_iter()
                        .filter_map(|row| from_shared(row).ok())
                        .collect();
                }
                Err(e) => debug!(error = %e, "listing this host's held calls only"),
            }
        }
        self.list(all)
    }

    /// Request `id`, held here or (fleet mode) on another host.
    pub async fn get_fleet(&self, id: &str) -> Option<Request> {
        if let Some(r) = self.get(id) {
            return Some(r);
        }
        let f = self.fleet.as_ref()?;
        from_shared(f.approval(id).await.ok()??).ok()
    }

    /// Fleet mode: shares held calls through `fleet`, sealed and checked with `trust` (set
    /// before the gateway serves).
    pub fn with_fleet(mut self, fleet: Arc<Fleet>, trust: Trust) -> Self {
        self.fleet = Some(fleet);
        self.trust = Some(trust);
        self
    }

    /// Fleet mode: `hook` is told of each verdict or grant refused (to record it).
    pub fn on_refusal(mut self, hook: RefusalHook) -> Self {
        self.on_refusal = Some(hook);
        self
    }

    /// A held call's row for the database, sealed; the seal's digest is kept to check the
    /// verdicts on it with.
    fn sealed_request(&self, r: &Request) -> Json {
        let row = serde_json::to_value(r).unwrap_or_default();
        let Some(t) = &self.trust else { return row };
        let (row, digest) = t.seal_request(&r.id, &row);
        self.lock().seals.insert(r.id.clone(), digest);
        row
    }

    fn sealed_verdict(
        &self,
        id: &str,
        state: State,
        grant_ms: Option<i64>,
        request_digest: String,
        verdict: &Verdict,
    ) -> Json {
        let json = serde_json::to_value(verdict).unwrap_or_default();
        let Some(t) = &self.trust else { return json };
        t.seal_verdict(&seal::SealedVerdict {
            id: id.into(),
            state: state.as_str().into(),
            grant_ms,
            request_digest,
            verdict: json,
        })
    }

    fn sealed_grant(&self, g: &Grant) -> Json {
        let json = serde_json::to_value(g).unwrap_or_default();
        match &self.trust {
            Some(t) => t.seal_grant(&g.id, g.expires_at_ms, &json),
            None => json,
        }
    }

    /// A call held on another host, as an approver may judge it: with trusted keys, as its
    /// host sealed it (the row must say the same); and the digest of its seal.
    fn open_shared(&self, id: &str, row: SharedApproval) -> Result<(Request, String), String> {
        let Some(t) = &self.trust else {
            return Ok((from_shared(row)?, String::new()));
        };
        let opened = t
            .open_request(id, &row.request)
            .and_then(|(sealed, digest)| {
                let host = sealed.get("host").and_then(Json::as_str);
                if t.enforced() && host != Some(row.host.as_str()) {
                    return Err(format!(
                        "its seal says it is held on {}, the database on {}",
                        host.unwrap_or("no host"),
                        row.host
                    ));
                }
                Ok((sealed, digest))
            });
        match opened {
            Ok((request, digest)) => Ok((from_shared(SharedApproval { request, ..row })?, digest)),
            Err(why) => {
                self.refusals.requests.fetch_add(1, Relaxed);
                warn!(id, reason = %why, "a held call in the fleet database is not judged: its seal does not hold");
                Err(format!(
                    "request {id} is not judged: {why} (the fleet database's copy is not what a \
                     trusted host sealed; it may have been altered there)"
                ))
            }
        }
    }

    /// Counts, logs and (once per id) tells the hook of a verdict or grant refused.
    fn refuse(&self, refusal: FleetRefusal) {
        let first = {
            let mut inner = self.lock();
            if inner.refused.len() >= REFUSED_KEPT {
                inner.refused.clear();
            }
            inner
                .refused
                .insert(format!("{} {}", refusal.kind, refusal.id))
        };
        if !first {
            return;
        }
        match refusal.kind {
            "grant" => self.refusals.grants.fetch_add(1, Relaxed),
            _ => self.refusals.verdicts.fetch_add(1, Relaxed),
        };
        warn!(
            kind = refusal.kind, id = %refusal.id, state = ?refusal.state, reason = %refusal.reason,
            "refused a {} from the fleet database: not sealed by a trusted host", refusal.kind
        );
        if let Some(hook) = &self.on_refusal {
            hook(&refusal);
        }
    }

    /// Fleet mode: hears of verdicts given on other hosts (and of every change, for live
    /// pages) until `stop`; after each (re)connection, catches up on what was missed.
    pub fn start_fleet(
        self: &Arc<Self>,
        mut stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let f = self.fleet.clone()?;
        let mut events = f.subscribe();
        let me = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            // Whatever was held here when the gateway last stopped, the fleet hears of now.
            if let Some(a) = me.upgrade() {
                a.catch_up().await;
            }
            loop {
                let event = tokio::select! {
                    _ = stop.changed() => return,
                    e = events.recv() => e,
                };
                let Some(a) = me.upgrade() else { return };
                match event {
                    Ok(fleet::Event::Approval {
                        host,
                        id,
                        state,
                        verdict,
                    }) => {
                        a.changes.send_modify(|n| *n += 1);
                        let pending_here = a.get(&id).is_some_and(|r| r.state == State::Pending);
                        if host != f.host() || state == "pending" || !pending_here {
                            continue;
                        }
                        match verdict {
                            // Carried by the notification: no need to read the row.
                            Some(v) if v.get("verdict").is_some_and(|v| !v.is_null()) => {
                                let row = SharedApproval {
                                    host,
                                    state,
                                    request: Json::Null,
                                    verdict: v.get("verdict").cloned(),
                                    grant_ms: v.get("grant_ms").and_then(Json::as_i64),
                                };
                                a.settle_from(&id, &row);
                            }
                            _ => a.settle(&id).await,
                        }
                    }
                    Ok(fleet::Event::Grant { id, revoked }) => {
                        a.changes.send_modify(|n| *n += 1);
                        if revoked {
                            if a.lock().grants.remove(&id).is_some() {
                                info!(id, "grant revoked in the fleet");
                            }
                        } else if !a.lock().grants.contains_key(&id) {
                            if let Ok(Some(g)) = f.grant(&id).await {
                                a.adopt_grants(vec![g], false);
                            }
                        }
                    }
                    Ok(fleet::Event::Connected)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        a.catch_up().await
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }))
    }

    /// Grants from the fleet's database, made to hold here; with `all`, they are every grant
    /// in force (grants not among them were revoked meanwhile).
    fn adopt_grants(&self, shared: Vec<Json>, all: bool) {
        let now = now_ms();
        let grants: Vec<Grant> = shared
            .into_iter()
            .filter_map(|j| match &self.trust {
                None => Some(j),
                Some(t) => match t.open_grant(&j) {
                    Ok(g) => Some(g),
                    Err(reason) => {
                        let id = j.get("id").and_then(Json::as_str).unwrap_or("?");
                        self.refuse(FleetRefusal {
                            kind: "grant",
                            id: id.into(),
                            state: None,
                            reason,
                        });
                        None
                    }
                },
            })
            .filter_map(|j| serde_json::from_value::<Grant>(j).ok())
            .filter(|g| g.expires_at_ms > now)
            .map(|mut g| {
                g.deadline = Some(Instant::now() + Duration::from_millis(g.expires_at_ms - now));
                g
            })
            .collect();
        let mut inner = self.lock();
        if all {
            inner
                .grants
                .retain(|id, _| grants.iter().any(|g| &g.id == id));
        }
        for g in grants {
            inner.grants.entry(g.id.clone()).or_insert(g);
        }
        self.save(&inner);
    }

    /// Ends a grant; in fleet mode on every host.
    pub async fn revoke_fleet(&self, id: &str) -> Result<Grant, String> {
        let Some(f) = &self.fleet else {
            return self.revoke(id);
        };
        let shared = match f.grant(id).await {
            Ok(g) => g.and_then(|j| serde_json::from_value::<Grant>(j).ok()),
            Err(e) => {
                let _ = self.revoke(id);
                return Err(format!(
                    "{e}: revoked on this host only, the other hosts honour it until it is \
                     revoked again with the database reachable"
                ));
            }
        };
        let local = self.revoke(id).ok();
        f.revoke_grant(id).await.map_err(|e| {
            format!("{e}: revoked on this host only; revoke it again once the database is back")
        })?;
        local.or(shared).ok_or_else(|| format!("no grant {id}"))
    }

    /// Brings a request held here in line with the database's verdict on it.
    async fn settle(&self, id: &str) {
        let Some(f) = &self.fleet else { return };
        if let Ok(Some(row)) = f.approval(id).await {
            self.settle_from(id, &row);
        }
    }

    fn settle_from(&self, id: &str, row: &SharedApproval) {
        match row.state.as_str() {
            "pending" => {}
            "approved" | "denied" => {
                let held = self.lock().seals.get(id).cloned();
                let opened = match (&self.trust, &row.verdict) {
                    (_, None) => Err("the database has no verdict".to_string()),
                    (None, Some(v)) => Ok((seal::unsealed(v), row.grant_ms)),
                    (Some(t), Some(v)) => {
                        t.open_verdict(id, &row.state, held.as_deref(), v, row.grant_ms)
                    }
                };
                let verdict = opened.and_then(|(v, grant_ms)| {
                    let v = serde_json::from_value::<Verdict>(v)
                        .map_err(|e| format!("the verdict is not readable: {e}"))?;
                    if v.approved != (row.state == "approved") {
                        return Err(format!("the verdict does not say {}", row.state));
                    }
                    Ok((v, grant_ms))
                });
                match verdict {
                    Ok((v, grant_ms)) => {
                        let window = grant_ms.map(|ms| Duration::from_millis(ms.max(0) as u64));
                        let _ = self.apply(id, v, window);
                    }
                    Err(reason) if self.trust.as_ref().is_some_and(Trust::enforced) => {
                        self.refuse(FleetRefusal {
                            kind: "verdict",
                            id: id.into(),
                            state: Some(row.state.clone()),
                            reason,
                        })
                    }
                    Err(reason) => {
                        warn!(id, reason = %reason, "a verdict in the fleet database is not readable")
                    }
                }
            }
            other => {
                let state = state_named(other).unwrap_or(State::Interrupted);
                if self.end_waking(id, state).is_some() {
                    if state == State::Interrupted && self.stopping() {
                        // This host's own stop, whose write to the database came back here
                        // before the stop itself ended the call.
                        info!(id, "the gateway is stopping; held call interrupted");
                    } else {
                        warn!(id, state = other, "the fleet ended a call held here");
                    }
                }
            }
        }
    }

    /// After a (re)connection: verdicts given while this host was away reach their calls,
    /// and calls that ended here meanwhile (or before a restart) end in the database too.
    async fn catch_up(&self) {
        let Some(f) = &self.fleet else { return };
        let pending: Vec<String> = self.list(false).into_iter().map(|r| r.id).collect();
        // Grants: the database's set is the fleet's.
        match f.grants(now_ms()).await {
            Ok(shared) => self.adopt_grants(shared, true),
            Err(e) => debug!(error = %e, "grants not caught up"),
        }
        let rows = match f.mine(&pending).await {
            Ok(rows) => rows,
            Err(e) => {
                debug!(error = %e, "catching up with the fleet later");
                return;
            }
        };
        // Held here but unknown there (the database lost its last changes, or the call was
        // held just as the connection dropped): shared again.
        for id in pending
            .iter()
            .filter(|id| !rows.iter().any(|(r, _)| r == *id))
        {
            if let Some(r) = self.get(id).filter(|r| r.state == State::Pending) {
                let row = self.sealed_request(&r);
                if let Err(e) = f.insert_approval(id, &row, r.expires_at_ms).await {
                    debug!(id, error = %e, "a held call is not shared yet");
                }
            }
        }
        for (id, row) in rows {
            match self.get(&id) {
                Some(r) if r.state == State::Pending => self.settle_from(&id, &row),
                Some(r) if row.state == "pending" => {
                    let digest = self.lock().seals.get(&id).cloned().unwrap_or_default();
                    let verdict = r
                        .verdict
                        .as_ref()
                        .map(|v| self.sealed_verdict(&id, r.state, None, digest, v));
                    let _ = f
                        .finish_approval(&id, r.state.as_str(), verdict.as_ref(), None)
                        .await;
                }
                None if row.state == "pending" => {
                    let _ = f
                        .finish_approval(&id, State::Interrupted.as_str(), None, None)
                        .await;
                }
                _ => {}
            }
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Requests, newest first: pending ones, or (`all`) every one kept.
    pub fn list(&self, all: bool) -> Vec<Request> {
        let inner = self.lock();
        inner
            .requests
            .values()
            .rev()
            .filter(|r| all || r.state == State::Pending)
            .cloned()
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Request> {
        self.lock().requests.get(id).cloned()
    }

    /// Grants in force.
    pub fn grants(&self) -> Vec<Grant> {
        let now = now_ms();
        self.lock()
            .grants
            .values()
            .filter(|g| g.live(now))
            .cloned()
            .collect()
    }

    pub fn revoke(&self, id: &str) -> Result<Grant, String> {
        let mut inner = self.lock();
        let g = inner
            .grants
            .remove(id)
            .ok_or_else(|| format!("no grant {id}"))?;
        self.save(&inner);
        info!(id, "grant revoked");
        Ok(g)
    }

    pub fn status(&self) -> ApprovalsStatus {
        let now = now_ms();
        let inner = self.lock();
        ApprovalsStatus {
            pending: inner
                .requests
                .values()
                .filter(|r| r.state == State::Pending)
                .count(),
            grants: inner.grants.values().filter(|g| g.live(now)).count(),
            webhook: self.notifier.as_ref().map(|n| n.status()),
            announcements_suppressed: inner.suppressed,
            fleet: self.fleet.as_ref().map(|f| f.status()),
            fleet_trust: self.trust.as_ref().map(|t| TrustStatus {
                sealed: t.enforced(),
                trusted_keys: t.key_count(),
                refused_verdicts: self.refusals.verdicts.load(Relaxed),
                refused_grants: self.refusals.grants.load(Relaxed),
                refused_requests: self.refusals.requests.load(Relaxed),
            }),
        }
    }

    /// A receiver that changes whenever a request or grant does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Ends a request that is still pending (timeout, or the client went away).
    fn end(&self, id: &str, state: State) -> Option<Request> {
        self.end_with(id, state, false)
    }

    /// Ends a request that is still pending from elsewhere, waking its hold.
    fn end_waking(&self, id: &str, state: State) -> Option<Request> {
        self.end_with(id, state, true)
    }

    fn end_with(&self, id: &str, state: State, wake: bool) -> Option<Request> {
        let mut inner = self.lock();
        if wake && inner.requests.get(id)?.state != State::Pending {
            return None;
        }
        if let Some(w) = inner.waiters.remove(id) {
            if wake {
                let _ = w.send(());
            }
        }
        let r = inner.requests.get_mut(id)?;
        if r.state != State::Pending {
            return Some(r.clone());
        }
        r.state = state;
        let r = r.clone();
        self.save(&inner);
        Some(r)
    }
}

/// Checks an approver's verdict on `r` against its rule; the verdict, and the grant's window.
fn judge(
    r: &Request,
    approve: bool,
    approver: &Approver,
    grant: Option<Duration>,
    comment: Option<String>,
    host: Option<&str>,
) -> Result<(Verdict, Option<Duration>), String> {
    let id = &r.id;
    if r.state != State::Pending {
        return Err(format!("request {id} is already {}", r.state.as_str()));
    }
    if approve {
        may_approve(r, approver)?;
    } else if !approver.operator && !r.names(approver) {
        return Err(format!(
            "{} may not answer calls of rule {}",
            approver.name, r.rule
        ));
    }
    if let Some(g) = grant {
        if !approve {
            return Err("a grant comes with an approval, not a denial".into());
        }
        match r.max_grant_s {
            None => {
                return Err(format!(
                    "rule {} allows no grants: approve once, without --grant",
                    r.rule
                ));
            }
            Some(max) if g.as_secs() > max => {
                return Err(format!(
                    "rule {} allows grants of at most {}",
                    r.rule,
                    humantime::format_duration(Duration::from_secs(max))
                ));
            }
            Some(_) => {}
        }
    }
    let verdict = Verdict {
        approved: approve,
        by: approver.name.clone(),
        via: if approver.operator { "cli" } else { "web" }.into(),
        at_ms: now_ms(),
        comment,
        grant: grant.map(|_| uuid::Uuid::now_v7().to_string()),
        host: host.map(str::to_string),
    };
    Ok((verdict, grant))
}

/// Why no call can be held in fleet mode now.
fn unavailable(f: &Fleet, e: Option<fleet::FleetError>) -> String {
    let why = match e {
        Some(e) => e.to_string(),
        None => match f.status().error {
            Some(e) => format!("the fleet database is unreachable: {e}"),
            None => "the fleet database is unreachable".into(),
        },
    };
    format!("{why}; calls that need approval are refused until it is back")
}

/// A request as the fleet's database has it.
fn from_shared(row: SharedApproval) -> Result<Request, String> {
    let mut r: Request = serde_json::from_value(row.request)
        .map_err(|e| format!("a held call in the fleet database is not readable: {e}"))?;
    r.host = Some(row.host);
    r.state = state_named(&row.state).unwrap_or(State::Interrupted);
    r.verdict = row.verdict.and_then(|v| serde_json::from_value(v).ok());
    Ok(r)
}

fn state_named(name: &str) -> Option<State> {
    serde_json::from_value(Json::String(name.into())).ok()
}

/// Whether a new request may be announced now, counting it if so.
fn announce_now(inner: &mut Inner) -> bool {
    let now = Instant::now();
    let (since, count) = &mut inner.announced;
    if since.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
        *since = Some(now);
        *count = 0;
    }
    if *count >= ANNOUNCE_PER_MINUTE {
        if inner.suppressed.is_multiple_of(100) {
            warn!(
                "more than {ANNOUNCE_PER_MINUTE} approval requests a minute: announcements suppressed (see `callgate approvals list`)"
            );
        }
        inner.suppressed += 1;
        return false;
    }
    *count += 1;
    true
}

/// Drops the oldest finished requests beyond [`KEEP_FINISHED`], and expired grants.
fn trim(inner: &mut Inner) {
    let finished: Vec<String> = inner
        .requests
        .values()
        .filter(|r| r.state != State::Pending)
        .map(|r| r.id.clone())
        .collect();
    for id in finished
        .iter()
        .take(finished.len().saturating_sub(KEEP_FINISHED))
    {
        inner.requests.remove(id);
    }
    let now = now_ms();
    inner.grants.retain(|_, g| g.live(now));
}

/// Why a verdict on request `id` is refused once the gateway is stopping: its call is being
/// cut and recorded as interrupted.
fn interrupted_by_the_stop(id: &str) -> String {
    format!("the gateway is stopping: request {id} is interrupted, not answered")
}

/// A held call waiting for its verdict. Dropped before one, the request is cancelled (the
/// client went away) or, once the gateway is stopping, interrupted.
pub struct Hold {
    approvals: Arc<Approvals>,
    pub id: String,
    timeout: Duration,
    rx: Option<oneshot::Receiver<()>>,
    done: bool,
}

impl Hold {
    pub async fn outcome(mut self) -> Outcome {
        let rx = self.rx.take().expect("awaited once");
        let answered = tokio::time::timeout(self.timeout, rx).await;
        if answered.is_err() {
            if let Some(f) = self.approvals.fleet.clone() {
                // The database decides between this timeout and a verdict given meanwhile
                // on another host; without it, the timeout stands.
                let ended = f
                    .finish_approval(&self.id, State::TimedOut.as_str(), None, None)
                    .await;
                if let Ok(false) = ended {
                    self.approvals.settle(&self.id).await;
                }
            }
        }
        self.done = true;
        let a = &self.approvals;
        let ended = match answered {
            Ok(Ok(())) => a.get(&self.id),
            _ => a.end(&self.id, State::TimedOut),
        };
        match ended {
            Some(r) => match r.state {
                State::Approved => Outcome::Approved(r),
                State::Denied => Outcome::Denied(r),
                State::Interrupted | State::Cancelled => Outcome::Interrupted(r),
                State::Pending | State::TimedOut => Outcome::TimedOut(r),
            },
            None => Outcome::TimedOut(self.lost()),
        }
    }

    /// A request trimmed away meanwhile: cannot happen while pending, answered as a timeout.
    fn lost(&self) -> Request {
        Request {
            id: self.id.clone(),
            state: State::TimedOut,
            service: String::new(),
            function: String::new(),
            args: Json::Null,
            caller: CallerSummary::default(),
            rule: String::new(),
            policy_commit: None,
            approvers: Approvers::default(),
            max_grant_s: None,
            requested_at_ms: 0,
            expires_at_ms: 0,
            verdict: None,
            session: String::new(),
            destination: String::new(),
            host: None,
            scope: Scope {
                caller: String::new(),
                service: String::new(),
                function: String::new(),
                args: None,
                rule: String::new(),
                policy: None,
            },
        }
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hold({})", self.id)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let state = match self.approvals.stopping() {
            true => State::Interrupted,
            false => State::Cancelled,
        };
        let Some(r) = self.approvals.end(&self.id, state) else {
            return;
        };
        if r.state != state {
            return;
        }
        match state {
            State::Interrupted => {
                info!(id = %self.id, "the gateway is stopping; held call interrupted")
            }
            _ => info!(id = %self.id, "the client went away; approval request cancelled"),
        }
        // The fleet hears of it too, from the daemon's runtime (a data thread's ends with the
        // stop; the stop waits for it, bounded), or catches up once it is reachable again.
        if let Some(f) = &self.approvals.fleet {
            f.finish_approval_later(self.id.clone(), state.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{Caller, Workload};

    fn spec(grant: Option<u64>) -> ApprovalSpec {
        ApprovalSpec {
            groups: vec!["leads".into()],
            subjects: vec![],
            timeout: Duration::from_millis(300),
            grant: grant.map(Duration::from_secs),
            grant_same_args: false,
        }
    }

    fn caller(sub: &str) -> Caller {
        caller_as(sub, 1000, "app")
    }

    fn caller_as(sub: &str, uid: u32, cgroup: &str) -> Caller {
        Caller {
            subject: Some(sub.into()),
            authenticated: true,
            provider: Some("idp".into()),
            workload: Some(Arc::new(Workload {
                uid: Some(uid),
                cgroup: Some(cgroup.into()),
                ..Workload::default()
            })),
            ..Caller::default()
        }
    }

    /// A grant for `c`'s refund held by `rule` of the policy at `commit`.
    fn granted(
        a: &Approvals,
        c: &Caller,
        rule: &str,
        commit: Option<&str>,
        digest: &str,
    ) -> Option<Grant> {
        a.granted(GrantedCall {
            caller: c,
            service: "payments",
            function: "refund",
            rule,
            policy_commit: commit,
            args_digest: Some(digest),
        })
    }

    fn new<'a>(c: &'a Caller, s: &'a ApprovalSpec) -> NewRequest<'a> {
        NewRequest {
            service: "payments",
            function: "refund",
            args: serde_json::json!({"amount": 500}),
            args_digest: "d1".into(),
            caller: c,
            rule: "big",
            policy_commit: None,
            spec: s,
            session: "s-1",
            destination: "127.0.0.1:1".into(),
        }
    }

    fn open(dir: &std::path::Path, limits: ApprovalLimits) -> (Arc<Approvals>, Vec<Request>) {
        let (a, i) = Approvals::open(dir.join("approvals.json"), limits, None).unwrap();
        (Arc::new(a), i)
    }

    fn person(name: &str, groups: &[&str]) -> Approver {
        Approver {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            operator: false,
        }
    }

    #[tokio::test]
    async fn approve_deny_timeout_and_grants() {
        let dir = tempdir();
        let (a, _) = open(dir.path(), ApprovalLimits::default());
        let c = caller("agent");
        let s = spec(Some(3600));

        let hold = a.hold(new(&c, &s)).await.unwrap();
        let id = hold.id.clone();
        assert!(
            a.answer(&id, true, &person("agent", &["leads"]), None, None)
                .await
                .is_err()
        );
        assert!(
            a.answer(&id, true, &person("eve", &["eng"]), None, None)
                .await
                .is_err()
        );
        let too_long = Some(Duration::from_secs(7200));
        assert!(
            a.answer(&id, true, &person("lee", &["leads"]), too_long, None)
                .await
                .is_err()
        );
        let g = Some(Duration::from_secs(600));
        a.answer(&id, true, &person("lee", &["leads"]), g, Some("ok".into()))
            .await
            .unwrap();
        assert!(matches!(hold.outcome().await, Outcome::Approved(_)));
        let grant = granted(&a, &c, "big", None, "other-args").unwrap();
        assert_eq!(grant.approved_by, "lee");
        assert!(granted(&a, &caller("else"), "big", None, "d1").is_none());
        // Only the rule that held the call, of the policy it was held under.
        assert!(granted(&a, &c, "huge", None, "d1").is_none());
        assert!(granted(&a, &c, "big", Some("0badc0de"), "d1").is_none());

        let hold = a.hold(new(&c, &s)).await.unwrap();
        // Denying is answering too: only approvers the rule names may.
        assert!(
            a.answer(&hold.id, false, &person("eve", &["eng"]), None, None)
                .await
                .is_err()
        );
        a.answer(&hold.id, false, &person("lee", &["leads"]), None, None)
            .await
            .unwrap();
        assert!(matches!(hold.outcome().await, Outcome::Denied(_)));

        let hold = a.hold(new(&c, &s)).await.unwrap();
        assert!(matches!(hold.outcome().await, Outcome::TimedOut(_)));

        let hold = a.hold(new(&c, &s)).await.unwrap();
        let id = hold.id.clone();
        drop(hold);
        assert_eq!(a.get(&id).unwrap().state, State::Cancelled);

        a.revoke(&grant.id).unwrap();
        assert!(granted(&a, &c, "big", None, "d1").is_none());
    }

    /// The stop ends every held call at once, interrupted, and its hold resolves so (its
    /// client is answered); a verdict given then is refused (not `approved` of a call that
    /// was never carried out), and no call is held any more.
    #[tokio::test]
    async fn the_stop_interrupts_held_calls_and_refuses_verdicts_and_holds() {
        let dir = tempdir();
        let (a, _) = open(dir.path(), ApprovalLimits::default());
        let c = caller("agent");
        let s = spec(None);
        let hold = a.hold(new(&c, &s)).await.unwrap();
        let id = hold.id.clone();
        a.stop().await;
        assert_eq!(a.get(&id).unwrap().state, State::Interrupted);
        let refused = a
            .answer(&id, true, &person("lee", &["leads"]), None, None)
            .await
            .unwrap_err();
        assert!(refused.contains("interrupted"), "{refused}");
        assert_eq!(a.get(&id).unwrap().state, State::Interrupted);
        let outcome = tokio::time::timeout(Duration::from_secs(5), hold.outcome()).await;
        assert!(
            matches!(outcome, Ok(Outcome::Interrupted(ref r)) if r.id == id),
            "{outcome:?}"
        );
        let later = a.hold(new(&c, &s)).await;
        assert!(
            matches!(later, Err(Refused::Unavailable(ref why)) if why.contains("stopping")),
            "{later:?}"
        );
        let (_, again) = open(dir.path(), ApprovalLimits::default());
        assert!(
            again.is_empty(),
            "recorded at the stop, not again: {again:?}"
        );
    }

    #[tokio::test]
    async fn limits_and_restart() {
        let dir = tempdir();
        let limits = ApprovalLimits {
            max_pending: 3,
            max_pending_per_caller: 2,
        };
        let (a, _) = open(dir.path(), limits);
        let s = spec(Some(60));
        let (one, two) = (caller_as("one", 1000, "a"), caller_as("two", 1001, "b"));
        let h1 = a.hold(new(&one, &s)).await.unwrap();
        let h2 = a.hold(new(&one, &s)).await.unwrap();
        assert!(
            a.hold(new(&one, &s))
                .await
                .unwrap_err()
                .to_string()
                .contains("already has 2")
        );
        // Another cgroup (or token) of the same uid is the same share: a process can make
        // sub-cgroups, not uids.
        let again = caller_as("one-more", 1000, "a/sub-33");
        assert!(
            a.hold(new(&again, &s))
                .await
                .unwrap_err()
                .to_string()
                .contains("already has 2")
        );
        let h3 = a.hold(new(&two, &s)).await.unwrap();
        assert!(
            a.hold(new(&two, &s))
                .await
                .unwrap_err()
                .to_string()
                .contains("already pending")
        );
        let approved = a
            .answer(
                &h3.id,
                true,
                &person("lee", &["leads"]),
                Some(Duration::from_secs(60)),
                None,
            )
            .await
            .unwrap();
        // The gateway stops with two calls held: they come back interrupted, the grant stays.
        std::mem::forget((h1, h2));
        drop(a);
        let (a, interrupted) = open(dir.path(), limits);
        assert_eq!(interrupted.len(), 2);
        assert!(interrupted.iter().all(|r| r.state == State::Interrupted));
        assert!(a.list(false).is_empty());
        assert_eq!(a.list(true).len(), 3);
        assert!(granted(&a, &two, "big", None, "x").is_some());
        assert_eq!(a.get(&approved.id).unwrap().state, State::Approved);
    }

    /// A directory removed when the test ends (the guard dropped).
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("callgate-approve-")
            .tempdir()
            .unwrap()
    }
}
