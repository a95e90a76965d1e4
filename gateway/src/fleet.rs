//! Fleet mode: the state the hosts of a fleet share, in one PostgreSQL database
//! (`fleet: { database, host }`). This module owns the connection — one per host, statements
//! prepared once, notifications (`LISTEN`) on the same connection — its health, the
//! schema's migrations ([`schema`]) and the tables' queries; the stages that share state
//! (approvals) build on it and speak their own types.
//!
//! The database is never on a call's path unless the call needs shared state: when it is
//! unreachable, what needs it fails closed (a new approval is refused) and everything local
//! goes on; the connection comes back by itself with backoff, and `status` says meanwhile.
//! Each host says it is alive every `heartbeat_s`; held calls of a host not heard from for
//! `dead_after_s` are marked `interrupted` by the others.
pub mod lease;
pub mod reserve;
pub mod schema;
pub mod tls;

use std::{
    future::poll_fn,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::{Notify, broadcast, watch};
use tokio_postgres::{AsyncMessage, Client, Row, types::ToSql};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{debug, info, warn};

use crate::{config::FleetConfig, util::sync::LockExt, util::time::now_ms};

/// The channel every change of a held call is announced on (`host id state`).
const CHANNEL: &str = "callgate_approvals";
/// The channel grants given and revoked are announced on (`granted|revoked id`).
const GRANTS: &str = "callgate_grants";
/// A statement that takes longer is treated as a lost database.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys given back in one statement (a stop gives back every key this host holds).
const GIVE_BACK_BATCH: usize = 5_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connecting, migrating and preparing, together.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Rows `list` returns at most.
const LIST_MAX: i64 = 500;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    #[error("fleet.database: {0}")]
    Config(String),
    #[error(
        "the fleet database's schema is version {found}, newer than this callgate knows \
         ({known}): upgrade callgate on this host (it will not write to tables it does not know)"
    )]
    SchemaTooNew { found: i32, known: i32 },
    #[error("the fleet database's schema: {0}")]
    Migration(String),
    #[error("the fleet database is unreachable: {0}")]
    Unavailable(String),
}

/// Why a pooled statement failed.
enum Fault {
    Db(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
}

/// What the other stages hear of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A held call changed state somewhere in the fleet.
    Approval {
        host: String,
        id: String,
        state: String,
        /// `{"verdict": …, "grant_ms": …}` when the notification carried it.
        verdict: Option<Json>,
    },
    /// A grant was given (or revoked) somewhere in the fleet.
    Grant { id: String, revoked: bool },
    /// The connection is (back) up: whatever was announced meanwhile was missed.
    Connected,
}

/// What `callgate status` shows of fleet mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetStatus {
    pub host: String,
    /// user@host:port/db, never the password.
    pub database: String,
    pub connected: bool,
    /// Why it is not, and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_since_ms: Option<u64>,
    pub schema_version: i32,
    /// Connections made since the start (1 when it never dropped).
    pub connections: u64,
    /// This host's lease on its share of fleet-wide rate limits (none before the first
    /// heartbeat reached the database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_lease: Option<lease::LeaseStatus>,
    /// TLS to the database: `off`, `encrypt` (no certificate check), `verify-ca`, `verify-full`.
    #[serde(default)]
    pub tls: String,
    /// This host's reservations on fleet-wide quotas (blocks held, counts reserved and unused).
    #[serde(default)]
    pub quota_blocks: reserve::ReserveStatus,
}

/// A held call as the database has it.
#[derive(Debug, Clone)]
pub struct SharedApproval {
    pub host: String,
    pub state: String,
    /// The request as its host holds it (the stage's own JSON).
    pub request: Json,
    pub verdict: Option<Json>,
    pub grant_ms: Option<i64>,
}

/// The session connection: `LISTEN`, migrations. Its loss is the database's loss.
struct Link {
    /// Held, not used: dropping it would end the session (and its `LISTEN`).
    _session: Client,
    generation: u64,
}

/// Opens the pool's connections on the daemon's runtime, whichever thread asks for one. A
/// connection's socket and its driver belong to the runtime that made them, and a data
/// thread's runtime (where a call's quota count asks for a connection) ends at a stop before
/// the stop's last statements (unused quota counts given back): a connection it drove would
/// be closed under them.
struct OnRuntime {
    tls: MakeRustlsConnect,
    runtime: tokio::runtime::Handle,
}

impl deadpool_postgres::Connect for OnRuntime {
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn Future<
                    Output = Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
                > + Send
                + '_,
        >,
    > {
        let (pg, tls) = (pg.clone(), self.tls.clone());
        let open = |pg: tokio_postgres::Config, tls: MakeRustlsConnect| async move {
            let (client, conn) = pg.connect(tls).await?;
            let driver = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %describe(&e), "a pooled fleet database connection ended");
                }
            });
            Ok((client, driver))
        };
        // Aborted if the pool gives up on it (its create timeout, or the asking call gone):
        // a database that accepts and then says nothing does not keep a socket per try.
        let opened = AbortOnDropHandle::new(self.runtime.spawn(open(pg.clone(), tls.clone())));
        Box::pin(async move {
            match opened.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // The daemon's runtime is ending: on the asking thread's, then.
                Err(_) => open(pg, tls).await,
            }
        })
    }
}

