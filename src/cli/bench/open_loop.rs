//! The bench's open-loop level: orders arrive at a fixed mean rate with
//! Poisson arrivals (exponential gaps drawn from a seeded RNG), whatever
//! the saga's latency, and each order's latency counts from the time it
//! was meant to be sent. A closed loop of N clients only says that N
//! clients wait N / throughput on average; an open loop says what latency
//! a given arrival rate gets, and a stall (of the saga or of the sender
//! itself) shows in every order scheduled during it instead of delaying
//! their sends out of the measurement (no coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{place_and_wait, Rig};

/// When each of `orders` orders is meant to be sent, from the level's
/// start: Poisson arrivals at `rate_per_s`, i.e. exponential gaps of mean
/// `1 / rate_per_s`, the first after one gap. Same seed, same schedule.
pub fn poisson_schedule(rate_per_s: f64, orders: usize, seed: u64) -> Vec<Duration> {
    assert!(rate_per_s > 0.0 && rate_per_s.is_finite(), "a rate is positive");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut at = 0.0_f64;
    (0..orders)
        .map(|_| {
            // 1 - u lies in (0, 1], so the logarithm is finite.
            let u: f64 = rng.random();
            at += -(1.0 - u).ln() / rate_per_s;
            Duration::from_secs_f64(at)
        })
        .collect()
}

/// What the open-loop level measured.
#[derive(Debug, Clone)]
pub struct OpenResult {
    /// The offered rate (orders/s).
    pub rate: f64,
    pub orders: usize,
    /// Intended send time -> terminal event published, sorted.
    pub latencies: Vec<Duration>,
    pub failed: usize,
    /// From the level's start to the last order's terminal event.
    pub elapsed: Duration,
    /// How late the sender was at most behind an order's intended time
    /// (counted in that order's latency all the same).
    pub send_late_max: Duration,
}

impl OpenResult {
    pub fn sagas_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `orders` orders at `rate` orders/s (Poisson, seeded from the
/// rig's seed), each from its own task so that no order waits for
/// another's saga, and waits for every one's terminal event.
pub async fn run_open(rig: &Rig, rate: f64, orders: u32, tag: &str, bar: &ProgressBar) -> OpenResult {
    let schedule = poisson_schedule(rate, orders as usize, rig.seed);
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(rig.seed ^ 0x6f70_656e);
    let mut tasks = tokio::task::JoinSet::new();
    let mut send_late_max = Duration::ZERO;
    let rig = Arc::new(rig.clone());
    for (n, offset) in schedule.iter().enumerate() {
        let intended = started + *offset;
        tokio::time::sleep_until(intended.into()).await;
        send_late_max = send_late_max.max(Instant::now().saturating_duration_since(intended));
        let user = rng.random_range(0..rig.scenario.users.len());
        let item = rng.random_range(0..rig.scenario.items.len());
        let (rig, bar) = (rig.clone(), bar.clone());
        let order_id = format!("{tag}-{n}");
        tasks.spawn(async move {
            let done = place_and_wait(&rig, &order_id, user, item).await;
            bar.inc(1);
            done.map(|at| at.saturating_duration_since(intended))
        });
    }
    let mut latencies = Vec::with_capacity(schedule.len());
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("an open-loop order does not panic") {
            Some(latency) => latencies.push(latency),
            None => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    OpenResult {
        rate,
        orders: schedule.len(),
        latencies,
        failed,
        elapsed,
        send_late_max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_rises_is_seeded_and_has_the_rate_as_its_mean() {
        let schedule = poisson_schedule(200.0, 20_000, 7);
        assert_eq!(schedule.len(), 20_000);
        assert!(
            schedule.windows(2).all(|w| w[0] <= w[1]),
            "send times never go back"
        );
        assert!(
            schedule[0] > Duration::ZERO,
            "the first order comes after one gap"
        );
        // 20,000 gaps of mean 5 ms: the sum is 100 s give or take ~0.7 s
        // (standard deviation of the sum: 5 ms x sqrt(20,000)).
        let span = schedule.last().unwrap().as_secs_f64();
        assert!(
            (97.0..103.0).contains(&span),
            "mean rate off: {span} s for 20,000 at 200/s"
        );
        assert_eq!(
            schedule,
            poisson_schedule(200.0, 20_000, 7),
            "same seed, same schedule"
        );
        assert_ne!(schedule, poisson_schedule(200.0, 20_000, 8));
    }

    #[test]
    fn the_gaps_are_exponential_not_even() {
        // Exponential gaps: the standard deviation equals the mean, and
        // about 1 - 1/e = 63.2% of the gaps are shorter than the mean. An
        // even spacing (a closed loop's pacing) would have neither.
        let schedule = poisson_schedule(100.0, 20_000, 3);
        let gaps: Vec<f64> = std::iter::once(schedule[0].as_secs_f64())
            .chain(schedule.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()))
            .collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((0.0095..0.0105).contains(&mean), "mean gap {mean}");
        assert!((sd / mean - 1.0).abs() < 0.05, "sd / mean = {}", sd / mean);
        let short = gaps.iter().filter(|&&g| g < 0.01).count() as f64 / n;
        assert!((0.62..0.645).contains(&short), "share under the mean: {short}");
    }
}
