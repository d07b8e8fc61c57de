//! The real `missive` binary as a child process: `missive serve --listen 127.0.0.1:0` on the
//! embedded backend in a given data directory, with the rate limiters off, its address read
//! from its JSON log ([`Launch`]). Each start's stderr goes to `server-<n>.log` in a folder
//! of the test's, and is printed when a start fails.
//!
//! Shared by the tests that start the binary (`mod binary;`); what only one of them does to
//! the process (a signal, a SIGKILL) stays in that test, in an `impl Server` of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

/// The `missive` command with no `MISSIVE_*` variable of the caller's environment.
pub fn missive() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_missive"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MISSIVE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A `missive serve` process on the embedded backend, killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    /// `host:port` the API listens on.
    pub addr: String,
    log: PathBuf,
    /// How long it may take to become ready ([`Launch::deadline`]).
    deadline: Duration,
}

/// Where and how a test starts its servers: on `data_dir` with `jwt_secret`, their logs in
/// `logs`, each allowed `deadline` to start and as much to become ready (a bound for a hung
/// process, not a performance target).
pub struct Launch<'a> {
    pub data_dir: &'a Path,
    pub logs: &'a Path,
    pub jwt_secret: &'a str,
    pub deadline: Duration,
}

impl Launch<'_> {
    /// Starts the server, its stderr in `logs/server-<n>.log`, and waits until it listens
    /// and `/readyz` answers 200.
    pub async fn start(&self, n: u64) -> Server {
        let server = self.listening(n).await;
        server.ready().await;
        server
    }

    /// Starts the server and waits until it listens (its read models may still be catching
    /// up with the log).
    pub async fn listening(&self, n: u64) -> Server {
        let log = self.logs.join(format!("server-{n}.log"));
        let stderr = std::fs::File::create(&log).expect("server log file");
        let child = missive()
            .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .args(["--jwt-secret", self.jwt_secret])
            .args(["--rate-limit-per-user", "0", "--rate-limit-per-ip", "0"])
            .arg("--data-dir")
            .arg(self.data_dir)
            // The service's debug lines name each append's events (see `logs_name_requests`).
            .env("RUST_LOG", "info,missive_service=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("missive serve starts");
        let mut server = Server {
            child,
            addr: String::new(),
            log,
            deadline: self.deadline,
        };
        let until = Instant::now() + self.deadline;
        server.addr = loop {
            if let Some(addr) = server.listening_on() {
                break addr;
            }
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!(
                    "the server exited ({status}) at start:\n{}",
                    server.log_text()
                );
            }
            assert!(
                Instant::now() < until,
                "the server did not start:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        server
    }
}

impl Server {
    /// Waits until `/readyz` answers 200: the read models hold the log as it was at start.
    pub async fn ready(&self) {
        let until = Instant::now() + self.deadline;
        let http = reqwest::Client::new();
        loop {
            let ready = http.get(format!("{}/readyz", self.base())).send().await;
            if matches!(&ready, Ok(r) if r.status() == StatusCode::OK) {
                break;
            }
            assert!(
                Instant::now() < until,
                "the server never became ready ({ready:?}):\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://host:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address of the "missive is running" log line, once written.
    fn listening_on(&self) -> Option<String> {
        self.log_text().lines().find_map(|line| {
            let line: Value = serde_json::from_str(line).ok()?;
            if line["fields"]["message"] != "missive is running" {
                return None;
            }
            let addr = line["fields"]["addr"].as_str()?;
            Some(addr.strip_prefix("Some(")?.strip_suffix(')')?.to_owned())
        })
    }

    /// What the server has logged so far (its stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
