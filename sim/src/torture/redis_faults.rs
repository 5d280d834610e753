//! Faults that reconfigure torture's private redis-server, or each node of
//! its private cluster that holds the seed's keys (never a shared one:
//! `--redis-url` servers are left alone and the fault is not injected).
//!
//! `redis-oom` (issue 24): `maxmemory` set just under the server's used
//! memory with `maxmemory-policy noeviction`, for a window, then the
//! previous settings back. Redis then refuses every command that may grow
//! memory (publishes, dead letters, heartbeats written with a plain SET)
//! and runs the rest (reads, XACK, XCLAIM, XTRIM). The fault counts only
//! when the server really answered a write with its OOM error (a probe
//! SET right after the change), not when the settings were merely sent;
//! on a cluster, when every node holding the seed's keys refused one, a
//! probe key in a slot of its own (`{prefix:service}:oom-probe`, of a
//! service it holds: a node refuses a key of another's slot with MOVED,
//! before it looks at its memory).

use purchase_saga::adapters::redis::keys;
use redis::aio::MultiplexedConnection;

use super::redis_target::{node_conn, RedisTarget};

/// How far under the used memory `maxmemory` is set, tried in turn: small
/// first, so that the memory the bus frees (acknowledged entries, finished
/// connections) can end the spell early, as it would in production; larger
/// when memory was freed between the reading and the probe (the probe then
/// succeeds and the server is not out of memory yet).
const SHORT_BY_BYTES: [u64; 3] = [16 * 1024, 128 * 1024, 1024 * 1024];

/// What each reconfigured server had before the fault, to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySettings(Vec<NodeMemory>);

/// One server's settings before the fault.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NodeMemory {
    url: String,
    maxmemory: String,
    policy: String,
}

async fn config_get(conn: &mut MultiplexedConnection, name: &str) -> Result<String, String> {
    let (_, value): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(conn)
        .await
        .map_err(|e| format!("CONFIG GET {name}: {e}"))?;
    Ok(value)
}

async fn config_set(conn: &mut MultiplexedConnection, name: &str, value: &str) -> Result<(), String> {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async::<()>(conn)
        .await
        .map_err(|e| format!("CONFIG SET {name} {value}: {e}"))
}

/// Puts the private server (each cluster node holding the seed's keys)
/// out of memory; `probe_key` is the probe on one server. Returns the
/// settings to restore and what happened; an error when the server is
/// shared, when one could not be reconfigured, or when a probe write was
/// not refused (then every setting is restored at once).
pub async fn start_oom(target: &RedisTarget, probe_key: &str) -> Result<(MemorySettings, String), String> {
    let prefix = match target {
        RedisTarget::Shared { .. } => return Err("not injected on a shared Redis (--redis-url)".into()),
        RedisTarget::Private(_) => None,
        RedisTarget::Cluster { prefix, .. } => Some(prefix.clone()),
    };
    // A probe SET on a node back from a loss would answer CLUSTERDOWN.
    target.settle().await?;
    let mut before = MemorySettings(Vec::new());
    let mut done = Vec::new();
    for node in target.key_nodes().await? {
        let probe = match &prefix {
            None => probe_key.to_string(),
            Some(prefix) => format!("{{{}}}:oom-probe", keys::tag(prefix, node.services[0])),
        };
        let mut conn = node_conn(&node.url).await?;
        let settings = NodeMemory {
            url: node.url.clone(),
            maxmemory: config_get(&mut conn, "maxmemory").await?,
            policy: config_get(&mut conn, "maxmemory-policy").await?,
        };
        before.0.push(settings);
        match node_oom(&mut conn, &probe).await {
            Ok(detail) if prefix.is_some() => done.push(format!("{}: {detail}", node.url)),
            Ok(detail) => done.push(detail),
            Err(e) => {
                restore(&before).await?;
                return Err(format!("{}: {e}; settings restored", node.url));
            }
        }
    }
    Ok((before, done.join("; ")))
}

/// One server out of memory (see the module docs), or why not.
async fn node_oom(conn: &mut MultiplexedConnection, probe_key: &str) -> Result<String, String> {
    config_set(conn, "maxmemory-policy", "noeviction").await?;
    let mut last = String::new();
    for short_by in SHORT_BY_BYTES {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(conn)
            .await
            .map_err(|e| format!("INFO memory: {e}"))?;
        let used = purchase_saga::adapters::redis::RedisMemory::parse(&info)
            .ok_or("INFO memory without used_memory")?
            .used_bytes;
        let max = used.saturating_sub(short_by).max(1);
        config_set(conn, "maxmemory", &max.to_string()).await?;
        let probe: Result<(), redis::RedisError> = redis::cmd("SET")
            .arg(probe_key)
            .arg("torture: out of memory?")
            .query_async(conn)
            .await;
        match probe {
            Err(e) if purchase_saga::adapters::redis::is_oom(&e) => {
                return Ok(format!(
                    "maxmemory {max} under {used} used (noeviction): a SET answered {e}"
                ))
            }
            other => last = format!("maxmemory {max} under {used} used: the probe SET answered {other:?}"),
        }
    }
    Err(format!("the probe SET was never refused ({last})"))
}

/// Puts `settings` back on each server (after a restart they are its
/// defaults again anyway).
pub async fn restore(settings: &MemorySettings) -> Result<(), String> {
    for node in &settings.0 {
        let mut conn = node_conn(&node.url).await?;
        config_set(&mut conn, "maxmemory", &node.maxmemory).await?;
        config_set(&mut conn, "maxmemory-policy", &node.policy).await?;
    }
    Ok(())
}
