//! OpenTelemetry traces of calls: one span per call (service, function, decision, rule,
//! policy commit, caller, workload, status, upstream latency), a child of the caller's
//! `traceparent` when it sent one, and the parent of the upstream's — the gateway's hop shows
//! in the user's own traces. Exported over OTLP/HTTP by the SDK's batch processor: a bounded
//! queue on its own thread, so a slow or absent collector costs spans, never calls.
use std::{fmt, time::Duration};

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry::{
    Context, KeyValue,
    propagation::TextMapPropagator,
    trace::{SpanKind, Status, TraceContextExt, Tracer},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider},
};

use crate::config::TelemetryConfig;
use crate::{call::Caller, util::outbound::Outbound};

/// Spans waiting for export at most; beyond it new ones are dropped.
const QUEUE: usize = 8192;

#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry export to {endpoint}: {reason}")]
pub struct TraceError {
    endpoint: String,
    reason: String,
}

/// The gateway's own HTTP client for the exporter. The batch processor exports from its own
/// thread, outside the runtime: each export runs on the runtime and is awaited from there.
struct Export {
    http: Outbound,
    rt: tokio::runtime::Handle,
}

impl fmt::Debug for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Export")
    }
}

#[async_trait::async_trait]
impl HttpClient for Export {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let http = self.http.clone();
        let request = request.map(|b| b.to_vec());
        let resp = self
            .rt
            .spawn(async move { http.send(request).await })
            .await??;
        Ok(resp.map(Bytes::from))
    }
}

pub struct CallTracer {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl CallTracer {
    /// Starts the exporter (call from within the runtime).
    pub fn start(cfg: &TelemetryConfig, http: Outbound) -> Result<Self, TraceError> {
        let err = |reason: String| TraceError {
            endpoint: cfg.endpoint.clone(),
            reason,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Export {
                http,
                rt: tokio::runtime::Handle::current(),
            })
            .with_endpoint(cfg.endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| err(e.to_string()))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        use opentelemetry::trace::TracerProvider;
        let tracer = provider.tracer("callgate");
        Ok(Self {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// A span for one call, continuing the caller's trace when its headers carry one.
    pub fn start_call(&self, headers: &HeaderMap, name: &str) -> CallSpan {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        let span = self
            .tracer
            .span_builder(name.to_string())
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &parent);
        CallSpan {
            cx: parent.with_span(span),
        }
    }

    /// The upstream's `traceparent`: this call's span as its parent (replacing the caller's).
    pub fn inject(&self, span: &CallSpan, headers: &mut HeaderMap) {
        self.propagator
            .inject_context(&span.cx, &mut HeaderInjector(headers));
    }

    /// Exports what is queued; at shutdown.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "OpenTelemetry export did not finish");
        }
    }
}

/// One call's span; ended by [`CallSpan::end`] (or, unended, when dropped).
pub struct CallSpan {
    cx: Context,
}

impl CallSpan {
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// Who called, in OpenTelemetry's terms where they exist.
    pub fn caller(&self, c: &Caller) {
        if let Some(s) = c.subject.as_deref().filter(|_| c.authenticated) {
            self.set("enduser.id", s.to_string());
        }
        if let Some(w) = &c.workload {
            if let Some(u) = &w.unit {
                self.set("callgate.workload.unit", u.clone());
            }
            if let Some(uid) = w.uid {
                self.set("callgate.workload.uid", i64::from(uid));
            }
            if let Some(pid) = w.pid {
                self.set("process.pid", i64::from(pid));
            }
            if let Some(comm) = &w.comm {
                self.set("process.executable.name", comm.clone());
            }
        }
    }

    /// Ends the span with the call's answer: HTTP status, and an error for a refusal.
    pub fn end(self, status: u16, refused: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(why) = refused {
            span.set_status(Status::error(why.to_string()));
        }
        span.end();
    }
}
