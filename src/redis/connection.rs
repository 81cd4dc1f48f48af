//! Connections: a self-reconnecting multiplexed connection for ordinary
//! commands, and separate connections for blocking reads so an
//! `XREADGROUP ... BLOCK` never stalls other traffic.
//!
//! On Tokio the blocking connections come from a bb8 pool (bb8 is
//! Tokio-only); on async-std and smol from a small free list of dedicated
//! connections.
//!
//! The registry and liveness store run their commands through
//! [`Conn::run`]: each is bounded by the response timeout, and after a
//! connection-level failure the backend is marked down, so later calls fail
//! at once with a temporary `Unavailable` error instead of each waiting out
//! the timeout, until a background probe gets a `PING` answered (the
//! reference design's `Available()` fallback).

use crate::{
    error::{Error, ErrorKind, Result},
    rt,
};
use parking_lot::Mutex;
use redis::{aio::ConnectionManager, aio::MultiplexedConnection, AsyncConnectionConfig, RedisError};
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst},
        Arc, Weak,
    },
    time::Duration,
};

/// The server error codes in `e`: its own, or each of a pipeline's.
fn server_codes(e: &RedisError) -> Vec<String> {
    if let Some(code) = e.code() {
        return vec![code.to_owned()];
    }
    e.clone()
        .into_server_errors()
        .map(|items| items.iter().map(|(_, s)| s.code().to_owned()).collect())
        .unwrap_or_default()
}

/// Classify a redis-rs error, naming what failed.
pub(crate) fn map_err(e: RedisError, what: impl std::fmt::Display) -> Error {
    let codes = server_codes(&e);
    let has = |wanted: &[&str]| codes.iter().any(|c| wanted.contains(&c.as_str()));
    // Some replies (errors inside a script's reply, say) only name the code in their text.
    let message = e.to_string().to_ascii_lowercase();
    let kind = if is_tls_failure(&e) {
        ErrorKind::Tls
    } else if has(&["NOAUTH", "WRONGPASS"]) || e.kind() == redis::ErrorKind::AuthenticationFailed {
        ErrorKind::Authentication
    } else if has(&["NOGROUP"]) || message.contains("nogroup") || message.contains("no such key") {
        ErrorKind::NotFound
    } else if has(&["WRONGTYPE", "CROSSSLOT"]) || message.contains("wrongtype") {
        ErrorKind::InvalidInput
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if is_connection_failure(&e)
        || has(&[
            "LOADING",
            "TRYAGAIN",
            "MASTERDOWN",
            "CLUSTERDOWN",
            "MOVED",
            "ASK",
            "READONLY",
            "BUSY",
            // Out of memory: writes fail until memory is freed or the limit raised.
            "OOM",
        ])
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Protocol
    };
    Error::new(kind, format!("{what} failed")).with_source(e)
}

/// Whether a TLS handshake failed (a certificate was rejected): not a
/// connection failure to wait out.
#[cfg(feature = "redis-tls")]
pub(crate) fn is_tls_failure(e: &RedisError) -> bool {
    super::tls::tls_failure(e).is_some()
}

#[cfg(not(feature = "redis-tls"))]
pub(crate) fn is_tls_failure(_: &RedisError) -> bool {
    false
}

/// Whether `e` says the server could not be reached or stopped answering
/// (as opposed to an answer that was an error).
fn is_connection_failure(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        // A cluster client with no node it can reach.
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
}

