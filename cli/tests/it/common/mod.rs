//! What the `sluice` process tests share: the binary, a running `sluice serve` whose output
//! is collected, and the `keys` command.

// Each test module uses some of these; test helpers fail loudly by design.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `sluice` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A running `sluice serve` whose output lines are collected; dropping it kills it.
pub struct Served {
    pub child: Child,
    pub url: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects a child's output lines on a thread.
pub fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Served {
    /// Starts `sluice serve` on 127.0.0.1:0 over `db` and waits until it listens.
    pub fn start(db: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec!["--db", db.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::spawn(&args, env)
    }

    /// Starts `sluice serve --listen 127.0.0.1:0 ARGS` and waits until it listens.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        Self::spawn_command(cmd, env)
    }

    /// Starts `cmd` (which runs `sluice serve`, e.g. under `sh -c 'ulimit …; exec …'`) with
    /// the `SLUICE_*` environment cleared and `env` set, and waits until it listens.
    pub fn spawn_command(mut cmd: Command, env: &[(&str, &str)]) -> Self {
        cmd.env_remove("SLUICE_ADMIN_KEY")
            .env_remove("SLUICE_CONFIG")
            .env_remove("SLUICE_LISTEN")
            .env_remove("SLUICE_DB")
            .env_remove("SLUICE_LOG_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        let started = Instant::now();
        let url = loop {
            let found = stderr
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix("Sluice listening on ").map(str::to_owned));
            if let Some(url) = found {
                break url;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "sluice serve exited with {status}: {:?}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "sluice serve did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            url,
            stdout,
            stderr,
        }
    }

    /// The admin key it generated and printed on stderr.
    pub fn admin_key(&self) -> String {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                l.split("admin key for this run: ")
                    .nth(1)
                    .map(str::to_owned)
            })
            .expect("no generated admin key was printed")
    }

    /// Waits for a stdout log line matching `pred`.
    pub fn wait_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let found = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v));
            if let Some(v) = found {
                return v;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "log line never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs `sluice ARGS` to completion.
pub fn sluice(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `sluice keys create --tenant T --db DB`: the printed key.
pub fn create_key(db: &Path, tenant: &str) -> String {
    let out = sluice(
        &[
            "keys",
            "create",
            "--tenant",
            tenant,
            "--db",
            db.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
