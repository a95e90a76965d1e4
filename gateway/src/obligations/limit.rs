//! Rate limits and quotas, the obligations `limit:` (a token bucket per key) and `quota:`
//! (calls per UTC-aligned window per key) of an allowing rule. Checked after the decision,
//! before anything is forwarded or held.
//!
//! Buckets and windows live in sharded maps (one short lock per call, never a global one),
//! bounded: idle buckets — full again, so forgetting them changes nothing — go first. Quota
//! windows are saved in the state directory, so a restart does not hand out a fresh day.
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use crate::util::sync::LockExt;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tracing::warn;

use crate::{call::Caller, util::fs::write_atomic_mode, util::time::parse_duration};

const SHARDS: usize = 64;
/// Keys kept per shard, for buckets and for quota windows each.
const PER_SHARD: usize = 4096;

/// One part of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KeyPart {
    Subject,
    Groups,
    Unit,
    Uid,
    User,
    Cgroup,
    Service,
    Function,
    Arg(String),
}

impl KeyPart {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "caller.subject" => Self::Subject,
            "caller.groups" | "caller.group" => Self::Groups,
            "workload.unit" => Self::Unit,
            "workload.uid" => Self::Uid,
            "workload.user" => Self::User,
            "workload.cgroup" => Self::Cgroup,
            "service" => Self::Service,
            "function" => Self::Function,
            other => match other.strip_prefix("args.") {
                Some(name) if !name.is_empty() => Self::Arg(name.to_string()),
                _ => {
                    return Err(format!(
                        "unknown key {other:?}: use caller.subject, caller.groups, workload.unit, workload.uid, workload.user, workload.cgroup, service, function or args.NAME"
                    ));
                }
            },
        })
    }
}

/// What a limit is kept per, as written: `caller.subject, function`, or `rule` for one bucket.
fn per_text(per: &[String]) -> String {
    if per.is_empty() {
        "rule".into()
    } else {
        per.join(", ")
    }
}

fn parse_per(per: &[String]) -> Result<Vec<KeyPart>, String> {
    per.iter().map(|p| KeyPart::parse(p)).collect()
}

/// `10/m` → (10, 60 s); the period is a unit (`s`, `m`, `h`, `d`) or a duration (`10s`).
fn parse_rate(text: &str) -> Result<(u64, Duration), String> {
    let bad = || format!("{text:?} is not a rate like 10/m, 5/s, 1000/d or 3/10s");
    let (n, per) = text.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let per = per.trim();
    let period = if per.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(per)
    } else {
        parse_duration(&format!("1{per}"))
    }
    .ok_or_else(bad)?;
    if n == 0 {
        return Err(format!("{text:?} allows no call at all: use a deny rule"));
    }
    Ok((n, period))
}

/// A compiled `limit:`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitSpec {
    pub rule: Arc<str>,
    pub per: Vec<KeyPart>,
    /// Tokens per second.
    pub rate: f64,
    pub burst: f64,
    /// As written, for refusals and records: `10/m (burst 20) per caller.subject, function`.
    pub text: String,
    /// `scope: fleet`: the rate is the fleet's, each host keeping a bucket at its share
    /// (leased from the fleet's database); without fleet mode such calls are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fleet: bool,
}

impl LimitSpec {
    /// The key a call counts under; Err: why it has none (see [`key`]).
    pub fn key(&self, s: &Subject<'_>) -> Result<String, String> {
        key(&self.rule, &self.per, s)
    }

    pub fn compile(rule: &str, def: &crate::obligations::limit::LimitDef) -> Result<Self, String> {
        let per = parse_per(&def.per)?;
        let (n, period) = parse_rate(&def.rate)?;
        let burst = def.burst.map_or(n as f64, f64::from);
        if burst < 1.0 {
            return Err("burst must be at least 1".into());
        }
        let fleet = def.scope == Some(Scope::Fleet);
        Ok(Self {
            rule: rule.into(),
            per,
            rate: n as f64 / period.as_secs_f64(),
            burst,
            text: format!(
                "{} (burst {burst}) per {}{}",
                def.rate,
                per_text(&def.per),
                if fleet { " (fleet-wide)" } else { "" }
            ),
            fleet,
        })
    }
}