/// The shared connection for ordinary commands: one self-reconnecting
/// multiplexed connection, or (on Redis Cluster) a cluster connection that
/// routes each command to the node owning its slot.
#[derive(Clone)]
pub(crate) enum Shared {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(super::cluster::Routed),
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(_) => f.write_str("Single"),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

impl redis::aio::ConnectionLike for Shared {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipe, offset, count),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.req_packed_commands(pipe, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Where blocking reads get their connection.
pub(crate) enum Blocking {
    #[cfg(feature = "rt-tokio")]
    Pool(bb8::Pool<BlockingManager>, TlsFailures),
    Dedicated {
        // Boxed: with TLS parameters a client is ~280 bytes, the pool 8.
        client: Box<redis::Client>,
        idle: Mutex<Vec<Dedicated>>,
        max_idle: usize,
    },
    /// Cluster connections of their own, one per blocking read at a time.
    #[cfg(feature = "redis-cluster")]
    Cluster(super::cluster::BlockingCluster),
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "rt-tokio")]
            Self::Pool(p, _) => f.debug_tuple("Pool").field(&p.state().connections).finish(),
            Self::Dedicated { max_idle, .. } => {
                f.debug_struct("Dedicated").field("max_idle", max_idle).finish()
            }
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => f.write_str("Cluster"),
        }
    }
}

/// A connection for blocking reads, with its server-side `CLIENT ID` so a
/// read abandoned by its caller can be unblocked.
pub(crate) struct Dedicated {
    conn: MultiplexedConnection,
    client_id: u64,
}

impl Dedicated {
    async fn open(client: &redis::Client) -> Result<Self, RedisError> {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new())
            .await?;
        let client_id = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
        Ok(Self { conn, client_id })
    }
}

/// Shared between a blocking read and its caller: the caller marks it
/// cancelled when it stops waiting; the read publishes which connection it is
/// blocked on. Both sides use `SeqCst`, so either the read sees the
/// cancellation before it sends, or the caller sees the client id and unblocks it.
#[derive(Debug, Default)]
pub(crate) struct CancelSlot {
    cancelled: AtomicBool,
    client_id: AtomicU64,
    /// On Cluster: the hash slot whose primary serves the read, plus one
    /// (0: not on Cluster). Stored before `client_id`.
    hash_slot: AtomicU32,
    /// Nobody will cancel this call (it has no unblocking guard), so the
    /// read need not learn its connection's id.
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    uncancellable: bool,
}

/// Which connection a cancelled blocking read is blocked on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockedOn {
    pub(crate) client_id: u64,
    /// On Cluster, the hash slot whose primary holds the connection.
    pub(crate) hash_slot: Option<u16>,
}

impl CancelSlot {
    /// A slot for a call no guard will cancel (a publish waiting on `WAIT`).
    pub(crate) fn uncancellable() -> Self {
        Self {
            uncancellable: true,
            ..Self::default()
        }
    }

    /// Whether a caller may cancel the call and unblock its connection.
    #[cfg(feature = "redis-cluster")]
    pub(crate) fn cancellable(&self) -> bool {
        !self.uncancellable
    }

    /// Mark cancelled; the connection to unblock, if one is in use.
    pub(crate) fn cancel(&self) -> Option<BlockedOn> {
        self.cancelled.store(true, SeqCst);
        let client_id = Some(self.client_id.load(SeqCst)).filter(|id| *id != 0)?;
        let hash_slot = self.hash_slot.load(SeqCst).checked_sub(1).map(|s| s as u16);
        Some(BlockedOn { client_id, hash_slot })
    }

    /// Publish `client_id`; false when the caller already stopped waiting.
    pub(crate) fn enter(&self, client_id: u64) -> bool {
        self.client_id.store(client_id, SeqCst);
        !self.cancelled.load(SeqCst)
    }

    /// [`enter`](Self::enter) for a connection to the primary serving `hash_slot`.
    #[cfg(feature = "redis-cluster")]
    pub(crate) fn enter_on(&self, hash_slot: u16, client_id: u64) -> bool {
        self.hash_slot.store(u32::from(hash_slot) + 1, SeqCst);
        self.enter(client_id)
    }
}

/// bb8 manager whose connections are dropped once a command on them failed,
/// so a checkout needs no `PING` round trip.
#[cfg(feature = "rt-tokio")]
pub(crate) struct BlockingManager(pub(crate) redis::Client);

#[cfg(feature = "rt-tokio")]
pub(crate) struct PooledConn {
    inner: Dedicated,
    broken: bool,
}

