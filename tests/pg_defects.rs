//! The stuck-saga and duplicate defects of issue 17, each reproduced on the
//! real PostgreSQL (a fresh database per test) and Redis (a fresh key
//! prefix per test):
//!
//! 1. one undecodable outbox row stops its service's relay; a corrupt order
//!    stops the deadline sweep;
//! 2. a step's read breaks on a pooled connection after an additive
//!    migration (`SELECT *` and the statement cache);
//! 3. a database that refuses the marks gets the same batch published again
//!    and again;
//! 4. the re-drive query walks the primary key instead of its index;
//! 5. two relays of one service publish every row twice;
//! 6. database trouble dead-letters deliveries, even of applied events, and
//!    the dead letter does not say why.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use purchase_saga::adapters::postgres::{self, PgStore};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::event::{OrderCreated, Payload};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::rows::Account;
use purchase_saga::domain::{DurationMs, Event, ItemId, OrderId, Row, RowKey, Service, Timestamp, UserId};
use purchase_saga::runtime::observer::{Disposition, Observer, RuntimeEvent};
use purchase_saga::runtime::store::{RedrivePolicy, Store};
use purchase_saga::runtime::{
    consumer, relay, sweeper, Bus, Clock, Delivery, Env, RuntimeConfig, Shutdown, SystemClock,
};
use sqlx::Connection;

use common::{TestDb, TestRedis};

/// Long enough for any condition these tests wait on.
const WAIT_MAX: Duration = Duration::from_secs(30);

fn order_created(n: usize) -> Event {
    Event::new(
        OrderId::parse(format!("o-{n}")).unwrap(),
        UserId::parse("alice").unwrap(),
        SystemClock.now(),
        Payload::OrderCreated(OrderCreated {
            item_id: ItemId::parse("sword").unwrap(),
            quantity: 1,
            total_amount: 100,
            payment_method: "WALLET".into(),
        }),
    )
}

/// Commits `events` to Order's outbox, one transaction each.
async fn enqueue(store: &PgStore, events: &[Event]) {
    for event in events {
        let mut tx = store.begin(Service::Order).await.expect("begin");
        tx.enqueue(event, SystemClock.now(), None).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
}

/// Quick loops; re-drive an hour away, so every publish seen is a first one.
fn config() -> RuntimeConfig {
    RuntimeConfig {
        batch_size: 8,
        idle_poll: Duration::from_millis(20),
        error_backoff: Duration::from_millis(100),
        // Longer than any wait below: a claim must not end mid-test.
        relay_lease: Duration::from_secs(30),
        redrive: RedrivePolicy {
            after: DurationMs::from_secs(3600),
            republish_max: 1,
            horizon: DurationMs::from_secs(7200),
        },
        ..RuntimeConfig::default()
    }
}

/// Records every runtime event worth asserting on, as text.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("recorder mutex").clone()
    }
}

impl Observer for Recorder {
    fn observe(&self, event: RuntimeEvent<'_>) {
        let line = match event {
            RuntimeEvent::Published { event, .. } => format!("published {}", event.order_id),
            RuntimeEvent::Handled { disposition, .. } => format!("handled {disposition:?}"),
            RuntimeEvent::Quarantined { seq, reason, .. } => format!("quarantined {seq}: {reason}"),
            _ => return,
        };
        self.0.lock().expect("recorder mutex").push(line);
    }
}

/// A fresh database and Redis prefix, the bus on them (deliveries not
/// acknowledged within `visibility_timeout` are taken over) and the
/// runtime's environment with a [`Recorder`].
struct Stack {
    db: TestDb,
    /// Keeps the test's Redis keys until the end (deleted on drop).
    _redis: TestRedis,
    bus: RedisBus,
    env: Env,
    recorder: Arc<Recorder>,
}

