//! When a run may stop: what is still pending, and quiescence proven
//! without waiting out the re-drive rounds.
//!
//! Re-drive republishes every outbox entry in rounds (2 s, 6 s, 14 s, 30 s
//! after it was created) whether or not its subscribers have it, so once
//! the faults heal the bus is rarely empty at the moment a check looks: a
//! run used to step until the rounds thinned out, ~20 s of simulated time
//! after the saga's work was done. Those copies can change nothing: each is
//! an event already in its subscriber's inbox, which the consumer
//! deduplicates and acknowledges.
//!
//! The same holds for an outbox entry the relay published and then crashed
//! before marking (`crash-after-publish`): the claim's lease (30 s) holds it
//! until a relay publishes it again, a copy that changes nothing once every
//! subscriber has the event.
//!
//! So a run is quiescent when the committed work is done (every order
//! terminal, every outbox entry published, or unmarked but in every one of
//! its subscribers' inboxes, and in each subscriber's inbox or dead letters,
//! no lock held) and every unacknowledged bus entry is a copy
//! of an event its stream's service already processed, **and** every such
//! copy seen at the previous check has been acknowledged since. The last
//! clause keeps the liveness check's "every bus entry acknowledged": a copy
//! that nobody acknowledges stays in the set and the run never ends early.

use std::collections::BTreeSet;

use purchase_saga::domain::service::subscribers;
use purchase_saga::domain::Service;
use purchase_saga::runtime::memory::streams::EntryId;

use crate::broker::Broker;
use crate::world::World;

/// Why the run is not quiescent yet, if it is not (the liveness finding's
/// text).
pub fn pending_work(world: &World, broker: &Broker) -> Option<String> {
    open_orders(world)
        .or_else(|| {
            let queued = broker.unacknowledged();
            (queued > 0).then(|| format!("{queued} bus entries unacknowledged"))
        })
        .or_else(|| undelivered(world, broker))
}

fn open_orders(world: &World) -> Option<String> {
    let open = world
        .store
        .snapshot_now()
        .orders
        .values()
        .filter(|o| !o.status.is_terminal())
        .count();
    (open > 0).then(|| format!("{open} orders not terminal"))
}

/// Outbox entries not yet in every subscriber's inbox, or locks held.
fn undelivered(world: &World, broker: &Broker) -> Option<String> {
    delivery_gap(world, broker, Strictness::Marked)
}

/// How [`delivery_gap`] treats an entry whose publish is not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Every entry must be marked published (the liveness finding's rule).
    Marked,
    /// An unmarked entry that every one of its (one or more) subscribers
    /// already has is done: the relay published it and crashed before the
    /// mark (`crash-after-publish`), and its claim's lease (30 s) holds it
    /// until the relay publishes it again, a copy the inboxes absorb.
    InInboxes,
}

fn delivery_gap(world: &World, broker: &Broker, strictness: Strictness) -> Option<String> {
    for entry in world.store.outbox() {
        let id = entry.event.event_id;
        let targets = subscribers(entry.event.event_type());
        let reached = |s: Service| world.store.inbox_contains(s, id) || broker.dead_lettered(s, id);
        let published = entry.published_count > 0
            || (strictness == Strictness::InInboxes
                && !targets.is_empty()
                && targets.iter().all(|s| world.store.inbox_contains(*s, id)));
        if !published {
            return Some(format!(
                "outbox entry {} of {} never published",
                entry.seq,
                entry.event.emitter()
            ));
        }
        if let Some(s) = targets.iter().find(|s| !reached(**s)) {
            return Some(format!("{} never reached {s}", entry.event.summary()));
        }
    }
    if world.store.locks_held() > 0 {
        return Some("store locks held".into());
    }
    None
}

/// The copies the previous check found on the bus (see the module docs).
#[derive(Debug, Default)]
pub struct QuiescenceProof {
    copies_seen: Option<BTreeSet<(Service, EntryId)>>,
}

impl QuiescenceProof {
    /// One check of the settled run; true once quiescence is proven.
    pub fn check(&mut self, world: &World, broker: &Broker) -> bool {
        if open_orders(world).is_some() || delivery_gap(world, broker, Strictness::InInboxes).is_some() {
            self.copies_seen = None;
            return false;
        }
        let mut copies = BTreeSet::new();
        for (service, entry, event) in broker.unacknowledged_entries() {
            match event {
                Some(event) if world.store.inbox_contains(service, event) => {
                    copies.insert((service, entry));
                }
                // Work the consumer may still do (or a payload gone from
                // the stream): not proven.
                _ => {
                    self.copies_seen = None;
                    return false;
                }
            }
        }
        let proven = copies.is_empty()
            || self
                .copies_seen
                .as_ref()
                .is_some_and(|seen| seen.is_disjoint(&copies));
        self.copies_seen = Some(copies);
        proven
    }
}
