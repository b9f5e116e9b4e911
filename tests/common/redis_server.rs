//! A real `redis-server` for the fleet and fault tests: started on a free loopback port with
//! no persistence, stopped and restarted on the same port on demand, killed on drop.
//!
//! Where `redis-server` is not installed, [`RedisServer::start`] returns `None` and the test
//! prints why it did nothing, so `cargo test --workspace` still passes on a machine with only
//! the Rust toolchain. `.ci/run` installs it and sets `RESILIENT_REQUIRE_REDIS=1`, which turns
//! a missing server into a failure: CI never silently skips these tests.
#![allow(dead_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that makes a missing `redis-server` a test failure.
pub const REQUIRE_ENV: &str = "RESILIENT_REQUIRE_REDIS";

/// One `redis-server` process owned by the test.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

fn binary() -> String {
    std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_string())
}

fn free_port() -> u16 {
    // The OS picks a free port; the tiny window before redis binds it is acceptable in tests.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether a missing server must fail the test (CI) rather than skip it (a laptop).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

impl RedisServer {
    /// Start a server on a free port, or `None` (with a message) where none is installed and
    /// [`REQUIRE_ENV`] is not set.
    pub fn start() -> Option<RedisServer> {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !required() => {
                eprintln!(
                    "SKIPPED: `{}` not found on PATH; install redis-server (Debian: \
                     `apt-get install redis-server`) or set {REQUIRE_ENV}=1 to make this fail",
                    binary()
                );
                None
            }
            Err(e) => panic!("could not start {}: {e}", binary()),
        }
    }

    fn spawn(&mut self) -> io::Result<()> {
        let child = Command::new(binary())
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other("redis-server did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the server (its data is gone: no persistence) and wait until the port is closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && started.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freeze the server (`SIGSTOP`): connections stay open but nothing answers, the slow
    /// Redis that only a timeout detects.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Let a frozen server go on (`SIGCONT`), with its data.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Start it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("redis-server restarts on its port");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
