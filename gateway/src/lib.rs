//! callgate: a function-call gateway for Linux hosts.
//!
//! An eBPF program attached to enabled cgroups redirects their outbound TCP connections into
//! this gateway, which recovers each connection's original destination and workload and
//! forwards it. Modules follow the pipeline of `DESIGN.md`, one stage each:
//! [`intercept`] (kernel side, userspace half) → [`accept`] → [`forward`], with [`admin`] for
//! the control socket and [`daemon`] wiring them together.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod accept;
pub mod admin;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod extract;
pub mod forward;
pub mod fsutil;
pub mod http;
pub mod inject;
pub mod intercept;
pub mod jsonpath;
pub mod mask;
pub mod policy;
pub mod record;
pub mod reply;
pub mod sniff;
pub mod stats;
pub mod tls;