#[cfg(feature = "rt-tokio")]
impl bb8::ManageConnection for BlockingManager {
    type Connection = PooledConn;
    type Error = RedisError;

    async fn connect(&self) -> Result<PooledConn, RedisError> {
        Ok(PooledConn {
            inner: Dedicated::open(&self.0).await?,
            broken: false,
        })
    }

    async fn is_valid(&self, c: &mut PooledConn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut c.inner.conn).await
    }

    fn has_broken(&self, c: &mut PooledConn) -> bool {
        c.broken
    }
}

/// Where the pool reports a connection attempt that failed its TLS handshake.
///
/// bb8 keeps retrying a failed connect until its timeout and then says only
/// "timed out"; a rejected certificate will not get better, so a waiting
/// checkout is woken with the TLS error itself instead.
#[cfg(feature = "rt-tokio")]
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFailures(Arc<TlsFailuresInner>);

#[cfg(feature = "rt-tokio")]
#[derive(Debug, Default)]
pub(crate) struct TlsFailuresInner {
    last: Mutex<Option<RedisError>>,
    event: event_listener::Event,
}

#[cfg(feature = "rt-tokio")]
impl bb8::ErrorSink<RedisError> for TlsFailures {
    fn sink(&self, error: RedisError) {
        if is_tls_failure(&error) {
            *self.0.last.lock() = Some(error);
            self.0.event.notify(usize::MAX);
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
        Box::new(self.clone())
    }
}

impl Blocking {
    pub(crate) fn new(client: &redis::Client, pool_size: u32, connect_timeout: Duration) -> Self {
        #[cfg(feature = "rt-tokio")]
        if crate::rt::Runtime::current() == crate::rt::Runtime::Tokio {
            let tls_failures = TlsFailures::default();
            let pool = bb8::Pool::builder()
                .error_sink(Box::new(tls_failures.clone()))
                .max_size(pool_size.max(1))
                .test_on_check_out(false)
                // bb8 panics on a zero timeout.
                .connection_timeout(connect_timeout.max(Duration::from_millis(1)))
                .build_unchecked(BlockingManager(client.clone()));
            return Self::Pool(pool, tls_failures);
        }
        let _ = connect_timeout;
        Self::Dedicated {
            client: Box::new(client.clone()),
            idle: Mutex::new(Vec::new()),
            max_idle: pool_size.max(1) as usize,
        }
    }

    /// Run `pipe` on a blocking connection that waits up to `wait` for the
    /// reply; `None` when `slot` was cancelled before anything was sent.
    pub(crate) async fn query(
        &self,
        pipe: &redis::Pipeline,
        wait: Duration,
        slot: &CancelSlot,
    ) -> Result<Option<Vec<redis::Value>>, RedisError> {
        match self {
            #[cfg(feature = "rt-tokio")]
            Self::Pool(pool, tls_failures) => {
                // Listen before asking, so a failure during the checkout is not missed.
                let tls_failed = tls_failures.0.event.listen();
                let checkout = std::pin::pin!(pool.get());
                let got = match futures_util::future::select(checkout, tls_failed).await {
                    futures_util::future::Either::Left((got, _)) => got,
                    futures_util::future::Either::Right(((), checkout)) => {
                        let failure = tls_failures.0.last.lock().clone();
                        match failure {
                            Some(e) => return Err(e),
                            None => checkout.await,
                        }
                    }
                };
                let mut c = got.map_err(|e| match e {
                    bb8::RunError::User(e) => e,
                    bb8::RunError::TimedOut => RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no pooled connection in time",
                    )),
                })?;
                if !slot.enter(c.inner.client_id) {
                    return Ok(None);
                }
                c.inner.conn.set_response_timeout(wait);
                let out = pipe.query_async(&mut c.inner.conn).await;
                c.broken = out.is_err();
                out.map(Some)
            }
            Self::Dedicated {
                client,
                idle,
                max_idle,
            } => {
                let pooled = idle.lock().pop();
                let mut d = match pooled {
                    Some(d) => d,
                    None => Dedicated::open(client).await?,
                };
                if !slot.enter(d.client_id) {
                    return Ok(None);
                }
                d.conn.set_response_timeout(wait);
                let out = pipe.query_async(&mut d.conn).await;
                if out.is_ok() {
                    let mut idle = idle.lock();
                    if idle.len() < *max_idle {
                        idle.push(d);
                    }
                }
                out.map(Some)
            }
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.query(pipe, wait, slot).await,
        }
    }
}

