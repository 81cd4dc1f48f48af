//! Watch the registry: a snapshot of the members of one service (or all),
//! then an event for each change, over any [`RegistryStore`].
//!
//! A [`RegistryWatch`] lists the registry every [`interval`](RegistryWatch::interval)
//! (1 s by default, well under the lifecycle's 15 s TTL) and diffs the
//! listing against the previous one, as Kubernetes' list+watch does after a
//! reconnect. It never relies on Redis keyspace notifications, which are
//! lossy (fire-and-forget pub/sub) and off by default; a change that is
//! undone between two listings (a restart that re-registers the same
//! entry within one interval) is not seen.
//!
//! **Left or expired.** An instance gone from the listing is
//! [`Expired`](WatchEvent::Expired) when the TTL the store last reported for
//! it ([`Instance::expires_in`], read with
//! [`list_with_expiry`](RegistryStore::list_with_expiry)) has run out by the time it is missed, and
//! [`Left`](WatchEvent::Left) when it vanished before: deregistered, or lost
//! by the store (a restart without persistence, an eviction). A store that
//! reports no TTL makes every departure `Left`.
//!
//! **Outages.** A failed listing yields one [`Unavailable`](WatchEvent::Unavailable);
//! the watch keeps listing at its interval, and the first listing that
//! succeeds yields [`Resynced`](WatchEvent::Resynced) with the full listing and
//! the changes since the last good one.
//!
//! ```
//! # async_io::block_on(async {
//! # #[cfg(feature = "memory")] {
//! use fleetwire::{memory::MemoryRegistry, watch::{RegistryWatch, WatchEvent}};
//! use fleetwire::{Instance, InstanceId, RegistryStore, ServiceName, Status};
//! use std::{sync::Arc, time::Duration};
//!
//! let registry = Arc::new(MemoryRegistry::new());
//! let api = ServiceName::new("api")?;
//! let mut watch = RegistryWatch::new(registry.clone(), Some(api.clone()))
//!     .interval(Duration::from_millis(10));
//! assert!(matches!(watch.next().await, WatchEvent::Snapshot(ref list) if list.is_empty()));
//! let me = Instance::new(api, InstanceId::new("api-1")?, Status::Running);
//! registry.register(&me, Duration::from_secs(15)).await?;
//! assert!(matches!(watch.next().await, WatchEvent::Joined(ref i) if *i == me));
//! # }
//! # Ok::<(), fleetwire::Error>(())
//! # }).unwrap();
//! ```

use crate::{
    clock::{self, SharedClock},
    rt, Error, Instance, InstanceId, RegistryStore, ServiceName, Status,
};
use futures_util::stream::BoxStream;
use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

/// The default time between two listings.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// A change in the registry, as a [`RegistryWatch`] reports it.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The first good listing: every instance alive when the watch started
    /// (after an `Unavailable` when the store was down at first).
    Snapshot(Vec<Instance>),
    /// A new instance.
    Joined(Instance),
    /// An instance removed before its TTL ran out (deregistered, or lost by
    /// the store); the instance as last seen.
    Left(Instance),
    /// An instance whose TTL ran out without a heartbeat; as last seen.
    Expired(Instance),
    /// An instance re-registered with another status.
    StatusChanged {
        /// Its previous status.
        from: Status,
        /// The instance now.
        instance: Instance,
    },
    /// An instance re-registered with the same status but other metadata
    /// (host, pid, start time or metadata fields).
    MetadataChanged {
        /// The instance before.
        from: Instance,
        /// The instance now.
        instance: Instance,
    },
    /// A listing failed: the store is down or unreachable. Reported once per
    /// outage; the watch keeps trying.
    Unavailable(Error),
    /// The first good listing after an outage.
    Resynced {
        /// Every instance alive now.
        instances: Vec<Instance>,
        /// What changed since the last good listing: `Joined`, `Left`,
        /// `Expired`, `StatusChanged` and `MetadataChanged` events.
        changes: Vec<WatchEvent>,
    },
}

