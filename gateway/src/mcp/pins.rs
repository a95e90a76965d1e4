//! Tool pinning: a digest of each MCP tool's definition, kept per service, so that a server
//! that changes a tool after it was reviewed (a "rug pull") cannot steer an agent with it.
//!
//! A tool's definition is its `name`, `description`, `inputSchema`, `outputSchema` and
//! `annotations`; its digest is the SHA-256 of their canonical JSON (keys sorted, no spaces).
//! Pins come from the policy repository (`pins/<service>.yaml`, written by `callgate mcp pin`
//! and reviewed in git), else are taken on first sight and kept in the state directory.
//! `callgate mcp accept` pins a tool's definition as last seen, locally. A change, or a new
//! unpinned tool, is announced once (per definition) to an event sink: the approvals webhook.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use tracing::warn;

use super::audit::{self, Finding};
use crate::policy::{
    Service,
    mcp::{Pin, PinFile},
};
use crate::util::sync::LockExt;

/// The parts of a tool that are its meaning to a model.
pub const DEFINITION_FIELDS: &[&str] = &[
    "name",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
];

/// Most tools of one service the gateway keeps anything of (seen definitions, local pins): a
/// server cannot grow the gateway's memory by inventing names; tools past it are unpinned.
const MAX_TOOLS: usize = 4096;

/// Most changes a service's status keeps.
const KEPT_CHANGES: usize = 32;

/// Most entries in the diff of an announced change.
const MAX_DIFF: usize = 64;

/// A service without committed pins has its tools pinned on sight during its first listing
/// (every page of it), which ends with its last page or this long after its first tool was
/// seen, whichever comes first; a tool that first appears later is new, and hidden until
/// pinned.
pub const FIRST_SIGHT_WINDOW_MS: u64 = 10_000;

/// A tool's name, its definition (only [`DEFINITION_FIELDS`]) and that definition's digest;
/// None for something that is not a tool (no string `name`).
pub fn definition(tool: &Json) -> Option<(String, Json, String)> {
    let obj = tool.as_object()?;
    let name = obj.get("name")?.as_str()?.to_string();
    let def: Map<String, Json> = DEFINITION_FIELDS
        .iter()
        .filter_map(|k| obj.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let def = Json::Object(def);
    // serde_json's maps are sorted by key: the text is canonical.
    let text = serde_json::to_vec(&def).unwrap_or_default();
    let sha = hex(&Sha256::digest(&text));
    Some((name, def, sha))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a tool's definition compares with its pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Matches its pin.
    Pinned,
    /// Had no pin, and the service has no committed pins: pinned now.
    FirstSight,
    /// Differs from its pin.
    Changed { pinned: String, now: String },
    /// Has no pin, and the service's pins are committed: hidden until pinned.
    Unpinned,
}

impl Verdict {
    pub fn admits(&self) -> bool {
        matches!(self, Verdict::Pinned | Verdict::FirstSight)
    }

    /// What a record, `status` and a refusal say about it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pinned => "pinned",
            Verdict::FirstSight => "pinned_on_first_sight",
            Verdict::Changed { .. } => "changed",
            Verdict::Unpinned => "unpinned",
        }
    }
}

/// A pin kept in the state directory.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LocalPin {
    pub sha256: String,
    pub definition: Json,
    /// `first_sight` or `accepted`.
    pub source: String,
    pub at_ms: u64,
}

/// A tool's definition as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub sha256: String,
    pub definition: Json,
    pub at_ms: u64,
}

/// A definition that did not match its pin.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub tool: String,
    pub pinned_sha256: String,
    pub sha256: String,
    /// The pinned definition, when known, and the new one: the change to review.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_definition: Option<Json>,
    pub definition: Json,
    pub at_ms: u64,
}

#[derive(Debug, Default)]
struct ServicePins {
    loaded: bool,
    /// The first listing's last page went by: no more pins on first sight.
    first_listing_done: bool,
    local: BTreeMap<String, LocalPin>,
    seen: BTreeMap<String, Seen>,
    /// The poisoning checks' findings on each tool as last seen (flagged tools only).
    flags: BTreeMap<String, Vec<Finding>>,
    changes: Vec<Change>,
    changes_total: u64,
    /// The definitions (tool, digest) already announced as changed or unpinned.
    announced: BTreeSet<(String, String)>,
}

