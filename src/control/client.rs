//! The sender: publishes signed commands and gathers each instance's
//! acknowledgements from its own reply stream.

use super::{
    command::{Ack, AckStatus, Command, ControlKey, Op, Outcome, Target},
    random_id, reply_prefix, DEFAULT_STREAM,
};
use crate::{
    error::{Error, ErrorKind, Result},
    rt::{self, TaskHandle},
    ConsumerName, EventBus, GroupName, InstanceId, MessageId, ReadOptions, RegistryStore, ServiceName,
    StartFrom, Status, StreamName,
};
use futures_channel::mpsc;
use futures_util::StreamExt;
use parking_lot::Mutex;
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

type Waiters = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Ack>>>>;

/// Sends control commands and waits for the instances' answers.
///
/// A background task reads this client's reply stream
/// (`{control stream}:reply:{client id}`), checks each acknowledgement's
/// signature and hands it to the command waiting for it; forged ones are
/// logged and dropped. Dropping the client stops the task.
pub struct ControlClient {
    pub(super) bus: Arc<dyn EventBus>,
    pub(super) registry: Option<Arc<dyn RegistryStore>>,
    key: ControlKey,
    stream: StreamName,
    reply_to: StreamName,
    sender: String,
    ttl: Duration,
    waiters: Waiters,
    _reader: TaskHandle<()>,
}

impl fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlClient")
            .field("stream", &self.stream)
            .field("reply_to", &self.reply_to)
            .field("sender", &self.sender)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Configures a [`ControlClient`].
#[derive(Debug)]
pub struct ControlClientBuilder {
    bus: Arc<dyn EventBus>,
    key: ControlKey,
    registry: Option<Arc<dyn RegistryStore>>,
    stream: Option<StreamName>,
    sender: Option<String>,
    ttl: Duration,
}

