//! The one model of Redis Streams consumer groups: pure, synchronous, no
//! clock of its own (every operation that depends on time takes `now_ms`
//! from the caller). [`MemoryBus`](super::MemoryBus) and the simulator's
//! broker host both keep their state in a [`Streams`], and
//! `tests/bus_model_vs_redis.rs` checks it against `RedisBus` on the real
//! server with generated operation sequences.
//!
//! What it models, per service: a stream of entries with increasing ids, one
//! consumer group (created on first use from id 0, as `RedisBus` does with
//! `XGROUP CREATE .. 0 MKSTREAM`, and again after [`Streams::lose_everything`]
//! as it does on NOGROUP), the group's pending entries list (owner, delivery
//! count, time of the last delivery), and the dead-letter stream.
//!
//! - [`Streams::read_new`] is `XREADGROUP .. >`: entries above the group's
//!   last-delivered id, owner set, count 1.
//! - [`Streams::autoclaim`] is `XAUTOCLAIM` (Redis 7): scans the pending
//!   list from a cursor, at most `10 * count` entries; an entry deleted from
//!   the stream leaves the pending list and is reported in `deleted`
//!   whatever its idle time; an entry idle for `min_idle_ms` or more is
//!   claimed (owner set, count + 1, delivery time reset); claimed and
//!   deleted entries together stop the scan at `count`; the next cursor is
//!   the entry after the last one examined, or 0.
//! - [`Streams::receive`] is what `RedisBus::receive` does with those: the
//!   claim script (XAUTOCLAIM from the bus's cursor, entries deleted while
//!   pending dead-lettered, no claim at all while the dead-letter key holds
//!   the wrong type), then new entries up to `max`.
//! - [`Streams::ack`] is XACK; [`Streams::dead_letter`] is the dead-letter
//!   script (XADD to the dead-letter stream, then XACK; nothing at all when
//!   the dead-letter key holds the wrong type); [`Streams::delete`] is XDEL;
//!   [`Streams::trim`] is `RedisBus::trim` (XTRIM MINID at the oldest pending
//!   id, or the last-delivered id when nothing is pending).
//!
//! Where it deliberately differs from Redis, and why the runtime behaves the
//! same either way:
//!
//! | Redis | model | why it does not matter |
//! |---|---|---|
//! | ids `ms-seq` from the server clock | one `u64` counter over all streams, never reset | ids are opaque to the runtime; only their order per stream is used, and both increase |
//! | idle time by the server's clock | by the caller's `now_ms` | the visibility timeout is compared with idle time in both; the simulator's clock is the only clock there |
//! | the XAUTOCLAIM cursor lives in each `RedisBus` (per process) | one cursor per group | it only decides which idle entries a claim examines first; every idle entry is reached once the cursor wraps |
//! | dead-letter stream capped by `MAXLEN ~` (the drop counted) | not capped | the runtime never reads dead letters back; the cap is an operator's bound |
//! | the dead letter of an entry deleted while pending has attempt 0 (Redis forgets the count with the entry) | the same | — |
//! | XCLAIM of an entry deleted while pending drops it from the pending list | the [`Streams::deliver`] lever leaves it (only XAUTOCLAIM reports it) | the runtime XCLAIMs only in the takeover of a gone consumer, after checking that the entry is still in the stream; only the lever hands out chosen entries |
//! | an entry the lever handed out of order is below no last-delivered id | `read_new` skips it | Redis has no such lever; without it both read in id order |
//! | `RedisBus`'s claim first XCLAIMs the pending entries of consumers whose heartbeat key expired (their process is gone), whatever their idle time | no heartbeats: a consumer's entries are claimed only once idle for the visibility timeout | a takeover is a redelivery in both, counted the same; the heartbeat only makes it earlier after a process died. Correctness never waits on it (the simulator's crashed replicas wait out the visibility timeout, which it keeps short) |
//!
//! Besides Redis's commands it offers the levers of the in-memory scheduler
//! ([`Streams::deliver`]: hand over a chosen entry, out of order if it is
//! new; [`Streams::forget`]: a message lost entirely) and of the broker's
//! faults (a pending entry handed out again, [`Streams::pending`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::Service;

/// An entry's id: increasing within a stream (and over all streams).
pub type EntryId = u64;

/// The dead-letter reason of an entry XDELed while it was pending.
pub const DELETED_WHILE_PENDING: &str = "deleted from the stream while pending";

