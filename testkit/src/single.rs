//! One private `redis-server` on a free port, without persistence
//! (`--save '' --appendonly no`), killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_ports, wait_for, INSTALL};

/// See the module docs.
pub struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> Result<PrivateRedis, String> {
        let port = free_ports(1)?[0];
        let server = PrivateRedis {
            port,
            child: spawn(port)?,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> Result<(), String> {
        wait_for(self.port, &["PING"], "PONG", Duration::from_secs(10))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server and starts it again on the same port: every key is
    /// gone (no persistence).
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.child = spawn(self.port)?;
        self.wait_ready()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16) -> Result<Child, String> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}. To fix: {INSTALL}"))
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