impl Stack {
    /// `label` names the Redis key prefix.
    async fn new(label: &str, config: RuntimeConfig, visibility_timeout: Duration) -> Stack {
        let db = TestDb::create().await;
        let redis = TestRedis::create(label);
        let bus = RedisBus::connect(
            &redis.url,
            RedisConfig {
                prefix: redis.prefix.clone(),
                visibility_timeout,
                block: Duration::from_millis(50),
                ..RedisConfig::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let recorder = Arc::new(Recorder::default());
        let env = Env {
            store: Arc::new(db.store.clone()),
            bus: Arc::new(bus.clone()),
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: recorder.clone(),
            config,
        };
        Stack {
            db,
            _redis: redis,
            bus,
            env,
            recorder,
        }
    }
}

/// Loops spawned with one shutdown signal.
struct Loops {
    stop: tokio::sync::watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Loops {
    /// `count` relays of Order.
    fn relays(env: &Env, count: usize) -> Loops {
        Loops::spawn(count, |shutdown| {
            relay::run(env.clone(), Service::Order, shutdown)
        })
    }

    /// One consumer of User.
    fn consumer(env: &Env) -> Loops {
        Loops::spawn(1, |shutdown| {
            consumer::run(env.clone(), Service::User, "c1".into(), shutdown)
        })
    }

    fn spawn<F>(count: usize, start: impl Fn(Shutdown) -> F) -> Loops
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let handles = (0..count)
            .map(|_| tokio::spawn(start(shutdown.clone())))
            .collect();
        Loops { stop, handles }
    }

    async fn stop(self) {
        self.stop.send(true).expect("loops listen");
        for handle in self.handles {
            tokio::time::timeout(WAIT_MAX, handle)
                .await
                .expect("a loop stops at shutdown")
                .expect("a loop does not panic");
        }
    }
}

/// Polls `done` until it holds or `WAIT_MAX` passes; panics with `what`.
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < WAIT_MAX,
            "gave up waiting after {WAIT_MAX:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every row of Order's outbox has been marked published.
async fn wait_until_all_marked(db: &TestDb) {
    wait_until("every outbox row marked", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM order_svc.outbox WHERE published_count = 0")
            .fetch_one(db.store.pool())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
}

async fn scalar_i64(store: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// An admin connection to the server (not to the test database).
async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&common::database_url())
        .await
        .expect("admin connection")
}

/// Makes `db` read-only (or writable again) for every new transaction, and
/// ends its open sessions so that the pool reconnects under the setting.
async fn set_read_only(db: &TestDb, read_only: bool) {
    let mut admin = admin().await;
    let setting = if read_only { "on" } else { "off" };
    sqlx::query(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = {setting}",
        db.name
    ))
    .execute(&mut admin)
    .await
    .expect("alter database");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&db.name)
        .execute(&mut admin)
        .await
        .expect("terminate the test database's sessions");
}

// ------------------------------------------------------------- defect 1

/// A rolling deploy bumps `schemaVersion`: this binary cannot decode the
/// new row. The row before it and after it must still go out; the new row
/// is left for the build that reads it (issue 24: not quarantined).
#[tokio::test]
async fn relay_publishes_past_an_undecodable_outbox_row() {
    let stack = Stack::new("defect1", config(), Duration::from_secs(10)).await;
    let (db, bus, env, recorder) = (&stack.db, &stack.bus, &stack.env, &stack.recorder);
    enqueue(&db.store, &[order_created(1)]).await;
    sqlx::query(
        "INSERT INTO order_svc.outbox (event_id, event_type, order_id, payload, created_at)
         SELECT gen_random_uuid(), event_type, order_id || '-v2',
                replace(payload, '\"schemaVersion\":1', '\"schemaVersion\":2'), created_at
         FROM order_svc.outbox",
    )
    .execute(db.store.pool())
    .await
    .expect("insert the v2 copy");
    enqueue(&db.store, &[order_created(2)]).await;

    let published = relay::relay_once(env, Service::Order).await;
    assert_eq!(published, Ok(2), "both decodable rows are published in one pass");
    assert_eq!(bus.stream_len(Service::User).await.unwrap(), 2);
    assert_eq!(
        scalar_i64(
            &db.store,
            "SELECT count(*) FROM order_svc.outbox WHERE published_count = 1"
        )
        .await,
        2,
        "both decodable rows are marked"
    );
    assert!(
        !recorder.lines().iter().any(|l| l.starts_with("quarantined")),
        "a newer row is not quarantined: {:?}",
        recorder.lines()
    );
    let needs: Option<i32> = sqlx::query_scalar(
        "SELECT needs_schema_version FROM order_svc.outbox WHERE seq = 2 AND quarantined_at IS NULL",
    )
    .fetch_one(db.store.pool())
    .await
    .expect("read the row");
    assert_eq!(needs, Some(2), "the row says which build can publish it");
    // Later passes of this build do not take it again.
    assert_eq!(relay::relay_once(env, Service::Order).await, Ok(0));
    assert_eq!(bus.stream_len(Service::User).await.unwrap(), 2);
}

