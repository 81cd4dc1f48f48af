use super::{keys::Keys, Conn};
use crate::{
    error::{Error, ErrorKind, Result},
    name::{InstanceId, ServiceName},
    registry::MAX_TTL,
    rt, Capabilities, Instance, RegistryStore,
};
use async_trait::async_trait;
use redis::{RedisResult, Value};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

/// Keys per `MGET` when listing; the chunks go out in one pipeline.
const MGET_CHUNK: usize = 1000;

/// Writes an instance key, its service's index and the set of services
/// together, or nothing: a key of the wrong type at either set would make
/// the entry unlistable, so it is reported instead of written around.
///
/// KEYS: instance, index, services. ARGV: json, ttl ms, id, service.
/// Returns `0`, or `{key, type}` of the first set key that is not a set.
const REGISTER: &str = r"
for i = 2, 3 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'set' and t ~= 'none' then
    return {KEYS[i], t}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return 0
";

/// Deletes an instance key and, when the index is a set, its id there.
///
/// KEYS: instance, index. ARGV: id.
const DEREGISTER: &str = r"
redis.call('DEL', KEYS[1])
if redis.call('TYPE', KEYS[2]).ok == 'set' then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
";

/// Drops ids from a service's index whose instance key is gone or is not a
/// string, atomically, so an instance that re-registers meanwhile is never
/// dropped by mistake; drops the service from the set of services once its
/// index is empty. Touches only keys of the type it expects.
///
/// KEYS: index, services, then the instance keys. ARGV: service, then the ids.
/// Returns the ids whose key existed with another type.
const PRUNE: &str = r"
local wrong = {}
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then
  return wrong
end
for i = 3, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'string' then
    redis.call('SREM', KEYS[1], ARGV[i - 1])
    if t ~= 'none' then
      wrong[#wrong + 1] = ARGV[i - 1]
    end
  end
end
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('TYPE', KEYS[2]).ok == 'set' then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return wrong
";

/// Redis [`RegistryStore`].
///
/// Each instance is `{ns}:registry:service:{name}:{id}` holding its JSON,
/// with a millisecond TTL, exactly as the reference design writes it. Beside
/// it, a per-service index set (`{ns}:registry:index:{name}`) and the set of
/// services (`{ns}:registry:services`) let `list` read instances without
/// scanning the keyspace: its cost follows the fleet, not the database.
///
/// - `register` writes the instance key and both sets in one atomic script,
///   so an `Ok` entry is always listable; when one of the sets holds a key of
///   another type it writes nothing and returns a
///   [`Conflict`](crate::ErrorKind::Conflict) error naming that key.
/// - `list` skips, with a `registry_key_unreadable` warning, any key it
///   cannot read (a set or entry of the wrong type, an entry that is not
///   JSON): one bad key never fails the listing of the others.
/// - Keys written by older services with a plain `SET ... EX` are not in the
///   index. [`adopt_legacy_keys`](super::RedisBackendBuilder::adopt_legacy_keys)
///   turns on a background `SCAN` that adds them; it never runs on a call's path.
/// - Only standalone Redis: the scripts touch several keys.
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    conn: Arc<Conn>,
    keys: Keys,
    scripts: Arc<Scripts>,
}

#[derive(Debug)]
struct Scripts {
    register: redis::Script,
    deregister: redis::Script,
    prune: redis::Script,
}

impl RedisRegistry {
    pub(crate) fn new(conn: Arc<Conn>, keys: Keys) -> Self {
        Self {
            conn,
            keys,
            scripts: Arc::new(Scripts {
                register: redis::Script::new(REGISTER),
                deregister: redis::Script::new(DEREGISTER),
                prune: redis::Script::new(PRUNE),
            }),
        }
    }

    /// False after a connection-level failure until Redis answers again (see
    /// [`RedisBackend::available`](super::RedisBackend::available)).
    pub fn available(&self) -> bool {
        self.conn.available()
    }

    /// Names in the set of services; a set of the wrong type reads as empty.
    async fn services(&self) -> Result<Vec<ServiceName>> {
        let key = self.keys.services();
        let mut conn = self.conn.manager();
        let reply: Value = self
            .conn
            .run(
                || "list registered services".into(),
                redis::cmd("SMEMBERS").arg(&key).query_async(&mut conn),
            )
            .await
            .or_else(|e| skip_wrong_type(e, &key, Value::Nil))?;
        let mut names: Vec<ServiceName> = members(reply)
            .filter_map(|m| ServiceName::new(std::str::from_utf8(&m).ok()?).ok())
            .collect();
        names.sort_unstable();
        Ok(names)
    }

