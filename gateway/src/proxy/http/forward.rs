//! Forward: an allowed request, rewritten for the upstream (hop-by-hop fields dropped, the
//! origin or absolute form, a Host where HTTP/1.1 needs one, encodings and ranges the answer's
//! masking could not read refused), with the decision's header edits and credential, sent to
//! the connection's original destination: its own HTTP/1 connection or the pooled clients.
use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};

use super::{
    Conn,
    admit::{authority, host_only},
};
use crate::{
    extract::Kind,
    identity,
    obligations::{
        exchange::ExchangeError,
        inject::{CallerToken, CredentialError, Credentials},
        mask::scrub::Secrets,
    },
    policy::{Obligations, Service, Snapshot},
    proxy::{
        body::ProxyBody,
        h1::list_items,
        reply::Refusal,
        upstream::{
            ForwardError,
            pool::{HttpClient, UpstreamBody, UpstreamKey, UpstreamTls},
        },
    },
    telemetry::trace::CallSpan,
};

/// What goes upstream: the request, its obligations and the call's trace span.
pub(super) struct Outgoing<'a> {
    pub(super) kind: Kind,
    /// The client's request head, edited in place into the upstream's: copying the header
    /// map into a fresh one was a tenth of the forwarding.
    pub(super) parts: http::request::Parts,
    pub(super) body: ProxyBody,
    pub(super) ob: &'a Obligations,
    pub(super) span: Option<&'a CallSpan>,
}

/// The scrubber for the credential injected into a request, carried on its response.
#[derive(Clone)]
struct Injected(Arc<Secrets>);

/// `resp`'s body scrubber, if a credential went out with its request.
pub(super) fn injected<B>(resp: &Response<B>) -> Option<Arc<Secrets>> {
    resp.extensions().get::<Injected>().map(|i| i.0.clone())
}

