//! Redis Cluster: commands go to the node that owns their keys' slot.
//!
//! A URL `redis+cluster://[user:password@]host:port,host:port,...` names
//! seed nodes (port 6379 when left out); the client learns the slot map
//! from them and follows `MOVED`/`ASK` redirections and failovers itself.
//!
//! - Ordinary commands share one redis-rs cluster connection (one
//!   multiplexed connection per node). A pipeline whose commands fall in
//!   several slots, or an `MGET` over several slots, is split by slot and
//!   sent as one pipeline per primary (from a `CLUSTER SLOTS` map), all at
//!   once: the registry's listing and `is_alive_batch` take one round trip
//!   per primary.
//! - Blocking reads (`XREADGROUP ... BLOCK`, a publish's `WAIT`) use cluster
//!   connections of their own, with a response timeout of the block plus the
//!   backend's response timeout, so they never stall other traffic.
//! - Topics: a classic `PUBLISH` reaches every node of a cluster, so a
//!   subscription is made on one seed node (the first, then the next in turn
//!   each time it has to resubscribe), and every publish goes to the primary
//!   of slot 0 (one node, so a publisher's events keep their order).
//!
//! The key layout on Cluster is described in [`super::keys`].

use super::cluster_tls::Probe;
use super::connection::{map_err, Blocking, CancelSlot, Conn, Endpoint, Settings, Shared};
use crate::{
    error::{Error, Result},
    name::InstanceId,
    rt,
};
use futures_util::future::try_join_all;
use parking_lot::Mutex;
use redis::{
    aio::ConnectionLike,
    cluster::{ClusterClient, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr},
    Cmd, Pipeline, RedisError, RedisFuture, Value,
};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// Keys per `MGET` at most on the liveness fast path.
const MGET_CHUNK: usize = 10_000;

/// The URL scheme that selects Cluster.
pub(crate) const SCHEME: &str = "redis+cluster://";

/// The URL scheme that selects Cluster over TLS (needs `redis-tls`).
pub(crate) const TLS_SCHEME: &str = "rediss+cluster://";

/// Whether `url` names a Cluster (over TLS or not).
pub(crate) fn is_cluster_url(url: &str) -> bool {
    url.starts_with(SCHEME) || url.starts_with(TLS_SCHEME)
}

/// Response timeout of a blocking-read cluster connection: the read's own
/// wait is enforced around each call instead.
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(31 * 24 * 3600);

/// A parsed `redis+cluster://` URL: one `redis://` URL per seed node.
#[derive(Clone)]
pub(crate) struct Target {
    nodes: Vec<String>,
    /// `rediss+cluster://`: every node over TLS.
    pub(crate) tls: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

fn bad(url: &str, problem: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "invalid Cluster URL `{}`: {problem} (expected redis+cluster://[user:password@]host:port[,host:port...], or rediss+cluster:// for TLS)",
        super::connection::redact(url)
    ))
}

impl Target {
    /// Parse `url`; `None` when it is not a Cluster URL at all.
    pub(crate) fn parse(url: &str) -> Result<Option<Self>> {
        let (rest, tls) = match (url.strip_prefix(SCHEME), url.strip_prefix(TLS_SCHEME)) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Ok(None),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        if rest.contains('?') {
            return Err(bad(url, "query parameters are not supported"));
        }
        let authority = match rest.split_once('/') {
            Some((_, path)) if !path.is_empty() => {
                return Err(bad(
                    url,
                    "a path (database number) is not supported: a cluster has only database 0",
                ))
            }
            Some((a, _)) => a,
            None => rest,
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad(url, "an empty node address"));
            }
            let (name, port) = match host.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let port = p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad(url, format!("`{p}` is not a port (in `{host}`)")))?;
                    (h, port)
                }
                _ => (host, 6379),
            };
            if name.is_empty() || name == "[]" {
                return Err(bad(url, format!("no host in `{host}`")));
            }
            if name.contains(['/', '@', '#']) {
                return Err(bad(url, format!("`{host}` is not a host:port")));
            }
            let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            nodes.push(format!("{scheme}://{auth}{name}:{port}"));
        }
        if tls && !cfg!(feature = "redis-tls") {
            return Err(bad(
                url,
                "TLS (rediss+cluster://) needs fleetwire's `redis-tls` feature",
            ));
        }
        // Checked here so a bad user info is an error at build time.
        ClusterClient::new(nodes.clone()).map_err(|e| bad(url, e.detail().unwrap_or("unusable node URL")))?;
        Ok(Some(Self { nodes, tls }))
    }
}