    /// Best effort: a failure leaves the stale ids for the next `list`.
    async fn prune(&self, service: &ServiceName, ids: &[InstanceId]) {
        let mut inv = self.scripts.prune.key(self.keys.index(service));
        inv.key(self.keys.services()).arg(service.as_str());
        for id in ids {
            inv.key(self.keys.instance(service, id)).arg(id.as_str());
        }
        let mut conn = self.conn.manager();
        let pruned = self
            .conn
            .run(
                || format!("prune registry index of `{service}`"),
                inv.invoke_async::<Vec<String>>(&mut conn),
            )
            .await;
        match pruned {
            Ok(wrong) => {
                for id in wrong {
                    tracing::warn!(
                        event = "registry_key_unreadable",
                        service = %service,
                        id = %id,
                        "registry entry is not a string; dropped from the index and skipped"
                    );
                }
            }
            Err(e) => tracing::warn!(event = "registry_prune_failed", service = %service, error = %e),
        }
    }
}

/// A `WRONGTYPE` reply to reading `key` becomes `skipped` and a warning.
fn skip_wrong_type<T>(e: Error, key: &str, skipped: T) -> Result<T> {
    if e.kind() == ErrorKind::InvalidInput {
        tracing::warn!(event = "registry_key_unreadable", key = %key, error = %e, "skipped");
        Ok(skipped)
    } else {
        Err(e)
    }
}

/// The members of a set reply (RESP2 array or RESP3 set), as bytes.
fn members(v: Value) -> impl Iterator<Item = Vec<u8>> {
    let items = match v {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    };
    items.into_iter().filter_map(|m| match m {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    })
}

/// One service's valid ids, sorted.
fn index_ids(reply: Value) -> Vec<InstanceId> {
    let mut ids: Vec<InstanceId> = members(reply)
        .filter_map(|m| InstanceId::new(std::str::from_utf8(&m).ok()?).ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// The value of an `MGET` slot, kept as bytes.
struct Slot(Option<Vec<u8>>);

impl redis::FromRedisValue for Slot {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        Ok(Self(match v {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.into_bytes()),
            _ => None,
        }))
    }
}

