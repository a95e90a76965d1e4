//! The `mcp:` section of a service file and the tool pins a policy repository commits
//! (`pins/<service>.yaml`), read with the policy; the pins are enforced by [`crate::mcp`].
use std::{collections::BTreeMap, path::Path, sync::Arc};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

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
    /// Hide and refuse tools the poisoning checks flag (`crate::mcp::audit`): invisible characters,
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

/// `pins/<service>.yaml` in the policy repository.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PinFile {
    pub service: String,
    #[serde(default)]
    pub tools: BTreeMap<String, Pin>,
}

/// One tool's pin: its digest, and the definition it was taken from (for review; only the
/// digest is compared).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<Json>,
}

/// The committed pins of `service` in the repository at `root`: None when it has no
/// `pins/<service>.yaml`.
pub fn load_committed(root: &Path, service: &str) -> Result<Option<Arc<PinFile>>, String> {
    let path = root.join("pins").join(format!("{service}.yaml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: PinFile =
        yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if file.service != service {
        return Err(format!(
            "{}: pins for service {:?}, not {service:?}",
            path.display(),
            file.service
        ));
    }
    Ok(Some(Arc::new(file)))
}
