//! A private three-node Redis Cluster for the bus tests: three
//! `redis-server --cluster-enabled yes` on free ports in a temporary
//! directory (no persistence), joined by `redis-cli --cluster create
//! --cluster-replicas 0`, ready once every node reports
//! `cluster_state:ok`. Stopped (processes killed, directory removed) when
//! the last test holding it drops it; the tests of one binary that run at
//! the same time share one ([`TestCluster::shared`]).
//!
//! A missing `redis-server` or `redis-cli` fails the test with what to
//! install: a cluster test never skips. A cluster left behind by a test
//! process that was killed (no drop ran) is stopped by the next start:
//! its directory names the dead process, and its servers' pid files.
#![allow(dead_code)] // Each test file uses a different part of this module.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const DIR_PREFIX: &str = "ps-test-cluster-";
const INSTALL: &str = "install Redis >= 7 (`apt-get install redis-server`, which brings redis-cli)";

/// See the module docs.
pub struct TestCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl TestCluster {
    /// The cluster the tests of this process share while any holds it;
    /// a new one when none does.
    pub fn shared() -> Arc<TestCluster> {
        static SHARED: Mutex<Weak<TestCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(TestCluster::start().unwrap_or_else(|e| panic!("{e}")));
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    /// Starts a cluster of its own (see the module docs).
    pub fn start() -> Result<TestCluster, String> {
        reap_orphans();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Client ports and cluster-bus ports, all free now.
        let listeners: Vec<TcpListener> = (0..NODES * 2)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("no free port: {e}"))?;
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(listeners);
        let mut cluster = TestCluster {
            ports: ports[..NODES].to_vec(),
            children: Vec::new(),
            dir,
        };
        for (i, &port) in ports[..NODES].iter().enumerate() {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &ports[NODES + i].to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args([
                    "--pidfile",
                    &cluster.dir.join(format!("{port}.pid")).to_string_lossy(),
                ])
                .args(["--logfile", &format!("{port}.log")])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}. To fix: {INSTALL}"))?;
            cluster.children.push(child);
        }
        for &port in &cluster.ports {
            wait_for(port, "PING", "PONG")?;
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}. To fix: {INSTALL}"))?;
        if !created.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&created.stdout),
                String::from_utf8_lossy(&created.stderr)
            ));
        }
        for &port in &cluster.ports {
            wait_for(port, "CLUSTER INFO", "cluster_state:ok")?;
        }
        Ok(cluster)
    }

    /// The nodes' URLs, comma-separated: a `REDIS_URL` that names the
    /// cluster.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's URL (a seed: `--redis-cluster` with one URL).
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

/// Waits until `redis-cli -p port <command>` prints `want`.
fn wait_for(port: u16, command: &str, want: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(command.split(' '))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}. To fix: {INSTALL}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the cluster node on port {port} never answered {want:?} to {command}: {text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops the servers listed by pid files in `dir` (if they are still
/// redis-servers) and removes it.
fn stop_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                let pid = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = pid.trim();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if !pid.is_empty() && String::from_utf8_lossy(&cmdline).contains("redis-server") {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Clusters whose test process is gone (killed before its drop ran).
fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let Some(owner) = rest.split('-').next() else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists() {
            stop_dir(&entry.path());
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
