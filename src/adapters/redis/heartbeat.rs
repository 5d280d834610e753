//! The heartbeat task of a [`RedisBus`](super::RedisBus): while the bus
//! lives, it refreshes the heartbeat key of every consumer that received
//! through it, several times per TTL. A consumer busy in a slow handler
//! stays alive this way (its entries wait for the visibility timeout); a
//! process that is gone stops refreshing, its keys expire after one TTL,
//! and the claim script hands its pending entries to the next consumer
//! that receives (see `scripts.rs`).
//!
//! The task holds only a weak reference to the bus's set of keys: when the
//! last clone of the bus is dropped, it ends at its next tick.
//!
//! The refresh is a script that Redis runs even out of memory (see
//! `scripts.rs`): were heartbeats refused there, every live consumer would
//! look gone after one TTL and have its entries taken at once.
//!
//! A [`PauseGate`] set on the bus (`RedisBus::pause_heartbeat_while`) stops
//! the refreshes while it answers true, as for a process cut off Redis:
//! fault injection makes a partition look to the other replicas as it does
//! in production.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

/// Refreshes per TTL: a key survives up to this many lost refreshes less
/// one (a slow Redis, a busy runtime).
const REFRESHES_PER_TTL: u32 = 4;

/// The shortest TTL a bus accepts: below it the refresh period is too
/// short to be kept on a loaded machine.
pub const TTL_MIN: Duration = Duration::from_millis(200);

/// While it answers true, the heartbeat task refreshes nothing.
pub type PauseGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// Refreshes the keys in `alive` every `ttl / REFRESHES_PER_TTL` until the
/// bus is dropped, except while the gate in `paused` answers true.
pub async fn run(
    alive: Weak<Mutex<BTreeSet<String>>>,
    paused: Arc<Mutex<Option<PauseGate>>>,
    mut conn: ConnectionManager,
    ttl: Duration,
) {
    assert!(ttl >= TTL_MIN, "the bus checks the TTL");
    let period = ttl / REFRESHES_PER_TTL;
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::time::sleep(period).await;
        let Some(alive) = alive.upgrade() else {
            return;
        };
        let gate = paused.lock().expect("pause mutex").clone();
        if gate.is_some_and(|paused| paused()) {
            continue;
        }
        let keys: Vec<String> = alive.lock().expect("alive mutex").iter().cloned().collect();
        // Not held across the round trip: a dropped bus ends the task.
        drop(alive);
        if keys.is_empty() {
            continue;
        }
        // The heartbeat script runs even when Redis is out of memory (see
        // `scripts`); one invocation per key keeps each in its own slot.
        let script = super::scripts::heartbeat();
        let mut pipe = redis::pipe();
        pipe.load_script(script).ignore();
        for key in &keys {
            pipe.invoke_script(script.key(key).arg(ttl_ms)).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut conn).await {
            // The consumers' own receives refresh their keys too; a Redis
            // that is down has no entries to hand over anyway.
            tracing::warn!(error = %e, keys = keys.len(), "heartbeat refresh failed");
        }
    }
}