/// One pending entry of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub owner: String,
    /// 1 at the first delivery, + 1 per claim.
    pub count: u32,
    pub delivered_at_ms: i64,
}

impl Pending {
    /// An entry's first delivery.
    fn first(consumer: &str, now_ms: i64) -> Pending {
        Pending {
            owner: consumer.to_string(),
            count: 1,
            delivered_at_ms: now_ms,
        }
    }
}

/// One entry handed to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered<P> {
    pub id: EntryId,
    pub attempt: u32,
    pub payload: P,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadRecord<P> {
    pub entry_id: EntryId,
    pub reason: String,
    pub payload: P,
    /// The delivery count when it was dead-lettered (0: unknown).
    pub attempt: u32,
}

/// What XAUTOCLAIM answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoClaim<P> {
    pub claimed: Vec<Delivered<P>>,
    /// Entries that were pending and are no longer in the stream; they
    /// left the pending list.
    pub deleted: Vec<EntryId>,
    /// Where the next scan starts (0: from the beginning).
    pub next: EntryId,
}

/// The dead-letter key holds something other than a stream (WRONGTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the dead-letter key holds the wrong type")]
pub struct DeadKeyWrongType;

#[derive(Debug, Clone, Default)]
struct Group {
    last_delivered: EntryId,
    pending: BTreeMap<EntryId, Pending>,
    /// The XAUTOCLAIM cursor of [`Streams::receive`].
    cursor: EntryId,
}

#[derive(Debug, Clone)]
enum DeadList<P> {
    Stream(Vec<DeadRecord<P>>),
    WrongType,
}

impl<P> Default for DeadList<P> {
    fn default() -> Self {
        DeadList::Stream(Vec::new())
    }
}

#[derive(Debug, Clone)]
struct Stream<P> {
    entries: BTreeMap<EntryId, P>,
    /// Entries never delivered to the group, all above its last-delivered
    /// id: what `XREADGROUP >` reads, in order. (A set rather than "above
    /// the last-delivered id" because the [`Streams::deliver`] lever hands
    /// out new entries out of order.)
    fresh: BTreeSet<EntryId>,
    group: Option<Group>,
    dead: DeadList<P>,
}

impl<P> Default for Stream<P> {
    fn default() -> Self {
        Stream {
            entries: BTreeMap::new(),
            fresh: BTreeSet::new(),
            group: None,
            dead: DeadList::default(),
        }
    }
}

impl<P> Stream<P> {
    fn group(&mut self) -> &mut Group {
        self.group.get_or_insert_with(Group::default)
    }

    /// Moves the last-delivered id up to just below the oldest fresh
    /// entry (or the newest entry), over the entries the lever handed out
    /// out of order, so that trims can reach them once acknowledged.
    fn settle_last_delivered(&mut self) {
        let Stream {
            entries,
            fresh,
            group,
            ..
        } = self;
        let Some(group) = group.as_mut() else {
            return;
        };
        let below = match fresh.first() {
            Some(first) => entries.range(..*first).next_back(),
            None => entries.last_key_value(),
        };
        if let Some((&id, _)) = below {
            group.last_delivered = group.last_delivered.max(id);
        }
        debug_assert!(
            fresh.first().is_none_or(|f| *f > group.last_delivered),
            "every fresh entry is above the last-delivered id"
        );
    }
}

/// See the module docs. `P` is the payload type (bytes, or the simulator's
/// strings).
#[derive(Debug, Clone)]
pub struct Streams<P> {
    streams: BTreeMap<Service, Stream<P>>,
    next_id: EntryId,
}

impl<P> Default for Streams<P> {
    fn default() -> Self {
        Streams {
            streams: BTreeMap::new(),
            next_id: 0,
        }
    }
}

impl<P: Clone> Streams<P> {
    pub fn new() -> Streams<P> {
        Streams::default()
    }

    fn stream(&mut self, service: Service) -> &mut Stream<P> {
        self.streams.entry(service).or_default()
    }

    /// XADD: appends `payload` to `service`'s stream; returns its id.
    pub fn append(&mut self, service: Service, payload: P) -> EntryId {
        self.next_id += 1;
        let id = self.next_id;
        let stream = self.stream(service);
        let previous = stream.entries.insert(id, payload);
        assert!(previous.is_none(), "entry ids are never reused");
        stream.fresh.insert(id);
        id
    }

