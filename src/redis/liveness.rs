use super::{connection::map_err, keys::Keys, Conn};
use crate::{error::Result, name::InstanceId, ErrorKind, LivenessStore};
use async_trait::async_trait;
use std::{sync::Arc, time::Duration};

/// Keys per `MGET`; larger batches are split and pipelined in one round trip.
const MGET_CHUNK: usize = 10_000;

/// Redis [`LivenessStore`]: one `{ns}:liveness:{id}` key per id with a `PX` TTL.
///
/// `is_alive_batch` is one round trip for any batch size; every failure is
/// reported as [`Unavailable`](crate::ErrorKind::Unavailable) so callers fall back.
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
        true
    }

    async fn touch(&self, id: &InstanceId, ttl: Duration) -> Result<()> {
        redis::cmd("SET")
            .arg(self.keys.liveness(id))
            .arg(1)
            .arg("PX")
            .arg(crate::backend_support::ttl_ms(ttl))
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("liveness touch of `{id}`")))
    }

    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // Any failure means "fall back", whatever redis-rs called it.
        let unavailable =
            |e| map_err(e, format!("liveness check of {} ids", ids.len())).into_kind(ErrorKind::Unavailable);
        let mut conn = self.conn.manager();
        let alive: Vec<bool> = if ids.len() <= MGET_CHUNK {
            let found: Vec<Present> = redis::cmd("MGET")
                .arg(self.keys.liveness_args(ids))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            found.into_iter().map(|p| p.0).collect()
        } else {
            let mut p = redis::pipe();
            for chunk in ids.chunks(MGET_CHUNK) {
                p.cmd("MGET").arg(self.keys.liveness_args(chunk));
            }
            let found: Vec<Vec<Present>> = p.query_async(&mut conn).await.map_err(unavailable)?;
            found.into_iter().flatten().map(|p| p.0).collect()
        };
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
        redis::cmd("DEL")
            .arg(self.keys.liveness(id))
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("liveness forget of `{id}`")))
    }
}
