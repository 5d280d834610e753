//! Issue 24's PostgreSQL defects, each reproduced on a real server:
//!
//! 1. a full disk (53100) spent the delivery budget and dead-lettered good
//!    events: the writability probe only read `transaction_read_only`
//!    (a PRIVATE server whose User inbox lives on a 2 MB tmpfs tablespace);
//! 3. a column type change (0A000, "cached plan must not change result
//!    type") wedged the relay's claim on its pooled connections until they
//!    were recycled;
//! 4. a frozen process held its row locks for as long as it was frozen
//!    (no `idle_in_transaction_session_timeout`);
//! 6. an old build quarantined, for good, rows a newer build wrote (a
//!    higher `schemaVersion`) mid rolling upgrade.
//!
//! (Defects 2 and 5 are the Redis bus's and the consumer names'.)

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use purchase_saga::adapters::postgres::{self, PgConfig, PgStore};
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::event::{OrderCreated, Payload};
use purchase_saga::domain::gateway::SimulatedGateway;
use purchase_saga::domain::rows::Account;
use purchase_saga::domain::{DurationMs, Event, ItemId, OrderId, Row, RowKey, Service, UserId};
use purchase_saga::runtime::observer::{Observer, RuntimeEvent};
use purchase_saga::runtime::store::{RedrivePolicy, Store};
use purchase_saga::runtime::{
    consumer, relay, Bus, Clock, Env, RuntimeConfig, Shutdown, StoreError, SystemClock,
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

fn alice() -> Row {
    Row::Account(Account {
        user_id: UserId::parse("alice").unwrap(),
        balance: 10_000,
        opening_balance: 10_000,
    })
}

/// Commits `events` to Order's outbox, one transaction each.
async fn enqueue(store: &PgStore, events: &[Event]) {
    for event in events {
        let mut tx = store.begin(Service::Order).await.expect("begin");
        tx.enqueue(event, SystemClock.now(), None).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
}

/// Quick loops, a small delivery budget; re-drive an hour away.
fn config() -> RuntimeConfig {
    RuntimeConfig {
        batch_size: 8,
        deliveries_max: 3,
        idle_poll: Duration::from_millis(20),
        error_backoff: Duration::from_millis(100),
        error_backoff_max: Duration::from_millis(400),
        relay_lease: Duration::from_secs(30),
        redrive: RedrivePolicy {
            after: DurationMs::from_secs(3600),
            republish_max: 1,
            horizon: DurationMs::from_secs(7200),
        },
        ..RuntimeConfig::default()
    }
}

/// Records what the tests assert on, as text.
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
            RuntimeEvent::Handled {
                disposition, attempt, ..
            } => format!("handled attempt {attempt}: {disposition:?}"),
            RuntimeEvent::Quarantined { seq, reason, .. } => format!("quarantined {seq}: {reason}"),
            _ => return,
        };
        self.0.lock().expect("recorder mutex").push(line);
    }
}

/// A Redis prefix, the bus on it and the runtime's environment on `store`.
struct Rig {
    _redis: TestRedis,
    bus: RedisBus,
    env: Env,
    recorder: Arc<Recorder>,
}

impl Rig {
    async fn new(label: &str, store: PgStore, visibility_timeout: Duration) -> Rig {
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
            store: Arc::new(store),
            bus: Arc::new(bus.clone()),
            clock: Arc::new(SystemClock),
            gateway: Arc::new(SimulatedGateway::default()),
            observer: recorder.clone(),
            config: config(),
        };
        Rig {
            _redis: redis,
            bus,
            env,
            recorder,
        }
    }

    /// The same bus and observer over another store (another build, or
    /// another process's pool).
    fn with_store(&self, store: PgStore) -> Env {
        Env {
            store: Arc::new(store),
            ..self.env.clone()
        }
    }
}