/// Custom TLS certificates for every node (a CA, a client certificate);
/// `None` for plain TCP, or TLS trusting the system's roots.
#[cfg(feature = "redis-tls")]
pub(crate) type Certs = Option<redis::TlsCertificates>;
#[cfg(not(feature = "redis-tls"))]
pub(crate) type Certs = Option<NoCerts>;

/// What [`Certs`] holds without TLS support: nothing can be made.
#[cfg(not(feature = "redis-tls"))]
#[derive(Clone)]
pub(crate) enum NoCerts {}

/// A cluster client for `nodes`, with `certs` when given.
fn client_builder(nodes: &[String], certs: &Certs) -> redis::cluster::ClusterClientBuilder {
    let builder = ClusterClient::builder(nodes.to_vec());
    #[cfg(feature = "redis-tls")]
    if let Some(certs) = certs {
        return builder.certs(certs.clone());
    }
    let _ = certs;
    builder
}

/// A client for one seed node (pub/sub), with `certs` when given.
pub(crate) fn seed_client(node: &str, certs: &Certs) -> redis::RedisResult<redis::Client> {
    #[cfg(feature = "redis-tls")]
    if let Some(certs) = certs {
        return redis::Client::build_with_tls(node, certs.clone());
    }
    let _ = certs;
    redis::Client::open(node)
}