/// The server a backend talks to: its client, the shared multiplexed
/// connection and the blocking-read connections, replaced together when a
/// Sentinel names a new primary.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) client: redis::Client,
    pub(crate) manager: Shared,
    pub(crate) blocking: Blocking,
}

/// The connection settings of a backend, from its builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) pool_size: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) probe_every: Duration,
}

impl Endpoint {
    /// Connections to `client`'s server, made lazily on first use.
    pub(crate) fn new(client: redis::Client, s: &Settings, redacted_url: &str) -> Result<Self> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(s.connect_timeout))
            .set_response_timeout(Some(s.response_timeout))
            .set_number_of_retries(2)
            // Short: the probe waits out a reconnect's back-off before it sees Redis back.
            .set_max_delay(Duration::from_millis(250));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| map_err(e, format!("connect to `{redacted_url}`")))?;
        let blocking = Blocking::new(&client, s.pool_size, s.connect_timeout);
        Ok(Self {
            client,
            manager: Shared::Single(manager),
            blocking,
        })
    }
}

impl Endpoint {
    /// The client a new pub/sub connection uses: the server's, or on
    /// Cluster the next seed node in turn, so a subscription that lost its
    /// node resubscribes on another.
    pub(crate) fn pubsub_client(&self) -> redis::Client {
        #[cfg(feature = "redis-cluster")]
        if let Blocking::Cluster(c) = &self.blocking {
            return c.next_seed().unwrap_or_else(|| self.client.clone());
        }
        self.client.clone()
    }
}

/// The shared connection state of one backend.
pub(crate) struct Conn {
    /// Swapped only by a Sentinel follower; a load is a few atomic operations
    /// and no lock, so the publish path pays nothing for failover support.
    pub(crate) endpoint: arc_swap::ArcSwap<Endpoint>,
    pub(crate) response_timeout: Duration,
    pub(crate) redacted_url: String,
    pub(crate) health: Health,
    /// Notified when a call found the server gone or read-only, so a
    /// Sentinel follower asks for the primary at once.
    pub(crate) suspect: event_listener::Event,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.redacted_url)
            .field("available", &self.available())
            .field("blocking", &self.endpoint.load().blocking)
            .finish()
    }
}

/// Whether the server answers, as the last ordinary command and the probe saw it.
#[derive(Debug)]
pub(crate) struct Health {
    down: AtomicBool,
    probing: AtomicBool,
    probe_every: Duration,
    /// What the failure that marked the server down said (no secrets: a
    /// redis-rs error never quotes the URL).
    last_failure: Mutex<String>,
}

impl Health {
    pub(crate) fn new(probe_every: Duration) -> Self {
        Self {
            down: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            probe_every,
            last_failure: Mutex::new(String::new()),
        }
    }
}

/// The error of a call made while the server is marked down.
#[derive(Debug)]
struct MarkedDown(String);

impl std::fmt::Display for MarkedDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Redis is unavailable (last failure: {}); calls fail fast until a background probe gets an answer",
            self.0
        )
    }
}

impl std::error::Error for MarkedDown {}

/// A reply that did not come within the response timeout.
#[derive(Debug)]
struct NoReply(Duration);

impl std::fmt::Display for NoReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no reply from Redis within {:?}", self.0)
    }
}

impl std::error::Error for NoReply {}

