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

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .envs(self.env.clone())
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
