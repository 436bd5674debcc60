//! Traces over OTLP, for every Busgate process: the `[telemetry]` settings (and the standard
//! `OTEL_*` variables), the one process-wide tracer they make, and the W3C `traceparent` in
//! both directions (a remote parent from a header, a header from a span).
//!
//! Nothing is traced until [`init`] found an endpoint: the request path asks [`tracer`], one
//! atomic load, and does no other work (no span, no allocation) when it answers `None`.
//! When it is on, spans go to a bounded queue that a background thread exports in batches
//! ([`export`] sends them through the process's tokio runtime); a full queue drops spans, and a
//! request never waits for the exporter.

pub mod export;
pub mod span;

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use serde::{Deserialize, Serialize};

pub use opentelemetry::trace::{Link, Span, SpanKind, Status, Tracer};
pub use opentelemetry::{Context, KeyValue, Value};
pub use opentelemetry_sdk::trace::Span as SdkSpan;

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL (`/v1/traces` is appended).
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full traces URL, used as it is.
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_SERVICE_NAME`.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// `[telemetry]`: where traces go. Off unless an endpoint is set here or in the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP traces URL (`http://collector:4318/v1/traces`). When empty,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`).
    pub otlp_endpoint: String,
    /// The `service.name` of this process's spans; `OTEL_SERVICE_NAME`, then the role's
    /// default (`busgate-gateway`, `busgate-worker`) when empty.
    pub service_name: String,
    /// The share of new traces (no sampled parent) that are recorded, 0 to 1. A client's
    /// `traceparent` decides for its own trace (parent-based sampling). When absent,
    /// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` decide (default: parent-based, all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_ratio: Option<f64>,
    /// Spans that wait for export at most; past it new spans are dropped (never a wait).
    pub max_queue: usize,
    /// How long one export may take before it is abandoned.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: String::new(),
            service_name: String::new(),
            sample_ratio: None,
            max_queue: 8192,
            export_timeout: Duration::from_secs(5),
        }
    }
}

impl TelemetrySettings {
    /// Refuses a ratio outside 0..=1, an endpoint that is not http(s), an empty queue.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if let Some(r) = self.sample_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(crate::Error::invalid(
                    "telemetry.sample_ratio",
                    format!("{r} is not between 0 and 1"),
                ));
            }
        }
        let endpoint = self.otlp_endpoint.as_str();
        let http = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !http {
            return Err(crate::Error::invalid(
                "telemetry.otlp_endpoint",
                "must be an http:// or https:// url",
            ));
        }
        if self.max_queue == 0 {
            return Err(crate::Error::invalid(
                "telemetry.max_queue",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// The traces URL in force: the setting, else the environment's.
    pub fn endpoint(&self) -> Option<String> {
        if !self.otlp_endpoint.is_empty() {
            return Some(self.otlp_endpoint.clone());
        }
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        env(ENV_TRACES_ENDPOINT).or_else(|| {
            env(ENV_ENDPOINT).map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        })
    }
}

/// The most spans one export sends.
const MAX_BATCH: usize = 4096;

/// The process's tracer, once [`init`] made one.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The tracer, or `None` when traces are off: the one check the request path makes.
#[inline]
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Keeps the exporter running; [`Telemetry::shutdown`] exports what is queued and stops it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by the export timeout) and stops the exporter.
    pub async fn shutdown(self) {
        // The SDK's shutdown blocks until its batch thread has exported, which it does on this
        // runtime: so it waits on the blocking pool, never on a runtime thread.
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}

/// Starts exporting traces when an endpoint is configured (else `Ok(None)`, and nothing is
/// traced). `default_service` names the process's role. Needs a tokio runtime: exports run
/// on it.
pub fn init(
    settings: &TelemetrySettings,
    default_service: &str,
) -> Result<Option<Telemetry>, crate::Error> {
    settings.validate()?;
    let Some(endpoint) = settings.endpoint() else {
        return Ok(None);
    };
    let client = export::Client::new(settings.export_timeout, &endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(endpoint.clone())
        .with_timeout(settings.export_timeout)
        .build()
        .map_err(|e| crate::Error::invalid("telemetry.otlp_endpoint", e.to_string()))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(settings.max_queue)
        // Large batches: every export is an HTTP request and a protobuf message of its own,
        // so fewer, larger ones cost less per span; half the queue, so that spans still find
        // room while a batch is out.
        .with_max_export_batch_size((settings.max_queue / 2).clamp(1, MAX_BATCH))
        .with_scheduled_delay(Duration::from_millis(500))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let service = if !settings.service_name.is_empty() {
        settings.service_name.clone()
    } else {
        std::env::var(ENV_SERVICE_NAME)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| default_service.to_owned())
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.clone())
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource);
    if let Some(ratio) = settings.sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    let provider = builder.build();
    if TRACER.set(provider.tracer("busgate")).is_err() {
        tracing::debug!("telemetry already initialised; keeping the first tracer");
    }
    tracing::info!(
        endpoint = %export::redact(&endpoint),
        service,
        "exporting traces over OTLP"
    );
    Ok(Some(Telemetry { provider }))
}

