use super::Outage;
use crate::{
    clock::{self, SharedClock},
    error::Result,
    name::InstanceId,
    LivenessStore,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::{collections::HashMap, sync::Arc, time::Duration};

/// In-memory [`LivenessStore`]; records expire by the clock.
#[derive(Debug, Clone)]
pub struct MemoryLiveness {
    clock: SharedClock,
    outage: Outage,
    expiries: Arc<Mutex<HashMap<InstanceId, u64>>>,
}

impl Default for MemoryLiveness {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLiveness {
    /// A store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(clock::system())
    }

    /// A store on `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            clock,
            outage: Outage::default(),
            expiries: Default::default(),
        }
    }

    /// Simulate the store going down (`false`) or coming back (`true`).
    pub fn set_available(&self, available: bool) {
        self.outage.set_down(!available);
    }
}

#[async_trait]
impl LivenessStore for MemoryLiveness {
    fn available(&self) -> bool {
        true
    }

    async fn touch(&self, id: &InstanceId, ttl: Duration) -> Result<()> {
        self.outage.check(|| format!("liveness touch of `{id}`"))?;
        let now = self.clock.now_ms();
        let mut map = self.expiries.lock();
        if map.len() % 1024 == 1023 {
            map.retain(|_, exp| *exp > now);
        }
        map.insert(
            id.clone(),
            now.saturating_add(crate::clock::ttl_ms(ttl.min(crate::registry::MAX_TTL))),
        );
        Ok(())
    }

    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>> {
        self.outage
            .check(|| format!("liveness check of {} ids", ids.len()))?;
        let now = self.clock.now_ms();
        let map = self.expiries.lock();
        Ok(ids
            .iter()
            .map(|id| map.get(id).is_some_and(|exp| *exp > now))
            .collect())
    }

    async fn forget(&self, id: &InstanceId) -> Result<()> {
        self.outage.check(|| format!("liveness forget of `{id}`"))?;
        self.expiries.lock().remove(id);
        Ok(())
    }
}
