//! The dashboard's data: one snapshot of registry, fleet table and streams.

use crate::{
    error::{Error, ErrorKind, Result},
    health::FleetView,
    monitor::FleetMonitor,
    rt, EventBus, RegistryStore, StreamName,
};
use futures_util::future::join_all;
use parking_lot::Mutex;
use serde::Serialize;
use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

/// Default bound on each store call a snapshot makes.
pub const DEFAULT_OVERVIEW_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the dashboard (`/`, `/api/overview`) and the metrics' scrape-time
/// gauges read the fleet from: a registry, a bus with the streams to show,
/// and a fleet monitor. Every part is optional; what is missing is left out.
///
/// ```no_run
/// # #[cfg(feature = "memory")] {
/// use fleetwire::{http::{HttpHealthServer, Overview}, memory::{MemoryBus, MemoryRegistry}, StreamName};
/// use std::sync::Arc;
///
/// let overview = Overview::new()
///     .registry(Arc::new(MemoryRegistry::new()))
///     .bus(Arc::new(MemoryBus::new()))
///     .stream(StreamName::new("sg:stream:inbound")?);
/// let server = HttpHealthServer::builder().dashboard(overview).build()?;
/// # }
/// # Ok::<_, fleetwire::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Overview {
    registry: Option<Arc<dyn RegistryStore>>,
    bus: Option<Arc<dyn EventBus>>,
    streams: Vec<(StreamName, Option<StreamName>)>,
    monitor: Option<Arc<FleetMonitor>>,
    timeout: Duration,
    // Last health heartbeat per instance, as the monitor saw them go by:
    // the registry itself keeps no time, only a TTL.
    seen: Arc<Mutex<HashMap<(String, String), f64>>>,
}

/// What `/api/overview` answers.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct OverviewSnapshot {
    /// When it was taken, seconds since the Unix epoch.
    pub generated_at: f64,
    /// Registered services with their instances, by name.
    pub services: Vec<ServiceRow>,
    /// The ok / stale / unknown table of the fleet monitor (`[]` without one).
    pub workers: serde_json::Value,
    /// The configured streams.
    pub streams: Vec<StreamRow>,
    /// What could not be read, as `"{part}: {error kind}"` (details are logged).
    pub errors: Vec<String>,
}

/// One service of the registry.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ServiceRow {
    /// Service name.
    pub name: String,
    /// Its live instances, by id.
    pub instances: Vec<InstanceRow>,
}

/// One registered instance.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct InstanceRow {
    /// Instance id.
    pub id: String,
    /// Its status (`starting`, `running`, `stopping` or another string).
    pub status: String,
    /// Host name, when known.
    pub host: Option<String>,
    /// Process id, when known.
    pub pid: Option<u32>,
    /// Start time, milliseconds since the Unix epoch, when known.
    pub started_at_ms: Option<u64>,
    /// Time of its last health heartbeat seen by the fleet monitor, seconds
    /// since the Unix epoch; `None` when none was seen (or no monitor is set).
    pub last_seen: Option<f64>,
}

/// One stream and its groups.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StreamRow {
    /// Stream name.
    pub name: String,
    /// Entries in it (0 when it does not exist yet).
    pub length: u64,
    /// Its length cap.
    pub max_len: u64,
    /// Its consumer groups.
    pub groups: Vec<GroupRow>,
    /// Its dead-letter stream (`{name}:dlq` unless set otherwise).
    pub dead_letter_stream: Option<String>,
    /// Entries in the dead-letter stream.
    pub dead_letters: Option<u64>,
    /// Why the figures above could not be read (an error kind); they are
    /// then zero or empty and not to be trusted.
    pub error: Option<String>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct GroupRow {
    /// Group name.
    pub name: String,
    /// Consumers known to the group.
    pub consumers: u64,
    /// Entries delivered and not acked.
    pub pending: u64,
    /// Entries not yet delivered, when the store can tell.
    pub lag: Option<u64>,
}

impl Default for Overview {
    fn default() -> Self {
        Self::new()
    }
}

impl Overview {
    /// An overview of nothing yet; add parts with the methods below.
    pub fn new() -> Self {
        Self {
            registry: None,
            bus: None,
            streams: Vec::new(),
            monitor: None,
            timeout: DEFAULT_OVERVIEW_TIMEOUT,
            seen: Arc::default(),
        }
    }