impl WatchEvent {
    /// A short lowercase name: `snapshot`, `joined`, `left`, `expired`,
    /// `status_changed`, `metadata_changed`, `unavailable`, `resynced`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Snapshot(_) => "snapshot",
            Self::Joined(_) => "joined",
            Self::Left(_) => "left",
            Self::Expired(_) => "expired",
            Self::StatusChanged { .. } => "status_changed",
            Self::MetadataChanged { .. } => "metadata_changed",
            Self::Unavailable(_) => "unavailable",
            Self::Resynced { .. } => "resynced",
        }
    }

    /// The instance a single-instance event is about.
    pub fn instance(&self) -> Option<&Instance> {
        match self {
            Self::Joined(i) | Self::Left(i) | Self::Expired(i) => Some(i),
            Self::StatusChanged { instance, .. } | Self::MetadataChanged { instance, .. } => Some(instance),
            _ => None,
        }
    }
}

/// One instance as last listed, with when its TTL runs out by the watch's clock.
#[derive(Debug)]
struct Seen {
    instance: Instance,
    expires_at_ms: Option<u64>,
}

type Key = (ServiceName, InstanceId);

/// Snapshot-then-changes view of a registry; see the [module docs](self).
///
/// Pull-based: it lists only inside [`next`](Self::next), so it runs no task
/// and costs nothing while nobody asks.
pub struct RegistryWatch {
    registry: Arc<dyn RegistryStore>,
    service: Option<ServiceName>,
    interval: Duration,
    clock: SharedClock,
    known: Option<BTreeMap<Key, Seen>>,
    queue: VecDeque<WatchEvent>,
    down: bool,
    next_poll: Option<Instant>,
}

impl fmt::Debug for RegistryWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryWatch")
            .field("service", &self.service)
            .field("interval", &self.interval)
            .field("known", &self.known.as_ref().map(BTreeMap::len))
            .field("queued", &self.queue.len())
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

impl RegistryWatch {
    /// Watch `service`, or every service when `None`, listing every
    /// [`DEFAULT_INTERVAL`] on the system clock.
    pub fn new(registry: Arc<dyn RegistryStore>, service: Option<ServiceName>) -> Self {
        Self {
            registry,
            service,
            interval: DEFAULT_INTERVAL,
            clock: clock::system(),
            known: None,
            queue: VecDeque::new(),
            down: false,
            next_poll: None,
        }
    }

    /// Time between two listings (at least 1 ms). Keep it well under the
    /// TTL the instances register with: an expiry is seen at most one
    /// interval late, and a shorter interval costs one `list` more often.
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = every.max(Duration::from_millis(1));
        self
    }

    /// The clock that tells an expiry from a departure; give it the clock
    /// of a [`MemoryRegistry`](crate::memory::MemoryRegistry) driven by a
    /// manual clock. Defaults to the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The service watched, `None` for all.
    pub fn service(&self) -> Option<&ServiceName> {
        self.service.as_ref()
    }

    /// The next event: the first call lists at once and returns the
    /// [`Snapshot`](WatchEvent::Snapshot); later calls list every interval
    /// until something changed. Never ends; bound it with a timeout.
    ///
    /// # Cancel safety
    /// Safe to drop at any await point: the watch's state changes only after
    /// a listing returned, with no await in between, and an event is taken
    /// from the queue only when it is returned. A dropped call loses no
    /// event; the next call lists again at once. No task is spawned.
    pub async fn next(&mut self) -> WatchEvent {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return event;
            }
            if let Some(at) = self.next_poll {
                let now = Instant::now();
                if at > now {
                    rt::sleep(at - now).await;
                }
            }
            let started_ms = self.clock.now_ms();
            let listed = self.registry.list_with_expiry(self.service.as_ref()).await;
            let ended_ms = self.clock.now_ms();
            self.next_poll = Some(Instant::now() + self.interval);
            match listed {
                Ok(list) => self.apply(list, started_ms, ended_ms),
                Err(e) => {
                    if !self.down {
                        self.down = true;
                        self.queue.push_back(WatchEvent::Unavailable(e));
                    }
                }
            }
        }
    }

    /// The events as a `Stream` that never ends.
    ///
    /// Dropping the stream drops the watch; dropping it between items, or
    /// while an item is being produced, loses nothing it had returned and
    /// leaves no task behind (see [`next`](Self::next)).
    pub fn into_stream(self) -> BoxStream<'static, WatchEvent> {
        Box::pin(futures_util::stream::unfold(self, |mut watch| async move {
            let event = watch.next().await;
            Some((event, watch))
        }))
    }

    /// Diff `list` (read between `started_ms` and `ended_ms`) into events.
    fn apply(&mut self, list: Vec<Instance>, started_ms: u64, ended_ms: u64) {
        // The TTL was read after `started_ms`: this is the earliest it runs out.
        let now: BTreeMap<Key, Seen> = list
            .iter()
            .map(|i| {
                let seen = Seen {
                    instance: i.clone(),
                    expires_at_ms: i
                        .expires_in
                        .map(|d| started_ms.saturating_add(clock::duration_ms(d))),
                };
                ((i.service.clone(), i.id.clone()), seen)
            })
            .collect();
        let Some(before) = self.known.replace(now) else {
            self.down = false;
            self.queue.push_back(WatchEvent::Snapshot(list));
            return;
        };
        let now = self.known.as_ref().expect("just set");
        let changes = diff(&before, now, ended_ms);
        if std::mem::take(&mut self.down) {
            self.queue.push_back(WatchEvent::Resynced {
                instances: list,
                changes,
            });
        } else {
            self.queue.extend(changes);
        }
    }
}