/// Build the connection state for `target`. No connection is made until the
/// first call.
pub(crate) fn connect(
    target: Target,
    settings: Settings,
    redacted_url: String,
    certs: Certs,
) -> Result<Arc<Conn>> {
    let what = || format!("connect to `{redacted_url}`");
    let shared = client_builder(&target.nodes, &certs)
        .connection_timeout(settings.connect_timeout)
        .response_timeout(settings.response_timeout)
        .retries(3)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()
        .map_err(|e| map_err(e, what()))?;
    let blocking = client_builder(&target.nodes, &certs)
        .connection_timeout(settings.connect_timeout)
        .response_timeout(BLOCKING_RESPONSE_TIMEOUT)
        .retries(1)
        .build()
        .map_err(|e| map_err(e, what()))?;
    let seeds = target
        .nodes
        .iter()
        .map(|n| seed_client(n, &certs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| map_err(e, what()))?;
    let pubsub = seeds[0].clone();
    let probe = target
        .tls
        .then(|| Arc::new(Probe::new(seeds.clone(), certs.clone(), settings.connect_timeout)));
    let config = ClusterConfig::new()
        .set_connection_timeout(settings.connect_timeout)
        .set_response_timeout(settings.response_timeout);
    let endpoint = Endpoint {
        client: pubsub,
        manager: Shared::Cluster(Routed::new(
            shared.get_pending_async_connection_with_config(config),
            probe.clone(),
        )),
        blocking: Blocking::Cluster(BlockingCluster {
            client: Box::new(blocking),
            idle: Mutex::new(Vec::new()),
            max_idle: settings.pool_size.max(1) as usize,
            seeds,
            next_seed: AtomicUsize::new(0),
            probe,
        }),
    };
    Ok(Conn::new(endpoint, settings, redacted_url))
}

/// `call`, its error explained by `probe` when there is one.
fn explained<'a, T: Send + 'a>(probe: Option<Arc<Probe>>, call: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    match probe {
        None => call,
        Some(probe) => Box::pin(async move {
            match call.await {
                Err(e) => Err(probe.explain(e).await),
                ok => ok,
            }
        }),
    }
}

/// A cluster connection whose pipelines may span slots: split by slot and
/// sent as one pipeline per primary, all at once.
#[derive(Clone)]
pub(crate) struct Routed {
    conn: ClusterConnection,
    /// Which primary serves each slot, from `CLUSTER SLOTS`; dropped when a
    /// reply says the map moved, asked again on the next split pipeline.
    owners: Arc<Mutex<Option<Arc<Owners>>>>,
    /// Over TLS, a seed node to connect to on its own when the cluster
    /// connection reports no node: it names the TLS failure, if that is why.
    probe: Option<Arc<Probe>>,
}

impl Routed {
    fn new(conn: ClusterConnection, probe: Option<Arc<Probe>>) -> Self {
        Self {
            conn,
            owners: Arc::default(),
            probe,
        }
    }

    /// The slot map, asked for when not known.
    async fn owners(&self) -> Option<Arc<Owners>> {
        if let Some(o) = self.owners.lock().clone() {
            return Some(o);
        }
        self.read_owners().await.ok()
    }

    /// Read the slot map afresh (through this connection, so a failure
    /// keeps its cause) and keep it.
    async fn read_owners(&self) -> redis::RedisResult<Arc<Owners>> {
        let mut this = self.clone();
        let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut this).await?;
        let owners = Arc::new(Owners::parse(&reply).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "no slot map",
                "CLUSTER SLOTS gave no usable reply".to_owned(),
            ))
        })?);
        *self.owners.lock() = Some(owners.clone());
        Ok(owners)
    }

    /// One route per primary (by the first slot it serves), for commands
    /// every primary must answer, such as `SCAN`.
    pub(crate) async fn each_primary(&self) -> redis::RedisResult<Vec<RoutingInfo>> {
        // Afresh: a cached map may predate a node added since.
        let owners = self.read_owners().await?;
        let mut seen = std::collections::HashSet::new();
        Ok(owners
            .node_of
            .iter()
            .enumerate()
            .filter_map(|(slot, node)| {
                let node = (*node)?;
                seen.insert(node).then(|| {
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                        slot as u16,
                        SlotAddr::Master,
                    )))
                })
            })
            .collect())
    }

    /// The cluster connection, for a command routed by the caller.
    pub(crate) fn connection(&self) -> ClusterConnection {
        self.conn.clone()
    }

    /// Whether each of the keys `prefix` + `ids` exists, for a liveness batch
    /// over many slots: ids bucketed by slot, one `MGET` per slot, one
    /// pipeline per primary, all at once, each reply read straight into
    /// its place. `None` when the slot map is unknown, a node failed or a
    /// reply says the map moved: the caller then takes the general path,
    /// which reads the map again and retries slot by slot (and reports errors).
    pub(crate) async fn exist(&self, prefix: &str, ids: &[InstanceId]) -> Option<Vec<bool>> {
        let owners = self.owners().await?;
        // Every key in one buffer, its slot beside it.
        let mut bytes = Vec::with_capacity(ids.len() * (prefix.len() + 16));
        let mut ends = Vec::with_capacity(ids.len());
        let mut slots = Vec::with_capacity(ids.len());
        for id in ids {
            let start = bytes.len();
            bytes.extend_from_slice(prefix.as_bytes());
            bytes.extend_from_slice(id.as_str().as_bytes());
            slots.push(slot_of(&bytes[start..]));
            ends.push(bytes.len());
        }
        let key = |i: usize| &bytes[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
        // Positions in slot order (a counting sort over the 16,384 slots).
        let mut starts = vec![0u32; 16385];
        for &slot in &slots {
            starts[slot as usize + 1] += 1;
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut order = vec![0u32; ids.len()];
        let mut next = starts.clone();
        for (i, &slot) in slots.iter().enumerate() {
            order[next[slot as usize] as usize] = i as u32;
            next[slot as usize] += 1;
        }
        // One pipeline per primary; each MGET covers a run of `order`.
        let mut nodes: Vec<(u16, Pipeline, Vec<std::ops::Range<usize>>)> = Vec::new();
        let mut node_index: HashMap<u16, usize> = HashMap::new();
        for slot in 0..16384usize {
            let run = starts[slot] as usize..starts[slot + 1] as usize;
            if run.is_empty() {
                continue;
            }
            let node = owners.node_of[slot]?;
            let n = *node_index.entry(node).or_insert_with(|| {
                nodes.push((slot as u16, redis::pipe(), Vec::new()));
                nodes.len() - 1
            });
            // One hash tag may hold many ids: at most MGET_CHUNK keys a command.
            for start in run.clone().step_by(MGET_CHUNK) {
                let chunk = start..(start + MGET_CHUNK).min(run.end);
                let mut mget = redis::cmd("MGET");
                for &i in &order[chunk.clone()] {
                    mget.arg(key(i as usize));
                }
                nodes[n].1.add_command(mget);
                nodes[n].2.push(chunk);
            }
        }
        let sends = nodes.into_iter().map(|(slot, pipe, runs)| {
            let mut c = self.conn.clone();
            async move {
                let n = pipe.len();
                let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
                c.route_pipeline(pipe, 0, n, route)
                    .await
                    .map(|values| (values, runs))
            }
        });
        let mut alive = vec![false; ids.len()];
        for sent in futures_util::future::join_all(sends).await {
            // A failed node or a stale map: the general path sorts it out.
            let Ok((values, runs)) = sent else {
                *self.owners.lock() = None;
                return None;
            };
            if values.len() != runs.len() {
                return None;
            }
            for (value, run) in values.into_iter().zip(runs) {
                let Value::Array(items) = value else {
                    // MOVED, ASK, TRYAGAIN, CLUSTERDOWN: the map is stale.
                    *self.owners.lock() = None;
                    return None;
                };
                if items.len() != run.len() {
                    return None;
                }
                for (item, &i) in items.iter().zip(&order[run]) {
                    alive[i as usize] = !matches!(item, Value::Nil);
                }
            }
        }
        Some(alive)
    }

    /// Run one group: as one pipeline on its primary; when a reply says the
    /// slot map moved (or the node failed), forget the map and run the
    /// group's commands slot by slot, which redis-rs redirects itself.
    async fn run_group(&self, group: Vec<Unit>) -> redis::RedisResult<Vec<(Unit, Value)>> {
        let mut c = self.conn.clone();
        let mut sub = redis::pipe();
        for u in &group {
            sub.add_command(u.cmd.clone());
        }
        let n = group.len();
        let route = SingleNodeRoutingInfo::SpecificNode(Route::new(group[0].slot, SlotAddr::Master));
        let first = c.route_pipeline(sub, 0, n, route).await;
        let moved = |v: &Value| matches!(v, Value::ServerError(e) if matches!(e.code(), "MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN"));
        match first {
            Ok(values) if values.len() == n && !values.iter().any(moved) => {
                return Ok(group.into_iter().zip(values).collect());
            }
            _ => *self.owners.lock() = None,
        }
        let mut by_slot: HashMap<u16, Vec<Unit>> = HashMap::new();
        for u in group {
            by_slot.entry(u.slot).or_default().push(u);
        }
        let runs = by_slot.into_values().map(|units| {
            let mut c = self.conn.clone();
            async move {
                let mut sub = redis::pipe();
                for u in &units {
                    sub.add_command(u.cmd.clone());
                }
                let n = units.len();
                c.req_packed_commands(&sub, 0, n)
                    .await
                    .map(|values| units.into_iter().zip(values).collect::<Vec<_>>())
            }
        });
        Ok(try_join_all(runs).await?.into_iter().flatten().collect())
    }
}

/// The hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole
/// key, modulo 16384), as Redis Cluster computes it.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|b| *b == b'}')?;
            Some(&key[open + 1..open + 1 + close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % 16384
}

/// Which primary serves each slot.
#[derive(Debug)]
struct Owners {
    /// Primary (index) per slot number; `None` when unassigned.
    node_of: Vec<Option<u16>>,
}

impl Owners {
    /// From a `CLUSTER SLOTS` reply: `[[start, end, [host, port, ..], ..], ..]`.
    fn parse(reply: &Value) -> Option<Self> {
        let Value::Array(ranges) = reply else {
            return None;
        };
        let mut node_of = vec![None; 16384];
        let mut nodes: Vec<(Vec<u8>, i64)> = Vec::new();
        for range in ranges {
            let Value::Array(r) = range else {
                return None;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(primary))) =
                (r.first(), r.get(1), r.get(2))
            else {
                return None;
            };
            let host = match primary.first()? {
                Value::BulkString(h) => h.clone(),
                Value::SimpleString(h) => h.clone().into_bytes(),
                _ => return None,
            };
            let Some(Value::Int(port)) = primary.get(1) else {
                return None;
            };
            let node = match nodes.iter().position(|n| n.0 == host && n.1 == *port) {
                Some(i) => i,
                None => {
                    nodes.push((host, *port));
                    nodes.len() - 1
                }
            };
            for slot in (*start).max(0)..=(*end).min(16383) {
                node_of[slot as usize] = Some(node as u16);
            }
        }
        Some(Self { node_of })
    }
}

/// One single-slot command of a split pipeline, and where its reply goes.
struct Unit {
    cmd: Cmd,
    slot: u16,
    dest: Dest,
}

enum Dest {
    /// The reply of the pipeline's command `i`.
    Whole(usize),
    /// Part of the reply of the `MGET` at `i`: the values at these positions.
    Part(usize, Vec<usize>),
}

/// A multi-slot `MGET` as one `MGET` per slot, with the positions of its keys.
fn split_mget(cmd: &Cmd) -> Option<Vec<(u16, Vec<usize>, Cmd)>> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        _ => None,
    });
    if !args.next()?.eq_ignore_ascii_case(b"MGET") {
        return None;
    }
    let mut pieces: Vec<(u16, Vec<usize>, Cmd)> = Vec::new();
    let mut at: HashMap<u16, usize> = HashMap::new();
    for (pos, key) in args.enumerate() {
        let slot = slot_of(key);
        let i = *at.entry(slot).or_insert_with(|| {
            pieces.push((slot, Vec::new(), redis::cmd("MGET")));
            pieces.len() - 1
        });
        pieces[i].1.push(pos);
        pieces[i].2.arg(key);
    }
    (!pieces.is_empty()).then_some(pieces)
}

