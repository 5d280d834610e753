//! The built `purchase-saga` binary: clap's errors for bad flags, a clear
//! message for an unreachable database, `migrate`/`seed-demo` idempotent,
//! `audit` clean on a seeded database and listing violations on a
//! corrupted one, and `serve` answering over HTTP then stopping cleanly on
//! SIGTERM; `token issue`/`revoke`; `--in-memory serve` printing working
//! tokens; `chaos` refusing non-local addresses.

mod common;
mod completions_support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{TestDb, TestRedis};
use purchase_saga::adapters::redis::keys;
use purchase_saga::cli::client;
use purchase_saga::domain::Service;

/// The binary under test: cargo's build of it, or `PURCHASE_SAGA_BIN` when
/// set (a release build, or a copy that a concurrent build in a shared
/// target directory cannot replace mid-run).
fn bin() -> Command {
    let path =
        std::env::var_os("PURCHASE_SAGA_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_purchase-saga").into());
    let mut command = Command::new(path);
    command.env_remove("RUST_LOG");
    command
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `args` exit 2 with clap's `message` and a pointer to the usage.
fn assert_clap_refuses(args: &[&str], message: &str) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(message),
        "{args:?}: expected {message:?} in {stderr}"
    );
    assert!(
        stderr.contains("Usage:") || stderr.contains("--help"),
        "{args:?}: {stderr}"
    );
}

#[test]
fn bad_flags_give_clap_messages_and_a_nonzero_exit() {
    let cases: [(&[&str], &str); 5] = [
        (&["--bogus-flag", "audit"], "unexpected argument '--bogus-flag'"),
        (
            &["serve", "--replicas", "0"],
            "invalid value '0' for '--replicas <REPLICAS>'",
        ),
        (&["serve", "--services", "order,shop"], "unknown service \"shop\""),
        (
            &["--saga-deadline", "soon", "audit"],
            "invalid value 'soon' for '--saga-deadline <SECONDS>'",
        ),
        (
            &["serve", "--http", "not-an-address"],
            "invalid value 'not-an-address' for '--http <ADDR>'",
        ),
    ];
    for (args, message) in cases {
        assert_clap_refuses(args, message);
    }
    let out = run(&[]);
    assert_ne!(out.status.code(), Some(0), "no subcommand is an error");
    assert!(text(&out.stderr).contains("Usage:"), "{}", text(&out.stderr));
}

