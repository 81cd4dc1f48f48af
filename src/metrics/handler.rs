//! Timing a consumer handler.

use super::{GroupLabels, Instruments};
use crate::{
    consumer::{Handler, HandlerResult},
    Delivery, GroupName, StreamName,
};
use async_trait::async_trait;
use prometheus_client::metrics::histogram::Histogram;
use std::{fmt, sync::Arc, time::Instant};

/// A [`Handler`] whose calls are timed as
/// `fleetwire_handler_duration_seconds{stream, group}`; made by
/// [`Metrics::handler`](super::Metrics::handler).
pub struct MeteredHandler<H> {
    inner: H,
    duration: Histogram,
    _instruments: Arc<Instruments>,
}

impl<H> MeteredHandler<H> {
    pub(super) fn new(
        inner: H,
        stream: &StreamName,
        group: &GroupName,
        instruments: Arc<Instruments>,
    ) -> Self {
        // The series is looked up once here, not per entry.
        let duration = instruments
            .handler_duration
            .get_or_create(&GroupLabels {
                stream: stream.to_string(),
                group: group.to_string(),
            })
            .clone();
        Self {
            inner,
            duration,
            _instruments: instruments,
        }
    }
}

impl<H> fmt::Debug for MeteredHandler<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredHandler").finish_non_exhaustive()
    }
}

#[async_trait]
impl<H: Handler> Handler for MeteredHandler<H> {
    async fn handle(&self, delivery: Delivery) -> HandlerResult {
        let started = Instant::now();
        let result = self.inner.handle(delivery).await;
        self.duration.observe(started.elapsed().as_secs_f64());
        result
    }
}
