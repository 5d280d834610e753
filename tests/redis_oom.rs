//! Issue 24, defect 2: Redis at `maxmemory` with `noeviction` refuses every
//! command that may grow memory ("OOM command not allowed"). The claim
//! script's first command was the caller's heartbeat (`SET ... PX`), so
//! every receive failed, nothing was acknowledged, the trimmer freed
//! nothing, and the bus never recovered by itself, while XREADGROUP, XACK,
//! XAUTOCLAIM and XTRIM all work under OOM.
//!
//! The test reconfigures its server, so it starts a private redis-server
//! (no persistence, a free port) and kills it when done, panics included.

mod bus_support;
mod common;

use std::time::{Duration, Instant};

use bus_support::order_created;
use purchase_saga::adapters::redis::{RedisBus, RedisConfig};
use purchase_saga::domain::Service;
use purchase_saga::runtime::bus::{Bus, Delivery};

/// A redis-server of this test's own (`testkit`), killed on drop.
struct PrivateRedis {
    server: purchase_saga_testkit::PrivateRedis,
    url: String,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let server = purchase_saga_testkit::PrivateRedis::start()
            .unwrap_or_else(|e| panic!("this test needs a server of its own: {e}"));
        PrivateRedis {
            url: server.url(),
            server,
        }
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// `used_memory` of INFO memory.
async fn used_memory(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

async fn config_set(conn: &mut redis::aio::MultiplexedConnection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(conn)
        .await
        .unwrap();
}

const TTL: Duration = Duration::from_millis(300);
const QUEUED: usize = 1_000;
/// How far under the used memory `maxmemory` is set: far less than
/// trimming the queued entries frees (about 250 bytes each), beside what
/// the second process's connections add (about 90 kB).
const SHORT_BY: u64 = 40_000;

async fn bus(url: &str) -> RedisBus {
    RedisBus::connect(
        url,
        RedisConfig {
            prefix: "oom".into(),
            visibility_timeout: Duration::from_secs(30),
            block: Duration::from_millis(20),
            heartbeat_ttl: TTL,
            ..RedisConfig::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn defect2_a_full_redis_keeps_receiving_acking_and_recovers_once_trimmed() {
    let server = PrivateRedis::start();
    let mut admin = server.conn().await;
    // A process that was running before Redis filled up: its group exists.
    let running = bus(&server.url).await;
    running.publish(&order_created(0)).await.unwrap();
    let first = running.receive(Service::User, "running", 1).await.unwrap();
    running.ack(Service::User, &first[0].entry_id).await.unwrap();
    for n in 1..=QUEUED {
        running.publish(&order_created(n)).await.unwrap();
    }
    // A process (re)started while Redis is full.
    let used = used_memory(&mut admin).await;
    config_set(&mut admin, "maxmemory-policy", "noeviction").await;
    config_set(&mut admin, "maxmemory", &(used - SHORT_BY).to_string()).await;
    let started = bus(&server.url).await;
    let refused = running.publish(&order_created(QUEUED + 1)).await.unwrap_err();
    assert!(
        refused.to_string().contains("OOM"),
        "the server really is out of memory: {refused}"
    );
    let memory = running.memory().await.unwrap();
    assert!(
        memory.out_of_memory(),
        "the bus says it is out of memory: {memory:?}"
    );
    eprintln!("used {used} before, out of memory: {memory:?}");

    // Both consumers drain the backlog; one delivery is held, unacked,
    // for longer than the heartbeat TTL.
    let mut held: Option<Delivery> = None;
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked + usize::from(held.is_some()) < QUEUED {
        for (bus, consumer) in [(&running, "running"), (&started, "started")] {
            let got = match bus.receive(Service::User, consumer, 50).await {
                Ok(got) => got,
                Err(e) => {
                    let stats = running.group_stats(Service::User).await;
                    panic!(
                        "{consumer}: receive failed under OOM with {acked} of {QUEUED} entries \
                         acknowledged (group: {stats:?}): {e}"
                    )
                }
            };
            for d in got {
                if held.is_none() && consumer == "running" {
                    held = Some(d);
                    continue;
                }
                bus.ack(Service::User, &d.entry_id).await.unwrap();
                acked += 1;
            }
        }
        assert!(Instant::now() < deadline, "only {acked} of {QUEUED} acknowledged");
    }
    let stats = running.group_stats(Service::User).await.unwrap().unwrap();
    assert_eq!(
        (stats.lag, stats.pending),
        (Some(0), 1),
        "the lag dropped to zero; only the held entry is pending"
    );

    // Heartbeats stay fresh under OOM: the holder is alive, nobody takes
    // its entry although many TTLs pass.
    let hold_until = Instant::now() + TTL * 4;
    while Instant::now() < hold_until {
        let got = started.receive(Service::User, "started", 10).await.unwrap();
        let taken: Vec<(&str, u32)> = got.iter().map(|d| (d.entry_id.as_str(), d.attempt)).collect();
        assert!(taken.is_empty(), "a live consumer's entry was taken: {taken:?}");
    }
    let held = held.expect("one delivery held");
    // A dead letter needs memory: refused, and the entry stays pending.
    let refused = running
        .dead_letter(Service::User, &held, "test: poison")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("OOM"), "{refused}");
    assert_eq!(running.pending_count(Service::User).await.unwrap(), 1);
    assert_eq!(running.dead_letter_count(Service::User).await.unwrap(), 0);

    // Trimming what was acknowledged frees the memory: everything works
    // again, without a restart.
    running.ack(Service::User, &held.entry_id).await.unwrap();
    let trimmed = running.trim(Service::User).await.unwrap();
    assert_eq!(
        trimmed as usize, QUEUED,
        "every acknowledged entry trimmed but the last delivered (the floor)"
    );
    let memory = running.memory().await.unwrap();
    assert!(
        !memory.out_of_memory(),
        "memory below maxmemory again: {memory:?}"
    );
    eprintln!("{trimmed} entries trimmed: {memory:?}");
    running.publish(&order_created(QUEUED + 2)).await.unwrap();
    let got = started.receive(Service::User, "started", 10).await.unwrap();
    assert_eq!(got.len(), 1);
    started
        .dead_letter(Service::User, &got[0], "test: poison")
        .await
        .unwrap();
    assert_eq!(started.dead_letter_count(Service::User).await.unwrap(), 1);
    drop(server);
}