/// A compiled `quota:`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QuotaSpec {
    pub rule: Arc<str>,
    pub per: Vec<KeyPart>,
    pub calls: u64,
    pub window: Duration,
    pub text: String,
    /// `scope: fleet`: counted in the fleet's database, across its hosts (in fleet mode;
    /// without it, on this host like any other quota).
    pub fleet: bool,
}

impl QuotaSpec {
    pub fn compile(rule: &str, def: &crate::obligations::limit::QuotaDef) -> Result<Self, String> {
        let per = parse_per(&def.per)?;
        let (calls, window) = parse_rate(&def.calls)?;
        let fleet = def.scope == Some(Scope::Fleet);
        Ok(Self {
            rule: rule.into(),
            per,
            calls,
            window,
            text: format!(
                "{} per {}{}",
                def.calls,
                per_text(&def.per),
                if fleet { " (fleet-wide)" } else { "" }
            ),
            fleet,
        })
    }

    /// The key a call counts under; Err: why it has none (see [`key`]).
    pub fn key(&self, s: &Subject<'_>) -> Result<String, String> {
        key(&self.rule, &self.per, s)
    }

    /// Seconds until the current window ends, at unix time `unix`.
    pub fn retry_after_s(&self, unix: u64) -> u64 {
        let len = self.window.as_secs().max(1);
        (len - unix % len).max(1)
    }
}

/// What a key is made of, borrowed from the call being checked.
pub struct Subject<'a> {
    pub caller: &'a Caller,
    pub service: &'a str,
    pub function: &'a str,
    pub args: &'a Json,
}

/// The argument `name` as the server reads it: by its name, else by the one member whose
/// name folds to it (Go's `encoding/json` reads `Account` and `ACCOUNT` as the field
/// `account`, as conditions do; extraction refuses a call that spells one name twice).
fn arg<'a>(args: &'a Json, name: &str) -> Option<&'a Json> {
    let o = args.as_object()?;
    o.get(name).or_else(|| {
        o.iter()
            .find(|(k, _)| crate::util::jsonpath::fold_eq(k, name))
            .map(|(_, v)| v)
    })
}

/// The key a call counts under. An argument is keyed as servers read it
/// ([`crate::call::number::key_text`]): `"05"`, `"5abc"` and `"5.json"` count as `5`, whose
/// record Rails' `find` loads for each. Err (why) when an argument is read as several numbers:
/// such a call is refused, as no one count is its.
fn key(rule: &str, per: &[KeyPart], s: &Subject<'_>) -> Result<String, String> {
    use std::fmt::Write;
    let w = s.caller.workload.as_ref();
    let mut k = String::with_capacity(64);
    // Rules are named per service: two services' `balance` rules count apart.
    k.push_str(s.service);
    k.push('\u{1f}');
    k.push_str(rule);
    for p in per {
        k.push('\u{1f}');
        let _ = match p {
            KeyPart::Subject => write!(k, "{}", s.caller.subject.as_deref().unwrap_or("")),
            KeyPart::Groups => write!(k, "{}", s.caller.groups.join(",")),
            KeyPart::Unit => write!(k, "{}", w.and_then(|w| w.unit.as_deref()).unwrap_or("")),
            KeyPart::Uid => write!(k, "{}", w.and_then(|w| w.uid).map_or(-1, i64::from)),
            KeyPart::User => write!(k, "{}", w.and_then(|w| w.user.as_deref()).unwrap_or("")),
            KeyPart::Cgroup => write!(k, "{}", w.and_then(|w| w.cgroup.as_deref()).unwrap_or("")),
            KeyPart::Service => write!(k, "{}", s.service),
            KeyPart::Function => write!(k, "{}", s.function),
            KeyPart::Arg(name) => match arg(s.args, name) {
                Some(v) => match crate::call::number::key_text(v) {
                    Ok(t) => write!(k, "{t}"),
                    Err(several) => {
                        return Err(format!(
                            "argument {name:?} is read as {several} by different servers: no one \
                             count is its"
                        ));
                    }
                },
                None => Ok(()),
            },
        };
    }
    Ok(k)
}

