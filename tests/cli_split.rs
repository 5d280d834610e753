//! The built binary with a database per service (issue 25) and the
//! migration rule (issue 27):
//!
//! - only `migrate` (and `demo`) change the schema: `serve`, `audit`,
//!   `status`, `seed-demo`, `token`, `outbox` and `dlq` on an unmigrated
//!   database fail at once with "run `purchase-saga migrate`" and create
//!   nothing (`serve` used to loop on "relation does not exist", `seed-demo`
//!   migrated by itself);
//! - a process serving Payment alone never connects to Order's database
//!   (its URL names a port nothing listens on), while one serving Order,
//!   or the HTTP API, fails naming that database;
//! - a one-database install made by the old migrations moves to three
//!   databases: `migrate` adopts it, `pg_dump -n <schema> | psql` moves
//!   each schema with its history, and the binary on the split layout
//!   migrates (nothing to do), audits the same rows clean and lists the
//!   same tokens;
//! - a server refusing connections (SQLSTATE 53300) is reported with the
//!   flag that sizes the pools (`--pg-pool-max`);
//! - a schema left in a database its part moved away from: `migrate` warns
//!   naming it, both databases and the `DROP SCHEMA`, and `status` and
//!   `audit --safety-only` never read it.

mod common;
mod split_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestDb, TestRedis};
use purchase_saga::adapters::postgres::{Part, PgRoutes, LEGACY};
use purchase_saga::adapters::tokens::{self, Principal};
use purchase_saga::cli::seed::demo_scenario;
use purchase_saga::domain::Service;
use purchase_saga::runtime::{Clock, Store, SystemClock};
use split_support::{EmptyDb, GROUPS};

/// The environment variable of each part's database URL.
fn variable(part: Part) -> &'static str {
    match part {
        Part::Service(Service::Order) => "DATABASE_URL_ORDER",
        Part::Service(Service::User) => "DATABASE_URL_USER",
        Part::Service(Service::Payment) => "DATABASE_URL_PAYMENT",
        Part::Service(Service::Inventory) => "DATABASE_URL_INVENTORY",
        Part::Service(Service::Item) => "DATABASE_URL_ITEM",
        Part::Service(Service::Notification) => "DATABASE_URL_NOTIFICATION",
        Part::Api => "DATABASE_URL_API",
    }
}

