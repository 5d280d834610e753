//! Whether the bus under `--redis-prefix` is the one the database worked
//! with. A typo in `REDIS_PREFIX` points every read at keys that do not
//! exist, and Redis answers an absent stream like an empty one: `audit`
//! would call the system quiescent and `status` would show zeros. So both
//! first ask: did any service consume events from the bus (its inbox holds
//! rows), while no service's stream exists under this prefix? Then the
//! answer would be silently wrong, and they fail with
//! [`EXIT_BUS_MISMATCH`] naming the prefix and the streams expected. (The
//! same holds when Redis lost its data; the message says both causes.)
//!
//! Inbox rows are pruned past the re-drive horizon and streams are
//! trimmed but never deleted, so a quiet deployment does not trip it.

use crate::adapters::postgres::Activity;
use crate::adapters::redis::RedisBus;
use crate::domain::Service;

/// The exit code of `audit` and `status` when the bus holds nothing the
/// database says should exist.
pub const EXIT_BUS_MISMATCH: u8 = 3;

/// The streams a deployment has: one per service that subscribes to
/// anything.
pub fn expected_streams(bus: &RedisBus) -> Vec<String> {
    Service::ALL
        .into_iter()
        .filter(|s| !s.subscriptions().is_empty())
        .map(|s| bus.stream_key(s))
        .collect()
}

/// The message of a mismatch; `consumed` is how many inbox rows the
/// database holds.
pub fn mismatch_message(prefix: &str, streams: &[String], consumed: i64) -> String {
    format!(
        "the bus holds nothing under the Redis key prefix {prefix:?}: none of the streams {} exists, \
         though the database shows {consumed} event(s) consumed from them. Check REDIS_PREFIX / \
         --redis-prefix (and REDIS_URL); if they are right, Redis lost its data (the relays \
         re-publish what is not yet applied)",
        streams.join(", ")
    )
}

/// None when the bus and the database agree (or the database shows no
/// consumption yet); else the message of [`mismatch_message`].
/// `activities` are the services' tables as the caller read them
/// ([`inflight::activities`](super::inflight::activities)); `audit` goes on
/// to judge quiescence from the same reading.
pub async fn check(activities: &[Activity], bus: &RedisBus) -> Result<Option<String>, String> {
    for service in Service::ALL {
        if !service.subscriptions().is_empty()
            && bus.stream_exists(service).await.map_err(|e| e.to_string())?
        {
            return Ok(None);
        }
    }
    let consumed: i64 = activities.iter().map(|a| a.inbox_rows).sum();
    Ok((consumed > 0).then(|| mismatch_message(&bus.config().prefix, &expected_streams(bus), consumed)))
}

#[cfg(test)]
mod tests {
    use super::mismatch_message;

    #[test]
    fn the_message_names_the_prefix_and_the_streams() {
        let m = mismatch_message(
            "typo",
            &["typo:stream:user".into(), "typo:stream:payment".into()],
            12,
        );
        assert!(m.contains("prefix \"typo\""), "{m}");
        assert!(m.contains("typo:stream:user, typo:stream:payment"), "{m}");
        assert!(m.contains("12 event(s) consumed"), "{m}");
    }
}
