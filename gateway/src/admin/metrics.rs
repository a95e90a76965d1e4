//! `/metrics` on the admin listener: the data path's own counters
//! ([`crate::telemetry::metrics`]) and everything else the gateway already keeps (connection
//! counters, the recorder, the policy, the OIDC keys, the eBPF programs' counters), read at
//! scrape time so that there is one source for each number.
use std::{borrow::Cow, fmt};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::AdminInputs;
use crate::telemetry::metrics::Metrics;

/// The text exposition of everything: the data path's metrics and the gateway's state now.
pub fn render(metrics: &Metrics, admin: &AdminInputs) -> String {
    let mut reg = Registry::with_prefix("callgate");
    metrics.register(&mut reg);
    reg.register_collector(Box::new(State::of(admin)));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    out
}

/// The gateway's state at scrape time.
#[derive(Debug)]
struct State {
    counters: crate::telemetry::stats::Counters,
    /// Each data-path thread's open connections.
    lanes: Vec<u64>,
    kernel: Vec<(String, u64)>,
    enabled: usize,
    policy: Option<crate::policy::store::ReloadStatus>,
    records: Option<crate::record::RecorderStatus>,
    identity: Vec<crate::identity::oidc::ProviderStatus>,
    approvals: Option<crate::approve::ApprovalsStatus>,
    /// MCP tool definitions found changed since they were pinned.
    mcp_tool_changes: u64,
    /// TLS connections refused by clients that do not trust the CA, by workload.
    untrusting: Vec<(String, u64)>,
}