/// A loop spawned with its own shutdown signal.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    fn consumer(env: &Env) -> Running {
        Running::spawn(|shutdown| consumer::run(env.clone(), Service::User, "c1".into(), shutdown))
    }

    fn spawn<F>(start: impl FnOnce(Shutdown) -> F) -> Running
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        Running {
            stop,
            handle: tokio::spawn(start(shutdown)),
        }
    }

    async fn stop(self) {
        self.stop.send(true).expect("the loop listens");
        tokio::time::timeout(WAIT_MAX, self.handle)
            .await
            .expect("a loop stops at shutdown")
            .expect("a loop does not panic");
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

async fn scalar_i64(store: &PgStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Whether User's inbox has `event`.
async fn applied(store: &PgStore, event: &Event) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM user_svc.inbox WHERE event_id = $1)")
        .bind(event.event_id.0)
        .fetch_one(store.pool())
        .await
        .unwrap_or(false)
}

// ------------------------------------------------------------- defect 1

/// A PostgreSQL server of this test's own (initdb + pg_ctl as user
/// postgres on a scratch directory, fsync and autovacuum off, a free port)
/// and a 2 MB tmpfs mounted for a tablespace. Drop stops the server,
/// unmounts and removes everything, whether the test passed or not.
struct PrivateServer {
    scratch: std::path::PathBuf,
    data: std::path::PathBuf,
    small_disk: std::path::PathBuf,
    mounted: bool,
    started: bool,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn run_as_postgres(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{PG_BIN}/{program}")])
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run_root(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl PrivateServer {
    fn start() -> PrivateServer {
        let port = purchase_saga_testkit::free_port().expect("a free port");
        let scratch = std::env::temp_dir().join(format!("ps-disk-full-{}", common::random_suffix()));
        let mut server = PrivateServer {
            data: scratch.join("data"),
            small_disk: scratch.join("small-disk"),
            scratch,
            mounted: false,
            started: false,
            port,
        };
        server
            .set_up()
            .unwrap_or_else(|e| panic!("private PostgreSQL: {e}"));
        server
    }

    fn set_up(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.small_disk).map_err(|e| e.to_string())?;
        let scratch = self.scratch.to_str().expect("utf-8 path");
        let small = self.small_disk.to_str().expect("utf-8 path");
        let data = self.data.to_str().expect("utf-8 path");
        run_root("mount", &["-t", "tmpfs", "-o", "size=2m", "tmpfs", small])?;
        self.mounted = true;
        run_root("chown", &["-R", "postgres:postgres", scratch])?;
        run_as_postgres(
            "initdb",
            &["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        )?;
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={scratch} -c fsync=off \
             -c autovacuum=off -c full_page_writes=off",
            self.port
        );
        let log = format!("{scratch}/server.log");
        run_as_postgres("pg_ctl", &["-D", data, "-o", &options, "-l", &log, "-w", "start"])?;
        self.started = true;
        Ok(())
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if self.started {
            let data = self.data.to_str().expect("utf-8 path");
            if let Err(e) = run_as_postgres("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]) {
                eprintln!("stopping the private PostgreSQL: {e}");
            }
        }
        if self.mounted {
            let small = self.small_disk.to_str().expect("utf-8 path");
            if let Err(e) = run_root("umount", &[small]) {
                eprintln!("unmounting the small disk: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// Inserts rows into `table` (a uuid and a time) until the tablespace is
/// full; returns the error that said so.
async fn fill(admin: &mut sqlx::PgConnection, sql: &str) -> sqlx::Error {
    for _ in 0..100_000 {
        if let Err(e) = sqlx::query(sql).execute(&mut *admin).await {
            return e;
        }
    }
    panic!("{sql}: 100,000 inserts and the 2 MB tablespace is not full");
}

fn sqlstate(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => db.code().unwrap_or_default().to_string(),
        other => format!("not a database error: {other}"),
    }
}

/// User's inbox and its indexes on a 2 MB tablespace, filled: every
/// insert into the inbox fails with 53100 while `transaction_read_only`
/// is off. The consumer must pause (the probe says the store cannot take
/// a write) and spend no delivery; once space returns, the event is
/// applied and nothing is dead-lettered.
#[tokio::test]
async fn a_full_disk_pauses_the_consumer_and_dead_letters_nothing() {
    let server = PrivateServer::start();
    let pg = postgres::connect(&server.url(), &common::test_pg_config(4))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    postgres::migrate(&pg).await.unwrap_or_else(|e| panic!("{e}"));
    let store = PgStore::new(pg);
    store.seed_rows(&[alice()]).await.expect("seed");
    let mut admin = sqlx::PgConnection::connect(&server.url()).await.expect("admin");
    let small = server.small_disk.to_str().expect("utf-8 path");
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'user_svc' AND tablename = 'inbox'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("inbox indexes");
    let mut moves = vec![
        format!("CREATE TABLESPACE small LOCATION '{small}'"),
        "ALTER TABLE user_svc.inbox SET TABLESPACE small".to_string(),
        "CREATE TABLE public.filler (id uuid, at timestamptz, pad text) TABLESPACE small".to_string(),
    ];
    moves.extend(
        indexes
            .iter()
            .map(|i| format!("ALTER INDEX user_svc.{i} SET TABLESPACE small")),
    );
    for sql in &moves {
        sqlx::query(sql).execute(&mut admin).await.expect(sql);
    }
    let full = fill(
        &mut admin,
        "INSERT INTO public.filler SELECT gen_random_uuid(), now(), repeat('x', 500) FROM generate_series(1, 100)",
    )
    .await;
    assert_eq!(
        sqlstate(&full),
        "53100",
        "the filler filled the tablespace: {full}"
    );
    let full = fill(
        &mut admin,
        "INSERT INTO user_svc.inbox (event_id, processed_at) VALUES (gen_random_uuid(), now())",
    )
    .await;
    assert_eq!(sqlstate(&full), "53100", "the inbox is full: {full}");
    let read_only: String = sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
        .fetch_one(&mut admin)
        .await
        .expect("read the setting");
    assert_eq!(read_only, "off", "the server is not read-only, only full");

    let probed = store.writable(Service::User).await;
    assert!(
        matches!(&probed, Err(StoreError::Unavailable(m)) if m.contains("53100")),
        "the probe tries a write and meets the full disk: {probed:?}"
    );

    let rig = Rig::new("disk-full", store.clone(), Duration::from_millis(200)).await;
    let event = order_created(1);
    rig.bus.publish(&event).await.expect("publish");
    let consumer = Running::consumer(&rig.env);
    // Many visibility timeouts long: the old probe let the consumer take
    // the entry again every 200 ms, and its budget of 3 was gone in under
    // a second.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = rig.recorder.lines();
    assert_eq!(
        rig.bus.dead_letters(Service::User, 10).await.unwrap(),
        Vec::new(),
        "nothing is dead-lettered while the disk is full; handled: {during:?}"
    );
    let deliveries = during.iter().filter(|l| l.starts_with("handled")).count();
    assert!(
        deliveries <= 2,
        "the consumer pauses instead of taking the entry again and again: {during:?}"
    );

    sqlx::query("DROP TABLE public.filler")
        .execute(&mut admin)
        .await
        .expect("free space");
    wait_until("the event applied once space is back", || applied(&store, &event)).await;
    wait_until("the entry acknowledged", || async {
        rig.bus.pending_count(Service::User).await.is_ok_and(|n| n == 0)
    })
    .await;
    consumer.stop().await;
    assert_eq!(rig.bus.dead_letter_count(Service::User).await.unwrap(), 0);
    drop(admin);
    store.pool().close().await;
}

// ------------------------------------------------------------- defect 3

/// A column the claim returns changes type while the store's connection
/// has the claim prepared: the claim fails once (0A000, a conflict) and
/// the next pass prepares it again and publishes, instead of failing on
/// every pass until the connection is recycled.
#[tokio::test]
async fn the_relay_claim_survives_a_type_changing_migration() {
    // One connection: every statement runs where the previous one was
    // prepared, as a warm pool's connections do.
    let db = TestDb::create_with(common::test_pg_config(1)).await;
    let rig = Rig::new("type-change", db.store.clone(), Duration::from_secs(10)).await;
    enqueue(&db.store, &[order_created(1)]).await;
    assert_eq!(
        relay::relay_once(&rig.env, Service::Order).await,
        Ok(1),
        "warm: the claim is prepared"
    );
    let swept_before = db
        .store
        .orders_past_deadline(SystemClock.now(), 10)
        .await
        .expect("sweep");

    let mut other = sqlx::PgConnection::connect(&db.url)
        .await
        .expect("second connection");
    for sql in [
        "ALTER TABLE order_svc.outbox ALTER COLUMN created_at TYPE timestamptz(3)",
        "ALTER TABLE order_svc.orders ALTER COLUMN order_id TYPE varchar(200)",
    ] {
        sqlx::query(sql).execute(&mut other).await.expect(sql);
    }
    enqueue(&db.store, &[order_created(2), order_created(3), order_created(4)]).await;

    let mut passes = Vec::new();
    for _ in 0..3 {
        let pass = relay::relay_once(&rig.env, Service::Order).await;
        let done = pass == Ok(3);
        passes.push(pass);
        if done {
            break;
        }
    }
    assert_eq!(
        passes.last(),
        Some(&Ok(3)),
        "the claim publishes within a retry after the type change: {passes:?}"
    );
    assert!(passes.len() <= 2, "one failing pass at most: {passes:?}");
    // The sweeper's read on the same connection: at most one conflict.
    let first = db.store.orders_past_deadline(SystemClock.now(), 10).await;
    let swept = match first {
        Ok(ids) => ids,
        Err(e) => {
            assert!(e.is_conflict(), "{e}");
            db.store
                .orders_past_deadline(SystemClock.now(), 10)
                .await
                .expect("the retry prepares the sweep again")
        }
    };
    assert_eq!(swept, swept_before);
}

// ------------------------------------------------------------- defect 4

/// A process opens a transaction through the store, locks alice's account
/// and stops (its task is never polled again: a SIGSTOP, a GC pause, a
/// partition). Another process's consumer needs that row for an event:
/// the server ends the frozen session after the idle-in-transaction
/// timeout, the lock comes free, the event is applied, and nothing is
/// dead-lettered.
#[tokio::test]
async fn a_frozen_holder_releases_its_locks_and_nothing_is_dead_lettered() {
    let frozen_config = PgConfig {
        lock_timeout: Duration::from_millis(200),
        idle_in_transaction_timeout: Duration::from_secs(2),
        ..common::test_pg_config(2)
    };
    let db = TestDb::create_with(frozen_config.clone()).await;
    db.store.seed_rows(&[alice()]).await.expect("seed");
    // The frozen process: its own pool, a transaction holding the row.
    let frozen_pool = postgres::connect(&db.url, &frozen_config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let frozen = PgStore::new(frozen_pool);
    let mut held = frozen.begin(Service::User).await.expect("begin");
    let key = RowKey::Account(UserId::parse("alice").unwrap());
    held.load_for_update(&key).await.expect("lock alice");

    // The delivery budget spans 3 x 1 s, longer than the idle timeout, as
    // the defaults do (10 x 30 s against 60 s): the lock comes free while
    // the event can still be delivered.
    let rig = Rig::new("frozen", db.store.clone(), Duration::from_secs(1)).await;
    let event = order_created(1);
    rig.bus.publish(&event).await.expect("publish");
    let started = Instant::now();
    let consumer = Running::consumer(&rig.env);
    wait_until("the event applied once the frozen session is ended", || {
        applied(&db.store, &event)
    })
    .await;
    let took = started.elapsed();
    wait_until("the entry acknowledged", || async {
        rig.bus.pending_count(Service::User).await.is_ok_and(|n| n == 0)
    })
    .await;
    consumer.stop().await;
    assert_eq!(
        rig.bus.dead_letters(Service::User, 10).await.unwrap(),
        Vec::new(),
        "nothing is dead-lettered; handled: {:?}",
        rig.recorder.lines()
    );
    assert!(
        took >= Duration::from_millis(1500),
        "the lock was held until the timeout ended the session ({took:?})"
    );
    // The frozen process resumes: its session is gone.
    let resumed = held.commit().await;
    assert!(
        matches!(&resumed, Err(e) if e.is_unavailable()),
        "the server ended the frozen transaction; the store says so: {resumed:?}"
    );
    let balance = scalar_i64(
        &db.store,
        "SELECT balance::bigint FROM user_svc.accounts WHERE user_id = 'alice'",
    )
    .await;
    assert_eq!(
        balance,
        10_000 - 100,
        "the order's funds were reserved exactly once"
    );
}

// ------------------------------------------------------------- defect 6

/// A rolling upgrade: an old build (reads schema version 0) and a new one
/// (reads 1) relay one outbox. The old one leaves the rows it cannot read
/// for the new one instead of quarantining them; the new one publishes
/// them. A row no build decodes is still quarantined.
#[tokio::test]
async fn an_old_relay_leaves_newer_rows_for_the_new_one() {
    let db = TestDb::create().await;
    let rig = Rig::new("upgrade", db.store.clone(), Duration::from_secs(10)).await;
    let old = rig.with_store(db.store.clone().reading_schema_versions_up_to(0));
    let new = rig.env.clone();
    enqueue(&db.store, &[order_created(1), order_created(2)]).await;
    sqlx::query(
        "INSERT INTO order_svc.outbox (event_id, event_type, order_id, payload, created_at)
         VALUES (gen_random_uuid(), 'ORDER_CREATED', 'o-garbage', '{not json', now())",
    )
    .execute(db.store.pool())
    .await
    .expect("insert a row no build decodes");

    assert_eq!(
        relay::relay_once(&old, Service::Order).await,
        Ok(0),
        "the old build publishes nothing"
    );
    assert_eq!(
        relay::relay_once(&old, Service::Order).await,
        Ok(0),
        "nor on its next pass"
    );
    let left = scalar_i64(
        &db.store,
        "SELECT count(*) FROM order_svc.outbox WHERE needs_schema_version = 1 AND quarantined_at IS NULL",
    )
    .await;
    assert_eq!(left, 2, "both rows are left for a build that reads version 1");

    assert_eq!(
        relay::relay_once(&new, Service::Order).await,
        Ok(2),
        "the new build publishes them"
    );
    assert_eq!(rig.bus.stream_len(Service::User).await.unwrap(), 2);
    let quarantined: Vec<String> = rig
        .recorder
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("quarantined"))
        .collect();
    assert_eq!(quarantined.len(), 1, "only the garbage row: {quarantined:?}");
    assert!(quarantined[0].contains("malformed JSON"), "{quarantined:?}");
    assert_eq!(
        scalar_i64(
            &db.store,
            "SELECT count(*) FROM order_svc.outbox WHERE needs_schema_version IS NOT NULL"
        )
        .await,
        0,
        "the new build's claim cleared the marks"
    );
    assert_eq!(relay::relay_once(&new, Service::Order).await, Ok(0));
    assert_eq!(
        rig.bus.stream_len(Service::User).await.unwrap(),
        2,
        "each row once"
    );
}

/// `release` makes set-aside rows due again: a row an older build
/// quarantined for good publishes once released.
#[tokio::test]
async fn a_released_row_is_published() {
    let db = TestDb::create().await;
    let rig = Rig::new("release", db.store.clone(), Duration::from_secs(10)).await;
    enqueue(&db.store, &[order_created(1)]).await;
    sqlx::query(
        "UPDATE order_svc.outbox SET quarantined_at = now(),
             quarantine_reason = 'undecodable event: unsupported schema version 1 (this build reads 0)'",
    )
    .execute(db.store.pool())
    .await
    .expect("quarantine as an older build did");
    assert_eq!(
        relay::relay_once(&rig.env, Service::Order).await,
        Ok(0),
        "quarantined rows are not due"
    );
    let listed = db.store.set_aside(Service::Order, 10).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let released = db
        .store
        .release_set_aside(Service::Order, Some(&[listed[0].seq]), SystemClock.now())
        .await
        .expect("release");
    assert_eq!(released, 1);
    assert_eq!(
        relay::relay_once(&rig.env, Service::Order).await,
        Ok(1),
        "due again at once"
    );
    assert!(db
        .store
        .set_aside(Service::Order, 10)
        .await
        .expect("list")
        .is_empty());
}
