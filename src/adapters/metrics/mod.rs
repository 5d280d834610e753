//! Prometheus metrics: a [`MetricsObserver`] that counts what the runtime
//! loops report (sagas, deliveries, handle latency, re-drives, dead
//! letters, conflict retries), gauges read from Postgres and Redis at
//! scrape time ([`GaugeSources`]), and the `GET /metrics` route that
//! renders both in the OpenMetrics text format.
//!
//! | metric | kind | labels | from |
//! |---|---|---|---|
//! | `saga_started_total` | counter | | first publish of ORDER_CREATED |
//! | `saga_completed_total` | counter | | first publish of ORDER_COMPLETED |
//! | `saga_failed_total` | counter | `step` | first publish of ORDER_FAILED |
//! | `saga_handle_duration_seconds` | histogram | `service` | `Handled::duration` |
//! | `saga_deliveries_total` | counter | `service`, `disposition` | `Handled` |
//! | `saga_outbox_republished_total` | counter | `service` | `Published` with `republish > 0`: the re-drive schedule (see below) |
//! | `saga_duration_seconds` | histogram | `outcome` | ORDER_CREATED's timestamp to the terminal event's, at the terminal event's first publish |
//! | `saga_build_info` | gauge | `version`, `commit` | always 1: which build answers |
//! | `http_requests_total`, `http_request_duration_seconds` | counter, histogram | `method`, `route`, `status` | every HTTP answer ([`http`]) |
//! | `saga_dead_letters_total` | counter | `service` | `Handled` dead-lettered |
//! | `saga_conflict_retries_total` | counter | `service` | `ConflictRetried` |
//! | `saga_outbox_quarantined_total` | counter | `service` | `Quarantined` (an undecodable outbox row set aside) |
//! | `saga_consumer_pending` | gauge | `service` | XINFO GROUPS `pending` |
//! | `saga_consumer_lag` | gauge | `service` | XINFO GROUPS `lag` (entries not yet delivered) |
//! | `saga_outbox_backlog` | gauge | `service` | outbox rows never published |
//! | `saga_dead_letter_stream_size` | gauge | `service` | XLEN of the dead-letter stream |
//! | `saga_metrics_scrape_errors_total` | counter | `source` | a gauge read that failed |
//! | `saga_overdue` | gauge | | PENDING orders past their deadline plus one capped re-drive gap (Postgres) |
//! | `saga_store_statements_total` | counter | `statement` | `PgStore::statement_counts` (statement coverage) |
//! | `saga_bus_commands_total` | counter | `command` | `RedisBus::command_counts` (statement coverage) |
//! | `saga_redis_out_of_memory` | gauge | | 1 while Redis's used memory is at or over `maxmemory` (INFO memory), else 0 |
//! | `saga_pg_pool_connections_max` | gauge | `part` | most connections of the pool of each service the gauges read (a `serve` process: the ones it serves): `--pg-pool-max-<part>`, else `--pg-pool-max`; the largest of the parts sharing a pool |
//!
//! The counters are per process (each replica process counts what its own
//! loops did; Prometheus sums them). A saga's terminal event is counted at
//! its first publish; a crash between publishing and recording it can
//! count it twice, as the outbox publishes it twice. The gauges describe
//! shared state: every process reports the same values.
//!
//! Re-drive is not a fault: the relay publishes an outbox entry again on a
//! backoff schedule until its saga is terminal (so a bus that lost entries
//! delays a saga and cannot strand it), and a saga still in flight when
//! its entries come due is re-published by design. So
//! `saga_outbox_republished_total` grows in a healthy system under load
//! (it was named `saga_redrives_total`, whose help read like a fault
//! signal; the old name is not kept: nothing outside this repository
//! scraped it). Read it as a fault only together with `saga_overdue` or a
//! growing `saga_consumer_lag`.
//!
//! `saga_duration_seconds` is observed by the process whose Order relay
//! publishes the terminal event, when that process also published the
//! order's ORDER_CREATED (it remembers the last [`SAGA_STARTS_KEPT`]
//! starts): with one Order replica process, every saga; with several, the
//! sagas whose two publishes one process made.