    /// List services and instances from `registry`.
    pub fn registry(mut self, registry: Arc<dyn RegistryStore>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Read stream figures from `bus`.
    pub fn bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Show `stream`, with its dead letters in `{stream}:dlq` (the runner's default).
    pub fn stream(mut self, stream: StreamName) -> Self {
        // A name too long for the suffix has no default dead-letter stream.
        let dlq = crate::consumer::default_dead_letter_stream(&stream).ok();
        self.streams.push((stream, dlq));
        self
    }

    /// Show `stream`, with its dead letters in `dead_letters`.
    pub fn stream_with_dead_letters(mut self, stream: StreamName, dead_letters: StreamName) -> Self {
        self.streams.push((stream, Some(dead_letters)));
        self
    }

    /// Take the worker table from `monitor` (else from the health state's
    /// fleet view, if any), and instances' last-seen times from its heartbeats.
    pub fn monitor(mut self, monitor: Arc<FleetMonitor>) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Bound each store call of a snapshot (default [`DEFAULT_OVERVIEW_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The streams shown, each with its dead-letter stream.
    pub fn streams(&self) -> impl Iterator<Item = (&StreamName, Option<&StreamName>)> {
        self.streams.iter().map(|(s, d)| (s, d.as_ref()))
    }

    async fn bounded<T>(&self, what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match rt::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("{what}: no answer within {:?}", self.timeout),
            )),
        }
    }

    /// Read everything now. Parts that fail or time out are left empty and
    /// named in [`errors`](OverviewSnapshot::errors); `fleet` is used for the
    /// worker table when no monitor was given.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    pub async fn snapshot(&self, fleet: Option<Arc<dyn FleetView>>) -> OverviewSnapshot {
        let mut errors = Vec::new();
        let mut note = |part: &str, e: &Error| {
            tracing::warn!(event = "overview_read_failed", part, error = %e);
            errors.push(format!("{part}: {}", e.kind()));
        };
        let workers = match (&self.monitor, fleet) {
            (Some(m), _) => {
                let rows = m.snapshot();
                let mut seen = self.seen.lock();
                for row in &rows {
                    let instance = row.extra.get("instance").and_then(|v| v.as_str());
                    if let (Some(id), Some(ts)) = (instance, row.last_heartbeat_ts) {
                        seen.insert((row.name.clone(), id.to_owned()), ts);
                    }
                }
                serde_json::to_value(rows).unwrap_or_default()
            }
            (None, Some(view)) => view.snapshot(),
            (None, None) => serde_json::Value::Array(Vec::new()),
        };
        let services = match &self.registry {
            None => Vec::new(),
            Some(r) => match self.bounded("list the registry", r.list(None)).await {
                Ok(list) => self.services(list),
                Err(e) => {
                    note("registry", &e);
                    Vec::new()
                }
            },
        };
        let mut streams = Vec::new();
        if let Some(bus) = &self.bus {
            let rows = join_all(
                self.streams
                    .iter()
                    .map(|(s, d)| self.stream_row(bus.as_ref(), s, d.as_ref())),
            )
            .await;
            for (row, failed) in rows {
                if let Some(e) = failed {
                    note(&format!("stream {}", row.name), &e);
                }
                streams.push(row);
            }
        }
        OverviewSnapshot {
            generated_at: crate::clock::unix_ms() as f64 / 1000.0,
            services,
            workers,
            streams,
            errors,
        }
    }

    fn services(&self, list: Vec<crate::Instance>) -> Vec<ServiceRow> {
        let mut seen = self.seen.lock();
        // Forget instances that left, so the map stays as small as the fleet.
        seen.retain(|(s, i), _| list.iter().any(|x| x.service.as_str() == s && x.id.as_str() == i));
        let mut by_service: std::collections::BTreeMap<String, Vec<InstanceRow>> = Default::default();
        for i in list {
            let key = (i.service.to_string(), i.id.to_string());
            let row = InstanceRow {
                last_seen: seen.get(&key).copied(),
                id: key.1,
                status: i.status.to_string(),
                host: i.host,
                pid: i.pid,
                started_at_ms: i.started_at_ms,
            };
            by_service.entry(key.0).or_default().push(row);
        }
        by_service
            .into_iter()
            .map(|(name, mut instances)| {
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                ServiceRow { name, instances }
            })
            .collect()
    }

    async fn stream_row(
        &self,
        bus: &dyn EventBus,
        stream: &StreamName,
        dead_letters: Option<&StreamName>,
    ) -> (StreamRow, Option<Error>) {
        let mut row = StreamRow {
            name: stream.to_string(),
            length: 0,
            max_len: bus.max_len(stream),
            groups: Vec::new(),
            dead_letter_stream: dead_letters.map(|d| d.to_string()),
            dead_letters: None,
            error: None,
        };
        let dead = async {
            match dead_letters {
                Some(d) => Some(self.bounded("dead-letter stream info", bus.stream_info(d)).await),
                None => None,
            }
        };
        let (info, dead) =
            futures_util::future::join(self.bounded("stream info", bus.stream_info(stream)), dead).await;
        let mut failed = None;
        match info {
            Ok(info) => {
                row.length = info.length;
                row.groups = info
                    .groups
                    .into_iter()
                    .map(|g| GroupRow {
                        name: g.name,
                        consumers: g.consumers,
                        pending: g.pending,
                        lag: g.lag,
                    })
                    .collect();
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => failed = Some(e),
        }
        match dead {
            None => {}
            Some(Ok(info)) => row.dead_letters = Some(info.length),
            Some(Err(e)) if e.kind() == ErrorKind::NotFound => row.dead_letters = Some(0),
            Some(Err(e)) => failed = failed.or(Some(e)),
        }
        row.error = failed.as_ref().map(|e| e.kind().to_string());
        (row, failed)
    }
}
