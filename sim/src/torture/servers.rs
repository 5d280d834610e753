//! The servers one torture seed runs against, and the faults that reach
//! them directly:
//!
//! - the seed's databases (one, or three in the split layout): see
//!   [`super::databases`], with their faults.
//! - [`RedisTarget`]: by default a private `redis-server --port N --save ''
//!   --appendonly no` on a free port, started for the seed and stopped
//!   after it, so that `CLIENT KILL` and a restart (all data lost, no
//!   persistence) disturb nobody else. With `--redis-url` the seed uses
//!   that server under its own key prefix: "all data lost" deletes the
//!   prefix's keys and connection kills are not injected (torture cannot
//!   tell its connections from other users').

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use purchase_saga::adapters::postgres::redact_url;
use sqlx::{Connection, PgConnection};

use super::state::Swallowed;

/// The consumer name under which torture takes an entry to XDEL.
pub const XDEL_CONSUMER: &str = "torture-xdel";

/// Pending entries [`RedisTarget::take_entry`] looks through for one
/// still in the stream.
const TAKE_SCAN_MAX: u64 = 100;

/// What [`RedisTarget::xdel_if_untouched`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Xdel {
    /// Deleted while pending, its holder and count unchanged.
    Deleted,
    /// No longer pending (acknowledged: a consumer handled it), or the
    /// group is gone (Redis lost its data); left alone.
    NotPending,
    /// Pending as taken, but gone from the stream already; left alone.
    NotInStream,
    /// A consumer was handed it since (`holder` now, `deliveries` times in
    /// all): it holds the payload and will handle it, so deleting it now
    /// would expect a dead letter the bus rightly never writes; left alone.
    HandedOn { holder: String, deliveries: u64 },
}

/// What to start or set when a server is missing.
pub const START_POSTGRES: &str = "start PostgreSQL (trust auth for `postgres` on 127.0.0.1:5432, e.g. \
     `service postgresql start`) or set DATABASE_URL to a server where the user may CREATE DATABASE";
pub const START_REDIS: &str = "install redis-server (torture starts a private one on a free port) or pass \
     --redis-url to a running Redis";

/// Whether torture can run at all: PostgreSQL answers at `database_url`,
/// and either `redis_url` answers PING or `redis-server` can be started.
/// The error says what to start.
pub async fn preflight(database_url: &str, redis_url: Option<&str>) -> Result<(), String> {
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(database_url)).await {
        Ok(Ok(conn)) => drop(conn.close().await),
        Ok(Err(e)) => {
            return Err(format!(
                "no PostgreSQL at {} ({e}). To fix: {START_POSTGRES}",
                redact_url(database_url)
            ))
        }
        Err(_) => {
            return Err(format!(
                "PostgreSQL at {} does not answer within 5 s. To fix: {START_POSTGRES}",
                redact_url(database_url)
            ))
        }
    }
    match redis_url {
        Some(url) => {
            let client = redis::Client::open(url).map_err(|e| format!("--redis-url {url:?}: {e}"))?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("no Redis at {url} ({e}). To fix: {START_REDIS}"))?;
            let _: String = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("Redis at {url} does not answer PING ({e}). To fix: {START_REDIS}"))?;
        }
        None => {
            let version = Command::new("redis-server").arg("--version").output();
            if !matches!(&version, Ok(o) if o.status.success()) {
                return Err(format!(
                    "cannot run redis-server ({version:?}). To fix: {START_REDIS}"
                ));
            }
        }
    }
    Ok(())
}

/// Where a dead-letter stream waits while its key has the wrong type.
fn aside(dead_key: &str) -> String {
    format!("{dead_key}:torture-aside")
}