impl ServicePins {
    /// Keeps `name`'s definition as seen, if there is room.
    fn see(&mut self, name: &str, seen: Seen) {
        if self.seen.len() < MAX_TOOLS || self.seen.contains_key(name) {
            self.seen.insert(name.to_string(), seen);
        }
    }

    /// The pin of `name` in force: an accepted local pin, else the committed one, else (with
    /// nothing committed) the one taken on first sight. Its digest and definition.
    fn pinned(&self, committed: Option<&PinFile>, name: &str) -> Option<(String, Option<Json>)> {
        let local = self
            .local
            .get(name)
            .filter(|p| committed.is_none() || p.source == "accepted");
        match (local, committed.and_then(|c| c.tools.get(name))) {
            (Some(p), _) => Some((p.sha256.clone(), Some(p.definition.clone()))),
            (None, Some(p)) => Some((p.sha256.clone(), p.definition.clone())),
            (None, None) => None,
        }
    }

    fn verdict(&self, committed: Option<&PinFile>, name: &str, sha: &str, now: u64) -> Verdict {
        match self.pinned(committed, name) {
            Some((pinned, _)) if pinned == sha => Verdict::Pinned,
            Some((pinned, _)) => Verdict::Changed {
                pinned,
                now: sha.to_string(),
            },
            None if committed.is_none() && self.first_sight_open(now) => Verdict::FirstSight,
            None => Verdict::Unpinned,
        }
    }

    /// Whether tools are still pinned on sight: nothing committed and the first listing's
    /// window not over.
    fn first_sight_open(&self, now: u64) -> bool {
        !self.first_listing_done
            && self
                .local
                .values()
                .filter(|p| p.source == "first_sight")
                .map(|p| p.at_ms)
                .min()
                .is_none_or(|first| now < first.saturating_add(FIRST_SIGHT_WINDOW_MS))
    }
}

/// What `callgate mcp audit` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditReport {
    pub service: String,
    pub tools_seen: Vec<String>,
    /// Tool → what the checks found.
    pub flagged: BTreeMap<String, Vec<Finding>>,
}

/// What `status` shows of one pinned service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    /// Tools whose current definition is refused (changed or unpinned), by name.
    pub refused: BTreeMap<String, String>,
    pub changes_total: u64,
    pub recent_changes: Vec<Json>,
    /// Tools pinned locally (`first_sight` or `accepted`) rather than in the repository.
    pub local_pins: BTreeMap<String, String>,
}

/// The pins of every service, and what the gateway has seen of their tools.
#[derive(Debug)]
pub struct PinStore {
    /// `<state_dir>/mcp-pins`; None keeps local pins in memory only.
    dir: Option<PathBuf>,
    services: Mutex<HashMap<String, ServicePins>>,
    /// Definitions found changed, all services.
    pub changes_total: AtomicU64,
    /// Where changes and new unpinned tools are announced.
    events: Option<EventSink>,
}

/// Receives each tool event (see [`tool_event`]) once; the daemon hands them to the approvals
/// webhook.
#[derive(Clone)]
pub struct EventSink(pub Arc<dyn Fn(Json) + Send + Sync>);

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// The event announcing that `tool` of `service` no longer matches its pin (`pinned` is
/// Some) or appeared without one: both digests, both definitions and their differences.
pub fn tool_event(
    service: &str,
    tool: &str,
    pinned: Option<(&str, Option<&Json>)>,
    sha256: &str,
    definition: &Json,
) -> Json {
    let (event, pinned_sha, pinned_def) = match pinned {
        Some((sha, def)) => ("mcp_tool_changed", Some(sha), def),
        None => ("mcp_tool_unpinned", None, None),
    };
    serde_json::json!({
        "event": event,
        "service": service,
        "tool": tool,
        "pinned_sha256": pinned_sha,
        "sha256": sha256,
        "diff": diff(pinned_def, definition),
        "pinned_definition": pinned_def,
        "definition": definition,
        "at_ms": crate::util::time::now_ms(),
        "accept": format!("callgate mcp accept {service} {tool}"),
    })
}

