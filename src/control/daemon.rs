//! The control daemon: reads this instance's group of the control stream,
//! judges each command (signature, target, time, replay), acks it, hands
//! it to an executor and reports the outcome.

use super::{
    command::{Ack, AckStatus, Command, Outcome, Rejection},
    reason, ControlConfig,
};
use crate::{
    clock::{duration_ms, unix_ms},
    error::{ErrorKind, Result},
    rt, ConsumerName, Delivery, EventBus, GroupName, InstanceId, MessageId, ReadOptions, ServiceName,
    StartFrom,
};
use async_trait::async_trait;
use futures_util::future::{select, Either};
use std::{
    collections::HashMap,
    future::Future,
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

/// How long one read waits for commands.
const READ_BLOCK: Duration = Duration::from_secs(1);
/// Backoff after a store error, doubling up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Counters of one instance's control daemon.
#[derive(Debug, Default)]
pub struct ControlStats {
    received: AtomicU64,
    executed: AtomicU64,
    not_targeted: AtomicU64,
    rejected: AtomicU64,
    expired: AtomicU64,
    stale: AtomicU64,
    replayed: AtomicU64,
}

/// A snapshot of [`ControlStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ControlCounts {
    /// Entries read from the control stream.
    pub received: u64,
    /// Commands run (whatever their outcome).
    pub executed: u64,
    /// Authentic commands for other instances.
    pub not_targeted: u64,
    /// Malformed, unsigned, forged or out-of-policy commands.
    pub rejected: u64,
    /// Commands past their expiry.
    pub expired: u64,
    /// Commands issued before this process booted.
    pub stale: u64,
    /// Commands already run here, seen again.
    pub replayed: u64,
}

impl ControlStats {
    /// The counters now.
    pub fn snapshot(&self) -> ControlCounts {
        ControlCounts {
            received: self.received.load(Relaxed),
            executed: self.executed.load(Relaxed),
            not_targeted: self.not_targeted.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            expired: self.expired.load(Relaxed),
            stale: self.stale.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// What running a command did.
#[derive(Debug)]
pub(crate) struct Executed {
    pub(crate) outcome: Outcome,
    /// Shut down once the outcome is reported (a restart).
    pub(crate) then_shutdown: bool,
}

impl Executed {
    pub(crate) fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            then_shutdown: false,
        }
    }
}

/// Runs what the daemon accepted.
#[async_trait]
pub(crate) trait Execute: Send + Sync {
    /// Run one accepted command.
    async fn execute(&self, command: &Command) -> Executed;
    /// Begin the shutdown a command asked for, after its outcome was reported.
    fn shutdown(&self);
}

/// Whether the daemon goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// One instance's control daemon.
#[derive(Debug)]
pub(crate) struct Daemon {
    bus: Arc<dyn EventBus>,
    config: ControlConfig,
    reply_prefix: String,
    service: ServiceName,
    instance: InstanceId,
    group: GroupName,
    consumer: ConsumerName,
    boot_ms: u64,
    op_timeout: Duration,
    /// Ids run here, with their expiry: a copy seen again before then is a replay.
    seen: HashMap<String, u64>,
    stats: Arc<ControlStats>,
}

impl Daemon {
    /// A daemon for `service`/`instance`, which booted at `boot_ms`.
    pub(crate) fn new(
        bus: Arc<dyn EventBus>,
        config: ControlConfig,
        service: ServiceName,
        instance: InstanceId,
        boot_ms: u64,
        op_timeout: Duration,
        stats: Arc<ControlStats>,
    ) -> Result<Self> {
        Ok(Self {
            group: GroupName::new(format!("{service}:{instance}"))?,
            consumer: ConsumerName::new(instance.as_str())?,
            reply_prefix: format!("{}:", config.reply_prefix()),
            bus,
            config,
            service,
            instance,
            boot_ms,
            op_timeout,
            seen: HashMap::new(),
            stats,
        })
    }

    /// Create this instance's group at the stream's end: from here on,
    /// commands are kept for it even before it reads.
    pub(crate) async fn subscribe(&self) -> Result<()> {
        let ensure = self
            .bus
            .ensure_group(&self.config.stream, &self.group, StartFrom::Latest);
        match rt::timeout(self.op_timeout, ensure).await {
            Ok(r) => r.map(drop),
            Err(_) => Err(crate::Error::new(
                ErrorKind::Timeout,
                format!(
                    "create control group `{}` on `{}`: no answer within {:?}",
                    self.group, self.config.stream, self.op_timeout
                ),
            )),
        }
    }