mod gauges;
pub mod http;
mod statements;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::{EventType, OrderId, Payload, Service, Timestamp};
use crate::runtime::{Disposition, Observer, RuntimeEvent};

pub use gauges::{GaugeSources, ServiceReading};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    service: &'static str,
    disposition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabel {
    part: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

type HistogramFamily = Family<ServiceLabel, Histogram, fn() -> Histogram>;
type OutcomeHistogramFamily = Family<OutcomeLabel, Histogram, fn() -> Histogram>;

/// Saga durations from 10 ms to about 11 minutes (past the 5-minute
/// deadline), doubling.
fn saga_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 17))
}

/// Saga starts remembered for `saga_duration_seconds`.
pub const SAGA_STARTS_KEPT: usize = 100_000;

/// The commit this binary was built from (`build.rs`), or `unknown`.
pub const BUILD_COMMIT: &str = env!("PURCHASE_SAGA_COMMIT");

/// ORDER_CREATED timestamps by order, oldest dropped first past
/// [`SAGA_STARTS_KEPT`].
#[derive(Default)]
struct SagaStarts {
    at: std::collections::BTreeMap<OrderId, Timestamp>,
    order: std::collections::VecDeque<OrderId>,
}

impl SagaStarts {
    fn started(&mut self, order: &OrderId, at: Timestamp) {
        if self.at.insert(order.clone(), at).is_none() {
            self.order.push_back(order.clone());
        }
        while self.order.len() > SAGA_STARTS_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.at.remove(&old);
            }
        }
    }

    fn ended(&mut self, order: &OrderId) -> Option<Timestamp> {
        // The queue entry goes when it reaches the front.
        self.at.remove(order)
    }
}

/// Handle latencies from 0.25 ms to about 4 s, doubling.
fn handle_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

/// The label of a disposition.
pub fn disposition_label(d: &Disposition) -> &'static str {
    match d {
        Disposition::Applied { .. } => "applied",
        Disposition::Duplicate => "duplicate",
        Disposition::Ignored => "ignored",
        Disposition::Retry { .. } => "retry",
        Disposition::DeadLettered { .. } => "dead_lettered",
    }
}