impl Conn {
    /// Sends an allowed request to the original destination.
    pub(super) async fn forward(
        &self,
        snap: &Snapshot,
        service: Option<&Service>,
        out: Outgoing<'_>,
    ) -> Result<Response<UpstreamBody>, Refusal> {
        let Outgoing {
            kind,
            mut parts,
            body,
            ob,
            span,
        } = out;
        let inputs = &self.inputs;
        // A plain-text upstream cannot say whether it speaks h2c: only gRPC (which needs
        // HTTP/2) goes up as h2 with prior knowledge; anything else as HTTP/1.1.
        let h2c = !self.tls && parts.version == Version::HTTP_2 && kind == Kind::Grpc;
        // HTTP/1 goes over this connection's own upstream connection (in plain text, or TLS
        // re-originated), which takes the origin form; the pooled clients take the absolute
        // form.
        let own_http1 =
            parts.version < Version::HTTP_2 && (!self.tls || inputs.authority.is_some());
        // The authority as the client gave it, before a `Connection` header can strip its
        // Host: the pooled clients' key and SNI, or a Host for a request that has none.
        let mut seen = Seen::of(&parts.headers);
        let needs_name = self.tls && self.sni.is_none();
        let host = (!own_http1 || !seen.host || seen.connection() || needs_name).then(|| {
            authority(&parts)
                .map(str::to_string)
                .unwrap_or_else(|| self.dst.to_string())
        });
        strip_seen(&mut parts.headers, &mut seen);
        let needs_host = !h2c && !seen.host;
        let path = parts.uri.path_and_query();
        parts.uri = if own_http1 {
            match path {
                // Already the origin form (as HTTP/1 clients send it): nothing to parse again.
                Some(_) if parts.uri.scheme().is_none() && parts.uri.authority().is_none() => {
                    parts.uri
                }
                Some(p) => {
                    let mut origin = http::uri::Parts::default();
                    origin.path_and_query = Some(p.clone());
                    http::Uri::from_parts(origin).map_err(|e| {
                        Refusal::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
                    })?
                }
                None => http::Uri::from_static("/"),
            }
        } else {
            let scheme = if self.tls { "https" } else { "http" };
            let path = path.map_or("/", |p| p.as_str());
            let host = host.as_deref().unwrap_or_default();
            http::Uri::try_from(format!("{scheme}://{host}{path}"))
                .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?
        };
        parts.version = if h2c {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        // What the server side attached to the client's request is not for the upstream.
        parts.extensions = http::Extensions::new();
        let mut req = Request::from_parts(parts, body);
        if let (Some(t), Some(s)) = (&inputs.tracer, span) {
            t.inject(s, req.headers_mut());
        }
        // The body may have been cut down (a batch's allowed part): hyper frames it from its
        // own length.
        if seen.content_length {
            req.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if h2c {
            if seen.host {
                req.headers_mut().remove(header::HOST);
            }
        } else if needs_host {
            // An HTTP/1.0 request may come without one; HTTP/1.1 needs it.
            if let Some(v) = host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        drop_underscored(req.headers_mut());
        if (!ob.masks.0.is_empty() || kind == Kind::Mcp) && seen.accept_encoding {
            // The response is masked as it streams (an MCP answer's tool lists are filtered
            // too): it must come as readable text.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        if !ob.masks.0.is_empty() {
            // And whole: a range cuts a document where a value may be (and nginx answers
            // several as multipart/byteranges).
            req.headers_mut().remove(header::RANGE);
            req.headers_mut().remove(header::IF_RANGE);
        }
        let caller = if Credentials::per_caller(ob.inject.as_ref(), &snap.credentials) {
            Some(CallerToken {
                token: self.verified_token(snap, req.headers(), req.uri()).await,
                carried_in: &snap.identity.token_headers,
            })
        } else {
            None
        };
        let injected = inputs
            .credentials
            .apply(
                req.headers_mut(),
                &ob.headers,
                ob.inject.as_ref(),
                &snap.credentials,
                caller,
            )
            .await
            .map_err(|e| {
                if matches!(e, CredentialError::Exchange(_)) {
                    inputs.stats.token_exchange_failures.fetch_add(1, Relaxed);
                }
                credential_refusal(e)
            })?;
        if injected.is_some() && seen.accept_encoding {
            // The answer is scrubbed of the credential as it streams: readable, as for masks.
            req.headers_mut().remove(header::ACCEPT_ENCODING);
        }
        let pooled = if own_http1 {
            None
        } else {
            let client = self
                .pooled_client(
                    service,
                    host.as_deref().unwrap_or_default(),
                    h2c,
                    injected.is_some(),
                )
                .map_err(|e| Refusal::new(StatusCode::BAD_GATEWAY, "upstream_tls", e))?;
            Some(client)
        };
        let sent = Instant::now();
        // Over TLS, the upstream is verified as the name the client asked for (its SNI, else
        // its Host) against the system roots and the service's extra CA.
        let ca = service.and_then(|s| s.upstream_ca.as_deref());
        let config = || match &inputs.authority {
            Some(a) => a.client_config_http1(ca).map_err(|e| e.to_string()),
            None => Err("TLS is not set up".to_string()),
        };
        let tls = self.tls.then(|| UpstreamTls {
            name: self
                .sni
                .as_deref()
                .unwrap_or_else(|| host_only(host.as_deref().unwrap_or_default())),
            ca,
            config: &config,
        });
        // Pinned in place: a timeout that took the call by value would move its future (a few
        // KiB) into itself and again into this one's state, on every call.
        let guarded = injected.is_some();
        let upstream_call = std::pin::pin!(async {
            match pooled {
                None => inputs
                    .upstreams
                    .send_http1(&self.http1, self.dst, self.netns, tls, guarded, req)
                    .await
                    .map_err(|e| failure(&e)),
                Some(client) => client
                    .request(req)
                    .await
                    .map(|r| r.map(UpstreamBody::Pooled))
                    .map_err(|e| failure(&e)),
            }
        });
        match tokio::time::timeout(inputs.cfg.idle_timeout, upstream_call).await {
            Ok(Ok(mut resp)) => {
                let took = sent.elapsed();
                inputs.metrics.upstream_in(took);
                if let Some(s) = span {
                    s.set("callgate.upstream.duration_ms", took.as_secs_f64() * 1000.0);
                }
                // What comes back passes the secret's scrubber: headers here, the body in
                // whichever stage reads it.
                if let Some(scrub) = injected {
                    scrub.scrub_headers(resp.headers_mut());
                    resp.extensions_mut().insert(Injected(scrub));
                }
                Ok(resp)
            }
            Ok(Err(Failure::Withheld(e))) => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "credential_withheld",
                e,
            )),
            Ok(Err(Failure::Upstream(e))) => {
                inputs.stats.upstream_errors.fetch_add(1, Relaxed);
                Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    e,
                ))
            }
            Err(_) => Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("no response within {:?}", inputs.cfg.idle_timeout),
            )),
        }
    }

    /// The request's bearer token if it verifies (from the connection's last verified token,
    /// as a rule saw it), or why there is none: what a `token_exchange` credential exchanges.
    async fn verified_token(
        &self,
        snap: &Snapshot,
        headers: &HeaderMap,
        uri: &http::Uri,
    ) -> Result<String, String> {
        let token = identity::bearer(headers, uri, &snap.identity)
            .map_err(|e| e.to_string())?
            .ok_or("the request carries no bearer token")?
            .to_string();
        let caller = self.identify(snap, Some(&token)).await;
        if caller.authenticated {
            return Ok(token);
        }
        Err(caller
            .token_error
            .clone()
            .unwrap_or_else(|| "the bearer token was not verified".into()))
    }

    /// The pooled client for this connection's destination, with TLS towards it when the
    /// client's TLS was terminated here. The error says why that TLS cannot be set up.
    fn pooled_client(
        &self,
        service: Option<&Service>,
        host: &str,
        h2c: bool,
        guarded: bool,
    ) -> Result<HttpClient, String> {
        let tls = if self.tls {
            let ca = service.and_then(|s| s.upstream_ca.clone());
            let name = self
                .sni
                .clone()
                .unwrap_or_else(|| host_only(host).to_string());
            let cfg = self
                .inputs
                .authority
                .as_ref()
                .ok_or("TLS is not set up")?
                .client_config(ca.as_deref())
                .map_err(|e| e.to_string())?;
            Some(((name, ca), cfg))
        } else {
            None
        };
        let key = UpstreamKey {
            dst: self.dst,
            netns: self.netns,
            tls: tls.as_ref().map(|(k, _)| k.clone()),
            h2c,
            owner: self.http1.owner(),
            guarded,
        };
        Ok(self.inputs.upstreams.client(&key, tls.map(|(_, c)| c)))
    }
}

