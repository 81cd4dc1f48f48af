//! Rolling restart: a service's instances restarted a few at a time, each
//! batch only once the previous one is back and enough others are ready.

use super::{
    client::{ControlClient, Results},
    command::{Op, Target},
};
use crate::{
    error::{Error, ErrorKind, Result},
    rt, InstanceId, ServiceName, Status,
};
use futures_util::future::join_all;
use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

type Progress = Arc<dyn Fn(&RollingEvent) + Send + Sync>;
/// Which process runs an instance, as registered: host, pid, start time.
type Process = (Option<String>, Option<u32>, Option<u64>);

/// How a rolling restart proceeds.
#[derive(Clone)]
#[non_exhaustive]
pub struct RollingOptions {
    /// Instances restarted at once (default 1); lowered so that at least
    /// `min_ready` others stay.
    pub at_once: usize,
    /// Ready instances outside a batch required before it restarts
    /// (default 1): the service is never left with fewer.
    pub min_ready: usize,
    /// Time each restarted instance gets to be back, and a batch to find
    /// enough ready instances beside it (default 60 s).
    pub back_within: Duration,
    /// Time an instance gets to acknowledge its restart (default 10 s).
    pub ack_within: Duration,
    /// Time a roll call waits for answers (default 2 s).
    pub ping_within: Duration,
    /// Pause between two readiness checks (default 100 ms).
    pub poll_every: Duration,
    on_progress: Option<Progress>,
}

impl fmt::Debug for RollingOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RollingOptions")
            .field("at_once", &self.at_once)
            .field("min_ready", &self.min_ready)
            .field("back_within", &self.back_within)
            .field("ack_within", &self.ack_within)
            .field("ping_within", &self.ping_within)
            .field("poll_every", &self.poll_every)
            .finish_non_exhaustive()
    }
}

impl Default for RollingOptions {
    fn default() -> Self {
        Self {
            at_once: 1,
            min_ready: 1,
            back_within: Duration::from_secs(60),
            ack_within: Duration::from_secs(10),
            ping_within: Duration::from_secs(2),
            poll_every: Duration::from_millis(100),
            on_progress: None,
        }
    }
}

impl RollingOptions {
    /// Restart `n` instances at a time.
    pub fn at_once(mut self, n: usize) -> Self {
        self.at_once = n;
        self
    }

    /// Keep at least `n` other instances ready while a batch restarts.
    pub fn min_ready(mut self, n: usize) -> Self {
        self.min_ready = n;
        self
    }

    /// Give each batch this long to be back.
    pub fn back_within(mut self, d: Duration) -> Self {
        self.back_within = d;
        self
    }

    /// Call `f` at each step (for a progress bar).
    pub fn on_progress(mut self, f: impl Fn(&RollingEvent) + Send + Sync + 'static) -> Self {
        self.on_progress = Some(Arc::new(f));
        self
    }

    fn emit(&self, event: RollingEvent) {
        if let Some(f) = &self.on_progress {
            f(&event);
        }
    }
}

/// One step of a rolling restart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RollingEvent {
    /// The rollout begins.
    Started {
        /// Instances to restart.
        instances: usize,
        /// How many at a time.
        at_once: usize,
    },
    /// A restart was sent to this instance.
    Restarting(InstanceId),
    /// The instance is back: registered as running and ready, a new process.
    Back(InstanceId, Duration),
}

/// What a rolling restart did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RollingReport {
    /// The service.
    pub service: ServiceName,
    /// Each instance restarted, with the time from its restart to its return.
    pub restarted: Vec<(InstanceId, Duration)>,
    /// Time of the whole rollout.
    pub took: Duration,
}

/// What a ping answered about readiness and process.
fn ping_state(results: &Results, instance: &InstanceId) -> Option<(bool, String)> {
    let r = results.instances.iter().find(|r| &r.instance == instance)?;
    let v = r.outcome.as_ref()?.result()?;
    let ready = v.get("ready")?.as_bool()?;
    let boot = v.get("boot_id")?.as_str()?.to_owned();
    Some((ready, boot))
}

impl ControlClient {
    /// Restart every instance of `service`, `options.at_once` at a time.
    ///
    /// Before each batch a roll call must find at least `min_ready` ready
    /// instances outside it; each instance of the batch is sent a restart,
    /// must acknowledge it `done`, and must come back (answer a ping as
    /// ready from a new process, and be listed as `running`) within
    /// `back_within`. Any failure stops the rollout with an error naming
    /// what was restarted so far: nothing more is restarted.
    ///
    /// Instances must keep their instance id across restarts (a supervisor
    /// slot, a pod name), as that is how they are recognised when back.
    ///
    /// # Cancel safety
    /// Dropped, the rollout stops; restarts already sent go on.
    pub async fn rolling_restart(
        &self,
        service: &ServiceName,
        options: RollingOptions,
    ) -> Result<RollingReport> {
        let started = Instant::now();
        let registry = self.registry.clone().ok_or_else(|| {
            Error::invalid(format!(
                "rolling restart of `{service}`: the control client has no registry to list instances with"
            ))
        })?;
        let mut ids: Vec<InstanceId> = registry
            .list(Some(service))
            .await?
            .into_iter()
            .filter(|i| i.status != Status::Stopping)
            .map(|i| i.id)
            .collect();
        ids.sort();
        if ids.is_empty() {
            return Err(Error::not_found(format!(
                "rolling restart of `{service}`: no instance is registered"
            )));
        }
        if ids.len() <= options.min_ready {
            return Err(Error::invalid(format!(
                "rolling restart of `{service}`: {} instance(s), and {} must stay ready; lower min_ready to allow an outage",
                ids.len(),
                options.min_ready
            )));
        }
        let at_once = options.at_once.clamp(1, ids.len() - options.min_ready);
        options.emit(RollingEvent::Started {
            instances: ids.len(),
            at_once,
        });
        let mut report = RollingReport {
            service: service.clone(),
            restarted: Vec::new(),
            took: Duration::ZERO,
        };
        for batch in ids.chunks(at_once) {
            let step = self.restart_batch(service, batch, &options).await;
            match step {
                Ok(back) => report.restarted.extend(back),
                Err(e) => {
                    let done: Vec<String> = report.restarted.iter().map(|(i, _)| i.to_string()).collect();
                    return Err(Error::new(
                        e.kind(),
                        format!(
                            "rolling restart of `{service}` stopped after restarting [{}]",
                            done.join(", ")
                        ),
                    )
                    .with_source(e));
                }
            }
        }
        report.took = started.elapsed();
        Ok(report)
    }

