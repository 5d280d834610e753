//! Time as the domain sees it: a value handed in by the caller.
//!
//! The domain never reads a clock. Production passes wall-clock time, the
//! simulator passes simulated time, tests pass whatever they like; that is what
//! makes every step a pure function and every simulated run replayable.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// A span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct DurationMs(pub i64);

impl Timestamp {
    /// 2026-01-01T00:00:00Z: the simulator's and the tests' epoch, so traces
    /// show readable dates.
    pub const SIM_EPOCH: Timestamp = Timestamp(1_767_225_600_000);

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, d: DurationMs) -> Timestamp {
        Timestamp(self.0.saturating_add(d.0))
    }

    pub fn since(self, earlier: Timestamp) -> DurationMs {
        DurationMs(self.0.saturating_sub(earlier.0))
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp_millis(self.0).unwrap_or_default()
    }

    pub fn from_datetime(dt: DateTime<Utc>) -> Timestamp {
        Timestamp(dt.timestamp_millis())
    }
}

impl DurationMs {
    pub const fn from_secs(s: i64) -> DurationMs {
        DurationMs(s * 1000)
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_datetime().to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&raw)
            .map(|dt| Timestamp::from_datetime(dt.with_timezone(&Utc)))
            .map_err(|e| serde::de::Error::custom(format!("timestamp {raw:?} is not RFC 3339: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_rfc3339() {
        let t = Timestamp::SIM_EPOCH.plus(DurationMs(1_234));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-01-01T00:00:01.234Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }
}
