//! A primary, one replica (`--replicaof`; more on request) and three Sentinels
//! (`redis-server <conf> --sentinel`), on free ports in temp dirs, killed on
//! drop. [`SentinelSet::start`] returns once every Sentinel sees the primary,
//! the replica and the two other Sentinels, and the replica is in sync.

use super::{free_port, RedisServer};
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The master name the Sentinels monitor.
pub const MASTER: &str = "m";

pub struct SentinelProcess {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SentinelProcess {
    fn start(primary_port: u16) -> Option<Self> {
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                     sentinel resolve-hostnames no\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server --sentinel");
            let mut s = Self {
                port,
                dir,
                child: Some(child),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if raw(port, &["PING"]).is_some_and(|r| r.starts_with("+PONG")) {
                    return Some(s);
                }
                if let Some(Ok(Some(_))) = s.child.as_mut().map(|c| c.try_wait()) {
                    break; // the port was taken: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            s.kill();
        }
        None
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SENTINEL get-master-addr-by-name`: the port of the primary this Sentinel names.
    pub fn primary_port(&self) -> Option<u16> {
        let reply = raw(self.port, &["SENTINEL", "get-master-addr-by-name", MASTER])?;
        // `*2 $9 127.0.0.1 $5 <port>`: the port is the fifth line.
        reply.split("\r\n").nth(4)?.parse().ok()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct SentinelSet {
    pub primary: RedisServer,
    pub replicas: Vec<RedisServer>,
    pub sentinels: Vec<SentinelProcess>,
}

/// One command over raw RESP; `None` when the server cannot be reached.
pub fn raw(port: u16, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl SentinelSet {
    /// Start the five processes, or `None` (loudly) when `redis-server` is
    /// missing outside CI. With `CI` set, anything that does not come up panics.
    pub fn start() -> Option<Self> {
        Self::start_with(1)
    }

    /// As [`start`](Self::start), with `replicas` replicas.
    pub fn start_with(replicas: usize) -> Option<Self> {
        let primary = RedisServer::start()?;
        let port = primary.port.to_string();
        let replicas = (0..replicas)
            .map(|_| RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]))
            .collect::<Option<Vec<_>>>()?;
        let sentinels: Vec<_> = (0..3)
            .map(|_| {
                SentinelProcess::start(primary.port).expect("a Sentinel did not come up on any of 5 ports")
            })
            .collect();
        let set = Self {
            primary,
            replicas,
            sentinels,
        };
        set.wait_ready(Duration::from_secs(30));
        Some(set)
    }

    /// `redis+sentinel://` URL naming the three Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let synced = self.replicas.iter().all(|r| {
                raw(r.port, &["INFO", "replication"]).is_some_and(|r| r.contains("master_link_status:up"))
            });
            let slaves = format!("num-slaves\r\n$1\r\n{}\r\n", self.replicas.len());
            let seen = self.sentinels.iter().all(|s| {
                raw(s.port, &["SENTINEL", "master", MASTER])
                    .is_some_and(|r| r.contains(&slaves) && r.contains("num-other-sentinels\r\n$1\r\n2\r\n"))
            });
            if synced && seen {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .sentinels
                    .iter()
                    .map(|s| std::fs::read_to_string(s.log()).unwrap_or_default())
                    .collect();
                panic!(
                    "the Sentinels did not see the primary, the replica and each other within {within:?} \
                     (replica synced: {synced})\n{}",
                    logs.join("\n----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The port every Sentinel names as primary, once they agree on one
    /// other than `old`, within `within`.
    pub fn wait_new_primary(&self, old: u16, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        loop {
            let ports: Vec<Option<u16>> = self.sentinels.iter().map(|s| s.primary_port()).collect();
            if let Some(Some(p)) = ports.first() {
                if *p != old && ports.iter().all(|q| *q == Some(*p)) {
                    return Some(*p);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
