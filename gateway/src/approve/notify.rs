//! New approval requests announced to a webhook: a JSON POST (or a Slack-compatible `text`)
//! per request, with a link to where it can be answered and never its arguments. Other events
//! for the same people (an MCP tool that changed since it was pinned) go the same way. In Slack
//! text, every name is escaped and put in a code span, so a workload cannot mention, link or
//! format through its `comm` or cgroup. Retried
//! with backoff; a receiver that stays down loses announcements, never calls (the request
//! still waits for its verdict and shows in `callgate approvals list`).
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Request;
use crate::config::{WebhookConfig, WebhookFormat as Format};
use crate::{util::outbound::Outbound, util::visible::visible};

/// Announcements queued at most; beyond that new ones are dropped with a warning.
const QUEUE: usize = 256;

pub struct Notifier {
    tx: mpsc::Sender<Json>,
    format: Format,
    page_url: Option<String>,
    url: String,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    /// Announcements given up after every attempt, or dropped on a full queue.
    lost: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookStatus {
    pub url: String,
    pub delivered: u64,
    pub retries: u64,
    pub lost: u64,
}

impl Notifier {
    /// Starts the delivery task (on the current runtime).
    pub fn start(cfg: WebhookConfig, http: Outbound) -> Self {
        let (tx, mut rx) = mpsc::channel::<Json>(QUEUE);
        let (format, page_url, url) = (cfg.format, cfg.page_url.clone(), cfg.url.clone());
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                // One task per announcement: a slow receiver does not delay the next.
                tokio::spawn(deliver(cfg.clone(), http.clone(), payload, c.clone()));
            }
        });
        Self {
            tx,
            format,
            page_url,
            url,
            counts,
        }
    }

    pub fn status(&self) -> WebhookStatus {
        WebhookStatus {
            url: self.url.clone(),
            delivered: self.counts.delivered.load(Relaxed),
            retries: self.counts.retries.load(Relaxed),
            lost: self.counts.lost.load(Relaxed),
        }
    }

    pub(super) fn announce(&self, r: &Request) {
        let payload = payload(r, self.format, self.page_url.as_deref());
        if self.tx.try_send(payload).is_err() {
            self.counts.lost.fetch_add(1, Relaxed);
            warn!(id = %r.id, "approval webhook queue is full; this request is not announced");
        }
    }

    /// Announces an event that is not a held call (its JSON as it is, or as Slack text).
    pub(super) fn event(&self, event: Json) {
        let payload = match self.format {
            Format::Json => event,
            Format::Slack => json!({ "text": event_text(&event) }),
        };
        if self.tx.try_send(payload).is_err() {
            self.counts.lost.fetch_add(1, Relaxed);
            warn!("approval webhook queue is full; an event is not announced");
        }
    }
}

/// The Slack text of an event (see [`Notifier::event`]).
fn event_text(e: &Json) -> String {
    let s = |k: &str| e.get(k).and_then(Json::as_str).unwrap_or_default();
    let short = |k: &str| s(k).chars().take(12).collect::<String>();
    let (service, tool) = (s("service"), s("tool"));
    let accept = slack_code(&format!("callgate mcp accept {service} {tool}"));
    let name = slack_code(&format!("{service}.{tool}"));
    match s("event") {
        "mcp_tool_changed" => format!(
            "callgate: MCP tool {name} changed since it was pinned (sha256 {} → {}); it is hidden \
             and its calls refused until accepted: {accept}, or commit its new pin.",
            slack_code(&short("pinned_sha256")),
            slack_code(&short("sha256")),
        ),
        "mcp_tool_unpinned" => format!(
            "callgate: MCP tool {name} appeared without a pin (sha256 {}); it is hidden until \
             pinned: {accept}, or commit its pin.",
            slack_code(&short("sha256")),
        ),
        other => format!("callgate: {}", slack_code(other)),
    }
}

