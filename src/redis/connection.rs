//! Connections: a self-reconnecting multiplexed connection for ordinary
//! commands, and separate connections for blocking reads so an
//! `XREADGROUP ... BLOCK` never stalls other traffic.
//!
//! On Tokio the blocking connections come from a bb8 pool (bb8 is
//! Tokio-only); on async-std and smol from a small free list of dedicated
//! connections.

use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use redis::{aio::ConnectionManager, aio::MultiplexedConnection, AsyncConnectionConfig, RedisError};
use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst},
    time::Duration,
};

/// Classify a redis-rs error, naming what failed.
pub(crate) fn map_err(e: RedisError, what: impl std::fmt::Display) -> Error {
    let code = e.code().unwrap_or_default();
    // Pipelined errors carry no `detail()`; the message always names the cause.
    let message = e.to_string().to_ascii_lowercase();
    let kind = if code == "NOGROUP" || message.contains("nogroup") || message.contains("no such key") {
        ErrorKind::NotFound
    } else if code == "WRONGTYPE" || message.contains("wrongtype") {
        ErrorKind::InvalidInput
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            code,
            "LOADING" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" | "READONLY" | "BUSY"
        )
    {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Protocol
    };
    Error::new(kind, format!("{what} failed")).with_source(e)
}

/// Where blocking reads get their connection.
pub(crate) enum Blocking {
    #[cfg(feature = "rt-tokio")]
    Pool(bb8::Pool<BlockingManager>),
    Dedicated {
        client: redis::Client,
        idle: Mutex<Vec<Dedicated>>,
        max_idle: usize,
    },
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            #[cfg(feature = "rt-tokio")]
            Self::Pool(p) => f.debug_tuple("Pool").field(&p.state().connections).finish(),
            Self::Dedicated { max_idle, .. } => {
                f.debug_struct("Dedicated").field("max_idle", max_idle).finish()
            }
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
}

impl CancelSlot {
    /// Mark cancelled; the id of the connection to unblock, if one is in use.
    pub(crate) fn cancel(&self) -> Option<u64> {
        self.cancelled.store(true, SeqCst);
        Some(self.client_id.load(SeqCst)).filter(|id| *id != 0)
    }

    /// Publish `client_id`; false when the caller already stopped waiting.
    fn enter(&self, client_id: u64) -> bool {
        self.client_id.store(client_id, SeqCst);
        !self.cancelled.load(SeqCst)
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

impl Blocking {
    pub(crate) fn new(client: &redis::Client, pool_size: u32, connect_timeout: Duration) -> Self {
        #[cfg(feature = "rt-tokio")]
        if crate::rt::Runtime::current() == crate::rt::Runtime::Tokio {
            let pool = bb8::Pool::builder()
                .max_size(pool_size.max(1))
                .test_on_check_out(false)
                .connection_timeout(connect_timeout)
                .build_unchecked(BlockingManager(client.clone()));
            return Self::Pool(pool);
        }
        let _ = connect_timeout;
        Self::Dedicated {
            client: client.clone(),
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
            Self::Pool(pool) => {
                let mut c = pool.get().await.map_err(|e| match e {
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
        }
    }
}

/// The shared connection state of one backend.
pub(crate) struct Conn {
    pub(crate) client: redis::Client,
    pub(crate) manager: ConnectionManager,
    pub(crate) blocking: Blocking,
    pub(crate) response_timeout: Duration,
    pub(crate) redacted_url: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("url", &self.redacted_url)
            .field("blocking", &self.blocking)
            .finish()
    }
}

impl Conn {
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }
}

/// `url` with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(super::redact("rediss://me:p@ss@h"), "rediss://me:***@h");
        assert_eq!(super::redact("redis://h:6379"), "redis://h:6379");
    }
}
