//! The heartbeat task of a [`RedisBus`](super::RedisBus): while the bus
//! lives, it refreshes the heartbeat of every consumer that received
//! through it, several times per TTL. A consumer busy in a slow handler
//! stays alive this way (its entries wait for the visibility timeout); a
//! process that is gone stops refreshing, its heartbeats expire after one
//! TTL, and the claim script hands its pending entries to the next
//! consumer that receives (see `scripts.rs`).
//!
//! A service's heartbeats are one sorted set, `{prefix:service}:alive`
//! (consumer name -> expiry in the server's milliseconds, read from the
//! server's TIME inside the scripts: no client clock), in the slot of the
//! service's stream, so that the claim script declares it. One refresh
//! per service and tick: a script invocation with every consumer name of
//! that service this bus holds, the services' refreshes sent at once.
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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{keys, RedisConn};
use crate::domain::Service;

/// Refreshes per TTL: a heartbeat survives up to this many lost refreshes
/// less one (a slow Redis, a busy runtime).
const REFRESHES_PER_TTL: u32 = 4;

/// The shortest TTL a bus accepts: below it the refresh period is too
/// short to be kept on a loaded machine.
pub const TTL_MIN: Duration = Duration::from_millis(200);

/// While it answers true, the heartbeat task refreshes nothing.
pub type PauseGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// The consumer names a bus keeps alive, by service.
pub type Consumers = BTreeMap<Service, BTreeSet<String>>;

pub fn insert(alive: &Mutex<Consumers>, service: Service, consumer: &str) {
    let mut alive = alive.lock().expect("alive mutex");
    let names = alive.entry(service).or_default();
    if !names.contains(consumer) {
        names.insert(consumer.to_string());
    }
}

pub fn remove(alive: &Mutex<Consumers>, service: Service, consumer: &str) {
    let mut alive = alive.lock().expect("alive mutex");
    if let Some(names) = alive.get_mut(&service) {
        names.remove(consumer);
        if names.is_empty() {
            alive.remove(&service);
        }
    }
}

/// Refreshes the heartbeats in `alive` every `ttl / REFRESHES_PER_TTL`
/// until the bus is dropped, except while the gate in `paused` answers
/// true.
pub async fn run(
    alive: Weak<Mutex<Consumers>>,
    paused: Arc<Mutex<Option<PauseGate>>>,
    conn: RedisConn,
    prefix: String,
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
        let consumers: Consumers = alive.lock().expect("alive mutex").clone();
        // Not held across the round trip: a dropped bus ends the task.
        drop(alive);
        // The heartbeat script runs even when Redis is out of memory (see
        // `scripts`); one invocation per service keeps each in its slot.
        let refreshes = consumers.iter().map(|(service, names)| {
            let mut conn = conn.clone();
            let mut invocation = super::scripts::heartbeat().key(keys::alive(&prefix, *service));
            invocation.arg(ttl_ms);
            for name in names {
                invocation.arg(name);
            }
            async move { invocation.invoke_async::<i64>(&mut conn).await }
        });
        for result in futures::future::join_all(refreshes).await {
            if let Err(e) = result {
                // The consumers' own receives refresh their heartbeats too;
                // a Redis that is down has no entries to hand over anyway.
                tracing::warn!(error = %e, "heartbeat refresh failed");
            }
        }
    }
}
