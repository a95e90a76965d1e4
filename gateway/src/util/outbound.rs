//! The gateway's own outbound HTTP — OIDC discovery and key sets, token endpoints, approval
//! webhooks — as opposed to forwarded calls: hyper with rustls (system roots), bounded in time
//! and size. Its connections bear the gateway's mark ([`super::net::mark_gateways_own`]): a
//! governed workload listening where a provider should be (a loopback provider that is down)
//! never receives its client secret nor serves it keys.
use std::{future::Future, io, pin::Pin, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::{TcpSocket, TcpStream};

/// Largest answer read (a discovery document, a key set, a webhook's reply).
const MAX_ANSWER: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to a URI's host and port (each address it resolves to in turn) with the
/// gateway's mark on the socket.
#[derive(Clone)]
pub struct Marked {
    timeout: Duration,
}

impl tower_service::Service<Uri> for Marked {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host in URL"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let mut last = None;
            for addr in tokio::net::lookup_host((host.as_str(), port)).await? {
                let socket = if addr.is_ipv6() {
                    TcpSocket::new_v6()?
                } else {
                    TcpSocket::new_v4()?
                };
                super::net::mark_gateways_own(&socket, addr.is_ipv6())?;
                match tokio::time::timeout(timeout, socket.connect(addr)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        super::net::unmark(&stream, addr.is_ipv6())?;
                        return Ok(TokioIo::new(stream));
                    }
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {
                        last = Some(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connecting to {addr}: no handshake within {timeout:?}"),
                        ))
                    }
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host} has no address"))
            }))
        })
    }
}

#[derive(Clone)]
pub struct Outbound {
    client: Client<hyper_rustls::HttpsConnector<Marked>, Full<Bytes>>,
    /// The runtime it was made on (the daemon's): every exchange runs there, whichever
    /// thread asks, so a pooled connection's socket and driver belong to it. A data thread's
    /// runtime (an on-demand key set, a token exchange) ends at a stop before the stop's own
    /// last sends (a checkpoint to the witnesses), and a busy data thread would otherwise
    /// hold up the connections it drives for everyone.
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl Outbound {
    pub fn new(mut tls: rustls::ClientConfig) -> Self {
        // hyper-rustls sets ALPN itself, for the protocols it is told to speak.
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(Marked {
                timeout: CONNECT_TIMEOUT,
            });
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// A client trusting the system's root certificates (when there is no local CA to
    /// build one from: a gateway without a policy still sends checkpoints to witnesses).
    pub fn with_system_roots() -> Self {
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) =
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if added == 0 {
            tracing::warn!("no system root certificates found: https:// witnesses will fail");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = match rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b.with_root_certificates(roots).with_no_client_auth(),
            // The ring provider supports the default versions; this is not reached.
            Err(_) => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        Self::new(tls)
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>, OutboundError> {
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let client = self.client.clone();
        let exchange = async move {
            let resp = client
                .request(req)
                .await
                .map_err(|e| OutboundError::Http(chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| OutboundError::Http(e.to_string()))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        };
        let bounded = async {
            tokio::time::timeout(TIMEOUT, exchange)
                .await
                .map_err(|_| OutboundError::Timeout(TIMEOUT))?
        };
        let Some(rt) = &self.runtime else {
            return bounded.await;
        };
        // Cancelled with the asking call.
        match tokio_util::task::AbortOnDropHandle::new(rt.spawn(bounded)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(OutboundError::Http("the gateway is stopping".into())),
        }
    }
}

/// Whether the gateway's own client may fetch `url`: https, or plain http on loopback only
/// (test providers), since what it fetches — keys, tokens — must not be tampered with.
pub fn check_url(url: &str) -> Result<(), String> {
    let u = openidconnect::url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let loopback = match u.host() {
        Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match u.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be an https URL (http only on loopback, for tests)".into()),
    }
}

/// An error and its causes on one line: client errors hide the useful part in sources.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}
