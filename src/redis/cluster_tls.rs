//! Why a Cluster over TLS finds no node: redis-rs's cluster client reports
//! a rejected certificate as "no connection found", which reads as an
//! outage. [`Probe`] connects on its own to a seed, and through the first
//! seed that accepts it to a primary at the address the slot map gives (the
//! name a certificate most often fails to carry), and returns the TLS
//! failure it meets instead.

use super::{
    cluster::{seed_client, Certs},
    connection::is_tls_failure,
};
use crate::rt;
use parking_lot::Mutex;
use redis::{RedisError, Value};
use std::time::{Duration, Instant};

/// How long a verdict stands, so an outage costs one probe a second.
const VERDICT_LASTS: Duration = Duration::from_secs(1);

pub(crate) struct Probe {
    seeds: Vec<redis::Client>,
    certs: Certs,
    within: Duration,
    /// When the last probe ran, and the TLS failure it found (if any).
    last: Mutex<Option<(Instant, Option<RedisError>)>>,
}

impl Probe {
    pub(crate) fn new(seeds: Vec<redis::Client>, certs: Certs, within: Duration) -> Self {
        Self {
            seeds,
            certs,
            within,
            last: Mutex::new(None),
        }
    }

    /// `e`, or the TLS failure behind it.
    pub(crate) async fn explain(&self, e: RedisError) -> RedisError {
        let not_found = e.kind() == redis::ErrorKind::ClusterConnectionNotFound || e.is_io_error();
        if !not_found || is_tls_failure(&e) {
            return e;
        }
        if let Some((at, verdict)) = &*self.last.lock() {
            if at.elapsed() < VERDICT_LASTS {
                return verdict.clone().unwrap_or(e);
            }
        }
        let verdict = rt::timeout(self.within * 2, self.tls_failure())
            .await
            .ok()
            .flatten();
        *self.last.lock() = Some((Instant::now(), verdict.clone()));
        verdict.unwrap_or(e)
    }

    /// The TLS failure of a seed, or of a primary named by the first seed
    /// that accepts the connection; `None` when TLS is not the problem.
    async fn tls_failure(&self) -> Option<RedisError> {
        for seed in &self.seeds {
            let mut conn = match rt::timeout(self.within, seed.get_multiplexed_async_connection()).await {
                Ok(Err(e)) if is_tls_failure(&e) => return Some(e),
                Ok(Ok(conn)) => conn,
                _ => continue,
            };
            let mut ask = redis::cmd("CLUSTER");
            ask.arg("SLOTS");
            let slots: Value = rt::timeout(self.within, ask.query_async(&mut conn))
                .await
                .ok()?
                .ok()?;
            let (host, port) = first_primary(&slots)?;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            let primary = seed_client(&format!("rediss://{host}:{port}"), &self.certs).ok()?;
            return match rt::timeout(self.within, primary.get_multiplexed_async_connection()).await {
                Ok(Err(e)) if is_tls_failure(&e) => Some(e),
                _ => None,
            };
        }
        None
    }
}

/// The address of the first range's primary in a `CLUSTER SLOTS` reply.
fn first_primary(slots: &Value) -> Option<(String, u16)> {
    let Value::Array(ranges) = slots else {
        return None;
    };
    let Value::Array(range) = ranges.first()? else {
        return None;
    };
    let Value::Array(primary) = range.get(2)? else {
        return None;
    };
    let host = match primary.first()? {
        Value::BulkString(h) => String::from_utf8(h.clone()).ok()?,
        Value::SimpleString(h) => h.clone(),
        _ => return None,
    };
    let Value::Int(port) = primary.get(1)? else {
        return None;
    };
    Some((host, u16::try_from(*port).ok()?))
}
