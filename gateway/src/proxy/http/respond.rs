//! Respond: the upstream's answer streams back masked (headers, body and trailers), scrubbed of
//! any credential the gateway injected, and the call is recorded as it ends (see
//! [`streaming`] for when, by durability). An answer the masks cannot read is refused, unless
//! the service lets it pass.
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::{
    Conn,
    decide::Decided,
    forward::{injected, strip_hop_by_hop},
    streaming::{self, Recording},
};
use crate::{
    extract::Kind,
    obligations::mask::{mcp::ToolFilter, scrub::ScrubStream},
    proxy::{body::ProxyBody, reply::Refusal, upstream::pool::UpstreamBody},
};

/// What an MCP answer carries besides its masks.
#[derive(Default)]
pub(super) struct McpAnswer {
    /// What its `tools/list` results pass through.
    pub(super) tools: Option<ToolFilter>,
    /// The request's place among those under way in its MCP session, given back when the
    /// answer ends (see [`super::mcp_check::InFlight`]).
    pub(super) in_flight: Vec<super::mcp_check::InFlightGuard>,
}

impl Conn {
    /// Streams the upstream's answer back, masked, and records the call when it ends.
    /// `mcp`: what an MCP answer carries besides its masks.
    pub(super) fn respond(
        &self,
        kind: Kind,
        version: Version,
        resp: Response<UpstreamBody>,
        one: Decided,
        recording: Option<Recording>,
        mcp: McpAnswer,
    ) -> Response<ProxyBody> {
        let McpAnswer { tools, in_flight } = mcp;
        let secrets = injected(&resp);
        let scrub = secrets.clone().map(ScrubStream::new);
        let (mut parts, incoming) = resp.into_parts();
        parts.version = version;
        let masks = one.decision.obligations.masks.0.clone();
        // Scrubbed only: whether the head says the body is text (JSON or other). Unlabelled
        // bodies are often binary downloads: the scrubber looks for the UTF-16 and UTF-32
        // spellings of a credential in them too.
        let mut labelled_text = false;
        // What the body is, from the head as the upstream sent it (before any stripping).
        let body_kind = if masks.is_empty() && tools.is_some() {
            // Read message by message for its tool lists: readable, and what it is.
            crate::obligations::mask::response_body(&parts.headers)
        } else if masks.is_empty() {
            // An injected credential is scrubbed from the bytes as they pass: they must be
            // the bytes, not a compressed form of them.
            match &secrets {
                Some(_) => crate::obligations::mask::response_body(&parts.headers).map(|k| {
                    labelled_text = k != crate::obligations::mask::BodyKind::Binary
                        && parts.headers.contains_key(header::CONTENT_TYPE);
                    crate::obligations::mask::BodyKind::Binary
                }),
                None => Ok(crate::obligations::mask::BodyKind::Binary),
            }
        } else {
            crate::obligations::mask::answer_kind(
                parts.status.as_u16(),
                &parts.headers,
                one.decision.obligations.unmaskable,
                masks.has_fields() && kind != Kind::Mcp,
            )
        };
        let seen = strip_hop_by_hop(&mut parts.headers);
        // Header values leave as the body does: `X-Card`, `Location: /users/<e-mail>`.
        let header_masks = crate::obligations::mask::HeaderMasker::new(
            masks.clone(),
            self.inputs.mask_key.clone(),
        );
        if let Some(m) = &header_masks {
            m.mask(&mut parts.headers);
        }
        if let Err(why) = body_kind {
            // Fail closed: a compressed body cannot be masked as it streams, nor binary, nor
            // a piece of a document, nor one whose head says two things (unless the service
            // lets what cannot be masked pass).
            let r = Refusal::new(StatusCode::BAD_GATEWAY, "unmaskable_response", why.reason());
            let resp = r.respond(kind, one.call.rpc_id.as_ref());
            if let Some(rec) = one.into_recording(recording, Some(&r)) {
                // Not waited for: the answer is an error either way.
                let _ = rec.submit(Some(r.status.as_u16()), None, false, 0);
            }
            return resp;
        }
        let status = parts.status.as_u16();
        let one_rpc_id = one.call.rpc_id.clone();
        let cap = self
            .inputs
            .recorder
            .as_ref()
            .map_or(0, |r| r.response_cap());
        let pending = one.into_recording(recording, None).map(|r| {
            let mut p = streaming::Pending::new(r, status, cap);
            p.expect(incoming.size_hint().exact());
            p
        });
        // The record keeps the answer as the client got it: masked once, for both. Unless an
        // injected credential is scrubbed from it after masking (the scrubber moves bytes).
        let recorded = pending
            .as_ref()
            .filter(|p| scrub.is_none() && p.keeps_answer())
            .map(|p| p.cap());
        let text_kind =
            matches!(body_kind, Ok(k) if k != crate::obligations::mask::BodyKind::Binary);
        let mut masker = match body_kind {
            // An MCP answer: message by message.
            Ok(k) if (!masks.is_empty() || tools.is_some()) && kind == Kind::Mcp => {
                Some(crate::obligations::mask::mcp::masker(
                    masks,
                    self.inputs.mask_key.clone(),
                    k,
                    &parts.headers,
                    self.inputs.cfg.http.max_held_response_bytes,
                    tools,
                ))
            }
            Ok(kind) if !masks.is_empty() => Some(if let Some(cap) = recorded {
                crate::obligations::mask::BodyMasker::recorded(
                    masks,
                    self.inputs.mask_key.clone(),
                    kind,
                    cap,
                )
            } else {
                crate::obligations::mask::BodyMasker::new(masks, self.inputs.mask_key.clone(), kind)
            }),
            _ => None,
        };
        if let Some(crate::obligations::mask::BodyMasker::Mcp(m)) = &mut masker {
            m.rpc_id = one_rpc_id;
        }
        if (masker.is_some() || scrub.is_some()) && seen.content_length {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        // Masked or scrubbed as text: a text body must be text (see `CallBody::as_text`).
        let read_as_text = match &masker {
            Some(crate::obligations::mask::BodyMasker::Binary) => false,
            Some(_) => text_kind,
            None => scrub.is_some() && labelled_text,
        };
        // Set up in place: the body is about a KiB, and each builder step that took it by
        // value would copy it.
        let mut body = streaming::CallBody::new(incoming, masker, scrub, pending);
        if read_as_text {
            body.as_text();
        }
        if matches!(status, 204 | 304) {
            body.bodiless();
        }
        body.mask_trailers(header_masks, secrets);
        body.hold_while_streaming(in_flight);
        body.timed(&self.inputs.metrics);
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// A JSON response built by the gateway, for held answers.
pub(super) fn json_bytes(
    status: StatusCode,
    version: Version,
    body: Vec<u8>,
) -> Response<ProxyBody> {
    let mut resp = Response::new(crate::proxy::body::full(Bytes::from(body)));
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
