//! The Redis Streams bus against the real Redis: delivery, acknowledgement,
//! takeover of an unacknowledged entry after the visibility timeout,
//! dead letters, trimming, and recovery from a flushed Redis; and the Redis
//! defects of issue 17 (`defect7_*`: a dead letter that cannot be written
//! must leave its entry pending, and what the dead-letter cap drops is
//! counted; `defect8_*`: an entry deleted while pending is dead-lettered,
//! not lost); and issue 24's defect 5 (`defect5_*`: replicas running as
//! PID 1 in separate containers must not share a consumer name). Each test
//! uses its own key prefix, and runs twice (issue 25): on the single test
//! Redis (`NAME::single`) and on a private three-node Redis Cluster
//! (`NAME::cluster`, see `testkit/src/cluster.rs`).

mod bus_support;
mod common;

use std::time::{Duration, Instant};

use bus_support::{order_created, raw, Deployment, TestRedis};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::cli::serve::ProcessInstance;
use purchase_saga::domain::event::{Payload, PaymentFailed};
use purchase_saga::domain::{Event, ItemId, OrderId, Service, Timestamp, UserId};
use purchase_saga::runtime::bus::{Bus, Delivery};

const VISIBILITY: Duration = Duration::from_millis(600);

async fn bus(r: &TestRedis) -> RedisBus {
    RedisBus::connect(
        &r.url,
        RedisConfig {
            visibility_timeout: VISIBILITY,
            block: Duration::from_millis(50),
            ..r.config()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Receives until `want` deliveries arrived or the deadline passed.
async fn receive_until(bus: &RedisBus, service: Service, consumer: &str, want: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(bus.receive(service, consumer, want - got.len()).await.unwrap());
    }
    got
}

async fn publish_reaches_every_subscriber_once_and_ack_settles_it(d: Deployment) {
    let r = TestRedis::create(d, "bus-basic");
    let bus = bus(&r).await;
    let event = order_created(1);
    bus.publish(&event).await.unwrap();
    let got = receive_until(&bus, Service::User, "u-1", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attempt, 1);
    assert_eq!(
        got[0].payload,
        event.encode().into_bytes(),
        "the payload is the encoded event, byte for byte"
    );
    assert_eq!(bus.pending_count(Service::User).await.unwrap(), 1);
    assert!(
        bus.receive(Service::User, "u-1", 10).await.unwrap().is_empty(),
        "delivered once"
    );
    bus.ack(Service::User, &got[0].entry_id).await.unwrap();
    assert_eq!(bus.pending_count(Service::User).await.unwrap(), 0);

    let failed = Event::new(
        OrderId::parse("o-2").unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentFailed(PaymentFailed {
            reason: "declined".into(),
            attempted_amount: 100,
            item_id: ItemId::parse("sword").unwrap(),
        }),
    );
    bus.publish(&failed).await.unwrap();
    for service in Service::ALL {
        let expected =
            u64::from(service.subscribes_to(failed.event_type())) + u64::from(service == Service::User);
        assert_eq!(bus.stream_len(service).await.unwrap(), expected, "{service}");
    }
}

async fn unacknowledged_entry_is_taken_over_after_the_visibility_timeout(d: Deployment) {
    let r = TestRedis::create(d, "bus-claim");
    let bus = bus(&r).await;
    bus.publish(&order_created(1)).await.unwrap();
    // The entry's idle time starts when Redis delivers it, which is after
    // `asked_at`: a takeover before `asked_at + VISIBILITY` would be early.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (first, asked_at) = loop {
        let asked_at = Instant::now();
        let got = bus.receive(Service::User, "replica-a", 1).await.unwrap();
        if !got.is_empty() {
            break (got, asked_at);
        }
        assert!(Instant::now() < deadline, "the entry never arrived");
    };
    // replica-a "crashes": never acks. replica-b polls.
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let got = bus.receive(Service::User, "replica-b", 10).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "the entry was never taken over");
    };
    // Redis measures idle time in whole milliseconds of its own clock.
    let slack = Duration::from_millis(5);
    assert!(
        asked_at.elapsed() + slack >= VISIBILITY,
        "taken over only after the visibility timeout ({:?})",
        asked_at.elapsed()
    );
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].entry_id, first[0].entry_id);
    assert_eq!(taken[0].attempt, 2, "the delivery count comes from XPENDING");
    assert_eq!(taken[0].payload, first[0].payload);
    bus.ack(Service::User, &taken[0].entry_id).await.unwrap();
    assert_eq!(bus.pending_count(Service::User).await.unwrap(), 0);
}

