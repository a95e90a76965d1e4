//! `callgate run`: binds everything first, then spawns the listeners and the control socket,
//! and runs until SIGINT or SIGTERM.
use std::{sync::Arc, time::Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    admin::{self, AdminInputs},
    approve::{Approvals, notify::Notifier},
    config::Config,
    identity::{Verifier, workload::Users},
    intercept::Interceptor,
    intercept::cgroup::CgroupNames,
    obligations::inject::Credentials,
    obligations::mask::MaskKey,
    policy::PolicyStore,
    proxy::ProxyInputs,
    proxy::accept::{self, Listeners},
    proxy::http::InspectionBudget,
    proxy::tls::Authority,
    proxy::upstream::pool::Upstreams,
    record::{Record, Recorder, RecorderConfig},
    telemetry::stats::Stats,
    util::outbound::Outbound,
};

/// Idle pooled upstream connections are closed after this.
const UPSTREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Intercept(#[from] crate::intercept::InterceptError),
    #[error(transparent)]
    Accept(#[from] accept::AcceptError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("policy {dir}:\n{}", .errors.join("\n"))]
    Policy { dir: String, errors: Vec<String> },
    #[error("watching the policy directory: {0}")]
    Watch(#[source] notify::Error),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    MaskKey(#[from] crate::obligations::mask::MaskError),
    #[error("records.witnesses: {0}")]
    WitnessKey(#[from] crate::record::witness::WitnessError),
    #[error("records checkpoint key: {0}")]
    CheckpointKey(#[from] crate::record::note::NoteError),
    #[error("local CA: {0}")]
    Tls(#[from] crate::proxy::tls::TlsError),
    #[error(transparent)]
    Approvals(#[from] crate::approve::ApprovalError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("admin_http: {0}")]
    AdminHttp(String),
    #[error("state directory {path}: {reason}")]
    StateDir { path: String, reason: String },
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// How long a stop waits for each of the last rounds shipping records and checkpoints to the
/// fleet database (within systemd's `TimeoutStopSec=20s`, with the drain's grace and the
/// witnesses' round).
const SHIP_FINAL: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn run(cfg: Config) -> Result<(), DaemonError> {
    run_with(cfg, || {}).await
}

/// [`run`], calling `started` once the gateway serves (the binary returns start-up memory to
/// the system there).
pub async fn run_with(cfg: Config, started_hook: impl FnOnce()) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    let started = Instant::now();
    raise_fd_limit();
    // The records, the mask key and the CA key live here: nobody else may read them.
    private_state_dir(&cfg.state_dir)?;
    // Bind before loading: a port conflict should not leave programs redirecting to a
    // listener that is someone else's. The bind guard a previous run left lets only the
    // claimant bind the port: claim it first (a running gateway keeps its claim).
    crate::intercept::claim_listener(&cfg)?;
    let listeners = Listeners::bind(cfg.listen_port)?;
    // Before anything else is opened: a control socket a live daemon answers on means that
    // daemon is running, and this one stops here (naming the socket) rather than take it.
    // The lock is held until this function returns.
    let (control, _control_lock) = admin::bind(&cfg.control_socket)?;
    // A policy that does not load stops the start: there is no last good one to fall back on.
    let policy = match (&cfg.policies, &cfg.policies_git) {
        (Some(dir), _) => Some(Arc::new(PolicyStore::open(dir).map_err(|findings| {
            DaemonError::Policy {
                dir: dir.display().to_string(),
                errors: findings.iter().map(ToString::to_string).collect(),
            }
        })?)),
        (None, Some(git)) => {
            let remote = crate::policy::remote::Remote::new(git.clone(), &cfg.state_dir);
            Some(Arc::new(PolicyStore::open_git(remote).map_err(
                |errors| DaemonError::Policy {
                    dir: format!("{} {}", git.url, git.git_ref),
                    errors,
                },
            )?))
        }
        (None, None) => None,
    };
    let _watcher = match &policy {
        Some(store) => store.watch().map_err(DaemonError::Watch)?,
        None => None,
    };
    // Recording opens before anything is accepted: a call that cannot be recorded is refused.
    let mask_key = MaskKey::load_or_create(&cfg.state_dir.join("mask.key"))?;
    let recorder = if cfg.records.enabled {
        Some(Recorder::open(
            RecorderConfig::from(&cfg.records).with_signer(&cfg.state_dir)?,
            mask_key.clone(),
        )?)
    } else {
        warn!("call recording is off (records.enabled: false)");
        None
    };
    // Each policy commit the git remote offers and the gateway refuses is a system record.
    if let (Some(store), Some(rec), Some(git)) = (&policy, &recorder, &cfg.policies_git) {
        let rec = rec.clone();
        let url = crate::policy::remote::redact(&git.url);
        store.on_refusal(move |r, in_force| {
            if let Err(e) = rec.submit(Record::policy_refused(r, in_force, &url)) {
                warn!(commit = %r.commit, error = %e, "could not record a refused policy commit");
            }
        });
    }
    let authority = match &policy {
        Some(_) => Some(Arc::new(Authority::load_or_create(&cfg.state_dir)?)),
        None => {
            warn!(
                "no policy (--policies): connections are passed through and recorded, not decided"
            );
            None
        }
    };
    // The gateway's own requests (OIDC providers, approval webhooks).
    let outbound = match &authority {
        Some(ca) => Some(Outbound::new((*ca.client_config(None)?).clone())),
        None => None,
    };
    // Callers' tokens are verified against the providers of the policy in force.
    let verifier = match (&policy, &outbound) {
        (Some(store), Some(http)) => {
            let v = Arc::new(Verifier::new(http.clone()));
            let weak = Arc::downgrade(&v);
            store.on_change(move |snap| {
                if let Some(v) = weak.upgrade() {
                    v.configure(&snap.identity);
                }
            });
            Some(v)
        }
        _ => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // The fleet's own stop comes after the drain: a host whose calls are still running beats
    // (other hosts count it alive, a fleet-wide rate stays split with it) and refills quota
    // blocks until they end.
    let (fleet_stop_tx, fleet_stop_rx) = watch::channel(false);
    // Fleet mode: a database whose schema is newer than this binary stops the start; one
    // that cannot be reached does not (held calls are refused until it is back).
    let fleet = match (&cfg.fleet, &outbound) {
        (Some(f), Some(_)) => Some(crate::fleet::Fleet::start(f.clone(), fleet_stop_rx).await?),
        (Some(_), None) => {
            warn!("fleet is ignored: without a policy no call is held for approval");
            None
        }
        (None, _) => None,
    };
    let approvals = match &outbound {
        Some(http) => Some(open_approvals(
            &cfg,
            http,
            recorder.as_ref(),
            fleet.clone(),
        )?),
        None => None,
    };
    let tracer = match (&cfg.telemetry, &outbound) {
        (Some(t), Some(http)) => {
            let tracer = crate::telemetry::trace::CallTracer::start(t, http.clone())
                .map_err(|e| DaemonError::Telemetry(e.to_string()))?;
            info!(endpoint = %t.endpoint, "exporting a trace span per call (OTLP/HTTP)");
            Some(Arc::new(tracer))
        }
        (Some(_), None) => {
            warn!("telemetry is ignored: without a policy there are no calls to trace");
            None
        }
        (None, _) => None,
    };
    let limiter = Arc::new(crate::obligations::limit::Limiter::open(Some(
        cfg.state_dir.join("quotas.json"),
    )));
    let interceptor = Arc::new(Interceptor::load(&cfg)?);
    // The trust bundle for runtimes that do not read the system store (see `trust`).
    let trust_ca = authority.as_ref().map(|a| a.ca_pem());
    for line in interceptor.restore()? {
        info!("{line}");
    }
    // The namespaces rules name by inode are held open while the policy names them, so that
    // no later namespace can take the number (see `intercept::netns_pins`).
    if let Some(store) = &policy {
        // Called at once with the policy in force, then on each change.
        let (namespaces, weak) = (
            Arc::downgrade(interceptor.namespaces()),
            Arc::downgrade(store),
        );
        // The policy in force when it runs, not the one that called: of two reloads whose
        // holds run out of order, the last one's is still the current policy's.
        store.on_change(move |_| {
            if let (Some(n), Some(store)) = (namespaces.upgrade(), weak.upgrade()) {
                hold_named_netns(&n, &store.snapshot());
            }
        });
    }
    let stats = Arc::new(Stats::with_lanes(cfg.workers));
    let addresses: Vec<String> = listeners
        .addresses()
        .iter()
        .map(ToString::to_string)
        .collect();

    let at_rest = Arc::new(crate::obligations::mask::MaskRules::all_detectors());
    let mut pins = crate::mcp::pins::PinStore::new(Some(&cfg.state_dir));
    if let Some(a) = &approvals {
        // Tool changes go to the approvals webhook, to the people who review tools: the
        // upstream's definitions, masked as a record's copy of them is.
        let (a, at_rest, key) = (a.clone(), at_rest.clone(), mask_key.clone());
        pins = pins.with_events(crate::mcp::pins::EventSink(Arc::new(move |mut e| {
            at_rest.mask_value(&key, &mut e);
            a.announce_event(e);
        })));
    }
    let pins = Arc::new(pins);
    let inputs = Arc::new(ProxyInputs {
        cfg: cfg.clone(),
        interceptor: interceptor.clone(),
        stats: stats.clone(),
        names: CgroupNames::default(),
        users: Users::default(),
        approvals: approvals.clone(),
        metrics: Arc::new(metrics()),
        limiter: limiter.clone(),
        fleet: fleet.clone(),
        tracer: tracer.clone(),
        credentials: Credentials::new(outbound.clone()),
        verifier: verifier.clone(),
        recorder: recorder.clone(),
        session_prefix: crate::proxy::accept::session_prefix(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
        policy: policy.clone(),
        authority,
        upstreams: Arc::new(
            Upstreams::new(cfg.connect_timeout, UPSTREAM_IDLE, cfg.workers)
                .with_namespaces(interceptor.namespaces().clone())
                .with_peers(interceptor.peers()),
        ),
        mask_key,
        at_rest,
        inspection: InspectionBudget::new(
            cfg.http.max_inspected_bytes,
            cfg.http.max_inspected_per_connection_bytes,
        ),
        pins: pins.clone(),
        drains: crate::proxy::drain::Drains::new(cfg.workers),
        workload_blocks: Default::default(),
        mcp_in_flight: Default::default(),
    });
    let mut tasks = Vec::new();
    if let Some(t) = approvals
        .as_ref()
        .and_then(|a| a.start_fleet(stop_rx.clone()))
    {
        tasks.push(t);
    }
    // A closed namespace's kept upstream connections go with it (they would hold it alive).
    let upstreams = Arc::downgrade(&inputs.upstreams);
    interceptor.namespaces().on_close(Box::new(move |netns| {
        if let Some(u) = upstreams.upgrade() {
            u.forget_netns(netns);
        }
    }));
    // What can still fail to start fails here, before the data path serves: once a call has
    // been served, the stop sequence below (which flushes and signs its record) must run.
    let mut signals = Signals::register()?;
    let admin_http = match &cfg.admin_http {
        Some(web) => {
            let listener = tokio::net::TcpListener::bind(web.listen)
                .await
                .map_err(|e| DaemonError::AdminHttp(format!("listening on {}: {e}", web.listen)))?;
            let login = match (&web.login, &outbound) {
                (Some(l), Some(http)) => Some(
                    admin::login::Login::new(l.clone(), &web.public_url, http.clone())
                        .map_err(|e| DaemonError::AdminHttp(e.to_string()))?,
                ),
                (Some(_), None) => {
                    warn!(
                        "admin_http.login is ignored: without a policy no call is held for approval"
                    );
                    None
                }
                (None, _) => None,
            };
            Some((web, listener, login))
        }
        None => None,
    };
    let witness_targets = match &recorder {
        Some(_) => cfg
            .records
            .witnesses
            .iter()
            .map(|w| crate::record::witness_client::Target::parse(&w.url, w.key.as_deref()))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let workers = accept::Workers::start(listeners, cfg.workers, inputs.clone(), stop_rx.clone())?;
    // Workloads in their own network namespaces: listeners there from now on.
    tasks.push(crate::intercept::netns_watch::start(
        &interceptor,
        workers.namespace_server(inputs.clone(), stop_rx.clone()),
        stop_rx.clone(),
    ));
    // Without a policy, with `direct_pass_through`: connections the kernel lets go direct.
    tasks.extend(crate::proxy::direct::start(inputs.clone(), stop_rx.clone()));
    let admin_inputs = Arc::new(AdminInputs {
        interceptor: interceptor.clone(),
        stats,
        listeners: addresses.clone(),
        policy: policy.clone(),
        recorder: recorder.clone(),
        verifier,
        approvals: approvals.clone(),
        pins,
        started,
    });
    let metrics = inputs.metrics.clone();
    if let Some((web, listener, login)) = admin_http {
        info!(listen = %web.listen, url = %web.public_url, login = login.is_some(), "admin HTTP listener (approvals page, /metrics, /healthz, /readyz)");
        let inputs = admin::web::WebInputs {
            admin: admin_inputs.clone(),
            metrics,
            login,
            public_url: web.public_url.clone(),
        };
        tasks.push(tokio::spawn(admin::web::serve(
            listener,
            inputs,
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(admin::serve(
        control,
        admin_inputs,
        stop_rx.clone(),
    )));
    info!(
        listeners = ?addresses,
        workers = cfg.workers,
        control_socket = %cfg.control_socket.display(),
        enabled = interceptor.enabled().len(),
        "callgate is running"
    );
    // SIGHUP (`systemctl reload`) also re-reads the system roots, e.g. after
    // update-ca-certificates.
    let trust_refresh = Arc::new(tokio::sync::Notify::new());
    if let Some(ca) = trust_ca {
        let paths = crate::proxy::trust::Paths::for_state_dir(&cfg.state_dir);
        tasks.push(tokio::spawn(crate::proxy::trust::keep_current(
            paths,
            ca,
            trust_refresh.clone(),
            stop_rx.clone(),
        )));
    }
    // Each new records checkpoint goes to the witnesses, off the data path.
    if recorder.is_none() && !cfg.records.witnesses.is_empty() {
        warn!("records.witnesses is ignored: call recording is off");
    }
    // They stop after the writer signed its final checkpoint, which they send on the way.
    let (witness_stop, witness_stop_rx) = watch::channel(false);
    let mut witness_tasks = Vec::new();
    if let Some(r) = &recorder
        && !witness_targets.is_empty()
    {
        let targets = witness_targets;
        let http = outbound.clone().unwrap_or_else(Outbound::with_system_roots);
        info!(witnesses = ?cfg.records.witnesses, quorum = cfg.records.witness_quorum, "sending records checkpoints to witnesses");
        witness_tasks = crate::record::witness_client::start_targets(
            r,
            &targets,
            cfg.records.witness_quorum,
            http,
            witness_stop_rx,
        );
    }
    // This host's records and signed checkpoints go to the fleet database too, in the
    // background; told to stop only once the stop's own records are written and signed, each
    // then ships what it has not yet (see the end of this function).
    let (ship_stop, ship_stop_rx) = watch::channel(false);
    let (checkpoints_stop, checkpoints_stop_rx) = watch::channel(false);
    let shipping = match (&fleet, &recorder) {
        (Some(f), Some(r)) => Some((
            crate::record::ship::start(f.clone(), r.dir().to_path_buf(), ship_stop_rx),
            crate::record::checkpoints::start(
                f.clone(),
                r.dir().to_path_buf(),
                checkpoints_stop_rx,
            ),
        )),
        _ => None,
    };
    started_hook();

    // Quota counts reach the state directory within seconds, so a restart (or a crash)
    // does not hand out a fresh window.
    tasks.push(tokio::spawn({
        let limiter = limiter.clone();
        let mut stop = stop_rx;
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = stop.changed() => break,
                }
                let l = limiter.clone();
                let _ = tokio::task::spawn_blocking(move || l.save()).await;
            }
            let _ = tokio::task::spawn_blocking(move || limiter.save()).await;
        }
    }));
    signals.wait(policy.as_ref(), &trust_refresh).await;
    info!("stopping; enabled cgroups stay redirected and fail closed until the next start");
    // Held calls end first, interrupted (or, in fleet mode, with a verdict the database took
    // first, bounded): their clients are told, and a call approved meanwhile has the whole
    // grace to run.
    if let Some(a) = &approvals {
        a.stop().await;
    }
    // No connection is accepted from here; those open finish within the grace (the drain).
    // The drain is said first: a connection accepted as the listeners close stays with the
    // thread that took it.
    inputs.drains.begin();
    let _ = stop_tx.send(true);
    let open: u64 = inputs.stats.lanes().iter().sum();
    if open > 0 {
        info!(
            open,
            grace_s = cfg.stop_grace.as_secs_f64(),
            "letting the connections in flight finish (a second SIGTERM or SIGINT cuts them now)"
        );
    }
    // A second stop signal ends the grace.
    let hurry = tokio::spawn({
        let inputs = inputs.clone();
        async move {
            signals.again().await;
            info!("a second stop signal: cutting the connections still open");
            inputs.drains.end_grace();
        }
    });
    for task in tasks {
        let _ = task.await;
    }
    let _ = tokio::task::spawn_blocking(move || workers.join()).await;
    hurry.abort();
    let _ = hurry.await;
    let _ = fleet_stop_tx.send(true);
    // Only now: until the drain ended, calls in flight still dialled their upstreams, from
    // the host (exempt by the gateway's tgid) and from the workloads' namespaces.
    interceptor.shutdown();
    interceptor.namespaces().close_all();
    // Quota counts once more, with the calls the data threads admitted while they ended.
    let _ = tokio::task::spawn_blocking(move || limiter.save()).await;
    // No call runs any more. The records first, on the host's own disk: what follows waits on
    // the network (a stalled database, the witnesses), and systemd's stop timeout may end it.
    // Connection handlers may still hold clones: flush what is queued now, so a clean stop
    // loses no record, then let the writer end with the last handle.
    drop(inputs);
    if let Some(r) = &recorder {
        match tokio::task::spawn_blocking({
            let r = r.clone();
            move || r.finish()
        })
        .await
        {
            Ok(Ok(seq)) => info!(durable_seq = seq, "records flushed and signed"),
            Ok(Err(e)) => warn!(error = %e, "could not flush records at shutdown"),
            Err(e) => warn!(error = %e, "records flush task failed"),
        }
    }
    // This host's unused blocks of fleet-wide quotas go back.
    if let Some(f) = &fleet {
        f.return_reserved().await;
    }
    if let Some(r) = recorder {
        r.close();
    }
    // The fleet's copy: the last records, then the checkpoint that signs them, bounded.
    if let Some((ship, checkpoints)) = shipping {
        let _ = ship_stop.send(true);
        let _ = tokio::time::timeout(SHIP_FINAL, ship).await;
        let _ = checkpoints_stop.send(true);
        let _ = tokio::time::timeout(SHIP_FINAL, checkpoints).await;
    }
    // The final checkpoint to the witnesses, bounded.
    let _ = witness_stop.send(true);
    let bound = crate::record::witness_client::FINAL_WAIT + std::time::Duration::from_secs(1);
    for t in witness_tasks {
        let _ = tokio::time::timeout(bound, t).await;
    }
    if let Some(t) = tracer {
        // The batch processor's thread flushes; not on a runtime worker.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    let _ = std::fs::remove_file(&cfg.control_socket);
    Ok(())
}

/// Creates the state directory 0700, or makes an existing one of ours 0700 again (as
/// `callgate install` does); one that belongs to another user is refused.
fn private_state_dir(dir: &std::path::Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fail = |reason: String| DaemonError::StateDir {
        path: dir.display().to_string(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(e.to_string()))?;
    let meta = std::fs::metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("not a directory".into()));
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(fail(format!(
            "owned by uid {}, not by this daemon's uid {me}: fix its owner (and mode 0700)",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(format!("mode {mode:o} and cannot make it 0700: {e}")))?;
        warn!(path = %dir.display(), "the state directory was mode {mode:o}; made it 0700");
    }
    Ok(())
}

/// Fleet mode: this host's seal on what it shares — its records (checkpoint) key, the one
/// the recorder signs with — and the keys of `fleet.trusted_keys`.
fn fleet_trust(cfg: &Config) -> Result<crate::approve::Trust, DaemonError> {
    let origin = RecorderConfig::from(&cfg.records).origin;
    let signer = crate::util::note::Signer::load_or_create(&cfg.state_dir, &origin)?;
    let keys = cfg.fleet.as_ref().and_then(|f| f.trusted_keys.clone());
    match &keys {
        Some(keys) if !keys.contains(&signer.verifier()) => warn!(
            key = %signer.verifier().encode(),
            "fleet.trusted_keys does not list this host's own key: the other hosts that use the same file will not trust what it shares"
        ),
        Some(keys) => info!(
            keys = keys.len(),
            "fleet: held calls, verdicts and grants are checked against the hosts' seals"
        ),
        None => info!(
            "fleet: no trusted_keys, the fleet database is trusted (seals are written, not checked)"
        ),
    }
    Ok(crate::approve::Trust::new(Arc::new(signer), keys))
}

/// The held-call registry; calls that were held when the gateway last stopped are recorded
/// now, as interrupted, so that no call goes unrecorded.
fn open_approvals(
    cfg: &Config,
    http: &Outbound,
    recorder: Option<&Recorder>,
    fleet: Option<Arc<crate::fleet::Fleet>>,
) -> Result<Arc<Approvals>, DaemonError> {
    let notifier = cfg
        .approvals
        .webhook
        .clone()
        .map(|w| Notifier::start(w, http.clone()));
    let (approvals, interrupted) = Approvals::open(
        cfg.state_dir.join("approvals.json"),
        cfg.approvals.limits,
        notifier,
    )?;
    let approvals = match fleet {
        Some(f) => {
            let trust = fleet_trust(cfg)?;
            let database = f.status().database;
            let approvals = approvals.with_fleet(f, trust);
            match recorder {
                Some(rec) => {
                    let rec = rec.clone();
                    approvals.on_refusal(Box::new(move |r| {
                        if let Err(e) = rec.submit(Record::fleet_refused(r, &database)) {
                            warn!(id = %r.id, error = %e, "could not record a refused {}", r.kind);
                        }
                    }))
                }
                None => approvals,
            }
        }
        None => approvals,
    };
    for r in interrupted {
        warn!(id = %r.id, service = %r.service, function = %r.function, "a call held for approval was interrupted by the restart");
        let Some(recorder) = recorder else { continue };
        let rec = Record::interrupted(&r);
        if let Err(e) = recorder.submit(rec) {
            warn!(error = %e, "could not record an interrupted call");
        }
    }
    Ok(Arc::new(approvals))
}

/// The signals the daemon answers, registered before it serves (a registration that fails
/// is a start that fails, with nothing served yet).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> Result<Self, DaemonError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(DaemonError::Signals)?,
        })
    }

    /// Runs until SIGTERM or SIGINT; SIGHUP reloads the policy and rewrites the trust bundle.
    async fn wait(
        &mut self,
        policy: Option<&Arc<PolicyStore>>,
        trust_refresh: &tokio::sync::Notify,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    trust_refresh.notify_one();
                    if let Some(store) = policy {
                        let store = store.clone();
                        let _ = tokio::task::spawn_blocking(move || store.reload()).await;
                    }
                }
            }
        }
    }

    /// The next SIGTERM or SIGINT (during the stop: the operator wants it over now).
    async fn again(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Each forwarded connection holds two sockets: the usual soft limit of 1024 descriptors would
/// cap the gateway at about 500 connections.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-parameter; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                info!(limit = lim.rlim_cur, "raised the open-file limit");
            }
        }
    }
}

/// The data path's metrics; with per-stage timings when the environment asks
/// ([`crate::telemetry::metrics::STAGE_TIMINGS_ENV`]`=1`, as the l7 bench's breakdown does).
fn metrics() -> crate::telemetry::metrics::Metrics {
    use crate::telemetry::metrics::{Metrics, STAGE_TIMINGS_ENV};
    if std::env::var_os(STAGE_TIMINGS_ENV).is_some_and(|v| v == "1") {
        Metrics::default().with_stage_timings()
    } else {
        Metrics::default()
    }
}

/// Holds the namespaces `snap`'s rules name and says which of them no namespace has.
fn hold_named_netns(
    n: &crate::intercept::netns::Namespaces,
    snap: &crate::policy::snapshot::Snapshot,
) {
    for inode in n.pins().hold(&snap.named_netns()) {
        warn!(
            netns = inode,
            "the policy names network namespace inode {inode}, which no process or /run/netns \
             entry has now: rules naming it match no namespace (the kernel may give that \
             number to any new one) until a reload finds it; name containers or pods instead"
        );
    }
}
