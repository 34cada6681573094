//! Logs and traces. Logs go to stderr, filtered by `HANGAR_LOG`. Traces are off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: then every
//! span of ours is exported over OTLP/HTTP (protobuf), a job is one trace, and its tasks carry
//! the job's W3C `traceparent` to whichever worker runs them (a NATS header on the fleet).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::{Error, Result};

const TRACEPARENT: &str = "traceparent";

/// Keeps the exporter alive; dropping it sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("exporting the last traces: {e}");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
}

/// Installs the global subscriber. `default_log` is the log filter when `HANGAR_LOG` is unset;
/// it does not limit what is traced.
pub fn init(service: &'static str, default_log: &str) -> Result<Telemetry> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_env("HANGAR_LOG").unwrap_or_else(|_| EnvFilter::new(default_log)),
        );
    let provider = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::invalid(format!("OpenTelemetry OTLP exporter: {e}")))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(
                std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned()),
            )
            .build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        // Our own spans only: the libraries' request-level spans would bury a job's shape.
        let ours = Targets::new()
            .with_target("hangar_shared", LevelFilter::INFO)
            .with_target("hangar_worker", LevelFilter::INFO)
            .with_target("hangar_coord", LevelFilter::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(ours)
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| Error::internal(format!("installing the log subscriber: {e}")))?;
    Ok(Telemetry { provider })
}

/// The W3C `traceparent` of `span`, when it is being traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span a `traceparent` names (a malformed one is ignored: the
/// span then starts its own trace, the work is not refused for it).
pub fn adopt(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!("cannot attach span to trace {value}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tracer_there_is_no_traceparent_to_carry() {
        let span = tracing::info_span!("job");
        assert_eq!(traceparent(&span), None);
        adopt(&span, Some("not a traceparent"));
    }
}
