//! The broker: Redis Streams consumer groups, one stream per subscribing
//! service, kept in the one model of them
//! (`purchase_saga::runtime::memory::streams`, shared with `MemoryBus` and
//! checked against the real Redis). A receive is `RedisBus::receive` on the
//! model: entries whose delivery was not acknowledged within the visibility
//! timeout are claimed (XAUTOCLAIM) with their delivery counter raised, then
//! new entries are read; dead-lettered entries move to a list with the
//! reason; acknowledged entries are trimmed as `RedisBus::trim` would.
//!
//! Its faults: a publish lost for a subscriber, a delivery marked but never
//! handed over, an entry appended twice or handed to a second consumer while
//! the first still holds it; and the host crashing with its state lost
//! ([`Broker::lose_everything`], `broker-loss`), as a Redis without
//! persistence restarts. Groups are therefore not created by a read: a
//! receive on a missing group answers [`Response::NoGroup`] (Redis's
//! NOGROUP) and the bus creates it with [`Request::EnsureGroup`] (`XGROUP
//! CREATE .. 0 MKSTREAM`), as `RedisBus` does.
//!
//! The state lives outside the broker host (the host serves it over
//! turmoil TCP, see [`serve`]), so the driver can tell when queues drained.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use purchase_saga::domain::{EventId, Service};
use purchase_saga::runtime::memory::streams::{EntryId, Streams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::faults::{FaultKind, POISON_ENTRIES};
use crate::finding::{check, Finding};
use crate::world::World;

/// The broker's port on its host.
pub const PORT: u16 = 6379;
/// The broker host's name.
pub const HOST: &str = "broker";
/// A delivery not acknowledged within this is delivered again. Longer than
/// a handler's usual time (including a lock wait), as XAUTOCLAIM's idle
/// threshold must be.
pub const VISIBILITY_MS: i64 = 1_500;
/// Largest frame on the wire.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// A connection idle this long is closed by the broker.
const IDLE_CLOSE: Duration = Duration::from_secs(10);
/// How long the `claim-raced-takeover` steer holds an ack: past the
/// visibility timeout and another consumer's handling of the entry.
const TAKEOVER_HOLD_MS: u64 = VISIBILITY_MS as u64 + 1_000;

/// A request on the wire (encoded by [`Request::encode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// XADD to each stream.
    Publish {
        streams: Vec<Service>,
        payload: String,
    },
    Receive {
        service: Service,
        consumer: String,
        max: usize,
    },
    Ack {
        service: Service,
        id: u64,
    },
    DeadLetter {
        service: Service,
        id: u64,
        reason: String,
        payload: String,
    },
    /// XGROUP CREATE .. 0 MKSTREAM (BUSYGROUP, a group that exists, is fine).
    EnsureGroup {
        service: Service,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Done,
    /// (entry id, delivery count, payload)
    Deliveries(Vec<(u64, u32, String)>),
    /// The receive's consumer group does not exist (Redis's NOGROUP).
    NoGroup,
}

/// The wire format: a tag byte, then fields in order; a service is its
/// index in `Service::ALL`, integers are big-endian, strings are a `u32`
/// length and UTF-8 bytes. (It was JSON, which escaped every event payload
/// into a JSON string and parsed it back, twice per request: 5% of a run.)
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn service(&mut self, s: Service) -> &mut Self {
        let index = Service::ALL
            .iter()
            .position(|x| *x == s)
            .expect("every service is in Service::ALL");
        self.u8(index as u8)
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("a string of the wire fits u32"));
        self.0.extend_from_slice(v.as_bytes());
        self
    }
}