/// The sweeper's pass: an order it cannot read must not hold back the
/// deadline of the others.
#[tokio::test]
async fn a_corrupt_order_does_not_stop_the_deadline_sweep() {
    let stack = Stack::new("defect1s", config(), Duration::from_secs(10)).await;
    let (db, env) = (&stack.db, &stack.env);
    // Both past their deadline; the corrupt one (an empty user id, which no
    // UserId parses) comes first.
    for (order, user, deadline) in [("o-corrupt", "", "1 hour"), ("o-good", "alice", "30 minutes")] {
        sqlx::query(
            "INSERT INTO order_svc.orders (order_id, user_id, item_id, item_name, quantity, total_amount,
                 payment_method, status, created_at, deadline_at, deadline_signalled, updated_at)
             VALUES ($1, $2, 'sword', 'Sword', 1, 100, 'WALLET', 'PENDING', now() - interval '2 hours',
                 now() - $3::interval, false, now() - interval '2 hours')",
        )
        .bind(order)
        .bind(user)
        .bind(deadline)
        .execute(db.store.pool())
        .await
        .expect("insert order");
    }
    let swept = sweeper::sweep_once(env).await;
    assert_eq!(
        swept,
        Ok(1),
        "the good order is signalled despite the corrupt one"
    );
    assert_eq!(
        scalar_i64(
            &db.store,
            "SELECT count(*) FROM order_svc.orders WHERE order_id = 'o-good' AND deadline_signalled"
        )
        .await,
        1
    );
}

// ------------------------------------------------------------- defect 2

/// A database with a pool of one connection, so every read runs where the
/// previous one was prepared, holding alice's account; its key.
async fn alice_on_one_connection() -> (TestDb, RowKey) {
    let db = TestDb::create_with(common::test_pg_config(1)).await;
    let alice = UserId::parse("alice").unwrap();
    db.store
        .seed_rows(&[Row::Account(Account {
            user_id: alice.clone(),
            balance: 100,
            opening_balance: 100,
        })])
        .await
        .expect("seed");
    (db, RowKey::Account(alice))
}

/// Runs a migration from a connection outside the store's pool, as a
/// deploy does on a running system.
async fn migrate(db: &TestDb, sql: &str) {
    let mut other = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("second connection");
    sqlx::query(sql).execute(&mut other).await.expect(sql);
}

/// `ALTER TABLE ... ADD COLUMN` on a running system: the connection that
/// prepared the step's read keeps serving it.
#[tokio::test]
async fn a_step_read_survives_an_additive_migration_on_a_pooled_connection() {
    let (db, key) = alice_on_one_connection().await;
    let read = || async {
        let mut tx = db.store.begin(Service::User).await?;
        let locked = tx.load_for_update(&key).await?;
        let plain = tx.load(&key).await?;
        tx.commit().await?;
        let committed = db.store.row(&key).await?;
        let snapshot = db.store.snapshot().await?;
        Ok::<_, purchase_saga::runtime::StoreError>((locked, plain, committed, snapshot))
    };
    let before = read().await.expect("the read before the migration");
    migrate(&db, "ALTER TABLE user_svc.accounts ADD COLUMN note text").await;
    let after = read()
        .await
        .expect("the same read after ADD COLUMN, on the same pooled connection");
    assert_eq!(before, after, "an added column changes nothing the store reads");
    assert!(after.0.is_some());
}