/// Units grouped by the primary serving their slot (by slot when the map
/// is unknown), in order within each group.
fn group_units(units: Vec<Unit>, owners: Option<&Owners>) -> Vec<Vec<Unit>> {
    let mut groups: Vec<Vec<Unit>> = Vec::new();
    let mut index: HashMap<(Option<u16>, Option<u16>), usize> = HashMap::new();
    for u in units {
        let n = u.slot;
        let key = match owners.and_then(|o| o.node_of[n as usize]) {
            Some(node) => (Some(node), None),
            None => (None, Some(n)),
        };
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(u);
    }
    groups
}

/// Where a command of a pipeline goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    /// With the other commands of this slot, in one sub-pipeline.
    Slot(u16),
    /// On its own (keys in several slots, or no key): redis-rs routes it.
    Alone,
}

/// The keys of `cmd`, for the commands fleetwire sends.
fn keys_of(cmd: &Cmd) -> Vec<&[u8]> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect();
    let Some(name) = args.first() else {
        return Vec::new();
    };
    let upper = name.to_ascii_uppercase();
    match upper.as_slice() {
        b"MGET" | b"DEL" | b"EXISTS" | b"UNLINK" => args[1..].to_vec(),
        b"EVALSHA" | b"EVAL" => {
            let n = args
                .get(2)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            args.iter().skip(3).take(n).copied().collect()
        }
        b"XREADGROUP" | b"XREAD" => args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
            .and_then(|i| args.get(i + 1))
            .into_iter()
            .copied()
            .collect(),
        b"XINFO" | b"XGROUP" | b"OBJECT" => args.get(2).into_iter().copied().collect(),
        b"PING" | b"WAIT" | b"INFO" | b"CLIENT" | b"SCRIPT" | b"TIME" | b"PUBLISH" => Vec::new(),
        _ => args.get(1).into_iter().copied().collect(),
    }
}

