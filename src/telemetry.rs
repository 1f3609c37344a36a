//! Logging, set up once at start. The level comes from `RUST_LOG` (default `info`). Every
//! line passes through [`RedactingWriter`], so a library that quotes the database URL in an
//! error cannot put its password in the logs; panics are redacted the same way.
use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{DatabaseUrl, LogFormat};

pub fn init(format: LogFormat, database_url: &DatabaseUrl) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log redirected to a file or collected by
    // a container runtime would be full of escape sequences. NO_COLOR (no-color.org) wins.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(RedactingWriter {
            url: database_url.clone(),
        });
    // `try_init` fails only when a subscriber is already set (tests): keep that one.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    redact_panics(database_url.clone());
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
