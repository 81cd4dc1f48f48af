//! The service registry: who is alive, with what metadata.

use crate::{
    error::{Error, Result},
    name::{InstanceId, ServiceName},
    Capabilities,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, fmt, time::Duration};

/// Lifecycle status of an instance, stored as a lowercase string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Booted, not yet serving.
    Starting,
    /// Serving.
    Running,
    /// Shutting down.
    Stopping,
    /// Any other status string another service wrote.
    #[serde(untagged)]
    Other(String),
}

/// One registered instance of a service.
///
/// Equality compares what the instance published, not the store's view of
/// its entry: [`ttl`](Self::ttl) and [`expires_in`](Self::expires_in) are ignored.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Instance {
    /// The service it belongs to.
    pub service: ServiceName,
    /// The replica's id.
    pub id: InstanceId,
    /// Its status.
    pub status: Status,
    /// Host name, when known.
    pub host: Option<String>,
    /// Process id, when known.
    pub pid: Option<u32>,
    /// Start time in milliseconds since the Unix epoch, when known.
    pub started_at_ms: Option<u64>,
    /// Anything else the instance publishes about itself (the keys `status`,
    /// `host`, `pid`, `started_at` and `ttl_ms` are the fields above).
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The TTL the entry was last registered with, when the store records it
    /// (fleetwire's memory and Redis registries do, Redis as `ttl_ms` in the
    /// JSON; an entry written by the reference design has none).
    pub ttl: Option<Duration>,
    /// What was left of the entry's TTL when it was listed, when the store
    /// reports it: memory always, Redis in
    /// [`list_with_expiry`](RegistryStore::list_with_expiry).
    pub expires_in: Option<Duration>,
}

impl PartialEq for Instance {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.service,
            &self.id,
            &self.status,
            &self.host,
            self.pid,
            self.started_at_ms,
            &self.metadata,
        ) == (
            &other.service,
            &other.id,
            &other.status,
            &other.host,
            other.pid,
            other.started_at_ms,
            &other.metadata,
        )
    }
}

/// Fields of the stored JSON that map to [`Instance`] fields; every other
/// key is metadata. The object is the reference design's `{"status": ...}`
/// with optional host, pid and start time beside it.
const STATUS: &str = "status";
const HOST: &str = "host";
const PID: &str = "pid";
const STARTED_AT: &str = "started_at";
const TTL_MS: &str = "ttl_ms";

impl Instance {
    /// An instance with `status`, no host, pid or metadata.
    pub fn new(service: ServiceName, id: InstanceId, status: Status) -> Self {
        Self {
            service,
            id,
            status,
            host: None,
            pid: None,
            started_at_ms: None,
            metadata: BTreeMap::new(),
            ttl: None,
            expires_in: None,
        }
    }

    /// How long ago the entry was last registered or heartbeated: its
    /// [`ttl`](Self::ttl) minus what is left of it. Exact when heartbeats use
    /// the TTL it registered with (the lifecycle's do); `None` when the store
    /// reports either figure.
    pub fn since_heartbeat(&self) -> Option<Duration> {
        Some(self.ttl?.saturating_sub(self.expires_in?))
    }

    /// Set one metadata field.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Set host and process id of the current process.
    pub fn with_this_process(mut self) -> Self {
        self.host = Some(gethostname::gethostname().to_string_lossy().into_owned());
        self.pid = Some(std::process::id());
        self
    }

    /// The JSON value stored in the registry. The instance's own fields win
    /// over metadata keys of the same name; [`ttl`](Self::ttl) is written as
    /// `ttl_ms` when set.
    pub fn to_json(&self) -> String {
        self.to_json_with_ttl(self.ttl)
    }

    /// [`to_json`](Self::to_json) with `ttl_ms` from `ttl` instead of [`ttl`](Self::ttl).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn to_json_with_ttl(&self, ttl: Option<Duration>) -> String {
        let mut map: serde_json::Map<String, serde_json::Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        map.insert(STATUS.into(), self.status.to_string().into());
        if let Some(host) = &self.host {
            map.insert(HOST.into(), host.clone().into());
        }
        if let Some(pid) = self.pid {
            map.insert(PID.into(), pid.into());
        }
        if let Some(t) = self.started_at_ms {
            map.insert(STARTED_AT.into(), t.into());
        }
        if let Some(ttl) = ttl {
            map.insert(TTL_MS.into(), crate::clock::duration_ms(ttl).into());
        }
        serde_json::Value::Object(map).to_string()
    }

    /// Parse the stored JSON of `service`/`id`.
    pub fn from_json(service: ServiceName, id: InstanceId, json: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::codec(format!("registry entry of `{service}`/`{id}` {why}"));
        // One pass into a map, then the known fields taken out: cheaper than
        // `#[serde(flatten)]`, which buffers every field twice.
        let mut metadata: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(json).map_err(|e| bad("is not a JSON object").with_source(e))?;
        let status = match metadata.remove(STATUS) {
            Some(serde_json::Value::String(s)) => Status::parse(s),
            _ => return Err(bad("has no string `status`")),
        };
        let mut take = |key: &str| metadata.remove(key).filter(|v| !v.is_null());
        let host = match take(HOST) {
            None => None,
            Some(serde_json::Value::String(h)) => Some(h),
            Some(_) => return Err(bad("has a non-string `host`")),
        };
        let int = |v: Option<serde_json::Value>, key: &str| match v {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| bad(&format!("has a non-integer `{key}`"))),
        };
        let pid = int(take(PID), PID)?
            .map(|p| u32::try_from(p).map_err(|_| bad("has a `pid` out of range")))
            .transpose()?;
        let started_at_ms = int(take(STARTED_AT), STARTED_AT)?;
        let ttl = int(take(TTL_MS), TTL_MS)?.map(Duration::from_millis);
        Ok(Self {
            service,
            id,
            status,
            host,
            pid,
            started_at_ms,
            metadata,
            ttl,
            expires_in: None,
        })
    }
}