fn part_of(cmd: &Cmd) -> Part {
    let mut slots = keys_of(cmd).into_iter().map(slot_of);
    match slots.next() {
        Some(first) if slots.all(|s| s == first) => Part::Slot(first),
        _ => Part::Alone,
    }
}

impl ConnectionLike for Routed {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let probe = self.probe.clone();
        explained(probe, self.send_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let probe = self.probe.clone();
        explained(probe, self.send_pipeline(pipe, offset, count))
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl Routed {
    fn send_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let publish = cmd
            .args_iter()
            .next()
            .is_some_and(|a| matches!(a, redis::Arg::Simple(n) if n.eq_ignore_ascii_case(b"PUBLISH")));
        if publish {
            // redis-rs would route by channel name; every publish going to one
            // node (slot 0's primary) keeps a publisher's events in order
            // across topics, as on a single server.
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                0,
                SlotAddr::Master,
            )));
            let mut conn = self.conn.clone();
            return Box::pin(async move { conn.route_command(cmd.clone(), route).await });
        }
        // An `MGET` of two or more keys that is not single-slot spans slots
        // (checked without splitting it: that happens once, below).
        let multi_slot_mget = cmd.args_iter().nth(2).is_some()
            && cmd
                .args_iter()
                .next()
                .is_some_and(|a| matches!(a, redis::Arg::Simple(n) if n.eq_ignore_ascii_case(b"MGET")))
            && matches!(part_of(cmd), Part::Alone);
        if multi_slot_mget {
            // One MGET per slot, sent as one pipeline per primary.
            let mut this = self.clone();
            return Box::pin(async move {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd.clone());
                let mut replies = this.send_pipeline(&pipe, 0, 1).await?;
                Ok(replies.pop().unwrap_or(Value::Nil))
            });
        }
        self.conn.req_packed_command(cmd)
    }

    fn send_pipeline<'a>(
        &'a mut self,
        pipe: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let parts: Vec<Part> = pipe.cmd_iter().map(part_of).collect();
        let single = parts.is_empty()
            || parts
                .first()
                .is_some_and(|p| *p != Part::Alone && parts.iter().all(|q| q == p));
        if single || pipe.is_transaction() || offset != 0 || count != pipe.len() {
            return self.conn.req_packed_commands(pipe, offset, count);
        }
        // Single-slot commands, a multi-slot MGET cut into one MGET per slot.
        let mut units: Vec<Unit> = Vec::new();
        let mut alone: Vec<usize> = Vec::new();
        let mut mget_len: HashMap<usize, usize> = HashMap::new();
        for (i, (cmd, part)) in pipe.cmd_iter().zip(&parts).enumerate() {
            match part {
                Part::Slot(slot) => units.push(Unit {
                    cmd: cmd.clone(),
                    slot: *slot,
                    dest: Dest::Whole(i),
                }),
                Part::Alone => match split_mget(cmd) {
                    Some(pieces) => {
                        mget_len.insert(i, pieces.iter().map(|(_, at, _)| at.len()).sum());
                        for (slot, at, cmd) in pieces {
                            units.push(Unit {
                                cmd,
                                slot,
                                dest: Dest::Part(i, at),
                            });
                        }
                    }
                    None => alone.push(i),
                },
            }
        }
        let cmds: Vec<&Cmd> = pipe.cmd_iter().collect();
        let this = self.clone();
        Box::pin(async move {
            let owners = this.owners().await;
            let groups = group_units(units, owners.as_deref());
            let piped = groups.into_iter().map(|group| this.run_group(group));
            let single = alone.into_iter().map(|i| {
                let mut c = this.conn.clone();
                let cmd = cmds[i];
                async move { c.req_packed_command(cmd).await.map(|v| (i, v)) }
            });
            let (piped, single) = futures_util::future::join(try_join_all(piped), try_join_all(single)).await;
            let mut out = vec![Value::Nil; count];
            let mut parts: HashMap<usize, Vec<Value>> = HashMap::new();
            for (unit, value) in piped?.into_iter().flatten() {
                match unit.dest {
                    Dest::Whole(i) => out[i] = value,
                    Dest::Part(i, at) => {
                        let whole = parts.entry(i).or_insert_with(|| vec![Value::Nil; mget_len[&i]]);
                        match value {
                            Value::Array(items) => {
                                for (pos, item) in at.into_iter().zip(items) {
                                    whole[pos] = item;
                                }
                            }
                            // An error reply stands for the whole MGET.
                            other => out[i] = other,
                        }
                    }
                }
            }
            for (i, whole) in parts {
                if matches!(out[i], Value::Nil) {
                    out[i] = Value::Array(whole);
                }
            }
            for (i, v) in single? {
                out[i] = v;
            }
            Ok(out)
        })
    }
}

