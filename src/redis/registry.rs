use super::{connection::map_err, keys::Keys, Conn};
use crate::{
    error::Result,
    name::{InstanceId, ServiceName},
    Capabilities, Instance, RegistryStore,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

/// Keys per `MGET` when listing; the chunks go out in one pipeline.
const MGET_CHUNK: usize = 1000;

/// Drops ids whose instance key is gone from a service's index, atomically,
/// so an instance that re-registers meanwhile is never dropped by mistake.
const PRUNE: &str = r"
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SREM', KEYS[1], ARGV[i - 1])
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
";

/// Redis [`RegistryStore`].
///
/// Each instance is `{ns}:registry:service:{name}:{id}` holding its JSON,
/// with a millisecond TTL, exactly as the reference design writes it. Beside
/// it, a per-service index set (`{ns}:registry:index:{name}`) written in the
/// same round trip lets `list` read instances without scanning the keyspace:
/// three round trips whatever the fleet size. Keys written by older services
/// with a plain `SET ... EX` are found by a `SCAN` at most once per
/// `legacy_scan_every` and added to the index.
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    conn: Arc<Conn>,
    keys: Keys,
    legacy_scan_every: Option<Duration>,
    last_scan: Arc<Mutex<Option<Instant>>>,
    prune: Arc<redis::Script>,
}

impl RedisRegistry {
    pub(crate) fn new(conn: Arc<Conn>, keys: Keys, legacy_scan_every: Option<Duration>) -> Self {
        Self {
            conn,
            keys,
            legacy_scan_every,
            last_scan: Default::default(),
            prune: Arc::new(redis::Script::new(PRUNE)),
        }
    }

    async fn adopt_legacy_keys(&self, conn: &mut ConnectionManager) -> Result<()> {
        let Some(every) = self.legacy_scan_every else {
            return Ok(());
        };
        if self.last_scan.lock().is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        let pattern = self.keys.instance_scan_pattern();
        let mut cursor = 0u64;
        let mut found = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await
                .map_err(|e| map_err(e, "scan registry keys"))?;
            found.extend(keys.iter().filter_map(|k| self.keys.parse_instance(k)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if !found.is_empty() {
            let mut p = redis::pipe();
            for (s, i) in &found {
                p.cmd("SADD").arg(self.keys.index(s)).arg(i.as_str()).ignore();
                p.cmd("SADD").arg(self.keys.services()).arg(s.as_str()).ignore();
            }
            p.query_async::<()>(conn)
                .await
                .map_err(|e| map_err(e, "index registry keys"))?;
        }
        *self.last_scan.lock() = Some(Instant::now());
        Ok(())
    }

    async fn prune(
        &self,
        conn: &mut ConnectionManager,
        service: &ServiceName,
        ids: &[InstanceId],
    ) -> Result<()> {
        let mut inv = self.prune.key(self.keys.index(service));
        inv.key(self.keys.services()).arg(service.as_str());
        for id in ids {
            inv.key(self.keys.instance(service, id)).arg(id.as_str());
        }
        inv.invoke_async::<()>(conn)
            .await
            .map_err(|e| map_err(e, format!("prune registry index of `{service}`")))
    }
}

#[async_trait]
impl RegistryStore for RedisRegistry {
    async fn register(&self, instance: &Instance, ttl: Duration) -> Result<()> {
        let (s, i) = (&instance.service, &instance.id);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.instance(s, i))
            .arg(instance.to_json())
            .arg("PX")
            .arg(crate::backend_support::ttl_ms(ttl))
            .ignore()
            .cmd("SADD")
            .arg(self.keys.index(s))
            .arg(i.as_str())
            .ignore()
            .cmd("SADD")
            .arg(self.keys.services())
            .arg(s.as_str())
            .ignore()
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("register `{s}`/`{i}`")))
    }

    async fn heartbeat(&self, service: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool> {
        redis::cmd("PEXPIRE")
            .arg(self.keys.instance(service, id))
            .arg(crate::backend_support::ttl_ms(ttl))
            .query_async(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("heartbeat `{service}`/`{id}`")))
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()> {
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.keys.instance(service, id))
            .ignore()
            .cmd("SREM")
            .arg(self.keys.index(service))
            .arg(id.as_str())
            .ignore()
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, format!("deregister `{service}`/`{id}`")))
    }

    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        let mut conn = self.conn.manager();
        self.adopt_legacy_keys(&mut conn).await?;
        let services: Vec<ServiceName> = match service {
            Some(s) => vec![s.clone()],
            None => {
                let names: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(self.keys.services())
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| map_err(e, "list registered services"))?;
                names.iter().filter_map(|n| ServiceName::new(n).ok()).collect()
            }
        };
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for s in &services {
            p.cmd("SMEMBERS").arg(self.keys.index(s));
        }
        let id_lists: Vec<Vec<String>> = p
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, "read registry index"))?;
        let pairs: Vec<(&ServiceName, InstanceId)> = services
            .iter()
            .zip(&id_lists)
            .flat_map(|(s, ids)| {
                ids.iter()
                    .filter_map(move |i| Some((s, InstanceId::new(i).ok()?)))
            })
            .collect();
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for chunk in pairs.chunks(MGET_CHUNK) {
            p.cmd("MGET").arg(
                chunk
                    .iter()
                    .map(|(s, i)| self.keys.instance(s, i))
                    .collect::<Vec<_>>(),
            );
        }
        let values: Vec<Vec<Option<Vec<u8>>>> = p
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err(e, "read registry entries"))?;
        let mut out = Vec::with_capacity(pairs.len());
        let mut stale: BTreeMap<&ServiceName, Vec<InstanceId>> = BTreeMap::new();
        for ((s, i), v) in pairs.into_iter().zip(values.into_iter().flatten()) {
            match v {
                None => stale.entry(s).or_default().push(i),
                Some(json) => match Instance::from_json(s.clone(), i, &json) {
                    Ok(inst) => out.push(inst),
                    // Someone else's key under our prefix: skip it, keep listing.
                    Err(e) => tracing::warn!(event = "registry_entry_unreadable", error = %e),
                },
            }
        }
        for (s, ids) in stale {
            self.prune(&mut conn, s, &ids).await?;
        }
        out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        Ok(out)
    }

    async fn ping(&self) -> Result<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.conn.manager())
            .await
            .map_err(|e| map_err(e, "ping registry"))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::shared(100)
    }
}
