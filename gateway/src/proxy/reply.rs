//! Answers the gateway gives instead of the upstream's: a denial, an approval hold, a limit or
//! an upstream failure, each in the words its client understands — an HTTP status with a JSON
//! body, a JSON-RPC error object (which MCP clients show their user), or a gRPC status in
//! trailers.
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use serde_json::{Value as Json, json};

use crate::{
    extract::Kind,
    proxy::body::{BodyError, ProxyBody},
};

/// JSON-RPC error code for a call refused by policy (server-defined range).
pub const RPC_DENIED: i64 = -32001;
/// JSON-RPC error code for a call the gateway could not carry out.
pub const RPC_UNAVAILABLE: i64 = -32002;
/// JSON-RPC error code for a call over a rate limit or quota (`data.retry_after_s` says when).
pub const RPC_LIMITED: i64 = -32003;

/// Why the gateway answers itself.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    /// `denied`, `approval_required`, `body_too_large`, ...
    pub error: &'static str,
    pub reason: String,
    pub rule: Option<String>,
    pub service: Option<String>,
    pub function: Option<String>,
    pub policy_commit: Option<String>,
    /// The rate limit or quota the call is over: when to try again (`Retry-After`).
    pub limit: Option<crate::obligations::limit::Hit>,
    /// A JSON-RPC error code the protocol prescribes for this refusal (MCP's header mismatch,
    /// -32020); its answer then carries `status` as its HTTP status too.
    pub rpc_code: Option<i64>,
}

impl Refusal {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error,
            reason: reason.into(),
            rule: None,
            service: None,
            function: None,
            policy_commit: None,
            limit: None,
            rpc_code: None,
        }
    }

    fn message(&self) -> String {
        match &self.rule {
            Some(rule) => format!("callgate: {} by rule {rule}: {}", self.error, self.reason),
            None => format!("callgate: {}: {}", self.error, self.reason),
        }
    }

    fn detail(&self) -> Json {
        let mut d = json!({
            "error": self.error,
            "reason": self.reason,
            "rule": self.rule,
            "service": self.service,
            "function": self.function,
            "policy_commit": self.policy_commit,
        });
        if let Some(hit) = &self.limit {
            d["retry_after_s"] = hit.retry_after_s.into();
        }
        d
    }

    fn grpc_code(&self) -> u8 {
        match self.status {
            StatusCode::FORBIDDEN => 7,
            StatusCode::UNAUTHORIZED => 16,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => 8,
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => 4,
            StatusCode::BAD_REQUEST => 3,
            StatusCode::TOO_MANY_REQUESTS => 8,
            _ => 14,
        }
    }

    /// The JSON-RPC error object for one call.
    pub fn rpc_error(&self, id: Option<&Json>) -> Json {
        let code = self.rpc_code.unwrap_or(match self.status {
            StatusCode::FORBIDDEN => RPC_DENIED,
            StatusCode::TOO_MANY_REQUESTS => RPC_LIMITED,
            _ => RPC_UNAVAILABLE,
        });
        json!({
            "jsonrpc": "2.0",
            "id": id.cloned().unwrap_or(Json::Null),
            "error": { "code": code, "message": self.message(), "data": self.detail() },
        })
    }

    /// The whole response for a request of `kind` (for RPC: a single call with `id`).
    pub fn respond(&self, kind: Kind, id: Option<&Json>) -> Response<ProxyBody> {
        match kind {
            Kind::Grpc => self.grpc(),
            Kind::JsonRpc | Kind::Mcp if self.rpc_code.is_some() => {
                json_response(self.status, &self.rpc_error(id))
            }
            Kind::JsonRpc | Kind::Mcp => json_response(StatusCode::OK, &self.rpc_error(id)),
            Kind::Rest | Kind::Http => {
                let mut resp = json_response(self.status, &self.detail());
                if let Some(hit) = &self.limit {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(hit.retry_after_s));
                }
                resp
            }
        }
    }

    /// gRPC: HTTP 200, no messages, the status in trailers.
    fn grpc(&self) -> Response<ProxyBody> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from(self.grpc_code() as i32));
        let msg = percent_encoding::utf8_percent_encode(
            &self.message(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        if let Ok(v) = HeaderValue::from_str(&msg) {
            trailers.insert("grpc-message", v);
        }
        let mut resp = Response::new(TrailersOnly(Some(trailers)).boxed_unsync());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        resp
    }
}

pub fn json_response(status: StatusCode, body: &Json) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::proxy::body::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn empty(status: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::proxy::body::full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// A body of trailers only: how a gRPC status goes out without messages.
struct TrailersOnly(Option<HeaderMap>);

impl Body for TrailersOnly {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}
