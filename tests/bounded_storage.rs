//! Bounded storage under sustained load (issue 7):
//!
//! - On PgStore, the outbox and inbox tables stay flat over many rounds of
//!   orders: pruning (bounded batches) removes what the retention allows,
//!   and nothing younger than the retention (processed ids are kept longer
//!   than any redelivery window).
//! - On the real Redis, `RedisBus::trim` never removes an entry that a
//!   lagging consumer group has read but not acknowledged, or not read yet.

mod common;
mod http_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_pg_config, TestDb, TestRedis};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::cli::seed::seed_rows;
use purchase_saga::cli::serve::Running;
use purchase_saga::domain::event::{Event, Payload, PaymentFailed};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::invariants::check_quiescent;
use purchase_saga::domain::participants::order::PlaceOrder;
use purchase_saga::domain::{DurationMs, ItemId, OrderId, Service, Timestamp, UserId};
use purchase_saga::runtime::commands::place_order;
use purchase_saga::runtime::memory::MemoryBus;
use purchase_saga::runtime::store::Retention;
use purchase_saga::runtime::{Bus, Env, NoObserver, RuntimeConfig, Store, SystemClock};

const ROUNDS: usize = 6;
const ORDERS_PER_ROUND: usize = 12;
const BOUND: Duration = Duration::from_secs(30);

/// (outbox, inbox) rows summed over every service.
async fn table_rows(db: &TestDb) -> (i64, i64) {
    let mut total = (0, 0);
    for service in Service::ALL {
        let (outbox, inbox) = db.store.table_sizes(service).await.unwrap();
        total = (total.0 + outbox, total.1 + inbox);
    }
    total
}

async fn backlog(db: &TestDb) -> i64 {
    let mut total = 0;
    for service in Service::ALL {
        total += db.store.outbox_backlog(service).await.unwrap();
    }
    total
}

/// Prunes every service at `now` until a pass deletes nothing (bounded);
/// asserts each statement stayed within the batch. Returns rows deleted.
async fn prune_all(env: &Env, now: Timestamp) -> (u64, u64) {
    let retention = env.config.retention;
    let mut deleted = (0, 0);
    for service in Service::ALL {
        // Each pass deletes at least one row or ends the loop: bounded by
        // the rows a round can write.
        for pass in 0.. {
            assert!(pass < 10_000, "pruning {service} does not end");
            let p = env
                .store
                .prune(service, now, retention, env.config.redrive)
                .await
                .unwrap();
            assert!(
                p.inbox <= retention.batch as u64 && p.outbox <= retention.batch as u64,
                "a prune statement deleted more than its batch: {p:?}"
            );
            deleted = (deleted.0 + p.outbox, deleted.1 + p.inbox);
            if p.inbox + p.outbox == 0 {
                break;
            }
        }
    }
    deleted
}

/// Rounds of orders on PgStore (the bus in memory: the tables are the
/// point). After each round settles, pruning at the real time deletes no
/// processed id (they are younger than the retention); pruning once the
/// retention has passed (a `now` beyond it) empties both tables in batches
/// of 5. So the tables hold about one round's rows, round after round, while
/// the rows written grow with every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_and_inbox_stay_flat_over_many_rounds_with_pruning() {
    let db = TestDb::create_with(test_pg_config(30)).await;
    let retention = Retention {
        inbox: DurationMs::from_secs(600),
        outbox: DurationMs::from_secs(60),
        batch: 5,
    };
    let config = RuntimeConfig {
        retention,
        ..http_support::fast_config()
    };
    let bus = MemoryBus::new(Arc::new(SystemClock), DurationMs(30_000));
    let env = Env {
        store: Arc::new(db.store.clone()) as Arc<dyn Store>,
        bus: Arc::new(bus.clone()) as Arc<dyn Bus>,
        clock: Arc::new(SystemClock),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(NoObserver),
        config,
    };
    seed_rows(env.store.as_ref(), &http_support::scenario().opening_rows())
        .await
        .unwrap();
    let running = Running::start(&env, &Service::ALL, 1);
    let window = retention
        .inbox
        .max(retention.outbox)
        .max(env.config.redrive.horizon);
    let mut peaks = Vec::new();
    let mut pruned_total = 0;
    for round in 0..ROUNDS {
        for n in 0..ORDERS_PER_ROUND {
            let cmd = PlaceOrder {
                order_id: OrderId::parse(format!("r{round}-o{n}")).unwrap(),
                user_id: UserId::parse(["whale", "alice", "poor", "ghost"][n % 4]).unwrap(),
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 1,
                payment_method: "WALLET".into(),
            };
            place_order(&env, &cmd).await.unwrap();
        }
        let deadline = Instant::now() + BOUND;
        loop {
            let snapshot = env.store.snapshot().await.unwrap();
            let settled =
                check_quiescent(&snapshot).is_empty() && backlog(&db).await == 0 && bus.unacknowledged() == 0;
            if settled {
                assert_eq!(snapshot.orders.len(), (round + 1) * ORDERS_PER_ROUND);
                break;
            }
            assert!(Instant::now() < deadline, "round {round} did not settle");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let peak = table_rows(&db).await;
        assert!(
            peak.0 > 0 && peak.1 > 0,
            "round {round} wrote outbox and inbox rows"
        );
        // Young rows are kept: redeliveries and republishes may still come.
        let early = prune_all(&env, env.clock.now()).await;
        assert_eq!(
            early,
            (0, 0),
            "round {round}: pruned rows younger than the retention"
        );
        // Once the retention has passed, everything of the round goes.
        let later = Timestamp(env.clock.now().0 + window.0 + 1_000);
        let (outbox, inbox) = prune_all(&env, later).await;
        pruned_total += outbox + inbox;
        assert_eq!(table_rows(&db).await, (0, 0), "round {round}: pruned to empty");
        peaks.push(peak);
    }
    // Flat: no round holds more than the first round did, give or take
    // (user mix is the same each round), while the writes added up.
    let first = peaks[0].0 + peaks[0].1;
    for (round, peak) in peaks.iter().enumerate() {
        assert!(
            peak.0 + peak.1 <= first + first / 4,
            "round {round} holds {peak:?}, first round {:?}: not flat ({peaks:?})",
            peaks[0]
        );
    }
    assert!(
        pruned_total >= (ROUNDS as u64) * (first as u64) * 3 / 4,
        "pruning removed {pruned_total} rows over {ROUNDS} rounds of about {first}"
    );
    assert!(running.stop(Duration::from_secs(10)).await.is_empty());
}

