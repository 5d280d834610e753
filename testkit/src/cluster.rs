//! A private three-node Redis Cluster: three `redis-server
//! --cluster-enabled yes` on free ports in a scratch directory (no
//! persistence: `--save '' --appendonly no`), joined by `redis-cli
//! --cluster create --cluster-replicas 0 --cluster-yes`, ready once every
//! node reports `cluster_state:ok`. Stopped (processes killed, directory
//! removed) on drop.
//!
//! [`RedisCluster::shared`] hands the tests of one process that run at the
//! same time one cluster (started by the first, stopped when the last lets
//! go). A cluster left behind by a process that was killed (no drop ran)
//! is stopped by the next start: its directory names the dead process, and
//! its servers' pid files.
//!
//! [`RedisCluster::restart_nodes`] kills nodes and starts them again on
//! the same ports with the same `nodes-PORT.conf`: each rejoins with its
//! node id and slots, and none of its keys. A restarted master answers
//! `CLUSTERDOWN` for about two seconds (Redis's writable delay) before
//! its `cluster_state` is ok again; [`RedisCluster::wait_ok`] waits for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::{free_ports, wait_for, INSTALL};

/// The nodes of a cluster.
pub const NODES: usize = 3;
const DIR_PREFIX: &str = "ps-test-cluster-";
/// How long a node may take to answer PING, and a cluster to be ok.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// See the module docs.
pub struct RedisCluster {
    ports: Vec<u16>,
    bus_ports: Vec<u16>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl RedisCluster {
    /// The cluster the callers of this process share while any holds it;
    /// a new one when none does. Panics, saying what to install, when it
    /// cannot start.
    pub fn shared() -> Arc<RedisCluster> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(RedisCluster::start().unwrap_or_else(|e| panic!("{e}")));
        *shared = Arc::downgrade(&cluster);
        cluster
    }

    /// Starts a cluster of its own (see the module docs).
    pub fn start() -> Result<RedisCluster, String> {
        reap_orphans();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Client ports and cluster-bus ports, all free now.
        let ports = free_ports(NODES * 2)?;
        let mut cluster = RedisCluster {
            ports: ports[..NODES].to_vec(),
            bus_ports: ports[NODES..].to_vec(),
            children: Vec::new(),
            dir,
        };
        for i in 0..NODES {
            let child = cluster.spawn(i)?;
            cluster.children.push(child);
        }
        for &port in &cluster.ports {
            wait_for(port, &["PING"], "PONG", READY_WITHIN)?;
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
        cluster.wait_ok(&(0..NODES).collect::<Vec<_>>())?;
        Ok(cluster)
    }

    fn spawn(&self, i: usize) -> Result<Child, String> {
        let port = self.ports[i];
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-port", &self.bus_ports[i].to_string()])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args([
                "--pidfile",
                &self.dir.join(format!("{port}.pid")).to_string_lossy(),
            ])
            .args(["--logfile", &format!("{port}.log")])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}. To fix: {INSTALL}"))
    }

    /// The nodes' URLs, comma-separated: a `REDIS_URL` that names the
    /// cluster.
    pub fn url(&self) -> String {
        self.node_urls().join(",")
    }

    /// Each node's URL, in node order.
    pub fn node_urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// One node's URL (a seed: `--redis-cluster` with one URL).
    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// The nodes' client ports, in node order.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Kills nodes `which` (indices into [`RedisCluster::ports`]) and starts
    /// them again, each on its port with its cluster config and without
    /// its keys; returns once each answers PING (its cluster state is not
    /// ok yet: see the module docs).
    pub fn restart_nodes(&mut self, which: &[usize]) -> Result<(), String> {
        for &i in which {
            let _ = self.children[i].kill();
            let _ = self.children[i].wait();
        }
        for &i in which {
            self.children[i] = self.spawn(i)?;
        }
        for &i in which {
            wait_for(self.ports[i], &["PING"], "PONG", READY_WITHIN)?;
        }
        Ok(())
    }

    /// Waits until nodes `which` report `cluster_state:ok`.
    pub fn wait_ok(&self, which: &[usize]) -> Result<(), String> {
        for &i in which {
            wait_for(
                self.ports[i],
                &["CLUSTER", "INFO"],
                "cluster_state:ok",
                READY_WITHIN,
            )?;
        }
        Ok(())
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

/// Clusters whose process is gone (killed before its drop ran).
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

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
