//! Logging and tracing, set up once at start. The level comes from `RUST_LOG` (default
//! `info`). Every line passes through [`RedactingWriter`], so a library that quotes the
//! database URL in an error cannot put its password in the logs; panics are redacted the
//! same way.
//!
//! OpenTelemetry traces are off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `OTEL_SDK_DISABLED=true` keeps them off.
//! Then tracing's spans go to that collector over OTLP/gRPC (`opentelemetry-otlp`, tonic),
//! with the SDK's own variables honoured (`OTEL_SERVICE_NAME`, default `invitations`;
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_{TIMEOUT,HEADERS,COMPRESSION}`). Only the `grpc` protocol is built in:
//! another `OTEL_EXPORTER_OTLP_PROTOCOL` stops the start instead of exporting nowhere. What is
//! exported: the `rpc` span of each call (`middleware.rs`, the RPC semantic conventions,
//! continuing the caller's W3C `traceparent`) and, under it, a span per database operation
//! (`store/mod.rs`, at `debug`, so they cost nothing while traces are off).
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{DatabaseUrl, LogFormat};

/// The name the service reports itself under when `OTEL_SERVICE_NAME` does not say.
const SERVICE_NAME: &str = "invitations";

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: the middleware then continues callers' traces and names the
/// span by the RPC conventions. Off, it does neither (nothing would read them).
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The trace context of the current span (an RPC's, in a handler), while traces are
/// exported; `None` otherwise. Events carry it (`EventRecord::trace`).
pub fn current_trace() -> Option<crate::domain::TraceContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if !tracing_enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    if !span.is_valid() {
        return None;
    }
    crate::domain::TraceContext::new(
        span.trace_id().to_bytes(),
        span.span_id().to_bytes(),
        span.is_sampled(),
    )
}

/// What [`init`] started; [`Telemetry::shutdown`] exports the spans still buffered.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter: called as the process ends, after
    /// the server has stopped.
    pub async fn shutdown(self) {
        let Some(provider) = self.traces else { return };
        // The exporter's thread waits for its batch's export, which the runtime drives.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "traces not all exported at shutdown"),
            Err(error) => tracing::warn!(%error, "traces not all exported at shutdown"),
        }
    }
}

/// A setting of the `OTEL_*` variables that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0}: only grpc is built in (the collector's port 4317)")]
    Protocol(String),
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(String),
}

/// Whether the environment asks for traces.
fn traces_wanted() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED")
        .is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer provider for the `OTEL_*` settings, exporting in batches from a task of the
/// current Tokio runtime's tonic client.
fn tracer_provider() -> Result<SdkTracerProvider, TelemetryError> {
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && !protocol.trim().is_empty()
        {
            if protocol.trim() != "grpc" {
                return Err(TelemetryError::Protocol(protocol));
            }
            break;
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    let detected = opentelemetry_sdk::Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|name| name.to_string())
        .filter(|name| !name.starts_with("unknown_service"));
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(named.unwrap_or_else(|| SERVICE_NAME.to_owned()))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Logs to stderr as `format` says, and exports traces when the environment asks for them
/// (see the module's documentation). Must run inside the Tokio runtime.
pub fn init(format: LogFormat, database_url: &DatabaseUrl) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log redirected to a file or collected by
    // a container runtime would be full of escape sequences. NO_COLOR (no-color.org) wins.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(RedactingWriter {
            url: database_url.clone(),
        });
    let lines = match format {
        LogFormat::Pretty => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let traces = traces_wanted().then(tracer_provider).transpose()?;
    // The service's own spans only: the `rpc` span (info) and the database's (debug).
    let exported = traces.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SERVICE_NAME))
            .with_filter(Targets::new().with_target("invitations", tracing::Level::DEBUG))
    });
    // `try_init` fails only when a subscriber is already set (tests): keep that one.
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(exported)
        .try_init()
        .is_ok();
    TRACING.store(installed && traces.is_some(), Ordering::Relaxed);
    redact_panics(database_url.clone());
    Ok(Telemetry { traces })
}

/// Panic messages on stderr with the database password masked (with a backtrace when
/// `RUST_BACKTRACE` asks for one, as the default hook does).
fn redact_panics(url: DatabaseUrl) {
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let message = url.redact(&info.to_string());
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
            _ => String::new(),
        };
        eprintln!("thread '{name}' {message}{backtrace}");
    }));
}

/// stderr, with the database password masked in every line.
#[derive(Clone)]
struct RedactingWriter {
    url: DatabaseUrl,
}

impl<'a> MakeWriter<'a> for RedactingWriter {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        Line {
            url: &self.url,
            buffer: Vec::new(),
        }
    }
}

/// One log line, written (redacted) to stderr when dropped: the formatter writes a line in
/// several pieces, and a password may straddle two of them.
struct Line<'a> {
    url: &'a DatabaseUrl,
    buffer: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let _ = io::stderr()
            .lock()
            .write_all(self.url.redact(&text).as_bytes());
    }
}
