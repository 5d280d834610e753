//! Torture's `xdel` fault leaves its deleted entries to the bus: taking an
//! entry for the next xdel must not remove an earlier one from the pending
//! list (XAUTOCLAIM does, whatever its idle time), and an entry is deleted
//! only while no consumer was handed it since it was taken (a consumer
//! holding its payload handles it, and no dead letter is due).
//!
//! Needs the `redis-server` binary (a private one on a free port).

use purchase_saga::adapters::redis::connection::RedisConn;
use purchase_saga::domain::Service;
use purchase_saga_sim::torture::redis_target::{RedisTarget, Xdel, XDEL_CONSUMER};
use purchase_saga_sim::torture::state::Swallowed;
use purchase_saga_testkit::PrivateRedis;

const STREAM: &str = "s";
const GROUP: &str = "g";
/// Longer than the test: no entry is idle enough to be claimed.
const NEVER_IDLE_MS: u64 = 600_000;

async fn setup() -> (RedisTarget, RedisConn) {
    let target = RedisTarget::Private(PrivateRedis::start().expect("a private redis-server"));
    let mut conn = target.connection().await.expect("a connection");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    (target, conn)
}

async fn add(conn: &mut RedisConn, id: &str) {
    let _: String = redis::cmd("XADD")
        .arg(STREAM)
        .arg(id)
        .arg("payload")
        .arg("x")
        .query_async(conn)
        .await
        .expect("XADD");
}

async fn read_as(conn: &mut RedisConn, consumer: &str) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(conn)
        .await
        .expect("XREADGROUP");
}

async fn pending(conn: &mut RedisConn) -> Vec<String> {
    let reply: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(conn)
        .await
        .expect("XPENDING");
    reply.ids.into_iter().map(|p| p.id).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn taking_an_entry_leaves_an_earlier_deleted_pending_entry_pending() {
    let (target, mut conn) = setup().await;
    add(&mut conn, "1-1").await;
    add(&mut conn, "2-1").await;
    read_as(&mut conn, "user-r1").await;
    let _: i64 = redis::cmd("XDEL")
        .arg(STREAM)
        .arg("1-1")
        .query_async(&mut conn)
        .await
        .expect("XDEL");

    let taken = target
        .take_entry(STREAM, GROUP, NEVER_IDLE_MS)
        .await
        .expect("take_entry");

    assert_eq!(taken, None, "nothing new, nothing idle: nothing to take");
    assert_eq!(
        pending(&mut conn).await,
        vec!["1-1".to_string(), "2-1".to_string()],
        "the deleted entry must stay pending for the bus to dead-letter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_handed_on_since_it_was_taken_is_not_deleted() {
    let (target, mut conn) = setup().await;
    add(&mut conn, "1-1").await;
    add(&mut conn, "2-1").await;
    let mut taken = Vec::new();
    for _ in 0..2 {
        let (entry_id, deliveries) = target
            .take_entry(STREAM, GROUP, NEVER_IDLE_MS)
            .await
            .expect("take_entry")
            .expect("a new entry");
        taken.push(Swallowed {
            service: Service::User,
            entry_id,
            consumer: XDEL_CONSUMER.to_string(),
            deliveries,
        });
    }
    assert_eq!((taken[0].entry_id.as_str(), taken[0].deliveries), ("1-1", 1));
    // What the bus's claim does to a heartbeat-less consumer's entry.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(STREAM)
        .arg(GROUP)
        .arg("user-r0")
        .arg(0)
        .arg("1-1")
        .query_async(&mut conn)
        .await
        .expect("XCLAIM");

    let handed_on = target.xdel_if_untouched(STREAM, GROUP, &taken[0]).await;
    let untouched = target.xdel_if_untouched(STREAM, GROUP, &taken[1]).await;

    assert_eq!(
        handed_on,
        Ok(Xdel::HandedOn {
            holder: "user-r0".into(),
            deliveries: 2
        })
    );
    assert_eq!(untouched, Ok(Xdel::Deleted));
    let left: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let ids: Vec<&str> = left.ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, vec!["1-1"], "only the untouched entry is deleted");
}