async fn dead_letter_keeps_payload_and_reason_and_can_be_replayed(d: Deployment) {
    let r = TestRedis::create(d, "bus-dlq");
    let bus = bus(&r).await;
    let event = order_created(1);
    bus.publish(&event).await.unwrap();
    let got = receive_until(&bus, Service::User, "u-1", 1).await;
    bus.dead_letter(Service::User, &got[0], "not applied after 10 deliveries")
        .await
        .unwrap();
    assert_eq!(
        bus.pending_count(Service::User).await.unwrap(),
        0,
        "dead-lettering acknowledges"
    );
    let dead = bus.dead_letters(Service::User, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].letter.payload, event.encode().into_bytes());
    assert_eq!(dead[0].letter.reason, "not applied after 10 deliveries");
    assert_eq!(dead[0].letter.entry_id, got[0].entry_id);
    assert_eq!(dead[0].letter.service, Service::User);
    assert_eq!(dead[0].attempt, 1);

    let replayed = bus
        .replay_dead_letter(Service::User, &dead[0].dead_id)
        .await
        .unwrap();
    assert!(replayed.is_some());
    assert_eq!(bus.dead_letter_count(Service::User).await.unwrap(), 0);
    let again = receive_until(&bus, Service::User, "u-1", 1).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].payload, event.encode().into_bytes());
    assert_eq!(again[0].attempt, 1, "a replay is a fresh entry");
    assert_eq!(
        bus.replay_dead_letter(Service::User, &dead[0].dead_id)
            .await
            .unwrap(),
        None
    );
}

/// Ids of the entries still in the stream.
async fn stream_ids(r: &TestRedis, bus: &RedisBus, service: Service) -> Vec<String> {
    let mut conn = raw(r).await;
    let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(bus.stream_key(service))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    range.ids.into_iter().map(|e| e.id).collect()
}

async fn trim_never_removes_unacknowledged_entries(d: Deployment) {
    let r = TestRedis::create(d, "bus-trim");
    let bus = bus(&r).await;
    assert_eq!(bus.trim(Service::User).await.unwrap(), 0, "no stream yet");
    for n in 0..5 {
        bus.publish(&order_created(n)).await.unwrap();
    }
    assert_eq!(
        bus.trim(Service::User).await.unwrap(),
        0,
        "no group has read anything"
    );
    let got = receive_until(&bus, Service::User, "u-1", 3).await;
    assert_eq!(got.len(), 3);
    bus.ack(Service::User, &got[0].entry_id).await.unwrap();
    bus.ack(Service::User, &got[2].entry_id).await.unwrap();
    // got[1] is pending: only got[0] (below it) may go.
    assert_eq!(bus.trim(Service::User).await.unwrap(), 1);
    let left = stream_ids(&r, &bus, Service::User).await;
    assert_eq!(left.len(), 4);
    assert_eq!(left[0], got[1].entry_id, "the pending entry stays");
    assert_eq!(
        bus.trim(Service::User).await.unwrap(),
        0,
        "nothing more is acknowledged below it"
    );

    // Settle everything: only the last delivered entry bounds the trim;
    // entries never delivered stay.
    bus.ack(Service::User, &got[1].entry_id).await.unwrap();
    let rest = receive_until(&bus, Service::User, "u-1", 1).await;
    bus.ack(Service::User, &rest[0].entry_id).await.unwrap();
    let trimmed = bus.trim(Service::User).await.unwrap();
    assert_eq!(
        trimmed, 2,
        "every acknowledged entry below the last delivered one"
    );
    let left = stream_ids(&r, &bus, Service::User).await;
    assert_eq!(
        left.len(),
        2,
        "the last delivered entry and the never-delivered one"
    );
    assert_eq!(left[0], rest[0].entry_id);
    let last = receive_until(&bus, Service::User, "u-1", 1).await;
    assert_eq!(last.len(), 1, "the undelivered entry is still delivered");
    assert_eq!(last[0].entry_id, left[1]);
}