    /// The payload of entry `id`, if it is in the stream.
    pub fn payload(&self, service: Service, id: EntryId) -> Option<&P> {
        self.streams.get(&service)?.entries.get(&id)
    }

    /// Ids in `service`'s stream, in order.
    pub fn entry_ids(&self, service: Service) -> Vec<EntryId> {
        self.streams
            .get(&service)
            .map(|s| s.entries.keys().copied().collect())
            .unwrap_or_default()
    }

    /// `service`'s pending entries list, in id order.
    pub fn pending(&self, service: Service) -> Vec<(EntryId, Pending)> {
        self.streams
            .get(&service)
            .and_then(|s| s.group.as_ref())
            .map(|g| g.pending.iter().map(|(id, p)| (*id, p.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether `service`'s consumer group exists (XREADGROUP on a missing
    /// one answers NOGROUP in Redis; the model's reads create it).
    pub fn has_group(&self, service: Service) -> bool {
        self.streams.get(&service).is_some_and(|s| s.group.is_some())
    }

    /// `XGROUP CREATE .. 0 MKSTREAM`: creates `service`'s group from id 0
    /// unless it exists (BUSYGROUP); whether it created one.
    pub fn create_group(&mut self, service: Service) -> bool {
        let stream = self.stream(service);
        let created = stream.group.is_none();
        stream.group();
        created
    }

    /// XREADGROUP `>`: up to `max` new entries for `consumer`.
    pub fn read_new(
        &mut self,
        service: Service,
        consumer: &str,
        max: usize,
        now_ms: i64,
    ) -> Vec<Delivered<P>> {
        let stream = self.stream(service);
        let ids: Vec<EntryId> = stream.fresh.iter().take(max).copied().collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let payload = stream.entries[&id].clone();
            stream.fresh.remove(&id);
            let group = stream.group();
            group.last_delivered = group.last_delivered.max(id);
            group.pending.insert(id, Pending::first(consumer, now_ms));
            out.push(Delivered {
                id,
                attempt: 1,
                payload,
            });
        }
        debug_assert!(
            out.windows(2).all(|w| w[0].id < w[1].id),
            "new entries come in id order"
        );
        out
    }

    /// XAUTOCLAIM (see the module docs). Creates the group if missing.
    pub fn autoclaim(
        &mut self,
        service: Service,
        consumer: &str,
        min_idle_ms: i64,
        start: EntryId,
        count: usize,
        now_ms: i64,
    ) -> AutoClaim<P> {
        assert!(count > 0, "XAUTOCLAIM's COUNT is at least 1");
        let stream = self.stream(service);
        let mut attempts = count * 10;
        let mut left = count;
        let mut claimed = Vec::new();
        let mut deleted = Vec::new();
        let mut examined: Option<EntryId> = None;
        let group = stream.group.get_or_insert_with(Group::default);
        let candidates: Vec<EntryId> = group.pending.range(start..).map(|(id, _)| *id).collect();
        for id in &candidates {
            if attempts == 0 || left == 0 {
                break;
            }
            attempts -= 1;
            examined = Some(*id);
            let Some(payload) = stream.entries.get(id) else {
                // Redis 7.0 counts a deleted entry against COUNT too.
                group.pending.remove(id);
                deleted.push(*id);
                left -= 1;
                continue;
            };
            let pending = group.pending.get_mut(id).expect("a candidate is pending");
            if now_ms.saturating_sub(pending.delivered_at_ms) < min_idle_ms {
                continue;
            }
            pending.owner = consumer.to_string();
            pending.count += 1;
            pending.delivered_at_ms = now_ms;
            left -= 1;
            claimed.push(Delivered {
                id: *id,
                attempt: pending.count,
                payload: payload.clone(),
            });
        }
        let next = match examined {
            Some(last) => group.pending.range(last + 1..).next().map_or(0, |(id, _)| *id),
            None => 0,
        };
        debug_assert!(
            claimed.len() + deleted.len() <= count,
            "XAUTOCLAIM answers at most COUNT entries"
        );
        AutoClaim {
            claimed,
            deleted,
            next,
        }
    }

    /// `RedisBus::receive` (see the module docs): claims of entries idle for
    /// `min_idle_ms` from the group's cursor, the entries deleted while
    /// pending dead-lettered with [`DELETED_WHILE_PENDING`], then new
    /// entries up to `max`. `empty` makes the dead letters' payload.
    pub fn receive(
        &mut self,
        service: Service,
        consumer: &str,
        max: usize,
        min_idle_ms: i64,
        now_ms: i64,
        empty: impl Fn() -> P,
    ) -> Vec<Delivered<P>> {
        assert!(max > 0, "a receive asks for at least one delivery");
        let mut batch = Vec::new();
        if !matches!(self.stream(service).dead, DeadList::WrongType) {
            let start = self.stream(service).group().cursor;
            let claim = self.autoclaim(service, consumer, min_idle_ms, start, max, now_ms);
            self.stream(service).group().cursor = claim.next;
            for id in claim.deleted {
                self.dead_letter(service, id, DELETED_WHILE_PENDING, empty(), 0)
                    .expect("the dead-letter key was checked above");
            }
            batch = claim.claimed;
        }
        if batch.len() < max {
            let fresh = self.read_new(service, consumer, max - batch.len(), now_ms);
            batch.extend(fresh);
        }
        batch
    }

    /// XACK: `id` leaves the pending list. Returns its payload if it was
    /// pending and is still in the stream.
    pub fn ack(&mut self, service: Service, id: EntryId) -> Option<P> {
        let stream = self.streams.get_mut(&service)?;
        stream.group.as_mut()?.pending.remove(&id)?;
        stream.entries.get(&id).cloned()
    }

    /// The dead-letter script: appends the dead letter and acknowledges
    /// `id`, or does nothing when the dead-letter key holds the wrong type.
    pub fn dead_letter(
        &mut self,
        service: Service,
        id: EntryId,
        reason: &str,
        payload: P,
        attempt: u32,
    ) -> Result<(), DeadKeyWrongType> {
        let stream = self.stream(service);
        let DeadList::Stream(dead) = &mut stream.dead else {
            return Err(DeadKeyWrongType);
        };
        dead.push(DeadRecord {
            entry_id: id,
            reason: reason.to_string(),
            payload,
            attempt,
        });
        self.ack(service, id);
        Ok(())
    }

    /// `service`'s dead letters, oldest first (None: the key holds the
    /// wrong type).
    pub fn dead_letters(&self, service: Service) -> Option<&[DeadRecord<P>]> {
        match self.streams.get(&service).map(|s| &s.dead) {
            None => Some(&[]),
            Some(DeadList::Stream(d)) => Some(d),
            Some(DeadList::WrongType) => None,
        }
    }

    /// Every dead letter, by service in `Service::ALL` order.
    pub fn all_dead_letters(&self) -> impl Iterator<Item = (Service, &DeadRecord<P>)> + '_ {
        self.streams.iter().flat_map(|(service, s)| match &s.dead {
            DeadList::Stream(d) => d.iter().map(|r| (*service, r)).collect::<Vec<_>>(),
            DeadList::WrongType => Vec::new(),
        })
    }

    /// `SET <dead key> x` (broken: true) or `DEL <dead key>` (false).
    pub fn set_dead_key_wrong_type(&mut self, service: Service, broken: bool) {
        self.stream(service).dead = if broken {
            DeadList::WrongType
        } else {
            DeadList::default()
        };
    }

    /// XDEL: `id` leaves the stream; if it was pending it stays in the
    /// pending list until a claim reports it deleted.
    pub fn delete(&mut self, service: Service, id: EntryId) -> bool {
        self.streams.get_mut(&service).is_some_and(|s| {
            s.fresh.remove(&id);
            s.entries.remove(&id).is_some()
        })
    }

    /// `RedisBus::trim` (see the module docs). Returns how many entries
    /// went.
    pub fn trim(&mut self, service: Service) -> usize {
        let Some(stream) = self.streams.get_mut(&service) else {
            return 0;
        };
        let Some(group) = &stream.group else {
            return 0;
        };
        let floor = group
            .pending
            .keys()
            .next()
            .copied()
            .unwrap_or(group.last_delivered);
        if floor == 0 {
            return 0;
        }
        // One entry at a time: the usual trim removes few entries from a
        // long stream (split_off would move the long rest).
        let mut trimmed = 0;
        while stream
            .entries
            .first_key_value()
            .is_some_and(|(id, _)| *id < floor)
        {
            stream.entries.pop_first();
            trimmed += 1;
        }
        debug_assert!(
            stream.entries.keys().next().is_none_or(|first| *first >= floor),
            "a trim keeps every entry at or above the floor"
        );
        trimmed
    }

    /// Lever: hands entry `id` to `consumer` now, whether it is pending (a
    /// claim, count + 1) or new (out of order, count 1). None if it is in
    /// neither state.
    pub fn deliver(
        &mut self,
        service: Service,
        consumer: &str,
        id: EntryId,
        now_ms: i64,
    ) -> Option<Delivered<P>> {
        let stream = self.streams.get_mut(&service)?;
        let payload = stream.entries.get(&id)?.clone();
        let is_new = stream.fresh.remove(&id);
        let group = stream.group();
        let attempt = if let Some(p) = group.pending.get_mut(&id) {
            p.count += 1;
            p.owner = consumer.to_string();
            p.delivered_at_ms = now_ms;
            p.count
        } else if is_new {
            group.pending.insert(id, Pending::first(consumer, now_ms));
            stream.settle_last_delivered();
            1
        } else {
            return None;
        };
        Some(Delivered { id, attempt, payload })
    }

    /// Entries of `service` a consumer could be handed now: new ones, and
    /// pending ones idle for `min_idle_ms` (unless `redeliver` is false), in
    /// id order.
    pub fn deliverable(
        &self,
        service: Service,
        min_idle_ms: i64,
        now_ms: i64,
        redeliver: bool,
    ) -> Vec<EntryId> {
        let Some(stream) = self.streams.get(&service) else {
            return Vec::new();
        };
        let mut ids: Vec<EntryId> = stream.fresh.iter().copied().collect();
        if redeliver {
            if let Some(group) = &stream.group {
                ids.extend(
                    group
                        .pending
                        .iter()
                        .filter(|(id, p)| {
                            stream.entries.contains_key(id)
                                && now_ms.saturating_sub(p.delivered_at_ms) >= min_idle_ms
                        })
                        .map(|(id, _)| *id),
                );
            }
        }
        ids.sort_unstable();
        ids
    }

    /// Lever: entry `id` is lost entirely (gone from the stream and from
    /// the pending list), as a message a broker drops.
    pub fn forget(&mut self, service: Service, id: EntryId) -> bool {
        let Some(stream) = self.streams.get_mut(&service) else {
            return false;
        };
        if let Some(group) = stream.group.as_mut() {
            group.pending.remove(&id);
        }
        stream.fresh.remove(&id);
        stream.entries.remove(&id).is_some()
    }

    /// Entries not yet acknowledged: new ones and pending ones, over every
    /// stream.
    pub fn unacknowledged(&self) -> usize {
        self.streams
            .values()
            .map(|s| s.fresh.len() + s.group.as_ref().map_or(0, |g| g.pending.len()))
            .sum()
    }

    /// Every entry not yet acknowledged, by stream and id, with its payload
    /// (`None` for a pending entry deleted from the stream): what
    /// [`Streams::unacknowledged`] counts.
    pub fn unacknowledged_entries(&self) -> Vec<(Service, EntryId, Option<&P>)> {
        let mut out = Vec::with_capacity(self.unacknowledged());
        for (service, stream) in &self.streams {
            let pending = stream.group.as_ref().into_iter().flat_map(|g| g.pending.keys());
            for id in stream.fresh.iter().chain(pending) {
                out.push((*service, *id, stream.entries.get(id)));
            }
        }
        debug_assert_eq!(out.len(), self.unacknowledged(), "listed what is counted");
        out
    }

    /// A Redis without persistence restarting: streams, groups, pending
    /// entries and dead letters all gone. Ids keep increasing (Redis's come
    /// from its clock).
    pub fn lose_everything(&mut self) {
        self.streams.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Service = Service::User;

    fn five() -> Streams<u8> {
        let mut m = Streams::new();
        for p in 1..=5 {
            m.append(S, p);
        }
        m
    }

    #[test]
    fn read_new_then_claim_after_idle_counts_deliveries() {
        let mut m = five();
        let got = m.read_new(S, "b", 4, 0);
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert!(
            m.autoclaim(S, "a", 200, 0, 10, 199).claimed.is_empty(),
            "not idle yet"
        );
        let claim = m.autoclaim(S, "a", 200, 0, 3, 200);
        assert_eq!(
            claim
                .claimed
                .iter()
                .map(|d| (d.id, d.attempt))
                .collect::<Vec<_>>(),
            [(1, 2), (2, 2), (3, 2)]
        );
        assert_eq!(claim.next, 4, "the cursor is the entry after the last examined");
        assert_eq!(m.pending(S)[0].1.owner, "a");
        let rest = m.autoclaim(S, "a", 200, claim.next, 3, 200);
        assert_eq!(rest.claimed.iter().map(|d| d.id).collect::<Vec<_>>(), [4]);
        assert_eq!(rest.next, 0, "the scan wrapped");
    }

    #[test]
    fn deleted_pending_entries_are_reported_and_dead_lettered_by_receive() {
        let mut m = five();
        m.read_new(S, "b", 2, 0);
        assert!(m.delete(S, 1));
        let got = m.receive(S, "a", 5, 1_000, 10, || 0);
        assert_eq!(
            got.iter().map(|d| d.id).collect::<Vec<_>>(),
            [3, 4, 5],
            "only new entries"
        );
        let dead = m.dead_letters(S).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].entry_id, dead[0].reason.as_str()),
            (1, DELETED_WHILE_PENDING)
        );
        assert!(
            m.pending(S).iter().all(|(id, _)| *id != 1),
            "left the pending list"
        );
    }