/// A limit or quota that refused a call.
#[derive(Debug, Clone, Serialize)]
pub struct Hit {
    /// `limit` or `quota`; `quota_unavailable` / `rate_unavailable` when the fleet's
    /// database that counts it (or leases its share) cannot be reached.
    pub kind: &'static str,
    pub rule: String,
    /// The limit as written.
    pub limit: String,
    pub retry_after_s: u64,
    /// Why the limit could not be applied (`rate_unavailable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Window {
    /// Unix seconds the window began.
    start: u64,
    count: u64,
    /// Its length, so that an expired window is known without the policy.
    len: u64,
}

struct Shards<T> {
    shards: Vec<Mutex<HashMap<String, T>>>,
    hasher: RandomState,
}

impl<T> Shards<T> {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, T>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[i].locked()
    }
}

pub struct Limiter {
    buckets: Shards<Bucket>,
    windows: Shards<Window>,
    /// Where quota windows are saved; None keeps them in memory (policy tests).
    path: Option<PathBuf>,
    dirty: AtomicBool,
}

#[derive(Default, Serialize, Deserialize)]
struct Saved {
    windows: HashMap<String, Window>,
}

impl Limiter {
    /// A limiter whose quota windows are kept in `path` (loaded now, saved by [`save`]).
    ///
    /// [`save`]: Limiter::save
    pub fn open(path: Option<PathBuf>) -> Self {
        let l = Self {
            buckets: Shards::new(),
            windows: Shards::new(),
            path,
            dirty: AtomicBool::new(false),
        };
        let Some(p) = &l.path else { return l };
        let saved: Saved = match std::fs::read(p) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                warn!(path = %p.display(), error = %e, "unreadable quota state; quotas start afresh");
                Saved::default()
            }),
            Err(_) => Saved::default(),
        };
        let now = unix_now();
        for (k, w) in saved.windows {
            if w.start + w.len > now {
                l.windows.shard(&k).insert(k, w);
            }
        }
        l
    }

    /// Checks (and counts) a call against its rule's limit and quota.
    pub fn check(
        &self,
        limit: Option<&LimitSpec>,
        quota: Option<&QuotaSpec>,
        s: &Subject<'_>,
    ) -> Result<(), Hit> {
        self.check_at(limit, quota, s, Instant::now(), unix_now())
    }

    /// [`check`](Limiter::check) with the limit's bucket at `share` (0 < share ≤ 1) of its
    /// rate and burst: a fleet-wide limit's share of the fleet, leased by this host.
    pub fn check_shared(
        &self,
        limit: Option<&LimitSpec>,
        share: f64,
        quota: Option<&QuotaSpec>,
        s: &Subject<'_>,
    ) -> Result<(), Hit> {
        self.check_shared_at(limit, share, quota, s, Instant::now(), unix_now())
    }

    /// [`check`](Limiter::check) at a given moment (policy tests use one moment for all).
    pub fn check_at(
        &self,
        limit: Option<&LimitSpec>,
        quota: Option<&QuotaSpec>,
        s: &Subject<'_>,
        now: Instant,
        unix: u64,
    ) -> Result<(), Hit> {
        self.check_shared_at(limit, 1.0, quota, s, now, unix)
    }

    /// [`check_shared`](Limiter::check_shared) at a given moment.
    pub fn check_shared_at(
        &self,
        limit: Option<&LimitSpec>,
        share: f64,
        quota: Option<&QuotaSpec>,
        s: &Subject<'_>,
        now: Instant,
        unix: u64,
    ) -> Result<(), Hit> {
        // The quota is looked at first and counted last, so a call the bucket refuses does
        // not use up quota.
        let quota = quota.map(|q| {
            let len = q.window.as_secs().max(1);
            let window = Window {
                start: unix - unix % len,
                count: 0,
                len,
            };
            (q, key(&q.rule, &q.per, s), window)
        });
        let unkeyed = |kind: &'static str, rule: &str, text: &str, why: String| Hit {
            kind,
            rule: rule.to_string(),
            limit: text.to_string(),
            retry_after_s: 1,
            why: Some(why),
        };
        let quota = match quota {
            Some((q, Err(why), _)) => return Err(unkeyed("quota", &q.rule, &q.text, why)),
            Some((q, Ok(k), window)) => Some((q, k, window)),
            None => None,
        };
        if let Some((q, k, window)) = &quota {
            let shard = self.windows.shard(k);
            // A window later than now means the wall clock was set back: it still counts,
            // or setting the clock back would hand out a fresh quota.
            if let Some(w) = shard.get(k) {
                if w.start >= window.start && w.count >= q.calls {
                    return Err(Hit {
                        kind: "quota",
                        rule: q.rule.to_string(),
                        limit: q.text.clone(),
                        retry_after_s: (w.start + w.len).saturating_sub(unix).max(1),
                        why: None,
                    });
                }
            }
        }
        if let Some(l) = limit {
            // A share of a fleet's rate: this host's bucket refills at its share, and holds
            // its share of the burst (at least one call, or a small burst split among many
            // hosts would let nothing through).
            let share = if share.is_finite() {
                share.clamp(f64::MIN_POSITIVE, 1.0)
            } else {
                1.0
            };
            let (rate, burst) = (l.rate * share, (l.burst * share).max(1.0));
            let k =
                key(&l.rule, &l.per, s).map_err(|why| unkeyed("limit", &l.rule, &l.text, why))?;
            let mut shard = self.buckets.shard(&k);
            if !shard.contains_key(&k) && shard.len() >= PER_SHARD {
                evict_buckets(&mut shard, burst / rate, now);
            }
            let b = shard.entry(k).or_insert(Bucket {
                tokens: burst,
                last: now,
            });
            let refill = now.saturating_duration_since(b.last).as_secs_f64() * rate;
            b.tokens = (b.tokens + refill).min(burst);
            b.last = now;
            if b.tokens < 1.0 {
                let wait = (1.0 - b.tokens) / rate;
                return Err(Hit {
                    kind: "limit",
                    rule: l.rule.to_string(),
                    limit: l.text.clone(),
                    retry_after_s: wait.ceil().clamp(1.0, 86_400.0 * 366.0) as u64,
                    why: None,
                });
            }
            b.tokens -= 1.0;
        }
        if let Some((_, k, window)) = quota {
            let mut shard = self.windows.shard(&k);
            if !shard.contains_key(&k) && shard.len() >= PER_SHARD {
                evict_windows(&mut shard, unix);
            }
            let w = shard.entry(k).or_insert(window);
            if window.start > w.start {
                *w = window;
            }
            w.count += 1;
            self.dirty.store(true, Relaxed);
        }
        Ok(())
    }

    /// Writes the quota windows if they changed since the last save.
    pub fn save(&self) {
        let Some(p) = &self.path else { return };
        if !self.dirty.swap(false, Relaxed) {
            return;
        }
        let unix = unix_now();
        let mut saved = Saved::default();
        for s in &self.windows.shards {
            let s = s.locked();
            for (k, w) in s.iter() {
                if w.start + w.len > unix {
                    saved.windows.insert(k.clone(), *w);
                }
            }
        }
        let bytes = serde_json::to_vec(&saved).unwrap_or_default();
        if let Err(e) = write_atomic_mode(p, &bytes, 0o600) {
            self.dirty.store(true, Relaxed);
            warn!(path = %p.display(), error = %e, "could not save quota state; retrying");
        }
    }
}