/// Reads what [`Writer`] wrote; None on a malformed frame.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn service(&mut self) -> Option<Service> {
        Service::ALL.get(usize::from(self.u8()?)).copied()
    }
    fn string(&mut self) -> Option<String> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    /// The value, if the frame held nothing after it.
    fn end<T>(&self, value: T) -> Option<T> {
        self.0.is_empty().then_some(value)
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            Request::Publish { streams, payload } => {
                w.u8(0).u8(streams.len() as u8);
                for s in streams {
                    w.service(*s);
                }
                w.str(payload);
            }
            Request::Receive {
                service,
                consumer,
                max,
            } => {
                w.u8(1).service(*service).str(consumer).u64(*max as u64);
            }
            Request::Ack { service, id } => {
                w.u8(2).service(*service).u64(*id);
            }
            Request::DeadLetter {
                service,
                id,
                reason,
                payload,
            } => {
                w.u8(3).service(*service).u64(*id).str(reason).str(payload);
            }
            Request::EnsureGroup { service } => {
                w.u8(4).service(*service);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Option<Request> {
        let mut r = Reader(bytes);
        let request = match r.u8()? {
            0 => {
                let n = r.u8()?;
                let streams = (0..n).map(|_| r.service()).collect::<Option<Vec<_>>>()?;
                Request::Publish {
                    streams,
                    payload: r.string()?,
                }
            }
            1 => Request::Receive {
                service: r.service()?,
                consumer: r.string()?,
                max: usize::try_from(r.u64()?).ok()?,
            },
            2 => Request::Ack {
                service: r.service()?,
                id: r.u64()?,
            },
            3 => Request::DeadLetter {
                service: r.service()?,
                id: r.u64()?,
                reason: r.string()?,
                payload: r.string()?,
            },
            4 => Request::EnsureGroup {
                service: r.service()?,
            },
            _ => return None,
        };
        r.end(request)
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        match self {
            Response::Done => {
                w.u8(0);
            }
            Response::Deliveries(list) => {
                w.u8(1).u32(u32::try_from(list.len()).expect("a batch fits u32"));
                for (id, count, payload) in list {
                    w.u64(*id).u32(*count).str(payload);
                }
            }
            Response::NoGroup => {
                w.u8(2);
            }
        }
        w.0
    }

    pub fn decode(bytes: &[u8]) -> Option<Response> {
        let mut r = Reader(bytes);
        let response = match r.u8()? {
            0 => Response::Done,
            1 => {
                let n = r.u32()?;
                let list = (0..n)
                    .map(|_| Some((r.u64()?, r.u32()?, r.string()?)))
                    .collect::<Option<Vec<_>>>()?;
                Response::Deliveries(list)
            }
            2 => Response::NoGroup,
            _ => return None,
        };
        r.end(response)
    }
}

/// The broker's state: the one consumer-group model, payloads as text.
type Model = Streams<Arc<str>>;

/// What the broker's steering levers and rare-state counts remember
/// (`FaultPlan::steer`, `FaultKind::RARE`). Kept outside [`Model`], so a
/// broker that loses its data still knows which entries it poisoned.
#[derive(Debug, Default)]
struct Steering {
    /// The entry whose acks the `applied-past-limit` steer loses.
    ack_victim: Option<(Service, EntryId)>,
    /// Whether the `claim-raced-takeover` steer has held its one ack.
    ack_held: bool,
    /// Poison entries appended so far (`poison-in-batch`).
    poison: BTreeSet<(Service, EntryId)>,
    /// Entries handed out by a claim after the visibility timeout (a
    /// takeover), and of those, the ones acknowledged once since.
    taken_over: BTreeSet<(Service, EntryId)>,
    acked_after_takeover: BTreeSet<(Service, EntryId)>,
}

/// See the module docs.
#[derive(Clone)]
pub struct Broker {
    state: Arc<Mutex<Model>>,
    steering: Arc<Mutex<Steering>>,
    world: Arc<World>,
}

impl Broker {
    pub fn new(world: Arc<World>) -> Broker {
        Broker {
            state: Arc::default(),
            steering: Arc::default(),
            world,
        }
    }

    fn steering(&self) -> MutexGuard<'_, Steering> {
        self.steering.lock().expect("broker steering mutex")
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.state.lock().expect("broker mutex")
    }

    /// Entries not yet acknowledged, over every stream.
    pub fn unacknowledged(&self) -> usize {
        self.lock().unacknowledged()
    }

    /// Every entry not yet acknowledged: (stream, entry id, the event id of
    /// its payload; `None` when the payload is gone or does not decode).
    pub fn unacknowledged_entries(&self) -> Vec<(Service, EntryId, Option<EventId>)> {
        self.lock()
            .unacknowledged_entries()
            .into_iter()
            .map(|(service, id, payload)| {
                let event = payload
                    .and_then(|p| purchase_saga::domain::Event::decode(p.as_bytes()).ok())
                    .map(|e| e.event_id);
                (service, id, event)
            })
            .collect()
    }

    /// Whether `service` dead-lettered the event `id`.
    pub fn dead_lettered(&self, service: Service, id: EventId) -> bool {
        self.lock().dead_letters(service).is_some_and(|dead| {
            dead.iter().any(|r| {
                purchase_saga::domain::Event::decode(r.payload.as_bytes()).is_ok_and(|e| e.event_id == id)
            })
        })
    }

    /// The host crashed and restarted empty (`broker-loss`): every stream,
    /// group, pending entry and dead letter is gone (entry ids keep rising).
    /// Returns how many entries were unacknowledged.
    pub fn lose_everything(&self) -> usize {
        let mut state = self.lock();
        let lost = state.unacknowledged();
        state.lose_everything();
        lost
    }

    /// Dead letters: (service, reason).
    pub fn dead_letters(&self) -> Vec<(Service, String)> {
        self.lock()
            .all_dead_letters()
            .map(|(s, r)| (s, r.reason.clone()))
            .collect()
    }

    pub fn handle(&self, request: Request) -> Response {
        let plan = &self.world.plan;
        match request {
            Request::Publish { streams, payload } => {
                self.check_from_outbox(&payload);
                let payload: Arc<str> = payload.into();
                let mut poison_after = self.poison_due();
                for service in streams {
                    if self.world.strikes(plan.drop_publish_per_mille) {
                        self.world.fault(
                            FaultKind::DropPublish,
                            None,
                            format!("bus lost a publish for {service}"),
                        );
                        continue;
                    }
                    let twice = self.world.strikes(plan.duplicate_per_mille);
                    let mut state = self.lock();
                    state.append(service, payload.clone());
                    if twice {
                        state.append(service, payload.clone());
                        drop(state);
                        self.world.fault(
                            FaultKind::Duplicate,
                            None,
                            format!("bus appended a publish twice for {service}"),
                        );
                    } else {
                        drop(state);
                    }
                    if std::mem::take(&mut poison_after) {
                        self.append_poison(service);
                    }
                }
                Response::Done
            }
            Request::Receive {
                service,
                consumer,
                max,
            } => {
                if !self.lock().has_group(service) {
                    return Response::NoGroup;
                }
                Response::Deliveries(self.receive(service, &consumer, max))
            }
            Request::EnsureGroup { service } => {
                self.lock().create_group(service);
                Response::Done
            }
            Request::Ack { service, id } => {
                if self.lose_ack(service, id) {
                    return Response::Done;
                }
                let acked = {
                    let mut state = self.lock();
                    let acked = state.ack(service, id);
                    state.trim(service);
                    acked
                };
                self.count_takeover_race(service, id, acked.is_some());
                if let Some(payload) = acked {
                    self.check_applied(service, id, &payload);
                }
                Response::Done
            }
            Request::DeadLetter {
                service,
                id,
                reason,
                payload,
            } => {
                let mut state = self.lock();
                let attempt = state
                    .pending(service)
                    .iter()
                    .find(|(p, _)| *p == id)
                    .map_or(0, |(_, p)| p.count);
                state
                    .dead_letter(service, id, &reason, payload.into(), attempt)
                    .expect("the broker's dead-letter lists are never of the wrong type");
                state.trim(service);
                drop(state);
                self.world.log(
                    crate::world::EntryKind::Driver { at: Some(service) },
                    format!("dead-letter {service} #{id}: {reason}"),
                );
                // The simulator injects no poison but the steer's: whatever
                // else is dead-lettered was a good event given up on.
                if self.steering().poison.contains(&(service, id)) {
                    return Response::Done;
                }
                self.world.found(Finding::new(
                    check::NO_DEAD_LETTER,
                    format!("{service} entry #{id}"),
                    format!("dead-lettered a good event: {reason}"),
                ));
                Response::Done
            }
        }
    }

    /// Whether this publish is one the `poison-in-batch` steer follows
    /// with a poison entry (the next [`POISON_ENTRIES`] from its start).
    fn poison_due(&self) -> bool {
        self.world
            .steered(FaultKind::PoisonInBatch, self.world.clock.elapsed_ms())
            .is_some()
            && self.steering().poison.len() < POISON_ENTRIES as usize
    }

    /// Appends a poison entry to `service`'s stream, right after a good
    /// one: a payload no build decodes, which the consumer must
    /// dead-letter alone while it applies the good entries of its batch.
    fn append_poison(&self, service: Service) {
        let n = self.steering().poison.len();
        let id = self
            .lock()
            .append(service, Arc::from(format!("{{\"poison\":{n}}}").as_str()));
        self.steering().poison.insert((service, id));
        self.world.log(
            crate::world::EntryKind::Driver { at: Some(service) },
            format!("steer: poison entry #{id} appended to {service}'s stream"),
        );
    }

    /// The `applied-past-limit` steer: the first entry acknowledged from
    /// its start loses every ack while its delivery count is within the
    /// consumer's `deliveries_max`, so its last delivery comes past the
    /// limit. Whether the ack is lost.
    fn lose_ack(&self, service: Service, id: EntryId) -> bool {
        if self
            .world
            .steered(FaultKind::AppliedPastLimit, self.world.clock.elapsed_ms())
            .is_none()
        {
            return false;
        }
        let victim = *self.steering().ack_victim.get_or_insert((service, id));
        if victim != (service, id) {
            return false;
        }
        let count = self
            .lock()
            .pending(service)
            .into_iter()
            .find(|(p, _)| *p == id)
            .map(|(_, p)| p.count);
        match count {
            Some(count) if count <= self.world.deliveries_max => {
                self.world.log(
                    crate::world::EntryKind::Driver { at: Some(service) },
                    format!("steer: ack of {service} #{id} lost (delivery {count})"),
                );
                true
            }
            _ => false,
        }
    }

    /// How long the broker holds `request` before it handles it: the
    /// `claim-raced-takeover` steer holds the first ack from its start past
    /// the visibility timeout, so another consumer takes the entry over
    /// and acknowledges it first.
    fn hold(&self, request: &Request) -> Option<Duration> {
        let Request::Ack { service, id } = request else {
            return None;
        };
        self.world
            .steered(FaultKind::ClaimRacedTakeover, self.world.clock.elapsed_ms())?;
        let mut steering = self.steering();
        if std::mem::replace(&mut steering.ack_held, true) {
            return None;
        }
        drop(steering);
        self.world.log(
            crate::world::EntryKind::Driver { at: Some(*service) },
            format!("steer: broker holds the ack of {service} #{id} for {TAKEOVER_HOLD_MS}ms"),
        );
        Some(Duration::from_millis(TAKEOVER_HOLD_MS))
    }

    /// Counts [`FaultKind::ClaimRacedTakeover`]: an entry that a takeover
    /// handed to a second consumer acknowledged twice (`acked`: whether
    /// this ack found it pending).
    fn count_takeover_race(&self, service: Service, id: EntryId, acked: bool) {
        let mut steering = self.steering();
        if !steering.taken_over.contains(&(service, id)) {
            return;
        }
        if acked {
            steering.acked_after_takeover.insert((service, id));
        } else if steering.acked_after_takeover.remove(&(service, id)) {
            steering.taken_over.remove(&(service, id));
            drop(steering);
            self.world.count(FaultKind::ClaimRacedTakeover);
        }
    }

    /// "Emitted events commit with the state change", checked where an event
    /// reaches the bus: it must be a committed outbox row of its emitter.
    /// Also records the publish for the "mark after publish" check.
    fn check_from_outbox(&self, payload: &str) {
        let event = match purchase_saga::domain::Event::decode(payload.as_bytes()) {
            Ok(event) => event,
            Err(e) => {
                return self.world.found(Finding::new(
                    check::PUBLISH_FROM_OUTBOX,
                    "bus",
                    format!("published an undecodable event: {e}"),
                ))
            }
        };
        self.world.received(event.emitter(), event.event_id);
        if !self.world.is_committed_outbox(&event) {
            self.world.found(Finding::new(
                check::PUBLISH_FROM_OUTBOX,
                format!("order {}", event.order_id),
                format!(
                    "{} reached the bus but is no committed outbox row of {}",
                    event.summary(),
                    event.emitter()
                ),
            ));
        }
    }

    /// The delivery rule "ack only after commit", checked where the ack
    /// lands: the acknowledged event must be in the service's inbox, or
    /// have been there until a pruner deleted it (the commit came first;
    /// a pruner that deletes ids too young shows as a double application,
    /// not here).
    fn check_applied(&self, service: Service, id: u64, payload: &str) {
        let Ok(event) = purchase_saga::domain::Event::decode(payload.as_bytes()) else {
            return;
        };
        if !self.world.ever_processed(service, event.event_id) {
            self.world.found(Finding::new(
                check::ACK_AFTER_COMMIT,
                format!("{service} entry #{id}"),
                format!("acknowledged {} before its service committed it", event.summary()),
            ));
        }
    }

    /// `RedisBus::receive` on the model (idle pending entries claimed, then
    /// new ones, up to `max`), with the faults: a delivery lost after the
    /// broker marked it, and sometimes one entry another consumer still
    /// holds handed out again (a duplicate).
    fn receive(&self, service: Service, consumer: &str, max: usize) -> Vec<(u64, u32, String)> {
        let now = self.world.clock.elapsed_ms();
        let plan = &self.world.plan;
        let batch = {
            let mut state = self.lock();
            // Planted bug (mutants feature): at-most-once, like Pub/Sub.
            if purchase_saga::mutant!(AtMostOnceBus) {
                state.read_new(service, consumer, max, now)
            } else {
                state.receive(service, consumer, max, VISIBILITY_MS, now, || Arc::from(""))
            }
        };
        {
            let mut steering = self.steering();
            for d in batch.iter().filter(|d| d.attempt > 1) {
                steering.taken_over.insert((service, d.id));
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            if self.world.strikes(plan.drop_delivery_per_mille) {
                self.world.fault(
                    FaultKind::DropDelivery,
                    Some(service),
                    format!("bus lost delivery #{} to {consumer}", d.id),
                );
            } else {
                out.push((d.id, d.attempt, d.payload.to_string()));
            }
        }
        if self.world.strikes(plan.duplicate_per_mille) {
            let held = {
                let state = self.lock();
                state
                    .pending(service)
                    .into_iter()
                    .find(|(id, _)| !out.iter().any(|d| d.0 == *id))
                    .and_then(|(id, p)| Some((id, p.count, state.payload(service, id)?.to_string())))
            };
            if let Some(d) = held {
                self.world.fault(
                    FaultKind::Duplicate,
                    Some(service),
                    format!("bus delivered held #{} again to {consumer}", d.0),
                );
                out.push(d);
            }
        }
        let poisoned = {
            let steering = self.steering();
            out.iter()
                .filter(|d| steering.poison.contains(&(service, d.0)))
                .count()
        };
        if poisoned > 0 && poisoned < out.len() {
            self.world.count(FaultKind::PoisonInBatch);
        }
        out
    }
}

/// Reads one length-prefixed frame; None at a clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    assert!(bytes.len() <= FRAME_BYTES_MAX, "frame too large to send");
    w.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    w.write_all(bytes).await?;
    w.flush().await
}

