//! A private `redis-server` per test binary: free port, temp dir, log file,
//! killed on drop. In CI a missing `redis-server` fails the run; locally the
//! tests that need it say so loudly and return.
#![allow(dead_code)]

pub mod cluster;
#[cfg(all(feature = "redis", feature = "rt-tokio"))]
pub mod failover;
pub mod logs;
pub mod sentinel;
#[cfg(all(feature = "redis", feature = "testkit"))]
pub mod suites;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// Listens only on a TLS port (`port`), see [`RedisServer::start_tls`].
    tls: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").is_ok()
        && s.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
}

/// Whether `redis-server` can run; outside CI a loud message when not, in CI a panic.
fn installed() -> bool {
    if Command::new("redis-server").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("redis-server is not installed, and CI is set: the Redis tests cannot run");
    }
    eprintln!("\n!!! redis-server not found: SKIPPING the Redis tests (install it to run them) !!!\n");
    false
}

impl RedisServer {
    /// Start one, or `None` (with a loud message) when `redis-server` is
    /// missing outside CI. In CI (`CI` set) a missing server panics.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Start one with extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !installed() {
            return None;
        }
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                tls: false,
            };
            if server.spawn() {
                return Some(server);
            }
            // Another process took the port between our probe and the bind: try another.
        }
        panic!("redis-server did not come up on any of 5 ports");
    }

    /// Start one that serves TLS only, on `port` (`--port 0 --tls-port`);
    /// `extra` names the certificate files (`--tls-cert-file` ...). Ready
    /// once the port accepts connections: it cannot be pinged in plain text.
    pub fn start_tls(extra: &[&str]) -> Option<Self> {
        if !installed() {
            return None;
        }
        for _ in 0..5 {
            let mut server = Self {
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                tls: true,
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("redis-server with TLS did not come up on any of 5 ports (is it built with TLS?)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let ports = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let up = if self.tls {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            } else {
                answers_ping(self.port)
            };
            if up {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// Kill the server (to test outages); `restart` brings it back on the same port.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }

    /// `kill -9` the server: no shutdown, no final save, clients see their
    /// sockets reset. (`Child::kill` sends SIGKILL on unix.) Returns whether
    /// a server was running.
    pub fn kill9(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                true
            }
            None => false,
        }
    }

    /// `SIGSTOP` the server: connections are still accepted by the kernel,
    /// nothing is answered, until [`resume`](Self::resume).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT` a [paused](Self::pause) server.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("a running server").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// The server's working directory, where its AOF and RDB files live;
    /// [`restart`](Self::restart) starts the new process on the same one (and
    /// the same port and arguments), so with `--appendonly yes` it reloads the data.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The value of one `CONFIG GET` parameter, e.g. `appendonly`.
    pub fn config_get(&self, name: &str) -> Option<String> {
        let reply = self.cmd(&["CONFIG", "GET", name]);
        // `*2 $len name $len value`: the value is the fifth line.
        reply.split("\r\n").nth(4).map(str::to_owned)
    }

    /// Run a command with redis-cli-free raw RESP, returning the raw reply.
    pub fn cmd(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        // One read suffices for the small replies the tests ask for.
        let n = s.read(&mut buf).expect("read");
        out.extend_from_slice(&buf[..n]);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Every command's `INFO commandstats` call count, by lowercase name
    /// (`xreadgroup`, `evalsha`, ...): diff two to see what a workload sent.
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let info = self.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
            })
            .collect()
    }

    /// `INFO commandstats` calls of `command` (lowercase), e.g. `xadd`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.cmd(&["INFO", "commandstats"]);
        let tag = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| {
                l.strip_prefix(&tag)
                    .and_then(|r| r.split(',').next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A service that does nothing until stopped; its lifecycle keeps it registered.
pub struct Idle;

#[fleetwire::async_trait]
impl fleetwire::service::Service for Idle {
    async fn on_start(&self, _: &fleetwire::service::Context) -> fleetwire::Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &fleetwire::service::Context) -> fleetwire::Result<()> {
        ctx.stopped().await;
        Ok(())
    }
    async fn on_stop(&self, _: &fleetwire::service::Context) -> fleetwire::Result<()> {
        Ok(())
    }
}