/// The statements, run on the pool's connections (each prepared once per connection).
mod sql {
    /// The columns of a held call.
    macro_rules! row {
        () => {
            "host, state, request, verdict, grant_ms"
        };
    }
    pub const INSERT: &str = "INSERT INTO callgate_approvals (id, host, state, request, expires_at_ms) \
         VALUES ($1, $2, 'pending', $3, $4)";
    pub const FINISH: &str = "UPDATE callgate_approvals SET state = $2, verdict = $3, grant_ms = $4, \
         updated_at = now() WHERE id = $1 AND state = 'pending'";
    pub const GET: &str = concat!("SELECT ", row!(), " FROM callgate_approvals WHERE id = $1");
    pub const LIST_PENDING: &str = concat!(
        "SELECT ",
        row!(),
        " FROM callgate_approvals WHERE state = 'pending' ORDER BY requested_at DESC LIMIT $1"
    );
    pub const LIST_ALL: &str = concat!(
        "SELECT ",
        row!(),
        " FROM callgate_approvals ORDER BY requested_at DESC LIMIT $1"
    );
    pub const MINE: &str = concat!(
        "SELECT id, ",
        row!(),
        " FROM callgate_approvals WHERE host = $1 AND (state = 'pending' OR id = ANY($2))"
    );
    /// The hosts alive: fleet-wide rate limits are split among them.
    pub const ALIVE: &str = "SELECT count(*) FROM callgate_hosts \
         WHERE seen_at > now() - make_interval(secs => $1)";
    pub const BEAT: &str = "INSERT INTO callgate_hosts (name, seen_at) VALUES ($1, now()) \
         ON CONFLICT (name) DO UPDATE SET seen_at = now()";
    /// Held calls of hosts not heard from: their clients are gone with them.
    pub const REAP: &str = "UPDATE callgate_approvals a SET state = 'interrupted', updated_at = now() \
         FROM callgate_hosts h WHERE a.state = 'pending' AND a.host = h.name \
         AND h.name <> $1 AND h.seen_at < now() - make_interval(secs => $2)";
    /// A block of `$4` counts for this host (see [`super::reserve`]), atomically per key and
    /// window: a window on the database's clock (the hosts' clocks may differ), taken only if
    /// the whole block fits (else no row comes back, nothing counted); the count after it,
    /// the window's start and the database's clock come back. `$4` = 1 counts one call.
    pub const RESERVE: &str = "INSERT INTO callgate_quotas AS q (key, window_start, window_len, count) \
         SELECT $1, (floor(extract(epoch FROM now()) / $2::bigint) * $2::bigint)::bigint, \
         $2::bigint, $4::bigint WHERE $4::bigint <= $3::bigint \
         ON CONFLICT (key, window_start) DO UPDATE SET count = q.count + $4::bigint \
         WHERE q.count + $4::bigint <= $3::bigint \
         RETURNING q.count, q.window_start, extract(epoch FROM now())::float8";
    /// Unused counts of blocks go back to the same windows' rows, many keys in one statement
    /// (a key listed twice gives back the sum). The rows are locked in key order first: two
    /// hosts giving back the same keys at once (their idle sweeps, a rolling stop) wait for
    /// each other instead of deadlocking, which PostgreSQL would end by failing one of them.
    pub const GIVE_BACK: &str = "WITH u AS (SELECT k, w, sum(n)::bigint AS n \
               FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS b(k, w, n) GROUP BY k, w), \
         locked AS (SELECT q.key, q.window_start FROM callgate_quotas q \
               JOIN u ON q.key = u.k AND q.window_start = u.w \
               ORDER BY q.key, q.window_start FOR UPDATE OF q) \
         UPDATE callgate_quotas AS q SET count = greatest(q.count - u.n, 0) FROM u, locked \
         WHERE q.key = u.k AND q.window_start = u.w \
         AND locked.key = q.key AND locked.window_start = q.window_start";
    pub const EXPIRE: &str = "DELETE FROM callgate_quotas \
         WHERE window_start + window_len < extract(epoch FROM now())::bigint";
    pub const GRANT_PUT: &str = "INSERT INTO callgate_grants (id, grant_json, expires_at_ms) \
         VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
    pub const GRANT_DEL: &str = "DELETE FROM callgate_grants WHERE id = $1";
    pub const GRANT_GET: &str = "SELECT grant_json FROM callgate_grants WHERE id = $1";
    pub const GRANTS_LIVE: &str = "SELECT grant_json FROM callgate_grants WHERE expires_at_ms > $1";
    pub const RECORDS_MAX: &str = "SELECT max(seq) FROM callgate_records WHERE host = $1";
    /// A host's last rows, highest first (backwards along the primary key).
    pub const RECORDS_LAST: &str =
        "SELECT seq FROM callgate_records WHERE host = $1 ORDER BY seq DESC LIMIT $2";
    /// One multi-row insert per batch; (host, seq) makes a batch sent twice land once.
    /// The text goes once and is kept twice: as sent (`leaf`, what the Merkle tree hashed)
    /// and as jsonb (`record`, what queries read); a record that keeps its answer beside its
    /// JSON ([`crate::record::beside`]) sends its stored text as well, as its `leaf`.
    pub const RECORDS_PUT: &str = "INSERT INTO callgate_records (host, seq, hash, at_ms, record, leaf) \
         SELECT $1, s, h, t, r::jsonb, coalesce(l, r) \
         FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[]) \
         AS u(s, h, t, r, l) \
         ON CONFLICT (host, seq) DO NOTHING";
    pub const CHECKPOINTS_MAX: &str = "SELECT size, cosigned IS NOT NULL FROM callgate_checkpoints \
         WHERE host = $1 ORDER BY size DESC LIMIT 1";
    /// A checkpoint shipped again keeps its note; a cosigned copy that came later is added.
    pub const CHECKPOINT_PUT: &str = "INSERT INTO callgate_checkpoints (host, size, root, note, cosigned) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (host, size) DO UPDATE \
         SET cosigned = coalesce(EXCLUDED.cosigned, callgate_checkpoints.cosigned)";
}

/// One record as shipped: its place in its host's log and its JSON, as the log holds it.
#[derive(Debug, Clone)]
pub struct ShippedRecord {
    pub seq: u64,
    pub hash: String,
    pub time_ms: u64,
    pub record: RawJson,
    /// The text the log holds, when it is not `record` itself: an answer kept beside the
    /// record's JSON ([`crate::record::beside`]).
    pub leaf: Option<RawJson>,
}