impl ControlClientBuilder {
    /// The registry that says which instances a target covers, so a wait
    /// can end as soon as each has answered (default: none; waits then run
    /// to their timeout and return whoever answered).
    pub fn registry(mut self, registry: Arc<dyn RegistryStore>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The control stream (default `sg:stream:control`, as the daemons').
    pub fn stream(mut self, stream: StreamName) -> Self {
        self.stream = Some(stream);
        self
    }

    /// The sender name shown in the instances' logs (default `{host}:{pid}`).
    pub fn sender(mut self, sender: impl Into<String>) -> Self {
        self.sender = Some(sender.into());
        self
    }

    /// How long commands stay valid after they are sent (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Create the reply stream's group and start reading it.
    ///
    /// # Cancel safety
    /// Safe to drop: it only prepares the reply stream's reader; nothing is sent.
    pub async fn build(self) -> Result<ControlClient> {
        let stream = match self.stream {
            Some(s) => s,
            None => StreamName::new(DEFAULT_STREAM)?,
        };
        let reply_to = StreamName::new(format!("{}:{}", reply_prefix(&stream), random_id()))?;
        let group = GroupName::new("replies")?;
        self.bus
            .ensure_group(&reply_to, &group, StartFrom::Latest)
            .await?;
        let waiters: Waiters = Default::default();
        let reader = rt::spawn(read_acks(
            self.bus.clone(),
            self.key.clone(),
            reply_to.clone(),
            group,
            waiters.clone(),
        ));
        let sender = self.sender.unwrap_or_else(|| {
            format!(
                "{}:{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            )
        });
        Ok(ControlClient {
            bus: self.bus,
            registry: self.registry,
            key: self.key,
            stream,
            reply_to,
            sender,
            ttl: self.ttl,
            waiters,
            _reader: reader,
        })
    }
}

impl ControlClient {
    /// A client publishing on `bus`, signing with `key`.
    pub fn builder(bus: Arc<dyn EventBus>, key: ControlKey) -> ControlClientBuilder {
        ControlClientBuilder {
            bus,
            key,
            registry: None,
            stream: None,
            sender: None,
            ttl: Duration::from_secs(30),
        }
    }

    /// The stream this client's acknowledgements arrive on.
    pub fn reply_stream(&self) -> &StreamName {
        &self.reply_to
    }

    /// Send `op` with `args` to `target`; wait for the answers on the
    /// returned [`Pending`].
    pub async fn send(&self, target: Target, op: Op, args: serde_json::Value) -> Result<Pending<'_>> {
        self.send_command(Command::new(target, op).with_args(args).with_ttl(self.ttl))
            .await
    }

    /// Send `op` with `args` to `target` and wait up to `timeout` for every
    /// targeted instance's outcome.
    ///
    /// # Cancel safety
    /// As for [`send_command`](Self::send_command) and [`Pending::wait`]: the command may have gone out; its answers are then dropped.
    pub async fn call(
        &self,
        target: Target,
        op: Op,
        args: serde_json::Value,
        timeout: Duration,
    ) -> Result<Results> {
        Ok(self.send(target, op, args).await?.wait(timeout).await)
    }

    /// Send a command built by hand (its id, times and arguments are kept;
    /// its reply stream is this client's, its sender this client's when empty).
    ///
    /// The instances expected to answer are those the registry lists for the
    /// target when it is sent (all but `stopping` ones); one instance is
    /// always expected when targeted by name.
    ///
    /// # Cancel safety
    /// Dropped before the publish completed, the command may or may not
    /// have gone out; its answers are then dropped by the reader.
    pub async fn send_command(&self, mut command: Command) -> Result<Pending<'_>> {
        command.reply_to = Some(self.reply_to.clone());
        if command.sender.is_empty() {
            command.sender = self.sender.clone();
        }
        let expected = self.expected(&command.target).await?;
        let envelope = command.sign(&self.key)?;
        let (tx, rx) = mpsc::unbounded();
        self.waiters.lock().insert(command.id.clone(), tx);
        let pending = Pending {
            waiters: &self.waiters,
            results: expected
                .into_iter()
                .map(|(s, i)| ((s.clone(), i.clone()), InstanceResult::new(s, i, true)))
                .collect(),
            command,
            rx,
        };
        self.bus.publish(&self.stream, &envelope).await?;
        Ok(pending)
    }

    async fn expected(&self, target: &Target) -> Result<Vec<(ServiceName, InstanceId)>> {
        let service = match target {
            Target::Instance { service, instance } => return Ok(vec![(service.clone(), instance.clone())]),
            Target::Service(s) => Some(s),
            Target::Fleet => None,
        };
        let Some(registry) = &self.registry else {
            return Ok(Vec::new());
        };
        Ok(registry
            .list(service)
            .await?
            .into_iter()
            .filter(|i| i.status != Status::Stopping)
            .map(|i| (i.service, i.id))
            .collect())
    }
}

/// A sent command whose answers are being gathered.
#[derive(Debug)]
pub struct Pending<'a> {
    waiters: &'a Waiters,
    command: Command,
    results: BTreeMap<(ServiceName, InstanceId), InstanceResult>,
    rx: mpsc::UnboundedReceiver<Ack>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.command.id);
    }
}

impl Pending<'_> {
    /// The command as sent.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Wait up to `timeout` until every expected instance reported an
    /// outcome (with no instance expected, the whole timeout), and return
    /// what each reported; answers of instances not expected are included.
    ///
    /// # Cancel safety
    /// Dropping the future drops the answers gathered so far.
    pub async fn wait(mut self, timeout: Duration) -> Results {
        let deadline = Instant::now() + timeout;
        loop {
            let mut expected = self.results.values().filter(|r| r.expected).peekable();
            let all_in = expected.peek().is_some() && expected.all(|r| r.outcome.is_some());
            if all_in {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rt::timeout(left, self.rx.next()).await {
                Ok(Some(ack)) => self.record(ack),
                Ok(None) | Err(_) => break,
            }
        }
        Results {
            command: self.command.clone(),
            instances: std::mem::take(&mut self.results).into_values().collect(),
        }
    }

    fn record(&mut self, ack: Ack) {
        let entry = self
            .results
            .entry((ack.service.clone(), ack.instance.clone()))
            .or_insert_with(|| InstanceResult::new(ack.service.clone(), ack.instance.clone(), false));
        entry.acks.push(ack.status.clone());
        match ack.status {
            AckStatus::Accepted => entry.accepted = true,
            // The first outcome counts; an instance sends one per command.
            AckStatus::Finished(outcome) => {
                entry.outcome.get_or_insert(outcome);
            }
        }
    }
}

