//! callgate: a function-call gateway for Linux hosts.
//!
//! An eBPF program attached to enabled cgroups redirects their outbound TCP connections into
//! this gateway, which recovers each connection's original destination and workload, turns its
//! traffic into calls and decides, forwards, masks and records each one.
//!
//! One folder per stage, in the order a call meets them: [`intercept`] (eBPF, cgroups) →
//! [`proxy`] (accept, sniff, TLS, HTTP, forward; it drives the stages below for each call) →
//! [`identity`] → [`extract`] → [`policy`] (decide) → [`approve`] → [`obligations`] (inject,
//! limit, mask) → [`record`], with [`telemetry`] (counters, traces) beside them, [`admin`] (the
//! control socket, the web page, `/metrics`) above them and [`daemon`] wiring it all together.
//! [`mcp`] keeps what the gateway learns of MCP servers' tools (pins, poisoning checks).
//! [`fleet`] is the state a fleet of hosts shares in PostgreSQL (held calls), under the stages
//! that share it. [`call`] is the vocabulary every stage shares, [`config`] the daemon's
//! settings and [`util`] the small helpers none owns.
//!
//! Imports go one way, downwards in this list: `daemon`, `admin`, `proxy`, `mcp`, `intercept`,
//! `record`, `telemetry`, `policy`, `extract`, `approve`, `identity`, `obligations`, `fleet`,
//! `config`, `call`, `util`. A stage whose spec the policy file carries (masks, limits, credentials,
//! approvals, identity providers, routes) owns that spec, and policy imports it.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod admin;
pub mod approve;
pub mod call;
pub mod config;
pub mod daemon;
pub mod extract;
pub mod fleet;
pub mod identity;
pub mod intercept;
pub mod mcp;
pub mod obligations;
pub mod policy;
pub mod proxy;
pub mod record;
pub mod telemetry;
pub mod util;
