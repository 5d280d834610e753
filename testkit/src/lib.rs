//! Private Redis servers for the tests of `purchase-saga` (a
//! dev-dependency) and for `saga-sim torture` (a dependency of
//! `purchase-saga-sim`): anything that restarts, pauses, kills the clients
//! of or reconfigures a Redis starts one of these, so that it disturbs
//! nobody else.
//!
//! - [`PrivateRedis`] (`single.rs`): one `redis-server` on a free port,
//!   without persistence; [`PrivateRedis::restart`] loses every key.
//! - [`RedisCluster`] (`cluster.rs`): three `redis-server
//!   --cluster-enabled yes` on free ports, joined by `redis-cli --cluster
//!   create`; [`RedisCluster::restart_nodes`] restarts nodes without
//!   persistence, each keeping its cluster config (so it rejoins owning
//!   the same slots, with none of their keys).
//!
//! Both are stopped (processes killed, scratch directory removed) when
//! dropped, also after a panic. A missing `redis-server` or `redis-cli`
//! is an error that says what to install: a caller fails with it, never
//! skips.

mod cluster;
mod single;

pub use cluster::RedisCluster;
pub use single::PrivateRedis;

use std::time::{Duration, Instant};

/// What to install when `redis-server` or `redis-cli` is missing.
pub const INSTALL: &str = "install Redis >= 7 (`apt-get install redis-server`, which brings redis-cli)";

/// `n` distinct free TCP ports on 127.0.0.1 (free now; bound again by the caller).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("no free port: {e}"))?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound listener's address").port())
        .collect())
}

/// One free TCP port on 127.0.0.1 (free now; bound again by the caller):
/// a private server's, or an HTTP listener's in the binary's tests.
pub fn free_port() -> Result<u16, String> {
    free_ports(1).map(|ports| ports[0])
}

/// Waits (up to `within`) until the server on `port` answers `command`
/// with a reply containing `want`; the last reply or error otherwise.
fn wait_for(port: u16, command: &[&str], want: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    loop {
        let answered = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| {
                let mut cmd = redis::cmd(command[0]);
                for arg in &command[1..] {
                    cmd.arg(*arg);
                }
                cmd.query::<redis::Value>(&mut c)
            })
            .map(|v| match v {
                redis::Value::SimpleString(s) => s,
                redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                redis::Value::VerbatimString { text, .. } => text,
                other => format!("{other:?}"),
            });
        match answered {
            Ok(text) if text.contains(want) => return Ok(()),
            last if Instant::now() >= deadline => {
                return Err(format!(
                    "the redis-server on port {port} never answered {want:?} to {}: {last:?}",
                    command.join(" ")
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
