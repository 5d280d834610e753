//! The gauges read at scrape time: consumer-group pending entries and lag
//! (Redis XINFO GROUPS), dead-letter stream sizes (XLEN), whether Redis is
//! out of memory (INFO memory), and outbox
//! backlogs (unpublished outbox rows in Postgres). A source that fails is
//! counted in `saga_metrics_scrape_errors_total` and its gauges keep their
//! last value; the scrape itself still answers.

use crate::adapters::postgres::PgRoutes;
use crate::adapters::redis::{GroupStats, RedisBus};
use crate::domain::{DurationMs, Service};
use crate::runtime::{Clock, Store};

use super::{Metrics, SourceLabel};

/// Where the scrape-time gauges come from; `None` reads nothing (the
/// in-memory backend has only the counters). With PostgreSQL, the gauges
/// are read for the services it routes (a `serve` process: the ones it
/// serves) and only from their databases.
#[derive(Clone, Default)]
pub struct GaugeSources {
    pub postgres: Option<PgRoutes>,
    pub redis: Option<RedisBus>,
}

/// One service's numbers as the gauges read them (and `purchase-saga
/// status` prints them): `None` where the backend has no such source,
/// `Err` with the reason where reading failed.
#[derive(Debug, Clone, Default)]
pub struct ServiceReading {
    pub outbox_backlog: Option<Result<i64, String>>,
    /// The consumer group; `Ok(None)` while it does not exist yet. `None`
    /// without Redis or for a service that subscribes to nothing (no
    /// stream, no group, no dead letters).
    pub group: Option<Result<Option<GroupStats>, String>>,
    pub dead_letters: Option<Result<u64, String>>,
}

impl GaugeSources {
    /// Reads `service`'s numbers from every source there is.
    pub async fn read(&self, service: Service) -> ServiceReading {
        let mut reading = ServiceReading::default();
        if let Some(pg) = self.postgres.as_ref().filter(|pg| pg.serves(service)) {
            reading.outbox_backlog = Some(pg.outbox_backlog(service).await.map_err(|e| e.to_string()));
        }
        let Some(redis) = &self.redis else {
            return reading;
        };
        if service.subscriptions().is_empty() {
            return reading;
        }
        reading.group = Some(redis.group_stats(service).await.map_err(|e| e.to_string()));
        reading.dead_letters = Some(redis.dead_letter_count(service).await.map_err(|e| e.to_string()));
        reading
    }

    /// Sets every gauge from its source.
    pub(super) async fn refresh(&self, m: &Metrics) {
        let failed = |source: &'static str, error: String| {
            tracing::warn!(source, %error, "metrics: reading a gauge failed");
            m.scrape_errors.get_or_create(&SourceLabel { source }).inc();
        };
        if let Some(pg) = self.postgres.as_ref().filter(|pg| pg.serves(Service::Order)) {
            let grace = crate::runtime::RuntimeConfig::default().redrive.gap_max();
            let now = crate::runtime::SystemClock.now();
            match pg.overdue_sagas(now.plus(DurationMs(-grace.0))).await {
                Ok(n) => {
                    m.overdue.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => failed("postgres", e.to_string()),
            }
        }
        if let Some(pg) = &self.postgres {
            for (store, parts) in pg.databases() {
                let max = store.pool().options().get_max_connections();
                for part in parts {
                    m.pg_pool_max
                        .get_or_create(&super::PartLabel {
                            part: part.to_string(),
                        })
                        .set(i64::from(max));
                }
            }
        }
        if let Some(redis) = &self.redis {
            match redis.memory().await {
                Ok(memory) => {
                    m.redis_out_of_memory.set(i64::from(memory.out_of_memory()));
                }
                Err(e) => failed("redis", e.to_string()),
            }
        }
        let services = match &self.postgres {
            Some(pg) => pg.services(),
            None => Service::ALL.to_vec(),
        };
        for service in services {
            let label = Metrics::service(service);
            let reading = self.read(service).await;
            match reading.outbox_backlog {
                Some(Ok(n)) => {
                    m.outbox_backlog.get_or_create(&label).set(n);
                }
                Some(Err(e)) => failed("postgres", e),
                None => {}
            }
            match reading.group {
                Some(Ok(Some(g))) => {
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
                Some(Ok(None)) => {
                    m.consumer_pending.get_or_create(&label).set(0);
                }
                Some(Err(e)) => failed("redis", e),
                None => {}
            }
            match reading.dead_letters {
                Some(Ok(n)) => {
                    m.dead_letter_stream
                        .get_or_create(&label)
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Some(Err(e)) => failed("redis", e),
                None => {}
            }
        }
    }
}
