//! The peers: what a user would otherwise deploy, started on free ports with the project's
//! own `tests/perf/peers/peers.sh` (nginx services, nginx 1-hop proxy, HAProxy 1-hop proxy,
//! nginx + Lua merge) and stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use busgate_tests::wait::free_port;

/// Says why the benchmark cannot run, and exits 1.
pub fn fail(why: &str) -> ! {
    eprintln!("busgate-bench: {why}");
    std::process::exit(1);
}

/// The running peers, stopped (and their folder removed) on drop.
pub struct Peers {
    script: PathBuf,
    env: Vec<(String, String)>,
    /// The peers' configurations, pid files and logs; removed on drop.
    dir: PathBuf,
    /// The first fake internal service (fixed order JSON at `/order/{id}`).
    pub up1: u16,
    /// The second.
    pub up2: u16,
    /// nginx 1-hop reverse proxy to `up1`.
    pub nginx_proxy: u16,
    /// HAProxy 1-hop reverse proxy to `up1`.
    pub haproxy: u16,
    /// nginx + Lua merge of `up1` and `up2` at `/api/orders/{id}`.
    pub merge: u16,
}

impl Peers {
    /// Starts the peers of `script` (`peers.sh start`) on free ports, or exits saying why not.
    pub fn start(script: &Path) -> Peers {
        if !script.is_file() {
            fail(&format!(
                "{} not found (the peers' script is tests/perf/peers/peers.sh)",
                script.display()
            ));
        }
        let (up1, up2, nginx_proxy, haproxy, merge) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let dir = std::env::temp_dir().join(format!("busgate-bench-peers-{}", std::process::id()));
        let env = vec![
            ("UP1".to_owned(), up1.to_string()),
            ("UP2".to_owned(), up2.to_string()),
            ("PROXY".to_owned(), nginx_proxy.to_string()),
            ("HAPROXY".to_owned(), haproxy.to_string()),
            ("MERGE".to_owned(), merge.to_string()),
            ("PEERS_DIR".to_owned(), dir.display().to_string()),
        ];
        let peers = Peers {
            script: script.to_path_buf(),
            env,
            dir,
            up1,
            up2,
            nginx_proxy,
            haproxy,
            merge,
        };
        match Command::new("bash")
            .arg(script)
            .arg("start")
            .envs(peers.env.clone())
            .status()
        {
            Ok(status) if status.success() => peers,
            Ok(status) => fail(&format!("{} start failed ({status})", script.display())),
            Err(e) => fail(&format!("cannot run {}: {e}", script.display())),
        }
    }

    /// `GET /order/12345` on `port` of loopback.
    pub fn order_url(port: u16) -> String {
        format!("http://127.0.0.1:{port}/order/12345")
    }

    /// The nginx + Lua merge of order 12345.
    pub fn merge_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/orders/12345", self.merge)
    }
}

impl Peers {
    /// What stops these peers, for a signal handler that runs while they are borrowed.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            script: self.script.clone(),
            env: self.env.clone(),
            dir: self.dir.clone(),
        }
    }
}

/// Stops a set of peers (`peers.sh stop`) and removes their folder.
#[derive(Clone)]
pub struct Stopper {
    script: PathBuf,
    env: Vec<(String, String)>,
    dir: PathBuf,
}

impl Stopper {
    /// `peers.sh stop`, then the folder removed.
    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .envs(self.env.clone())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stopper().stop();
    }
}

/// On SIGINT or SIGTERM: every child of this process (nats-server, workers, gateway, wrk, oha)
/// sent SIGTERM, the peers stopped (nginx and HAProxy run as daemons, outside this process's
/// reach), and exit 130. Without it an interrupted run left all of them running.
pub fn stop_everything_on_signal(peers: Stopper) {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered here, before any child exists, not in the task: a signal between the spawn
    // and the task's first poll would otherwise be lost.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("busgate-bench: stopped by a signal; stopping every child and the peers");
        // The children first (the load generators hold the peers' connections open, and the
        // scenarios go on meanwhile), then the peers.
        for child in children() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        peers.stop();
        std::process::exit(130);
    });
}

/// The pids whose parent is this process (from `/proc/*/stat`).
fn children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid …: comm may hold spaces and parentheses.
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1).map(|ppid| ppid == me)
                })
                .unwrap_or(false)
        })
        .collect()
}
