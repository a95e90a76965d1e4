//! callgate: a function-call gateway for Linux hosts.
//!
//! An eBPF program attached to enabled cgroups redirects their outbound TCP connections into
//! this gateway, which recovers each connection's original destination and workload, turns its
//! traffic into calls and decides, forwards, masks and records each one. Modules follow the
//! pipeline of `DESIGN.md`, one stage each: [`intercept`] (userspace half) → [`accept`] →
//! [`sniff`] → [`tls`] → [`http`] → [`identity`] → [`extract`] → [`policy`] (decide) →
//! [`approve`] → [`inject`] → [`forward`] → [`mask`] → [`record`], with [`reply`] for the
//! gateway's own answers, [`admin`] for the control socket and the HTTP admin listener,
//! [`metrics`] for Prometheus, [`trust`] for the CA's trust bundle and the clients that refuse
//! it, and [`daemon`] wiring them together.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod accept;
pub mod admin;
pub mod approve;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod extract;
pub mod forward;
pub mod fsutil;
pub mod h1;
pub mod http;
pub mod identity;
pub mod inject;
pub mod intercept;
pub mod jsonpath;
pub mod limit;
pub mod mask;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod record;
pub mod reply;
pub mod sniff;
pub mod stats;
pub mod tls;
pub mod trace;
pub mod trust;