/// JSON text sent to the database as it is (`json`/`jsonb`/`text`), not parsed and written
/// again.
#[derive(Debug, Clone)]
pub struct RawJson(pub Vec<u8>);

impl tokio_postgres::types::ToSql for RawJson {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == tokio_postgres::types::Type::JSONB {
            // jsonb's binary format: a version byte, then the text.
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        matches!(
            *ty,
            tokio_postgres::types::Type::JSON
                | tokio_postgres::types::Type::JSONB
                | tokio_postgres::types::Type::TEXT
        )
    }

    tokio_postgres::types::to_sql_checked!();
}

/// What `records list --fleet` narrows the fleet's records to (each only when given).
#[derive(Debug, Clone, Default)]
pub struct FleetFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub service: Option<String>,
    pub function: Option<String>,
    /// The decision's action: allow, deny, approve.
    pub decision: Option<String>,
}

/// A record as the fleet's table has it (`records list --fleet`).
#[derive(Debug, Clone, Serialize)]
pub struct FleetRecord {
    pub host: String,
    pub seq: u64,
    pub hash: String,
    #[serde(flatten)]
    pub record: Json,
}

/// A signed checkpoint as the fleet's table has it (`records checkpoints --fleet`).
#[derive(Debug, Clone, Serialize)]
pub struct FleetCheckpoint {
    pub host: String,
    pub size: u64,
    /// The tree's root, base64 (as the note's third line).
    pub root: String,
    /// The signed note as the host wrote it.
    pub note: String,
    /// The same checkpoint with its witnesses' cosignatures, if any cosigned it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosigned: Option<String>,
    /// When it was shipped, Unix ms.
    pub shipped_ms: i64,
}

/// One of a host's records as `records verify --fleet` reads it: what was hashed, and
/// whether the JSON that queries read (`record`) is that text.
#[derive(Debug, Clone)]
pub struct ShippedRow {
    pub seq: u64,
    /// The chain hash the host sent (hex).
    pub hash: String,
    /// The text the host hashed (`None`: shipped before the text was kept).
    pub leaf: Option<String>,
    /// The `record` column, as JSON.
    pub record: Json,
}

#[derive(Default)]
struct Health {
    error: Option<String>,
    down_since_ms: Option<u64>,
    schema_version: i32,
}

pub struct Fleet {
    cfg: FleetConfig,
    pg: tokio_postgres::Config,
    /// The statements' connections (at most `fleet.pool_size`).
    pool: deadpool_postgres::Pool,
    tls: MakeRustlsConnect,
    verify: tls::Verify,
    database: String,
    link: ArcSwapOption<Link>,
    health: Mutex<Health>,
    connections: AtomicU64,
    beats: AtomicU64,
    events: broadcast::Sender<Event>,
    /// The connection was lost: reconnect now rather than at the next heartbeat.
    lost: Notify,
    /// This host's share of fleet-wide rate limits, renewed by each heartbeat.
    lease: lease::Lease,
    /// This host's blocks of fleet-wide quotas.
    reserves: reserve::Reserves,
    /// The daemon's runtime: what outlives a call (a refill, a give-back) runs on it, not on
    /// the data thread the call ran on, whose runtime a stop ends first.
    runtime: tokio::runtime::Handle,
    /// Those tasks and the idle sweep, which hold counts taken out of `reserves`: a stop
    /// waits for them before it gives back the rest.
    quota_tasks: TaskTracker,
}

