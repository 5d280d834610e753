//! Faults that reconfigure torture's private redis-server (never a shared
//! one: `--redis-url` servers are left alone and the fault is not
//! injected).
//!
//! `redis-oom` (issue 24): `maxmemory` set just under the server's used
//! memory with `maxmemory-policy noeviction`, for a window, then the
//! previous settings back. Redis then refuses every command that may grow
//! memory (publishes, dead letters, heartbeats written with a plain SET)
//! and runs the rest (reads, XACK, XCLAIM, XTRIM). The fault counts only
//! when the server really answered a write with its OOM error (a probe
//! SET right after the change), not when the settings were merely sent.

use redis::aio::MultiplexedConnection;

use super::servers::RedisTarget;

/// How far under the used memory `maxmemory` is set, tried in turn: small
/// first, so that the memory the bus frees (acknowledged entries, finished
/// connections) can end the spell early, as it would in production; larger
/// when memory was freed between the reading and the probe (the probe then
/// succeeds and the server is not out of memory yet).
const SHORT_BY_BYTES: [u64; 3] = [16 * 1024, 128 * 1024, 1024 * 1024];

/// What the server had before the fault, to put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySettings {
    maxmemory: String,
    policy: String,
}

async fn conn(target: &RedisTarget) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(target.url()).map_err(|e| e.to_string())?;
    client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis at {}: {e}", target.url()))
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

/// Puts the private server out of memory. Returns the settings to restore
/// and what happened; an error when the server is shared, when it could
/// not be reconfigured, or when the probe write was not refused (then the
/// settings are restored at once).
pub async fn start_oom(target: &RedisTarget, probe_key: &str) -> Result<(MemorySettings, String), String> {
    if matches!(target, RedisTarget::Shared { .. }) {
        return Err("not injected on a shared Redis (--redis-url)".into());
    }
    let mut conn = conn(target).await?;
    let before = MemorySettings {
        maxmemory: config_get(&mut conn, "maxmemory").await?,
        policy: config_get(&mut conn, "maxmemory-policy").await?,
    };
    config_set(&mut conn, "maxmemory-policy", "noeviction").await?;
    let mut last = String::new();
    for short_by in SHORT_BY_BYTES {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("INFO memory: {e}"))?;
        let used = purchase_saga::adapters::redis::RedisMemory::parse(&info)
            .ok_or("INFO memory without used_memory")?
            .used_bytes;
        let max = used.saturating_sub(short_by).max(1);
        config_set(&mut conn, "maxmemory", &max.to_string()).await?;
        let probe: Result<(), redis::RedisError> = redis::cmd("SET")
            .arg(probe_key)
            .arg("torture: out of memory?")
            .query_async(&mut conn)
            .await;
        match probe {
            Err(e) if purchase_saga::adapters::redis::is_oom(&e) => {
                return Ok((
                    before,
                    format!("maxmemory {max} under {used} used (noeviction): a SET answered {e}"),
                ))
            }
            other => last = format!("maxmemory {max} under {used} used: the probe SET answered {other:?}"),
        }
    }
    restore(target, &before).await?;
    Err(format!(
        "the probe SET was never refused ({last}); settings restored"
    ))
}

/// Puts `settings` back (after a restart of the server they are its
/// defaults again anyway).
pub async fn restore(target: &RedisTarget, settings: &MemorySettings) -> Result<(), String> {
    let mut conn = conn(target).await?;
    config_set(&mut conn, "maxmemory", &settings.maxmemory).await?;
    config_set(&mut conn, "maxmemory-policy", &settings.policy).await
}