/// Blocking reads on Cluster: a free list of cluster connections of their own.
pub(crate) struct BlockingCluster {
    client: Box<ClusterClient>,
    idle: Mutex<Vec<Blocker>>,
    max_idle: usize,
    /// One client per seed node, for pub/sub, taken in turn.
    seeds: Vec<redis::Client>,
    next_seed: AtomicUsize,
    /// Over TLS: what explains a failure to find a node (see [`Probe`]).
    probe: Option<Arc<Probe>>,
}

/// A cluster connection for blocking reads, with the `CLIENT ID` of its
/// connection to the primary serving each hash slot it has read from.
struct Blocker {
    conn: ClusterConnection,
    ids: Vec<(u16, u64)>,
}

/// Hash slots whose `CLIENT ID` a blocking connection remembers at most.
const MAX_REMEMBERED_IDS: usize = 64;

impl Blocker {
    /// The `CLIENT ID` on the primary serving `hash_slot`: asked the first
    /// time, then checked by every read (see [`BlockingCluster::query`]).
    async fn client_id(&mut self, hash_slot: u16) -> Result<u64, RedisError> {
        if let Some((_, id)) = self.ids.iter().find(|(s, _)| *s == hash_slot) {
            return Ok(*id);
        }
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("ID");
        let id = redis::from_redis_value(self.conn.route_command(cmd, primary_serving(hash_slot)).await?)?;
        self.remember(hash_slot, id);
        Ok(id)
    }

