//! The pause of a loop after failures in a row: doubling from the base,
//! bounded, so a store or bus that is down for minutes is asked a few times
//! a minute, not twice a second, and one that comes back is asked again
//! soon.

use std::time::Duration;

/// Doublings at most: past this the bound has long been reached.
const DOUBLINGS_MAX: u32 = 16;

/// The pause after `failures` failures in a row (1 for the first):
/// `base * 2^(failures - 1)`, at most `max`.
pub fn after_failures(base: Duration, max: Duration, failures: u32) -> Duration {
    assert!(failures > 0, "a backoff follows a failure");
    let doublings = (failures - 1).min(DOUBLINGS_MAX);
    base.saturating_mul(1u32 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_and_stops_at_the_bound() {
        let ms = Duration::from_millis;
        let pauses: Vec<Duration> = (1..=6).map(|n| after_failures(ms(100), ms(1000), n)).collect();
        assert_eq!(pauses, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(
            after_failures(ms(100), ms(1000), u32::MAX),
            ms(1000),
            "no overflow"
        );
    }
}