impl Fleet {
    /// Connects and migrates the schema, then keeps the connection (and this host's
    /// heartbeat) up until `stop`. A database that cannot be reached does not stop the
    /// start (it is retried); one whose schema is newer than this binary knows does.
    pub async fn start(
        cfg: FleetConfig,
        stop: watch::Receiver<bool>,
    ) -> Result<Arc<Self>, FleetError> {
        let (mut pg, tls, verify) = tls::settings(&cfg.database, cfg.ca.as_deref())?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name(format!("callgate {}", cfg.host));
        }
        // Commits are not waited for on the database's disk, on every connection: a quota
        // count or a held call then costs a round trip, not an fsync (measured: 0.1 ms
        // against 4 ms here). A database crash may lose the last fraction of a second of
        // changes; each host's own state is the authority on its calls and is written back
        // when it reconnects (see `approve`'s catch-up), and a quota may undercount by as much.
        let options = match pg.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} -c synchronous_commit=off"),
            _ => "-c synchronous_commit=off".to_string(),
        };
        pg.options(options);
        let runtime = tokio::runtime::Handle::current();
        let manager = deadpool_postgres::Manager::from_connect(
            pg.clone(),
            OnRuntime {
                tls: tls.clone(),
                runtime: runtime.clone(),
            },
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(cfg.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(QUERY_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(QUERY_TIMEOUT))
            .build()
            .map_err(|e| FleetError::Config(e.to_string()))?;
        let fleet = Arc::new(Self {
            database: redacted(&pg),
            pool,
            pg,
            tls,
            verify,
            cfg,
            link: ArcSwapOption::empty(),
            health: Mutex::new(Health {
                down_since_ms: Some(now_ms()),
                error: Some("not connected yet".into()),
                ..Health::default()
            }),
            connections: AtomicU64::new(0),
            beats: AtomicU64::new(0),
            events: broadcast::channel(1024).0,
            lost: Notify::new(),
            lease: lease::Lease::new(),
            reserves: reserve::Reserves::new(reserve::MAX_KEYS),
            runtime,
            quota_tasks: TaskTracker::new(),
        });
        match fleet.connect_bounded().await {
            Ok(()) => {}
            Err(e @ (FleetError::SchemaTooNew { .. } | FleetError::Config(_))) => return Err(e),
            Err(e) => {
                warn!(database = %fleet.database, error = %e, "fleet database unreachable at start: new approvals are refused until it is back");
                fleet.down(None, e.to_string());
            }
        }
        fleet.quota_tasks.spawn(fleet.clone().sweep(stop.clone()));
        tokio::spawn(fleet.clone().keep(stop));
        Ok(fleet)
    }

    /// This host's name in the fleet.
    pub fn host(&self) -> &str {
        &self.cfg.host
    }

    pub fn connected(&self) -> bool {
        self.link.load().is_some()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn status(&self) -> FleetStatus {
        let h = self.health.locked();
        FleetStatus {
            host: self.cfg.host.clone(),
            database: self.database.clone(),
            connected: self.connected(),
            error: h.error.clone(),
            down_since_ms: h.down_since_ms,
            schema_version: h.schema_version,
            connections: self.connections.load(Relaxed),
            rate_lease: self.lease.status(Instant::now()),
            tls: match self.verify {
                tls::Verify::Off => "off",
                tls::Verify::Encrypt => "encrypt",
                tls::Verify::Ca => "verify-ca",
                tls::Verify::Full => "verify-full",
            }
            .into(),
            quota_blocks: self.reserves.status(),
        }
    }

    /// This host's share (1/hosts alive) of a fleet-wide rate limit, from its lease: no
    /// database round trip. Without a lease in force, why (fleet-wide limits then refuse).
    pub fn rate_share(&self) -> Result<f64, String> {
        self.lease.share_at(Instant::now()).map_err(|ago| {
            let why = self
                .health
                .locked()
                .error
                .clone()
                .unwrap_or_else(|| "not reached".into());
            match ago {
                None => format!(
                    "this host has no lease on the fleet's rate yet (the fleet database: {why})"
                ),
                Some(ago) => format!(
                    "this host's lease on the fleet's rate ran out {}s ago (the fleet database: {why})",
                    ago.as_secs()
                ),
            }
        })
    }

    /// Shares a call this host now holds.
    pub async fn insert_approval(
        &self,
        id: &str,
        request: &Json,
        expires_at_ms: u64,
    ) -> Result<(), FleetError> {
        let expires = expires_at_ms as i64;
        let host = self.host();
        self.execute(sql::INSERT, &[&id, &host, request, &expires])
            .await
            .map(drop)
    }

    /// Ends a held call that is still pending, with `state` (and the verdict): false when
    /// it was not pending any more (another verdict, or its end, came first). Every host
    /// hears of it; the holding host wakes its client.
    pub async fn finish_approval(
        &self,
        id: &str,
        state: &str,
        verdict: Option<&Json>,
        grant_ms: Option<i64>,
    ) -> Result<bool, FleetError> {
        let n = self
            .execute(sql::FINISH, &[&id, &state, &verdict, &grant_ms])
            .await?;
        Ok(n == 1)
    }

    /// [`Self::finish_approval`] in the background, on the daemon's runtime: for a held call
    /// dropped on a data thread (its client went away, or the stop), whose runtime may be
    /// ending. A stop waits for it, bounded ([`Self::return_reserved`]).
    pub fn finish_approval_later(self: &Arc<Self>, id: String, state: &'static str) {
        let me = self.clone();
        self.quota_tasks.spawn_on(
            async move {
                if let Err(e) = me.finish_approval(&id, state, None, None).await {
                    debug!(error = %e, id, state, "a held call's end not told to the fleet (it catches up)");
                }
            },
            &self.runtime,
        );
    }

    pub async fn approval(&self, id: &str) -> Result<Option<SharedApproval>, FleetError> {
        let rows = self.query(sql::GET, &[&id]).await?;
        Ok(rows.first().map(shared))
    }

    /// Held calls of every host, newest first: pending ones, or (`all`) recent ones too.
    pub async fn approvals(&self, all: bool) -> Result<Vec<SharedApproval>, FleetError> {
        let stmt = if all {
            sql::LIST_ALL
        } else {
            sql::LIST_PENDING
        };
        let rows = self.query(stmt, &[&LIST_MAX]).await?;
        Ok(rows.iter().map(shared).collect())
    }

    /// Counts a call against a fleet-wide quota of `calls` per `window_s` under `key`:
    /// false when the quota is used up (the call is then not counted). Against this host's
    /// block of the quota when it holds one ([`reserve`]), else one round trip.
    pub async fn count_quota(
        self: &Arc<Self>,
        key: &str,
        window_s: u64,
        calls: u64,
    ) -> Result<bool, FleetError> {
        let window_s = window_s.max(1);
        let mut back = Vec::new();
        // Bounded: a refill in flight is waited for at most a few times.
        let mut waits = 0;
        let k = loop {
            let hosts = self.lease.hosts();
            let take = self
                .reserves
                .spend(key, window_s, calls, hosts, Instant::now(), &mut back);
            self.give_back_later(std::mem::take(&mut back));
            match take {
                reserve::Take::Spent { refill } => {
                    if let Some(k) = refill {
                        let (me, key) = (self.clone(), key.to_string());
                        self.quota_tasks.spawn_on(
                            async move {
                                let _ = me.take_block(&key, window_s, calls, k, false).await;
                            },
                            &self.runtime,
                        );
                    }
                    return Ok(true);
                }
                reserve::Take::Fetch { k } => break k,
                reserve::Take::Wait(woken) if waits < 3 => {
                    waits += 1;
                    if tokio::time::timeout(QUERY_TIMEOUT, woken).await.is_err() {
                        // The refill stalls: this call counts by itself.
                        break 1;
                    }
                }
                // Still nothing: this call counts by itself.
                reserve::Take::Wait(_) => break 1,
            }
        };
        if self.take_block(key, window_s, calls, k, true).await? {
            return Ok(true);
        }
        if k > 1 {
            // The block did not fit: one count may still.
            return self.take_block(key, window_s, calls, 1, true).await;
        }
        Ok(false)
    }

    /// Takes a block of `k` counts of `key` from the database; `for_call`: one is the asking
    /// call's. False when it does not fit under `calls`.
    async fn take_block(
        self: &Arc<Self>,
        key: &str,
        window_s: u64,
        calls: u64,
        k: u64,
        for_call: bool,
    ) -> Result<bool, FleetError> {
        /// A call's future dropped mid-statement (its client went away) must not leave the
        /// key's block marked in flight: the others would wait for it.
        struct InFlight<'a>(Option<(&'a reserve::Reserves, &'a str)>);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                if let Some((r, key)) = self.0.take() {
                    r.not_granted(key);
                }
            }
        }
        let mut in_flight = InFlight(Some((&self.reserves, key)));
        let (len, limit, n) = (window_s as i64, calls as i64, k as i64);
        let sent = Instant::now();
        // On an error or no row, `in_flight` ends the flight as it drops.
        let rows = self.query(sql::RESERVE, &[&key, &len, &limit, &n]).await?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        in_flight.0 = None;
        let grant = reserve::Grant {
            count: row.get::<_, i64>(0).max(0) as u64,
            window_start: row.get(1),
            db_now: row.get(2),
        };
        let mut back = Vec::new();
        self.reserves.granted(
            key,
            window_s,
            calls,
            k,
            grant,
            sent,
            Instant::now(),
            for_call,
            &mut back,
        );
        self.give_back_later(back);
        Ok(true)
    }

    /// Gives unused counts back in the background (lost if the database is: the safe side).
    fn give_back_later(self: &Arc<Self>, back: Vec<reserve::GiveBack>) {
        if back.is_empty() {
            return;
        }
        let me = self.clone();
        self.quota_tasks.spawn_on(
            async move {
                me.give_back(back).await;
            },
            &self.runtime,
        );
    }

    /// Returns how many counts could not be given back (a window that has ended since takes
    /// none back, and loses none).
    async fn give_back(&self, back: Vec<reserve::GiveBack>) -> u64 {
        let mut lost = 0;
        for batch in back.chunks(GIVE_BACK_BATCH) {
            let keys: Vec<&str> = batch.iter().map(|b| b.key.as_str()).collect();
            let windows: Vec<i64> = batch.iter().map(|b| b.window_start).collect();
            let counts: Vec<i64> = batch.iter().map(|b| b.n as i64).collect();
            if let Err(e) = self
                .execute(sql::GIVE_BACK, &[&keys, &windows, &counts])
                .await
            {
                let n: u64 = batch.iter().map(|b| b.n).sum();
                debug!(error = %e, counts = n, keys = batch.len(), "unused quota counts not given back (lost for the window)");
                lost += n;
            }
        }
        lost
    }

    /// Every second: the unused counts of blocks left idle go back.
    async fn sweep(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let back = self.reserves.idle(Instant::now());
            if !back.is_empty() {
                self.give_back(back).await;
            }
        }
    }

    /// At a graceful stop, once no call runs any more: every unused count of this host's
    /// blocks goes back (bounded in time; what does not make it is lost for the window).
    /// Refills and give-backs still running finish first, and the idle sweep has ended (the
    /// stop ends it), so that no count is in flight between them and this.
    pub async fn return_reserved(self: &Arc<Self>) {
        self.quota_tasks.close();
        if tokio::time::timeout(QUERY_TIMEOUT, self.quota_tasks.wait())
            .await
            .is_err()
        {
            warn!("quota refills still running at the stop: their counts are lost for the window");
        }
        let back = self.reserves.drain();
        if back.is_empty() {
            return;
        }
        let n: u64 = back.iter().map(|b| b.n).sum();
        match tokio::time::timeout(QUERY_TIMEOUT, self.give_back(back)).await {
            Ok(0) => info!(counts = n, "unused fleet quota counts given back"),
            Ok(lost) => warn!(
                counts = n,
                lost,
                "unused fleet quota counts not all given back (the rest is lost for the window)"
            ),
            Err(_) => warn!(
                counts = n,
                "unused fleet quota counts not all given back in time"
            ),
        }
    }

    /// Shares a grant: every host honours it from its notification on.
    pub async fn put_grant(
        &self,
        id: &str,
        grant: &Json,
        expires_at_ms: u64,
    ) -> Result<(), FleetError> {
        let expires = expires_at_ms as i64;
        self.execute(sql::GRANT_PUT, &[&id, grant, &expires])
            .await
            .map(drop)
    }

    /// Ends a grant on every host; false if the database had no such grant.
    pub async fn revoke_grant(&self, id: &str) -> Result<bool, FleetError> {
        let n = self.execute(sql::GRANT_DEL, &[&id]).await?;
        Ok(n == 1)
    }

    pub async fn grant(&self, id: &str) -> Result<Option<Json>, FleetError> {
        let rows = self.query(sql::GRANT_GET, &[&id]).await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Every grant in force at wall time `now_ms`.
    pub async fn grants(&self, now_ms: u64) -> Result<Vec<Json>, FleetError> {
        let now = now_ms as i64;
        let rows = self.query(sql::GRANTS_LIVE, &[&now]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// This host's rows that are pending, or whose id is in `ids`: `(id, row)`.
    pub async fn mine(&self, ids: &[String]) -> Result<Vec<(String, SharedApproval)>, FleetError> {
        let host = self.host();
        let rows = self.query(sql::MINE, &[&host, &ids]).await?;
        Ok(rows.iter().map(|r| (r.get("id"), shared(r))).collect())
    }

    /// The highest sequence number of this host's records the database has (`None`: none).
    /// Shipping does not resume after it (a batch below it may be missing while inserts run
    /// in parallel): see [`Fleet::shipped_last`].
    pub async fn shipped_up_to(&self) -> Result<Option<u64>, FleetError> {
        let host = self.host();
        let rows = self.query(sql::RECORDS_MAX, &[&host]).await?;
        Ok(rows
            .first()
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(|s| s as u64))
    }

    /// The sequence numbers of this host's last `n` records in the database, highest first:
    /// where shipping resumes is found among them (`record::ship::resume_after`).
    pub async fn shipped_last(&self, n: usize) -> Result<Vec<u64>, FleetError> {
        let host = self.host();
        let rows = self.query(sql::RECORDS_LAST, &[&host, &(n as i64)]).await?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    /// Ships a batch of this host's records in one statement; rows the database already
    /// has (same host and sequence) are left as they are. Returns how many were new.
    pub async fn ship_records(&self, batch: &[ShippedRecord]) -> Result<u64, FleetError> {
        let host = self.host();
        let seqs: Vec<i64> = batch.iter().map(|r| r.seq as i64).collect();
        let hashes: Vec<&str> = batch.iter().map(|r| r.hash.as_str()).collect();
        let times: Vec<i64> = batch.iter().map(|r| r.time_ms as i64).collect();
        let records: Vec<&RawJson> = batch.iter().map(|r| &r.record).collect();
        let leaves: Vec<Option<&RawJson>> = batch.iter().map(|r| r.leaf.as_ref()).collect();
        self.execute(
            sql::RECORDS_PUT,
            &[&host, &seqs, &hashes, &times, &records, &leaves],
        )
        .await
    }

    /// The largest signed checkpoint of this host the database has, and whether it has its
    /// cosigned copy (`None`: none yet).
    pub async fn shipped_checkpoint(&self) -> Result<Option<(u64, bool)>, FleetError> {
        let host = self.host();
        let rows = self.query(sql::CHECKPOINTS_MAX, &[&host]).await?;
        Ok(rows
            .first()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, bool>(1))))
    }

    /// Ships one signed checkpoint of this host (again: its cosigned copy is added).
    pub async fn ship_checkpoint(
        &self,
        size: u64,
        root: &str,
        note: &str,
        cosigned: Option<&str>,
    ) -> Result<(), FleetError> {
        let host = self.host();
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        self.execute(
            sql::CHECKPOINT_PUT,
            &[&host, &size, &root, &note, &cosigned],
        )
        .await
        .map(|_| ())
    }

    /// Runs `sql` (prepared once per pooled connection) and returns its rows.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, FleetError> {
        let l = self.link()?;
        self.run(&l, async {
            let c = self.pool.get().await.map_err(Fault::Pool)?;
            let st = c.prepare_cached(sql).await.map_err(Fault::Db)?;
            c.query(&st, params).await.map_err(Fault::Db)
        })
        .await
    }

    /// Runs `sql` (prepared once per pooled connection) and returns the rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, FleetError> {
        let l = self.link()?;
        self.run(&l, async {
            let c = self.pool.get().await.map_err(Fault::Pool)?;
            let st = c.prepare_cached(sql).await.map_err(Fault::Db)?;
            c.execute(&st, params).await.map_err(Fault::Db)
        })
        .await
    }

    fn link(&self) -> Result<Arc<Link>, FleetError> {
        self.link.load_full().ok_or_else(|| {
            FleetError::Unavailable(
                self.health
                    .locked()
                    .error
                    .clone()
                    .unwrap_or_else(|| "not connected".into()),
            )
        })
    }

    /// One statement, bounded in time; a database that fails or stalls marks the session
    /// lost (it is made again by [`Fleet::keep`], and the pool's idle connections with it).
    async fn run<T>(
        &self,
        link: &Link,
        fut: impl Future<Output = Result<T, Fault>>,
    ) -> Result<T, FleetError> {
        match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fault::Db(e))) => {
                let why = describe(&e);
                if e.is_closed() || e.as_db_error().is_none() {
                    self.down(Some(link.generation), why.clone());
                }
                Err(FleetError::Unavailable(why))
            }
            Ok(Err(Fault::Pool(e))) => {
                let why = match e {
                    deadpool_postgres::PoolError::Backend(e) => describe(&e),
                    e => format!("no pooled connection: {e}"),
                };
                self.down(Some(link.generation), why.clone());
                Err(FleetError::Unavailable(why))
            }
            Err(_) => {
                let why = format!("no answer within {}s", QUERY_TIMEOUT.as_secs());
                self.down(Some(link.generation), why.clone());
                Err(FleetError::Unavailable(why))
            }
        }
    }

    /// Marks the connection (of `generation`, or whichever) lost.
    fn down(&self, generation: Option<u64>, why: String) {
        let current = self.link.load();
        let ours = match (&*current, generation) {
            (Some(l), Some(g)) => l.generation == g,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if ours {
            self.link.store(None);
            warn!(database = %self.database, error = %why, "lost the fleet database: new approvals are refused until it is back");
        }
        let mut h = self.health.locked();
        h.down_since_ms.get_or_insert_with(now_ms);
        h.error = Some(why);
        drop(h);
        self.lost.notify_one();
    }

    /// [`Fleet::connect`], bounded as a whole: a migration waiting on another host's lock,
    /// or a database that accepts and then says nothing, does not stall the start.
    async fn connect_bounded(self: &Arc<Self>) -> Result<(), FleetError> {
        tokio::time::timeout(SETUP_TIMEOUT, self.connect())
            .await
            .unwrap_or_else(|_| {
                Err(FleetError::Unavailable(format!(
                    "connecting and migrating took longer than {}s",
                    SETUP_TIMEOUT.as_secs()
                )))
            })
    }

    async fn connect(self: &Arc<Self>) -> Result<(), FleetError> {
        let unavailable = |e: tokio_postgres::Error| FleetError::Unavailable(describe(&e));
        let (mut client, mut conn) =
            tokio::time::timeout(CONNECT_TIMEOUT, self.pg.connect(self.tls.clone()))
                .await
                .map_err(|_| FleetError::Unavailable("connecting timed out".into()))?
                .map_err(unavailable)?;
        let generation = self.connections.fetch_add(1, Relaxed) + 1;
        // Drives the connection: answers to statements, and the notifications LISTEN asked for.
        let events = self.events.clone();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let why = loop {
                match poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                        let mut parts = n.payload().splitn(4, ' ');
                        if let (Some(host), Some(id), Some(state)) =
                            (parts.next(), parts.next(), parts.next())
                        {
                            let _ = events.send(Event::Approval {
                                host: host.into(),
                                id: id.into(),
                                state: state.into(),
                                verdict: parts.next().and_then(|v| serde_json::from_str(v).ok()),
                            });
                        }
                    }
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == GRANTS => {
                        if let Some((op, id)) = n.payload().split_once(' ') {
                            let _ = events.send(Event::Grant {
                                id: id.into(),
                                revoked: op == "revoked",
                            });
                        }
                    }
                    Some(Ok(AsyncMessage::Notice(n))) => {
                        debug!(notice = %n.message(), "fleet database")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break describe(&e),
                    None => break "the connection closed".to_string(),
                }
            };
            if let Some(f) = me.upgrade() {
                f.down(Some(generation), why);
            }
        });
        let before = schema::migrate(&mut client, self.host()).await?;
        if before < schema::known() {
            info!(
                from = before,
                to = schema::known(),
                "fleet database schema migrated"
            );
        }
        client
            .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {GRANTS}"))
            .await
            .map_err(unavailable)?;
        // Connections pooled before this session may be dead (the database restarted):
        // drop the idle ones; the pool makes new ones as statements need them.
        self.pool.retain(|_, _| false);
        let link = Arc::new(Link {
            _session: client,
            generation,
        });
        self.link.store(Some(link.clone()));
        let host = self.host();
        let sent = Instant::now();
        if let Err(e) = self.execute(sql::BEAT, &[&host]).await {
            self.link.store(None);
            return Err(e);
        }
        if let Err(e) = self.renew_lease(sent).await {
            self.link.store(None);
            return Err(e);
        }
        {
            let mut h = self.health.locked();
            h.error = None;
            h.down_since_ms = None;
            h.schema_version = schema::known();
        }
        info!(database = %self.database, host = %self.cfg.host, "connected to the fleet database");
        let _ = self.events.send(Event::Connected);
        Ok(())
    }

    /// Heartbeats while connected, reconnects with backoff while not.
    async fn keep(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            let connected = self.connected();
            let wait = if connected {
                self.cfg.heartbeat
            } else {
                backoff
            };
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.lost.notified(), if connected => {}
            }
            if self.connected() {
                self.beat().await;
                continue;
            }
            match self.connect_bounded().await {
                Ok(()) => backoff = BACKOFF_FIRST,
                Err(e) => {
                    debug!(error = %e, retry_in = ?backoff, "fleet database still unreachable");
                    let mut h = self.health.locked();
                    h.error = Some(e.to_string());
                    h.down_since_ms.get_or_insert_with(now_ms);
                    drop(h);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Counts the hosts alive (this one included: it has just beaten at `sent`) and renews
    /// this host's lease on its share of fleet-wide rates; logs a changed share.
    async fn renew_lease(&self, sent: Instant) -> Result<(), FleetError> {
        let dead = self.cfg.dead_after.as_secs_f64();
        let rows = self.query(sql::ALIVE, &[&dead]).await?;
        let alive: i64 = rows.first().map_or(1, |r| r.get(0));
        let before = self.lease.status(sent).map(|s| s.hosts);
        self.lease.renew(alive as u64, sent, self.cfg.dead_after);
        if before.is_some() && before != Some(alive.max(1) as u64) {
            info!(
                hosts = alive,
                "fleet-wide rate limits re-balanced: this host takes 1/{alive}"
            );
        }
        Ok(())
    }

    /// Says this host is alive and renews its lease on fleet-wide rates; marks the held
    /// calls of hosts that are not alive as interrupted.
    async fn beat(&self) {
        let host = self.host();
        let sent = Instant::now();
        if self.execute(sql::BEAT, &[&host]).await.is_err() {
            return;
        }
        if self.renew_lease(sent).await.is_err() {
            return;
        }
        // Windows that ended, now and then (every host does it; it is idempotent).
        if self.beats.fetch_add(1, Relaxed).is_multiple_of(60) {
            let _ = self.execute(sql::EXPIRE, &[]).await;
        }
        let dead = self.cfg.dead_after.as_secs_f64();
        match self.execute(sql::REAP, &[&host, &dead]).await {
            Ok(0) | Err(_) => {}
            Ok(n) => {
                warn!(
                    calls = n,
                    "held calls of hosts not heard from marked interrupted"
                )
            }
        }
    }
}

/// The fleet's records, newest first (at most `limit`, of `host` only if given), read
/// straight from the database at `database` (the CLI's `records list --fleet`: it needs no
/// running daemon, only the configuration's URL).
pub async fn fleet_records(
    database: &str,
    ca: Option<&std::path::Path>,
    host: Option<&str>,
    filter: &FleetFilter,
    limit: i64,
) -> Result<Vec<FleetRecord>, FleetError> {
    let (mut pg, tls, _) = tls::settings(database, ca)?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(CONNECT_TIMEOUT);
    }
    let db = |e: tokio_postgres::Error| FleetError::Unavailable(describe(&e));
    let (client, conn) = pg.connect(tls).await.map_err(db)?;
    let driver = tokio::spawn(conn);
    let rows = tokio::time::timeout(
        QUERY_TIMEOUT * 10,
        client.query(
            "SELECT host, seq, hash, record FROM callgate_records \
             WHERE ($1::text IS NULL OR host = $1) \
             AND ($3::bigint IS NULL OR at_ms >= $3) AND ($4::bigint IS NULL OR at_ms <= $4) \
             AND ($5::text IS NULL OR record->>'service' = $5) \
             AND ($6::text IS NULL OR record->>'function' = $6) \
             AND ($7::text IS NULL OR record->'decision'->>'action' = $7) \
             ORDER BY at_ms DESC, host, seq DESC LIMIT $2",
            &[
                &host,
                &limit,
                &filter.since_ms,
                &filter.until_ms,
                &filter.service,
                &filter.function,
                &filter.decision,
            ],
        ),
    )
    .await
    .map_err(|_| FleetError::Unavailable("no answer in time".into()))?
    .map_err(db)?;
    drop(client);
    driver.abort();
    Ok(rows
        .iter()
        .map(|r| FleetRecord {
            host: r.get(0),
            seq: r.get::<_, i64>(1) as u64,
            hash: r.get(2),
            record: r.get(3),
        })
        .collect())
}

