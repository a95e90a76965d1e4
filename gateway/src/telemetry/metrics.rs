//! What the data path counts as it goes, for Prometheus: calls by service, function and
//! decision; decision and upstream latency; approval outcomes; and, when asked for, the time
//! each call spends masking its answer and queuing its record. [`crate::admin::metrics`]
//! renders them at `/metrics` together with the state the gateway already keeps.
use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// Shared with the policy (Arc): building the label set allocates nothing per call.
    service: Arc<str>,
    /// A function the policy declares, else `other`: paths of undeclared calls would make
    /// the label set unbounded.
    function: Arc<str>,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The metrics the data path updates.
#[derive(Debug)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    decide_seconds: Histogram,
    upstream_seconds: Histogram,
    approvals: Family<OutcomeLabels, Counter>,
    /// The labels of a call outside any service, and of an undeclared function.
    no_service: Arc<str>,
    other: Arc<str>,
    /// Kept only when asked for ([`Metrics::with_stage_timings`]): otherwise the data path
    /// reads no clock and takes no histogram's lock for them.
    stages: Option<Stages>,
}

/// Per call: masking the answer (every chunk through the masker and the credential's
/// scrubber, summed) and queuing the record (masking it again, serialising, handing it to the
/// writer). With `decision_duration` and `upstream_duration`, a call's time by stage.
#[derive(Debug)]
struct Stages {
    mask_seconds: Histogram,
    record_seconds: Histogram,
}

/// The environment variable that turns [`Stages`] on (`1`).
pub const STAGE_TIMINGS_ENV: &str = "CALLGATE_STAGE_TIMINGS";

impl Default for Metrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            // 1 µs … ~1 s.
            decide_seconds: Histogram::new(exponential_buckets(1e-6, 4.0, 11)),
            // 100 µs … ~26 s.
            upstream_seconds: Histogram::new(exponential_buckets(1e-4, 4.0, 10)),
            approvals: Family::default(),
            no_service: Arc::from(""),
            other: Arc::from("other"),
            stages: None,
        }
    }
}

impl Metrics {
    /// One call decided: its service, and its function if the policy declares it.
    pub fn call(
        &self,
        service: Option<&Arc<str>>,
        function: Option<&Arc<str>>,
        decision: &'static str,
    ) {
        self.calls
            .get_or_create(&CallLabels {
                service: service.unwrap_or(&self.no_service).clone(),
                function: function.unwrap_or(&self.other).clone(),
                decision,
            })
            .inc();
    }

    pub fn decided_in(&self, d: Duration) {
        self.decide_seconds.observe(d.as_secs_f64());
    }

    /// From sending a call upstream to its response head.
    pub fn upstream_in(&self, d: Duration) {
        self.upstream_seconds.observe(d.as_secs_f64());
    }

    /// Also time masking and recording per call (the bench's stage breakdown).
    pub fn with_stage_timings(mut self) -> Self {
        // 1 µs … ~0.5 s, doubling: fine enough to read a percentile off.
        let buckets = || Histogram::new(exponential_buckets(1e-6, 2.0, 20));
        self.stages = Some(Stages {
            mask_seconds: buckets(),
            record_seconds: buckets(),
        });
        self
    }

    /// Whether [`Self::masked_in`] and [`Self::recorded_in`] keep anything: the data path
    /// reads the clock for them only then.
    pub fn stage_timings(&self) -> bool {
        self.stages.is_some()
    }

    /// One call's answer masking, all its chunks.
    pub fn masked_in(&self, d: Duration) {
        if let Some(s) = &self.stages {
            s.mask_seconds.observe(d.as_secs_f64());
        }
    }

    /// One call's record queued.
    pub fn recorded_in(&self, d: Duration) {
        if let Some(s) = &self.stages {
            s.record_seconds.observe(d.as_secs_f64());
        }
    }

    /// How a held call ended: `approved`, `denied`, `timed_out`, `granted` (a grant let it
    /// through without asking) or `unavailable` (too many waiting).
    pub fn approval(&self, outcome: &'static str) {
        self.approvals
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Adds these metrics to a registry (the admin listener renders them with the rest).
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "calls",
            "Calls decided, by service, function and enforced decision",
            self.calls.clone(),
        );
        reg.register_with_unit(
            "decision_duration",
            "Time to decide a request's calls",
            Unit::Seconds,
            self.decide_seconds.clone(),
        );
        reg.register_with_unit(
            "upstream_duration",
            "Time from forwarding a call to the upstream's response head",
            Unit::Seconds,
            self.upstream_seconds.clone(),
        );
        if let Some(s) = &self.stages {
            reg.register_with_unit(
                "mask_duration",
                "Time masking a call's answer (kept when CALLGATE_STAGE_TIMINGS=1)",
                Unit::Seconds,
                s.mask_seconds.clone(),
            );
            reg.register_with_unit(
                "record_duration",
                "Time queuing a call's record (kept when CALLGATE_STAGE_TIMINGS=1)",
                Unit::Seconds,
                s.record_seconds.clone(),
            );
        }
        reg.register(
            "approvals_ended",
            "Held calls by how they ended",
            self.approvals.clone(),
        );
    }
}
