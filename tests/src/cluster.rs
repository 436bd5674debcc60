//! A cluster of real nats-servers ([`NatsCluster`]) with faults injected on its processes:
//! kill -9, SIGSTOP/SIGCONT, restart on the same ports with the same store.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::http::http;
use crate::nats::TestCa;
use crate::process::{Proc, READY_WITHIN};
use crate::wait::free_port;

/// One node of a [`NatsCluster`]: its ports, its store and its process (none while down).
pub struct ClusterNode {
    /// `n1`, `n2`, …: its `server_name`.
    pub name: String,
    /// The client port.
    pub port: u16,
    /// The monitoring port (`/connz`, `/jsz`, `/healthz`).
    pub monitor: u16,
    config: PathBuf,
    proc: Option<Proc>,
    /// Clients must speak TLS to it (`tls://`).
    tls: bool,
    _dir: tempfile::TempDir,
}

impl ClusterNode {
    /// Its client URL.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until it listens for clients (bounded).
    fn start(&mut self) {
        if let Err(fatal) = self.try_start() {
            panic!("{} did not start: {fatal}", self.name);
        }
    }

    /// [`ClusterNode::start`], or the fatal line it logged before it exited.
    fn try_start(&mut self) -> Result<(), String> {
        let binary = busgate_shared::runtime::locate_nats_server(None)
            .unwrap_or_else(|| panic!("{}", busgate_shared::runtime::NATS_SERVER_HINT));
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&self.config);
        let proc = Proc::spawn(&format!("nats-{}", self.name), cmd);
        // Ready when it listens for clients and for routes (in that order of the log; a port
        // taken meanwhile is a fatal line instead).
        let (mut clients, mut routes) = (false, false);
        let started = proc.wait_for(READY_WITHIN, |line| {
            if line.contains("[FTL]") {
                return Some(Err(line.to_owned()));
            }
            clients |= line.contains("Listening for client connections on ");
            routes |= line.contains("Listening for route connections on ");
            (clients && routes).then_some(Ok(()))
        });
        self.proc = Some(proc);
        started
    }

    fn pid(&self) -> Pid {
        self.proc.as_ref().expect("the node is running").pid()
    }

    /// Whether its process is running (not killed; a stopped one is running).
    pub fn is_up(&self) -> bool {
        self.proc.is_some()
    }
}

/// A cluster of real nats-servers on 127.0.0.1: routes between every node, JetStream on each
/// with a store of its own, a monitoring port each. Faults are injected on the processes:
/// kill -9, SIGSTOP/SIGCONT, restart on the same ports with the same store.
pub struct NatsCluster {
    pub nodes: Vec<ClusterNode>,
    /// What a gateway or worker needs in its environment besides the URLs (the CA file of a
    /// TLS cluster).
    pub env: Vec<(String, String)>,
    /// The CA of a TLS cluster.
    ca: Option<TestCa>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until every one sees a JetStream meta leader of a
    /// `size`-node cluster.
    pub async fn start(size: usize) -> NatsCluster {
        Self::launch(size, None).await
    }

    /// [`NatsCluster::start`] with TLS between clients and servers: every node's certificate
    /// comes from a CA made for the test, clients must use `tls://` and trust that CA.
    pub async fn start_tls(size: usize) -> NatsCluster {
        Self::launch(size, Some(TestCa::new())).await
    }

    async fn launch(size: usize, ca: Option<TestCa>) -> NatsCluster {
        busgate_shared::runtime::install_crypto_provider();
        // The ports are found free, then released until the nodes bind them: on a machine
        // running other tests, one may be taken meanwhile (a node then exits: "address already
        // in use"). The cluster is made again on other ports, a few times.
        let mut tries = 0;
        let nodes = loop {
            tries += 1;
            match Self::nodes(size, ca.as_ref()) {
                Ok(nodes) => break nodes,
                Err(fatal) if tries < 4 && fatal.contains("address already in use") => {
                    eprintln!("a cluster port was taken meanwhile, on other ports: {fatal}");
                }
                Err(fatal) => panic!("the cluster did not start: {fatal}"),
            }
        };
        let env = ca
            .as_ref()
            .map(|ca| vec![("BUSGATE_NATS__CA_FILE".to_owned(), ca.ca_file.clone())])
            .unwrap_or_default();
        let cluster = NatsCluster { nodes, env, ca };
        cluster.wait_for_meta_leader().await;
        cluster
    }

