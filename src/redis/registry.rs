use super::{keys::Keys, Conn};
use crate::{
    error::{Error, ErrorKind, Result},
    name::{InstanceId, ServiceName},
    registry::MAX_TTL,
    rt, Capabilities, Instance, RegistryStore, Status,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use redis::{RedisResult, Value};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

/// Keys per `MGET` when listing; the chunks go out in one pipeline.
const MGET_CHUNK: usize = 1000;

/// Bumps an index's version: to the server's time in microseconds, or one
/// past the old version when that is not below it. A version set back by a
/// lost write (a failover under asynchronous replication, a restart without
/// persistence) and bumped again so comes back at a new value, not at the
/// one a reader may have cached with other ids (as a plain `INCR` would). Anything but a number in the key (it holds nothing
/// but the version) is replaced the same way.
const BUMP: &str = r"
local function bump(key)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = redis.pcall('GET', key)
  old = type(old) == 'string' and tonumber(old) or nil
  -- Past 2^52, old + 1 == old in a Lua double: start again from the clock.
  if old and old >= now and old < 4503599627370496 then
    now = old + 1
  end
  redis.call('SET', key, string.format('%.0f', now))
end
";

/// Writes an instance key, its service's index and the set of services
/// together, or nothing: a key of the wrong type at either set would make
/// the entry unlistable, so it is reported instead of written around.
///
/// KEYS: instance, index, services, index version. ARGV: json, ttl ms, id, service.
/// Returns `0`, or `{key, type}` of the first set key that is not a set.
static REGISTER: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"{BUMP}
for i = 2, 3 do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'set' and t ~= 'none' then
    return {{KEYS[i], t}}
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('SADD', KEYS[2], ARGV[3]) == 1 then
  bump(KEYS[4])
end
redis.call('SADD', KEYS[3], ARGV[4])
return 0
"
    )
});

/// Deletes an instance key and, when the index is a set, its id there.
///
/// KEYS: instance, index, index version. ARGV: id.
static DEREGISTER: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"{BUMP}
redis.call('DEL', KEYS[1])
if redis.call('TYPE', KEYS[2]).ok == 'set' and redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  bump(KEYS[3])
end
return 0
"
    )
});

/// Drops ids from a service's index whose instance key is gone or is not a
/// string, atomically, so an instance that re-registers meanwhile is never
/// dropped by mistake; drops the service from the set of services once its
/// index is empty. Touches only keys of the type it expects.
///
/// KEYS: index, services, index version, then the instance keys.
/// ARGV: service, then the ids. Returns the ids whose key existed with another type.
static PRUNE: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"{BUMP}
local wrong = {{}}
if redis.call('TYPE', KEYS[1]).ok ~= 'set' then
  return wrong
end
local removed = 0
for i = 4, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'string' then
    removed = removed + redis.call('SREM', KEYS[1], ARGV[i - 2])
    if t ~= 'none' then
      wrong[#wrong + 1] = ARGV[i - 2]
    end
  end
end
if removed > 0 then
  bump(KEYS[3])
end
if redis.call('SCARD', KEYS[1]) == 0 and redis.call('TYPE', KEYS[2]).ok == 'set' then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return wrong
"
    )
});

/// Adds ids found by the legacy scan to a service's index.
///
/// KEYS: index, services, index version. ARGV: service, then the ids.
/// Returns how many were added, or -1 when the index is not a set.
static ADOPT: LazyLock<String> = LazyLock::new(|| {
    format!(
        r"{BUMP}
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'set' and t ~= 'none' then
  return -1
end
local added = 0
for i = 2, #ARGV, 1000 do
  added = added + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if added > 0 then
  bump(KEYS[3])
end
t = redis.call('TYPE', KEYS[2]).ok
if t == 'set' or t == 'none' then
  redis.call('SADD', KEYS[2], ARGV[1])
end
return added
"
    )
});

/// How long `list` trusts the ids it read of an index whose version did not
/// change: only a writer that does not bump the version (a fleetwire before
/// the version existed, a hand-made `SADD`) can make them stale, and only
/// for this long.
const INDEX_CACHE_MAX_AGE: Duration = Duration::from_secs(30);

/// Services whose ids a registry keeps at most; past it the cache starts over.
const INDEX_CACHE_MAX_SERVICES: usize = 4096;