/// The announcement of `r`.
pub fn payload(r: &Request, format: Format, page_url: Option<&str>) -> Json {
    let url = page_url.map(|p| format!("{}/approvals/{}", p.trim_end_matches('/'), r.id));
    let expires_in = Duration::from_millis(r.expires_at_ms.saturating_sub(r.requested_at_ms));
    match format {
        Format::Json => json!({
            "event": "approval_requested",
            "id": r.id,
            "service": r.service,
            "function": r.function,
            "rule": r.rule,
            "caller": r.caller,
            "policy_commit": r.policy_commit,
            "requested_at_ms": r.requested_at_ms,
            "expires_at_ms": r.expires_at_ms,
            "url": url,
        }),
        Format::Slack => {
            let link = url.map_or_else(
                || {
                    format!(
                        " Answer with {}.",
                        slack_code(&format!("callgate approvals approve {}", r.id))
                    )
                },
                |u| format!(" <{}|Review it>.", slack_escape(&u)),
            );
            json!({
                "text": format!(
                    "callgate: approval needed for {} by {} (rule {}), expires in {}.{link}",
                    slack_code(&format!("{}.{}", r.service, r.function)),
                    slack_code(&r.caller.describe()),
                    slack_code(&r.rule),
                    humantime::format_duration(expires_in),
                )
            })
        }
    }
}

/// `s` escaped as Slack asks of message text: `&`, `<` and `>` as entities, so that nothing
/// in it is read as a mention (`<!channel>`, `<@U1>`) or a link (`<http://…|text>`).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Text that someone other than the operator chose (a workload's `comm` or cgroup, a token's
/// subject, names from the policy), as an inline code span: inside one Slack formats nothing
/// (`*`, `_`, `~`), and mentions and links are escaped as well. Slack has no escape for a
/// backtick, which would close the span: it is shown as `ˋ` (U+02CB). Controls and bidi
/// overrides are written out visibly ([`visible`]), so the text stays on its line.
fn slack_code(s: &str) -> String {
    let text = slack_escape(&visible(s)).replace('`', "\u{02cb}");
    if text.is_empty() {
        "(empty)".into()
    } else {
        format!("`{text}`")
    }
}

async fn deliver(cfg: WebhookConfig, http: Outbound, payload: Json, counts: Arc<Counts>) {
    let body = serde_json::to_vec(&payload).unwrap_or_default();
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=cfg.attempts.max(1) {
        let req = http::Request::post(&cfg.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        let outcome = match req {
            Ok(req) => http.send(req).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(resp) if resp.status().is_success() => {
                debug!(url = %cfg.url, attempt, "approval announced");
                counts.delivered.fetch_add(1, Relaxed);
                return;
            }
            Ok(resp) => {
                warn!(url = %cfg.url, attempt, status = %resp.status(), "approval webhook refused the announcement")
            }
            Err(e) => warn!(url = %cfg.url, attempt, error = %e, "approval webhook unreachable"),
        }
        if attempt < cfg.attempts {
            counts.retries.fetch_add(1, Relaxed);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
    counts.lost.fetch_add(1, Relaxed);
    warn!(url = %cfg.url, "approval announcement given up after {} attempts", cfg.attempts);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_text_from_a_workload_neither_mentions_links_nor_formats() {
        assert_eq!(slack_code("<!channel>"), "`&lt;!channel&gt;`");
        assert_eq!(slack_code("<http://e.vl|R>"), "`&lt;http://e.vl|R&gt;`");
        assert_eq!(
            slack_code("*b*_i_~s~`x`&"),
            "`*b*_i_~s~\u{02cb}x\u{02cb}&amp;`"
        );
        assert_eq!(slack_code("a\nb\u{202e}"), "`a\\x0ab\\u{202e}`");
        assert_eq!(slack_code(""), "(empty)");
        // A tool event names what the server chose only inside code spans.
        let text = event_text(&json!({
            "event": "mcp_tool_changed", "service": "docs", "tool": "<!channel>",
            "pinned_sha256": "d239e81740a6e244", "sha256": "5a0c91fe00112233",
        }));
        assert_eq!(
            text,
            "callgate: MCP tool `docs.&lt;!channel&gt;` changed since it was pinned (sha256 \
             `d239e81740a6` → `5a0c91fe0011`); it is hidden and its calls refused until \
             accepted: `callgate mcp accept docs &lt;!channel&gt;`, or commit its new pin."
        );
        assert_eq!(
            slack_escape("https://x/approvals/1?a&b"),
            "https://x/approvals/1?a&amp;b"
        );
    }
}