    /// `size` nodes on free ports, started; or the fatal line of one that exited.
    fn nodes(size: usize, ca: Option<&TestCa>) -> Result<Vec<ClusterNode>, String> {
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, route, monitor)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().expect("temp dir");
            let name = format!("n{}", i + 1);
            let store = dir.path().join("store");
            let config = dir.path().join("nats.conf");
            let tls = match &ca {
                Some(ca) => {
                    let (cert, key) = ca.issue(&name, &["127.0.0.1", "localhost"]);
                    format!(
                        "tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n  timeout: 5\n}}\n"
                    )
                }
                None => String::new(),
            };
            // Routes pinged every second (the default is 2 minutes): a hung node's queue
            // subscribers are dropped by its peers within seconds, not minutes.
            let text = tls
                + &format!(
                    "server_name: {name}\n\
                 listen: \"127.0.0.1:{port}\"\n\
                 http: \"127.0.0.1:{monitor}\"\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{\n  name: busgate-test\n  listen: \"127.0.0.1:{route}\"\n  \
                 ping_interval: \"1s\"\n  routes: [{routes}]\n}}\n",
                    store = store.display().to_string(),
                    routes = routes.join(", "),
                );
            std::fs::write(&config, text).expect("node config");
            nodes.push(ClusterNode {
                name,
                port: *port,
                monitor: *monitor,
                config,
                proc: None,
                tls: ca.is_some(),
                _dir: dir,
            });
        }
        for node in &mut nodes {
            node.try_start()?;
        }
        Ok(nodes)
    }

    /// The client URLs of every node, comma-separated: what a gateway or worker is given.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(ClusterNode::url).collect();
        urls.join(",")
    }

    /// An async-nats client on the whole cluster (for test assertions on streams and KV).
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self
            .nodes
            .iter()
            .map(|n| n.url().parse().expect("url"))
            .collect();
        let mut options = async_nats::ConnectOptions::new().retry_on_initial_connect();
        if let Some(ca) = &self.ca {
            options = options
                .add_root_certificates(PathBuf::from(&ca.ca_file))
                .require_tls(true);
        }
        options
            .connect(urls)
            .await
            .expect("connect to the test cluster")
    }

    /// A monitoring endpoint of node `index`, as JSON (`None` while it does not answer).
    pub async fn monitor(&self, index: usize, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.nodes[index].monitor);
        let response = http()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits (bounded) until every running node reports a JetStream meta leader and sees the
    /// whole cluster.
    pub async fn wait_for_meta_leader(&self) {
        let size = self.nodes.len();
        let mut last = Value::Null;
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ready = true;
            for (i, node) in self.nodes.iter().enumerate() {
                if !node.is_up() {
                    continue;
                }
                match self.monitor(i, "/jsz").await {
                    Some(jsz) => {
                        let meta = &jsz["meta_cluster"];
                        let leader = meta["leader"].as_str().unwrap_or("");
                        if leader.is_empty() || meta["cluster_size"].as_u64() != Some(size as u64) {
                            ready = false;
                            last = jsz;
                        }
                    }
                    None => ready = false,
                }
            }
            if ready {
                return;
            }
            assert!(
                Instant::now() < until,
                "no JetStream meta leader within 60 s: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node (index) that holds a client connection whose name contains `name`.
    pub async fn node_of(&self, name: &str) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_up() {
                continue;
            }
            let Some(connz) = self.monitor(i, "/connz?limit=1024").await else {
                continue;
            };
            let found = connz["connections"].as_array().is_some_and(|conns| {
                conns
                    .iter()
                    .any(|c| c["name"].as_str().is_some_and(|n| n.contains(name)))
            });
            if found {
                return Some(i);
            }
        }
        None
    }

    /// kill -9 node `index`: it is gone at once, its connections with it.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut proc) = self.nodes[index].proc.take() {
            proc.kill();
        }
    }

    /// SIGSTOP node `index`: hung, its sockets open and silent.
    pub fn pause(&self, index: usize) {
        kill(self.nodes[index].pid(), Signal::SIGSTOP).expect("SIGSTOP");
    }

    /// SIGCONT node `index`.
    pub fn resume(&self, index: usize) {
        kill(self.nodes[index].pid(), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Starts node `index` again (after [`NatsCluster::kill`]) on the same ports with the same
    /// store.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.nodes[index].start();
    }

    /// Stops every node (SIGTERM, bounded), then starts them all again on the same ports with
    /// the same stores, and waits for a meta leader.
    pub async fn restart_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut proc) = node.proc.take() {
                proc.terminate(Duration::from_secs(15));
            }
        }
        for node in &mut self.nodes {
            node.start();
        }
        self.wait_for_meta_leader().await;
    }
}