/// The binary, with no per-service URL inherited from the test's
/// environment.
fn bin() -> Command {
    let path =
        std::env::var_os("PURCHASE_SAGA_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_purchase-saga").into());
    let mut command = Command::new(path);
    command.env_remove("RUST_LOG");
    for part in Part::ALL {
        command.env_remove(variable(part));
    }
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` to its end, killing it (and failing) after `limit`.
fn finish(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let until = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{command:?} still running after {limit:?}: {}", text(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_other_than_migrate_refuse_an_unmigrated_database_and_change_nothing() {
    let db = EmptyDb::create("rule").await;
    let redis = TestRedis::create("split-rule");
    let tokens = std::env::temp_dir().join(format!("split-rule-{}.txt", common::random_suffix()));
    let with_db = |args: &[&str]| {
        let mut command = bin();
        command
            .args(["--database-url", &db.url, "--redis-url", &redis.url])
            .args(["--redis-prefix", &redis.prefix])
            .args(args);
        command
    };
    let cases: [&[&str]; 7] = [
        &["serve", "--services", "payment"],
        &["audit"],
        &["status"],
        &["seed-demo", "--tokens-file", tokens.to_str().unwrap()],
        &["token", "list"],
        &["outbox", "quarantined"],
        // Replay hands an event back to services: their schemas first
        // (`dlq list`, `drop` and `purge` read and change Redis only).
        &["dlq", "replay", "--service", "order", "--id", "1-0"],
    ];
    for args in cases {
        let out = finish(with_db(args), Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("run `purchase-saga migrate`"),
            "{args:?}: {stderr}"
        );
    }
    let store = db.store().await;
    assert!(
        db.schemas(&store).await.is_empty(),
        "no command but migrate created a schema"
    );
    let migrated = finish(with_db(&["migrate"]), Duration::from_secs(60));
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let seeded = finish(
        with_db(&["seed-demo", "--tokens-file", tokens.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert!(seeded.status.success(), "{}", text(&seeded.stderr));
    let _ = std::fs::remove_file(&tokens);
    store.pool().close().await;
}

/// Waits for `serve`'s "serving" log line on its stderr (JSON logs).
fn wait_serving(child: &mut std::process::Child, limit: Duration) -> Result<(), String> {
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut serving = false;
        // Read to the end: a closed pipe would fail the process's later
        // log writes.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !serving && line.contains("\"serving\"") {
                serving = true;
                let _ = tx.send(Ok(()));
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        if !serving {
            let _ = tx.send(Err(seen));
        }
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(seen)) => Err(format!("serve ended: {seen}")),
        Err(_) => Err(format!("no \"serving\" line within {limit:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_serving_payment_alone_never_connects_to_orders_database() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("split-serve");
    let unreachable = "postgres://postgres@127.0.0.1:1/order_elsewhere";
    let serve = |services: &str, http: bool| {
        let mut command = bin();
        command
            .env("DATABASE_URL_ORDER", unreachable)
            .args(["--database-url", &db.url, "--redis-url", &redis.url])
            .args(["--redis-prefix", &redis.prefix, "--log-format", "json"])
            .args(["serve", "--services", services]);
        if http {
            command.args(["--http", "127.0.0.1:0"]);
        }
        command
    };
    let mut child = serve("payment", false)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let started = wait_serving(&mut child, Duration::from_secs(30));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    started.unwrap_or_else(|e| panic!("payment alone did not serve: {e}"));
    assert!(status.success(), "stopped cleanly on SIGTERM: {status:?}");

    // Serving Order, or the HTTP API (whose reads span every service),
    // needs Order's database: refused, naming it.
    for (services, http) in [("order,payment", false), ("payment", true)] {
        let out = finish(serve(services, http), Duration::from_secs(30));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{services} http={http}: {stderr}");
        assert!(
            stderr.contains("127.0.0.1:1/order_elsewhere") && stderr.contains("the database of order"),
            "{services} http={http}: {stderr}"
        );
    }
}

/// `pg_dump -n schema` of `from` restored into `to` with `psql`.
fn move_schema(schema: &str, from: &str, to: &str) {
    let dump = Command::new("pg_dump")
        .args(["--no-owner", "-n", schema, from])
        .output()
        .expect("pg_dump runs");
    assert!(
        dump.status.success(),
        "pg_dump -n {schema}: {}",
        text(&dump.stderr)
    );
    let mut psql = Command::new("psql")
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", to])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    use std::io::Write;
    psql.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    let out = psql.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psql restoring {schema}: {}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_database_install_moves_to_a_database_per_service() {
    // An install of the one-database build, with sagas run and a token.
    let old = EmptyDb::create("old").await;
    let store = old.store().await;
    LEGACY
        .run(store.pool())
        .await
        .expect("the one-database migrations");
    let scenario = demo_scenario("move-");
    store.seed_rows(&scenario.opening_rows()).await.unwrap();
    let placed = split_support::run_sagas(Arc::new(store.clone()), &scenario, "move", 12).await;
    tokens::issue_at(&store, Principal::Admin, SystemClock.now(), None)
        .await
        .unwrap();
    let before = store.snapshot().await.unwrap();
    assert_eq!(before.orders.len(), placed.len());

    let on_old = |args: &[&str]| {
        let mut command = bin();
        command.args(["--database-url", &old.url]).args(args);
        finish(command, Duration::from_secs(60))
    };
    let refused = on_old(&["audit", "--safety-only"]);
    assert!(
        text(&refused.stderr).contains("run `purchase-saga migrate`"),
        "{}",
        text(&refused.stderr)
    );
    // 1. The new build's `migrate` adopts the install in place.
    let adopted = on_old(&["migrate"]);
    assert!(adopted.status.success(), "{}", text(&adopted.stderr));
    let audited = on_old(&["audit", "--safety-only"]);
    assert!(audited.status.success(), "{}", text(&audited.stdout));

    // 2. Each schema, with its history, to the database that will hold it.
    let mut news = Vec::new();
    for (i, parts) in GROUPS.iter().enumerate() {
        let db = EmptyDb::create(&format!("new{i}")).await;
        for part in *parts {
            move_schema(part.schema(), &old.url, &db.url);
        }
        news.push(db);
    }
    store.pool().close().await;

    // 3. The binary on the split layout: DATABASE_URL names nothing that
    // listens, so a part without its own URL would fail loudly.
    let on_split = |args: &[&str]| {
        let mut command = bin();
        for (parts, db) in GROUPS.iter().zip(&news) {
            for part in *parts {
                command.env(variable(*part), &db.url);
            }
        }
        command
            .args(["--database-url", "postgres://postgres@127.0.0.1:1/nothing"])
            .args(args);
        finish(command, Duration::from_secs(60))
    };
    let migrated = on_split(&["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let audited = on_split(&["audit", "--safety-only"]);
    let stdout = text(&audited.stdout);
    assert!(audited.status.success(), "{stdout}{}", text(&audited.stderr));
    assert!(stdout.contains(&format!("{} orders", placed.len())), "{stdout}");
    let listed = on_split(&["token", "list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(text(&listed.stdout).contains("admin"), "{}", text(&listed.stdout));

    // The rows are the install's, each in its own database.
    let mut databases = Vec::new();
    for (parts, db) in GROUPS.iter().zip(&news) {
        databases.push((db.store().await, parts.to_vec()));
    }
    let routes = PgRoutes::new(databases);
    assert_eq!(routes.snapshot().await.unwrap(), before);
    routes.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_connections_is_told_with_the_pool_flag() {
    use sqlx::Connection;
    // A role allowed no connection at all meets SQLSTATE 53300, the code
    // of a server whose max_connections is reached.
    let admin_url = common::database_url();
    let role = format!("ps_split_full_{}", common::random_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 0"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = admin_url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(
        url, admin_url,
        "the admin URL names the postgres user: {admin_url}"
    );
    let mut command = bin();
    command.args(["--database-url", &url, "--pg-pool-max", "4", "audit"]);
    let out = finish(command, Duration::from_secs(30));
    let _ = sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut admin)
        .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("SQLSTATE 53300") && stderr.contains("--pg-pool-max"),
        "{stderr}"
    );
}

/// Issue 25: a database still holding the schema of a part that moved to
/// another database (the move's last step not done yet). `migrate` warns
/// on stderr, naming the schema, the database it is in, the one its part
/// is routed to now and the `DROP SCHEMA ... CASCADE` to run; `status` and
/// `audit --safety-only` never read it: with its tables gone (any read of
/// it would fail) both still answer clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_names_a_leftover_schema_and_no_command_reads_it() {
    let first = EmptyDb::create("left").await;
    let second = EmptyDb::create("moved").await;
    let redis = TestRedis::create("split-leftover");
    let with = |payment_url: Option<&str>, args: &[&str]| {
        let mut command = bin();
        if let Some(url) = payment_url {
            command.env("DATABASE_URL_PAYMENT", url);
        }
        command
            .args(["--database-url", &first.url, "--redis-url", &redis.url])
            .args(["--redis-prefix", &redis.prefix])
            .args(args);
        finish(command, Duration::from_secs(60))
    };
    let migrated = with(None, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(
        !text(&migrated.stderr).contains("warning"),
        "one database: nothing foreign: {}",
        text(&migrated.stderr)
    );
    move_schema("payment_svc", &first.url, &second.url);

    let moved = with(Some(&second.url), &["migrate"]);
    let stderr = text(&moved.stderr);
    assert!(moved.status.success(), "{stderr}");
    let store = first.store().await;
    let found_in = store.target().to_string();
    let routed_to = second.store().await.target().to_string();
    assert!(found_in.ends_with(&first.name) && routed_to.ends_with(&second.name));
    let warning = stderr
        .lines()
        .find(|l| l.contains("migrate: warning:"))
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    for word in [
        "schema payment_svc (payment)",
        &format!("the database at {found_in} holds"),
        &format!("whose database is now {routed_to}"),
        &format!("drop it on {found_in}: DROP SCHEMA payment_svc CASCADE;"),
    ] {
        assert!(warning.contains(word), "{word:?} missing: {warning}");
    }
    assert_eq!(stderr.matches("migrate: warning:").count(), 1, "{stderr}");

    // The leftover loses its tables: a read of it would now fail.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'payment_svc'")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(!tables.is_empty());
    for table in tables {
        sqlx::query(&format!("DROP TABLE payment_svc.{table} CASCADE"))
            .execute(store.pool())
            .await
            .unwrap();
    }
    store.pool().close().await;
    let status = with(Some(&second.url), &["status", "--json"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}{}",
        text(&status.stdout),
        text(&status.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert_eq!(s["errors"], serde_json::json!([]), "{s}");
    let audit = with(Some(&second.url), &["audit", "--safety-only"]);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}{}",
        text(&audit.stdout),
        text(&audit.stderr)
    );
    assert!(
        text(&audit.stdout).contains("audit: clean"),
        "{}",
        text(&audit.stdout)
    );
}
