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
#[derive(Debug, Clone, PartialEq)]
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
    /// Anything else the instance publishes about itself.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// The JSON stored per instance: the reference design's `{"status": ...}`
/// object, with optional host, pid, start time and free-form metadata beside it.
#[derive(Serialize, Deserialize)]
struct Record {
    status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<u64>,
    #[serde(flatten)]
    metadata: BTreeMap<String, serde_json::Value>,
}

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
        }
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

    /// The JSON value stored in the registry.
    pub fn to_json(&self) -> String {
        let record = Record {
            status: self.status.clone(),
            host: self.host.clone(),
            pid: self.pid,
            started_at: self.started_at_ms,
            metadata: self.metadata.clone(),
        };
        // A map of strings and JSON values always serializes.
        serde_json::to_string(&record).unwrap_or_else(|_| "{}".into())
    }

    /// Parse the stored JSON of `service`/`id`.
    pub fn from_json(service: ServiceName, id: InstanceId, json: &[u8]) -> Result<Self> {
        let r: Record = serde_json::from_slice(json).map_err(|e| {
            Error::codec(format!("registry entry of `{service}`/`{id}` is not valid JSON")).with_source(e)
        })?;
        Ok(Self {
            service,
            id,
            status: r.status,
            host: r.host,
            pid: r.pid,
            started_at_ms: r.started_at,
            metadata: r.metadata,
        })
    }
}

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
/// - TTLs have millisecond precision.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RegistryStore: Send + Sync + fmt::Debug {
    /// Announce `instance` for `ttl`.
    async fn register(&self, instance: &Instance, ttl: Duration) -> Result<()>;
    /// Re-arm the TTL; `false` when the entry is gone.
    async fn heartbeat(&self, service: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool>;
    /// Remove the entry.
    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()>;
    /// Alive instances of `service`, or of every service when `None`.
    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>>;
    /// Check that the store answers.
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
        assert!(Instance::from_json(s, i, b"nope").is_err());
    }
}
