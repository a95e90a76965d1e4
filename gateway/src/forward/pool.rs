//! The forward stage for calls: HTTP clients to original destinations, pooled by destination and
//! TLS identity (server name and trusted CA), so that keep-alive and h2 multiplexing carry over
//! from one call to the next.
//!
//! The upstream is always the connection's original destination: the request's Host or
//! `:authority` only names the call; it never picks where the bytes go.
use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::Uri;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ForwardError;

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BodyError>;
type HttpClient = Client<Connector, ProxyBody>;

/// Where and how to reach an upstream; one pool per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    pub dst: SocketAddr,
    /// TLS towards the upstream: the server name to verify, and the extra CA bundle.
    pub tls: Option<(String, Option<PathBuf>)>,
    /// Plain-text HTTP/2 with prior knowledge (the client spoke h2c).
    pub h2c: bool,
}

/// The pools, created on first use of a key.
pub struct Upstreams {
    clients: Mutex<HashMap<UpstreamKey, HttpClient>>,
    connect_timeout: Duration,
    idle: Duration,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, idle: Duration) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            connect_timeout,
            idle,
        }
    }

    /// The client for `key`; `tls` supplies the client configuration when the key needs one.
    pub fn client(&self, key: &UpstreamKey, tls: Option<Arc<ClientConfig>>) -> HttpClient {
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = clients.get(key) {
            return c.clone();
        }
        let connector = Connector {
            dst: key.dst,
            tls: key
                .tls
                .as_ref()
                .zip(tls)
                .map(|((name, _), cfg)| (name.clone(), TlsConnector::from(cfg))),
            timeout: self.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(key.h2c)
            .build(connector);
        clients.insert(key.clone(), client.clone());
        client
    }
}

/// Connects to one destination, whatever the URI says.
#[derive(Clone)]
pub struct Connector {
    dst: SocketAddr,
    tls: Option<(String, TlsConnector)>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = ForwardError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ForwardError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = super::connect(this.dst, this.timeout).await?;
            let Some((name, connector)) = this.tls else {
                return Ok(TokioIo::new(UpstreamStream::Plain(tcp)));
            };
            let server = ServerName::try_from(name.clone()).map_err(|_| ForwardError::Tls {
                dst: this.dst,
                reason: format!("{name:?} is not a valid server name"),
            })?;
            let tls = tokio::time::timeout(this.timeout, connector.connect(server, tcp))
                .await
                .map_err(|_| ForwardError::ConnectTimeout {
                    dst: this.dst,
                    after: this.timeout,
                })?
                .map_err(|e| ForwardError::Tls {
                    dst: this.dst,
                    reason: format!("{name}: {e}"),
                })?;
            Ok(TokioIo::new(UpstreamStream::Tls(Box::new(tls))))
        })
    }
}

pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        match self {
            UpstreamStream::Plain(_) => Connected::new(),
            UpstreamStream::Tls(t) => {
                if t.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Connected::new().negotiated_h2()
                } else {
                    Connected::new()
                }
            }
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