/// The sorted, valid ids of one service's index as of `version`.
#[derive(Debug)]
struct CachedIndex {
    version: i64,
    read_at: Instant,
    ids: Arc<[InstanceId]>,
}

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
/// - Every change to an index bumps its version (`{ns}:registry:version:{name}`)
///   in the same script. A registry handle keeps the ids it read of each
///   index and reads them again only when the version moved (or after 30 s,
///   for writers that do not bump it, such as a hand-made `SADD`): a steady
///   fleet of 10,000 is listed with one `GET` and the `MGET`s of its entries.
/// - `list` skips, with a `registry_key_unreadable` warning, any key it
///   cannot read (a set or entry of the wrong type, an entry that is not
///   JSON): one bad key never fails the listing of the others.
/// - Keys written by older services with a plain `SET ... EX` are not in the
///   index. [`adopt_legacy_keys`](super::RedisBackendBuilder::adopt_legacy_keys)
///   turns on a background `SCAN` that adds them; it never runs on a call's path.
/// - The JSON carries `ttl_ms`, the TTL of the registration, beside the
///   reference design's fields. [`list_with_expiry`](RegistryStore::list_with_expiry)
///   adds a `PTTL` per entry to the `MGET` pipeline (one round trip still,
///   about twice the server time); plain `list` does not.
/// - On Redis Cluster the keys carry the service name as a hash tag, so each
///   script touches one slot (see the README's "Scaling out: Cluster").
#[derive(Debug, Clone)]
pub struct RedisRegistry {
    conn: Arc<Conn>,
    keys: Keys,
    scripts: Arc<Scripts>,
    index_cache: Arc<Mutex<HashMap<ServiceName, CachedIndex>>>,
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
                register: redis::Script::new(&REGISTER),
                deregister: redis::Script::new(&DEREGISTER),
                prune: redis::Script::new(&PRUNE),
            }),
            index_cache: Default::default(),
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

    /// The sorted ids in each service's index; an index of the wrong type
    /// is skipped with a warning. Ids read before are reused while the
    /// index's version is unchanged, so a steady fleet costs one `GET` per
    /// service instead of reading every id again.
    async fn read_indexes<'s>(
        &self,
        services: &'s [ServiceName],
    ) -> Result<Vec<(&'s ServiceName, Arc<[InstanceId]>)>> {
        let cached: Vec<Option<(i64, Arc<[InstanceId]>)>> = {
            let cache = self.index_cache.lock();
            services
                .iter()
                .map(|s| {
                    cache
                        .get(s)
                        .filter(|c| c.read_at.elapsed() < INDEX_CACHE_MAX_AGE)
                        .map(|c| (c.version, c.ids.clone()))
                })
                .collect()
        };
        let mut p = redis::pipe();
        // A key of the wrong type fails its own reply, not the whole pipeline.
        p.ignore_errors();
        for (s, c) in services.iter().zip(&cached) {
            // The version is read first: ids read after it are at least as new.
            p.cmd("GET").arg(self.keys.index_version(s));
            if c.is_none() {
                p.cmd("SMEMBERS").arg(self.keys.index(s));
            }
        }
        let mut conn = self.conn.manager();
        let replies: Vec<RedisResult<Value>> = self
            .conn
            .run(|| "read registry index".into(), p.query_async(&mut conn))
            .await?;
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(services.len());
        let mut moved = Vec::new();
        for (s, c) in services.iter().zip(cached) {
            let version = version_of(replies.next());
            match c {
                Some((v, ids)) if Some(v) == version => out.push((s, ids)),
                Some(_) => moved.push(s),
                None => out.extend(self.members_read(s, version, replies.next()).map(|ids| (s, ids))),
            }
        }
        if moved.is_empty() {
            return Ok(out);
        }
        let mut p = redis::pipe();
        p.ignore_errors();
        for s in &moved {
            p.cmd("GET").arg(self.keys.index_version(s));
            p.cmd("SMEMBERS").arg(self.keys.index(s));
        }
        let replies: Vec<RedisResult<Value>> = self
            .conn
            .run(|| "read registry index".into(), p.query_async(&mut conn))
            .await?;
        let mut replies = replies.into_iter();
        for s in moved {
            let version = version_of(replies.next());
            out.extend(self.members_read(s, version, replies.next()).map(|ids| (s, ids)));
        }
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(out)
    }

    /// The ids of an `SMEMBERS` reply of `service`'s index, kept for reuse
    /// while the index stays at `version`.
    fn members_read(
        &self,
        service: &ServiceName,
        version: Option<i64>,
        reply: Option<RedisResult<Value>>,
    ) -> Option<Arc<[InstanceId]>> {
        let mut cache = self.index_cache.lock();
        let ids: Arc<[InstanceId]> = match reply? {
            Ok(v) => index_ids(v).into(),
            Err(e) => {
                cache.remove(service);
                tracing::warn!(
                    event = "registry_key_unreadable",
                    key = %self.keys.index(service),
                    error = %e,
                    "skipped"
                );
                return None;
            }
        };
        match version {
            Some(version) if !ids.is_empty() => {
                if cache.len() >= INDEX_CACHE_MAX_SERVICES {
                    cache.clear();
                }
                let read_at = Instant::now();
                let ids = ids.clone();
                cache.insert(
                    service.clone(),
                    CachedIndex {
                        version,
                        read_at,
                        ids,
                    },
                );
            }
            _ => {
                cache.remove(service);
            }
        }
        Some(ids)
    }

    /// On Cluster the set of services lives in its own slot, outside the
    /// register script: `service` is added to it first (never removed), so
    /// an entry the script writes is always listable.
    async fn add_service_on_cluster(&self, service: &ServiceName) -> Result<()> {
        let key = self.keys.services();
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || format!("register `{service}` in the set of services"),
                redis::cmd("SADD")
                    .arg(&key)
                    .arg(service.as_str())
                    .query_async::<()>(&mut conn),
            )
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidInput => Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "register `{service}` failed: key `{key}` is not a set, so the entry could not be \
                         listed; nothing was written (delete or rename that key)"
                    ),
                )
                .with_source(e),
                _ => e,
            })
    }

    /// Best effort: a failure leaves the stale ids for the next `list`.
    async fn prune(&self, service: &ServiceName, ids: &[InstanceId]) {
        let mut inv = self.scripts.prune.key(self.keys.index(service));
        inv.key(self.keys.services_in_script(service))
            .key(self.keys.index_version(service))
            .arg(service.as_str());
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

/// The fields an entry holds when nothing but them was written (fleetwire
/// without metadata, the reference design's `{"status": ...}`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownFields {
    status: Status,
    host: Option<String>,
    pid: Option<u32>,
    started_at: Option<u64>,
    ttl_ms: Option<u64>,
}