    async fn restart_batch(
        &self,
        service: &ServiceName,
        batch: &[InstanceId],
        options: &RollingOptions,
    ) -> Result<Vec<(InstanceId, Duration)>> {
        self.wait_ready_outside(service, batch, options).await?;
        let restarts = batch.iter().map(|id| async move {
            options.emit(RollingEvent::Restarting(id.clone()));
            let target = Target::Instance {
                service: service.clone(),
                instance: id.clone(),
            };
            let before = self.process_of(service, id).await?.map(|(_, p)| p);
            let sent = Instant::now();
            let results = self
                .call(target, Op::Restart, serde_json::Value::Null, options.ack_within)
                .await?;
            results.ensure_done()?;
            let old_boot = results
                .get(id.as_str())
                .and_then(|r| {
                    r.outcome
                        .as_ref()?
                        .result()?
                        .get("boot_id")?
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let took = self
                .wait_back(service, id, before, &old_boot, sent, options)
                .await?;
            options.emit(RollingEvent::Back(id.clone(), took));
            Ok((id.clone(), took))
        });
        join_all(restarts).await.into_iter().collect()
    }

    /// Wait until at least `min_ready` instances outside `batch` answer a
    /// roll call as ready.
    async fn wait_ready_outside(
        &self,
        service: &ServiceName,
        batch: &[InstanceId],
        options: &RollingOptions,
    ) -> Result<()> {
        let deadline = Instant::now() + options.back_within;
        loop {
            let roll = self
                .call(
                    Target::Service(service.clone()),
                    Op::Ping,
                    serde_json::Value::Null,
                    options.ping_within,
                )
                .await?;
            let ready = roll
                .instances
                .iter()
                .filter(|r| !batch.contains(&r.instance))
                .filter(|r| ping_state(&roll, &r.instance).is_some_and(|(ready, _)| ready))
                .count();
            if ready >= options.min_ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "only {ready} instance(s) of `{service}` outside [{}] are ready, {} required",
                        batch.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "),
                        options.min_ready
                    ),
                ));
            }
            rt::sleep(options.poll_every).await;
        }
    }

    /// Where the registry says `id` runs: host, pid and start time.
    async fn process_of(&self, service: &ServiceName, id: &InstanceId) -> Result<Option<(Status, Process)>> {
        let Some(registry) = &self.registry else {
            return Ok(None);
        };
        Ok(registry
            .list(Some(service))
            .await?
            .into_iter()
            .find(|i| &i.id == id)
            .map(|i| (i.status, (i.host, i.pid, i.started_at_ms))))
    }

    /// Wait until `id` is listed as running by another process than
    /// `before`, then until it answers a ping as ready with a boot id other
    /// than `old_boot`; the time since `sent`.
    async fn wait_back(
        &self,
        service: &ServiceName,
        id: &InstanceId,
        before: Option<Process>,
        old_boot: &str,
        sent: Instant,
        options: &RollingOptions,
    ) -> Result<Duration> {
        let deadline = Instant::now() + options.back_within;
        let target = Target::Instance {
            service: service.clone(),
            instance: id.clone(),
        };
        let mut last = String::from("not listed");
        // A ping sent before the new process's control group exists is never
        // seen: start with short waits and lengthen them for a slow instance.
        let mut ping_wait = Duration::from_millis(250).min(options.ping_within);
        while Instant::now() < deadline {
            match self.process_of(service, id).await? {
                Some((Status::Running, now)) if Some(&now) != before.as_ref() => {
                    let ping = self
                        .call(target.clone(), Op::Ping, serde_json::Value::Null, ping_wait)
                        .await?;
                    match ping_state(&ping, id) {
                        Some((true, boot)) if boot != old_boot => return Ok(sent.elapsed()),
                        Some((true, _)) => last = "answering from the old process".into(),
                        Some((false, _)) => last = "not ready".into(),
                        None => {
                            last = "no answer to a ping".into();
                            ping_wait = (ping_wait * 2).min(options.ping_within);
                            continue;
                        }
                    }
                }
                Some((status, _)) => {
                    last = format!("listed as {status} by the old process or not yet running")
                }
                None => last = "not listed".into(),
            }
            rt::sleep(options.poll_every).await;
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "`{service}/{id}` not back within {:?} of its restart ({last})",
                options.back_within
            ),
        ))
    }
}
