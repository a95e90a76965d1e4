//! Admit: what a request must satisfy before it is a call at all. Every name it gives its
//! destination agrees and names the service; a body that must be inspected is read whole,
//! within the size and time limits and the inspection budget.
use bytes::Bytes;
use http::{StatusCode, header};

use super::{
    Conn,
    budget::{self, InspectionBudget},
};
use crate::{
    policy::Service,
    proxy::{body::ProxyBody, h1, reply::Refusal},
};

impl Conn {
    /// Every name the request gives its destination must agree (the request line's authority,
    /// `:authority`, the one `Host`) and name `service`: the check reads one, the upstream may
    /// route on another, so two that disagree are refused. The refusal, if any.
    pub(super) fn names_refusal(
        &self,
        s: &Service,
        parts: &http::request::Parts,
    ) -> Option<Refusal> {
        let refusal = |status, error, reason: String| Refusal {
            service: Some(s.name.to_string()),
            ..Refusal::new(status, error, reason)
        };
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (_, Some(_)) => {
                return Some(refusal(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request has more than one Host header".into(),
                ));
            }
            (Some(v), None) => match v.to_str() {
                Ok(v) => Some(v),
                Err(_) => {
                    return Some(refusal(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the Host header is not text".into(),
                    ));
                }
            },
            (None, None) => None,
        };
        let target = parts.uri.authority().map(|a| a.as_str());
        for name in [target, host].into_iter().flatten() {
            if name.contains('@') {
                return Some(refusal(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the authority has user information".into(),
                ));
            }
        }
        if let (Some(t), Some(h)) = (target, host) {
            if !same_authority(t, h) {
                return Some(refusal(
                    StatusCode::BAD_REQUEST,
                    "authority_mismatch",
                    format!("the request names {t} but its Host header names {h}"),
                ));
            }
        }
        if let Some(name) = target.or(host) {
            if !s.accepts_host(name, self.dst.ip()) {
                return Some(refusal(
                    StatusCode::FORBIDDEN,
                    "host_mismatch",
                    format!(
                        "{name} does not name service {} (reached at {})",
                        s.name, self.dst
                    ),
                ));
            }
        }
        None
    }
}

/// Reads a request body whole, within the size and time limits and the inspection budget
/// (the shared one, and an h2 connection's share, which its requests carry).
pub(super) async fn read_body(
    body: ProxyBody,
    parts: &http::request::Parts,
    limits: &crate::config::HttpConfig,
    budget: &InspectionBudget,
) -> Result<Bytes, Refusal> {
    let (max, limit) = (limits.max_body_bytes, limits.body_timeout);
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than the inspection limit of {max} bytes"),
        )
    };
    let mut held = budget.hold(parts.extensions.get::<budget::ConnectionBudget>());
    // An invalid length is left for the body's own end to bound (the HTTP/1 server has
    // refused one already; h2 checks it against the DATA frames). A valid one is reserved
    // before a byte is read.
    if let Some(n) = h1::content_length(&parts.headers).ok().flatten() {
        if n > max as u64 {
            return Err(too_large());
        }
        held.cover(n as usize)
            .map_err(|budget::Busy| budget::Collect::busy())?;
    }
    match tokio::time::timeout(limit, budget::collect(body, max, held)).await {
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {limit:?}"),
        )),
        Ok(Err(budget::Collect::TooLarge)) => Err(too_large()),
        Ok(Err(budget::Collect::Busy)) => Err(budget::Collect::busy()),
        Ok(Err(budget::Collect::Failed(e))) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "body_error",
            e.to_string(),
        )),
        Ok(Ok(b)) => Ok(b),
    }
}

/// The name the client used: `:authority` (h2, absolute-form) or Host.
pub(super) fn authority(parts: &http::request::Parts) -> Option<&str> {
    parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
    })
}

/// Two spellings of one authority: the same host (case and a final dot aside) and, where
/// both give one, the same port.
fn same_authority(a: &str, b: &str) -> bool {
    let split = |x: &str| -> (String, Option<String>) {
        let host = host_only(x);
        let rest = &x[x.find(host).map_or(0, |i| i + host.len())..];
        let port = rest
            .trim_start_matches(']')
            .strip_prefix(':')
            .map(str::to_string);
        (host.trim_end_matches('.').to_ascii_lowercase(), port)
    };
    let ((ha, pa), (hb, pb)) = (split(a), split(b));
    ha == hb && (pa.is_none() || pb.is_none() || pa == pb)
}

pub(super) fn host_only(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}
