use super::{keys::Keys, Conn};
use crate::{error::Result, name::InstanceId, registry::MAX_TTL, ErrorKind, LivenessStore};
use async_trait::async_trait;
use std::{sync::Arc, time::Duration};

/// Keys per `MGET`; larger batches are split and pipelined in one round trip.
const MGET_CHUNK: usize = 10_000;

/// Redis [`LivenessStore`]: one `{ns}:liveness:{id}` key per id holding `1`
/// with a `PX` TTL (the prefix is configurable with
/// [`liveness_key_prefix`](super::RedisBackendBuilder::liveness_key_prefix),
/// e.g. `mul:runtime:hb:` to share keys with the reference Go store).
///
/// `is_alive_batch` is one round trip for any batch size; every failure but
/// refused credentials ([`Authentication`](crate::ErrorKind::Authentication))
/// is reported as [`Unavailable`](crate::ErrorKind::Unavailable) so callers fall back.
/// [`available`](LivenessStore::available) turns false after a connection-level
/// failure, and calls fail fast, until Redis answers a background probe again.
#[derive(Debug, Clone)]
pub struct RedisLiveness {
    conn: Arc<Conn>,
    keys: Keys,
}

impl RedisLiveness {
    pub(crate) fn new(conn: Arc<Conn>, keys: Keys) -> Self {
        Self { conn, keys }
    }
}

/// Whether an `MGET` slot held a value; the value itself is not kept.
struct Present(bool);

impl redis::FromRedisValue for Present {
    fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
        Ok(Self(!matches!(v, redis::Value::Nil)))
    }
}

#[async_trait]
impl LivenessStore for RedisLiveness {
    fn available(&self) -> bool {
        self.conn.available()
    }

    async fn touch(&self, id: &InstanceId, ttl: Duration) -> Result<()> {
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || format!("liveness touch of `{id}`"),
                redis::cmd("SET")
                    .arg(self.keys.liveness(id))
                    .arg(1)
                    .arg("PX")
                    .arg(crate::clock::ttl_ms(ttl.min(MAX_TTL)))
                    .query_async::<()>(&mut conn),
            )
            .await
    }

    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let what = || format!("liveness check of {} ids", ids.len());
        let mut conn = self.conn.manager();
        // On Cluster, over many slots: one pipeline per primary (None when
        // the slot map needs the general path below).
        #[cfg(feature = "redis-cluster")]
        let fast = match &conn {
            super::connection::Shared::Cluster(routed) if ids.len() > 1 => {
                let exist = routed.exist(self.keys.liveness_prefix(), ids);
                self.conn
                    .run(what, async { Ok::<_, redis::RedisError>(exist.await) })
                    .await
                    .transpose()
            }
            _ => None,
        };
        #[cfg(not(feature = "redis-cluster"))]
        let fast = None;
        let alive: Result<Vec<bool>> = if let Some(fast) = fast {
            fast
        } else if ids.len() <= MGET_CHUNK {
            let mut mget = redis::cmd("MGET");
            mget.arg(self.keys.liveness_args(ids));
            self.conn
                .run(what, mget.query_async::<Vec<Present>>(&mut conn))
                .await
                .map(|found| found.into_iter().map(|p| p.0).collect())
        } else {
            let mut p = redis::pipe();
            for chunk in ids.chunks(MGET_CHUNK) {
                p.cmd("MGET").arg(self.keys.liveness_args(chunk));
            }
            self.conn
                .run(what, p.query_async::<Vec<Vec<Present>>>(&mut conn))
                .await
                .map(|found| found.into_iter().flatten().map(|p| p.0).collect())
        };
        // Any failure means "fall back", whatever redis-rs called it; only
        // refused credentials keep their kind: retrying will not help.
        let alive = alive.map_err(|e| match e.kind() {
            ErrorKind::Authentication => e,
            _ => e.into_kind(ErrorKind::Unavailable),
        })?;
        if alive.len() != ids.len() {
            return Err(crate::Error::new(
                ErrorKind::Unavailable,
                format!(
                    "liveness check asked {} ids, Redis answered {}",
                    ids.len(),
                    alive.len()
                ),
            ));
        }
        Ok(alive)
    }

    async fn forget(&self, id: &InstanceId) -> Result<()> {
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || format!("liveness forget of `{id}`"),
                redis::cmd("DEL")
                    .arg(self.keys.liveness(id))
                    .query_async::<()>(&mut conn),
            )
            .await
    }
}