impl Status {
    fn parse(s: String) -> Self {
        match s.as_str() {
            "starting" => Self::Starting,
            "running" => Self::Running,
            "stopping" => Self::Stopping,
            _ => Self::Other(s),
        }
    }
}

/// The longest TTL a store keeps: 100 years. A longer one, up to
/// `Duration::MAX`, is kept for this long instead (no TTL overflows or wraps).
#[cfg_attr(not(any(feature = "memory", feature = "redis")), allow(dead_code))]
pub(crate) const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Where services announce themselves with a short TTL.
///
/// # Contract
/// - `register` makes the instance listed until its TTL lapses; registering
///   again replaces its metadata and TTL.
/// - `heartbeat` re-arms the TTL and returns `Ok(false)` when the entry is
///   missing (the caller then registers again).
/// - `deregister` removes the entry at once; removing a missing entry is `Ok`.
/// - `list` returns alive instances sorted by service, then id; metadata
///   round-trips unchanged.
/// - `list_with_expiry` lists the same, with `expires_in` where the store can
///   tell; `ttl` is the TTL of the last registration when the store keeps it.
/// - TTLs have millisecond precision: a TTL under 1 ms counts as 1 ms, one
///   over 100 years as 100 years; no `Duration` panics or wraps around.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RegistryStore: Send + Sync + fmt::Debug {
    /// Announce `instance` for `ttl`.
    ///
    /// # Cancel safety
    /// Safe to drop: the entry and its index are written by one atomic script, so it is written whole or not at all; register again.
    async fn register(&self, instance: &Instance, ttl: Duration) -> Result<()>;
    /// Re-arm the TTL; `false` when the entry is gone.
    ///
    /// # Cancel safety
    /// Safe to drop: a refresh that did not land only lets the TTL run down; the next heartbeat (or a re-registration) restores it.
    async fn heartbeat(&self, service: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool>;
    /// Remove the entry.
    ///
    /// # Cancel safety
    /// Safe to drop: one atomic step; if it did not run, the entry expires with its TTL.
    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()>;
    /// Alive instances of `service`, or of every service when `None`.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>>;
    /// [`list`](Self::list), with [`Instance::expires_in`] filled where the
    /// store can tell. What the registry watch and `fleetwire members` use;
    /// Redis pays one `PTTL` per entry for it (in the same round trip), so
    /// plain `list` leaves it out there. The default is `list` itself.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn list_with_expiry<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        self.list(service).await
    }
    /// Check that the store answers.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    async fn ping(&self) -> Result<()>;
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Other(s) => s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reference_json() {
        let s = ServiceName::new("gateway").unwrap();
        let i = InstanceId::new("gw-1").unwrap();
        let inst = Instance::from_json(s.clone(), i.clone(), br#"{"status":"running"}"#).unwrap();
        assert_eq!(inst.status, Status::Running);
        let odd = Instance::from_json(
            s.clone(),
            i.clone(),
            br#"{"status":"draining","pid":7,"zone":"a"}"#,
        )
        .unwrap();
        assert_eq!(odd.status, Status::Other("draining".into()));
        assert_eq!(odd.pid, Some(7));
        assert_eq!(odd.metadata["zone"], "a");
        assert_eq!(
            Instance::new(s.clone(), i.clone(), Status::Starting).to_json(),
            r#"{"status":"starting"}"#
        );
        assert!(Instance::from_json(s.clone(), i.clone(), b"nope").is_err());
        assert!(
            Instance::from_json(s.clone(), i.clone(), br#"{"host":"h"}"#).is_err(),
            "status is required"
        );
        assert!(Instance::from_json(s.clone(), i.clone(), br#"{"status":"running","pid":-1}"#).is_err());
        let mut clash =
            Instance::new(s.clone(), i.clone(), Status::Running).with_metadata("status", "spoofed");
        clash.pid = Some(1);
        let back = Instance::from_json(s, i, clash.to_json().as_bytes()).unwrap();
        assert_eq!((back.status, back.pid), (Status::Running, Some(1)));
    }
}