/// Makes room in a full shard: buckets that have refilled are as good as new and go first;
/// failing that, the one idle longest.
fn evict_buckets(shard: &mut HashMap<String, Bucket>, full_s: f64, now: Instant) {
    let full_after = Duration::try_from_secs_f64(full_s).unwrap_or(Duration::MAX);
    shard.retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    if shard.len() >= PER_SHARD {
        if let Some(k) = shard
            .iter()
            .min_by_key(|(_, b)| b.last)
            .map(|(k, _)| k.clone())
        {
            shard.remove(&k);
        }
    }
}

/// Expired windows go first; failing that, the least used one (forgetting it can only let
/// that key through a little more, and it is said in the log).
fn evict_windows(shard: &mut HashMap<String, Window>, unix: u64) {
    shard.retain(|_, w| w.start + w.len > unix);
    if shard.len() >= PER_SHARD {
        if let Some(k) = shard
            .iter()
            .min_by_key(|(_, w)| w.count)
            .map(|(k, _)| k.clone())
        {
            warn!("quota table full: forgetting the count of one key");
            shard.remove(&k);
        }
    }
}

fn unix_now() -> u64 {
    crate::util::time::now_ms() / 1000
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitDef {
    /// What a bucket is kept per: `caller.subject`, `caller.groups`, `workload.unit`,
    /// `workload.uid`, `workload.user`, `workload.cgroup`, `service`, `function`, `args.NAME`.
    #[serde(default)]
    pub per: Vec<String>,
    /// `10/m`, `5/s`, `100/h`, `1000/d`, or `3/10s`.
    pub rate: String,
    /// Calls allowed at once after a quiet spell (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
    /// `host` (default): a bucket on each host; `fleet`: the rate is the fleet's, split
    /// among its hosts alive (fleet mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaDef {
    #[serde(default)]
    pub per: Vec<String>,
    /// `1000/d`, `50/h`: calls per window.
    pub calls: String,
    /// `host` (default): counted on each host; `fleet`: across the fleet's hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

/// Where a quota is counted, or a rate limit's rate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Host,
    Fleet,
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{LimitDef, QuotaDef};
    use crate::call::Workload;

    fn caller(sub: &str, unit: &str) -> Caller {
        Caller {
            subject: Some(sub.into()),
            authenticated: true,
            workload: Some(Arc::new(Workload {
                unit: Some(unit.into()),
                ..Workload::default()
            })),
            ..Caller::default()
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("10/m").unwrap(), (10, Duration::from_secs(60)));
        assert_eq!(parse_rate("3/10s").unwrap(), (3, Duration::from_secs(10)));
        assert_eq!(parse_rate("1000/d").unwrap().1, Duration::from_secs(86_400));
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("0/m").is_err());
        assert!(parse_rate("x/m").is_err());
        assert!(KeyPart::parse("caller.nope").is_err());
        assert_eq!(
            KeyPart::parse("args.customer_id").unwrap(),
            KeyPart::Arg("customer_id".into())
        );
    }

    #[test]
    fn buckets_refill_and_keys_are_separate() {
        let def = LimitDef {
            per: vec!["caller.subject".into()],
            rate: "2/s".into(),
            burst: Some(3),
            scope: None,
        };
        let l = LimitSpec::compile("r", &def).unwrap();
        let lim = Limiter::open(None);
        let (a, b) = (caller("a", "u"), caller("b", "u"));
        let args = Json::Null;
        let s = |c| Subject {
            caller: c,
            service: "s",
            function: "f",
            args: &args,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(lim.check_at(Some(&l), None, &s(&a), t0, 0).is_ok());
        }
        let hit = lim.check_at(Some(&l), None, &s(&a), t0, 0).unwrap_err();
        assert_eq!((hit.kind, hit.retry_after_s), ("limit", 1));
        assert!(
            lim.check_at(Some(&l), None, &s(&b), t0, 0).is_ok(),
            "b has its own bucket"
        );
        let later = t0 + Duration::from_millis(500);
        assert!(
            lim.check_at(Some(&l), None, &s(&a), later, 0).is_ok(),
            "refilled one"
        );
        assert!(lim.check_at(Some(&l), None, &s(&a), later, 0).is_err());
        // Another service's rule of the same name counts apart (a caller of one service
        // used up another's quota).
        let other = Subject {
            service: "t",
            ..s(&a)
        };
        assert!(lim.check_at(Some(&l), None, &other, later, 0).is_ok());
    }

    #[test]
    fn quotas_count_per_window_and_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("callgate-quota-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("quotas.json");
        let def = QuotaDef {
            per: vec!["workload.unit".into()],
            calls: "2/d".into(),
            scope: None,
        };
        let q = QuotaSpec::compile("r", &def).unwrap();
        let c = caller("a", "batch.service");
        let args = Json::Null;
        let s = Subject {
            caller: &c,
            service: "s",
            function: "f",
            args: &args,
        };
        let now = Instant::now();
        let day = unix_now() / 86_400 * 86_400 + 100;
        let lim = Limiter::open(Some(path.clone()));
        assert!(lim.check_at(None, Some(&q), &s, now, day).is_ok());
        lim.save();
        let lim = Limiter::open(Some(path.clone()));
        assert!(lim.check_at(None, Some(&q), &s, now, day + 1).is_ok());
        let hit = lim.check_at(None, Some(&q), &s, now, day + 2).unwrap_err();
        assert_eq!(hit.kind, "quota");
        assert_eq!(hit.retry_after_s, 86_400 - 102);
        assert!(
            lim.check_at(None, Some(&q), &s, now, day + 86_400).is_ok(),
            "a new day"
        );
        assert!(lim.check_at(None, Some(&q), &s, now, day + 86_401).is_ok());
        // The wall clock set back a day: the spent quota of the later day still counts.
        let hit = lim.check_at(None, Some(&q), &s, now, day + 3).unwrap_err();
        assert_eq!(hit.kind, "quota");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_quota_says_where_it_counts() {
        let def: QuotaDef = yaml_serde::from_str("{ calls: 3/d, scope: fleet }").unwrap();
        let q = QuotaSpec::compile("r", &def).unwrap();
        assert!(q.fleet);
        assert_eq!(q.text, "3/d per rule (fleet-wide)");
        let def: QuotaDef = yaml_serde::from_str("{ calls: 3/d }").unwrap();
        assert!(!QuotaSpec::compile("r", &def).unwrap().fleet);
        assert!(yaml_serde::from_str::<QuotaDef>("{ calls: 3/d, scope: moon }").is_err());
        assert_eq!(q.retry_after_s(86_400 * 10 + 3_600), 82_800);
    }

    #[test]
    fn a_fleet_limit_keeps_a_bucket_at_its_share() {
        let def: LimitDef = yaml_serde::from_str("{ rate: 10/s, scope: fleet }").unwrap();
        let l = LimitSpec::compile("r", &def).unwrap();
        assert!(l.fleet);
        assert_eq!(l.text, "10/s (burst 10) per rule (fleet-wide)");
        let def: LimitDef = yaml_serde::from_str("{ rate: 10/s, scope: host }").unwrap();
        assert!(!LimitSpec::compile("r", &def).unwrap().fleet);
        assert!(yaml_serde::from_str::<LimitDef>("{ rate: 10/s, scope: moon }").is_err());

        let c = caller("a", "u");
        let args = Json::Null;
        let s = Subject {
            caller: &c,
            service: "s",
            function: "f",
            args: &args,
        };
        let lim = Limiter::open(None);
        let t0 = Instant::now();
        // Half of the fleet's rate: a burst of 5, refilled at 5/s.
        let passed = (0..20)
            .filter(|_| lim.check_shared_at(Some(&l), 0.5, None, &s, t0, 0).is_ok())
            .count();
        assert_eq!(passed, 5);
        let hit = lim
            .check_shared_at(Some(&l), 0.5, None, &s, t0, 0)
            .unwrap_err();
        assert_eq!((hit.kind, hit.retry_after_s), ("limit", 1));
        let later = t0 + Duration::from_millis(400);
        let passed = (0..20)
            .filter(|_| {
                lim.check_shared_at(Some(&l), 0.5, None, &s, later, 0)
                    .is_ok()
            })
            .count();
        assert_eq!(passed, 2, "0.4 s at 5/s");
        // The whole rate again (the other hosts gone): the bucket grows to the whole burst.
        let much_later = t0 + Duration::from_secs(5);
        let passed = (0..20)
            .filter(|_| {
                lim.check_shared_at(Some(&l), 1.0, None, &s, much_later, 0)
                    .is_ok()
            })
            .count();
        assert_eq!(passed, 10);
        // A share smaller than one call of burst still lets one call through at a time.
        let tiny = lim.check_shared_at(
            Some(&l),
            0.01,
            None,
            &s,
            much_later + Duration::from_secs(60),
            0,
        );
        assert!(tiny.is_ok());
    }
}
