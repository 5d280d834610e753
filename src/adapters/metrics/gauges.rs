//! The gauges read at scrape time: consumer-group pending entries and lag
//! (Redis XINFO GROUPS), dead-letter stream sizes (XLEN), and outbox
//! backlogs (unpublished outbox rows in Postgres). A source that fails is
//! counted in `saga_metrics_scrape_errors_total` and its gauges keep their
//! last value; the scrape itself still answers.

use crate::adapters::postgres::PgStore;
use crate::adapters::redis::RedisBus;
use crate::domain::Service;

use super::{Metrics, SourceLabel};

/// Where the scrape-time gauges come from; `None` reads nothing (the
/// in-memory backend has only the counters).
#[derive(Clone, Default)]
pub struct GaugeSources {
    pub postgres: Option<PgStore>,
    pub redis: Option<RedisBus>,
}

impl GaugeSources {
    /// Sets every gauge from its source.
    pub(super) async fn refresh(&self, m: &Metrics) {
        let failed = |source: &'static str, error: String| {
            tracing::warn!(source, %error, "metrics: reading a gauge failed");
            m.scrape_errors.get_or_create(&SourceLabel { source }).inc();
        };
        for service in Service::ALL {
            let label = Metrics::service(service);
            if let Some(pg) = &self.postgres {
                match pg.outbox_backlog(service).await {
                    Ok(n) => {
                        m.outbox_backlog.get_or_create(&label).set(n);
                    }
                    Err(e) => failed("postgres", e.to_string()),
                }
            }
            let Some(redis) = &self.redis else { continue };
            if service.subscriptions().is_empty() {
                // No stream, no group, no dead letters.
                continue;
            }
            match redis.group_stats(service).await {
                Ok(Some(g)) => {
                    m.consumer_pending
                        .get_or_create(&label)
                        .set(i64::try_from(g.pending).unwrap_or(i64::MAX));
                    if let Some(lag) = g.lag {
                        m.consumer_lag
                            .get_or_create(&label)
                            .set(i64::try_from(lag).unwrap_or(i64::MAX));
                    }
                }
                // The group does not exist yet: nothing was read or pending.
                Ok(None) => {
                    m.consumer_pending.get_or_create(&label).set(0);
                }
                Err(e) => failed("redis", e.to_string()),
            }
            match redis.dead_letter_count(service).await {
                Ok(n) => {
                    m.dead_letter_stream
                        .get_or_create(&label)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => failed("redis", e.to_string()),
            }
        }
    }
}