#[async_trait]
impl RegistryStore for RedisRegistry {
    async fn register(&self, instance: &Instance, ttl: Duration) -> Result<()> {
        let (s, i) = (&instance.service, &instance.id);
        let mut inv = self.scripts.register.key(self.keys.instance(s, i));
        inv.key(self.keys.index(s))
            .key(self.keys.services())
            .arg(instance.to_json())
            .arg(crate::backend_support::ttl_ms(ttl.min(MAX_TTL)))
            .arg(i.as_str())
            .arg(s.as_str());
        let mut conn = self.conn.manager();
        let reply: Value = self
            .conn
            .run(|| format!("register `{s}`/`{i}`"), inv.invoke_async(&mut conn))
            .await?;
        match reply {
            Value::Array(bad) => {
                let text = |v: Option<&Value>| match v {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => "?".into(),
                };
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "register `{s}`/`{i}` failed: key `{}` holds a {}, not a set, so the entry could \
                         not be listed; nothing was written (delete or rename that key)",
                        text(bad.first()),
                        text(bad.get(1)),
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    async fn heartbeat(&self, service: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool> {
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || format!("heartbeat `{service}`/`{id}`"),
                redis::cmd("PEXPIRE")
                    .arg(self.keys.instance(service, id))
                    .arg(crate::backend_support::ttl_ms(ttl.min(MAX_TTL)))
                    .query_async(&mut conn),
            )
            .await
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()> {
        let mut inv = self.scripts.deregister.key(self.keys.instance(service, id));
        inv.key(self.keys.index(service)).arg(id.as_str());
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || format!("deregister `{service}`/`{id}`"),
                inv.invoke_async::<()>(&mut conn),
            )
            .await
    }

    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        let services = match service {
            Some(s) => vec![s.clone()],
            None => self.services().await?,
        };
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        // A wrong-type index fails its own reply, not the whole pipeline.
        p.ignore_errors();
        for s in &services {
            p.cmd("SMEMBERS").arg(self.keys.index(s));
        }
        let mut conn = self.conn.manager();
        let replies: Vec<RedisResult<Value>> = self
            .conn
            .run(|| "read registry index".into(), p.query_async(&mut conn))
            .await?;
        let mut fleet: Vec<(&ServiceName, Vec<InstanceId>)> = Vec::with_capacity(services.len());
        for (s, reply) in services.iter().zip(replies) {
            match reply {
                Ok(v) => fleet.push((s, index_ids(v))),
                Err(e) => tracing::warn!(
                    event = "registry_key_unreadable",
                    key = %self.keys.index(s),
                    error = %e,
                    "skipped"
                ),
            }
        }
        let total: usize = fleet.iter().map(|(_, ids)| ids.len()).sum();
        if total == 0 {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for (s, ids) in &fleet {
            for chunk in ids.chunks(MGET_CHUNK) {
                p.cmd("MGET").arg(self.keys.instance_args(s, chunk));
            }
        }
        let values: Vec<Vec<Slot>> = self
            .conn
            .run(|| "read registry entries".into(), p.query_async(&mut conn))
            .await?;
        let mut values = values.into_iter().flatten();
        // Services and ids were sorted before reading: the output is in order.
        let mut out = Vec::with_capacity(total);
        let mut stale: BTreeMap<&ServiceName, Vec<InstanceId>> = BTreeMap::new();
        for (s, ids) in fleet {
            for (i, v) in ids.into_iter().zip(&mut values) {
                match v.0 {
                    // Expired, deleted, or a key of another type (`MGET` reads those as nil).
                    None => stale.entry(s).or_default().push(i),
                    Some(json) => match Instance::from_json(s.clone(), i, &json) {
                        Ok(inst) => out.push(inst),
                        // Someone else's key under our prefix: skip it, keep listing.
                        Err(e) => tracing::warn!(event = "registry_entry_unreadable", error = %e),
                    },
                }
            }
        }
        for (s, ids) in stale {
            self.prune(s, &ids).await;
        }
        Ok(out)
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || "ping registry".into(),
                redis::cmd("PING").query_async::<()>(&mut conn),
            )
            .await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::shared(100)
    }
}

/// Find instance keys written without the index (by older services' plain
/// `SET ... EX`) every `every`, in the background, and add them to the
/// index. Errors are logged, never returned; the task ends with the backend.
pub(crate) fn spawn_adoption(conn: &Arc<Conn>, keys: Keys, every: Duration) {
    let conn = Arc::downgrade(conn);
    rt::spawn_detached(async move {
        loop {
            let Some(c) = conn.upgrade() else {
                return;
            };
            if c.available() {
                match adopt(&c, &keys).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(event = "registry_legacy_keys_adopted", count = n),
                    Err(e) => tracing::warn!(event = "registry_adoption_failed", error = %e),
                }
            }
            drop(c);
            rt::sleep(every).await;
        }
    });
}

/// One `SCAN` pass; the number of ids added to an index.
async fn adopt(conn: &Arc<Conn>, keys: &Keys) -> Result<u64> {
    let pattern = keys.instance_scan_pattern();
    let mut manager = conn.manager();
    let mut cursor = 0u64;
    let mut added = 0u64;
    loop {
        let (next, found): (u64, Vec<String>) = conn
            .run(
                || "scan registry keys".into(),
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("TYPE")
                    .arg("string")
                    .query_async(&mut manager),
            )
            .await?;
        let mut by_service: BTreeMap<ServiceName, Vec<InstanceId>> = BTreeMap::new();
        for (s, i) in found.iter().filter_map(|k| keys.parse_instance(k)) {
            by_service.entry(s).or_default().push(i);
        }
        if !by_service.is_empty() {
            let mut p = redis::pipe();
            p.ignore_errors();
            for (s, ids) in &by_service {
                p.cmd("SADD")
                    .arg(keys.index(s))
                    .arg(ids.iter().map(InstanceId::as_str).collect::<Vec<_>>());
                p.cmd("SADD").arg(keys.services()).arg(s.as_str()).ignore();
            }
            let replies: Vec<RedisResult<u64>> = conn
                .run(|| "index registry keys".into(), p.query_async(&mut manager))
                .await?;
            for ((s, _), r) in by_service.iter().zip(replies) {
                match r {
                    Ok(n) => added += n,
                    Err(e) => tracing::warn!(
                        event = "registry_key_unreadable",
                        key = %keys.index(s),
                        error = %e,
                        "legacy keys of this service not adopted"
                    ),
                }
            }
        }
        if next == 0 {
            return Ok(added);
        }
        cursor = next;
    }
}
