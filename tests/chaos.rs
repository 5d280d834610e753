//! `purchase-saga chaos` on a fresh database and Redis prefix, killing
//! service processes only (`--no-restart-backends`: safe on the shared
//! PostgreSQL and Redis). Ignored: it spawns a dozen processes and takes
//! about a minute. Run with
//! `cargo test --test chaos -- --ignored --nocapture`; the full run with
//! Redis and PostgreSQL restarts is documented in `src/cli/chaos.rs`.

mod common;

use std::process::Command;

use common::{TestDb, TestRedis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "spawns a dozen processes for about a minute; run on demand"]
async fn chaos_with_service_kills_ends_quiescent_and_clean() {
    let db = TestDb::create().await;
    let redis = TestRedis::create("chaos");
    let out = Command::new(env!("CARGO_BIN_EXE_purchase-saga"))
        .env_remove("RUST_LOG")
        .args([
            "--database-url",
            &db.url,
            "--redis-url",
            &redis.url,
            "--redis-prefix",
            &redis.prefix,
        ])
        .args([
            "--saga-deadline",
            "20",
            "chaos",
            "--orders",
            "500",
            "--faults-max",
            "8",
        ])
        .args([
            "--fault-interval-ms",
            "700",
            "--quiescence-timeout",
            "240",
            "--no-restart-backends",
        ])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("faults injected: 8"), "{stdout}");
    assert!(
        stdout.contains("KillService                           8 (0 could not"),
        "{stdout}"
    );
    assert!(stdout.contains("audit over 500 orders: clean"), "{stdout}");
}