/// The events that turn `before` into `now`, missed at `now_ms`: departures,
/// then arrivals, then changes, each in service and id order.
fn diff(before: &BTreeMap<Key, Seen>, now: &BTreeMap<Key, Seen>, now_ms: u64) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    for (key, old) in before {
        if !now.contains_key(key) {
            let instance = old.instance.clone();
            out.push(match old.expires_at_ms {
                Some(at) if at <= now_ms => WatchEvent::Expired(instance),
                _ => WatchEvent::Left(instance),
            });
        }
    }
    for (key, new) in now {
        if !before.contains_key(key) {
            out.push(WatchEvent::Joined(new.instance.clone()));
        }
    }
    for (key, new) in now {
        let Some(old) = before.get(key) else {
            continue;
        };
        if old.instance.status != new.instance.status {
            out.push(WatchEvent::StatusChanged {
                from: old.instance.status.clone(),
                instance: new.instance.clone(),
            });
        } else if old.instance != new.instance {
            out.push(WatchEvent::MetadataChanged {
                from: old.instance.clone(),
                instance: new.instance.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: &str, status: Status, expires_at_ms: Option<u64>) -> (Key, Seen) {
        let s = ServiceName::new("api").unwrap();
        let i = InstanceId::new(id).unwrap();
        let instance = Instance::new(s.clone(), i.clone(), status);
        (
            (s, i),
            Seen {
                instance,
                expires_at_ms,
            },
        )
    }

    #[test]
    fn diff_tells_expiry_from_departure() {
        let before: BTreeMap<_, _> = [
            seen("gone-early", Status::Running, Some(2_000)),
            seen("gone-late", Status::Running, Some(1_000)),
            seen("no-ttl", Status::Running, None),
            seen("moved", Status::Starting, Some(9_000)),
            seen("same", Status::Running, Some(9_000)),
        ]
        .into_iter()
        .collect();
        let now: BTreeMap<_, _> = [
            seen("moved", Status::Running, Some(9_500)),
            seen("same", Status::Running, Some(9_500)),
            seen("new", Status::Starting, Some(9_500)),
        ]
        .into_iter()
        .collect();
        let names: Vec<_> = diff(&before, &now, 1_500)
            .iter()
            .map(|e| format!("{} {}", e.name(), e.instance().unwrap().id))
            .collect();
        assert_eq!(
            names,
            [
                "left gone-early",
                "expired gone-late",
                "left no-ttl",
                "joined new",
                "status_changed moved"
            ]
        );
    }
}
