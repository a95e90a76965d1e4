//! MCP tools as the gateway sees them: tool pinning against rug pulls ([`pins`]) — a tool
//! whose definition changed since it was reviewed is hidden from `tools/list` and its calls
//! are refused — and poisoning checks on every tool definition seen ([`audit`]).
//!
//! The rest of MCP's safeguards live with their stages: the `mcp:` options and committed pins
//! in [`crate::policy::mcp`], the routing headers' agreement with the body in
//! [`crate::extract::mcp_headers`], message-by-message masking of answers in
//! [`crate::obligations::mask::mcp`], and the data-path hooks in `proxy::http::mcp_check`.
pub mod audit;
pub mod pins;

pub use crate::policy::mcp::McpOptions;