/// A migration that does change a column the store reads (its type): the
/// first read on the connection that cached the statement is a conflict
/// (retried, not fatal), and the connection's cache is dropped so that the
/// retry succeeds.
#[tokio::test]
async fn a_changed_result_type_is_a_conflict_and_the_retry_prepares_again() {
    let (db, key) = alice_on_one_connection().await;
    let read = || async {
        let mut tx = db.store.begin(Service::User).await?;
        let row = tx.load_for_update(&key).await?;
        tx.commit().await?;
        Ok::<_, purchase_saga::runtime::StoreError>(row)
    };
    let before = read().await.expect("the read before the migration");
    migrate(
        &db,
        "ALTER TABLE user_svc.accounts ALTER COLUMN user_id TYPE varchar(200)",
    )
    .await;
    let first = read().await;
    assert!(
        matches!(&first, Err(purchase_saga::runtime::StoreError::Conflict(m)) if m.contains("0A000")),
        "{first:?}"
    );
    assert_eq!(
        read().await.expect("the retry prepares the statement again"),
        before
    );
}

// ------------------------------------------------------- defects 3 and 5

/// A database that refuses writes: the relay must not publish what it
/// cannot mark, and once writes are back every row goes out once.
#[tokio::test]
async fn a_read_only_database_publishes_nothing_until_marks_can_land() {
    let stack = Stack::new("defect3", config(), Duration::from_secs(10)).await;
    let (db, bus, env) = (&stack.db, &stack.bus, &stack.env);
    let rows = 20;
    let events: Vec<Event> = (0..rows).map(order_created).collect();
    enqueue(&db.store, &events).await;
    set_read_only(db, true).await;

    let relays = Loops::relays(env, 1);
    // An observation window, not a synchronisation: whatever the relay
    // does in it must not reach the bus.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = bus.stream_len(Service::User).await.unwrap();
    assert_eq!(
        during, 0,
        "nothing is published while the marks cannot be written"
    );

    set_read_only(db, false).await;
    wait_until_all_marked(db).await;
    relays.stop().await;
    assert_eq!(bus.stream_len(Service::User).await.unwrap(), rows as u64);
}

/// A mark that fails after the publish (the claim got through): the batch
/// is held by its claim for the lease, not published again on every pass.
#[tokio::test]
async fn a_failing_mark_does_not_publish_the_batch_again_every_pass() {
    let stack = Stack::new("defect3m", config(), Duration::from_secs(10)).await;
    let (db, bus, env) = (&stack.db, &stack.bus, &stack.env);
    let rows = 20;
    let events: Vec<Event> = (0..rows).map(order_created).collect();
    enqueue(&db.store, &events).await;
    for sql in [
        "CREATE FUNCTION order_svc.refuse_mark() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN
              IF NEW.published_count > OLD.published_count THEN RAISE EXCEPTION 'mark refused by test trigger'; END IF;
              RETURN NEW;
            END $$",
        "CREATE TRIGGER refuse_mark BEFORE UPDATE ON order_svc.outbox FOR EACH ROW
         EXECUTE FUNCTION order_svc.refuse_mark()",
    ] {
        sqlx::query(sql).execute(db.store.pool()).await.expect(sql);
    }
    let relays = Loops::relays(env, 1);
    wait_until("the batch published once", || async {
        bus.stream_len(Service::User)
            .await
            .is_ok_and(|n| n >= rows as u64)
    })
    .await;
    // Many idle polls and error backoffs long: the bug published the
    // batch again every 500 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    relays.stop().await;
    assert_eq!(
        bus.stream_len(Service::User).await.unwrap(),
        rows as u64,
        "published once, then held by the claim while the marks fail"
    );
}

