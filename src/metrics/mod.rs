//! Prometheus metrics of a fleetwire process, served on the health server's
//! `/metrics`.
//!
//! [`Metrics`] holds one registry. Hot-path figures come from decorators
//! that count and time the calls they pass on ([`MeteredBus`],
//! [`MeteredLiveness`], [`MeteredRegistry`], [`MeteredHandler`]); the rest
//! is read at scrape time: consumer outcomes from each watched
//! [`Runner`]'s counters (nothing added to the consumer loop), and stream,
//! group and registry gauges from an [`Overview`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fleetwire_publishes_total` | counter | `stream` |
//! | `fleetwire_publish_duration_seconds` | histogram | `stream` |
//! | `fleetwire_errors_total` | counter | `op`, `kind` |
//! | `fleetwire_liveness_batch_duration_seconds` | histogram | |
//! | `fleetwire_consumer_messages_total` | counter | `stream`, `group`, `outcome` (`ack`, `retry`, `dead_letter`) |
//! | `fleetwire_handler_duration_seconds` | histogram | `stream`, `group` |
//! | `fleetwire_registry_instances` | gauge | `service`, `status` |
//! | `fleetwire_registrations_total` | counter | `service` |
//! | `fleetwire_reregistrations_total` | counter | `service` |
//! | `fleetwire_heartbeat_failures_total` | counter | `service` |
//! | `redis_stream_length` | gauge | `stream` |
//! | `redis_stream_groups` | gauge | `stream` |
//! | `redis_stream_group_consumers` | gauge | `stream`, `group` |
//! | `redis_stream_group_messages_pending` | gauge | `stream`, `group` |
//! | `redis_stream_group_lag` | gauge | `stream`, `group` |
//! | `fleetwire_scrape_errors_total` | counter | |
//!
//! The `redis_stream_*` names and meanings are redis_exporter's, so
//! dashboards and alerts written for it carry over (without its `db`
//! label; dead-letter streams appear as streams of their own). Labels are
//! streams, groups and services only, never instance or message ids, so the
//! number of series stays bounded by the topology.
//!
//! The exposition crate is the official [`prometheus-client`](https://docs.rs/prometheus-client)
//! (the Prometheus project's own Rust client): no global registry, typed
//! label sets, and collectors called at scrape time, which is what reading
//! the runner's existing counters needs. It writes the OpenMetrics text
//! format, which Prometheus negotiates and parses natively.
//!
//! ```no_run
//! # #[cfg(feature = "memory")] {
//! use fleetwire::{http::{HttpHealthServer, Overview}, memory::MemoryBus, metrics::Metrics, StreamName};
//! use std::sync::Arc;
//!
//! let stream = StreamName::new("sg:stream:inbound")?;
//! let raw = Arc::new(MemoryBus::new());
//! let metrics = Metrics::builder()
//!     .overview(Overview::new().bus(raw.clone()).stream(stream))
//!     .build();
//! let bus = metrics.bus(raw); // publish through this one
//! let server = HttpHealthServer::builder().metrics(metrics.source()).build()?;
//! # }
//! # Ok::<_, fleetwire::Error>(())
//! ```

mod bus;
mod collect;
mod handler;
mod liveness;
mod registry;

pub use bus::MeteredBus;
pub use handler::MeteredHandler;
pub use liveness::MeteredLiveness;
pub use registry::MeteredRegistry;

use crate::{
    consumer::{Handler, Runner},
    http::{MetricsSource, Overview},
    EventBus, LivenessStore, RegistryStore,
};
use async_trait::async_trait;
use collect::{RunnerCollector, ScrapeGauges};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};
use std::{fmt, sync::Arc, time::Instant};

/// The `Content-Type` of the exposition `/metrics` serves.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StreamLabels {
    pub(crate) stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub(crate) stream: String,
    pub(crate) group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub(crate) service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub(crate) op: &'static str,
    pub(crate) kind: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 100 µs to about 26 s, doubling: a local Redis
/// round trip sits in the first few, a stuck call in the last.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The instruments the decorators write to.
#[derive(Debug)]
pub(crate) struct Instruments {
    pub(crate) publishes: Family<StreamLabels, Counter>,
    pub(crate) publish_duration: Histograms<StreamLabels>,
    pub(crate) errors: Family<ErrorLabels, Counter>,
    pub(crate) liveness_batch: Histogram,
    pub(crate) handler_duration: Histograms<GroupLabels>,
    pub(crate) registrations: Family<ServiceLabels, Counter>,
    pub(crate) reregistrations: Family<ServiceLabels, Counter>,
    pub(crate) heartbeat_failures: Family<ServiceLabels, Counter>,
}

impl Instruments {
    pub(crate) fn error(&self, op: &'static str, e: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                op,
                kind: kind_label(e.kind()),
            })
            .inc();
    }

    /// Count an error of `op` if `r` is one, and pass `r` on.
    pub(crate) fn track<T>(&self, op: &'static str, r: crate::Result<T>) -> crate::Result<T> {
        if let Err(e) = &r {
            self.error(op, e);
        }
        r
    }
}

/// The `kind` label of an error: its [`ErrorKind`](crate::ErrorKind) in snake case.
fn kind_label(kind: crate::ErrorKind) -> &'static str {
    use crate::ErrorKind::*;
    match kind {
        InvalidInput => "invalid_input",
        NotFound => "not_found",
        Unavailable => "unavailable",
        Timeout => "timeout",
        Unsupported => "unsupported",
        Codec => "codec",
        Protocol => "protocol",
        Shutdown => "shutdown",
        Conflict => "conflict",
        Backpressure => "backpressure",
        Authentication => "authentication",
        Tls => "tls",
        NotReplicated => "not_replicated",
    }
}

