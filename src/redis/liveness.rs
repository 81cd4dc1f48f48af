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
        let mut p = redis::pipe();
        for chunk in ids.chunks(MGET_CHUNK) {
            p.cmd("MGET")
                .arg(chunk.iter().map(|id| self.keys.liveness(id)).collect::<Vec<_>>());
        }
        let values: Vec<Vec<redis::Value>> = p.query_async(&mut self.conn.manager()).await.map_err(|e| {
            let e = map_err(e, format!("liveness check of {} ids", ids.len()));
            crate::Error::new(ErrorKind::Unavailable, e.to_string()).with_source(e)
        })?;
        let alive: Vec<bool> = values
            .into_iter()
            .flatten()
            .map(|v| !matches!(v, redis::Value::Nil))
            .collect();
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