/// Where `new` differs from `old` (None: nothing was known of it), as `{path, old, new}`
/// entries, `path` in dots (`inputSchema.properties.query`, array elements by index); at most
/// [`MAX_DIFF`] entries, the last one saying how many more there were.
pub fn diff(old: Option<&Json>, new: &Json) -> Json {
    fn walk(
        path: &str,
        old: Option<&Json>,
        new: Option<&Json>,
        out: &mut Vec<Json>,
        more: &mut usize,
    ) {
        let child = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match (old, new) {
            (Some(a), Some(b)) if a == b => {}
            (Some(Json::Object(a)), Some(Json::Object(b))) => {
                let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in keys {
                    walk(&child(k), a.get(k), b.get(k), out, more);
                }
            }
            (Some(Json::Array(a)), Some(Json::Array(b))) => {
                for i in 0..a.len().max(b.len()) {
                    walk(&child(&i.to_string()), a.get(i), b.get(i), out, more);
                }
            }
            (a, b) => {
                if out.len() < MAX_DIFF {
                    out.push(serde_json::json!({ "path": path, "old": a, "new": b }));
                } else {
                    *more += 1;
                }
            }
        }
    }
    let (mut out, mut more) = (Vec::new(), 0);
    walk("", old, Some(new), &mut out, &mut more);
    if more > 0 {
        out.push(serde_json::json!({ "more": more }));
    }
    Json::Array(out)
}

impl PinStore {
    pub fn new(state_dir: Option<&Path>) -> Self {
        Self {
            dir: state_dir.map(|d| d.join("mcp-pins")),
            services: Mutex::default(),
            changes_total: AtomicU64::new(0),
            events: None,
        }
    }

    /// Announces each change, and each new unpinned tool, to `sink`, once per definition.
    pub fn with_events(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
        self
    }