/// [`Instance::from_json`], without building a metadata map for entries
/// that have none: any other shape, or an error, goes through `from_json`,
/// so the result is always exactly its result.
fn parse_entry(service: &ServiceName, id: InstanceId, json: &[u8]) -> Result<Instance> {
    match serde_json::from_slice::<KnownFields>(json) {
        Ok(k) => {
            let mut i = Instance::new(service.clone(), id, k.status);
            (i.host, i.pid, i.started_at_ms) = (k.host, k.pid, k.started_at);
            i.ttl = k.ttl_ms.map(Duration::from_millis);
            Ok(i)
        }
        Err(_) => Instance::from_json(service.clone(), id, json),
    }
}

/// The version counter of an index: absent reads as 0; anything but a
/// number is never trusted.
fn version_of(reply: Option<RedisResult<Value>>) -> Option<i64> {
    match reply? {
        Ok(Value::Nil) => Some(0),
        Ok(Value::Int(v)) => Some(v),
        Ok(Value::BulkString(b)) => std::str::from_utf8(&b).ok()?.parse().ok(),
        _ => None,
    }
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
        self.keys.check_service(s)?;
        if self.keys.is_cluster() {
            self.add_service_on_cluster(s).await?;
        }
        let ttl_ms = crate::clock::ttl_ms(ttl.min(MAX_TTL));
        let mut inv = self.scripts.register.key(self.keys.instance(s, i));
        inv.key(self.keys.index(s))
            .key(self.keys.services_in_script(s))
            .key(self.keys.index_version(s))
            .arg(instance.to_json_with_ttl(Some(Duration::from_millis(ttl_ms))))
            .arg(ttl_ms)
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
                    .arg(crate::clock::ttl_ms(ttl.min(MAX_TTL)))
                    .query_async(&mut conn),
            )
            .await
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()> {
        self.keys.check_service(service)?;
        let mut inv = self.scripts.deregister.key(self.keys.instance(service, id));
        inv.key(self.keys.index(service))
            .key(self.keys.index_version(service))
            .arg(id.as_str());
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || format!("deregister `{service}`/`{id}`"),
                inv.invoke_async::<()>(&mut conn),
            )
            .await
    }

    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        self.list_entries(service, false).await
    }

    async fn list_with_expiry<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        self.list_entries(service, true).await
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

