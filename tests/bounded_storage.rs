//! Bounded storage under sustained load (issue 7):
//!
//! - On PgStore, the outbox and inbox tables stay flat over many rounds of
//!   orders: pruning (bounded batches) removes what the retention allows,
//!   and nothing younger than the retention (processed ids are kept longer
//!   than any redelivery window).
//! - Issue 13: the runtime's own pruner loop (`sweeper::run_pruner`, the
//!   one `Running` starts) on PgStore, over twelve periods of a clock the
//!   test runs 200 times faster than real time, keeps the rows held flat,
//!   deletes nothing inside the retention or the re-drive horizon, and
//!   every saga finishes with exactly-once grant and notification. The
//!   planted bugs `prune-live-inbox` and `prune-inside-horizon` fail it.
//! - On the real Redis, `RedisBus::trim` never removes an entry that a
//!   lagging consumer group has read but not acknowledged, or not read yet.

mod common;
mod http_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{test_pg_config, TestDb, TestRedis};
use purchase_saga::adapters::postgres::schema;
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
use purchase_saga::runtime::store::{RedrivePolicy, Retention};
use purchase_saga::runtime::{Bus, Clock, Env, ManualClock, NoObserver, RuntimeConfig, Store, SystemClock};
use purchase_saga::workload::{ItemSpec, Scenario, UserSpec};

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

// ------------------------------------------- the runtime's pruner, issue 13

/// Retention of the compressed run: ids outlive every republish (horizon),
/// outbox rows go once their re-drive horizon has passed.
const COMPRESSED_RETENTION: Retention = Retention {
    inbox: DurationMs(300_000),
    outbox: DurationMs(120_000),
    batch: 50,
};
const PERIODS: usize = 12;
const ORDERS_PER_PERIOD: usize = 9;
/// Simulated time between two batches of orders.
const PERIOD: DurationMs = DurationMs(100_000);
/// The clock moves `TICK` every `TICK_REAL`: 200 times faster than real time.
const TICK: DurationMs = DurationMs(2_000);
const TICK_REAL: Duration = Duration::from_millis(10);

/// Rows of every inbox and outbox with their time (ms since the epoch):
/// inbox rows by (service, event id) with `processed_at`, published outbox
/// rows by (service, seq) with `created_at`.
#[derive(Debug, Default)]
struct Tables {
    inbox: BTreeMap<(Service, String), i64>,
    outbox: BTreeMap<(Service, i64), i64>,
}

impl Tables {
    async fn read(db: &TestDb) -> Tables {
        let mut t = Tables::default();
        for service in Service::ALL {
            let s = schema(service);
            let inbox: Vec<(String, i64)> = sqlx::query_as(&format!(
                "SELECT event_id::text, (extract(epoch FROM processed_at) * 1000)::bigint FROM {s}.inbox"
            ))
            .fetch_all(db.store.pool())
            .await
            .unwrap();
            t.inbox
                .extend(inbox.into_iter().map(|(id, at)| ((service, id), at)));
            let outbox: Vec<(i64, i64)> = sqlx::query_as(&format!(
                "SELECT seq, (extract(epoch FROM created_at) * 1000)::bigint FROM {s}.outbox WHERE published_count > 0"
            ))
            .fetch_all(db.store.pool())
            .await
            .unwrap();
            t.outbox
                .extend(outbox.into_iter().map(|(seq, at)| ((service, seq), at)));
        }
        t
    }

    fn rows(&self) -> usize {
        self.inbox.len() + self.outbox.len()
    }

    /// Rows the pruner may delete at `now`: inbox ids past their retention,
    /// published outbox rows past both the horizon and their retention (the
    /// store's own rule, `Store::prune`).
    fn expired(&self, now: Timestamp, outbox_age: DurationMs) -> usize {
        let inbox_cutoff = now.0 - COMPRESSED_RETENTION.inbox.0;
        let outbox_cutoff = now.0 - outbox_age.0;
        self.inbox.values().filter(|&&at| at <= inbox_cutoff).count()
            + self.outbox.values().filter(|&&at| at <= outbox_cutoff).count()
    }
}