/// The broker host's software: accepts connections and answers requests,
/// one at a time per connection, until the host is crashed.
pub async fn serve(broker: Broker) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (mut socket, _) = listener.accept().await?;
        let broker = broker.clone();
        tokio::task::spawn_local(async move {
            // Bounded: ends at EOF, on an error, or after an idle spell.
            while let Ok(Ok(Some(frame))) = tokio::time::timeout(IDLE_CLOSE, read_frame(&mut socket)).await {
                let Some(request) = Request::decode(&frame) else {
                    return;
                };
                if let Some(hold) = broker.hold(&request) {
                    tokio::time::sleep(hold).await;
                }
                let response = broker.handle(request).encode();
                if write_frame(&mut socket, &response).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_survive_the_wire() {
        let requests = [
            Request::Publish {
                streams: vec![Service::User, Service::Notification],
                payload: "{\"a\":\"é\\n\"}".into(),
            },
            Request::Receive {
                service: Service::Item,
                consumer: "item-r1".into(),
                max: 8,
            },
            Request::Ack {
                service: Service::Order,
                id: u64::MAX,
            },
            Request::DeadLetter {
                service: Service::Payment,
                id: 7,
                reason: "why".into(),
                payload: String::new(),
            },
            Request::EnsureGroup {
                service: Service::User,
            },
        ];
        for r in requests {
            assert_eq!(Request::decode(&r.encode()), Some(r));
        }
        for r in [
            Response::Done,
            Response::Deliveries(vec![(1, 2, "x".into()), (3, 1, String::new())]),
            Response::NoGroup,
        ] {
            assert_eq!(Response::decode(&r.encode()), Some(r));
        }
        let frame = Request::Ack {
            service: Service::Order,
            id: 1,
        }
        .encode();
        assert_eq!(Request::decode(&frame[..frame.len() - 1]), None, "truncated");
        assert_eq!(
            Request::decode(&[frame.as_slice(), &[0]].concat()),
            None,
            "trailing byte"
        );
        assert_eq!(Request::decode(&[9]), None, "unknown tag");
    }
}