/// A redis-server of torture's own, without persistence.
pub struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> Result<PrivateRedis, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Self::spawn(port)?;
        let server = PrivateRedis { port, child };
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(port: u16) -> Result<Child, String> {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}. To fix: {START_REDIS}"))
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        loop {
            let answered = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            match answered {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "private redis-server on port {} never answered: {e}",
                        self.port
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts it again on the same port: every stream,
    /// group, pending entry and dead letter is gone.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = Self::spawn(self.port)?;
        self.wait_ready()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where a seed's bus lives; see the module docs.
pub enum RedisTarget {
    Private(PrivateRedis),
    Shared { url: String, prefix: String },
}

impl RedisTarget {
    pub fn url(&self) -> String {
        match self {
            RedisTarget::Private(p) => p.url(),
            RedisTarget::Shared { url, .. } => url.clone(),
        }
    }

    async fn conn(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let client = redis::Client::open(self.url()).map_err(|e| e.to_string())?;
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("Redis at {}: {e}", self.url()))
    }

    /// Loses every key of the seed: a restart without persistence, or the
    /// prefix's keys deleted on a shared server.
    pub async fn lose_everything(&mut self) -> Result<String, String> {
        match self {
            RedisTarget::Private(p) => {
                p.restart()?;
                Ok("redis-server restarted without persistence".into())
            }
            RedisTarget::Shared { url, prefix } => {
                // Every key of the bus's prefix, on every node of a
                // cluster, one DEL per key (never across slots).
                let mut conn =
                    purchase_saga::adapters::redis::connection::connect(url, false, Duration::from_secs(5))
                        .await?;
                let deleted = conn
                    .delete_prefix(prefix)
                    .await
                    .map_err(|e| format!("deleting the keys of prefix {prefix}: {e}"))?;
                Ok(format!("{deleted} keys of prefix {prefix} deleted"))
            }
        }
    }

    /// The server's `run_id` (a new one after each restart), None on a
    /// shared server.
    pub async fn run_id(&self) -> Result<Option<String>, String> {
        if matches!(self, RedisTarget::Shared { .. }) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("INFO server: {e}"))?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_string()))
    }

    /// Holds every client's writes for up to `ms` (`CLIENT PAUSE WRITE`)
    /// on the private server, so what the streams hold stays put while
    /// torture reads it before a restart; false on a shared server (not
    /// paused).
    pub async fn pause_writes(&self, ms: u64) -> Result<bool, String> {
        if matches!(self, RedisTarget::Shared { .. }) {
            return Ok(false);
        }
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("WRITE")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("CLIENT PAUSE: {e}"))?;
        Ok(true)
    }

    /// Ends a [`RedisTarget::pause_writes`] (when the restart did not).
    pub async fn unpause(&self) {
        if let Ok(mut conn) = self.conn().await {
            let _: Result<String, _> = redis::cmd("CLIENT").arg("UNPAUSE").query_async(&mut conn).await;
        }
    }

    /// A connection of the checker's own.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        self.conn().await
    }

    /// Leaves nothing of the seed behind on a shared Redis (a private one
    /// stops with its guard).
    pub async fn clean_up(&mut self) -> Result<(), String> {
        match self {
            RedisTarget::Private(_) => Ok(()),
            RedisTarget::Shared { .. } => self.lose_everything().await.map(drop),
        }
    }

    /// Kills every other client connection of the private server; None on
    /// a shared server (not injected).
    pub async fn kill_clients(&self) -> Result<Option<i64>, String> {
        if matches!(self, RedisTarget::Shared { .. }) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("CLIENT KILL: {e}"))?;
        Ok(Some(killed))
    }

    /// Takes one entry of `group` for a consumer of torture's own
    /// ([`XDEL_CONSUMER`], which never handles it nor keeps a heartbeat, so
    /// the bus takes its entries over as a gone consumer's): an entry no
    /// consumer was handed yet, else one left pending past `idle_ms` (a
    /// delivery its consumer gave up on for now). Returns its id and its
    /// delivery count, read in the same step, or None when the group has
    /// neither.
    ///
    /// A pending entry is claimed by its id (XCLAIM), after XRANGE shows
    /// it still in the stream, never by XAUTOCLAIM: XAUTOCLAIM (and XCLAIM
    /// of a missing id) removes every entry deleted while pending that it
    /// meets from the pending list, whatever its idle time, without a
    /// trace; here that would be torture destroying the entries its
    /// earlier xdels left for the bus to dead-letter.
    pub async fn take_entry(
        &self,
        stream: &str,
        group: &str,
        idle_ms: u64,
    ) -> Result<Option<(String, u64)>, String> {
        let mut conn = self.conn().await?;
        redis::Script::new(
            "local id
             local fresh = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1,
                 'STREAMS', KEYS[1], '>')
             if fresh and fresh[1][2][1] then
                 id = fresh[1][2][1][1]
             else
                 for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+',
                     ARGV[4])) do
                     if #redis.call('XRANGE', KEYS[1], p[1], p[1]) == 1 then
                         redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], p[1])
                         id = p[1]
                         break
                     end
                 end
             end
             if not id then return false end
             return {id, redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1][4]}",
        )
        .key(stream)
        .arg(group)
        .arg(XDEL_CONSUMER)
        .arg(idle_ms)
        .arg(TAKE_SCAN_MAX)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("taking an entry of {stream}: {e}"))
    }

    /// XDEL of `entry`, only if it is still pending under the consumer that
    /// held it when it was taken or swallowed, with the same delivery
    /// count: no consumer was handed it since (the bus takes a
    /// heartbeat-less consumer's entries over at once, and any entry after
    /// the visibility timeout), so none holds its payload and will handle
    /// it. Checked and deleted in one step.
    pub async fn xdel_if_untouched(
        &self,
        stream: &str,
        group: &str,
        entry: &Swallowed,
    ) -> Result<Xdel, String> {
        let mut conn = self.conn().await?;
        let (deleted, holder, deliveries): (i64, String, u64) = redis::Script::new(
            "local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
             if not ok then return {0, '', 0} end
             if #p == 0 then return {0, '', 0} end
             if p[1][2] ~= ARGV[3] or p[1][4] ~= tonumber(ARGV[4]) then
                 return {0, p[1][2], p[1][4]}
             end
             return {redis.call('XDEL', KEYS[1], ARGV[2]), p[1][2], p[1][4]}",
        )
        .key(stream)
        .arg(group)
        .arg(&entry.entry_id)
        .arg(&entry.consumer)
        .arg(entry.deliveries)
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("XDEL {stream} {}: {e}", entry.entry_id))?;
        Ok(match (deleted, holder.is_empty()) {
            (1, _) => Xdel::Deleted,
            (_, true) => Xdel::NotPending,
            (_, false) if holder == entry.consumer && deliveries == entry.deliveries => Xdel::NotInStream,
            (_, false) => Xdel::HandedOn { holder, deliveries },
        })
    }

    /// Makes `dead_key` a string; a dead-letter stream already there (the
    /// dead letters of earlier faults) is renamed aside until
    /// [`RedisTarget::free_dead_key`]. Returns whether the key is now the
    /// string.
    pub async fn occupy_dead_key(&self, dead_key: &str) -> Result<bool, String> {
        let mut conn = self.conn().await?;
        let set: i64 = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 1 then
                 if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return 0 end
                 redis.call('RENAME', KEYS[1], KEYS[2])
             end
             redis.call('SET', KEYS[1], 'torture-wrong-type')
             return 1",
        )
        .key(dead_key)
        .key(aside(dead_key))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("SET {dead_key}: {e}"))?;
        Ok(set == 1)
    }

    /// Deletes `dead_key` if it is still the string
    /// [`RedisTarget::occupy_dead_key`] left, and puts back the stream it
    /// set aside, in one step (no dead letter can land in between).
    pub async fn free_dead_key(&self, dead_key: &str) -> Result<(), String> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::Script::new(
            "if redis.call('TYPE', KEYS[1]).ok == 'string' then
                 redis.call('DEL', KEYS[1])
                 if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) end
             end
             return 1",
        )
        .key(dead_key)
        .key(aside(dead_key))
        .invoke_async(&mut conn)
        .await
        .map_err(|e| format!("freeing {dead_key}: {e}"))?;
        Ok(())
    }

    /// Appends an entry that is not an event to `stream`; returns its id.
    pub async fn add_poison(&self, stream: &str) -> Result<String, String> {
        let mut conn = self.conn().await?;
        redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("payload")
            .arg("torture: not an event")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("XADD {stream}: {e}"))
    }
}
