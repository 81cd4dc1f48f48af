//! Figures read at scrape time: runner counters and overview gauges.

use super::{GroupLabels, StreamLabels};
use crate::{consumer::Runner, http::OverviewSnapshot};
use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    stream: String,
    group: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    service: String,
    status: String,
}

/// Runners whose counters are exported; read, never written, by a scrape.
#[derive(Debug, Default)]
pub(super) struct RunnerCollector {
    runners: Mutex<Vec<Runner>>,
}

impl RunnerCollector {
    pub(super) fn add(&self, runner: Runner) {
        self.runners.lock().push(runner);
    }
}

impl Collector for RunnerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Several runners of one stream and group (replicas in one process)
        // are one series: duplicate label sets would make the exposition invalid.
        let mut sums: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
        for r in self.runners.lock().iter() {
            let c = r.stats().snapshot();
            let sum = sums
                .entry((r.stream().to_string(), r.group().to_string()))
                .or_default();
            sum[0] += c.acked;
            sum[1] += c.retried;
            sum[2] += c.dead_lettered;
        }
        if sums.is_empty() {
            return Ok(());
        }
        let kind = ConstCounter::new(0u64).metric_type();
        let mut family = encoder.encode_descriptor(
            "fleetwire_consumer_messages",
            "Entries a consumer runner finished, by stream, group and outcome (ack, retry, dead_letter).",
            None,
            kind,
        )?;
        for ((stream, group), counts) in sums {
            for (outcome, n) in ["ack", "retry", "dead_letter"].into_iter().zip(counts) {
                let labels = OutcomeLabels {
                    stream: stream.clone(),
                    group: group.clone(),
                    outcome,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Gauges refilled from an overview snapshot at each scrape.
#[derive(Debug, Default)]
pub(super) struct ScrapeGauges {
    instances: Family<StatusLabels, Gauge>,
    stream_length: Family<StreamLabels, Gauge>,
    stream_groups: Family<StreamLabels, Gauge>,
    group_consumers: Family<GroupLabels, Gauge>,
    group_pending: Family<GroupLabels, Gauge>,
    group_lag: Family<GroupLabels, Gauge>,
    scrape_errors: Counter,
}

impl ScrapeGauges {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "fleetwire_registry_instances",
            "Registered instances, by service and status",
            self.instances.clone(),
        );
        r.register(
            "redis_stream_length",
            "The number of elements of the stream",
            self.stream_length.clone(),
        );
        r.register(
            "redis_stream_groups",
            "Groups count of stream",
            self.stream_groups.clone(),
        );
        r.register(
            "redis_stream_group_consumers",
            "Consumers count of stream group",
            self.group_consumers.clone(),
        );
        r.register(
            "redis_stream_group_messages_pending",
            "Pending number of messages in that stream group",
            self.group_pending.clone(),
        );
        r.register(
            "redis_stream_group_lag",
            "The number of entries not yet delivered to the group",
            self.group_lag.clone(),
        );
        r.register(
            "fleetwire_scrape_errors",
            "Parts of a scrape that could not be read (registry, streams); details are logged",
            self.scrape_errors.clone(),
        );
    }

    pub(super) fn fill(&self, s: &OverviewSnapshot) {
        // Cleared first, so a service or stream that went away leaves no stale series.
        self.instances.clear();
        self.stream_length.clear();
        self.stream_groups.clear();
        self.group_consumers.clear();
        self.group_pending.clear();
        self.group_lag.clear();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for svc in &s.services {
            for i in &svc.instances {
                self.instances
                    .get_or_create(&StatusLabels {
                        service: svc.name.clone(),
                        status: i.status.clone(),
                    })
                    .inc();
            }
        }
        // A stream that could not be read has no figures rather than zeros.
        for st in s.streams.iter().filter(|st| st.error.is_none()) {
            let labels = StreamLabels {
                stream: st.name.clone(),
            };
            self.stream_length.get_or_create(&labels).set(gauge(st.length));
            self.stream_groups
                .get_or_create(&labels)
                .set(gauge(st.groups.len() as u64));
            if let (Some(name), Some(n)) = (&st.dead_letter_stream, st.dead_letters) {
                let dlq = StreamLabels { stream: name.clone() };
                self.stream_length.get_or_create(&dlq).set(gauge(n));
            }
            for g in &st.groups {
                let labels = GroupLabels {
                    stream: st.name.clone(),
                    group: g.name.clone(),
                };
                self.group_consumers
                    .get_or_create(&labels)
                    .set(gauge(g.consumers));
                self.group_pending.get_or_create(&labels).set(gauge(g.pending));
                if let Some(lag) = g.lag {
                    self.group_lag.get_or_create(&labels).set(gauge(lag));
                }
            }
        }
        self.scrape_errors.inc_by(s.errors.len() as u64);
    }
}