    #[test]
    fn dead_letter_into_a_wrong_type_key_changes_nothing() {
        let mut m = five();
        m.read_new(S, "b", 1, 0);
        m.set_dead_key_wrong_type(S, true);
        assert_eq!(m.dead_letter(S, 1, "why", 1, 1), Err(DeadKeyWrongType));
        assert_eq!(m.pending(S).len(), 1, "still pending");
        m.set_dead_key_wrong_type(S, false);
        assert_eq!(m.dead_letter(S, 1, "why", 1, 1), Ok(()));
        assert!(m.pending(S).is_empty());
    }

    #[test]
    fn trim_stops_at_the_oldest_pending_entry() {
        let mut m = five();
        m.read_new(S, "b", 4, 0);
        m.ack(S, 1);
        m.ack(S, 3);
        assert_eq!(m.trim(S), 1);
        assert_eq!(m.entry_ids(S), [2, 3, 4, 5]);
        m.ack(S, 2);
        m.ack(S, 4);
        assert_eq!(m.trim(S), 2, "up to the last delivered entry");
        assert_eq!(m.entry_ids(S), [4, 5]);
    }

    #[test]
    fn losing_everything_recreates_the_group_from_zero() {
        let mut m = five();
        m.read_new(S, "b", 5, 0);
        m.lose_everything();
        assert_eq!(m.unacknowledged(), 0);
        let id = m.append(S, 9);
        assert_eq!(id, 6, "ids keep increasing");
        assert_eq!(m.read_new(S, "b", 5, 0).len(), 1);
    }

