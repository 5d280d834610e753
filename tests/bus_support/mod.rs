//! What the Redis bus tests share: a distinct event per number (an
//! ORDER_CREATED, which only User consumes: one entry per publish), the
//! two deployments every bus test runs on (a single Redis, and a private
//! three-node Redis Cluster, `purchase_saga_testkit::RedisCluster`, shared
//! by the tests of one binary that run at the same time), a test's key
//! prefix on either
//! ([`TestRedis`]), and a raw connection for what the bus never does
//! itself (SET on a dead-letter key, XDEL, XCLAIM, reading counters).
#![allow(dead_code)] // Each test file uses a different part of this module.

use std::sync::Arc;
use std::time::Duration;

use purchase_saga::adapters::redis::connection::{self, RedisConn};
use purchase_saga::adapters::redis::RedisConfig;
use purchase_saga::domain::event::{OrderCreated, Payload};
use purchase_saga::domain::{Event, ItemId, OrderId, Timestamp, UserId};

/// The private cluster (`testkit/src/cluster.rs`).
pub use purchase_saga_testkit::RedisCluster as TestCluster;

pub fn order_created(n: usize) -> Event {
    Event::new(
        OrderId::parse(format!("o-{n}")).unwrap(),
        UserId::parse("alice").unwrap(),
        Timestamp::SIM_EPOCH,
        Payload::OrderCreated(OrderCreated {
            item_id: ItemId::parse("sword").unwrap(),
            quantity: 1,
            total_amount: 100,
            payment_method: "WALLET".into(),
        }),
    )
}

/// Where a bus test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// The test Redis of `tests/common` (REDIS_URL or the local one).
    Single,
    /// A private three-node Redis Cluster ([`TestCluster::shared`]).
    Cluster,
}

/// Runs each named `async fn(Deployment)` as two tests, `NAME::single`
/// and `NAME::cluster`.
#[macro_export]
macro_rules! on_both_deployments {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn single() {
                super::$name($crate::bus_support::Deployment::Single).await
            }
            #[tokio::test]
            async fn cluster() {
                super::$name($crate::bus_support::Deployment::Cluster).await
            }
        }
    )*};
}

/// A unique key prefix on a test's Redis (single or cluster); its keys
/// are deleted on drop.
pub struct TestRedis {
    pub url: String,
    pub prefix: String,
    pub cluster: bool,
    _single: Option<crate::common::TestRedis>,
    _cluster: Option<Arc<TestCluster>>,
}

impl TestRedis {
    pub fn create(deployment: Deployment, label: &str) -> TestRedis {
        match deployment {
            Deployment::Single => {
                let single = crate::common::TestRedis::create(label);
                TestRedis {
                    url: single.url.clone(),
                    prefix: single.prefix.clone(),
                    cluster: false,
                    _single: Some(single),
                    _cluster: None,
                }
            }
            Deployment::Cluster => {
                let cluster = TestCluster::shared();
                TestRedis {
                    url: cluster.url(),
                    prefix: format!("ps_test:{label}:{}", crate::common::random_suffix()),
                    cluster: true,
                    _single: None,
                    _cluster: Some(cluster),
                }
            }
        }
    }

    /// The bus settings of this prefix (and deployment), the rest default.
    pub fn config(&self) -> RedisConfig {
        RedisConfig {
            prefix: self.prefix.clone(),
            cluster: self.cluster,
            ..RedisConfig::default()
        }
    }

    /// Deletes every key of this prefix, on every node: the test's own
    /// FLUSHALL. Returns how many went. Callable inside a runtime (it runs
    /// on a thread of its own).
    pub fn flush_prefix(&self) -> usize {
        let (url, cluster, prefix) = (self.url.clone(), self.cluster, self.prefix.clone());
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(async move {
                    let mut conn = connection::connect(&url, cluster, Duration::from_secs(5))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    conn.delete_prefix(&prefix)
                        .await
                        .unwrap_or_else(|e| panic!("deleting the keys of {prefix}: {e}"))
                })
        })
        .join()
        .expect("the flush thread") as usize
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if self.cluster && !std::thread::panicking() {
            self.flush_prefix();
        }
    }
}

/// A raw connection to the test's Redis (cluster-aware).
pub async fn raw(r: &TestRedis) -> RedisConn {
    connection::connect(&r.url, r.cluster, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
