//! Readiness probes behind `/readyz`: one per dependency (the store, the
//! bus), each answering within a bound.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{ItemId, RowKey, Service};
use crate::runtime::Store;

/// One dependency's health.
#[async_trait]
pub trait Probe: Send + Sync + 'static {
    /// Short name in the `/readyz` answer, e.g. `store`.
    fn name(&self) -> &'static str;
    /// Ok when the dependency answers; the error says what failed.
    async fn check(&self) -> Result<(), String>;
}

/// Longest a probe may take before it counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `probe` with [`PROBE_TIMEOUT`].
pub async fn run_probe(probe: &dyn Probe) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// The store answers a read in a fresh transaction (on Postgres: a pooled
/// connection and a query).
pub struct StoreProbe(pub Arc<dyn Store>);

#[async_trait]
impl Probe for StoreProbe {
    fn name(&self) -> &'static str {
        "store"
    }
    async fn check(&self) -> Result<(), String> {
        let key = RowKey::Catalog(ItemId::parse("readyz-probe").expect("a valid id"));
        let mut tx = self.0.begin(Service::Order).await.map_err(|e| e.to_string())?;
        tx.load(&key).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// A dependency that lives in this process (the in-memory bus).
pub struct InProcess(pub &'static str);

#[async_trait]
impl Probe for InProcess {
    fn name(&self) -> &'static str {
        self.0
    }
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Redis answers PING, on a fresh connection (on a cluster: every
/// master answers).
pub struct RedisProbe {
    pub endpoint: crate::adapters::redis::Endpoint,
}

impl RedisProbe {
    /// A probe of the Redis `url` names (a comma-separated list: a
    /// cluster).
    pub fn new(url: &str) -> Result<RedisProbe, String> {
        RedisProbe::of(url, false)
    }

    /// A probe of `url`, the seed of a cluster if `cluster`.
    pub fn of(url: &str, cluster: bool) -> Result<RedisProbe, String> {
        crate::adapters::redis::Endpoint::parse(url, cluster).map(|endpoint| RedisProbe { endpoint })
    }
}

#[async_trait]
impl Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "bus"
    }
    async fn check(&self) -> Result<(), String> {
        use crate::adapters::redis::Endpoint;
        let failed = |e: redis::RedisError| format!("redis: {e}");
        let pong: String = match &self.endpoint {
            Endpoint::Single(client) => {
                let mut conn = client.get_multiplexed_async_connection().await.map_err(failed)?;
                redis::cmd("PING").query_async(&mut conn).await
            }
            Endpoint::Cluster(client) => {
                let mut conn = client.get_async_connection().await.map_err(failed)?;
                redis::cmd("PING").query_async(&mut conn).await
            }
        }
        .map_err(failed)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(format!("redis answered {pong:?} to PING"))
        }
    }
}