    /// Delete this instance's group (at shutdown): a later incarnation
    /// starts at the stream's end, and groups of gone instances do not pile up.
    pub(crate) async fn leave(&self) {
        let delete = self.bus.delete_group(&self.config.stream, &self.group);
        match rt::timeout(self.op_timeout, delete).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(event = "control_group_delete_failed", group = %self.group, error = %e)
            }
            Err(_) => {
                tracing::warn!(event = "control_group_delete_failed", group = %self.group, error = "timeout")
            }
        }
    }

    /// Read and run commands until `stop` resolves or a command asks to
    /// shut down. Store errors are logged and retried with backoff.
    ///
    /// # Cancel safety
    /// Resolve `stop` rather than dropping the future: a command running then
    /// is reported failed (`shutting_down`) before it returns. Dropped, the
    /// pending read strands nothing (it is cancel-safe) and a command that
    /// was running is simply not reported.
    pub(crate) async fn run(&mut self, exec: &dyn Execute, stop: impl Future<Output = ()> + Send) {
        let mut stop = pin!(stop);
        let mut backoff = RETRY_MIN;
        // Entries handed to this consumer whose answer never arrived (a
        // connection lost mid-read) stay pending in its group, and a read of
        // new entries never returns them: take them back at start and after
        // every store error. One that ran already is refused as a replay.
        let mut recover = true;
        tracing::info!(event = "control_daemon_started", stream = %self.config.stream, group = %self.group);
        loop {
            let (stream, group, consumer) = (&self.config.stream, &self.group, &self.consumer);
            let read = async {
                if recover {
                    let claimed = self
                        .bus
                        .claim(stream, group, consumer, Duration::ZERO, 16)
                        .await?;
                    if !claimed.deliveries.is_empty() {
                        tracing::info!(event = "control_commands_recovered", group = %group, count = claimed.deliveries.len());
                        return Ok((claimed.deliveries, true));
                    }
                }
                let read = self
                    .bus
                    .read(stream, group, consumer, ReadOptions::count(16).block(READ_BLOCK));
                read.await.map(|d| (d, false))
            };
            let got = match select(pin!(read), stop.as_mut()).await {
                Either::Left((got, _)) => got,
                Either::Right(_) => break,
            };
            let deliveries = match got {
                Ok((d, recovered)) => {
                    backoff = RETRY_MIN;
                    recover = recovered;
                    d
                }
                Err(e) => {
                    recover = true;
                    if e.kind() == ErrorKind::NotFound {
                        // Deleted, or a store restarted without persistence.
                        tracing::warn!(event = "control_group_missing", group = %self.group, "recreating it");
                        if self.subscribe().await.is_ok() {
                            continue;
                        }
                    } else {
                        tracing::warn!(event = "control_read_failed", stream = %self.config.stream, error = %e);
                    }
                    if let Either::Right(_) = select(pin!(rt::sleep(backoff)), stop.as_mut()).await {
                        break;
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            // Acked before anything runs: a crash mid-command never runs it again.
            let ids: Vec<MessageId> = deliveries.iter().map(|d| d.id).collect();
            let ack = self.bus.ack(&self.config.stream, &self.group, &ids);
            match rt::timeout(self.op_timeout, ack).await {
                Ok(Ok(_)) => {}
                // Left pending, the entries are never read again (the daemon
                // reads new entries only): nothing runs twice.
                Ok(Err(e)) => tracing::warn!(event = "control_ack_failed", group = %self.group, error = %e),
                Err(_) => {
                    tracing::warn!(event = "control_ack_failed", group = %self.group, error = "timeout")
                }
            }
            for d in deliveries {
                if self.handle(d, exec, stop.as_mut()).await == Flow::Stop {
                    tracing::info!(event = "control_daemon_stopped", group = %self.group);
                    return;
                }
            }
        }
        tracing::info!(event = "control_daemon_stopped", group = %self.group);
    }

    fn reject(&self, entry: MessageId, why: Rejection) {
        bump(&self.stats.rejected);
        // Nothing of an unauthenticated entry is logged but its id and why.
        tracing::warn!(event = "control_command_rejected", entry = %entry, reason = %why);
    }

    async fn handle(
        &mut self,
        d: Delivery,
        exec: &dyn Execute,
        mut stop: Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Flow {
        bump(&self.stats.received);
        let command = match d.envelope() {
            Ok(env) => Command::verify(&env, &self.config.key),
            Err(_) => Err(Rejection::Malformed),
        };
        let command = match command {
            Ok(c) => c,
            Err(why) => {
                self.reject(d.id, why);
                return Flow::Continue;
            }
        };
        if !command.target.matches(&self.service, &self.instance) {
            bump(&self.stats.not_targeted);
            return Flow::Continue;
        }
        // Authentic from here: its id and op may be logged, never its arguments.
        if let Some(to) = &command.reply_to {
            let under_prefix = to
                .as_str()
                .strip_prefix(&self.reply_prefix)
                .is_some_and(|rest| InstanceId::new(rest).is_ok());
            if !under_prefix {
                bump(&self.stats.rejected);
                tracing::warn!(
                    event = "control_command_rejected",
                    entry = %d.id,
                    id = %command.id,
                    op = %command.op,
                    reason = "reply_to_outside_prefix",
                );
                return Flow::Continue;
            }
        }
        if let Some((why, counter)) = self.untimely(&command) {
            bump(counter);
            tracing::warn!(
                event = "control_command_ignored",
                id = %command.id,
                op = %command.op,
                sender = %command.sender,
                reason = %why,
            );
            self.ack(&command, AckStatus::Finished(Outcome::Ignored(why)))
                .await;
            return Flow::Continue;
        }
        let now = unix_ms();
        self.seen.retain(|_, expires| *expires > now);
        if self.seen.contains_key(&command.id) {
            bump(&self.stats.replayed);
            tracing::warn!(
                event = "control_command_rejected",
                entry = %d.id,
                id = %command.id,
                op = %command.op,
                reason = "replayed",
            );
            return Flow::Continue;
        }
        self.seen.insert(command.id.clone(), command.expires_at_ms);

        self.ack(&command, AckStatus::Accepted).await;
        tracing::info!(event = "control_command_accepted", id = %command.id, op = %command.op, sender = %command.sender);
        let limit = self.config.exec_timeout;
        let run = rt::timeout(limit, exec.execute(&command));
        let executed = match select(pin!(run), stop.as_mut()).await {
            Either::Left((Ok(executed), _)) => executed,
            Either::Left((Err(_), _)) => Executed::new(Outcome::Failed(format!(
                "{}: ran longer than {limit:?}",
                reason::TIMED_OUT
            ))),
            Either::Right(_) => {
                let why = format!("{}: the instance began shutting down", reason::SHUTTING_DOWN);
                tracing::warn!(event = "control_command_failed", id = %command.id, op = %command.op, reason = %why);
                self.ack(&command, AckStatus::Finished(Outcome::Failed(why)))
                    .await;
                return Flow::Stop;
            }
        };
        bump(&self.stats.executed);
        let outcome = match &executed.outcome {
            Outcome::Done(_) => "done",
            Outcome::Failed(_) => "failed",
            Outcome::Ignored(_) => "ignored",
        };
        tracing::info!(
            event = "control_command_executed",
            id = %command.id,
            op = %command.op,
            outcome,
            reason = executed.outcome.reason().unwrap_or(""),
        );
        self.ack(&command, AckStatus::Finished(executed.outcome)).await;
        if executed.then_shutdown {
            exec.shutdown();
            return Flow::Stop;
        }
        Flow::Continue
    }

    /// Why `command` must not run now, and the counter it goes to; `None`
    /// when its time is right.
    fn untimely(&self, command: &Command) -> Option<(String, &AtomicU64)> {
        let now = unix_ms();
        let (issued, expires) = (command.issued_at_ms, command.expires_at_ms);
        let stats = &self.stats;
        if now >= expires {
            let why = format!("{}: expired {} ms ago", reason::EXPIRED, now - expires);
            return Some((why, &stats.expired));
        }
        let lifetime = expires.saturating_sub(issued);
        if lifetime > duration_ms(self.config.max_lifetime) {
            let why = format!(
                "{}: lives {lifetime} ms, longer than the {:?} accepted",
                reason::LIFETIME_TOO_LONG,
                self.config.max_lifetime
            );
            return Some((why, &stats.rejected));
        }
        if issued > now.saturating_add(duration_ms(self.config.clock_skew)) {
            let why = format!(
                "{}: issued {} ms ahead of this instance's clock",
                reason::ISSUED_IN_FUTURE,
                issued - now
            );
            return Some((why, &stats.rejected));
        }
        // No skew allowance here: a restarted instance must never run the
        // restart (or anything) sent to its previous incarnation.
        if issued < self.boot_ms {
            let why = format!(
                "{}: issued {} ms before this instance booted",
                reason::ISSUED_BEFORE_BOOT,
                self.boot_ms - issued
            );
            return Some((why, &stats.stale));
        }
        None
    }

    /// Report `status` to the command's reply stream, if it has one.
    async fn ack(&self, command: &Command, status: AckStatus) {
        let Some(to) = &command.reply_to else {
            return;
        };
        let ack = Ack::new(
            command.id.clone(),
            self.service.clone(),
            self.instance.clone(),
            status,
        );
        let sent = match ack.sign(&self.config.key) {
            Ok(env) => match rt::timeout(self.op_timeout, self.bus.publish(to, &env)).await {
                Ok(r) => r.map(drop),
                Err(_) => Err(crate::Error::new(ErrorKind::Timeout, "publish timed out")),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            tracing::warn!(event = "control_ack_send_failed", id = %command.id, reply_to = %to, error = %e);
        }
    }
}