/// A process's metrics: the registry, its decorators and scrape-time readers.
///
/// Cloning shares it. See the [module docs](self) for what it exports.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    instruments: Arc<Instruments>,
    runners: Arc<RunnerCollector>,
    gauges: Arc<ScrapeGauges>,
    overview: Option<Overview>,
    // One scrape at a time: the scrape-time gauges are cleared and refilled.
    scrape: futures_util::lock::Mutex<()>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("overview", &self.inner.overview)
            .finish_non_exhaustive()
    }
}

/// Builds [`Metrics`].
#[derive(Debug, Default)]
#[must_use]
pub struct MetricsBuilder {
    overview: Option<Overview>,
}

impl MetricsBuilder {
    /// Read stream, group and registry gauges from `overview` at each scrape
    /// (default: none; those gauges are then absent).
    pub fn overview(mut self, overview: Overview) -> Self {
        self.overview = Some(overview);
        self
    }

    /// The metrics, every instrument registered.
    pub fn build(self) -> Metrics {
        let instruments = Arc::new(Instruments {
            publishes: Family::default(),
            publish_duration: Family::new_with_constructor(latency),
            errors: Family::default(),
            liveness_batch: latency(),
            handler_duration: Family::new_with_constructor(latency),
            registrations: Family::default(),
            reregistrations: Family::default(),
            heartbeat_failures: Family::default(),
        });
        let i = &instruments;
        let mut r = Registry::default();
        r.register(
            "fleetwire_publishes",
            "Entries published, by stream",
            i.publishes.clone(),
        );
        r.register_with_unit(
            "fleetwire_publish_duration",
            "Time to publish one entry or batch, by stream",
            Unit::Seconds,
            i.publish_duration.clone(),
        );
        r.register(
            "fleetwire_errors",
            "Store calls that failed, by operation and error kind",
            i.errors.clone(),
        );
        r.register_with_unit(
            "fleetwire_liveness_batch_duration",
            "Time of one liveness is_alive_batch call",
            Unit::Seconds,
            i.liveness_batch.clone(),
        );
        r.register_with_unit(
            "fleetwire_handler_duration",
            "Time a consumer handler took per entry, by stream and group",
            Unit::Seconds,
            i.handler_duration.clone(),
        );
        r.register(
            "fleetwire_registrations",
            "Full registrations written to the registry (status changes included), by service",
            i.registrations.clone(),
        );
        r.register(
            "fleetwire_reregistrations",
            "Registrations of an instance after its heartbeat failed or found it gone, by service",
            i.reregistrations.clone(),
        );
        r.register(
            "fleetwire_heartbeat_failures",
            "Registry heartbeats that failed or found the registration gone, by service",
            i.heartbeat_failures.clone(),
        );
        let runners = Arc::new(RunnerCollector::default());
        r.register_collector(Box::new(runners.clone()));
        let gauges = Arc::new(ScrapeGauges::default());
        gauges.register(&mut r);
        Metrics {
            inner: Arc::new(Inner {
                registry: r,
                instruments,
                runners,
                gauges,
                overview: self.overview,
                scrape: Default::default(),
            }),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Metrics {
    /// A builder.
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// `bus`, counting and timing publishes and counting errors.
    pub fn bus(&self, bus: Arc<dyn EventBus>) -> Arc<MeteredBus> {
        Arc::new(MeteredBus::new(bus, self.inner.instruments.clone()))
    }

    /// `liveness`, timing batch reads and counting errors.
    pub fn liveness(&self, liveness: Arc<dyn LivenessStore>) -> Arc<MeteredLiveness> {
        Arc::new(MeteredLiveness::new(liveness, self.inner.instruments.clone()))
    }

    /// `registry`, counting registrations, re-registrations, heartbeat failures and errors.
    pub fn registry(&self, registry: Arc<dyn RegistryStore>) -> Arc<MeteredRegistry> {
        Arc::new(MeteredRegistry::new(registry, self.inner.instruments.clone()))
    }

    /// `handler`, timing each call as `fleetwire_handler_duration_seconds{stream, group}`.
    pub fn handler<H: Handler>(
        &self,
        stream: &crate::StreamName,
        group: &crate::GroupName,
        handler: H,
    ) -> MeteredHandler<H> {
        MeteredHandler::new(handler, stream, group, self.inner.instruments.clone())
    }

    /// Export `runner`'s ack / retry / dead-letter counters at each scrape
    /// (summed over runners of the same stream and group). Acks ride with
    /// the runner's next read and are counted when it returns, so an idle
    /// runner's last acks show up to its `block` time (2 s by default) late.
    pub fn watch_runner(&self, runner: &Runner) {
        self.inner.runners.add(runner.clone());
    }

    /// This, as the source of the health server's `/metrics`.
    pub fn source(&self) -> Arc<dyn MetricsSource> {
        Arc::new(self.clone())
    }

    /// Read the scrape-time figures and render the exposition.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads; a later scrape refreshes the gauges.
    pub async fn render(&self) -> String {
        let _one = self.inner.scrape.lock().await;
        let started = Instant::now();
        if let Some(o) = &self.inner.overview {
            let snapshot = o.snapshot(None).await;
            self.inner.gauges.fill(&snapshot);
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            tracing::warn!(event = "metrics_encode_failed", error = %e);
        }
        tracing::trace!(
            event = "metrics_rendered",
            ms = started.elapsed().as_millis() as u64
        );
        out
    }
}

#[async_trait]
impl MetricsSource for Metrics {
    fn content_type(&self) -> &str {
        CONTENT_TYPE
    }

    async fn render(&self) -> String {
        Metrics::render(self).await
    }
}
