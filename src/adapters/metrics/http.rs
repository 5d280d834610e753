//! HTTP request metrics: every answer of the API (and of `/metrics`)
//! counted and timed by method, route template (`/orders/{id}`, never the
//! id itself: a bounded label set) and status code. A request no route
//! matches is labelled `route="unmatched"`.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `http_requests_total` | counter | `method`, `route`, `status` |
//! | `http_request_duration_seconds` | histogram | `method`, `route`, `status` |

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Metrics;

/// The labels of one request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: String,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Latencies from 0.5 ms to about 33 s (a `?wait=30` request), doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 17))
}

/// The request metrics of one process.
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    seconds: LatencyFamily,
}

impl HttpMetrics {
    /// Zeroed, registered in `registry`.
    pub fn register(registry: &mut Registry) -> HttpMetrics {
        let m = HttpMetrics {
            requests: Family::default(),
            seconds: LatencyFamily::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status code",
            m.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from receiving an HTTP request to its answer, by method, route template and status code",
            m.seconds.clone(),
        );
        m
    }

    /// Counts one answered request.
    pub fn observe(&self, labels: RequestLabels, seconds: f64) {
        self.seconds.get_or_create(&labels).observe(seconds);
        self.requests.get_or_create(&labels).inc();
    }
}

/// The middleware: times the request and counts its answer.
async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let labels = RequestLabels {
        method,
        route,
        status: response.status().as_str().to_string(),
    };
    metrics.http.observe(labels, started.elapsed().as_secs_f64());
    response
}

/// `api` with `GET /metrics` merged in and every request of both counted.
pub fn instrument(api: Router, metrics: Arc<Metrics>) -> Router {
    api.merge(super::router(metrics.clone()))
        .layer(axum::middleware::from_fn_with_state(metrics, track))
}