fn payment_failed(order: &str) -> Event {
    Event::new(
        OrderId::parse(order).unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentFailed(PaymentFailed {
            reason: "declined".into(),
            attempted_amount: 1,
            item_id: ItemId::parse("sword").unwrap(),
        }),
    )
}

/// XREADGROUP for the `laggard` group: up to `count` new entries' ids.
async fn laggard_reads(conn: &mut redis::aio::MultiplexedConnection, key: &str, count: usize) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("laggard")
        .arg("l-1")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|k| k.ids.into_iter().map(|e| e.id))
        .collect()
}

async fn stream_ids(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    let range: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    range.ids.into_iter().map(|e| e.id).collect()
}

/// Order's own group reads and acknowledges everything; a second group
/// (`laggard`) reads four entries and acknowledges none. Trimming removes
/// nothing the laggard holds pending or has not read; as it acknowledges,
/// trimming follows it, and at the end it still reads every entry it had
/// not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_never_removes_entries_a_lagging_group_has_not_acknowledged() {
    let redis = TestRedis::create("trim-lag");
    let config = RedisConfig {
        prefix: redis.prefix.clone(),
        block: Duration::from_millis(20),
        ..RedisConfig::default()
    };
    let bus = RedisBus::connect(&redis.url, config)
        .await
        .unwrap_or_else(|e| panic!("Redis at {}: {e}", redis.url));
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = bus.stream_key(Service::Order);
    // The group exists before any entry: both groups start at the beginning.
    assert!(bus.receive(Service::Order, "o-1", 10).await.unwrap().is_empty());
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("laggard")
        .arg("0")
        .query_async(&mut conn)
        .await
        .unwrap();
    for n in 0..10 {
        bus.publish(&payment_failed(&format!("o-{n}"))).await.unwrap();
    }
    let all = stream_ids(&mut conn, &key).await;
    assert_eq!(all.len(), 10);
    // Order's group reads and acknowledges everything.
    let deliveries = bus.receive(Service::Order, "o-1", 10).await.unwrap();
    assert_eq!(deliveries.len(), 10);
    for d in &deliveries {
        bus.ack(Service::Order, &d.entry_id).await.unwrap();
    }
    // The laggard reads four and acknowledges none.
    let read = laggard_reads(&mut conn, &key, 4).await;
    assert_eq!(read, all[..4]);
    assert_eq!(
        bus.trim(Service::Order).await.unwrap(),
        0,
        "all is pending or unread for the laggard"
    );
    assert_eq!(stream_ids(&mut conn, &key).await, all);

    // It acknowledges two: only those may go.
    let _: i64 = redis::cmd("XACK")
        .arg(&key)
        .arg("laggard")
        .arg(&all[0])
        .arg(&all[1])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(bus.trim(Service::Order).await.unwrap(), 2);
    assert_eq!(stream_ids(&mut conn, &key).await, all[2..]);

    // It acknowledges the rest of what it read: the unread six stay.
    let _: i64 = redis::cmd("XACK")
        .arg(&key)
        .arg("laggard")
        .arg(&all[2])
        .arg(&all[3])
        .query_async(&mut conn)
        .await
        .unwrap();
    bus.trim(Service::Order).await.unwrap();
    let left = stream_ids(&mut conn, &key).await;
    assert!(
        all[4..].iter().all(|id| left.contains(id)),
        "trim removed entries the laggard never read: {left:?}"
    );
    assert_eq!(
        laggard_reads(&mut conn, &key, 100).await,
        all[4..],
        "the laggard reads every unread entry"
    );
}