/// The refusal for a call whose credential could not be had; the record keeps which.
fn credential_refusal(e: CredentialError) -> Refusal {
    let (status, error) = match &e {
        CredentialError::Unavailable(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, "credential_unavailable")
        }
        CredentialError::Exchange(ExchangeError::NoCallerToken(_)) => {
            (StatusCode::UNAUTHORIZED, "caller_token_required")
        }
        CredentialError::Exchange(ExchangeError::Refused { .. }) => {
            (StatusCode::BAD_GATEWAY, "token_exchange_refused")
        }
        CredentialError::Exchange(ExchangeError::Unavailable { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "token_exchange_unavailable",
        ),
    };
    Refusal::new(status, error, e.to_string())
}

/// Hop-by-hop headers belong to one connection and are not forwarded (RFC 9110 §7.6.1).
/// `Connection` comes first: the names it lists are hop-by-hop too.
static HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
];

/// Which of the fields the http stage looks at or edits a message carries, found in one pass
/// over its names: most messages carry few of them, and looking up or removing an absent name
/// still costs a hash and a probe.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    /// Which of [`HOP_BY_HOP`] are there.
    hop: [bool; HOP_BY_HOP.len()],
    te: bool,
    pub(super) host: bool,
    pub(super) content_length: bool,
    pub(super) accept_encoding: bool,
}

impl Seen {
    pub(super) fn of(h: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for k in h.keys() {
            // The length alone rules out most names, without comparing against each.
            match k.as_str().len() {
                2 => seen.te |= k == header::TE,
                4 => seen.host |= k == header::HOST,
                14 => seen.content_length |= k == header::CONTENT_LENGTH,
                15 => seen.accept_encoding |= k == header::ACCEPT_ENCODING,
                7 | 10 | 16..=19 => {
                    if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
                        seen.hop[i] = true;
                    }
                }
                _ => {}
            }
        }
        seen
    }

    pub(super) fn connection(&self) -> bool {
        self.hop[0]
    }
}