/// A scenario where every period's orders take the same paths: `whale`
/// always succeeds, `poor` always fails at User, `ghost` is no user.
fn steady_scenario() -> Scenario {
    Scenario {
        users: vec![
            UserSpec {
                id: UserId::parse("whale").unwrap(),
                balance: 1_000_000_000,
                capacity: 1_000_000,
            },
            UserSpec {
                id: UserId::parse("poor").unwrap(),
                balance: 10,
                capacity: 10,
            },
        ],
        items: vec![ItemSpec {
            id: ItemId::parse("sword").unwrap(),
            name: "Sword".into(),
            price: 150,
            stock: 1_000_000,
        }],
        orders: vec![],
    }
}

/// Waits (real time, bounded) until `ready` holds; Err names `what`.
async fn within<F, Fut>(what: &str, mut ready: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + BOUND;
    while !ready().await {
        if Instant::now() >= deadline {
            return Err(format!("{what}: not within {BOUND:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// What a compressed run measured: the rows held after each period's
/// pruning, and every row it ever saw.
#[derive(Debug)]
struct Measured {
    held: Vec<usize>,
    seen: usize,
}

/// The runtime's own loops (consumers, relays with re-drive, sweeper and
/// the pruner of `run_pruner`, every `prune_interval`) on PgStore, with a
/// clock the test moves 200 times faster than real time, over `PERIODS`
/// periods of `PERIOD`: each period places its orders, waits until they
/// all finished, then lets the clock run one period while the relays
/// re-drive and the pruner prunes. Err says which check failed first:
/// an unfinished saga, a broken invariant (a re-driven event applied twice
/// breaks exactly-once notification), a row deleted inside its retention
/// or the re-drive horizon, or an expired row the pruner never deleted.
async fn run_compressed() -> Result<Measured, String> {
    let db = TestDb::create_with(test_pg_config(30)).await;
    let clock = Arc::new(ManualClock::starting_at(SystemClock.now()));
    let config = RuntimeConfig {
        retention: COMPRESSED_RETENTION,
        redrive: RedrivePolicy {
            after: DurationMs(10_000),
            republish_max: 4,
            horizon: DurationMs(120_000),
        },
        prune_interval: Duration::from_millis(5),
        ..http_support::fast_config()
    };
    assert!(
        config.retention.inbox > config.redrive.horizon,
        "ids must outlive every republish"
    );
    let outbox_age = config.redrive.horizon.max(config.retention.outbox);
    let bus = MemoryBus::new(clock.clone(), DurationMs(30_000));
    let env = Env {
        store: Arc::new(db.store.clone()) as Arc<dyn Store>,
        bus: Arc::new(bus.clone()) as Arc<dyn Bus>,
        clock: clock.clone(),
        gateway: Arc::new(SimulatedGateway::default()),
        observer: Arc::new(NoObserver),
        config,
    };
    seed_rows(env.store.as_ref(), &steady_scenario().opening_rows())
        .await
        .unwrap();
    let running = Running::start(&env, &Service::ALL, 1);
    let settled = |orders: usize| {
        let (env, db, bus) = (&env, &db, &bus);
        move || async move {
            let snapshot = env.store.snapshot().await.unwrap();
            snapshot.orders.len() == orders
                && snapshot.orders.values().all(|o| o.status.is_terminal())
                && backlog(db).await == 0
                && bus.unacknowledged() == 0
        }
    };
    let mut held = Vec::new();
    let mut seen = Tables::default();
    for period in 0..PERIODS {
        for n in 0..ORDERS_PER_PERIOD {
            let cmd = PlaceOrder {
                order_id: OrderId::parse(format!("p{period}-o{n}")).unwrap(),
                user_id: UserId::parse(["whale", "poor", "ghost"][n % 3]).unwrap(),
                item_id: ItemId::parse("sword").unwrap(),
                quantity: 1,
                payment_method: "WALLET".into(),
            };
            place_order(&env, &cmd).await.unwrap();
        }
        let orders = (period + 1) * ORDERS_PER_PERIOD;
        within(&format!("period {period}: every saga finished"), settled(orders)).await?;
        let broken = check_quiescent(&env.store.snapshot().await.unwrap());
        if !broken.is_empty() {
            return Err(format!(
                "period {period}, before the clock moved: invariants broken: {broken:?}"
            ));
        }
        let before = Tables::read(&db).await;
        // One period of compressed time: re-drive rounds come due and
        // rows age past their retention while the loops run.
        for _ in 0..PERIOD.0 / TICK.0 {
            clock.advance(TICK);
            tokio::time::sleep(TICK_REAL).await;
        }
        let now = clock.now();
        within(&format!("period {period}: re-drives absorbed"), settled(orders)).await?;
        within(
            &format!("period {period}: the pruner deleted what expired"),
            || async { Tables::read(&db).await.expired(now, outbox_age) == 0 },
        )
        .await?;
        let after = Tables::read(&db).await;
        let snapshot = env.store.snapshot().await.unwrap();
        let broken = check_quiescent(&snapshot);
        if !broken.is_empty() {
            return Err(format!("period {period}: invariants broken: {broken:?}"));
        }
        let inbox_cutoff = now.0 - COMPRESSED_RETENTION.inbox.0;
        if let Some((key, at)) = before
            .inbox
            .iter()
            .find(|(key, &at)| at > inbox_cutoff && !after.inbox.contains_key(key))
        {
            return Err(format!(
                "period {period}: inbox id {key:?} pruned {} ms old, inside the retention of {} ms",
                now.0 - at,
                COMPRESSED_RETENTION.inbox.0
            ));
        }
        let outbox_cutoff = now.0 - outbox_age.0;
        if let Some((key, at)) = before
            .outbox
            .iter()
            .find(|(key, &at)| at > outbox_cutoff && !after.outbox.contains_key(key))
        {
            return Err(format!(
                "period {period}: outbox row {key:?} pruned {} ms old, inside the re-drive horizon of {} ms",
                now.0 - at,
                outbox_age.0
            ));
        }
        held.push(after.rows());
        seen.inbox.extend(before.inbox.into_iter().chain(after.inbox));
        seen.outbox.extend(before.outbox.into_iter().chain(after.outbox));
    }
    assert!(running.stop(Duration::from_secs(10)).await.is_empty());
    Ok(Measured {
        held,
        seen: seen.rows(),
    })
}

/// Issue 13: storage stays bounded under the runtime's own pruner, not
/// one the test calls. Over 12 periods (20 minutes of compressed time,
/// four inbox retentions), the rows held after each period's pruning in
/// the last third are no more than in the first third (which already
/// holds a full retention's worth) give or take a quarter, while the rows
/// written keep growing; nothing younger than its retention or horizon
/// was deleted, and every saga finished with exactly-once grant and
/// notification (see [`run_compressed`]).
#[test]
fn the_runtime_pruner_keeps_storage_flat_over_many_retention_periods() {
    let measured = current_thread()
        .block_on(run_compressed())
        .unwrap_or_else(|e| panic!("{e}"));
    println!("rows held after each period's pruning: {measured:?}");
    let third = PERIODS / 3;
    let first = measured.held[..third].iter().max().copied().unwrap();
    let last = measured.held[PERIODS - third..].iter().max().copied().unwrap();
    assert!(
        last <= first + first / 4 + 10,
        "not flat: the last third holds up to {last} rows, the first {first} ({:?})",
        measured.held
    );
    assert!(
        measured.seen >= 3 * last,
        "the run wrote {} rows, the tables hold {last}: the bound says nothing",
        measured.seen
    );
}

/// One thread for the runtime and all its tasks, so a thread's mutant
/// switch reaches every loop of the run and no other test.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The planted bugs of the pruner fail the compressed run:
/// `prune-live-inbox` (the runtime's pruner keeps inbox ids only until the
/// first re-drive round) and `prune-inside-horizon` (PgStore's prune
/// deletes at half the ages).
#[cfg(feature = "mutants")]
#[test]
fn the_compressed_run_catches_a_pruner_that_deletes_inside_the_retention() {
    use purchase_saga::mutants::{self, Mutant};
    for mutant in [Mutant::PruneLiveInbox, Mutant::PruneInsideHorizon] {
        let outcome = mutants::with(Some(mutant), || current_thread().block_on(run_compressed()));
        let error = outcome.expect_err("the pruner deleted live rows and nothing failed");
        println!("{}: {error}", mutant.name());
        assert!(
            error.contains("inside the retention")
                || error.contains("inside the re-drive horizon")
                || error.contains("invariants broken"),
            "{}: {error}",
            mutant.name()
        );
    }
}
