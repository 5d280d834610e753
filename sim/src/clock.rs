//! The runtime's [`Clock`] over turmoil's simulated time: every timestamp of
//! a run is `Timestamp::SIM_EPOCH` plus simulated elapsed time, never the
//! wall clock, so a replay stamps the same events with the same times.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use purchase_saga::domain::{DurationMs, Timestamp};
use purchase_saga::runtime::Clock;

/// Simulated time: the current host's view inside a host, the driver's last
/// step outside (between steps, in the driver's own checks).
#[derive(Debug, Clone, Default)]
pub struct SimClock {
    driver_ms: Arc<AtomicI64>,
}

impl SimClock {
    /// Called by the driver before each step.
    pub fn set_driver_ms(&self, ms: i64) {
        self.driver_ms.store(ms, Ordering::SeqCst);
    }

    /// Milliseconds since the start of the run.
    pub fn elapsed_ms(&self) -> i64 {
        match turmoil::sim_elapsed() {
            Some(d) => i64::try_from(d.as_millis()).expect("simulated time fits i64 ms"),
            None => self.driver_ms.load(Ordering::SeqCst),
        }
    }
}

impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        Timestamp::SIM_EPOCH.plus(DurationMs(self.elapsed_ms()))
    }
}

/// One host's clock: simulated time plus the host's fixed skew (the plan's
/// `skew_ms`), as a server whose clock is off by that much would read it.
#[derive(Debug, Clone)]
pub struct SkewedClock {
    pub base: SimClock,
    pub skew_ms: i64,
}

impl Clock for SkewedClock {
    fn now(&self) -> Timestamp {
        self.base.now().plus(DurationMs(self.skew_ms))
    }
}