/// Drops the fields whose names hold `_`, as nginx does by default (`underscores_in_headers
/// off`). A server that reads fields as CGI variables (Puma, PHP behind FastCGI, WSGI behind
/// some servers) folds `-` and `_` into one: it reads `X_HTTP_Method_Override` as the method
/// override the gateway refuses, and `X_Api_Key` beside the credential the gateway injects as
/// `X-Api-Key`, where the gateway sees neither. A scan of the names on every request; a list
/// only when one has an `_`.
fn drop_underscored(h: &mut HeaderMap) {
    if !h.keys().any(|n| n.as_str().contains('_')) {
        return;
    }
    let names: Vec<http::HeaderName> = h
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for n in names {
        h.remove(n);
    }
}

/// Removes the hop-by-hop fields; what is left is then as [`Seen`] says.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) -> Seen {
    let mut seen = Seen::of(h);
    strip_seen(h, &mut seen);
    seen
}

/// [`strip_hop_by_hop`] for fields already seen; `seen` is kept true to what is left.
fn strip_seen(h: &mut HeaderMap, seen: &mut Seen) {
    let mut named_others = false;
    if seen.connection() {
        let named: Vec<header::HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| list_items(v.as_bytes()))
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"keep-alive")
                    && !t.eq_ignore_ascii_case(b"close")
            })
            .filter_map(|t| header::HeaderName::from_bytes(t).ok())
            .collect();
        named_others = !named.is_empty();
        for n in named {
            h.remove(n);
        }
    }
    // A message with a Transfer-Encoding is framed by it; its Content-Length is removed
    // before it is forwarded (RFC 9112 §6.3), or the next hop would frame it by that.
    if seen.hop[3] && std::mem::take(&mut seen.content_length) {
        h.remove(header::CONTENT_LENGTH);
    }
    for (n, p) in HOP_BY_HOP.iter().zip(&mut seen.hop) {
        if std::mem::take(p) {
            h.remove(n);
        }
    }
    // gRPC needs `te: trailers` end to end; any other TE is hop-by-hop.
    if seen.te
        && h.get(header::TE)
            .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        h.remove(header::TE);
    }
    if named_others {
        // Connection may name any field: what is left is looked at again.
        *seen = Seen::of(h);
    }
}

/// Why a call's upstream gave no answer.
enum Failure {
    /// The gateway kept the call's credential from the peer (see `intercept::peers`).
    Withheld(String),
    Upstream(String),
}

fn failure(e: &(dyn std::error::Error + 'static)) -> Failure {
    let mut src = Some(e);
    while let Some(inner) = src {
        if matches!(
            inner.downcast_ref::<ForwardError>(),
            Some(ForwardError::Withheld(_))
        ) {
            return Failure::Withheld(inner.to_string());
        }
        src = inner.source();
    }
    Failure::Upstream(error_chain(e))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header map of these fields, in order, repeated names appended.
    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|&(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = fields(&[
            ("connection", "Keep-Alive, X-Private , close,"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("content-type", "application/json"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert_eq!(
            grpc.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );

        // Without a Connection header, each hop-by-hop name is still found by itself.
        let mut bare = HeaderMap::new();
        bare.insert(header::TE, HeaderValue::from_static("gzip"));
        bare.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        bare.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut bare);
        let left: Vec<&str> = bare.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);

        // What is seen is what is left, also when Connection named a field the stage edits.
        let mut named = fields(&[
            ("connection", "content-length, x-a"),
            ("content-length", "3"),
            ("host", "a"),
            ("accept-encoding", "gzip"),
            ("content-encoding", "gzip"),
        ]);
        let seen = strip_hop_by_hop(&mut named);
        assert!(!seen.content_length && !seen.connection());
        assert!(seen.host && seen.accept_encoding);
        assert!(!named.contains_key(header::CONTENT_LENGTH));
    }
}
