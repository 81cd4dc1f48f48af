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
use std::time::Duration;

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
        idle: Mutex<Vec<MultiplexedConnection>>,
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

/// bb8 manager whose connections are dropped once a command on them failed,
/// so a checkout needs no `PING` round trip.
#[cfg(feature = "rt-tokio")]
pub(crate) struct BlockingManager(pub(crate) redis::Client);

#[cfg(feature = "rt-tokio")]
pub(crate) struct PooledConn {
    conn: MultiplexedConnection,
    broken: bool,
}

#[cfg(feature = "rt-tokio")]
impl bb8::ManageConnection for BlockingManager {
    type Connection = PooledConn;
    type Error = RedisError;

    async fn connect(&self) -> Result<PooledConn, RedisError> {
        let conn = self
            .0
            .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new())
            .await?;
        Ok(PooledConn { conn, broken: false })
    }

    async fn is_valid(&self, c: &mut PooledConn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut c.conn).await
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

    /// Run `cmd` on a blocking connection that waits up to `wait` for the reply.
    pub(crate) async fn query(&self, cmd: &redis::Cmd, wait: Duration) -> Result<redis::Value, RedisError> {
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
                c.conn.set_response_timeout(wait);
                let out = cmd.query_async(&mut c.conn).await;
                c.broken = out.is_err();
                out
            }
            Self::Dedicated {
                client,
                idle,
                max_idle,
            } => {
                let pooled = idle.lock().pop();
                let mut conn = match pooled {
                    Some(c) => c,
                    None => {
                        client
                            .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new())
                            .await?
                    }
                };
                conn.set_response_timeout(wait);
                let out = cmd.query_async(&mut conn).await;
                if out.is_ok() {
                    let mut idle = idle.lock();
                    if idle.len() < *max_idle {
                        idle.push(conn);
                    }
                }
                out
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
