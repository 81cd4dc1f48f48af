//! A Redis Cluster of 3 primaries and 3 replicas (`redis-server
//! --cluster-enabled yes`, then `redis-cli --cluster create ...
//! --cluster-replicas 1`), on free ports in temp dirs, killed on drop.
//! [`Cluster::start`] returns once every node reports `cluster_state:ok`
//! and every replica's link to its primary is up.

use super::{sentinel::raw, RedisServer};
use std::{
    process::Command,
    time::{Duration, Instant},
};

pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    /// The CA file when the nodes serve TLS only (`start_tls`).
    tls_ca: Option<String>,
}

/// The arguments every node gets.
const NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    // A replica may take over however long ago it last heard
    // from its primary (the default refuses after ~10 node timeouts).
    "--cluster-replica-validity-factor",
    "0",
    // Replicas sync at once instead of after 5 s.
    "--repl-diskless-sync-delay",
    "0",
];

impl Cluster {
    /// Start the six nodes and form the cluster, or `None` (loudly) when
    /// `redis-server` is missing outside CI. With `CI` set, anything that
    /// does not come up panics.
    pub fn start() -> Option<Self> {
        let nodes = (0..6)
            .map(|_| RedisServer::start_with(NODE_ARGS))
            .collect::<Option<Vec<_>>>()?;
        Self::form(nodes, None)
    }

    /// As [`start`](Self::start), every node serving TLS only (clients, the
    /// cluster bus and replication) with `cert`/`key` (which must name
    /// `127.0.0.1`, the address the slot map gives), trusting `ca`; clients
    /// need no certificate.
    pub fn start_tls(cert: &str, key: &str, ca: &str) -> Option<Self> {
        let mut args: Vec<&str> = NODE_ARGS.to_vec();
        args.extend([
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ]);
        let nodes = (0..6)
            .map(|_| RedisServer::start_tls(&args))
            .collect::<Option<Vec<_>>>()?;
        Self::form(nodes, Some(ca.to_owned()))
    }

    fn form(nodes: Vec<RedisServer>, tls_ca: Option<String>) -> Option<Self> {
        let cluster = Self { nodes, tls_ca };
        let mut create = cluster.cli();
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = output_within(&mut create, Duration::from_secs(60));
        let out = match out {
            Ok(out) => out,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("\n!!! redis-cli not runnable ({e}): SKIPPING the Cluster tests !!!\n");
                return None;
            }
            Err(e) => panic!("redis-cli not runnable ({e}), and CI is set"),
        };
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30));
        Some(cluster)
    }

    /// `redis-cli`, speaking TLS when the nodes do.
    fn cli(&self) -> Command {
        let mut cli = Command::new("redis-cli");
        if let Some(ca) = &self.tls_ca {
            cli.args(["--tls", "--cacert", ca]);
        }
        cli
    }

    /// One command to the node on `port`: its reply, `None` when it does not answer.
    fn ask(&self, port: u16, args: &[&str]) -> Option<String> {
        if self.tls_ca.is_none() {
            return raw(port, args);
        }
        let out = self
            .cli()
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `redis+cluster://` URL naming every node as a seed (`rediss+cluster://` over TLS).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let scheme = if self.tls_ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", hosts.join(","))
    }

    /// Wait until every running node says `cluster_state:ok` and knows
    /// all 16384 slots, and every replica is in sync with its primary.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|n| self.ask(n.port, &["PING"]).is_some())
                .all(|n| {
                    self.ask(n.port, &["CLUSTER", "INFO"]).is_some_and(|r| {
                        r.contains("cluster_state:ok") && r.contains("cluster_slots_ok:16384")
                    })
                });
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|n| std::fs::read_to_string(n.log()).unwrap_or_default())
                    .collect();
                panic!(
                    "the cluster did not reach cluster_state:ok within {within:?}\n{}",
                    logs.join("\n----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the node at `i` is running as a primary.
    pub fn primary_of_index(&self, i: usize) -> bool {
        self.ask(self.nodes[i].port, &["ROLE"])
            .is_some_and(|r| r.contains("master"))
    }

    /// Index in `nodes` of the primary that owns `key`'s slot now.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(role) = raw(n.port, &["ROLE"]) else {
                continue;
            };
            if !role.contains("master") {
                continue;
            }
            let slot = raw(n.port, &["CLUSTER", "KEYSLOT", key])?;
            let slot: u16 = slot.trim().trim_start_matches(':').parse().ok()?;
            let nodes = raw(n.port, &["CLUSTER", "NODES"])?;
            let me = nodes.lines().find(|l| l.contains("myself"))?;
            let serves = me.split(' ').skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a
                    .parse::<u16>()
                    .ok()
                    .zip(b.parse::<u16>().ok())
                    .is_some_and(|(a, b)| (a..=b).contains(&slot)),
                None => range.parse::<u16>().ok() == Some(slot),
            });
            if serves {
                return Some(i);
            }
        }
        None
    }
}

/// Run `cmd` to completion, killed after `within` (`redis-cli --cluster
/// create` waits for ever for nodes that cannot talk to each other).
fn output_within(cmd: &mut Command, within: Duration) -> std::io::Result<std::process::Output> {
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + within;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            panic!(
                "{cmd:?} did not finish within {within:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output()
}
