//! A Redis Cluster the tests start themselves: Debian's `redis-server` with
//! `--cluster-enabled yes` on free ports, joined by `redis-cli --cluster
//! create`. Missing binaries fail the test with how to install them, unless
//! `EDGECACHE_SKIP_REDIS_TESTS=1` asks to skip.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    pub port: u16,
    child: Option<Child>,
}

pub struct RedisCluster {
    pub nodes: Vec<Node>,
    directory: tempfile::TempDir,
}

/// A port free for the node and for its cluster bus (the port + 10000).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("address")
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Three masters, each with a replica when `replicas` is set.
    pub async fn start(replicas: bool) -> Option<RedisCluster> {
        let installed = |binary: &str| {
            Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok()
        };
        if !installed("redis-server") || !installed("redis-cli") {
            super::skip_or_fail(
                "redis-server or redis-cli",
                "Install them (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`)",
                "EDGECACHE_SKIP_REDIS_TESTS",
            );
            return None;
        }
        let count = if replicas { 6 } else { 3 };
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            directory: tempfile::tempdir().expect("tempdir"),
        };
        for _ in 0..count {
            let port = free_port();
            let mut node = Node { port, child: None };
            cluster.spawn(&mut node);
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            wait_for_ping(node.port).await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", if replicas { "1" } else { "0" }, "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = create.status().expect("run redis-cli --cluster create");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok().await;
        Some(cluster)
    }

    fn spawn(&self, node: &mut Node) {
        let directory = self.directory.path().join(node.port.to_string());
        std::fs::create_dir_all(&directory).expect("node directory");
        let child = Command::new("redis-server")
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&directory)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        node.child = Some(child);
    }

    /// `redis+cluster://` with two of the nodes: the client finds the rest.
    pub fn url(&self) -> String {
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// Each node's own `redis://` URL.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", node.port))
            .collect()
    }

    pub async fn connection(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect")
    }

    /// A cluster connection, to look at what the store wrote.
    pub async fn cluster_connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.node_urls())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("connect")
    }

    /// `INFO` `section` of the node at `port`.
    pub async fn info(&self, port: u16, section: &str) -> String {
        let mut connection = self.connection(port).await;
        redis::cmd("INFO")
            .arg(section)
            .query_async(&mut connection)
            .await
            .expect("info")
    }

    /// The ports of the nodes that are masters now, and alive.
    pub async fn masters(&self) -> Vec<u16> {
        let mut masters = Vec::new();
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            if self.info(node.port, "replication").await.contains("role:master") {
                masters.push(node.port);
            }
        }
        masters
    }

    /// The replica of the master at `port`.
    pub async fn replica_of(&self, port: u16) -> u16 {
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let replication = self.info(node.port, "replication").await;
            if replication.contains("role:slave") && replication.contains(&format!("master_port:{port}")) {
                return node.port;
            }
        }
        panic!("the master on {port} has no replica");
    }

    /// How many errors named `name` (`CROSSSLOT`, `MOVED`) the nodes alive
    /// have answered.
    pub async fn errors(&self, name: &str) -> u64 {
        let mut total = 0;
        for node in self.nodes.iter().filter(|node| node.child.is_some()) {
            let stats = self.info(node.port, "errorstats").await;
            total += stats
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("errorstat_{name}:count=")))
                .filter_map(|count| count.trim().split(',').next()?.parse::<u64>().ok())
                .sum::<u64>();
        }
        total
    }

    /// Kills the node at `port`, as a crash would.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|node| node.port == port).expect("a node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `CLUSTER FAILOVER` on the replica at `port`: it becomes the master
    /// once it has every write its master acknowledged.
    pub async fn failover(&self, replica: u16) {
        let mut connection = self.connection(replica).await;
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query_async(&mut connection)
            .await
            .expect("cluster failover");
        let start = Instant::now();
        while !self.info(replica, "replication").await.contains("role:master") {
            assert!(start.elapsed() < Duration::from_secs(20), "the failover never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_until_ok().await;
    }

    /// Moves `slots` slots from the master at `from` to the one at `to` with
    /// `redis-cli --cluster reshard`, in a thread: traffic goes on meanwhile.
    pub fn reshard(&self, from: u16, to: u16, slots: u32) -> std::thread::JoinHandle<bool> {
        let id = |port: u16| {
            let output = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "CLUSTER", "MYID"])
                .output()
                .expect("cluster myid");
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        };
        let (from_id, to_id) = (id(from), id(to));
        let entry = format!("127.0.0.1:{from}");
        std::thread::spawn(move || {
            Command::new("redis-cli")
                .args(["--cluster", "reshard", &entry])
                .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
                .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
                .args(["--cluster-pipeline", "10"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    }

    /// Waits until every node alive reports `cluster_state:ok`.
    pub async fn wait_until_ok(&self) {
        let start = Instant::now();
        'wait: loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the cluster never reported cluster_state:ok"
            );
            for node in self.nodes.iter().filter(|node| node.child.is_some()) {
                let mut connection = self.connection(node.port).await;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'wait;
                }
            }
            return;
        }
    }
}

async fn wait_for_ping(port: u16) {
    for _ in 0..200 {
        if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            && let Ok(mut connection) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("redis-server on port {port} did not answer");
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