/// Two relays of one service share the work: each row once.
#[tokio::test]
async fn two_relays_publish_each_row_exactly_once() {
    let stack = Stack::new("defect5", config(), Duration::from_secs(10)).await;
    let (db, bus, env) = (&stack.db, &stack.bus, &stack.env);
    let rows = 200;
    let events: Vec<Event> = (0..rows).map(order_created).collect();
    enqueue(&db.store, &events).await;

    let relays = Loops::relays(env, 2);
    wait_until_all_marked(db).await;
    relays.stop().await;
    assert_eq!(
        bus.stream_len(Service::User).await.unwrap(),
        rows as u64,
        "each row published exactly once"
    );
    assert_eq!(
        scalar_i64(
            &db.store,
            "SELECT sum(published_count)::bigint FROM order_svc.outbox"
        )
        .await,
        rows as i64,
        "each row marked exactly once"
    );
}

// ------------------------------------------------------------- defect 4

/// Each index scan of a JSON plan: `name [cond: <Index Cond>] [filtered]`.
fn plan_indexes(plan: &serde_json::Value, found: &mut Vec<String>) {
    match plan {
        serde_json::Value::Object(node) => {
            if let Some(serde_json::Value::String(index)) = node.get("Index Name") {
                let cond = node.get("Index Cond").and_then(|c| c.as_str()).unwrap_or("");
                let filtered = if node.contains_key("Filter") {
                    " filtered"
                } else {
                    ""
                };
                found.push(format!("{index} [cond: {cond}]{filtered}"));
            }
            node.values().for_each(|v| plan_indexes(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| plan_indexes(v, found)),
        _ => {}
    }
}

/// 100k published rows whose re-drive rounds are spread over ten minutes;
/// statistics taken; `now` twelve minutes on: the re-drive half of the
/// relay's claim must stay on `outbox_next_publish_at`. (Ordered by `seq`,
/// it walked `outbox_pkey` and filtered every row: 0.1 ms became 88 ms per
/// relay pass on 300k rows.)
#[tokio::test]
async fn the_redrive_query_stays_on_its_index() {
    let db = TestDb::create().await;
    sqlx::query(
        "INSERT INTO order_svc.outbox (event_id, event_type, order_id, payload, created_at, published_count,
             last_published_at, next_publish_at)
         SELECT gen_random_uuid(), 'ORDER_CREATED', 'o-' || i, '{}', now() - interval '1 minute', 1,
             now() - interval '1 minute', now() + (i % 600) * interval '1 second'
         FROM generate_series(1, 100000) AS i",
    )
    .execute(db.store.pool())
    .await
    .expect("fill the outbox");
    sqlx::query("ANALYZE order_svc.outbox")
        .execute(db.store.pool())
        .await
        .expect("analyze");
    let now = Timestamp(SystemClock.now().0 + 12 * 60 * 1000);
    // The exact statement the store runs (an UPDATE: EXPLAIN without
    // ANALYZE plans it and changes nothing).
    let sql = postgres::claim_sql(Service::Order);
    let plan: serde_json::Value = sqlx::query_scalar(&format!("EXPLAIN (FORMAT JSON) {sql}"))
        .bind(now.to_datetime())
        .bind(now.plus(DurationMs::from_secs(30)).to_datetime())
        .bind(32i64)
        .bind(1i32)
        .fetch_one(db.store.pool())
        .await
        .expect("explain");
    let mut indexes = Vec::new();
    plan_indexes(&plan, &mut indexes);
    assert!(
        indexes
            .iter()
            .any(|i| i.starts_with("outbox_next_publish_at [cond: (next_publish_at <=")),
        "the re-drive half is a range scan of its partial index: {indexes:?}\n{plan:#}"
    );
    // The UPDATE finds the claimed rows by key (`seq = due.seq`); what must
    // not appear is a walk of the key that filters rows.
    assert!(
        !indexes
            .iter()
            .any(|i| i.starts_with("outbox_pkey") && i.ends_with("filtered")),
        "no walk of the primary key filtering rows: {indexes:?}\n{plan:#}"
    );
}

// ------------------------------------------------------------- defect 6

/// An event the inbox already has, delivered past the deliveries limit:
/// acknowledged, not dead-lettered.
#[tokio::test]
async fn an_applied_event_past_the_delivery_limit_is_acked() {
    let stack = Stack::new("defect6a", config(), Duration::from_secs(10)).await;
    let (db, bus, env) = (&stack.db, &stack.bus, &stack.env);
    let event = order_created(1);
    sqlx::query("INSERT INTO user_svc.inbox (event_id, processed_at) VALUES ($1, now())")
        .bind(event.event_id.0)
        .execute(db.store.pool())
        .await
        .expect("record as processed");
    let delivery = Delivery {
        entry_id: "0-1".into(),
        attempt: env.config.deliveries_max + 1,
        payload: event.encode().into_bytes(),
    };
    let disposition = consumer::handle_delivery(env, Service::User, "c1", &delivery).await;
    assert_eq!(disposition, Disposition::Duplicate);
    assert_eq!(bus.dead_letter_count(Service::User).await.unwrap(), 0);
}

fn consumer_config() -> RuntimeConfig {
    RuntimeConfig {
        deliveries_max: 3,
        ..config()
    }
}

/// A read-only database for longer than the delivery budget lasts: the
/// consumer stops taking deliveries instead of spending the budget, and
/// once writes are back the event is handled, not dead-lettered.
#[tokio::test]
async fn a_read_only_spell_dead_letters_nothing() {
    let stack = Stack::new("defect6b", consumer_config(), Duration::from_millis(200)).await;
    let (db, bus, env, recorder) = (&stack.db, &stack.bus, &stack.env, &stack.recorder);
    let event = order_created(1);
    // Applied once already: the redelivery is a duplicate.
    sqlx::query("INSERT INTO user_svc.inbox (event_id, processed_at) VALUES ($1, now())")
        .bind(event.event_id.0)
        .execute(db.store.pool())
        .await
        .expect("record as processed");
    let fresh = order_created(2);
    bus.publish(&event).await.expect("publish");
    bus.publish(&fresh).await.expect("publish");
    set_read_only(db, true).await;

    let consumer = Loops::consumer(env);
    // Many visibility timeouts long: the bug spent the budget of 3 in
    // well under a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        bus.dead_letters(Service::User, 10).await.unwrap(),
        Vec::new(),
        "nothing is dead-lettered while the store is read-only"
    );
    set_read_only(db, false).await;
    wait_until("both entries settled", || async {
        bus.pending_count(Service::User).await.is_ok_and(|n| n == 0)
            && recorder.lines().iter().filter(|l| !l.contains("Retry")).count() >= 2
    })
    .await;
    consumer.stop().await;
    assert_eq!(bus.dead_letter_count(Service::User).await.unwrap(), 0);
}

