//! The data path: accept a redirected connection, sniff what it speaks, terminate TLS where the
//! policy says so, serve HTTP/1 and h2, run each call through the pipeline, and forward it upstream.

pub mod accept;
pub mod body;
pub mod direct;
pub mod drain;
pub mod h1;
pub mod http;
pub mod reply;
pub mod sniff;
pub mod tls;
pub mod trust;
pub mod upstream;

use std::sync::Arc;

use crate::{
    approve::Approvals,
    config::Config,
    identity::{Verifier, workload::Users},
    intercept::{Interceptor, cgroup::CgroupNames},
    obligations::{inject::Credentials, mask::MaskKey},
    policy::PolicyStore,
    proxy::{tls::Authority, upstream::pool::Upstreams},
    record::Recorder,
    telemetry::stats::Stats,
};

/// What every connection handler needs, shared by all listeners.
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub interceptor: Arc<Interceptor>,
    pub stats: Arc<Stats>,
    pub names: CgroupNames,
    pub users: Users,
    /// Exports a span per call, when configured.
    pub tracer: Option<Arc<crate::telemetry::trace::CallTracer>>,
    /// Rate-limit buckets and quota windows.
    pub limiter: Arc<crate::obligations::limit::Limiter>,
    /// Fleet mode: shared state (fleet-wide quotas).
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
    /// What the data path counts for `/metrics`.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// The credentials services inject, as last read.
    pub credentials: Credentials,
    /// Calls held for a human's verdict (with a policy).
    pub approvals: Option<Arc<Approvals>>,
    /// Verifies callers' OIDC tokens (with a policy).
    pub verifier: Option<Arc<Verifier>>,
    /// The call log; `None` when recording is off.
    pub recorder: Option<Recorder>,
    /// Makes session ids unique across restarts (connection ids start at 1 each run).
    pub session_prefix: String,
    /// The policy; `None` runs the gateway as a recorded TCP pass-through.
    pub policy: Option<Arc<PolicyStore>>,
    /// The local CA for intercepted TLS.
    pub authority: Option<Arc<Authority>>,
    pub upstreams: Arc<Upstreams>,
    /// Each data-path thread's signal that the stop's drain has begun.
    pub drains: drain::Drains,
    /// Keys the `hash` mask style.
    pub mask_key: MaskKey,
    /// Every built-in detector: what arguments kept at rest outside the records (a held
    /// call's, in `approvals.json`, on the approvals page and in its webhook) get on top of
    /// the policy's masks, as a record's do.
    pub at_rest: Arc<crate::obligations::mask::MaskRules>,
    /// What inspected bodies and held answers may take in all; one for every connection.
    pub inspection: crate::proxy::http::InspectionBudget,
    /// MCP tool pins and what was seen of each MCP service's tools.
    pub pins: Arc<crate::mcp::pins::PinStore>,
    /// The last workload blocks made for records (see [`accept::WorkloadBlocks`]).
    pub workload_blocks: accept::WorkloadBlocks,
    /// The MCP requests under way, by session and id (see [`http::InFlight`]).
    pub mcp_in_flight: crate::proxy::http::InFlight,
}
