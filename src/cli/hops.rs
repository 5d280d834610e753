//! Where a saga's latency goes, hop by hop, for `purchase-saga bench`.
//!
//! A saga is a chain of hops: a participant's step commits an event to its
//! outbox, the relay publishes it, a subscriber's consumer takes it up and
//! applies it (the next step). [`Hops`] observes the runtime and splits each
//! hop into three spans:
//!
//! - **step -> publish**: from the event's own timestamp (the emitting
//!   step's clock reading, so it includes that step's commit) to the relay
//!   handing it to the bus; millisecond resolution, as the timestamp is.
//! - **publish -> take-up**: from the publish to a consumer taking the
//!   delivery up (the observer's `Handled` minus the handling's duration).
//! - **apply**: the consumer's handling, transaction and conflict retries
//!   included (`Handled::duration`).
//!
//! The first two spans overlap the previous hop's apply by that step's
//! commit (the step reads its clock before it commits), so the spans of a
//! saga add up to a little more than its latency.
//!
//! First deliveries and first publishes only: a redelivery or a re-drive
//! would measure the visibility timeout or the re-drive schedule, not a hop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{Event, EventId, Service};

/// Collects the spans of every hop of a level; see the module docs.
#[derive(Default)]
pub struct Hops(Mutex<Spans>);

#[derive(Default)]
struct Spans {
    published: BTreeMap<EventId, Instant>,
    /// Subscribers whose hop of an event was counted: a re-driven
    /// publish of the event is a new bus entry (a first delivery again),
    /// which would otherwise count as a hop as long as its re-drive round.
    counted: BTreeSet<(EventId, Service)>,
    step_to_publish: Vec<Duration>,
    publish_to_take_up: Vec<Duration>,
    apply: Vec<Duration>,
}

/// The `p`-th percentile of `sorted` (zero when empty), its index rounded
/// up: the bench's and the demo's
/// order-to-terminal latencies and the hop spans alike.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    assert!(p <= 100, "a percentile is at most 100");
    permille(sorted, p * 10)
}

/// The quantile `pm / 1000` of `sorted` (zero when empty), its index
/// rounded up, as [`percentile`]: `permille(_, 999)` is p99.9. Exact (every
/// sample is kept), so no histogram's bucket error.
pub fn permille(sorted: &[Duration], pm: usize) -> Duration {
    assert!(pm <= 1000, "a quantile is at most 1000 per mille");
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * pm).div_ceil(1000)]
}

/// Mean and p99 of one span over a level's hops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub mean: Duration,
    pub p99: Duration,
    pub samples: usize,
}

impl Span {
    fn of(mut spans: Vec<Duration>) -> Span {
        spans.sort();
        let samples = spans.len();
        let total: Duration = spans.iter().sum();
        Span {
            mean: total / u32::try_from(samples.max(1)).unwrap_or(u32::MAX),
            p99: percentile(&spans, 99),
            samples,
        }
    }
}

/// The three spans of a level (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HopSummary {
    pub step_to_publish: Span,
    pub publish_to_take_up: Span,
    pub apply: Span,
}

impl HopSummary {
    /// One line for the bench's output.
    pub fn line(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let show = |s: &Span| format!("{:.1} / {:.1}", ms(s.mean), ms(s.p99));
        format!(
            "hops (mean / p99 ms): step -> publish {}, publish -> take-up {}, apply {} ({} hops)",
            show(&self.step_to_publish),
            show(&self.publish_to_take_up),
            show(&self.apply),
            self.apply.samples
        )
    }
}

impl Hops {
    /// The relay published `event` for the first time, `now_ms` being the
    /// wall clock in the event timestamps' unit.
    pub fn published(&self, event: &Event, now_ms: i64) {
        let mut spans = self.0.lock().expect("hops mutex");
        let since_step = u64::try_from(now_ms - event.timestamp.0).unwrap_or(0);
        spans.step_to_publish.push(Duration::from_millis(since_step));
        spans.published.insert(event.event_id, Instant::now());
    }