/// The CLI's own connection to the fleet database (`records checkpoints --fleet`, `records
/// verify --fleet`): no pool and no daemon, only the configuration's URL.
pub struct FleetReader {
    client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for FleetReader {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl FleetReader {
    pub async fn connect(database: &str, ca: Option<&std::path::Path>) -> Result<Self, FleetError> {
        let (mut pg, tls, _) = tls::settings(database, ca)?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        let (client, conn) = pg
            .connect(tls)
            .await
            .map_err(|e| FleetError::Unavailable(describe(&e)))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self { client, driver })
    }

    /// Shipped checkpoints, largest first per host, hosts in name order (at most `limit`,
    /// of `host` only if given; only those a witness cosigned if `cosigned_only`).
    pub async fn checkpoints(
        &self,
        host: Option<&str>,
        limit: i64,
        cosigned_only: bool,
    ) -> Result<Vec<FleetCheckpoint>, FleetError> {
        let rows = tokio::time::timeout(
            QUERY_TIMEOUT * 10,
            self.client.query(
                "SELECT host, size, root, note, cosigned, \
                 (extract(epoch FROM shipped_at) * 1000)::bigint FROM callgate_checkpoints \
                 WHERE ($1::text IS NULL OR host = $1) AND (NOT $3 OR cosigned IS NOT NULL) \
                 ORDER BY host, size DESC LIMIT $2",
                &[&host, &limit, &cosigned_only],
            ),
        )
        .await
        .map_err(|_| FleetError::Unavailable("no answer in time".into()))?
        .map_err(|e| FleetError::Unavailable(describe(&e)))?;
        Ok(rows
            .iter()
            .map(|r| FleetCheckpoint {
                host: r.get(0),
                size: r.get::<_, i64>(1) as u64,
                root: r.get(2),
                note: r.get(3),
                cosigned: r.get(4),
                shipped_ms: r.get(5),
            })
            .collect())
    }

    /// How many of `host`'s records have a sequence above `seq`.
    pub async fn records_after(&self, host: &str, seq: u64) -> Result<u64, FleetError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let row = tokio::time::timeout(
            QUERY_TIMEOUT * 10,
            self.client.query_one(
                "SELECT count(*) FROM callgate_records WHERE host = $1 AND seq > $2",
                &[&host, &seq],
            ),
        )
        .await
        .map_err(|_| FleetError::Unavailable("no answer in time".into()))?
        .map_err(|e| FleetError::Unavailable(describe(&e)))?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Calls `f` with each of `host`'s records with `seq <= up_to`, in sequence order, read
    /// as a stream (one row in memory at a time), until it returns an error.
    pub async fn for_each_record(
        &self,
        host: &str,
        up_to: u64,
        f: &mut (dyn FnMut(ShippedRow) -> Result<(), String> + Send),
    ) -> Result<Result<(), String>, FleetError> {
        use futures_util::TryStreamExt;
        let db = |e: tokio_postgres::Error| FleetError::Unavailable(describe(&e));
        let late = |_| FleetError::Unavailable("no answer in time".into());
        let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 2] = [&host, &up_to];
        let rows = tokio::time::timeout(
            QUERY_TIMEOUT * 10,
            self.client.query_raw(
                "SELECT seq, hash, leaf, record FROM callgate_records \
                 WHERE host = $1 AND seq <= $2 ORDER BY seq",
                params,
            ),
        )
        .await
        .map_err(late)?
        .map_err(db)?;
        let mut rows = std::pin::pin!(rows);
        while let Some(r) = tokio::time::timeout(QUERY_TIMEOUT * 10, rows.try_next())
            .await
            .map_err(late)?
            .map_err(db)?
        {
            let row = ShippedRow {
                seq: r.get::<_, i64>(0) as u64,
                hash: r.get(1),
                leaf: r.get(2),
                record: r.get(3),
            };
            if let Err(e) = f(row) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(()))
    }
}

fn shared(r: &tokio_postgres::Row) -> SharedApproval {
    SharedApproval {
        host: r.get("host"),
        state: r.get("state"),
        request: r.get("request"),
        verdict: r.get("verdict"),
        grant_ms: r.get("grant_ms"),
    }
}

/// An error in one line: the server's message when it sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// The database as status shows it: user@host:port/db, no password.
fn redacted(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        pg.get_user().unwrap_or("?"),
        pg.get_dbname().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_never_shows_the_password() {
        let pg: tokio_postgres::Config = "postgresql://gate:s3cret@db.example:6432/fleet"
            .parse()
            .unwrap();
        let shown = redacted(&pg);
        assert_eq!(shown, "gate@db.example:6432/fleet");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn migrations_are_numbered_from_one() {
        assert_eq!(schema::known(), schema::MIGRATIONS.len() as i32);
        assert!(schema::known() >= 1);
    }
}
