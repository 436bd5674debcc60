//! Child processes of a test: spawning one (in a process group of its own, marked as this
//! checkout's), keeping every line it writes so tests wait on what it says (bounded), and
//! stopping it, and everything it started, when it is dropped (passed or failed).
//!
//! Every child gets [`OWNER_ENV`] in its environment (`<this crate's dir>:<test pid>:<n>`),
//! which its own children inherit. Dropping a [`Proc`] sends SIGKILL to its process group,
//! reaps it, then kills whatever still carries its mark (a grandchild in a group of its own,
//! as `busgate up` starts its children): nothing a test started outlives it.
//! `tests/run.sh` looks for the mark of this checkout after the suite.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The environment variable that marks every process a test starts (and, inherited, every
/// process those start): `<this crate's dir>:<test pid>:<n>:` (no mark is the prefix of
/// another).
pub const OWNER_ENV: &str = "BUSGATE_TESTS_OWNER";

/// The mark's prefix shared by every process the tests of this checkout start.
pub fn checkout_mark() -> String {
    format!("{}:", env!("CARGO_MANIFEST_DIR"))
}

/// A mark of its own for one child (and its descendants).
fn new_mark() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}{}:{n}:", checkout_mark(), std::process::id())
}

/// How long any process may take to become ready.
pub const READY_WITHIN: Duration = Duration::from_secs(20);

/// A built binary of this workspace (`busgate`, `busgate-worker`), beside the running one.
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/e2e-<hash> (a test) or target/<profile>/busgate-bench (a binary)
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("profile dir");
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// Lines a child wrote, shared with the thread that reads them.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A child process whose output is kept; it and its descendants are killed on drop.
pub struct Proc {
    /// What the tests call it (in failure messages and log tails).
    pub name: String,
    child: Option<Child>,
    lines: Arc<Lines>,
    /// The value of [`OWNER_ENV`] it and its descendants carry.
    mark: String,
}

impl Proc {
    /// Starts `cmd` in a process group of its own, marked, its output kept.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mark = new_mark();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env(OWNER_ENV, &mark)
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Lines::default());
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("BUSGATE_TEST_LOGS").is_some() {
                        eprintln!("{line}");
                    }
                    lines.lines.lock().expect("lines").push(line);
                    lines.grew.notify_all();
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child: Some(child),
            lines,
            mark,
        }
    }

    /// Waits (bounded) for a line for which `pick` returns something, and returns that.
    pub fn wait_for<T>(&self, within: Duration, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let until = Instant::now() + within;
        let mut seen = 0;
        let mut lines = self.lines.lines.lock().expect("lines");
        loop {
            for line in &lines[seen..] {
                if let Some(found) = pick(line) {
                    return found;
                }
            }
            seen = lines.len();
            let now = Instant::now();
            if now >= until {
                panic!(
                    "{}: nothing expected was logged within {within:?}; last lines:\n{}",
                    self.name,
                    tail(&lines, 30)
                );
            }
            lines = self
                .lines
                .grew
                .wait_timeout(lines, until - now)
                .expect("lines")
                .0;
        }
    }

    /// Waits for a JSON log line whose `message` is `message`; returns the whole line.
    pub fn wait_for_message(&self, message: &str) -> Value {
        self.wait_for(READY_WITHIN, |line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["message"] == message).then_some(v)
        })
    }

    /// Every line so far, stdout and stderr interleaved as they came.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lines.lock().expect("lines").clone()
    }

    /// Whether any line so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.lines
            .lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains(text))
    }

    /// The mark it and its descendants carry (see [`marked`]).
    pub fn mark(&self) -> &str {
        &self.mark
    }

    /// The process id (the leader of its process group).
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// SIGKILL to its whole process group (the leader is not reaped yet, so the group id is
    /// still its own), reap it, then kill whatever else carries its mark.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(-(child.id() as i32)), Signal::SIGKILL);
            let _ = child.wait();
        }
        kill_marked(&self.mark);
    }

    /// SIGTERM (to the child only: it stops its own children), then wait (bounded) for the
    /// exit code; what it left behind is killed.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let until = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                kill_marked(&self.mark);
                return status.code();
            }
            if Instant::now() >= until {
                self.child = Some(child);
                self.kill();
                panic!("{} did not stop within {within:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The processes (ids) whose environment carries a mark starting with `mark`.
pub fn marked(mark: &str) -> Vec<i32> {
    let needle = format!("{OWNER_ENV}={mark}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|var| var.starts_with(needle.as_bytes()))
            })
        })
        .collect()
}

/// SIGKILL to every process that carries `mark`, until none is left (bounded: a dying
/// supervisor may start one more child before it dies).
fn kill_marked(mark: &str) {
    for _ in 0..50 {
        let left = marked(mark);
        if left.is_empty() {
            return;
        }
        for pid in left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let lines = self
                .lines
                .lines
                .lock()
                .map(|l| tail(&l, 15))
                .unwrap_or_default();
            eprintln!("--- last lines of {} ---\n{lines}", self.name);
        }
        self.kill();
    }
}