/// Every metric of the process and where its gauges come from.
pub struct Metrics {
    registry: Registry,
    sagas_started: Counter,
    sagas_completed: Counter,
    sagas_failed: Family<StepLabel, Counter>,
    handle_seconds: HistogramFamily,
    deliveries: Family<DeliveryLabels, Counter>,
    republished: Family<ServiceLabel, Counter>,
    saga_seconds: OutcomeHistogramFamily,
    saga_starts: std::sync::Mutex<SagaStarts>,
    build_info: Family<BuildLabels, Gauge>,
    /// Request counts and latencies of the HTTP API.
    pub http: http::HttpMetrics,
    dead_letters: Family<ServiceLabel, Counter>,
    conflict_retries: Family<ServiceLabel, Counter>,
    outbox_quarantined: Family<ServiceLabel, Counter>,
    consumer_pending: Family<ServiceLabel, Gauge>,
    consumer_lag: Family<ServiceLabel, Gauge>,
    outbox_backlog: Family<ServiceLabel, Gauge>,
    dead_letter_stream: Family<ServiceLabel, Gauge>,
    overdue: Gauge,
    redis_out_of_memory: Gauge,
    pg_pool_max: Family<PartLabel, Gauge>,
    scrape_errors: Family<SourceLabel, Counter>,
    sources: GaugeSources,
    /// One scrape at a time sets the gauges and renders them, so a render
    /// never mixes two scrapes' values.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    /// A registry with every metric at zero; `sources` feeds the gauges.
    pub fn new(sources: GaugeSources) -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            sagas_started: Counter::default(),
            sagas_completed: Counter::default(),
            sagas_failed: Family::default(),
            handle_seconds: HistogramFamily::new_with_constructor(handle_histogram),
            deliveries: Family::default(),
            republished: Family::default(),
            saga_seconds: OutcomeHistogramFamily::new_with_constructor(saga_histogram),
            saga_starts: std::sync::Mutex::default(),
            build_info: Family::default(),
            http: http::HttpMetrics::register(&mut registry),
            dead_letters: Family::default(),
            conflict_retries: Family::default(),
            outbox_quarantined: Family::default(),
            consumer_pending: Family::default(),
            consumer_lag: Family::default(),
            outbox_backlog: Family::default(),
            dead_letter_stream: Family::default(),
            overdue: Gauge::default(),
            redis_out_of_memory: Gauge::default(),
            pg_pool_max: Family::default(),
            scrape_errors: Family::default(),
            sources,
            scrape: tokio::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "saga_started",
            "Sagas started (first publish of ORDER_CREATED)",
            m.sagas_started.clone(),
        );
        registry.register(
            "saga_completed",
            "Sagas completed (first publish of ORDER_COMPLETED)",
            m.sagas_completed.clone(),
        );
        registry.register(
            "saga_failed",
            "Sagas failed, by failure step (first publish of ORDER_FAILED)",
            m.sagas_failed.clone(),
        );
        registry.register(
            "saga_handle_duration_seconds",
            "Time from taking up a delivery to its disposition, per consuming service",
            m.handle_seconds.clone(),
        );
        registry.register(
            "saga_deliveries",
            "Deliveries handled, by consuming service and disposition",
            m.deliveries.clone(),
        );
        registry.register(
            "saga_outbox_republished",
            "Outbox entries published again on the re-drive schedule, by emitting service. Expected under \
             load (an entry is re-published on a backoff until its saga is terminal); a fault only \
             together with saga_overdue or a growing saga_consumer_lag",
            m.republished.clone(),
        );
        registry.register(
            "saga_duration_seconds",
            "Sagas from ORDER_CREATED to ORDER_COMPLETED or ORDER_FAILED (event timestamps), by outcome; \
             observed where one process published both",
            m.saga_seconds.clone(),
        );
        registry.register(
            "saga_build_info",
            "Always 1; the labels say which build answers (crate version, git commit)",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: BUILD_COMMIT,
            })
            .set(1);
        registry.register(
            "saga_dead_letters",
            "Deliveries moved to the dead-letter stream, by consuming service",
            m.dead_letters.clone(),
        );
        registry.register(
            "saga_conflict_retries",
            "Store transactions retried after a conflict, by service",
            m.conflict_retries.clone(),
        );
        registry.register(
            "saga_outbox_quarantined",
            "Outbox rows set aside because they no longer decode (never published; an operator must look), \
             by emitting service",
            m.outbox_quarantined.clone(),
        );
        registry.register(
            "saga_consumer_pending",
            "Entries delivered to the service's consumer group and not acknowledged (read at scrape)",
            m.consumer_pending.clone(),
        );
        registry.register(
            "saga_consumer_lag",
            "Entries of the service's stream not yet delivered to its group (read at scrape)",
            m.consumer_lag.clone(),
        );
        registry.register(
            "saga_outbox_backlog",
            "Outbox entries never published, by emitting service (read at scrape)",
            m.outbox_backlog.clone(),
        );
        registry.register(
            "saga_dead_letter_stream_size",
            "Entries in the service's dead-letter stream (read at scrape)",
            m.dead_letter_stream.clone(),
        );
        registry.register(
            "saga_overdue",
            "Sagas still PENDING past their deadline plus one capped re-drive gap: stuck (read at scrape)",
            m.overdue.clone(),
        );
        registry.register_collector(Box::new(statements::StatementCollector(m.sources.clone())));
        registry.register(
            "saga_redis_out_of_memory",
            "1 while Redis's used memory is at or over maxmemory: publishes and dead letters are refused \
             until acknowledged entries are trimmed (read at scrape)",
            m.redis_out_of_memory.clone(),
        );
        registry.register(
            "saga_pg_pool_connections_max",
            "Most connections of the PostgreSQL pool that holds the part (each service this process \
             serves); parts sharing a database share a pool, sized by the largest of their sizes",
            m.pg_pool_max.clone(),
        );
        registry.register(
            "saga_metrics_scrape_errors",
            "Gauge reads that failed at scrape time, by source",
            m.scrape_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Reads the gauges from their sources and renders every metric.
    pub async fn render(&self) -> String {
        let _one_at_a_time = self.scrape.lock().await;
        self.sources.refresh(self).await;
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        debug_assert!(out.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        out
    }

    fn starts(&self) -> std::sync::MutexGuard<'_, SagaStarts> {
        self.saga_starts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Observes the saga's duration if this process saw it start.
    fn saga_ended(&self, event: &crate::domain::Event, outcome: &'static str) {
        let Some(started) = self.starts().ended(&event.order_id) else {
            return;
        };
        let seconds = event.timestamp.since(started).0.max(0) as f64 / 1000.0;
        self.saga_seconds
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
    }

    fn service(service: Service) -> ServiceLabel {
        ServiceLabel {
            service: service.slug(),
        }
    }

    fn record(&self, event: &RuntimeEvent<'_>) {
        match event {
            RuntimeEvent::Handled {
                service,
                disposition,
                duration,
                ..
            } => {
                let label = Self::service(*service);
                self.handle_seconds
                    .get_or_create(&label)
                    .observe(duration.as_secs_f64());
                self.deliveries
                    .get_or_create(&DeliveryLabels {
                        service: label.service,
                        disposition: disposition_label(disposition),
                    })
                    .inc();
                if matches!(disposition, Disposition::DeadLettered { .. }) {
                    self.dead_letters.get_or_create(&label).inc();
                }
            }
            RuntimeEvent::Published {
                service,
                event,
                republish,
            } => {
                if *republish > 0 {
                    self.republished.get_or_create(&Self::service(*service)).inc();
                    return;
                }
                match &event.payload {
                    Payload::OrderCreated(_) => {
                        self.sagas_started.inc();
                        self.starts().started(&event.order_id, event.timestamp);
                    }
                    Payload::OrderCompleted(_) => {
                        self.sagas_completed.inc();
                        self.saga_ended(event, "completed");
                    }
                    Payload::OrderFailed(f) => {
                        let step = StepLabel {
                            step: f.failed_step.as_str(),
                        };
                        self.sagas_failed.get_or_create(&step).inc();
                        self.saga_ended(event, "failed");
                    }
                    _ => debug_assert!(
                        !matches!(
                            event.event_type(),
                            EventType::OrderCreated | EventType::OrderCompleted | EventType::OrderFailed
                        ),
                        "every saga boundary event is counted above"
                    ),
                }
            }
            RuntimeEvent::ConflictRetried { service, .. } => {
                self.conflict_retries
                    .get_or_create(&Self::service(*service))
                    .inc();
            }
            RuntimeEvent::Quarantined { service, .. } => {
                self.outbox_quarantined
                    .get_or_create(&Self::service(*service))
                    .inc();
            }
            RuntimeEvent::Committed { .. } | RuntimeEvent::RelayWoken { .. } => {}
        }
    }
}

/// The [`Observer`] that feeds [`Metrics`]. Never blocks: counters are
/// atomics, label lookups a short read lock.
pub struct MetricsObserver(pub Arc<Metrics>);

impl Observer for MetricsObserver {
    fn observe(&self, event: RuntimeEvent<'_>) {
        self.0.record(&event);
    }
}

/// `GET /metrics` over `metrics`, to merge into the API's router.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(metrics)
}

/// Every metric in the OpenMetrics text format (Prometheus scrape).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Every metric in the OpenMetrics text format", body = String, content_type = "application/openmetrics-text"))
)]
pub async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    let body = metrics.render().await;
    (StatusCode::OK, [(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], body).into_response()
}
