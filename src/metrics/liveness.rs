//! Timing a liveness store.

use super::Instruments;
use crate::{error::Result, name::InstanceId, LivenessStore};
use async_trait::async_trait;
use std::{sync::Arc, time::Duration, time::Instant};

/// A [`LivenessStore`] that times `is_alive_batch`
/// (`fleetwire_liveness_batch_duration_seconds`) and counts failed calls in
/// `fleetwire_errors_total{op, kind}`; made by
/// [`Metrics::liveness`](super::Metrics::liveness). Calls keep the inner
/// store's cancel safety.
#[derive(Debug)]
pub struct MeteredLiveness {
    inner: Arc<dyn LivenessStore>,
    m: Arc<Instruments>,
}

impl MeteredLiveness {
    pub(super) fn new(inner: Arc<dyn LivenessStore>, m: Arc<Instruments>) -> Self {
        Self { inner, m }
    }
}

#[async_trait]
impl LivenessStore for MeteredLiveness {
    fn available(&self) -> bool {
        self.inner.available()
    }

    async fn touch(&self, id: &InstanceId, ttl: Duration) -> Result<()> {
        self.m.track("liveness_touch", self.inner.touch(id, ttl).await)
    }

    async fn is_alive_batch(&self, ids: &[InstanceId]) -> Result<Vec<bool>> {
        let started = Instant::now();
        let r = self.inner.is_alive_batch(ids).await;
        self.m.liveness_batch.observe(started.elapsed().as_secs_f64());
        self.m.track("liveness_batch", r)
    }

    async fn forget(&self, id: &InstanceId) -> Result<()> {
        self.m.track("liveness_forget", self.inner.forget(id).await)
    }
}