    #[test]
    fn a_lost_group_is_missing_until_created_again_from_zero() {
        let mut m = five();
        assert!(!m.has_group(S), "a publish creates no group");
        assert!(m.create_group(S));
        assert!(!m.create_group(S), "BUSYGROUP");
        m.read_new(S, "b", 2, 0);
        m.lose_everything();
        assert!(!m.has_group(S), "NOGROUP after the loss");
        m.append(S, 7);
        assert!(!m.has_group(S), "a publish after the loss creates no group");
        assert!(m.create_group(S));
        assert_eq!(m.read_new(S, "b", 5, 0).len(), 1, "the group reads from id 0");
    }

    #[test]
    fn the_deliver_lever_hands_new_entries_out_of_order_once() {
        let mut m = five();
        assert_eq!(m.deliver(S, "x", 3, 0).map(|d| d.attempt), Some(1));
        let fresh: Vec<_> = m.read_new(S, "b", 5, 0).into_iter().map(|d| d.id).collect();
        assert_eq!(fresh, [1, 2, 4, 5], "3 was handed out already");
        assert_eq!(m.deliver(S, "x", 3, 5).map(|d| d.attempt), Some(2));
        assert_eq!(m.deliverable(S, 10, 10, true), [1, 2, 4, 5]);
        assert_eq!(m.deliverable(S, 10, 10, false), Vec::<EntryId>::new());
    }

    #[test]
    fn entries_the_lever_delivered_in_order_can_be_trimmed_once_acked() {
        let mut m = five();
        for id in [2, 1, 3] {
            m.deliver(S, "x", id, 0);
        }
        for id in [1, 2, 3] {
            m.ack(S, id);
        }
        assert_eq!(m.trim(S), 2, "up to the last delivered entry, 3");
        assert_eq!(m.entry_ids(S), [3, 4, 5]);
        assert_eq!(m.unacknowledged(), 2);
    }
}