/// A delivery that keeps failing is dead-lettered with its last error.
#[tokio::test]
async fn a_dead_letter_names_the_last_error() {
    let stack = Stack::new("defect6c", consumer_config(), Duration::from_millis(200)).await;
    let (db, bus, env) = (&stack.db, &stack.bus, &stack.env);
    sqlx::query(
        "CREATE FUNCTION user_svc.refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'inbox refused by test trigger'; END $$",
    )
    .execute(db.store.pool())
    .await
    .expect("trigger function");
    sqlx::query("CREATE TRIGGER refuse BEFORE INSERT ON user_svc.inbox FOR EACH ROW EXECUTE FUNCTION user_svc.refuse()")
        .execute(db.store.pool())
        .await
        .expect("trigger");
    bus.publish(&order_created(1)).await.expect("publish");

    let consumer = Loops::consumer(env);
    wait_until("the entry dead-lettered", || async {
        bus.dead_letter_count(Service::User).await.is_ok_and(|n| n == 1)
    })
    .await;
    consumer.stop().await;
    let letters = bus.dead_letters(Service::User, 10).await.unwrap();
    let reason = &letters[0].letter.reason;
    assert!(
        reason.starts_with("not applied after 3 deliveries; last error: ")
            && reason.contains("P0001")
            && reason.contains("inbox refused by test trigger"),
        "{reason}"
    );
}
