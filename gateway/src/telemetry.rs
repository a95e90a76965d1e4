//! What the gateway tells about itself: counters per workload and service, Prometheus metrics,
//! and OpenTelemetry traces.

pub mod metrics;
pub mod stats;
pub mod trace;