/// What one instance answered to one command.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct InstanceResult {
    /// The instance's service.
    pub service: ServiceName,
    /// The instance.
    pub instance: InstanceId,
    /// Targeted and listed when the command was sent (or named by it).
    pub expected: bool,
    /// It acknowledged `accepted`.
    pub accepted: bool,
    /// Its outcome; `None` when none arrived in time.
    pub outcome: Option<Outcome>,
    /// Every acknowledgement, in arrival order.
    pub acks: Vec<AckStatus>,
}

impl InstanceResult {
    fn new(service: ServiceName, instance: InstanceId, expected: bool) -> Self {
        Self {
            service,
            instance,
            expected,
            accepted: false,
            outcome: None,
            acks: Vec::new(),
        }
    }

    /// Whether it reported `done`.
    pub fn is_done(&self) -> bool {
        self.outcome.as_ref().is_some_and(Outcome::is_done)
    }
}

/// The answers to one command, one per instance, sorted by service and instance.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Results {
    /// The command.
    pub command: Command,
    /// Each expected or answering instance.
    pub instances: Vec<InstanceResult>,
}

impl Results {
    /// The answer of `instance` (of any service).
    pub fn get(&self, instance: &str) -> Option<&InstanceResult> {
        self.instances.iter().find(|r| r.instance.as_str() == instance)
    }

    /// Whether at least one instance answered and every one reported `done`.
    pub fn all_done(&self) -> bool {
        !self.instances.is_empty() && self.instances.iter().all(InstanceResult::is_done)
    }

    /// Expected instances that reported no outcome in time.
    pub fn unanswered(&self) -> impl Iterator<Item = &InstanceResult> {
        self.instances.iter().filter(|r| r.outcome.is_none())
    }

    /// An error naming each instance that did not report `done`, if any did not.
    pub fn ensure_done(&self) -> Result<&Self> {
        let bad: Vec<String> = self
            .instances
            .iter()
            .filter(|r| !r.is_done())
            .map(|r| match &r.outcome {
                None => format!("{}/{}: no answer", r.service, r.instance),
                Some(o) => format!("{}/{}: {}", r.service, r.instance, o.reason().unwrap_or("")),
            })
            .collect();
        if self.instances.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "control `{}` to {}: no instance answered",
                    self.command.op, self.command.target
                ),
            ));
        }
        if bad.is_empty() {
            Ok(self)
        } else {
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "control `{}` to {}: {}",
                    self.command.op,
                    self.command.target,
                    bad.join("; ")
                ),
            ))
        }
    }
}

async fn read_acks(
    bus: Arc<dyn EventBus>,
    key: ControlKey,
    stream: StreamName,
    group: GroupName,
    waiters: Waiters,
) {
    let Ok(me) = ConsumerName::new("demux") else {
        return;
    };
    loop {
        let read = bus
            .read(
                &stream,
                &group,
                &me,
                ReadOptions::count(64).block(Duration::from_secs(1)),
            )
            .await;
        let got = match read {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!(event = "control_reply_read_failed", stream = %stream, error = %e);
                if e.kind() == ErrorKind::NotFound {
                    let _ = bus.ensure_group(&stream, &group, StartFrom::Latest).await;
                }
                rt::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        for d in &got {
            let ack = match d.envelope() {
                Ok(env) => Ack::verify(&env, &key),
                Err(_) => Err(super::Rejection::Malformed),
            };
            match ack {
                Ok(ack) => {
                    let tx = waiters.lock().get(&ack.command_id).cloned();
                    match tx {
                        Some(tx) => drop(tx.unbounded_send(ack)),
                        None => tracing::debug!(event = "control_ack_unclaimed", id = %ack.command_id),
                    }
                }
                Err(why) => {
                    tracing::warn!(event = "control_ack_rejected", stream = %stream, entry = %d.id, reason = %why)
                }
            }
        }
        let ids: Vec<MessageId> = got.iter().map(|d| d.id).collect();
        if !ids.is_empty() {
            if let Err(e) = bus.ack(&stream, &group, &ids).await {
                tracing::warn!(event = "control_reply_ack_failed", stream = %stream, error = %e);
            }
        }
    }
}
