//! Logs on stderr (human or JSON, filtered by `RUST_LOG`, `info,sqlx=warn` by
//! default) and the runtime [`Observer`] that turns what the loops do into
//! log lines.

use tracing_subscriber::EnvFilter;

use crate::runtime::{Disposition, Observer, RuntimeEvent};

use super::LogFormat;

/// Installs the global subscriber; a second call is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
            | RuntimeEvent::Quarantined { .. } => {}
        }
    }
}