#[test]
fn an_unreachable_database_is_named_in_the_error() {
    let out = run(&[
        "--database-url",
        "postgres://postgres@127.0.0.1:1/nowhere",
        "audit",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
    let out = run(&["--in-memory", "audit"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an in-memory audit would always be clean"
    );
    assert!(
        text(&out.stderr).contains("audit needs PostgreSQL"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_is_clean_on_a_seeded_database_and_lists_corruption() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-audit");
    let with_db = |args: &[&str]| run_on(&db, &redis, args);
    let migrated = with_db(&["migrate"]);
    assert!(
        migrated.status.success(),
        "migrate twice is fine: {}",
        text(&migrated.stderr)
    );
    let tokens = scratch_file("audit-tokens");
    let tokens = tokens.to_str().unwrap();
    let first = with_db(&["seed-demo", "--tokens-file", tokens]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stdout).contains("seed-demo: 90 rows inserted, 0 already present"),
        "{}",
        text(&first.stdout)
    );
    let second = with_db(&["seed-demo", "--tokens-file", tokens]);
    assert!(
        text(&second.stdout).contains("seed-demo: 0 rows inserted, 90 already present"),
        "{}",
        text(&second.stdout)
    );

    let clean = with_db(&["audit"]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}{}",
        text(&clean.stdout),
        text(&clean.stderr)
    );
    assert!(
        text(&clean.stdout).contains("audit: clean (all invariants; 0 orders, 40 users, 5 items)"),
        "{}",
        text(&clean.stdout)
    );

    // Seven units of balance vanish without a hold: both the moment-to-moment
    // check and conservation must say so.
    let changed =
        sqlx::query("UPDATE user_svc.accounts SET balance = balance - 7 WHERE user_id = 'demo-user-3'")
            .execute(db.store.pool())
            .await
            .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    let corrupted = with_db(&["audit"]);
    let stdout = text(&corrupted.stdout);
    assert_eq!(corrupted.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[balance-matches-holds] user demo-user-3: balance 19993 != opening 20000 - held 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[balance-conservation] user demo-user-3"),
        "{stdout}"
    );
    let safety = with_db(&["audit", "--safety-only"]);
    let stdout = text(&safety.stdout);
    assert_eq!(safety.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("[balance-matches-holds] user demo-user-3"),
        "{stdout}"
    );
    assert!(!stdout.contains("balance-conservation"), "safety only: {stdout}");
}

/// Sends SIGTERM with the system's `kill`.
fn terminate(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_over_http_and_stops_cleanly_on_sigterm() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-serve");
    let tokens = scratch_file("serve-tokens");
    let seeded = run(&[
        "--database-url",
        &db.url,
        "seed-demo",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    assert!(seeded.status.success(), "{}", text(&seeded.stderr));
    let seeded_out = text(&seeded.stdout);
    let _ = std::fs::remove_file(&tokens);
    let token = |name: &str| seeded_token(&seeded_out, name);
    let user_token = format!("Bearer {}", token("demo-user-3"));
    let other_token = format!("Bearer {}", token("demo-user-4"));
    let port = purchase_saga_testkit::free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = bin()
        .args([
            "--database-url",
            &db.url,
            "--redis-url",
            &redis.url,
            "--redis-prefix",
            &redis.prefix,
        ])
        .args([
            "serve",
            "--services",
            "all",
            "--replicas",
            "2",
            "--http",
            &addr.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");

    let until = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let answer = client::request(addr, "GET", "/readyz", &[], b"", Duration::from_secs(5)).await;
        match answer {
            Ok(r) if r.status == 200 => break r,
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                let _ = child.kill();
                panic!("serve never became ready: {other:?}");
            }
        }
    };
    assert_eq!(ready.json().unwrap()["checks"]["bus"], "ok");
    let body = br#"{"userId":"demo-user-3","itemId":"demo-iron-sword","quantity":2}"#;
    let placed = client::request(
        addr,
        "POST",
        "/orders?wait=20",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &user_token),
        ],
        body,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let json = placed.json().unwrap();
    assert_eq!(
        (placed.status, json["status"].as_str()),
        (200, Some("COMPLETED")),
        "{json}"
    );
    let path = format!("/orders/{}", json["orderId"].as_str().unwrap());
    let timeout = Duration::from_secs(5);
    let get_as = |headers: Vec<(&'static str, String)>| {
        let path = path.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            client::request(addr, "GET", &path, &headers, b"", timeout)
                .await
                .unwrap()
        }
    };
    let anonymous = get_as(vec![]).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    let other = get_as(vec![("Authorization", other_token.clone())]).await;
    assert_eq!(
        other.status,
        404,
        "another user's order is not told: {}",
        other.text()
    );
    let own = get_as(vec![("Authorization", user_token.clone())]).await;
    assert_eq!(own.status, 200, "{}", own.text());

    terminate(child.id());
    let until = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < until,
            "serve did not stop within 40 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = {
        use std::io::Read;
        let mut s = String::new();
        child.stderr.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        stderr.contains("shutdown requested") && stderr.contains("stopped cleanly"),
        "{stderr}"
    );
}

/// Checks the demo's summary: every path happened, the edge checks passed,
/// the audit is clean.
fn assert_demo_summary(out: &Output) {
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", text(&out.stderr));
    for outcome in [
        "COMPLETED",
        "FAILED at USER_VALIDATION",
        "FAILED at INVENTORY_RESERVATION",
        "FAILED at ITEM_RESERVATION",
        "FAILED at PAYMENT",
    ] {
        assert!(stdout.contains(outcome), "{outcome} never happened:\n{stdout}");
    }
    assert!(stdout.contains("unknown user"), "{stdout}");
    let edge_checks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("edge check:")).collect();
    assert_eq!(edge_checks.len(), 7, "{stdout}");
    assert!(
        edge_checks.iter().all(|l| l.ends_with(": ok")),
        "an edge check failed:\n{stdout}"
    );
    assert!(stdout.contains("orders/s") && stdout.contains("p99"), "{stdout}");
    assert!(stdout.contains(": clean"), "{stdout}");
}

#[test]
fn demo_in_memory_covers_every_path_and_audits_clean() {
    assert_demo_summary(&run(&["--in-memory", "demo", "--orders", "150"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres_and_redis_covers_every_path_and_audits_clean() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-demo");
    let out = run(&[
        "--database-url",
        &db.url,
        "--redis-url",
        &redis.url,
        "--redis-prefix",
        &redis.prefix,
        "demo",
        "--orders",
        "150",
    ]);
    assert_demo_summary(&out);
}

/// `token issue` prints a token that verifies against the stored digest;
/// `token revoke` (by token or by user) makes it fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_and_revoke() {
    use purchase_saga::adapters::tokens::{verify, Principal};
    use purchase_saga::domain::UserId;
    let db = TestDb::create().await;
    let with_db = |args: &[&str]| {
        let mut all = vec!["--database-url", db.url.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };
    let issue = |args: &[&str]| {
        let out = with_db(args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let user = issue(&["token", "issue", "--user", "u-1"]);
    let second = issue(&["token", "issue", "--user", "u-1"]);
    let admin = issue(&["token", "issue", "--admin"]);
    let u1 = Principal::User(UserId::parse("u-1").unwrap());
    assert_eq!(verify(&db.store, &user).await.unwrap(), Some(u1.clone()));
    assert_eq!(verify(&db.store, &admin).await.unwrap(), Some(Principal::Admin));

    let revoked = with_db(&["token", "revoke", "--id", &user]);
    assert!(
        text(&revoked.stdout).contains("revoked 1 token(s)"),
        "{}",
        text(&revoked.stdout)
    );
    assert_eq!(verify(&db.store, &user).await.unwrap(), None);
    assert_eq!(
        verify(&db.store, &second).await.unwrap(),
        Some(u1),
        "only that token"
    );
    let by_user = with_db(&["token", "revoke", "--user", "u-1"]);
    assert!(
        text(&by_user.stdout).contains("revoked 1 token(s)"),
        "{}",
        text(&by_user.stdout)
    );
    assert_eq!(verify(&db.store, &second).await.unwrap(), None);
    assert_eq!(verify(&db.store, &admin).await.unwrap(), Some(Principal::Admin));

    let neither = with_db(&["token", "issue"]);
    assert!(!neither.status.success(), "issue needs --user or --admin");
}

/// `chaos` refuses any non-local address before it touches anything.
#[test]
fn chaos_refuses_non_local_addresses() {
    let out = run(&[
        "--database-url",
        "postgres://postgres@db.example.com:5432/postgres",
        "chaos",
        "--no-restart-backends",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("chaos uses local addresses only"),
        "{}",
        text(&out.stderr)
    );
}

/// `--in-memory serve` issues the demo's tokens into its in-memory token
/// store and prints them; they buy and read over HTTP, and the admin one
/// reaches the admin endpoint where a user's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_serve_prints_tokens_that_work() {
    use std::io::BufRead;
    let port = purchase_saga_testkit::free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = bin()
        .args(["--in-memory", "serve", "--http", &addr.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().unwrap();
    // 41 lines (admin and 40 users), printed before serving.
    let lines: Vec<String> = std::io::BufReader::new(stdout)
        .lines()
        .take(41)
        .map(|l| l.unwrap())
        .collect();
    let token = |name: &str| -> String {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("token {name} ")))
            .unwrap_or_else(|| panic!("no token for {name}: {lines:?}"))
            .to_string()
    };
    let user = format!("Bearer {}", token("demo-user-3"));
    let admin = format!("Bearer {}", token("admin"));
    let until = Instant::now() + Duration::from_secs(30);
    while client::request(addr, "GET", "/readyz", &[], b"", Duration::from_secs(5))
        .await
        .map_or(true, |r| r.status != 200)
    {
        assert!(Instant::now() < until, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let timeout = Duration::from_secs(30);
    let placed = client::request(
        addr,
        "POST",
        "/orders?wait=20",
        &[("Content-Type", "application/json"), ("Authorization", &user)],
        br#"{"itemId":"demo-iron-sword","quantity":1}"#,
        timeout,
    )
    .await
    .unwrap();
    assert_eq!(
        (placed.status, placed.json().unwrap()["status"].as_str()),
        (200, Some("COMPLETED")),
        "{}",
        placed.text()
    );
    let path = "/admin/dead-letters?service=order";
    let as_user = client::request(addr, "GET", path, &[("Authorization", &user)], b"", timeout)
        .await
        .unwrap();
    assert_eq!(as_user.status, 403, "{}", as_user.text());
    let as_admin = client::request(addr, "GET", path, &[("Authorization", &admin)], b"", timeout)
        .await
        .unwrap();
    assert_eq!((as_admin.status, as_admin.text().as_str()), (200, "[]"));
    terminate(child.id());
    let until = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "serve did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `bench` on the real PostgreSQL and Redis, briefly: both ceilings, every
/// saga on the full success path (9 commits with one transaction per event:
/// the order and 8 participant steps), a row per level for batched apply
/// and for the control, the database's writes per mode, an open-loop level
/// per mode, and its databases dropped afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_both_ceilings_and_cleans_up() {
    let admin = common::database_url();
    let out = run(&[
        "--database-url",
        &admin,
        "--redis-url",
        &common::redis_url(),
        "bench",
        "--levels",
        "1,3",
        "--orders",
        "12",
        "--scales",
        "1",
        "--ceiling-seconds",
        "1",
        "--open-orders",
        "10",
        "--apply-control",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        text(&out.stderr)
    );
    let tag = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.strip_suffix(':'))
        .expect("the first line names the run");
    assert!(stdout.contains("single-row update tx/s") && stdout.contains("step-shaped tx/s"));
    let table = |first: &str| -> Vec<Vec<String>> {
        stdout
            .lines()
            .filter(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(first) && words.next().is_some_and(|w| w.starts_with('x'))
            })
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("x1 "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 6, "one row per level and mode: {stdout}");
    let modes: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r[3].as_str(), r[4].as_str(), r[5].as_str()))
        .collect();
    assert_eq!(
        modes,
        [
            ("commit", "batch", "1"),
            ("commit", "batch", "3"),
            ("relay", "batch", "1"),
            ("relay", "batch", "3"),
            ("commit", "event", "1"),
            ("commit", "event", "3")
        ],
        "send on commit, its control (--dispatch relay), then one transaction per event, in one run: {stdout}"
    );
    for row in &rows {
        let sagas_per_s: f64 = row[6].parse().expect("sagas/s is a number");
        assert!(sagas_per_s > 0.0, "{stdout}");
        let per_saga: f64 = row[11].parse().expect("tx/saga is a number");
        assert!(per_saga > 0.0 && per_saga <= 9.0, "{stdout}");
        assert_eq!(row[12], rows[0][12], "one naive bound per scale: {stdout}");
    }
    for row in rows.iter().filter(|r| r[4] == "event") {
        assert_eq!(
            row[11], "9.00",
            "one commit per event on the success path: {stdout}"
        );
    }
    // The database's count: every mode placed 2 x 12 closed-loop orders and
    // 10 open-loop ones, 34 sagas of 9 published events each (the success
    // path), and wrote each event's outbox row at least twice (insert, mark).
    let writes = table("writes");
    assert_eq!(writes.len(), 3, "one writes row per mode: {stdout}");
    for row in &writes {
        assert_eq!((row[4].as_str(), row[5].as_str()), ("34", "306"), "{stdout}");
        let commits: f64 = row[6].parse().unwrap();
        assert!(
            commits >= 1.0,
            "the database counted the sagas' commits: {stdout}"
        );
        // Insert and mark at least; re-drive rounds of the earlier levels'
        // events (a claim and a mark each) may land in the window too.
        let outbox: f64 = row[8].parse().unwrap();
        assert!(outbox >= 2.0, "outbox writes per event: {stdout}");
    }
    let open = table("open");
    assert_eq!(open.len(), 3, "one open-loop row per mode: {stdout}");
    for row in &open {
        assert_eq!(row[5], "10", "{stdout}");
        let p50: f64 = row[7].parse().unwrap();
        let p999: f64 = row[9].parse().unwrap();
        assert!(p50 > 0.0 && p999 >= p50, "{stdout}");
    }
    let pool = sqlx::PgPool::connect(&admin).await.expect("admin database");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1")
        .bind(format!("ps_bench_{tag}_%"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the bench databases are dropped");
}

/// Issue 16: logs written to a pipe carry no terminal colour codes (the
/// human format colours only a terminal), and `--log-format json` stays
/// one JSON object per line.
#[test]
fn logs_on_a_pipe_carry_no_colour_codes() {
    let human = run(&["--in-memory", "migrate"]);
    let stderr = text(&human.stderr);
    assert!(human.status.success(), "{stderr}");
    assert!(stderr.contains("migrations applied"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "escape codes on a pipe: {:?}", stderr);
    let json = run(&["--in-memory", "--log-format", "json", "migrate"]);
    let stderr = text(&json.stderr);
    assert!(json.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("migrations applied"))
        .unwrap_or_else(|| panic!("no log line: {stderr}"));
    let parsed: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(parsed["level"], "INFO", "{line}");
    assert!(!line.contains('\u{1b}'), "{line}");
}

/// A path in the system's temporary directory that no other test uses
/// (nothing is created).
fn scratch_file(label: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ps_test_{label}_{}", common::random_suffix()))
}

/// A `serve` child process with the HTTP API, SIGTERMed on drop.
struct Serving {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Serving {
    /// Starts `serve --services <services>` on a free port and waits (30 s
    /// at most) until `/readyz` answers 200.
    async fn start(db: &TestDb, redis: &TestRedis, services: &str) -> Serving {
        Serving::start_with(db, redis, services, &[]).await
    }

    /// [`start`](Self::start) with more global flags.
    async fn start_with(db: &TestDb, redis: &TestRedis, services: &str, flags: &[&str]) -> Serving {
        let port = purchase_saga_testkit::free_port().unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = bin()
            .args(["--database-url", &db.url, "--redis-url", &redis.url])
            .args(["--redis-prefix", &redis.prefix])
            .args(flags)
            .args(["serve", "--services", services, "--http", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("serve starts");
        let serving = Serving { child, addr };
        let until = Instant::now() + Duration::from_secs(30);
        while client::request(addr, "GET", "/readyz", &[], b"", Duration::from_secs(5))
            .await
            .map_or(true, |r| r.status != 200)
        {
            assert!(
                Instant::now() < until,
                "serve --services {services} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        serving
    }

    /// SIGTERM, then wait (40 s at most) for the exit.
    async fn stop(mut self) {
        terminate(self.child.id());
        let until = Instant::now() + Duration::from_secs(40);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < until,
                "serve did not stop within 40 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary with `args` on `db` and `redis` (URL and prefix).
fn run_on(db: &TestDb, redis: &TestRedis, args: &[&str]) -> Output {
    let mut all = vec![
        "--database-url",
        db.url.as_str(),
        "--redis-url",
        redis.url.as_str(),
    ];
    all.extend_from_slice(&["--redis-prefix", redis.prefix.as_str()]);
    all.extend_from_slice(args);
    run(&all)
}

/// `POST /orders` of one demo-iron-sword for `user`, with `admin`'s token
/// and no wait: 202.
async fn place_for(addr: std::net::SocketAddr, admin: &str, user: &str) -> client::Response {
    let body = format!(r#"{{"userId":"{user}","itemId":"demo-iron-sword","quantity":1}}"#);
    let placed = client::request(
        addr,
        "POST",
        "/orders",
        &[("Content-Type", "application/json"), ("Authorization", admin)],
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(placed.status, 202, "{}", placed.text());
    placed
}

/// The token `seed-demo` printed for `name` (`token <name> <token>`).
fn seeded_token(seed_stdout: &str, name: &str) -> String {
    seed_stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("token {name} ")))
        .unwrap_or_else(|| panic!("seed-demo printed no token for {name}:\n{seed_stdout}"))
        .to_string()
}

/// Issue 16: an audit of a system with sagas in flight says so and exits 2
/// (safety checked, the quiescent invariants not), and `audit --wait`
/// exits 0 once the services have finished them. Orders are placed while
/// only the Order service runs, so their ORDER_CREATED events wait on the
/// bus undelivered; Redis unreachable is "cannot tell", also 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_tells_not_quiescent_from_broken() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-quiescence");
    let with = |args: &[&str]| run_on(&db, &redis, args);
    let admin = seed_demo_admin(&db, &redis, "quiescence-tokens");

    let order_only = Serving::start(&db, &redis, "order").await;
    for user in ["demo-user-3", "demo-user-4", "demo-user-5"] {
        place_for(order_only.addr, &admin, user).await;
    }
    // The Order relay publishes ORDER_CREATED; no User consumer takes it.
    let until = Instant::now() + Duration::from_secs(30);
    let busy = loop {
        let out = with(&["audit"]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{stdout}{}", text(&out.stderr));
        if stdout.contains("3 bus entries undelivered") {
            break stdout;
        }
        assert!(
            Instant::now() < until,
            "ORDER_CREATED never reached the bus: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(busy.contains("audit: not quiescent: "), "{busy}");
    assert!(busy.contains("3 orders not terminal"), "{busy}");
    assert!(
        busy.contains("  user: 0 pending, 3 undelivered, 0 unpublished"),
        "{busy}"
    );
    assert!(
        busy.contains("audit: clean (safety invariants; the quiescent ones need a quiescent system"),
        "{busy}"
    );
    assert!(
        !busy.contains("one-outcome-notification"),
        "no quiescent check: {busy}"
    );
    let no_bus = run(&[
        "--database-url",
        db.url.as_str(),
        "--redis-url",
        "redis://127.0.0.1:1",
        "audit",
    ]);
    assert_eq!(no_bus.status.code(), Some(2), "{}", text(&no_bus.stdout));
    assert!(
        text(&no_bus.stdout).contains("audit: not quiescent: the bus cannot be read"),
        "{}",
        text(&no_bus.stdout)
    );
    order_only.stop().await;

    let all = Serving::start(&db, &redis, "all").await;
    let waited = with(&["audit", "--wait", "30"]);
    let stdout = text(&waited.stdout);
    assert_eq!(waited.status.code(), Some(0), "{stdout}{}", text(&waited.stderr));
    assert!(stdout.contains("audit: quiescent"), "{stdout}");
    assert!(
        stdout.contains("audit: clean (all invariants; 3 orders, 40 users, 5 items)"),
        "{stdout}"
    );
    all.stop().await;
}

/// Issue 27: `audit --wait` was silent for as long as it waited. Off a
/// terminal it prints a line on stderr when what is in flight changes and
/// at least every 5 s, saying what and for how long; stdout holds only the
/// report (`--json` parses), `--quiet` prints nothing, and the audit ends
/// clean once the services finish the sagas. The orders wait stuck: placed
/// while only the Order service ran, which is stopped before the audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_wait_says_on_stderr_what_it_waits_for() {
    use std::io::{BufRead, BufReader};
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-wait-progress");
    let admin = seed_demo_admin(&db, &redis, "wait-progress-tokens");
    let order_only = Serving::start(&db, &redis, "order").await;
    for user in ["demo-user-3", "demo-user-4"] {
        place_for(order_only.addr, &admin, user).await;
    }
    order_only.stop().await;

    let quiet = run_on(&db, &redis, &["audit", "--wait", "1", "--quiet"]);
    assert_eq!(quiet.status.code(), Some(2), "{}", text(&quiet.stdout));
    assert_eq!(text(&quiet.stderr), "", "--quiet");
    let short = run_on(&db, &redis, &["audit", "--wait", "1"]);
    assert_eq!(short.status.code(), Some(2), "{}", text(&short.stdout));
    assert!(
        text(&short.stderr).contains("purchase-saga: audit --wait: "),
        "{}",
        text(&short.stderr)
    );

    let mut child = bin()
        .args(["--database-url", &db.url, "--redis-url", &redis.url])
        .args(["--redis-prefix", &redis.prefix])
        .args(["audit", "--wait", "60", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("audit starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a progress line while waiting");
    assert!(
        first.starts_with("purchase-saga: audit --wait: ")
            && first.contains("2 orders not terminal")
            && first.ends_with(" of 60s"),
        "{first}"
    );
    // Nothing changes while nothing runs: the next line comes after 5 s of
    // silence, with the same counts and a longer wait.
    let started = Instant::now();
    let second = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("a line at least every 5 s");
    assert!(started.elapsed() >= Duration::from_secs(3), "{first} / {second}");
    assert!(second.contains("2 orders not terminal"), "{second}");
    assert_ne!(first, second, "the time waited grew");

    let all = Serving::start(&db, &redis, "all").await;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    all.stop().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("only the report on stdout");
    assert_eq!(report["verdict"], "clean", "{report}");
    assert_eq!(report["counts"]["orders"], 2, "{report}");
}

/// Issue 13: after real sagas `audit` checks the compensations of every
/// order whose outbox rows are all still kept and finds them clean, then
/// fails with a named violation when the data is what a planted bug would
/// leave: a PAYMENT_ROLLBACK row one short (`refund-wrong-amount`) for a
/// COMPLETED order (a compensation nobody asked for, `compensate-twice`
/// leaves such a second row), or a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_checks_compensations_from_the_outboxes_and_dead_letters() {
    use purchase_saga::domain::event::{Event, Payload, PaymentRollback};
    use purchase_saga::domain::{OrderId, Timestamp, UserId};

    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-audit-outbox");
    let with = |args: &[&str]| run_on(&db, &redis, args);
    let admin = seed_demo_admin(&db, &redis, "audit-outbox-tokens");
    let all = Serving::start(&db, &redis, "all").await;
    for user in ["demo-user-3", "demo-user-4", "demo-user-5"] {
        place_for(all.addr, &admin, user).await;
    }
    let clean = with(&["audit", "--wait", "30"]);
    let stdout = text(&clean.stdout);
    assert_eq!(clean.status.code(), Some(0), "{stdout}{}", text(&clean.stderr));
    assert!(
        stdout.contains("audit: compensations checked from the outboxes for 3 of 3 orders"),
        "{stdout}"
    );
    all.stop().await;

    let (order, user, total): (String, String, i64) = sqlx::query_as(
        "SELECT order_id, user_id, total_amount FROM order_svc.orders WHERE status = 'COMPLETED' LIMIT 1",
    )
    .fetch_one(db.store.pool())
    .await
    .expect("a completed order");
    let refund = Event::new(
        OrderId::parse(order.clone()).unwrap(),
        UserId::parse(user).unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::PaymentRollback(PaymentRollback {
            refunded_amount: total - 1,
            balance: 0,
        }),
    );
    // Published already, so the audit sees nothing in flight.
    sqlx::query(
        "INSERT INTO user_svc.outbox (event_id, event_type, order_id, payload, created_at, \
         published_count, last_published_at) VALUES ($1, $2, $3, $4, now(), 1, now())",
    )
    .bind(refund.event_id.0)
    .bind(refund.event_type().as_str())
    .bind(&order)
    .bind(refund.encode())
    .execute(db.store.pool())
    .await
    .expect("a bad outbox row");
    let corrupted = with(&["audit"]);
    let stdout = text(&corrupted.stdout);
    assert_eq!(
        corrupted.status.code(),
        Some(1),
        "{stdout}{}",
        text(&corrupted.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "[compensation-exactly-once] order {order}: COMPLETED order: PAYMENT_RESERVED x1, PAYMENT_ROLLBACK x1, expected x0"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "[amounts-agree] order {order}: PAYMENT_ROLLBACK refunded {}; the order's total is {total}",
            total - 1
        )),
        "{stdout}"
    );
    sqlx::query("DELETE FROM user_svc.outbox WHERE event_id = $1")
        .bind(refund.event_id.0)
        .execute(db.store.pool())
        .await
        .unwrap();

    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(purchase_saga::adapters::redis::keys::dead(
            &redis.prefix,
            purchase_saga::domain::Service::Payment,
        ))
        .arg("*")
        .arg("reason")
        .arg("planted by the test")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dead = with(&["audit"]);
    let stdout = text(&dead.stdout);
    assert_eq!(dead.status.code(), Some(1), "{stdout}{}", text(&dead.stderr));
    assert!(
        stdout.contains("[no-dead-letter] service Payment: 1 dead letter(s) (`dlq list --service payment`)"),
        "{stdout}"
    );
}

/// Issue 16: `seed-demo` keeps its tokens and reuses the ones still valid
/// (a second run issues none), replacing only expired or revoked ones;
/// `token issue --ttl` sets an expiry that `token list` shows and that
/// `verify` honours; a bad `--ttl` is a clap error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_reuses_valid_tokens_and_tokens_expire() {
    use purchase_saga::adapters::tokens::{verify, Principal};
    let db = TestDb::create().await;
    let file = scratch_file("seed-tokens");
    let with_db = |args: &[&str]| {
        let mut all = vec!["--database-url", db.url.as_str()];
        all.extend_from_slice(args);
        let out = run(&all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let seed = || with_db(&["seed-demo", "--tokens-file", file.to_str().unwrap()]);
    let first = seed();
    assert!(first.contains("seed-demo: 0 tokens reused, 41 issued"), "{first}");
    let second = seed();
    assert!(
        second.contains("seed-demo: 41 tokens reused, 0 issued"),
        "{second}"
    );
    for name in ["admin", "demo-user-3", "demo-user-4"] {
        assert_eq!(seeded_token(&first, name), seeded_token(&second, name), "{name}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_auth.tokens")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(count, 41, "the second run issued nothing");

    // One token expired (as if its week had passed), one revoked: only
    // those two are replaced.
    let expired = sqlx::query(
        "UPDATE api_auth.tokens SET created_at = now() - interval '8 days', \
                expires_at = now() - interval '1 day' WHERE user_id = 'demo-user-3'",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    assert_eq!(expired.rows_affected(), 1);
    with_db(&["token", "revoke", "--user", "demo-user-4"]);
    let third = seed();
    assert!(third.contains("seed-demo: 39 tokens reused, 2 issued"), "{third}");
    for (name, replaced) in [("admin", false), ("demo-user-3", true), ("demo-user-4", true)] {
        let same = seeded_token(&second, name) == seeded_token(&third, name);
        assert_eq!(same, !replaced, "{name}");
    }
    let user3 = Principal::User(purchase_saga::domain::UserId::parse("demo-user-3").unwrap());
    assert_eq!(
        verify(&db.store, &seeded_token(&second, "demo-user-3"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        verify(&db.store, &seeded_token(&third, "demo-user-3"))
            .await
            .unwrap(),
        Some(user3)
    );

    let listed = with_db(&["token", "list", "--user", "demo-user-3"]);
    let states: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(states, ["expired", "active"], "{listed}");

    let short = with_db(&["token", "issue", "--user", "u-1", "--ttl", "1s"]);
    let short = short.trim();
    let u1 = Principal::User(purchase_saga::domain::UserId::parse("u-1").unwrap());
    assert_eq!(
        verify(&db.store, short).await.unwrap(),
        Some(u1),
        "valid at first"
    );
    let until = Instant::now() + Duration::from_secs(10);
    while verify(&db.store, short).await.unwrap().is_some() {
        assert!(Instant::now() < until, "a 1 s token still works after 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = with_db(&["token", "list", "--user", "u-1"]);
    assert!(
        listed.lines().nth(1).is_some_and(|l| l.ends_with("expired")),
        "{listed}"
    );

    let bad = run(&[
        "--database-url",
        &db.url,
        "token",
        "issue",
        "--user",
        "u-1",
        "--ttl",
        "0s",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));
    assert!(
        text(&bad.stderr).contains("invalid value '0s' for '--ttl <DURATION>': must be from 1s to 365d"),
        "{}",
        text(&bad.stderr)
    );
    let _ = std::fs::remove_file(&file);
}

/// Issue 16: `status` on PostgreSQL and Redis while only the Order service
/// runs: the User group's undelivered entries (lag), an entry a stuck
/// consumer holds (pending, its age and deliveries), a dead letter, the
/// sagas by state and the oldest saga in flight with its last event; as
/// JSON and as a table; Redis unreachable is named and exits 1 with the
/// PostgreSQL part still shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_health_of_a_running_deployment() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-status");
    let with = |args: &[&str]| run_on(&db, &redis, args);
    let status_json = || {
        let out = with(&["status", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("status --json is JSON")
    };
    let admin = seed_demo_admin(&db, &redis, "status-tokens");
    let quiet = status_json();
    assert_eq!(quiet["sagas"], serde_json::json!({}), "{quiet}");
    assert_eq!(quiet["oldestInFlight"], serde_json::Value::Null, "{quiet}");

    let order_only = Serving::start(&db, &redis, "order").await;
    let mut placed = Vec::new();
    for user in ["demo-user-5", "demo-user-6"] {
        let answer = place_for(order_only.addr, &admin, user).await;
        placed.push(answer.json().unwrap()["orderId"].as_str().unwrap().to_string());
    }
    let user_row = |s: &serde_json::Value| s["services"].as_array().unwrap()[1].clone();
    let until = Instant::now() + Duration::from_secs(30);
    let busy = loop {
        let s = status_json();
        if user_row(&s)["consumerLag"] == 2 {
            break s;
        }
        assert!(Instant::now() < until, "ORDER_CREATED never reached the bus: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(user_row(&busy)["service"], "user");
    assert_eq!(user_row(&busy)["pending"], 0, "{busy}");
    assert_eq!(busy["sagas"], serde_json::json!({ "PENDING": 2 }), "{busy}");
    let oldest = &busy["oldestInFlight"];
    assert_eq!(oldest["orderId"], placed[0].as_str(), "{busy}");
    assert_eq!(oldest["userId"], "demo-user-5", "{busy}");
    assert_eq!(
        (
            oldest["lastEvent"]["type"].as_str(),
            oldest["lastEvent"]["service"].as_str()
        ),
        (Some("ORDER_CREATED"), Some("order")),
        "{busy}"
    );
    assert_eq!(busy["errors"], serde_json::json!([]), "{busy}");

    // A consumer that takes one entry and never acknowledges it, and a
    // dead letter.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let stream =
        purchase_saga::adapters::redis::keys::stream(&redis.prefix, purchase_saga::domain::Service::User);
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("user")
        .arg("0")
        .query(&mut conn)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("user")
        .arg("stuck-consumer")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(purchase_saga::adapters::redis::keys::dead(
            &redis.prefix,
            purchase_saga::domain::Service::User,
        ))
        .arg("*")
        .arg("reason")
        .arg("test")
        .query(&mut conn)
        .unwrap();
    let stuck = status_json();
    let row = user_row(&stuck);
    assert_eq!(
        (
            &row["consumerLag"],
            &row["pending"],
            &row["oldestPendingDeliveries"],
            &row["deadLetters"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{stuck}"
    );
    assert!(row["oldestPendingAgeMs"].as_u64().is_some(), "{stuck}");

    let table = with(&["status"]);
    let stdout = text(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("service"), "{stdout}");
    assert!(
        stdout.contains("sagas: 2 PENDING, 0 COMPLETED, 0 FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("oldest in flight: order {} of demo-user-5", placed[0])),
        "{stdout}"
    );
    assert!(stdout.contains("last event ORDER_CREATED from order"), "{stdout}");

    let no_bus = run(&[
        "--database-url",
        db.url.as_str(),
        "--redis-url",
        "redis://127.0.0.1:1",
        "status",
    ]);
    let stdout = text(&no_bus.stdout);
    assert_eq!(no_bus.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error: redis: ") && stdout.contains("cannot connect to Redis"),
        "{stdout}"
    );
    assert!(stdout.contains("sagas: 2 PENDING"), "{stdout}");
    order_only.stop().await;
}

/// Issue 16: the new flags refuse bad values with clap's message and exit 2.
#[test]
fn the_operator_flags_refuse_bad_values() {
    let cases: [(&[&str], &str); 5] = [
        (
            &["audit", "--wait", "soon"],
            "invalid value 'soon' for '--wait <SECONDS>'",
        ),
        (
            &["audit", "--wait", "3601"],
            "invalid value '3601' for '--wait <SECONDS>'",
        ),
        (
            &["audit", "--safety-only", "--wait", "5"],
            "the argument '--safety-only' cannot be used with '--wait <SECONDS>'",
        ),
        (&["status", "--verbose"], "unexpected argument '--verbose'"),
        (
            &["seed-demo", "--token-ttl", "1w"],
            "invalid value '1w' for '--token-ttl <DURATION>'",
        ),
    ];
    for (args, message) in cases {
        assert_clap_refuses(args, message);
    }
    let out = run(&["--in-memory", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("status reads a running deployment"),
        "{}",
        text(&out.stderr)
    );
}

/// `outbox quarantined` lists the rows set aside (a quarantined one and one
/// left for a newer build), as lines and as JSON; `outbox release` makes
/// one due again and says how many it released; a seq that is not set
/// aside is an error, and `release` needs `--seq` or `--all`.
#[tokio::test]
async fn outbox_quarantined_lists_and_release_makes_rows_due() {
    use purchase_saga::domain::DurationMs;
    use purchase_saga::runtime::store::Store;
    let db = TestDb::create().await;
    for (order, payload) in [
        ("o-garbage", "{not json".to_string()),
        ("o-newer", r#"{"schemaVersion":99}"#.to_string()),
    ] {
        sqlx::query(
            "INSERT INTO order_svc.outbox (event_id, event_type, order_id, payload, created_at)
             VALUES (gen_random_uuid(), 'ORDER_CREATED', $1, $2, now())",
        )
        .bind(order)
        .bind(payload)
        .execute(db.store.pool())
        .await
        .expect("insert a row");
    }
    let now = purchase_saga::domain::Timestamp::from_datetime(chrono::Utc::now());
    let claimed = db
        .store
        .claim_due(purchase_saga::domain::Service::Order, now, DurationMs(1000), 10)
        .await
        .expect("claim");
    assert_eq!(
        (claimed.quarantined.len(), claimed.left_for_newer.len()),
        (1, 1),
        "{claimed:?}"
    );

    let out = run(&[
        "--database-url",
        &db.url,
        "outbox",
        "quarantined",
        "--service",
        "order",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().skip(1).collect();
    assert!(
        stdout.starts_with("service\tseq\tevent-type\torder\tstate\n"),
        "a header: {stdout}"
    );
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("order\t1\tORDER_CREATED\to-garbage\tquarantined ")
            && lines[0].contains("undecodable event: malformed JSON"),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        "order\t2\tORDER_CREATED\to-newer\tneeds schema version 99"
    );

    let out = run(&["--database-url", &db.url, "outbox", "quarantined", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let seqs: Vec<i64> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, [1, 2], "{listed}");
    assert_eq!(listed[1]["needsSchemaVersion"], 99);
    assert_eq!(
        (listed[0]["service"].as_str(), listed[0]["eventType"].as_str()),
        (Some("order"), Some("ORDER_CREATED")),
        "{listed}"
    );

    let out = run(&[
        "--database-url",
        &db.url,
        "outbox",
        "release",
        "--service",
        "order",
        "--seq",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "released 1 row(s) of order\n");
    let due: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM order_svc.outbox WHERE seq = 1 AND quarantined_at IS NULL AND claimed_until IS NULL",
    )
    .fetch_one(db.store.pool())
    .await
    .expect("read");
    assert_eq!(due, 1, "the released row is due again");

    let out = run(&[
        "--database-url",
        &db.url,
        "outbox",
        "release",
        "--service",
        "order",
        "--seq",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1), "no longer set aside");
    assert!(
        text(&out.stderr).contains("1 of the 1 seq(s) given are not set aside in order"),
        "{}",
        text(&out.stderr)
    );
    assert_clap_refuses(
        &["outbox", "release", "--service", "order"],
        "the following required arguments were not provided",
    );
    let out = run(&[
        "--database-url",
        &db.url,
        "outbox",
        "release",
        "--service",
        "order",
        "--all",
    ]);
    assert_eq!(
        text(&out.stdout),
        "released 1 row(s) of order\n",
        "{}",
        text(&out.stderr)
    );
}

// ---------------------------------------------------------------- issue 27

/// Runs `args` with stdout a socket whose peer is already closed, so the
/// first write fails with EPIPE however fast the child is (as a pipe whose
/// reader exited: `| head`).
fn run_into_closed_pipe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
    drop(reader);
    let writer = std::os::fd::OwnedFd::from(writer);
    let mut command = bin();
    command.args(args).stdout(writer).stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("the binary runs")
}

/// Issue 27: `purchase-saga token list | head -1` panicked with "failed
/// printing to stdout: Broken pipe". A closed stdout now ends the process
/// quietly with 141 (what a shell reports for SIGPIPE), for every command:
/// a table (`token list`), JSON (`--json`) and a long script
/// (`completions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_process_quietly() {
    let db = TestDb::create().await;
    let issued = run(&["--database-url", &db.url, "token", "issue", "--admin"]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    for args in [
        vec!["--database-url", db.url.as_str(), "token", "list"],
        vec!["--database-url", db.url.as_str(), "token", "list", "--json"],
        vec!["completions", "bash"],
    ] {
        let out = run_into_closed_pipe(&args, &[]);
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

/// Issue 27: `--help` printed the database password from the environment,
/// `RUST_LOG` was undocumented, and only three settings came from the
/// environment. Every `serve` option names its variable, URL values are
/// hidden, `RUST_LOG` is explained.
#[test]
fn help_names_every_variable_and_never_prints_a_secret() {
    let secret_env = [
        ("DATABASE_URL", "postgres://app:pg-s3cret@db.example:5432/saga"),
        ("REDIS_URL", "redis://:redis-s3cret@cache.example:6379"),
    ];
    for args in [&["--help"][..], &["serve", "--help"], &["audit", "--help"]] {
        let mut command = bin();
        command.args(args);
        for (k, v) in secret_env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let help = text(&out.stdout);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(!help.contains("s3cret"), "{args:?} prints a secret:\n{help}");
        assert!(help.contains("[env: DATABASE_URL]"), "{args:?}:\n{help}");
    }
    let out = run(&["--help"]);
    let help = text(&out.stdout);
    assert!(help.contains("RUST_LOG"), "{help}");
    // Every option of `serve` (its own and the global ones) can come from
    // the environment; only --help cannot.
    let help = text(&run(&["serve", "--help"]).stdout);
    let mut options: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') && line.starts_with("  ") {
            let name = trimmed
                .split([' ', ','])
                .find(|w| w.starts_with("--"))
                .unwrap_or(trimmed);
            options.push((name.to_string(), String::new()));
        } else if let Some((_, block)) = options.last_mut() {
            block.push_str(line);
        }
    }
    let missing: Vec<&str> = options
        .iter()
        .filter(|(name, block)| name != "--help" && !block.contains("[env: "))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(options.len() >= 10, "{options:?}");
    assert!(
        missing.is_empty(),
        "no environment variable for {missing:?}:\n{help}"
    );
    // Issue 25: a pool size per part.
    for part in [
        "ORDER",
        "USER",
        "PAYMENT",
        "INVENTORY",
        "ITEM",
        "NOTIFICATION",
        "API",
    ] {
        assert!(
            help.contains(&format!("[env: PG_POOL_MAX_{part}")),
            "{part}:\n{help}"
        );
        assert!(
            help.contains(&format!("--pg-pool-max-{}", part.to_lowercase())),
            "{part}:\n{help}"
        );
    }
}

/// Issue 25: every pool was sized by `--pg-pool-max`. Each part has its
/// own size (`--pg-pool-max-<part>`, else `--pg-pool-max`), and a pool
/// that several parts share gets the largest: on one database every
/// service served reports the Payment service's 9 in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sizes_per_part_reach_the_pools() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-pools");
    let migrated = run_on(&db, &redis, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let serving = Serving::start_with(
        &db,
        &redis,
        "all",
        &["--pg-pool-max", "6", "--pg-pool-max-payment", "9"],
    )
    .await;
    let metrics = client::request(serving.addr, "GET", "/metrics", &[], b"", Duration::from_secs(10))
        .await
        .unwrap();
    serving.stop().await;
    let body = metrics.text();
    assert_eq!(metrics.status, 200, "{body}");
    for part in ["order", "user", "payment", "inventory", "item", "notification"] {
        assert!(
            body.contains(&format!("saga_pg_pool_connections_max{{part=\"{part}\"}} 9\n")),
            "{part}: {body}"
        );
    }
}

/// Issue 27: `--http localhost:8080` was rejected. A host name is resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_a_host_name_in_http() {
    let port = purchase_saga_testkit::free_port().unwrap();
    let mut child = bin()
        .args(["--in-memory", "serve", "--http", &format!("localhost:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while client::request(addr, "GET", "/healthz", &[], b"", Duration::from_secs(5))
        .await
        .map_or(true, |r| r.status != 200)
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve --http localhost:{port} exited"
        );
        assert!(Instant::now() < until, "serve never answered on localhost:{port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(child.id());
    let _ = child.wait();
    assert_clap_refuses(
        &["serve", "--http", "no-such-host.invalid:8080"],
        "invalid value 'no-such-host.invalid:8080' for '--http <ADDR>'",
    );
}

/// Issue 27: shell completions.
#[test]
fn completions_cover_every_command_for_each_shell() {
    use clap::CommandFactory;
    completions_support::assert_completions_cover("purchase-saga", purchase_saga::cli::Cli::command(), run);
    assert_clap_refuses(&["completions", "cmd.exe"], "invalid value 'cmd.exe'");
}

/// Issue 27: `token revoke --id` of a token that does not exist said
/// "revoked 0" and exited 0; `token list --json` is the table as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revoke_of_no_token_fails_and_token_list_has_json() {
    let db = TestDb::create().await;
    let with_db = |args: &[&str]| {
        let mut all = vec!["--database-url", db.url.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };
    let issued = with_db(&["token", "issue", "--user", "u-9", "--ttl", "1d"]);
    assert!(issued.status.success(), "{}", text(&issued.stderr));
    let listed = with_db(&["token", "list", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let tokens: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let tokens = tokens.as_array().expect("an array");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let t = &tokens[0];
    assert_eq!(
        (t["kind"].as_str(), t["userId"].as_str(), t["state"].as_str()),
        (Some("user"), Some("u-9"), Some("active"))
    );
    assert!(t["createdAt"].is_string() && t["expiresAt"].is_string(), "{t}");
    let id = t["id"].as_str().unwrap().to_string();
    let table = text(&with_db(&["token", "list"]).stdout);
    assert!(table.starts_with("id "), "a table with a header: {table}");

    let unknown = with_db(&["token", "revoke", "--id", "0123456789abcdef"]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown.stdout));
    assert!(
        text(&unknown.stderr).contains("no such token: 0123456789abcdef"),
        "{}",
        text(&unknown.stderr)
    );
    let revoked = with_db(&["token", "revoke", "--id", &id]);
    assert!(
        text(&revoked.stdout).contains("revoked 1 token(s)"),
        "{}",
        text(&revoked.stdout)
    );
    let again = with_db(&["token", "revoke", "--id", &id]);
    assert_eq!(again.status.code(), Some(0), "revoking twice is no error");
    assert!(
        text(&again.stdout).contains("already revoked"),
        "{}",
        text(&again.stdout)
    );
}

/// Seeds the demo's users, items and tokens (the tokens file `name`,
/// removed after) and returns the admin's `Authorization` value.
fn seed_demo_admin(db: &TestDb, redis: &TestRedis, name: &str) -> String {
    let tokens = scratch_file(name);
    let seeded = run_on(
        db,
        redis,
        &["seed-demo", "--tokens-file", tokens.to_str().unwrap()],
    );
    assert!(seeded.status.success(), "{}", text(&seeded.stderr));
    let _ = std::fs::remove_file(&tokens);
    format!("Bearer {}", seeded_token(&text(&seeded.stdout), "admin"))
}

/// Plants a dead letter of `service` with `reason`; returns its id.
fn plant_dead_letter(redis: &TestRedis, service: &str, reason: &str) -> String {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("XADD")
        .arg(keys::dead(
            &redis.prefix,
            Service::from_slug(service).expect("a service slug"),
        ))
        .arg("*")
        .arg("entry_id")
        .arg("1-0")
        .arg("reason")
        .arg(reason)
        .arg("attempt")
        .arg(10)
        .arg("payload")
        .arg("{}")
        .query(&mut conn)
        .unwrap()
}

fn dead_letter_count(redis: &TestRedis, service: &str) -> u64 {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    redis::cmd("XLEN")
        .arg(keys::dead(
            &redis.prefix,
            Service::from_slug(service).expect("a service slug"),
        ))
        .query(&mut conn)
        .unwrap()
}

/// Issue 27: `dlq` had no way to discard a dead letter, and `dlq replay
/// --id garbage` said "bus unavailable". `drop` and `purge` need `--yes`
/// (without it: refused, exit 1, nothing changed); a malformed id is an
/// input error before Redis is asked; `list --json` and a table header.
#[test]
fn dlq_drops_and_purges_with_confirmation_and_names_bad_ids() {
    let redis = TestRedis::create("cli-dlq27");
    let with = |args: &[&str]| {
        let mut all = vec![
            "--redis-url",
            redis.url.as_str(),
            "--redis-prefix",
            redis.prefix.as_str(),
        ];
        all.extend_from_slice(args);
        run(&all)
    };
    for action in ["replay", "drop"] {
        let out = run(&[
            "--redis-url",
            "redis://127.0.0.1:1",
            "dlq",
            action,
            "--service",
            "payment",
            "--id",
            "garbage",
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{action}: {stderr}");
        assert!(
            stderr.contains("invalid value 'garbage' for '--id <ENTRY>'") && !stderr.contains("unavailable"),
            "{action}: {stderr}"
        );
    }
    let first = plant_dead_letter(&redis, "payment", "poison one");
    let second = plant_dead_letter(&redis, "payment", "poison two");
    plant_dead_letter(&redis, "user", "poison three");

    let listed = with(&["dlq", "list", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let letters: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let ids: Vec<(&str, &str)> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["service"].as_str().unwrap(), l["deadId"].as_str().unwrap()))
        .collect();
    assert_eq!(ids.len(), 3, "{letters}");
    assert!(ids.contains(&("payment", first.as_str())) && ids.contains(&("payment", second.as_str())));
    let first_json = letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["service"] == "payment" && l["deadId"] == first.as_str())
        .unwrap();
    assert_eq!(
        (first_json["reason"].as_str(), first_json["attempt"].as_u64()),
        (Some("poison one"), Some(10))
    );
    let table = text(&with(&["dlq", "list"]).stdout);
    assert!(
        table.starts_with("service\tdead-id\tentry-id\tattempts\treason\tpayload\n"),
        "{table}"
    );

    let refused = with(&["dlq", "drop", "--service", "payment", "--id", &first]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("refused without --yes"),
        "{}",
        text(&refused.stderr)
    );
    let refused = with(&["dlq", "purge", "--service", "payment"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("refused without --yes"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(dead_letter_count(&redis, "payment"), 2, "nothing changed");

    let dropped = with(&["dlq", "drop", "--service", "payment", "--id", &first, "--yes"]);
    assert!(dropped.status.success(), "{}", text(&dropped.stderr));
    assert_eq!(dead_letter_count(&redis, "payment"), 1);
    let again = with(&["dlq", "drop", "--service", "payment", "--id", &first, "--yes"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains(&format!("no dead letter {first}")),
        "{}",
        text(&again.stderr)
    );
    let purged = with(&["dlq", "purge", "--service", "payment", "--yes"]);
    assert!(
        text(&purged.stdout).contains("purged 1 dead letter(s) of payment"),
        "{}",
        text(&purged.stdout)
    );
    assert_eq!(dead_letter_count(&redis, "payment"), 0);
    assert_eq!(dead_letter_count(&redis, "user"), 1, "only that service");
}

/// Issue 27: `REDIS_PREFIX=typo-prefix purchase-saga audit` said "clean"
/// and `status` showed zeros. When the database shows events consumed
/// from the bus and no stream exists under the prefix, both exit 3 naming
/// the prefix and the streams expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_and_status_refuse_a_prefix_under_which_nothing_exists() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-prefix");
    let admin = seed_demo_admin(&db, &redis, "prefix-tokens");
    let all = Serving::start(&db, &redis, "all").await;
    place_for(all.addr, &admin, "demo-user-3").await;
    let settled = run_on(&db, &redis, &["audit", "--wait", "30"]);
    assert_eq!(settled.status.code(), Some(0), "{}", text(&settled.stdout));
    all.stop().await;

    let typo = format!("{}-typo", redis.prefix);
    let with_typo = |args: &[&str]| {
        let mut all = vec![
            "--database-url",
            db.url.as_str(),
            "--redis-url",
            redis.url.as_str(),
        ];
        all.extend_from_slice(args);
        let mut command = bin();
        command.args(&all).env("REDIS_PREFIX", &typo);
        command.output().unwrap()
    };
    let audit = with_typo(&["audit"]);
    let stdout = text(&audit.stdout);
    assert_eq!(audit.status.code(), Some(3), "{stdout}{}", text(&audit.stderr));
    assert!(stdout.contains(&format!("prefix \"{typo}\"")), "{stdout}");
    assert!(stdout.contains(&keys::stream(&typo, Service::User)), "{stdout}");
    assert!(!stdout.contains("clean"), "{stdout}");
    let json = with_typo(&["audit", "--json"]);
    assert_eq!(json.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(report["verdict"], "busMismatch", "{report}");
    let status = with_typo(&["status"]);
    let stdout = text(&status.stdout);
    assert_eq!(status.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains(&keys::stream(&typo, Service::Payment)),
        "{stdout}"
    );
    let status = with_typo(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    assert!(
        s["busMismatch"].as_str().is_some_and(|m| m.contains(&typo)),
        "{s}"
    );
    // The right prefix is fine.
    let right = run_on(&db, &redis, &["status"]);
    assert_eq!(right.status.code(), Some(0), "{}", text(&right.stdout));
}

/// Issue 27: plain `audit` called dead letters "violations of safety
/// invariants" while `--safety-only` said "clean (safety invariants)" on
/// the same data. Safety means the same in both; dead letters are their
/// own finding (exit 1 still), and `--json` says which is which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_means_the_same_in_every_audit_mode() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-safety");
    let admin = seed_demo_admin(&db, &redis, "safety-tokens");
    // Traffic in flight: an order whose ORDER_CREATED no User consumer takes.
    let order_only = Serving::start(&db, &redis, "order").await;
    place_for(order_only.addr, &admin, "demo-user-3").await;
    plant_dead_letter(&redis, "payment", "planted by the test");
    let until = Instant::now() + Duration::from_secs(30);
    let plain = loop {
        let out = run_on(&db, &redis, &["audit"]);
        if text(&out.stdout).contains("1 bus entries undelivered") {
            break out;
        }
        assert!(Instant::now() < until, "never on the bus: {}", text(&out.stdout));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    order_only.stop().await;
    let stdout = text(&plain.stdout);
    assert_eq!(
        plain.status.code(),
        Some(1),
        "a dead letter fails the audit: {stdout}"
    );
    assert!(!stdout.contains("violation(s) of safety"), "{stdout}");
    assert!(
        stdout.contains("audit: clean (safety invariants; the quiescent ones need a quiescent system"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not a safety violation")
            && stdout.contains("[no-dead-letter] service Payment: 1 dead letter(s)"),
        "{stdout}"
    );
    let safety = run_on(&db, &redis, &["audit", "--safety-only"]);
    assert_eq!(safety.status.code(), Some(0), "{}", text(&safety.stdout));
    assert!(text(&safety.stdout).contains("audit: clean (safety invariants (--safety-only)"));

    let json = run_on(&db, &redis, &["audit", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(report["verdict"], "violations", "{report}");
    assert_eq!(report["exitCode"], 1);
    assert_eq!(report["quiescent"], false);
    assert_eq!(report["safetyViolations"], serde_json::json!([]), "{report}");
    assert_eq!(
        report["deadLetters"][0]["invariant"], "no-dead-letter",
        "{report}"
    );
    assert_eq!(report["inFlight"][0]["service"], "user", "{report}");
    assert_eq!(report["inFlight"][0]["undelivered"], 1, "{report}");
    assert_eq!(report["counts"]["users"], 40);
    let safety_json = run_on(&db, &redis, &["audit", "--safety-only", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&safety_json.stdout).expect("JSON");
    assert_eq!(
        (report["verdict"].as_str(), report["mode"].as_str()),
        (Some("clean"), Some("safetyOnly"))
    );
}

/// Issue 27: `status` showed "(-0.0s ago)" and `"ageMs": -16`: the oldest
/// order's age is this host's clock against a creation time another
/// host's clock wrote. A skewed creation time reads as age 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_ages_are_never_negative() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("cli-ages");
    let migrated = run_on(&db, &redis, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    // Written by a host whose clock runs 5 s ahead.
    sqlx::query(
        "INSERT INTO order_svc.orders (order_id, user_id, item_id, item_name, quantity, total_amount, \
         payment_method, status, created_at, deadline_at, deadline_signalled, updated_at) VALUES \
         ('skewed', 'u-1', 'i-1', 'Item', 1, 10, 'WALLET', 'PENDING', now() + interval '5 seconds', \
         now() + interval '305 seconds', false, now() + interval '5 seconds')",
    )
    .execute(db.store.pool())
    .await
    .unwrap();
    let out = run_on(&db, &redis, &["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(s["oldestInFlight"]["orderId"], "skewed", "{s}");
    assert_eq!(s["oldestInFlight"]["ageMs"], 0, "{s}");
    let human = text(&run_on(&db, &redis, &["status"]).stdout);
    assert!(human.contains("(0.0s ago"), "{human}");
    assert!(!human.contains("-0.0s"), "{human}");
}
