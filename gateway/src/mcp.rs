//! MCP safeguards beyond deciding calls: tool pinning against rug pulls ([`pins`]) — a tool
//! whose definition changed since it was reviewed is hidden from `tools/list` and its calls
//! are refused — poisoning checks on every tool definition seen ([`audit`]), and agreement
//! of the 2026 transport's routing headers with the body ([`headers`]); tool results masked
//! message by message, `structuredContent` like `content[].text` ([`results`]).
pub mod audit;
pub mod headers;
pub mod pins;
pub mod results;

use serde::{Deserialize, Serialize};

/// `mcp:` in a service file (MCP services only).
///
/// ```yaml
/// mcp:
///   pin_tools: true
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct McpOptions {
    /// Keep a digest of each tool's definition (name, description, input and output schema,
    /// annotations): pinned from `pins/<service>.yaml` in the policy repository, or on first
    /// sight when the service has none. A tool that no longer matches its pin, or that has
    /// none, is hidden from `tools/list` and its calls are refused.
    #[serde(default)]
    pub pin_tools: bool,
    /// Hide and refuse tools the poisoning checks flag ([`audit`]): invisible characters,
    /// instructions aimed at the model, URLs or e-mail addresses, overlong descriptions.
    #[serde(default)]
    pub refuse_flagged: bool,
}

impl McpOptions {
    /// Whether calls to the service need the tool's live definition checked first.
    pub fn checks_tools(&self) -> bool {
        self.pin_tools || self.refuse_flagged
    }
}