    fn remember(&mut self, hash_slot: u16, id: u64) {
        self.ids.retain(|(s, _)| *s != hash_slot);
        if self.ids.len() >= MAX_REMEMBERED_IDS {
            self.ids.clear();
        }
        self.ids.push((hash_slot, id));
    }
}

/// Route to the primary serving `hash_slot`.
pub(crate) fn primary_serving(hash_slot: u16) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
        hash_slot,
        SlotAddr::Master,
    )))
}

impl BlockingCluster {
    /// The next seed node's client, in turn (the first one first).
    pub(crate) fn next_seed(&self) -> Option<redis::Client> {
        let n = self.next_seed.fetch_add(1, Ordering::Relaxed);
        self.seeds.get(n % self.seeds.len().max(1)).cloned()
    }

    /// Run `pipe` on a connection of its own, waiting up to `wait`; `None`
    /// when `slot` was cancelled first. The connection's `CLIENT ID` on the
    /// primary serving the pipeline's key (asked once per connection and
    /// hash slot, and checked by every read) goes into `slot`, so a read
    /// abandoned by its caller is unblocked at once. Right after a topology
    /// change the remembered id can be stale for one read: that read then
    /// waits out its block (what it took is released), or the `UNBLOCK`
    /// ends another client's blocking command early, as a timeout would.
    pub(crate) async fn query(
        &self,
        pipe: &Pipeline,
        wait: Duration,
        slot: &CancelSlot,
    ) -> Result<Option<Vec<Value>>, RedisError> {
        let pooled = self.idle.lock().pop();
        let mut b = match pooled {
            Some(b) => b,
            None => match self.client.get_async_connection().await {
                Ok(conn) => Blocker {
                    conn,
                    ids: Vec::new(),
                },
                Err(e) => return Err(self.explain(e).await),
            },
        };
        // Only a read that may be cancelled needs its connection's id.
        let hash_slot = slot
            .cancellable()
            .then(|| {
                pipe.cmd_iter()
                    .find_map(|c| keys_of(c).first().map(|k| slot_of(k)))
            })
            .flatten();
        let entered = match hash_slot {
            Some(hash_slot) => match rt::timeout(wait, b.client_id(hash_slot)).await {
                Ok(Ok(id)) => slot.enter_on(hash_slot, id),
                Ok(Err(e)) => return Err(self.explain(e).await),
                Err(rt::Elapsed) => return Err(no_reply(wait)),
            },
            None => slot.enter(0),
        };
        if !entered {
            self.put_back(b);
            return Ok(None);
        }
        // The read's own `CLIENT ID` rides first in its pipeline (keyless, so
        // the pipeline is still routed by the stream's slot): a remembered id
        // gone stale (the slot moved to another primary, redis-rs replaced
        // the node connection) is corrected for the next read.
        // (The callers' pipelines are plain ones whose last reply is read.)
        debug_assert!(
            !pipe.is_transaction(),
            "a transaction cannot take CLIENT ID first"
        );
        let checked = hash_slot.map(|hash_slot| {
            let mut p = redis::pipe();
            p.cmd("CLIENT").arg("ID");
            for c in pipe.cmd_iter() {
                p.add_command(c.clone());
            }
            (hash_slot, p)
        });
        let sent = checked.as_ref().map_or(pipe, |(_, p)| p);
        let mut out = match rt::timeout(wait, sent.query_async::<Vec<Value>>(&mut b.conn)).await {
            Ok(out) => out,
            Err(rt::Elapsed) => Err(no_reply(wait)),
        };
        if let (Some((hash_slot, _)), Ok(values)) = (&checked, &mut out) {
            if values.is_empty() {
                return Err(no_reply(wait));
            }
            if let Value::Int(id) = values.remove(0) {
                b.remember(*hash_slot, id as u64);
            }
        }
        if out.is_ok() {
            self.put_back(b);
        }
        out.map(Some)
    }