/// A `traceparent` header value held inline (`00-<trace>-<span>-<flags>`, 55 bytes): made
/// from a span without an allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Traceparent([u8; 55]);

impl Traceparent {
    /// The header of `context`.
    pub fn of(context: &SpanContext) -> Self {
        let mut out = [b'0'; 55];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut at = 3;
        out[2] = b'-';
        for b in context.trace_id().to_bytes() {
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 0xf)];
            at += 2;
        }
        out[at] = b'-';
        at += 1;
        for b in context.span_id().to_bytes() {
            out[at] = HEX[usize::from(b >> 4)];
            out[at + 1] = HEX[usize::from(b & 0xf)];
            at += 2;
        }
        out[at] = b'-';
        let flags = context.trace_flags().to_u8();
        out[at + 1] = HEX[usize::from(flags >> 4)];
        out[at + 2] = HEX[usize::from(flags & 0xf)];
        Traceparent(out)
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    /// The trace id part (32 hex digits).
    pub fn trace_id(&self) -> &str {
        self.as_str().get(3..35).unwrap_or("")
    }
}

impl std::fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The trace id of a `traceparent` (for log lines), or "".
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.get(3..35).unwrap_or("")
}

/// The span id of a `traceparent` (for log lines), or "".
pub fn span_id(traceparent: &str) -> &str {
    traceparent.get(36..52).unwrap_or("")
}

/// The span context a valid version-00 `traceparent` names, as a remote parent. Read at
/// fixed positions, digit by digit (it is read once per span, on every traced request).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let b = traceparent.as_bytes();
    if b.len() != 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex::<16>(&b[3..35])?);
    let span_id = SpanId::from_bytes(hex::<8>(&b[36..52])?);
    let [flags] = hex::<1>(&b[53..55])?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & 1),
        true,
        TraceState::NONE,
    );
    context.is_valid().then_some(context)
}

/// `N` bytes from `2 × N` lower-case hex digits.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    if digits.len() != 2 * N {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// A context whose parent is the span `traceparent` names (an empty context, a new trace,
/// when it names none).
pub fn parent(traceparent: &str) -> Context {
    match parse(traceparent) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    }
}

/// A context whose parent is `span`.
pub fn child_of(span: &SdkSpan) -> Context {
    Context::new().with_remote_span_context(span.span_context().clone())
}

/// The `traceparent` that makes a span a child of `span`.
pub fn traceparent_of(span: &SdkSpan) -> Traceparent {
    Traceparent::of(span.span_context())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip() {
        let text = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse(text).expect("valid");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(Traceparent::of(&context).as_str(), text);
        assert_eq!(
            Traceparent::of(&context).trace_id(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(trace_id(text), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span_id(text), "b7ad6b7169203331");
        assert_eq!(span_id("00-x"), "");
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        assert!(!parse(unsampled).expect("valid").is_sampled());
    }

    #[test]
    fn bad_traceparents_name_no_parent() {
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0g",
            "00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692-3331-01",
            "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn settings_are_validated() {
        let mut s = TelemetrySettings::default();
        assert!(s.validate().is_ok());
        s.sample_ratio = Some(1.5);
        assert!(s.validate().is_err());
        s.sample_ratio = Some(0.5);
        s.otlp_endpoint = "collector:4318".into();
        assert!(s.validate().is_err());
        s.otlp_endpoint = "http://collector:4318/v1/traces".into();
        assert!(s.validate().is_ok());
        assert_eq!(
            s.endpoint().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        s.max_queue = 0;
        assert!(s.validate().is_err());
    }
}