    /// A consumer of `service` finished its first delivery of `event_id`
    /// after handling it for `duration`. Only the first such delivery per
    /// subscriber counts (see [`Spans::counted`]).
    pub fn handled(&self, service: Service, event_id: EventId, duration: Duration) {
        let now = Instant::now();
        let mut spans = self.0.lock().expect("hops mutex");
        if let Some(published) = spans.published.get(&event_id).copied() {
            if !spans.counted.insert((event_id, service)) {
                return;
            }
            let taken_up = now.checked_sub(duration).unwrap_or(now);
            spans
                .publish_to_take_up
                .push(taken_up.saturating_duration_since(published));
            spans.apply.push(duration);
        }
    }

    /// The spans since the last call; starts afresh.
    pub fn take(&self) -> HopSummary {
        let spans = std::mem::take(&mut *self.0.lock().expect("hops mutex"));
        HopSummary {
            step_to_publish: Span::of(spans.step_to_publish),
            publish_to_take_up: Span::of(spans.publish_to_take_up),
            apply: Span::of(spans.apply),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_round_their_index_up_and_p99_9_sees_the_last_sample_of_a_thousand() {
        let ms: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(
            percentile(&ms, 50),
            Duration::from_millis(501),
            "index 499.5 rounds up"
        );
        assert_eq!(percentile(&ms, 99), Duration::from_millis(991));
        assert_eq!(
            permille(&ms, 999),
            Duration::from_millis(1000),
            "index 998.001 rounds up"
        );
        assert_eq!(permille(&ms, 990), percentile(&ms, 99));
        assert_eq!(permille(&ms[..1], 999), Duration::from_millis(1));
        assert_eq!(permille(&[], 999), Duration::ZERO);
        // Of 2001 samples, p99.9 is the 1999th smallest (index 1998), not the
        // maximum: one stall in 2001 orders shows only past p99.9.
        let mut many: Vec<Duration> = vec![Duration::from_millis(5); 2000];
        many.push(Duration::from_secs(2));
        assert_eq!(permille(&many, 999), Duration::from_millis(5));
        assert_eq!(permille(&many, 1000), Duration::from_secs(2));
    }

    #[test]
    fn a_span_is_the_mean_and_the_99th_percentile_of_its_samples() {
        let spans: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let span = Span::of(spans.into_iter().rev().collect());
        assert_eq!(span.samples, 100);
        assert_eq!(span.mean, Duration::from_micros(50_500));
        assert_eq!(span.p99, Duration::from_millis(100));
    }

    #[test]
    fn a_hop_is_counted_only_for_an_event_seen_published_and_take_starts_afresh() {
        use crate::domain::event::{Payload, PaymentFailed};
        use crate::domain::{ItemId, OrderId, Timestamp, UserId};

        let hops = Hops::default();
        let event = Event::new(
            OrderId::parse("o1").unwrap(),
            UserId::parse("u1").unwrap(),
            Timestamp(1_000),
            Payload::PaymentFailed(PaymentFailed {
                reason: "declined".into(),
                attempted_amount: 1,
                item_id: ItemId::parse("sword").unwrap(),
            }),
        );
        let unseen = EventId(uuid::Uuid::from_u128(7));
        assert_ne!(unseen, event.event_id);
        hops.handled(Service::Order, unseen, Duration::from_millis(3));
        hops.published(&event, 1_005);
        hops.handled(Service::Order, event.event_id, Duration::from_millis(2));
        // A re-driven copy of the event, delivered later as a new entry:
        // not a hop of its own.
        hops.handled(Service::Order, event.event_id, Duration::from_millis(9));
        let summary = hops.take();
        assert_eq!(summary.step_to_publish.mean, Duration::from_millis(5));
        assert_eq!(summary.apply.samples, 1, "only the published event's hop counts");
        assert_eq!(summary.apply.mean, Duration::from_millis(2));
        assert_eq!(summary.publish_to_take_up.samples, 1);
        let again = hops.take();
        assert_eq!((again.apply.samples, again.step_to_publish.samples), (0, 0));
    }
}