    async fn explain(&self, e: RedisError) -> RedisError {
        match &self.probe {
            Some(probe) => probe.explain(e).await,
            None => e,
        }
    }

    fn put_back(&self, b: Blocker) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(b);
        }
    }
}

fn no_reply(wait: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no reply to a blocking read within {wait:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::{part_of, slot_of, Part, Target};
    use redis::cluster_routing::Slot;

    #[test]
    fn parses_cluster_urls() {
        let t = Target::parse("redis+cluster://:pw@a:1,b:2,c").unwrap().unwrap();
        assert_eq!(
            t.nodes,
            ["redis://:pw@a:1", "redis://:pw@b:2", "redis://:pw@c:6379"]
        );
        assert!(Target::parse("redis://h").unwrap().is_none());
        let t = Target::parse("redis+cluster://a:1/").unwrap().unwrap();
        assert_eq!(t.nodes, ["redis://a:1"]);
    }

    #[test]
    fn rejects_malformed_cluster_urls() {
        for (url, says) in [
            ("redis+cluster://", "empty node address"),
            ("redis+cluster://a:1,,b:2", "empty node address"),
            ("redis+cluster://a:x", "`x` is not a port"),
            ("redis+cluster://a:0", "`0` is not a port"),
            ("redis+cluster://:s3cret@:1", "no host"),
            ("redis+cluster://:s3cret@a:1/2", "database number"),
            ("redis+cluster://a:1?x=1", "query parameters"),
        ] {
            let e = Target::parse(url).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(says), "{url}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn slots_as_redis_computes_them() {
        assert_eq!(slot_of(b"06S"), 0);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"x{foo}y"), 12182);
        for key in [
            "orders",
            "{shop}orders",
            "a{b",
            "a{}b",
            "}{x}",
            "sg:registry:index:{gateway}",
        ] {
            assert_eq!(
                Slot::for_key(key),
                Slot::new(slot_of(key.as_bytes())).unwrap(),
                "{key}"
            );
        }
    }

    #[test]
    fn pipelines_are_split_by_the_slot_of_each_command() {
        let slot = slot_of(b"{a}");
        let mut get = redis::cmd("GET");
        get.arg("x:{a}:1");
        assert_eq!(part_of(&get), Part::Slot(slot));
        let mut mget = redis::cmd("MGET");
        mget.arg("{a}1").arg("{a}2");
        assert_eq!(part_of(&mget), Part::Slot(slot));
        mget.arg("{b}");
        assert_eq!(part_of(&mget), Part::Alone);
        let mut eval = redis::cmd("EVALSHA");
        eval.arg("sha").arg(2).arg("{a}x").arg("{a}y").arg("other");
        assert_eq!(part_of(&eval), Part::Slot(slot));
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("STREAMS")
            .arg("{a}s")
            .arg(">");
        assert_eq!(part_of(&read), Part::Slot(slot));
        let mut info = redis::cmd("XINFO");
        info.arg("GROUPS").arg("{a}s");
        assert_eq!(part_of(&info), Part::Slot(slot));
        assert_eq!(part_of(&redis::cmd("PING")), Part::Alone);
    }
}