impl RedisRegistry {
    /// The listing, with what is left of each TTL when `expiry`.
    async fn list_entries(&self, service: Option<&ServiceName>, expiry: bool) -> Result<Vec<Instance>> {
        let services = match service {
            Some(s) => {
                self.keys.check_service(s)?;
                vec![s.clone()]
            }
            None => self.services().await?,
        };
        if services.is_empty() {
            return Ok(Vec::new());
        }
        let fleet = self.read_indexes(&services).await?;
        if service.is_none() {
            // Services gone from the set are not listed again: drop their ids.
            self.index_cache
                .lock()
                .retain(|s, _| services.binary_search(s).is_ok());
        }
        let total: usize = fleet.iter().map(|(_, ids)| ids.len()).sum();
        if total == 0 {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        let mut chunks = 0;
        for (s, ids) in &fleet {
            for chunk in ids.chunks(MGET_CHUNK) {
                p.cmd("MGET").arg(self.keys.instance_args(s, chunk));
                chunks += 1;
            }
        }
        // What is left of each TTL, in the same round trip: one `PTTL` per
        // entry, the price of `Instance::expires_in` (which tells a watcher an
        // expiry from a deregistration): about as much server time again as
        // the `MGET`s, so only when asked.
        for (s, ids) in fleet.iter().filter(|_| expiry) {
            for i in ids.iter() {
                p.cmd("PTTL").arg(self.keys.instance(s, i));
            }
        }
        let mut conn = self.conn.manager();
        let mut replies: Vec<Value> = self
            .conn
            .run(|| "read registry entries".into(), p.query_async(&mut conn))
            .await?;
        let ttls = replies.split_off(chunks.min(replies.len()));
        let mut values = Vec::with_capacity(total);
        for v in replies {
            let slots: Vec<Slot> = redis::FromRedisValue::from_redis_value(v)
                .map_err(|e| Error::codec(format!("read registry entries: {e}")))?;
            values.extend(slots);
        }
        let mut ttls = ttls.into_iter().map(|v| match v {
            Value::Int(ms) => u64::try_from(ms).ok().map(Duration::from_millis),
            _ => None,
        });
        let mut values = values.into_iter();
        // Services and ids were sorted before reading: the output is in order.
        let mut out = Vec::with_capacity(total);
        let mut stale: Vec<(&ServiceName, Vec<InstanceId>)> = Vec::new();
        for (s, ids) in &fleet {
            let mut gone = Vec::new();
            for (i, v) in ids.iter().zip(&mut values) {
                let expires_in = ttls.next().flatten();
                match v.0 {
                    // Expired, deleted, or a key of another type (`MGET` reads those as nil).
                    None => gone.push(i.clone()),
                    Some(json) => match parse_entry(s, i.clone(), &json) {
                        Ok(mut inst) => {
                            inst.expires_in = expires_in;
                            out.push(inst)
                        }
                        // Someone else's key under our prefix: skip it, keep listing.
                        Err(e) => tracing::warn!(event = "registry_entry_unreadable", error = %e),
                    },
                }
            }
            if !gone.is_empty() {
                stale.push((s, gone));
            }
        }
        for (s, ids) in stale {
            self.prune(s, &ids).await;
        }
        Ok(out)
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
    static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(&ADOPT));
    let script = &*SCRIPT;
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
        for (s, ids) in &by_service {
            let mut inv = script.key(keys.index(s));
            inv.key(keys.services())
                .key(keys.index_version(s))
                .arg(s.as_str())
                .arg(ids.iter().map(InstanceId::as_str).collect::<Vec<_>>());
            let n: i64 = conn
                .run(
                    || format!("index legacy registry keys of `{s}`"),
                    inv.invoke_async(&mut manager),
                )
                .await?;
            match u64::try_from(n) {
                Ok(n) => added += n,
                Err(_) => tracing::warn!(
                    event = "registry_key_unreadable",
                    key = %keys.index(s),
                    "not a set: legacy keys of this service not adopted"
                ),
            }
        }
        if next == 0 {
            return Ok(added);
        }
        cursor = next;
    }
}
