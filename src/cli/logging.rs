//! Logs on stderr (human or JSON, filtered by `RUST_LOG`, `info,sqlx=warn` by
//! default) and the runtime [`Observer`] that turns what the loops do into
//! log lines.
//!
//! The human format is coloured only when stderr is a terminal and
//! `NO_COLOR` is unset (<https://no-color.org>): a log piped to a file or
//! another program carries no escape codes. JSON is never coloured.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::runtime::{Disposition, Observer, RuntimeEvent};

use super::LogFormat;

/// Whether the human format may colour its output: stderr is a terminal
/// and `NO_COLOR` is unset or empty.
pub fn colour_allowed(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let ansi = format == LogFormat::Human
        && colour_allowed(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Logs dead letters (warn), retries and conflicts (debug), handled events
/// (trace).
pub struct TracingObserver;

impl Observer for TracingObserver {
    fn observe(&self, event: RuntimeEvent<'_>) {
        match event {
            RuntimeEvent::Handled {
                service,
                consumer,
                event,
                attempt,
                disposition,
                duration,
            } => {
                let duration_us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
                let event_type = event.map(|e| e.event_type().as_str()).unwrap_or("<undecodable>");
                let order = event.map(|e| e.order_id.to_string()).unwrap_or_default();
                match disposition {
                    Disposition::DeadLettered { reason } => {
                        tracing::warn!(%service, consumer, event_type, order, attempt, reason, "dead-lettered")
                    }
                    Disposition::Retry { reason } => {
                        tracing::debug!(%service, consumer, event_type, order, attempt, reason, "left for retry")
                    }
                    other => {
                        tracing::trace!(%service, consumer, event_type, order, ?other, duration_us, "handled")
                    }
                }
            }
            RuntimeEvent::ConflictRetried { service, attempt } => {
                tracing::debug!(%service, attempt, "transaction conflict retried")
            }
            // The relay logs it (warn) where it happens.
            RuntimeEvent::Committed { .. }
            | RuntimeEvent::Published { .. }
            | RuntimeEvent::Quarantined { .. }
            | RuntimeEvent::RelayWoken { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour_allowed;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_allowed(true, None));
        assert!(
            colour_allowed(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }
}
