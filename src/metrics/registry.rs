//! Counting registry writes and heartbeat failures.

use super::{Instruments, ServiceLabels};
use crate::{
    error::Result,
    name::{InstanceId, ServiceName},
    Capabilities, Instance, RegistryStore,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::{collections::HashSet, sync::Arc, time::Duration};

/// A [`RegistryStore`] that counts registrations
/// (`fleetwire_registrations_total`, status changes included), heartbeat
/// failures (`fleetwire_heartbeat_failures_total`: an error or the entry
/// found gone), re-registrations (`fleetwire_reregistrations_total`: a
/// registration of an instance whose last heartbeat failed, as the
/// lifecycle's heartbeat loop does to recover) and failed calls
/// (`fleetwire_errors_total{op, kind}`); made by
/// [`Metrics::registry`](super::Metrics::registry). Calls keep the inner
/// store's cancel safety.
#[derive(Debug)]
pub struct MeteredRegistry {
    inner: Arc<dyn RegistryStore>,
    m: Arc<Instruments>,
    // Instances whose last heartbeat failed and that were not registered
    // since: this process's own, a handful.
    lost: Mutex<HashSet<(ServiceName, InstanceId)>>,
}

impl MeteredRegistry {
    pub(super) fn new(inner: Arc<dyn RegistryStore>, m: Arc<Instruments>) -> Self {
        Self {
            inner,
            m,
            lost: Mutex::default(),
        }
    }

    fn service(s: &ServiceName) -> ServiceLabels {
        ServiceLabels {
            service: s.to_string(),
        }
    }
}

#[async_trait]
impl RegistryStore for MeteredRegistry {
    async fn register(&self, instance: &Instance, ttl: Duration) -> Result<()> {
        let r = self.m.track("register", self.inner.register(instance, ttl).await);
        if r.is_ok() {
            let labels = Self::service(&instance.service);
            self.m.registrations.get_or_create(&labels).inc();
            let key = (instance.service.clone(), instance.id.clone());
            if self.lost.lock().remove(&key) {
                self.m.reregistrations.get_or_create(&labels).inc();
            }
        }
        r
    }

    async fn heartbeat(&self, service: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool> {
        let r = self
            .m
            .track("heartbeat", self.inner.heartbeat(service, id, ttl).await);
        if !matches!(r, Ok(true)) {
            self.m
                .heartbeat_failures
                .get_or_create(&Self::service(service))
                .inc();
            self.lost.lock().insert((service.clone(), id.clone()));
        }
        r
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()> {
        self.lost.lock().remove(&(service.clone(), id.clone()));
        self.m
            .track("deregister", self.inner.deregister(service, id).await)
    }

    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        self.m.track("list", self.inner.list(service).await)
    }

    async fn list_with_expiry<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        self.m.track("list", self.inner.list_with_expiry(service).await)
    }

    async fn ping(&self) -> Result<()> {
        self.m.track("registry_ping", self.inner.ping().await)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