async fn group_is_recreated_after_redis_lost_everything(d: Deployment) {
    let r = TestRedis::create(d, "bus-flush");
    let bus = bus(&r).await;
    bus.publish(&order_created(1)).await.unwrap();
    assert_eq!(receive_until(&bus, Service::User, "u-1", 1).await.len(), 1);
    // Emulated FLUSHALL, restricted to this test's keys.
    assert!(r.flush_prefix() > 0);
    assert!(
        bus.receive(Service::User, "u-1", 10).await.unwrap().is_empty(),
        "nothing left, no error"
    );
    bus.publish(&order_created(2)).await.unwrap();
    let got = receive_until(&bus, Service::User, "u-1", 1).await;
    assert_eq!(got.len(), 1, "the group was recreated and reads the new entry");
    assert_eq!(Event::decode(&got[0].payload).unwrap(), order_created(2));

    // The stream recreated by XADD alone (no group yet) is read from its
    // first entry once the group is recreated.
    r.flush_prefix();
    bus.publish(&order_created(3)).await.unwrap();
    let got = receive_until(&bus, Service::User, "u-1", 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(Event::decode(&got[0].payload).unwrap(), order_created(3));
}

#[tokio::test]
async fn wrong_url_names_the_target_and_the_cause() {
    let err = RedisBus::connect(
        "redis://:hunter2@127.0.0.1:1/0",
        RedisConfig {
            command_timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        },
    )
    .await
    .err()
    .expect("nothing listens on port 1");
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(
        !message.contains("hunter2"),
        "the password is redacted: {message}"
    );
}

async fn only_consumers_with_nothing_pending_are_removed(d: Deployment) {
    let r = TestRedis::create(d, "bus-consumers");
    let bus = bus(&r).await;
    bus.publish(&order_created(1)).await.unwrap();
    bus.publish(&order_created(2)).await.unwrap();
    assert_eq!(receive_until(&bus, Service::User, "holder", 1).await.len(), 1);
    // Redis creates a consumer when it first gets an entry.
    let done = receive_until(&bus, Service::User, "idle", 1).await;
    bus.ack(Service::User, &done[0].entry_id).await.unwrap();
    let mut consumers = bus.consumers(Service::User).await.unwrap();
    consumers.sort();
    assert_eq!(
        consumers,
        vec![("holder".to_string(), 1), ("idle".to_string(), 0)]
    );
    // Nobody has been idle for an hour.
    assert_eq!(
        bus.remove_idle_consumers(Service::User, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        bus.remove_idle_consumers(Service::User, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        bus.consumers(Service::User).await.unwrap(),
        vec![("holder".to_string(), 1)]
    );
    assert_eq!(
        bus.pending_count(Service::User).await.unwrap(),
        1,
        "the pending entry is still there"
    );
    assert_eq!(
        bus.remove_idle_consumers(Service::Payment, Duration::ZERO)
            .await
            .unwrap(),
        0,
        "no group"
    );
}

/// Issue 17, defect 7: with MULTI/EXEC the XACK ran although the XADD of
/// the dead letter failed (WRONGTYPE), so the entry left the pending list
/// and was in no dead-letter stream: gone.
async fn defect7_a_dead_letter_that_cannot_be_written_leaves_the_entry_pending(d: Deployment) {
    let r = TestRedis::create(d, "bus-dead-wrongtype");
    let bus = bus(&r).await;
    let mut conn = raw(&r).await;
    bus.publish(&order_created(1)).await.unwrap();
    let got = receive_until(&bus, Service::User, "u-1", 1).await;
    assert_eq!(got.len(), 1);
    let _: () = redis::cmd("SET")
        .arg(bus.dead_key(Service::User))
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let failed = bus.dead_letter(Service::User, &got[0], "poison").await;
    assert_eq!(
        bus.pending_count(Service::User).await.unwrap(),
        1,
        "the entry stays pending when its dead letter cannot be written ({failed:?})"
    );
    let err = failed.expect_err("the dead letter fails");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");

    // Once the key is repaired the same dead letter goes through.
    let _: i64 = redis::cmd("DEL")
        .arg(bus.dead_key(Service::User))
        .query_async(&mut conn)
        .await
        .unwrap();
    bus.dead_letter(Service::User, &got[0], "poison").await.unwrap();
    assert_eq!(bus.pending_count(Service::User).await.unwrap(), 0);
    let dead = bus.dead_letters(Service::User, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].letter.entry_id, got[0].entry_id);
}

/// Issue 17, defect 7: `MAXLEN ~` dropped the oldest dead letters without a
/// word. What the cap drops is now counted (and logged).
async fn defect7_dead_letters_dropped_by_the_cap_are_counted(d: Deployment) {
    const LETTERS: usize = 250;
    let r = TestRedis::create(d, "bus-dead-cap");
    let bus = RedisBus::connect(
        &r.url,
        RedisConfig {
            visibility_timeout: VISIBILITY,
            block: Duration::from_millis(50),
            dead_letters_max: 10,
            ..r.config()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for n in 0..LETTERS {
        bus.publish(&order_created(n)).await.unwrap();
    }
    let got = receive_until(&bus, Service::User, "u-1", LETTERS).await;
    assert_eq!(got.len(), LETTERS);
    for d in &got {
        bus.dead_letter(Service::User, d, "poison").await.unwrap();
    }
    let mut conn = raw(&r).await;
    let counted: Option<u64> = redis::cmd("GET")
        .arg(bus.dead_trimmed_key(Service::User))
        .query_async(&mut conn)
        .await
        .unwrap();
    let kept = bus.dead_letter_count(Service::User).await.unwrap();
    assert!(
        kept < LETTERS as u64,
        "the cap dropped some (MAXLEN ~ trims whole nodes of 100)"
    );
    assert_eq!(
        counted.unwrap_or(0) + kept,
        LETTERS as u64,
        "every dead letter is either kept or counted as dropped"
    );
    assert_eq!(
        bus.dead_letters_trimmed(Service::User).await.unwrap(),
        LETTERS as u64 - kept
    );
}

/// Issue 17, defect 8: XAUTOCLAIM's third reply element (entries deleted
/// while pending) was ignored, so such an entry was neither handled, nor
/// logged, nor dead-lettered. Now it is dead-lettered with its id.
async fn defect8_an_entry_deleted_while_pending_is_dead_lettered(d: Deployment) {
    let r = TestRedis::create(d, "bus-deleted-pending");
    let bus = bus(&r).await;
    let mut conn = raw(&r).await;
    bus.publish(&order_created(1)).await.unwrap();
    bus.publish(&order_created(2)).await.unwrap();
    let held = receive_until(&bus, Service::User, "crashed", 2).await;
    assert_eq!(held.len(), 2);
    let _: i64 = redis::cmd("XDEL")
        .arg(bus.stream_key(Service::User))
        .arg(&held[0].entry_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The survivor is taken over once idle; by then the claim has met the
    // deleted entry too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        let got = bus.receive(Service::User, "live", 10).await.unwrap();
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "nothing was taken over");
    };
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].entry_id, held[1].entry_id);
    let dead = bus.dead_letters(Service::User, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "the deleted entry is dead-lettered: {dead:?}");
    assert_eq!(dead[0].letter.entry_id, held[0].entry_id);
    assert_eq!(dead[0].letter.reason, "deleted from the stream while pending");
    assert!(dead[0].letter.payload.is_empty());
    assert_eq!(
        bus.pending_count(Service::User).await.unwrap(),
        1,
        "only the taken-over entry is pending"
    );
}

/// A bus whose consumers' heartbeats live `ttl`, with a visibility timeout
/// of `visibility`.
async fn bus_with(r: &TestRedis, visibility: Duration, ttl: Duration) -> RedisBus {
    RedisBus::connect(
        &r.url,
        RedisConfig {
            visibility_timeout: visibility,
            block: Duration::from_millis(50),
            heartbeat_ttl: ttl,
            ..r.config()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Receives as `consumer` until one delivery arrives; returns it with the
/// time the successful receive was asked for.
async fn first_delivery(bus: &RedisBus, consumer: &str) -> (Delivery, Instant) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let asked_at = Instant::now();
        let mut got = bus.receive(Service::User, consumer, 1).await.unwrap();
        if let Some(d) = got.pop() {
            return (d, asked_at);
        }
        assert!(Instant::now() < deadline, "no delivery for {consumer}");
    }
}

async fn a_batch_is_published_in_order_to_every_subscriber(d: Deployment) {
    let r = TestRedis::create(d, "bus-batch");
    let bus = bus(&r).await;
    let events: Vec<Event> = (1..=5).map(order_created).collect();
    let refs: Vec<&Event> = events.iter().collect();
    bus.publish_batch(&refs).await.unwrap();
    let got = receive_until(&bus, Service::User, "u-1", 5).await;
    let payloads: Vec<Vec<u8>> = got.iter().map(|d| d.payload.clone()).collect();
    let expected: Vec<Vec<u8>> = events.iter().map(|e| e.encode().into_bytes()).collect();
    assert_eq!(payloads, expected, "every event once, in the batch's order");
    for service in Service::ALL.into_iter().filter(|s| *s != Service::User) {
        assert_eq!(
            bus.stream_len(service).await.unwrap(),
            0,
            "{service} subscribes to none"
        );
    }
    bus.publish_batch(&[]).await.unwrap();
}

async fn a_batch_that_fails_reports_what_came_before_the_failed_stream_published(d: Deployment) {
    let r = TestRedis::create(d, "bus-batch-fail");
    let bus = bus(&r).await;
    // Inventory's stream key holds a string: every XADD to it fails.
    let mut conn = raw(&r).await;
    let _: () = redis::cmd("SET")
        .arg(bus.stream_key(Service::Inventory))
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ok = order_created(1);
    let failed = Event::new(
        OrderId::parse("o-2").unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentFailed(PaymentFailed {
            reason: "declined".into(),
            attempted_amount: 100,
            item_id: ItemId::parse("sword").unwrap(),
        }),
    );
    assert!(
        purchase_saga::domain::service::subscribers(failed.event_type()).contains(&Service::Inventory),
        "the second event goes to the broken stream"
    );
    let err = bus.publish_batch(&[&ok, &failed, &ok]).await.unwrap_err();
    assert_eq!(
        err.published, 1,
        "published up to the first event with an XADD in a failed pipeline (a failed pipeline does \
         not say which of its commands went out): the relay publishes the rest again"
    );
    assert_eq!(
        bus.stream_len(Service::User).await.unwrap(),
        2 + u64::from(Service::User.subscribes_to(failed.event_type())),
        "the streams whose pipelines succeeded got their XADDs"
    );
}

async fn a_gone_consumers_entries_are_taken_within_the_heartbeat_ttl(d: Deployment) {
    const TTL: Duration = Duration::from_millis(500);
    const VISIBILITY: Duration = Duration::from_secs(30);
    let r = TestRedis::create(d, "bus-gone");
    let gone = bus_with(&r, VISIBILITY, TTL).await;
    gone.publish(&order_created(1)).await.unwrap();
    let (first, last_heartbeat) = first_delivery(&gone, "gone-a").await;
    // The process of "gone-a" ends: nothing refreshes its heartbeat.
    drop(gone);
    let live = bus_with(&r, VISIBILITY, TTL).await;
    let (taken, _) = first_delivery(&live, "live-b").await;
    let after = last_heartbeat.elapsed();
    assert_eq!(taken.entry_id, first.entry_id);
    assert_eq!(taken.attempt, 2);
    assert_eq!(taken.payload, first.payload);
    assert!(
        after + Duration::from_millis(5) >= TTL,
        "taken only once the heartbeat expired ({after:?})"
    );
    assert!(
        after < Duration::from_secs(3),
        "taken within seconds, not after the visibility timeout ({after:?})"
    );
    live.ack(Service::User, &taken.entry_id).await.unwrap();
    assert_eq!(live.pending_count(Service::User).await.unwrap(), 0);
}

async fn a_live_but_slow_consumer_keeps_its_entries_for_the_visibility_timeout(d: Deployment) {
    const TTL: Duration = Duration::from_millis(300);
    const VISIBILITY: Duration = Duration::from_millis(2_500);
    let r = TestRedis::create(d, "bus-slow");
    let slow = bus_with(&r, VISIBILITY, TTL).await;
    slow.publish(&order_created(1)).await.unwrap();
    let (first, asked_at) = first_delivery(&slow, "slow-a").await;
    // "slow-a" is busy in a handler: it never receives again, but its
    // process (the bus) lives and keeps its heartbeat.
    let live = bus_with(&r, VISIBILITY, TTL).await;
    let (taken, _) = first_delivery(&live, "live-b").await;
    let after = asked_at.elapsed();
    assert!(
        after + Duration::from_millis(5) >= VISIBILITY,
        "a live consumer's entry waits for the visibility timeout ({after:?}), \
         although its heartbeat TTL passed many times"
    );
    assert_eq!(
        (taken.entry_id.as_str(), taken.attempt),
        (first.entry_id.as_str(), 2)
    );
    drop(slow);
}

async fn a_gone_consumers_entries_are_taken_at_once_and_its_deleted_ones_dead_lettered(d: Deployment) {
    let r = TestRedis::create(d, "bus-forget");
    let bus = bus_with(&r, Duration::from_secs(30), Duration::from_secs(2)).await;
    let mut conn = raw(&r).await;
    bus.publish(&order_created(1)).await.unwrap();
    bus.publish(&order_created(2)).await.unwrap();
    let held = receive_until(&bus, Service::User, "old", 2).await;
    assert_eq!(held.len(), 2);
    let _: i64 = redis::cmd("XDEL")
        .arg(bus.stream_key(Service::User))
        .arg(&held[0].entry_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        bus.receive(Service::User, "new", 10).await.unwrap().is_empty(),
        "\"old\" is alive: its entries stay"
    );
    bus.forget_consumer(Service::User, "old").await.unwrap();
    let taken = bus.receive(Service::User, "new", 10).await.unwrap();
    assert_eq!(
        taken
            .iter()
            .map(|d| (d.entry_id.as_str(), d.attempt))
            .collect::<Vec<_>>(),
        [(held[1].entry_id.as_str(), 2)],
        "the next receive takes the gone consumer's entry, not after the visibility timeout"
    );
    let dead = bus.dead_letters(Service::User, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "the deleted entry is dead-lettered: {dead:?}");
    assert_eq!(dead[0].letter.entry_id, held[0].entry_id);
    assert_eq!(dead[0].letter.reason, "deleted from the stream while pending");
    assert_eq!(bus.pending_count(Service::User).await.unwrap(), 1);
}

/// Issue 24, defect 5: consumer names were `{slug}-{pid}-{replica}`, the
/// same for twins running as PID 1 in two containers. A crashed twin's
/// heartbeat key was the live twin's, refreshed for ever, and its pending
/// entries were the live twin's own (the claim never takes a consumer's
/// entries for itself): they waited for the visibility timeout.
async fn defect5_twins_running_as_pid_1_in_two_containers_take_over_each_others_entries_within_the_ttl(
    d: Deployment,
) {
    const TTL: Duration = Duration::from_millis(500);
    const VISIBILITY: Duration = Duration::from_secs(30);
    let r = TestRedis::create(d, "bus-twins");
    // Two containers of one service, each running the binary as PID 1.
    let crashing_name = ProcessInstance::with_pid(1).consumer_name(Service::User, 0);
    let live_name = ProcessInstance::with_pid(1).consumer_name(Service::User, 0);
    let crashing = bus_with(&r, VISIBILITY, TTL).await;
    let live = bus_with(&r, VISIBILITY, TTL).await;
    live.keep_alive(Service::User, &live_name).await.unwrap();
    crashing.publish(&order_created(1)).await.unwrap();
    let (held, _) = first_delivery(&crashing, &crashing_name).await;
    // The first container dies: its bus (and heartbeat task) with it.
    drop(crashing);
    let crashed_at = Instant::now();
    let taken = loop {
        let got = live.receive(Service::User, &live_name, 10).await.unwrap();
        if let Some(d) = got.into_iter().find(|d| d.entry_id == held.entry_id) {
            break d;
        }
        assert!(
            crashed_at.elapsed() < TTL * 4,
            "the crashed twin's entry was not taken over within {:?} (consumer names: crashed {crashing_name:?}, \
             live {live_name:?}); it waits for the {VISIBILITY:?} visibility timeout",
            TTL * 4
        );
    };
    assert_eq!((taken.attempt, &taken.payload), (2, &held.payload));
    live.ack(Service::User, &taken.entry_id).await.unwrap();
    for name in [&crashing_name, &live_name] {
        assert!(
            name.starts_with("user-1-") && name.ends_with("-0") && name.len() <= 40,
            "a name says service, pid and replica, and stays short: {name:?}"
        );
    }
}

/// Issue 23: a replica cut off the bus stops its heartbeat too (torture's
/// partitions), so the others take over its entries within the TTL.
async fn a_paused_heartbeat_hands_the_consumers_entries_over_within_the_ttl(d: Deployment) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const TTL: Duration = Duration::from_millis(300);
    const VISIBILITY: Duration = Duration::from_secs(30);
    let r = TestRedis::create(d, "bus-paused");
    let cut_off = bus_with(&r, VISIBILITY, TTL).await;
    let paused = Arc::new(AtomicBool::new(false));
    let gate = paused.clone();
    cut_off.pause_heartbeat_while(move || gate.load(Ordering::SeqCst));
    let live = bus_with(&r, VISIBILITY, TTL).await;
    cut_off.publish(&order_created(1)).await.unwrap();
    let (held, _) = first_delivery(&cut_off, "cut-off").await;
    let until = Instant::now() + TTL * 3;
    while Instant::now() < until {
        assert!(
            live.receive(Service::User, "live", 10).await.unwrap().is_empty(),
            "not paused: the holder's heartbeat is kept"
        );
    }
    paused.store(true, Ordering::SeqCst);
    let paused_at = Instant::now();
    let (taken, _) = first_delivery(&live, "live").await;
    assert_eq!(
        (taken.entry_id.as_str(), taken.attempt),
        (held.entry_id.as_str(), 2)
    );
    assert!(
        paused_at.elapsed() < TTL * 4,
        "taken within the TTL ({:?})",
        paused_at.elapsed()
    );
    drop(cut_off);
}

/// Keys of the cluster test's prefix on each node, by `redis-cli -p PORT
/// --scan` (what every node holds, whatever the client routes).
fn keys_per_node(cluster: &bus_support::TestCluster, prefix: &str) -> Vec<Vec<String>> {
    cluster
        .ports()
        .iter()
        .map(|port| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "--scan", "--pattern"])
                .arg(purchase_saga::adapters::redis::keys::scan_pattern(prefix))
                .output()
                .expect("redis-cli");
            let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            keys.sort();
            keys
        })
        .collect()
}

