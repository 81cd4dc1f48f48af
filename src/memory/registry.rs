use super::Outage;
use crate::{
    clock::{self, SharedClock},
    error::Result,
    name::{InstanceId, ServiceName},
    Capabilities, Instance, RegistryStore,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

type Entries = BTreeMap<(ServiceName, InstanceId), (Instance, u64)>;

/// In-memory [`RegistryStore`]; entries expire by the clock.
///
/// ```
/// # async_io::block_on(async {
/// use fleetwire::{memory::MemoryRegistry, Instance, InstanceId, RegistryStore, ServiceName, Status};
/// use std::time::Duration;
/// let reg = MemoryRegistry::new();
/// let me = Instance::new(ServiceName::new("api")?, InstanceId::new("api-1")?, Status::Running);
/// reg.register(&me, Duration::from_secs(15)).await?;
/// assert_eq!(reg.list(None).await?, vec![me]);
/// # Ok::<(), fleetwire::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    clock: SharedClock,
    outage: Outage,
    entries: Arc<Mutex<Entries>>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// A registry on the system clock.
    pub fn new() -> Self {
        Self::with_clock(clock::system())
    }

    /// A registry on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            clock,
            outage: Outage::default(),
            entries: Default::default(),
        }
    }

    /// Simulate the store going down (`false`) or coming back (`true`).
    pub fn set_available(&self, available: bool) {
        self.outage.set_down(!available);
    }

    /// Remove an entry without telling its owner, as a Redis restart or eviction would.
    pub fn evict(&self, service: &ServiceName, id: &InstanceId) {
        self.entries.lock().remove(&(service.clone(), id.clone()));
    }
}

#[async_trait]
impl RegistryStore for MemoryRegistry {
    async fn register(&self, instance: &Instance, ttl: Duration) -> Result<()> {
        self.outage
            .check(|| format!("register `{}`/`{}`", instance.service, instance.id))?;
        let now = self.clock.now_ms();
        let ttl_ms = crate::clock::ttl_ms(ttl.min(crate::registry::MAX_TTL));
        let mut stored = instance.clone();
        stored.ttl = Some(Duration::from_millis(ttl_ms));
        stored.expires_in = None;
        let mut entries = self.entries.lock();
        // Expired entries are otherwise only dropped by `list`; keep memory bounded.
        if entries.len() % 1024 == 1023 {
            entries.retain(|_, (_, exp)| *exp > now);
        }
        entries.insert(
            (instance.service.clone(), instance.id.clone()),
            (stored, now.saturating_add(ttl_ms)),
        );
        Ok(())
    }

    async fn heartbeat(&self, service: &ServiceName, id: &InstanceId, ttl: Duration) -> Result<bool> {
        self.outage.check(|| format!("heartbeat `{service}`/`{id}`"))?;
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock();
        match entries.get_mut(&(service.clone(), id.clone())) {
            Some((inst, exp)) if *exp > now => {
                let ttl_ms = crate::clock::ttl_ms(ttl.min(crate::registry::MAX_TTL));
                *exp = now.saturating_add(ttl_ms);
                inst.ttl = Some(Duration::from_millis(ttl_ms));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn deregister(&self, service: &ServiceName, id: &InstanceId) -> Result<()> {
        self.outage.check(|| format!("deregister `{service}`/`{id}`"))?;
        self.entries.lock().remove(&(service.clone(), id.clone()));
        Ok(())
    }

    async fn list<'a>(&self, service: Option<&'a ServiceName>) -> Result<Vec<Instance>> {
        self.outage.check(|| "list registry".to_string())?;
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock();
        entries.retain(|_, (_, exp)| *exp > now);
        Ok(entries
            .iter()
            .filter(|((s, _), _)| service.is_none_or(|want| want == s))
            .map(|(_, (inst, exp))| {
                let mut inst = inst.clone();
                inst.expires_in = Some(Duration::from_millis(exp - now));
                inst
            })
            .collect())
    }

    async fn ping(&self) -> Result<()> {
        self.outage.check(|| "ping registry".to_string())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::MEMORY
    }
}