    fn with<T>(&self, service: &str, f: impl FnOnce(&mut ServicePins) -> T) -> T {
        let mut all = self.services.locked();
        let s = all.entry(service.to_string()).or_default();
        if !s.loaded {
            s.loaded = true;
            if let Some(path) = self.file(service) {
                match std::fs::read(&path) {
                    Ok(bytes) => match serde_json::from_slice(&bytes) {
                        Ok(local) => {
                            s.local = local;
                            s.first_listing_done = true;
                        }
                        Err(e) => {
                            warn!(path = %path.display(), error = %e, "unreadable MCP pins; starting without them")
                        }
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => warn!(path = %path.display(), error = %e, "unreadable MCP pins"),
                }
            }
        }
        f(s)
    }

    /// The state file of a service's local pins (its name made safe for a file name).
    fn file(&self, service: &str) -> Option<PathBuf> {
        let safe: String = service
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Some(self.dir.as_ref()?.join(format!("{safe}.json")))
    }

    fn persist(&self, service: &str, local: &BTreeMap<String, LocalPin>) {
        let Some(path) = self.file(service) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(local)?)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            warn!(path = %path.display(), error = %e, "could not keep MCP pins");
        }
    }

    /// Checks one tool of `service` (an element of a `tools/list` answer) against its pin,
    /// taking it as seen; a tool without a pin on a service without committed pins is pinned.
    /// None for something that is not a tool.
    pub fn check(&self, service: &Service, tool: &Json) -> Option<(String, Verdict)> {
        let (name, def, sha) = definition(tool)?;
        let committed = service.pins.as_deref();
        let now = crate::util::time::now_ms();
        let mut event = None;
        let verdict = self.with(&service.name, |s| {
            s.see(
                &name,
                Seen {
                    sha256: sha.clone(),
                    definition: def.clone(),
                    at_ms: now,
                },
            );
            let mut verdict = s.verdict(committed, &name, &sha, now);
            if verdict == Verdict::FirstSight && s.local.len() >= MAX_TOOLS {
                verdict = Verdict::Unpinned;
            }
            match &verdict {
                Verdict::FirstSight => {
                    s.local.insert(
                        name.clone(),
                        LocalPin {
                            sha256: sha.clone(),
                            definition: def.clone(),
                            source: "first_sight".into(),
                            at_ms: now,
                        },
                    );
                    self.persist(&service.name, &s.local);
                }
                Verdict::Changed { pinned, now: sha }
                    if !s.changes.iter().any(|c| {
                        c.tool == name && c.sha256 == *sha && c.pinned_sha256 == *pinned
                    }) =>
                {
                    warn!(service = %service.name, tool = %name, pinned = %pinned, now = %sha,
                        "an MCP tool's definition changed since it was pinned");
                    s.changes_total += 1;
                    self.changes_total.fetch_add(1, Relaxed);
                    if s.changes.len() == KEPT_CHANGES {
                        s.changes.remove(0);
                    }
                    let pinned_definition = s.pinned(committed, &name).and_then(|(_, d)| d);
                    s.changes.push(Change {
                        tool: name.clone(),
                        pinned_sha256: pinned.clone(),
                        sha256: sha.clone(),
                        pinned_definition,
                        definition: def.clone(),
                        at_ms: now,
                    });
                }
                _ => {}
            }
            let fresh = !verdict.admits() && self.events.is_some() && {
                if s.announced.len() >= MAX_TOOLS {
                    s.announced.clear();
                }
                s.announced.insert((name.clone(), sha.clone()))
            };
            if fresh {
                let pinned = s.pinned(committed, &name);
                event = Some(tool_event(
                    &service.name,
                    &name,
                    pinned
                        .as_ref()
                        .map(|(sha, def)| (sha.as_str(), def.as_ref())),
                    &sha,
                    &def,
                ));
            }
            verdict
        });
        // Announced outside the lock: the sink may take locks of its own.
        if let (Some(sink), Some(event)) = (&self.events, event) {
            (sink.0)(event);
        }
        Some((name, verdict))
    }

    /// Takes one tool of `service` as seen and runs the poisoning checks on it: its name and
    /// findings (None for something that is not a tool).
    pub fn observe(&self, service: &Service, tool: &Json) -> Option<(String, Vec<Finding>)> {
        let (name, def, sha) = definition(tool)?;
        let findings = audit::audit(&def);
        self.with(&service.name, |s| {
            s.see(
                &name,
                Seen {
                    sha256: sha,
                    definition: def,
                    at_ms: crate::util::time::now_ms(),
                },
            );
            if findings.is_empty() {
                s.flags.remove(&name);
            } else if s.seen.contains_key(&name) {
                s.flags.insert(name.clone(), findings.clone());
            }
        });
        Some((name, findings))
    }

    /// `callgate mcp audit`: every tool of `service` as last seen, with its findings.
    pub fn audit_report(&self, service: &str) -> AuditReport {
        self.with(service, |s| AuditReport {
            service: service.to_string(),
            tools_seen: s.seen.keys().cloned().collect(),
            flagged: s.flags.clone(),
        })
    }

    /// A listing of `service`'s tools ended (a page without `nextCursor`): tools that
    /// appear from now on are new.
    pub fn listing_ended(&self, service: &str) {
        self.with(service, |s| {
            if !s.local.is_empty() {
                s.first_listing_done = true;
            }
        });
    }

    /// What the gateway last saw of `tool` of `service`, if anything.
    pub fn seen(&self, service: &str, tool: &str) -> Option<Seen> {
        self.with(service, |s| s.seen.get(tool).cloned())
    }

    /// Every tool of `service` as last seen, as a pin file to commit.
    pub fn pin_file(&self, service: &str) -> PinFile {
        self.with(service, |s| PinFile {
            service: service.to_string(),
            tools: s
                .seen
                .iter()
                .map(|(name, seen)| {
                    (
                        name.clone(),
                        Pin {
                            sha256: seen.sha256.clone(),
                            definition: Some(seen.definition.clone()),
                        },
                    )
                })
                .collect(),
        })
    }

    /// Pins `tool` of `service` to its definition as last seen (kept in the state directory).
    pub fn accept(&self, service: &str, tool: &str) -> Result<LocalPin, String> {
        self.with(service, |s| {
            if s.local.len() >= MAX_TOOLS && !s.local.contains_key(tool) {
                return Err(format!(
                    "service {service:?} has {MAX_TOOLS} local pins already"
                ));
            }
            let seen = s.seen.get(tool).ok_or_else(|| {
                format!(
                    "the gateway has not seen a tool {tool:?} of service {service:?} \
                     (list the service's tools through the gateway first)"
                )
            })?;
            let pin = LocalPin {
                sha256: seen.sha256.clone(),
                definition: seen.definition.clone(),
                source: "accepted".into(),
                at_ms: crate::util::time::now_ms(),
            };
            s.local.insert(tool.to_string(), pin.clone());
            s.changes.retain(|c| c.tool != tool);
            self.persist(service, &s.local);
            Ok(pin)
        })
    }

    /// What `status` shows, for the services with pinning on.
    pub fn status(&self, services: &[Service]) -> Vec<ServiceStatus> {
        services
            .iter()
            .filter(|svc| svc.mcp.pin_tools)
            .map(|svc| {
                let committed = svc.pins.as_deref();
                let now = crate::util::time::now_ms();
                self.with(&svc.name, |s| ServiceStatus {
                    service: svc.name.to_string(),
                    // The verdicts the data path would give the definitions last seen.
                    refused: s
                        .seen
                        .iter()
                        .filter_map(|(name, seen)| {
                            let v = s.verdict(committed, name, &seen.sha256, now);
                            (!v.admits()).then(|| (name.clone(), v.as_str().to_string()))
                        })
                        .collect(),
                    changes_total: s.changes_total,
                    recent_changes: s
                        .changes
                        .iter()
                        .map(|c| {
                            serde_json::json!({
                                "tool": c.tool,
                                "pinned_sha256": c.pinned_sha256,
                                "sha256": c.sha256,
                                "at_ms": c.at_ms,
                            })
                        })
                        .collect(),
                    local_pins: s
                        .local
                        .iter()
                        .map(|(k, v)| (k.clone(), v.source.clone()))
                        .collect(),
                })
            })
            .collect()
    }

    /// The latest change found for `tool` of `service` (for a record).
    pub fn last_change(&self, service: &str, tool: &str) -> Option<Change> {
        self.with(service, |s| {
            s.changes.iter().rev().find(|c| c.tool == tool).cloned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_changed_path() {
        let old = json!({"name": "t", "description": "Searches.", "inputSchema": {"properties": {"q": {"type": "string"}}}});
        let new = json!({"name": "t", "description": "<IMPORTANT>", "inputSchema": {"properties": {"q": {"type": "string"}, "k": {"type": "int"}}}});
        assert_eq!(
            diff(Some(&old), &new),
            json!([
                {"path": "description", "old": "Searches.", "new": "<IMPORTANT>"},
                {"path": "inputSchema.properties.k", "old": null, "new": {"type": "int"}},
            ])
        );
        assert_eq!(
            diff(None, &new),
            json!([{"path": "", "old": null, "new": new}])
        );
    }

    #[test]
    fn the_digest_covers_the_definition_and_ignores_key_order_and_other_fields() {
        let a = json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {}}});
        let b = json!({"inputSchema": {"properties": {}, "type": "object"}, "description": "d", "name": "t", "title": "T"});
        let (_, _, da) = definition(&a).expect("a tool");
        let (_, _, db) = definition(&b).expect("a tool");
        assert_eq!(da, db);
        let c = json!({"name": "t", "description": "d ", "inputSchema": {"type": "object", "properties": {}}});
        assert_ne!(da, definition(&c).expect("a tool").2);
        let d = json!({"name": "t", "description": "d", "inputSchema": {"type": "object", "properties": {}}, "annotations": {"destructiveHint": true}});
        assert_ne!(da, definition(&d).expect("a tool").2);
        assert!(definition(&json!({"description": "no name"})).is_none());
    }
}
