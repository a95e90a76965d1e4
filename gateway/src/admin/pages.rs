//! The approvals page's HTML, rendered on the server: no front-end build, usable without
//! JavaScript (a small script only reloads the list when something changes). Every value
//! from a request — arguments, names, comments — is escaped here.
use std::{
    fmt::Write,
    time::{Duration, UNIX_EPOCH},
};

use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use super::login::Person;
use crate::util::visible::visible as v;
use crate::{
    approve::{Approver, Request, State},
    util::time::now_ms,
};

/// Grant windows offered, up to the rule's maximum.
const GRANT_CHOICES: [u64; 6] = [15 * 60, 30 * 60, 3600, 4 * 3600, 8 * 3600, 24 * 3600];

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24}\
header{background:#1b1f24;color:#fff;padding:.6em 1.2em;display:flex;gap:1em;align-items:center}\
header a{color:#fff}header form{margin-left:auto}main{padding:1em 1.2em;max-width:70em}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35em .6em;border-bottom:1px solid #ddd;vertical-align:top}\
pre{background:#f4f5f7;padding:.8em;overflow:auto}.state{font-weight:600}\
.pending{color:#9a6700}.approved{color:#1a7f37}.denied,.timed_out,.cancelled,.interrupted{color:#cf222e}\
.note{background:#fff8c5;padding:.5em .8em}.error{background:#ffebe9;padding:.5em .8em}\
dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1em}dt{font-weight:600}\
textarea{width:100%;max-width:40em}button{padding:.4em 1.2em;margin-right:.6em}";

/// A whole page: header with who is logged in, `body`, and the live-refresh script when
/// `live`.
pub fn page(title: &str, who: Option<(&Person, &str)>, live: bool, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\"><title>{} · callgate</title>\
         <style>{STYLE}</style></head><body{}><header><strong>callgate</strong>\
         <a href=\"/approvals\">approvals</a>",
        text(title),
        if live { " data-live=1" } else { "" }
    );
    if let Some((p, csrf)) = who {
        let _ = write!(
            out,
            "<form method=post action=\"/logout\"><span>{} ",
            text(&p.name)
        );
        if !p.groups.is_empty() {
            let _ = write!(out, "({})", text(&p.groups.join(", ")));
        }
        let _ = write!(
            out,
            "</span> <input type=hidden name=csrf value=\"{}\"><button>Log out</button></form>",
            attr(csrf)
        );
    }
    let _ = write!(out, "</header><main>{body}</main>");
    if live {
        out.push_str("<script src=\"/static/live.js\"></script>");
    }
    out.push_str("</body></html>");
    out
}

/// Reloads the list when a request arrives or ends; without it the page still works.
pub const LIVE_JS: &str = "// Reload the approvals list when a request arrives or ends.\n\
if (window.EventSource && document.body.dataset.live) {\n\
  let seen = null;\n\
  const es = new EventSource('/approvals/events');\n\
  es.onmessage = (e) => { if (seen !== null && e.data !== seen) location.reload(); seen = e.data; };\n\
}\n";

/// The pending requests `me` may answer, and the recently ended ones.
pub fn list(me: &Approver, requests: &[Request]) -> String {
    let mut out = String::new();
    let mine: Vec<&Request> = requests.iter().filter(|r| r.names(me)).collect();
    let pending: Vec<&&Request> = mine.iter().filter(|r| r.state == State::Pending).collect();
    let _ = write!(out, "<h1>Calls waiting for approval</h1>");
    if pending.is_empty() {
        out.push_str(
            "<p>Nothing is waiting for you. This page updates itself when a call is held \
             (or <a href=\"/approvals\">refresh</a>).</p>",
        );
    } else {
        table(&mut out, &pending, true);
    }
    let ended: Vec<&&Request> = mine
        .iter()
        .filter(|r| r.state != State::Pending)
        .take(20)
        .collect();
    if !ended.is_empty() {
        out.push_str("<h2>Recently ended</h2>");
        table(&mut out, &ended, false);
    }
    out
}

fn table(out: &mut String, rows: &[&&Request], pending: bool) {
    let _ = write!(
        out,
        "<table><thead><tr><th>Call</th><th>Caller</th><th>Rule</th><th>Requested</th><th>{}</th><th></th></tr></thead><tbody>",
        if pending { "Expires in" } else { "State" }
    );
    for r in rows {
        let last = if pending {
            text(&short(r.expires_at_ms.saturating_sub(now_ms()))).into_owned()
        } else {
            state(r.state)
        };
        let _ = write!(
            out,
            "<tr><td>{}.{}{}</td><td>{}</td><td>{}</td><td>{} ago</td><td>{last}</td>\
             <td><a href=\"/approvals/{}\">{}</a></td></tr>",
            text(&r.service),
            text(&r.function),
            // Fleet mode: the host holding the call.
            r.host
                .as_deref()
                .map(|h| format!(" <small>on {}</small>", text(h)))
                .unwrap_or_default(),
            text(&v(&r.caller.describe())),
            text(&r.rule),
            text(&short(now_ms().saturating_sub(r.requested_at_ms))),
            attr(&r.id),
            if pending { "Review" } else { "Details" }
        );
    }
    out.push_str("</tbody></table>");
}

/// One request in full, with the verdict form when `me` may answer it.
pub fn detail(me: &Approver, r: &Request, csrf: &str, flash: Option<&str>) -> String {
    let mut out = String::new();
    let _ = write!(out, "<h1>{}.{}</h1>", text(&r.service), text(&r.function));
    if let Some(f) = flash {
        let _ = write!(out, "<p class=note>{}</p>", text(f));
    }
    let c = &r.caller;
    let _ = write!(
        out,
        "<dl><dt>State</dt><dd>{}</dd><dt>Caller</dt><dd>{}</dd>",
        state(r.state),
        text(&v(&c.describe()))
    );
    if let Some(p) = &c.provider {
        let _ = write!(
            out,
            "<dt>Token</dt><dd>from {}; groups {}</dd>",
            text(&v(p)),
            text(&v(&c.groups.join(", ")))
        );
    }
    let _ = write!(
        out,
        "<dt>Workload</dt><dd>pid {} {} in {}{}</dd><dt>Destination</dt><dd>{}</dd>\
         <dt>Rule</dt><dd>{} (policy {})</dd><dt>Requested</dt><dd>{}</dd><dt>Expires</dt><dd>{}</dd>",
        c.pid.map_or("?".into(), |p| p.to_string()),
        text(&v(c.comm.as_deref().unwrap_or("?"))),
        text(&v(c.cgroup.as_deref().unwrap_or("?"))),
        c.unit
            .as_deref()
            .map(|u| format!(" ({})", text(&v(u))))
            .unwrap_or_default(),
        text(&v(&r.destination)),
        text(&r.rule),
        text(r.policy_commit.as_deref().unwrap_or("uncommitted")),
        time(r.requested_at_ms),
        time(r.expires_at_ms),
    );
    if let Some(v) = &r.verdict {
        let _ = write!(
            out,
            "<dt>Verdict</dt><dd>{} by {} at {}{}</dd>",
            if v.approved { "approved" } else { "denied" },
            text(&v.by),
            time(v.at_ms),
            v.comment
                .as_deref()
                .map(|c| format!(": “{}”", text(c)))
                .unwrap_or_default()
        );
    }
    let args = serde_json::to_string_pretty(&r.args).unwrap_or_default();
    let args = crate::util::visible::visible_json(&args);
    let _ = write!(
        out,
        "</dl><h2>Arguments (masked)</h2><pre id=args>{}</pre>",
        text(&args)
    );
    if r.state != State::Pending {
        return out;
    }
    if let Err(why) = r.approvable_by(me) {
        let _ = write!(out, "<p class=note>{}</p>", text(&why));
        return out;
    }
    let _ = write!(
        out,
        "<form method=post action=\"/approvals/{}\"><input type=hidden name=csrf value=\"{}\">\
         <p><label>Comment (recorded with the call)<br><textarea name=comment rows=3></textarea></label></p>",
        attr(&r.id),
        attr(csrf)
    );
    if let Some(max) = r.max_grant_s {
        out.push_str(
            "<p><label>Approve <select name=grant><option value=\"\">this call only</option>",
        );
        let mut choices: Vec<u64> = GRANT_CHOICES.iter().copied().filter(|g| *g < max).collect();
        choices.push(max);
        for g in choices {
            let _ = write!(
                out,
                "<option value=\"{g}s\">and the same calls from this caller for {}</option>",
                short(g * 1000)
            );
        }
        out.push_str("</select></label></p>");
    }
    out.push_str(
        "<p><button name=verdict value=approve>Approve</button>\
         <button name=verdict value=deny>Deny</button></p></form>",
    );
    out
}

/// A page with one message (errors, the logged-out page).
pub fn message(class: &str, msg: &str) -> String {
    format!("<p class={class}>{}</p>", text(msg))
}

fn state(s: State) -> String {
    let name = s.as_str();
    format!(
        "<span class=\"state {name}\">{}</span>",
        name.replace('_', " ")
    )
}

/// A Unix-milliseconds time as RFC 3339, to the second.
pub fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `1h 3m`, `4m 10s`, `12s`.
pub fn short(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}