/// Issue 25: a bus given one node of a cluster and told it is a cluster
/// (`--redis-cluster`, `REDIS_CLUSTER=1`) reaches every node; each
/// service's keys share one slot, the services spread over the nodes, and
/// deleting the prefix clears every node.
#[tokio::test]
async fn a_seed_url_with_the_cluster_flag_spreads_services_over_the_nodes_and_cleanup_reaches_every_node() {
    let cluster = bus_support::TestCluster::shared();
    let prefix = format!("ps_test:bus-seed:{}", common::random_suffix());
    let bus = RedisBus::connect(
        &cluster.seed_url(),
        RedisConfig {
            prefix: prefix.clone(),
            visibility_timeout: VISIBILITY,
            block: Duration::from_millis(50),
            cluster: true,
            ..RedisConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(bus.is_cluster());
    let failed = Event::new(
        OrderId::parse("o-1").unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentFailed(PaymentFailed {
            reason: "declined".into(),
            attempted_amount: 100,
            item_id: ItemId::parse("sword").unwrap(),
        }),
    );
    bus.publish_batch(&[&order_created(1), &failed]).await.unwrap();
    for service in Service::ALL {
        if service.subscribes_to(failed.event_type()) || service == Service::User {
            let got = receive_until(&bus, service, "c", 1).await;
            assert_eq!(got.len(), 1, "{service}");
            bus.dead_letter(service, &got[0], "test").await.unwrap();
        }
    }
    let mut conn = bus.connection();
    let mut slots: std::collections::BTreeMap<Service, std::collections::BTreeSet<u16>> = Default::default();
    let keys = conn.keys_of_prefix(&prefix).await.unwrap();
    for key in &keys {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let service = Service::ALL
            .into_iter()
            .find(|s| key.starts_with(&format!("{{{prefix}:{}}}", s.slug())))
            .unwrap_or_else(|| panic!("{key} names no service"));
        slots.entry(service).or_default().insert(slot);
    }
    assert!(slots.len() > 1, "several services have keys: {keys:?}");
    for (service, slots) in &slots {
        assert_eq!(slots.len(), 1, "{service}'s keys share one slot: {keys:?}");
    }
    let per_node = keys_per_node(&cluster, &prefix);
    assert!(
        per_node.iter().filter(|k| !k.is_empty()).count() > 1,
        "the services' keys spread over several nodes: {per_node:?}"
    );
    assert_eq!(
        per_node.iter().map(Vec::len).sum::<usize>(),
        keys.len(),
        "keys_of_prefix lists every node's keys"
    );
    assert_eq!(bus.delete_all_keys().await.unwrap(), keys.len() as u64);
    assert!(
        keys_per_node(&cluster, &prefix).iter().all(Vec::is_empty),
        "no key of the prefix is left on any node"
    );
}

/// Issue 25: the keys each service's scripts and MULTI use share its hash
/// tag; a prefix with a brace would move it, and is refused.
#[tokio::test]
async fn a_prefix_with_a_brace_is_refused() {
    let r = TestRedis::create(Deployment::Single, "bus-brace");
    let err = RedisBus::connect(
        &r.url,
        RedisConfig {
            prefix: format!("{}{{x}}", r.prefix),
            ..r.config()
        },
    )
    .await
    .err()
    .expect("a brace in the prefix is refused");
    assert!(err.to_string().contains("brace"), "{err}");
}

crate::on_both_deployments!(
    publish_reaches_every_subscriber_once_and_ack_settles_it,
    unacknowledged_entry_is_taken_over_after_the_visibility_timeout,
    dead_letter_keeps_payload_and_reason_and_can_be_replayed,
    trim_never_removes_unacknowledged_entries,
    group_is_recreated_after_redis_lost_everything,
    only_consumers_with_nothing_pending_are_removed,
    defect7_a_dead_letter_that_cannot_be_written_leaves_the_entry_pending,
    defect7_dead_letters_dropped_by_the_cap_are_counted,
    defect8_an_entry_deleted_while_pending_is_dead_lettered,
    a_batch_is_published_in_order_to_every_subscriber,
    a_batch_that_fails_reports_what_came_before_the_failed_stream_published,
    a_gone_consumers_entries_are_taken_within_the_heartbeat_ttl,
    a_live_but_slow_consumer_keeps_its_entries_for_the_visibility_timeout,
    a_gone_consumers_entries_are_taken_at_once_and_its_deleted_ones_dead_lettered,
    defect5_twins_running_as_pid_1_in_two_containers_take_over_each_others_entries_within_the_ttl,
    a_paused_heartbeat_hands_the_consumers_entries_over_within_the_ttl,
);