impl Conn {
    pub(crate) fn new(endpoint: Endpoint, s: Settings, redacted_url: String) -> Arc<Self> {
        Arc::new(Self {
            endpoint: arc_swap::ArcSwap::from_pointee(endpoint),
            response_timeout: s.response_timeout,
            redacted_url,
            health: Health::new(s.probe_every),
            suspect: event_listener::Event::new(),
        })
    }

    pub(crate) fn manager(&self) -> Shared {
        self.endpoint.load().manager.clone()
    }

    /// The current endpoint (its blocking connections, its client).
    pub(crate) fn current(&self) -> Arc<Endpoint> {
        self.endpoint.load_full()
    }

    /// False from a connection-level failure of an ordinary command until
    /// the background probe gets a `PING` answered.
    pub(crate) fn available(&self) -> bool {
        !self.health.down.load(SeqCst)
    }

    /// Run one ordinary command (or pipeline) for `what`: at once a
    /// temporary `Unavailable` error while the server is marked down;
    /// otherwise the reply, waited for at most the response timeout.
    ///
    /// # Cancel safety
    /// Dropping the future drops the command's reply; nothing else changes.
    pub(crate) async fn run<T>(
        self: &Arc<Self>,
        what: impl FnOnce() -> String,
        command: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T> {
        if !self.available() {
            let last = self.health.last_failure.lock().clone();
            return Err(Error::unavailable(format!("{} failed", what())).with_source(MarkedDown(last)));
        }
        match rt::timeout(self.response_timeout, command).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // A rejected certificate is no outage: every call keeps
                // reporting it as such instead of "unavailable".
                if is_connection_failure(&e) && !is_tls_failure(&e) {
                    self.mark_down(e.to_string());
                } else if server_codes(&e)
                    .iter()
                    .any(|c| c == "READONLY" || c == "MASTERDOWN")
                {
                    // A demoted primary: whoever follows the Sentinels re-asks now.
                    self.suspect.notify(usize::MAX);
                }
                Err(map_err(e, what()))
            }
            Err(rt::Elapsed) => {
                let e = NoReply(self.response_timeout);
                self.mark_down(e.to_string());
                Err(Error::new(ErrorKind::Timeout, format!("{} failed", what())).with_source(e))
            }
        }
    }

    /// Mark the server down and make sure a probe is running.
    pub(crate) fn mark_down(self: &Arc<Self>, why: String) {
        let h = &self.health;
        self.suspect.notify(usize::MAX);
        *h.last_failure.lock() = why;
        if !h.down.swap(true, SeqCst) {
            tracing::warn!(
                event = "redis_unavailable",
                url = %self.redacted_url,
                error = %h.last_failure.lock(),
                "Redis did not answer: registry and liveness calls fail fast until it does"
            );
        }
        // The probe clears `probing` before `down`, so a failure racing with
        // its success either sees `probing` false and starts a new probe, or
        // is overwritten by a success that came after it was sent.
        if !h.probing.swap(true, SeqCst) {
            rt::spawn_detached(probe(Arc::downgrade(self), h.probe_every));
        }
    }
}

/// `PING` every `every` until answered, then mark the server up. Ends when
/// the backend is dropped.
async fn probe(conn: Weak<Conn>, every: Duration) {
    let mut attempts = 0u64;
    loop {
        rt::sleep(every).await;
        let Some(conn) = conn.upgrade() else {
            return;
        };
        attempts += 1;
        // Through the shared connection: an answer proves the very
        // connection later calls use has been re-established.
        let (mut manager, ping) = (conn.manager(), redis::cmd("PING"));
        if let Ok(Ok(())) = rt::timeout(conn.response_timeout, ping.query_async::<()>(&mut manager)).await {
            conn.health.probing.store(false, SeqCst);
            conn.health.down.store(false, SeqCst);
            tracing::info!(
                event = "redis_available",
                url = %conn.redacted_url,
                probes = attempts,
                "Redis answers again"
            );
            return;
        }
    }
}

pub(crate) use crate::redact::redact;