impl State {
    fn of(a: &AdminInputs) -> Self {
        Self {
            counters: a.stats.snapshot(),
            lanes: a.stats.lanes(),
            kernel: a
                .interceptor
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            enabled: a.interceptor.enabled().len(),
            policy: a.policy.as_ref().map(|p| p.status()),
            records: a.recorder.as_ref().map(|r| r.status()),
            identity: a.verifier.as_ref().map(|v| v.status()).unwrap_or_default(),
            approvals: a.approvals.as_ref().map(|a| a.status()),
            mcp_tool_changes: a
                .pins
                .changes_total
                .load(std::sync::atomic::Ordering::Relaxed),
            untrusting: a
                .stats
                .untrusting
                .snapshot()
                .into_iter()
                .map(|u| (u.workload, u.refused))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LaneLabel {
    lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WitnessLabel {
    witness: String,
}

/// One gauge with a `witness` label (its URL) per witness of `records.witnesses`.
fn by_witness(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&str, i64)],
) -> fmt::Result {
    gauges(
        e,
        name,
        help,
        values.iter().map(|(url, v)| {
            let labels = WitnessLabel {
                witness: url.to_string(),
            };
            (labels, *v)
        }),
    )
}

/// One gauge per label set of `values`; nothing when there are none.
fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut values = values.into_iter().peekable();
    if values.peek().is_none() {
        return Ok(());
    }
    let mut m = e.encode_descriptor(name, help, None, ConstGauge::new(0i64).metric_type())?;
    for (labels, v) in values {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One metric with a `name` label per entry.
fn by_name(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counter: bool,
    values: &[(Cow<'_, str>, i64)],
) -> fmt::Result {
    if values.is_empty() {
        return Ok(());
    }
    let kind = if counter {
        ConstCounter::new(0u64).metric_type()
    } else {
        ConstGauge::new(0i64).metric_type()
    };
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (label, v) in values {
        let labels = NameLabel {
            name: label.to_string(),
        };
        let f = m.encode_family(&labels)?;
        if counter {
            ConstCounter::new(u64::try_from(*v).unwrap_or(0)).encode(f)?;
        } else {
            ConstGauge::new(*v).encode(f)?;
        }
    }
    Ok(())
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for State {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let c = &self.counters;
        counter(
            &mut e,
            "mcp_tool_changes",
            "MCP tool definitions found changed since they were pinned",
            self.mcp_tool_changes,
        )?;
        counter(
            &mut e,
            "connections_accepted",
            "Intercepted connections accepted",
            c.accepted,
        )?;
        counter(
            &mut e,
            "connections_forwarded",
            "Connections forwarded upstream",
            c.forwarded,
        )?;
        gauge(
            &mut e,
            "connections_active",
            "Connections open now",
            int(c.active),
        )?;
        gauges(
            &mut e,
            "lane_connections",
            "Connections each data-path thread serves now",
            self.lanes.iter().enumerate().map(|(lane, open)| {
                let labels = LaneLabel {
                    lane: lane.to_string(),
                };
                (labels, int(*open))
            }),
        )?;
        counter(
            &mut e,
            "connections_handed_over",
            "Connections served by another data-path thread than the one that accepted them",
            c.handed_over,
        )?;
        counter(
            &mut e,
            "connections_handover_failed",
            "Connections closed unserved because the data-path thread chosen for them could not take them",
            c.handover_failed,
        )?;
        counter(
            &mut e,
            "upstream_errors",
            "Upstream connections that failed",
            c.upstream_errors,
        )?;
        counter(
            &mut e,
            "connections_refused_no_entry",
            "Redirected connections with no original destination on record",
            c.refused_no_entry,
        )?;
        counter(
            &mut e,
            "connections_refused_loop",
            "Connections refused because they would loop back into the gateway",
            c.refused_loop,
        )?;
        counter(
            &mut e,
            "refused_recording",
            "Calls refused because they could not be recorded",
            c.refused_recording,
        )?;
        counter(
            &mut e,
            "record_errors",
            "Records that could not be queued",
            c.record_errors,
        )?;
        counter(
            &mut e,
            "tokens_verified",
            "Bearer tokens verified",
            c.tokens_verified,
        )?;
        counter(
            &mut e,
            "tokens_rejected",
            "Bearer tokens rejected",
            c.tokens_rejected,
        )?;
        counter(
            &mut e,
            "token_exchange_failures",
            "Calls refused for want of a per-caller upstream token (token exchange)",
            c.token_exchange_failures,
        )?;
        counter(
            &mut e,
            "bytes_up",
            "Bytes from workloads to upstreams",
            c.bytes_up,
        )?;
        counter(
            &mut e,
            "bytes_down",
            "Bytes from upstreams to workloads",
            c.bytes_down,
        )?;
        gauge(
            &mut e,
            "cgroups_enabled",
            "Cgroups whose connections are intercepted",
            int(self.enabled as u64),
        )?;
        let kernel: Vec<(Cow<'_, str>, i64)> = self
            .kernel
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), int(*v)))
            .collect();
        by_name(
            &mut e,
            "kernel_events",
            "Counters kept by the eBPF programs",
            true,
            &kernel,
        )?;
        let untrusting: Vec<(Cow<'_, str>, i64)> = self
            .untrusting
            .iter()
            .map(|(w, n)| (Cow::Borrowed(w.as_str()), int(*n)))
            .collect();
        by_name(
            &mut e,
            "tls_untrusted",
            "Intercepted TLS connections whose client refused the gateway's certificate (it does not trust the CA), by workload",
            true,
            &untrusting,
        )?;
        if let Some(p) = &self.policy {
            counter(
                &mut e,
                "policy_reloads",
                "Policy reloads that took effect",
                p.reloads,
            )?;
            counter(
                &mut e,
                "policy_reload_failures",
                "Policy reloads refused (the previous policy stayed)",
                p.failed_reloads,
            )?;
            gauge(
                &mut e,
                "policy_rules",
                "Rules in the policy in force",
                int(p.rules as u64),
            )?;
            gauge(
                &mut e,
                "policy_last_reload_failed",
                "1 when the last reload was refused",
                i64::from(p.last_error.is_some()),
            )?;
            if let Some(g) = &p.git {
                counter(
                    &mut e,
                    "policy_git_fetch_failures",
                    "Fetches of the policy's git remote that failed (retried with backoff)",
                    g.fetch_failures,
                )?;
                counter(
                    &mut e,
                    "policy_git_refusals",
                    "Commits of the policy's git remote refused (unsigned, unknown signer, bad signature, not compiling)",
                    g.refusals,
                )?;
                gauge(
                    &mut e,
                    "policy_git_fetch_failing",
                    "1 while the last fetch of the policy's git remote failed",
                    i64::from(g.fetch_error.is_some()),
                )?;
                let kind = ConstGauge::new(0i64).metric_type();
                let mut m = e.encode_descriptor(
                    "policy_git_refused",
                    "1 for the newest fetched commit when it was refused, labelled with the commit and why; the commit in force is policy_git_commit",
                    None,
                    kind,
                )?;
                if let Some(r) = &g.refused {
                    let labels = vec![("commit", r.commit.clone()), ("reason", r.reason.clone())];
                    ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
                }
                let mut m = e.encode_descriptor(
                    "policy_git_commit",
                    "1, labelled with the commit in force",
                    None,
                    kind,
                )?;
                if let Some(c) = &p.commit {
                    let labels = vec![("commit", c.clone())];
                    ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if let Some(r) = &self.records {
            gauge(
                &mut e,
                "records_backlog",
                "Records queued and not yet written",
                int(r.backlog as u64),
            )?;
            gauge(
                &mut e,
                "records_backlog_bytes",
                "Bytes of records queued and not yet written (bounded by records.backlog_mb)",
                int(r.backlog_bytes as u64),
            )?;
            counter(&mut e, "records_written", "Records written", r.written)?;
            counter(
                &mut e,
                "records_refused",
                "Records that could not be queued because the recorder had stopped (calls refused for recording are refused_recording)",
                r.refused,
            )?;
            counter(&mut e, "records_fsyncs", "fsyncs of the call log", r.fsyncs)?;
            counter(
                &mut e,
                "records_write_errors",
                "Write errors of the call log",
                r.write_errors,
            )?;
            gauge(
                &mut e,
                "records_failing",
                "1 while the call log cannot be written",
                i64::from(r.failing.is_some()),
            )?;
            let w = &r.witnesses;
            by_witness(
                &mut e,
                "witness_size",
                "The tree size of the last records checkpoint the witness cosigned",
                &w.iter()
                    .map(|w| (w.url.as_str(), int(w.size)))
                    .collect::<Vec<_>>(),
            )?;
            by_witness(
                &mut e,
                "witness_bad_cosignatures",
                "Cosignatures from the witness that did not verify with its configured key (refused)",
                &w.iter()
                    .map(|w| (w.url.as_str(), int(w.bad_cosignatures)))
                    .collect::<Vec<_>>(),
            )?;
            by_witness(
                &mut e,
                "witness_last_success_timestamp_seconds",
                "When the witness last cosigned a records checkpoint (Unix seconds; 0: never)",
                &w.iter()
                    .map(|w| (w.url.as_str(), int(w.last_success_ms.unwrap_or(0) / 1000)))
                    .collect::<Vec<_>>(),
            )?;
            by_witness(
                &mut e,
                "witness_failing",
                "1 while the last attempt to reach the witness failed",
                &w.iter()
                    .map(|w| (w.url.as_str(), i64::from(w.last_error.is_some())))
                    .collect::<Vec<_>>(),
            )?;
        }
        let usable: Vec<(Cow<'_, str>, i64)> = self
            .identity
            .iter()
            .map(|p| (Cow::Borrowed(p.name.as_str()), i64::from(p.usable)))
            .collect();
        by_name(
            &mut e,
            "identity_keys_usable",
            "1 while an OIDC provider's signing keys are fresh enough to verify with",
            false,
            &usable,
        )?;
        if let Some(a) = &self.approvals {
            gauge(
                &mut e,
                "approvals_pending",
                "Calls held for approval now",
                int(a.pending as u64),
            )?;
            gauge(
                &mut e,
                "approval_grants",
                "Approval grants in force",
                int(a.grants as u64),
            )?;
            if let Some(w) = &a.webhook {
                counter(
                    &mut e,
                    "approval_webhook_delivered",
                    "Approval announcements delivered",
                    w.delivered,
                )?;
                counter(
                    &mut e,
                    "approval_webhook_lost",
                    "Approval announcements given up",
                    w.lost,
                )?;
            }
            if let Some(f) = &a.fleet {
                gauge(
                    &mut e,
                    "fleet_connected",
                    "1 while the fleet database is reachable (new approvals and fleet quotas need it)",
                    int(u64::from(f.connected)),
                )?;
                counter(
                    &mut e,
                    "fleet_connections",
                    "Connections made to the fleet database (more than one: it was lost)",
                    f.connections,
                )?;
                let q = &f.quota_blocks;
                gauge(
                    &mut e,
                    "fleet_quota_reserved",
                    "Counts of fleet-wide quotas this host holds reserved in the database in the current windows (used or not)",
                    int(q.reserved),
                )?;
                gauge(
                    &mut e,
                    "fleet_quota_unused",
                    "Of the reserved counts, those not used yet (they go back when idle or at a stop)",
                    int(q.unused),
                )?;
                counter(
                    &mut e,
                    "fleet_quota_blocks_taken",
                    "Blocks of fleet-wide quotas taken from the fleet database (each one round trip)",
                    q.blocks_taken,
                )?;
            }
            if let Some(t) = &a.fleet_trust {
                gauge(
                    &mut e,
                    "fleet_sealed",
                    "1 while verdicts and grants from the fleet database must carry a trusted host's seal (fleet.trusted_keys); 0: the database is trusted",
                    int(u64::from(t.sealed)),
                )?;
                counter(
                    &mut e,
                    "fleet_verdicts_refused",
                    "Verdicts from the fleet database refused: not sealed by a trusted host as the row says",
                    t.refused_verdicts,
                )?;
                counter(
                    &mut e,
                    "fleet_grants_refused",
                    "Grants from the fleet database refused: not sealed by a trusted host",
                    t.refused_grants,
                )?;
                counter(
                    &mut e,
                    "fleet_requests_refused",
                    "Held calls of other hosts an approver here was refused to judge (their seal does not hold)",
                    t.refused_requests,
                )?;
            }
        }
        Ok(())
    }
}
