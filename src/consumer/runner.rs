//! The runner: read → handle → ack, with leases, retries, dead letters and a drain.

use super::{
    config::RunnerConfig,
    dead_letter::{default_stream, DeadLetter},
    handler::{Action, Handler, HandlerError, HandlerResult},
    stats::{RunnerCounts, RunnerStats},
};
use crate::{
    clock,
    error::{Error, ErrorKind, Result},
    name::{ConsumerName, GroupName, StreamName},
    rt, Delivery, EventBus, MessageId, ReadOptions, Release,
};
use futures_util::{future::BoxFuture, stream::FuturesUnordered, FutureExt, StreamExt};
use std::{
    collections::HashMap,
    fmt,
    future::{poll_fn, Future},
    panic::AssertUnwindSafe,
    pin::pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

/// How long a read may wait while handlers are still running, so their acks
/// ride with a read soon after they finish.
const BUSY_BLOCK: Duration = Duration::from_millis(250);

/// How long finished acks may wait for a read worth sending (a quarter of the
/// slots free) before they go with a smaller one.
const ACK_LINGER: Duration = Duration::from_millis(20);

/// The shortest reaper and lease-renewal interval.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// A hook called with each record written to the dead-letter stream.
pub type OnDead = Arc<dyn Fn(&DeadLetter) + Send + Sync>;

/// Decides what a failure leads to, from the error and the delivery (its
/// attempt count included); see [`RunnerBuilder::retry_policy`].
pub type RetryPolicy = Arc<dyn Fn(&HandlerError, &Delivery) -> Action + Send + Sync>;

/// At-least-once consumption of one stream by one consumer of a group, over
/// any [`EventBus`]: every entry ends acked or dead-lettered, never stranded.
///
/// - Reads only as many entries as it has free handler slots; acks ride
///   with the next read (one round trip per batch in steady state).
/// - Keeps the lease of entries it is handling fresh, and takes over entries
///   idle longer than the lease from consumers that died (exact delivery counts).
/// - A failed entry is retried after the backoff (or the delay the handler
///   asked for) and dead-lettered after `max_deliveries`, atomically.
/// - On restart under the same consumer name it first handles its own pending entries.
/// - When `stop` resolves it drains: no more reads, in-flight handlers get
///   `drain_timeout` to finish, the rest is released for immediate redelivery uncounted.
/// - A store that is down is waited out with backoff; only a configuration
///   error (say, a key of the wrong type) ends the runner.
///
/// ```
/// # #[cfg(feature = "memory")]
/// # async_io::block_on(async {
/// use fleetwire::{consumer::{Runner, HandlerResult}, memory::MemoryBus, EventBus, Envelope, StreamName, GroupName, ConsumerName};
/// use std::sync::Arc;
///
/// let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::new());
/// let stream = StreamName::new("orders")?;
/// let runner = Runner::builder(bus.clone(), stream.clone(), GroupName::new("billing")?, ConsumerName::new("w1")?)
///     .handler(|d: fleetwire::Delivery| async move {
///         println!("{}", d.envelope()?.kind);
///         HandlerResult::Ok(())
///     })
///     .build()?;
/// let stop = fleetwire::service::Shutdown::default();
/// stop.trigger(); // a service passes `ctx.stopped()` instead
/// runner.run(stop.wait()).await?;
/// # Ok::<(), fleetwire::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Shared>,
}

struct Shared {
    bus: Arc<dyn EventBus>,
    stream: StreamName,
    group: GroupName,
    consumer: ConsumerName,
    dead_letters: StreamName,
    config: RunnerConfig,
    handler: Arc<dyn Handler>,
    on_dead: Option<OnDead>,
    policy: Option<RetryPolicy>,
    pause: Option<super::Pause>,
    stats: Arc<RunnerStats>,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner;
        f.debug_struct("Runner")
            .field("stream", &s.stream)
            .field("group", &s.group)
            .field("consumer", &s.consumer)
            .field("config", &s.config)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Runner`]; every setting defaults as [`RunnerConfig`] documents.
pub struct RunnerBuilder {
    bus: Arc<dyn EventBus>,
    stream: StreamName,
    group: GroupName,
    consumer: ConsumerName,
    config: RunnerConfig,
    handler: Option<Arc<dyn Handler>>,
    on_dead: Option<OnDead>,
    policy: Option<RetryPolicy>,
    pause: Option<super::Pause>,
}

impl fmt::Debug for RunnerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerBuilder")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("consumer", &self.consumer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RunnerBuilder {
    /// The handler (required).
    pub fn handler(mut self, handler: impl Handler) -> Self {
        self.handler = Some(Arc::new(handler));
        self
    }

    /// Replace every setting at once.
    pub fn config(mut self, config: RunnerConfig) -> Self {
        self.config = config;
        self
    }

    /// Handlers running at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// Idle time after which another consumer takes an entry over (default 30 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Deliveries after which a failing entry is dead-lettered (default 10).
    pub fn max_deliveries(mut self, n: u64) -> Self {
        self.config.max_deliveries = n;
        self
    }

    /// Retry delays (default exponential 1 s ×2 up to 10 min, full jitter).
    pub fn backoff(mut self, backoff: super::Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Per-attempt time limit of the handler (default 5 min).
    pub fn handler_timeout(mut self, d: Duration) -> Self {
        self.config.handler_timeout = d;
        self
    }

    /// Time in-flight handlers get to finish at shutdown (default 25 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.config.drain_timeout = d;
        self
    }

    /// How often, and how many at most, idle entries are taken over (default every 5 s, 100).
    pub fn reaper(mut self, every: Duration, batch: usize) -> Self {
        self.config.reap_every = every;
        self.config.reap_batch = batch;
        self
    }

    /// Run each handler on a task of its own (default false: handlers run
    /// concurrently inside the runner's task, which suits I/O-bound work and
    /// saves a cross-thread wake-up per entry). Turn on for CPU-heavy handlers
    /// on a multi-threaded runtime.
    pub fn spawn_handlers(mut self, spawn: bool) -> Self {
        self.config.spawn_handlers = spawn;
        self
    }

    /// How long an idle read waits for new entries (default 2 s).
    pub fn block(mut self, d: Duration) -> Self {
        self.config.block = d;
        self
    }

    /// Backoff after a store error, from `first` doubling to `max` (default 100 ms to 5 s).
    pub fn store_retry(mut self, first: Duration, max: Duration) -> Self {
        self.config.store_retry = first;
        self.config.store_retry_max = max;
        self
    }

    /// Where a group the runner creates starts reading (default latest).
    pub fn start_from(mut self, start: crate::StartFrom) -> Self {
        self.config.start = start;
        self
    }

    /// The dead-letter stream (default `{stream}:dlq`).
    pub fn dead_letters(mut self, stream: StreamName) -> Self {
        self.config.dead_letters = Some(stream);
        self
    }

    /// Map failures to outcomes centrally (like Sidekiq's `retry_in`): called
    /// with the handler's error and the delivery, it returns the action, which
    /// replaces the one the error asked for. `max_deliveries` still applies.
    ///
    /// ```
    /// # use fleetwire::consumer::{Action, RunnerBuilder};
    /// # fn f(b: RunnerBuilder) -> RunnerBuilder {
    /// b.retry_policy(|err, delivery| {
    ///     if err.reason().contains("validation") {
    ///         Action::DeadLetter
    ///     } else if delivery.delivery_count > 3 {
    ///         Action::RetryAfter(std::time::Duration::from_secs(60))
    ///     } else {
    ///         err.action()
    ///     }
    /// })
    /// # }
    /// ```
    pub fn retry_policy(
        mut self,
        policy: impl Fn(&HandlerError, &Delivery) -> Action + Send + Sync + 'static,
    ) -> Self {
        self.policy = Some(Arc::new(policy));
        self
    }

    /// Stop taking new work while `pause` is on (the `quiet` control command).
    pub fn pause_with(mut self, pause: super::Pause) -> Self {
        self.pause = Some(pause);
        self
    }

    /// Called with each record written to the dead-letter stream.
    pub fn on_dead(mut self, hook: impl Fn(&DeadLetter) + Send + Sync + 'static) -> Self {
        self.on_dead = Some(Arc::new(hook));
        self
    }

    /// Check the settings and build the runner. Intervals are floored so
    /// the loop never spins: the reaper runs at most every 10 ms, an idle read
    /// blocks at least 1 ms, store retries wait at least 1 ms.
    pub fn build(mut self) -> Result<Runner> {
        let c = &mut self.config;
        c.reap_every = c.reap_every.max(MIN_INTERVAL);
        c.block = c.block.max(Duration::from_millis(1));
        c.store_retry = c.store_retry.max(Duration::from_millis(1));
        c.store_retry_max = c.store_retry_max.max(c.store_retry);
        let c = &self.config;
        let handler = self
            .handler
            .ok_or_else(|| Error::invalid("consumer runner needs a handler"))?;
        if c.concurrency == 0 || c.reap_batch == 0 || c.max_deliveries == 0 {
            return Err(Error::invalid(
                "consumer runner: concurrency, reap batch and max deliveries must be at least 1",
            ));
        }
        if c.lease < Duration::from_millis(3) {
            return Err(Error::invalid("consumer runner: the lease must be at least 3 ms"));
        }
        let dead_letters = match &c.dead_letters {
            Some(s) => s.clone(),
            None => default_stream(&self.stream)?,
        };
        Ok(Runner {
            inner: Arc::new(Shared {
                bus: self.bus,
                stream: self.stream,
                group: self.group,
                consumer: self.consumer,
                dead_letters,
                config: self.config,
                handler,
                on_dead: self.on_dead,
                policy: self.policy,
                pause: self.pause,
                stats: Arc::default(),
            }),
        })
    }
}

impl Runner {
    /// Configure a runner for `consumer` of `group` on `stream`.
    pub fn builder(
        bus: Arc<dyn EventBus>,
        stream: StreamName,
        group: GroupName,
        consumer: ConsumerName,
    ) -> RunnerBuilder {
        RunnerBuilder {
            bus,
            stream,
            group,
            consumer,
            config: RunnerConfig::default(),
            handler: None,
            on_dead: None,
            policy: None,
            pause: None,
        }
    }

    /// Live counters.
    pub fn stats(&self) -> &RunnerStats {
        &self.inner.stats
    }

    /// The stream this runner consumes.
    pub fn stream(&self) -> &StreamName {
        &self.inner.stream
    }

    /// The group this runner consumes in.
    pub fn group(&self) -> &GroupName {
        &self.inner.group
    }

    /// The dead-letter stream this runner writes to.
    pub fn dead_letter_stream(&self) -> &StreamName {
        &self.inner.dead_letters
    }

    /// Consume until `stop` resolves, then drain; returns the counters.
    ///
    /// Creates the group if needed. Ends early only on a non-temporary
    /// store error (a configuration problem); temporary ones are retried.
    ///
    /// # Cancel safety
    /// Prefer resolving `stop`, which drains. Dropping the future instead
    /// cancels the handlers and, in the background, sends the acks it held
    /// and releases the unfinished entries for immediate redelivery, so
    /// nothing is lost; if the store cannot be reached then, those entries are
    /// redelivered after the lease.
    pub async fn run(&self, stop: impl Future<Output = ()> + Send) -> Result<RunnerCounts> {
        let mut stop = pin!(stop.fuse());
        let shared = &self.inner;
        let mut session = Session::new(shared.clone(), spawn_handler);
        if session.ensure_group(&mut stop).await? {
            let served = session.serve(&mut stop).await;
            session.drain().await;
            served?;
        }
        Ok(shared.stats.snapshot())
    }
}

/// What a finished handler task reports.
struct Finished {
    delivery: Delivery,
    started_ms: u64,
    result: HandlerResult,
}

/// What a read in flight reports.
struct ReadDone {
    got: Result<Vec<Delivery>>,
    /// The acks that rode with it.
    acks: Vec<MessageId>,
    /// The slots it reserved.
    asked: usize,
    seq: u64,
    blocking: bool,
}

type ReadCall = BoxFuture<'static, ReadDone>;

/// Reads in flight at once: while the runner handles one batch, the store
/// prepares the next (both within the free slots).
const MAX_READS: usize = 2;

/// The state of one `run`.
struct Session<F> {
    r: Arc<Shared>,
    /// Handler calls, unboxed: `F` is [`spawn_handler`]'s future.
    in_flight: FuturesUnordered<F>,
    start: fn(&Arc<Shared>, Delivery) -> F,
    /// Entries being handled (their leases are renewed).
    held: HashMap<MessageId, (), IdHash>,
    /// Acks waiting to ride with the next read.
    acks: Vec<MessageId>,
    /// Since when the oldest of them waits.
    acks_since: Option<Instant>,
    reads: FuturesUnordered<ReadCall>,
    /// Slots the reads in flight may fill.
    reserved: usize,
    /// Of which a blocking read's (it mostly comes back empty, so takeovers do not wait for it).
    reserved_blocking: usize,
    /// Acks sent with each read in flight, by sequence: resent if it is abandoned.
    riding: Vec<(u64, Vec<MessageId>)>,
    read_seq: u64,
    /// Whether the last read came back full: entries are flowing, read ahead.
    flowing: bool,
    /// Own pending entries still to take back after a restart, from this id on.
    recovering: Option<MessageId>,
    next_reap: Instant,
    next_renew: Instant,
    paused_until: Option<Instant>,
    store_backoff: Duration,
}

enum Wake {
    Stop,
    Finished(Finished),
    Read(ReadDone),
    Timer,
}

impl<F: Future<Output = Finished> + Send + 'static> Session<F> {
    fn new(r: Arc<Shared>, start: fn(&Arc<Shared>, Delivery) -> F) -> Self {
        let now = Instant::now();
        let store_backoff = r.config.store_retry;
        Self {
            in_flight: FuturesUnordered::new(),
            start,
            held: HashMap::default(),
            acks: Vec::new(),
            acks_since: None,
            reads: FuturesUnordered::new(),
            reserved: 0,
            reserved_blocking: 0,
            riding: Vec::new(),
            read_seq: 0,
            flowing: false,
            recovering: Some(MessageId::ZERO),
            next_reap: later(now, r.config.reap_every),
            next_renew: later(now, (r.config.lease / 3).max(MIN_INTERVAL)),
            paused_until: None,
            store_backoff,
            r,
        }
    }

    fn free(&self) -> usize {
        self.r
            .config
            .concurrency
            .saturating_sub(self.in_flight.len() + self.reserved)
    }

    /// Free slots for takeovers: an idle blocking read is not waited for.
    fn free_for_takeover(&self) -> usize {
        self.free() + self.reserved_blocking
    }

    /// Create the group, waiting out a store that is down; false when stopped first.
    async fn ensure_group(&mut self, stop: &mut (impl Future<Output = ()> + Unpin)) -> Result<bool> {
        use futures_util::future::{select, Either};
        let r = self.r.clone();
        loop {
            let attempt = r.bus.ensure_group(&r.stream, &r.group, r.config.start);
            let err = match select(&mut *stop, attempt).await {
                Either::Left(_) => return Ok(false),
                Either::Right((Ok(_), _)) => return Ok(true),
                Either::Right((Err(e), _)) if e.is_temporary() => e,
                Either::Right((Err(e), _)) => return Err(e),
            };
            r.stats.add_store_errors(1);
            tracing::warn!(event = "consumer_store_unavailable", stream = %r.stream, error = %err);
            let pause = self.next_backoff();
            if rt::timeout(pause, &mut *stop).await.is_ok() {
                return Ok(false);
            }
        }
    }

    async fn serve(&mut self, stop: &mut (impl Future<Output = ()> + Unpin)) -> Result<()> {
        loop {
            while let Some(Some(done)) = self.in_flight.next().now_or_never() {
                self.finish(done).await;
            }
            let now = Instant::now();
            let quiet = self.r.pause.as_ref().is_some_and(|p| p.is_paused());
            if self.paused_until.is_some_and(|t| t > now) {
                // Store trouble: only finish handlers until the pause ends.
            } else if quiet {
                // Quiet: take nothing new; finish, ack and renew what is in hand.
                if self.reads.is_empty() && !self.acks.is_empty() {
                    let step = self.flush_acks().await;
                    self.after_store_call(step).await?;
                    continue;
                }
                if now >= self.next_renew {
                    self.next_renew = later(now, (self.r.config.lease / 3).max(MIN_INTERVAL));
                    let step = self.renew().await;
                    self.after_store_call(step).await?;
                    continue;
                }
            } else if self.free_for_takeover() > 0 && self.recovering.is_some() {
                let step = self.recover_step().await;
                self.after_store_call(step).await?;
                continue;
            } else if self.reap_due(now) {
                let step = self.reap().await.map(|filled| {
                    // A full batch may have left more due behind it: take them
                    // at the next free slot, ahead of new entries.
                    self.next_reap = if filled {
                        now
                    } else {
                        later(now, self.r.config.reap_every)
                    };
                });
                self.after_store_call(step).await?;
                continue;
            } else if now >= self.next_renew {
                self.next_renew = later(now, (self.r.config.lease / 3).max(MIN_INTERVAL));
                let step = self.renew().await;
                self.after_store_call(step).await?;
                continue;
            } else if self.wants_read(now) {
                let call = self.start_read();
                self.reads.push(call);
                continue;
            }
            match self.wait(stop).await {
                Wake::Stop => return Ok(()),
                Wake::Finished(done) => self.finish(done).await,
                Wake::Read(ReadDone {
                    got,
                    acks,
                    asked,
                    seq,
                    blocking,
                }) => {
                    self.reserved -= asked;
                    if blocking {
                        self.reserved_blocking -= asked;
                    }
                    self.riding.retain(|(s, _)| *s != seq);
                    let step = match got {
                        Ok(deliveries) => {
                            self.r.stats.add_acked(acks.len() as u64);
                            self.flowing = deliveries.len() == asked;
                            self.dispatch(deliveries).await;
                            Ok(())
                        }
                        Err(e) => {
                            // Acks are idempotent: resend them with the next read.
                            self.acks.extend(acks);
                            self.flowing = false;
                            Err(e)
                        }
                    };
                    self.after_store_call(step).await?;
                }
                Wake::Timer => {}
            }
        }
    }

    /// Send the waiting acks on their own (when no read will carry them).
    async fn flush_acks(&mut self) -> Result<()> {
        let acks = std::mem::take(&mut self.acks);
        self.acks_since = None;
        let r = self.r.clone();
        match r.bus.ack(&r.stream, &r.group, &acks).await {
            Ok(_) => {
                r.stats.add_acked(acks.len() as u64);
                Ok(())
            }
            Err(e) => {
                self.acks.extend(acks);
                Err(e)
            }
        }
    }

    /// Read when idle, when a quarter of the slots are free (batches worth a
    /// round trip), or when acks have waited long enough; a second read goes
    /// out ahead only while entries are flowing.
    fn wants_read(&self, now: Instant) -> bool {
        let free = self.free();
        let quarter = free * 4 >= self.r.config.concurrency;
        if free == 0 || self.recovering.is_some() || self.reads.len() >= MAX_READS {
            return false;
        }
        if !self.reads.is_empty() {
            return self.flowing && quarter;
        }
        let acks_due = self.acks_since.is_some_and(|t| now >= later(t, ACK_LINGER));
        self.in_flight.is_empty() || quarter || acks_due
    }

    fn start_read(&mut self) -> ReadCall {
        let acks = std::mem::take(&mut self.acks);
        self.acks_since = None;
        self.read_seq += 1;
        let seq = self.read_seq;
        if !acks.is_empty() {
            self.riding.push((seq, acks.clone()));
        }
        let free = self.free();
        // While entries flow, split the slots between two reads in flight.
        let count = if self.flowing && self.reads.is_empty() {
            free.div_ceil(2)
        } else {
            free
        };
        self.reserved += count;
        let blocking = self.reads.is_empty();
        if blocking {
            self.reserved_blocking += count;
        }
        let mut options = ReadOptions::count(count);
        if blocking {
            options = options.block(if self.in_flight.is_empty() {
                self.r.config.block
            } else {
                self.r.config.block.min(BUSY_BLOCK)
            });
        }
        let r = self.r.clone();
        Box::pin(async move {
            let got = r
                .bus
                .ack_and_read(&r.stream, &r.group, &r.consumer, &acks, options)
                .await;
            ReadDone {
                got,
                acks,
                asked: count,
                seq,
                blocking,
            }
        })
    }

    /// The next thing that happens: stop, a handler done, the read back, or a timer.
    async fn wait(&mut self, stop: &mut (impl Future<Output = ()> + Unpin)) -> Wake {
        let now = Instant::now();
        let mut wake_at = self.next_renew;
        // A reap that waits for a slot (or for quiet to end) is woken by a
        // handler finishing, a read returning or the pause flipping, not
        // by a timer that has already passed.
        let quiet = self.r.pause.as_ref().is_some_and(|p| p.is_paused());
        if !quiet && self.free_for_takeover() > 0 {
            wake_at = wake_at.min(self.next_reap);
        }
        if let (Some(t), true) = (self.acks_since, self.reads.is_empty()) {
            wake_at = wake_at.min(later(t, ACK_LINGER));
        }
        if let Some(t) = self.paused_until.filter(|t| *t > now) {
            wake_at = t;
        }
        let mut timer = pin!(rt::sleep(wake_at.saturating_duration_since(now)));
        let mut flipped = self.r.pause.as_ref().map(|p| p.changed());
        let (in_flight, reads) = (&mut self.in_flight, &mut self.reads);
        poll_fn(|cx| {
            if stop.poll_unpin(cx).is_ready() {
                return Poll::Ready(Wake::Stop);
            }
            if flipped.as_mut().is_some_and(|l| l.poll_unpin(cx).is_ready()) {
                return Poll::Ready(Wake::Timer);
            }
            if let Poll::Ready(Some(done)) = in_flight.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Finished(done));
            }
            if let Poll::Ready(Some(done)) = reads.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Read(done));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await
    }

    /// Back off after a temporary store error; recreate a vanished group;
    /// end on anything else.
    async fn after_store_call(&mut self, step: Result<()>) -> Result<()> {
        let e = match step {
            Ok(()) => {
                self.store_backoff = self.r.config.store_retry;
                self.paused_until = None;
                return Ok(());
            }
            Err(e) => e,
        };
        self.r.stats.add_store_errors(1);
        if e.kind() == ErrorKind::NotFound {
            // The group vanished: deleted, or a Redis restarted without persistence.
            tracing::warn!(event = "consumer_group_missing", stream = %self.r.stream, group = %self.r.group, error = %e, "recreating it");
            let r = &self.r;
            return match r.bus.ensure_group(&r.stream, &r.group, r.config.start).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_temporary() => {
                    self.pause();
                    Ok(())
                }
                Err(e) => Err(e),
            };
        }
        if !e.is_temporary() {
            tracing::error!(event = "consumer_stopped", stream = %self.r.stream, group = %self.r.group, error = %e);
            return Err(e);
        }
        tracing::warn!(event = "consumer_store_unavailable", stream = %self.r.stream, group = %self.r.group, error = %e, "backing off");
        self.pause();
        Ok(())
    }

    fn pause(&mut self) {
        let d = self.next_backoff();
        self.paused_until = Some(later(Instant::now(), d));
    }

    fn next_backoff(&mut self) -> Duration {
        let d = self.store_backoff;
        self.store_backoff = d.saturating_mul(2).min(self.r.config.store_retry_max);
        d
    }

    /// Hand entries to handlers; dead-letter those past their last delivery.
    async fn dispatch(&mut self, deliveries: Vec<Delivery>) {
        for d in deliveries {
            if self.held.contains_key(&d.id) {
                continue;
            }
            if d.delivery_count > self.r.config.max_deliveries {
                let reason = format!(
                    "delivered {} times, more than the limit of {}, without finishing",
                    d.delivery_count, self.r.config.max_deliveries
                );
                self.dead_letter(d, reason, clock::unix_ms()).await;
                continue;
            }
            self.r.stats.add_delivered(1);
            self.held.insert(d.id, ());
            self.in_flight.push((self.start)(&self.r, d));
        }
    }

    async fn finish(&mut self, done: Finished) {
        self.held.remove(&done.delivery.id);
        match done.result {
            Ok(()) => {
                self.acks_since.get_or_insert_with(Instant::now);
                self.acks.push(done.delivery.id);
            }
            Err(e) => self.fail(done.delivery, done.started_ms, e).await,
        }
    }

    async fn fail(&mut self, d: Delivery, started_ms: u64, e: HandlerError) {
        let c = &self.r.config;
        let attempt = d.delivery_count;
        let action = match &self.r.policy {
            Some(policy) => policy(&e, &d),
            None => e.action(),
        };
        let delay = match action {
            Action::DeadLetter => None,
            _ if attempt >= c.max_deliveries => None,
            Action::RetryAfter(delay) => Some(delay),
            _ => Some(c.backoff.delay(attempt)),
        };
        let Some(delay) = delay else {
            let reason = match action {
                Action::DeadLetter => e.reason().to_owned(),
                _ => format!("gave up after {attempt} deliveries: {}", e.reason()),
            };
            return self.dead_letter(d, reason, started_ms).await;
        };
        let r = &self.r;
        tracing::debug!(event = "consumer_retry", stream = %r.stream, id = %d.id, attempt, delay_ms = clock::duration_ms(delay), reason = e.reason());
        match r
            .bus
            .release(
                &r.stream,
                &r.group,
                &r.consumer,
                &[d.id],
                Release::RetryAfter(delay),
            )
            .await
        {
            Ok(_) => r.stats.add_retried(1),
            Err(err) => tracing::warn!(
                event = "consumer_retry_not_scheduled",
                stream = %r.stream, id = %d.id, error = %err,
                "the entry stays pending and is retried after its lease"
            ),
        }
    }

    async fn dead_letter(&mut self, d: Delivery, reason: String, started_ms: u64) {
        let r = &self.r;
        let now = clock::unix_ms();
        let letter = DeadLetter {
            original_id: d.id.to_string(),
            stream: r.stream.to_string(),
            group: r.group.to_string(),
            consumer: r.consumer.to_string(),
            reason,
            attempts: d.delivery_count,
            published_at_ms: d.id.ms,
            first_delivered_at_ms: (d.delivery_count <= 1).then_some(started_ms),
            last_delivered_at_ms: started_ms,
            dead_at_ms: now,
            body: d.body.to_vec(),
        };
        let moved = match letter.encode() {
            Ok(record) => {
                r.bus
                    .dead_letter(
                        &r.stream,
                        &r.group,
                        d.id,
                        &r.dead_letters,
                        &record,
                        r.config.dead_letter_max_len,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match moved {
            Ok(Some(dead_id)) => {
                r.stats.add_dead_lettered(1);
                tracing::warn!(event = "dead_lettered", stream = %r.stream, group = %r.group, id = %d.id, dead_id = %dead_id, attempts = letter.attempts, reason = %letter.reason);
                if let Some(hook) = &r.on_dead {
                    hook(&letter);
                }
            }
            Ok(None) => tracing::debug!(event = "dead_letter_skipped", id = %d.id, "no longer pending"),
            Err(e) => tracing::warn!(
                event = "dead_letter_failed",
                stream = %r.stream, id = %d.id, error = %e,
                "the entry stays pending and is dead-lettered after its lease"
            ),
        }
    }

    /// Take back this consumer's own pending entries (a restart), a slot-full at a time.
    async fn recover_step(&mut self) -> Result<()> {
        let Some(from) = self.recovering else {
            return Ok(());
        };
        let r = self.r.clone();
        let rows = r
            .bus
            .pending_entries(
                &r.stream,
                &r.group,
                Some(r.consumer.clone()),
                from,
                self.free_for_takeover(),
            )
            .await?;
        let Some(last) = rows.last() else {
            self.recovering = None;
            return Ok(());
        };
        self.recovering = Some(last.id.next());
        let ids: Vec<MessageId> = rows
            .iter()
            .map(|p| p.id)
            .filter(|id| !self.held.contains_key(id))
            .collect();
        let claimed = r
            .bus
            .claim_ids(&r.stream, &r.group, &r.consumer, Duration::ZERO, &ids)
            .await?;
        self.take_over(claimed).await;
        Ok(())
    }

    /// The reaper's turn has come and a slot is free for what it takes.
    ///
    /// A due reap waits for a slot instead of being skipped, so entries due
    /// for a retry (or left by a dead consumer) go ahead of new ones rather
    /// than waiting for the stream's backlog to clear.
    fn reap_due(&self, now: Instant) -> bool {
        now >= self.next_reap && self.free_for_takeover() > 0
    }

    /// Take over entries idle longer than the lease; true when new entries
    /// filled every slot it had (more may be due). Entries this runner
    /// already holds do not count, so a claim that keeps returning them
    /// cannot keep the reaper spinning.
    async fn reap(&mut self) -> Result<bool> {
        let want = self.free_for_takeover().min(self.r.config.reap_batch);
        let r = self.r.clone();
        let claimed = r
            .bus
            .claim(&r.stream, &r.group, &r.consumer, r.config.lease, want)
            .await?;
        let fresh = claimed
            .deliveries
            .iter()
            .filter(|d| !self.held.contains_key(&d.id))
            .count();
        let filled = fresh >= want;
        self.take_over(claimed).await;
        Ok(filled)
    }

    async fn take_over(&mut self, claimed: crate::Claimed) {
        let r = &self.r;
        if !claimed.deleted.is_empty() {
            r.stats.add_trimmed(claimed.deleted.len() as u64);
            tracing::warn!(event = "pending_entries_trimmed", stream = %r.stream, group = %r.group, count = claimed.deleted.len(), "entries were trimmed from the stream before they were handled");
        }
        r.stats.add_reclaimed(claimed.deliveries.len() as u64);
        self.dispatch(claimed.deliveries).await;
    }

    /// Keep the leases of the entries being handled.
    async fn renew(&mut self) -> Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let r = self.r.clone();
        let ids: Vec<MessageId> = self.held.keys().copied().collect();
        let kept = r.bus.renew(&r.stream, &r.group, &r.consumer, &ids).await?;
        if kept.len() < ids.len() {
            let lost = (ids.len() - kept.len()) as u64;
            r.stats.add_leases_lost(lost);
            tracing::warn!(event = "consumer_leases_lost", stream = %r.stream, count = lost, "another consumer took over entries still being handled; they may be handled twice");
        }
        Ok(())
    }

    /// Stop reading, let handlers finish within the drain timeout, release the
    /// rest uncounted, send the acks, and leave the group if holding nothing.
    async fn drain(&mut self) {
        // Whether the acks of abandoned reads reached the store is unknown:
        // acks are idempotent, resend them.
        self.abandon_reads();
        let deadline = later(Instant::now(), self.r.config.drain_timeout);
        while !self.in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rt::timeout(left, self.in_flight.next()).await {
                Ok(Some(done)) => self.finish(done).await,
                _ => break,
            }
        }
        self.in_flight = FuturesUnordered::new();
        let r = self.r.clone();
        let unfinished: Vec<MessageId> = self.held.drain().map(|(id, ())| id).collect();
        if !unfinished.is_empty() {
            match r
                .bus
                .release(&r.stream, &r.group, &r.consumer, &unfinished, Release::Unhandled)
                .await
            {
                Ok(n) => r.stats.add_released(n),
                Err(e) => {
                    tracing::warn!(event = "consumer_release_failed", stream = %r.stream, error = %e, "unfinished entries are redelivered after their lease")
                }
            }
        }
        let acks = std::mem::take(&mut self.acks);
        if !acks.is_empty() {
            match r.bus.ack(&r.stream, &r.group, &acks).await {
                Ok(_) => r.stats.add_acked(acks.len() as u64),
                Err(e) => {
                    tracing::warn!(event = "consumer_final_ack_failed", stream = %r.stream, count = acks.len(), error = %e, "those entries are redelivered after their lease")
                }
            }
        }
        match r
            .bus
            .delete_consumer(&r.stream, &r.group, &r.consumer, false)
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Conflict => {}
            Err(e) => tracing::debug!(event = "consumer_not_removed", error = %e),
        }
    }
}

impl<F> Session<F> {
    /// Drop the reads in flight (cancel-safe) and take their acks back.
    fn abandon_reads(&mut self) {
        self.reads = FuturesUnordered::new();
        self.reserved = 0;
        self.reserved_blocking = 0;
        for (_, acks) in self.riding.drain(..) {
            self.acks.extend(acks);
        }
    }
}

impl<F> Drop for Session<F> {
    /// The run future was dropped without a drain: hand back what it held, in the background.
    fn drop(&mut self) {
        let unfinished: Vec<MessageId> = self.held.drain().map(|(id, ())| id).collect();
        self.abandon_reads();
        let acks = std::mem::take(&mut self.acks);
        if unfinished.is_empty() && acks.is_empty() {
            return;
        }
        let r = self.r.clone();
        rt::spawn_detached(async move {
            if !acks.is_empty() {
                let _ = r.bus.ack(&r.stream, &r.group, &acks).await;
            }
            if !unfinished.is_empty() {
                let released = r
                    .bus
                    .release(&r.stream, &r.group, &r.consumer, &unfinished, Release::Unhandled)
                    .await;
                if let Ok(n) = released {
                    r.stats.add_released(n);
                }
            }
        });
    }
}

/// Run the handler, bounded by the handler timeout, a panic counted as a
/// failure: inside the runner's task (default: no cross-thread wake-up per
/// entry), or on a task of its own with `spawn_handlers`. Dropping the
/// returned future cancels it either way.
fn spawn_handler(r: &Arc<Shared>, delivery: Delivery) -> impl Future<Output = Finished> + Send + 'static {
    let handler = r.handler.clone();
    let limit = r.config.handler_timeout;
    let call = async move {
        let started_ms = clock::unix_ms();
        let mut call = AssertUnwindSafe(handler.handle(delivery.clone())).catch_unwind();
        // Most handlers finish on their first poll: arm the timeout timer only if not.
        let first = poll_fn(|cx| Poll::Ready(call.poll_unpin(cx))).await;
        let outcome = match first {
            Poll::Ready(done) => Ok(done),
            // Boxed: the timer's state would otherwise make every call's future larger.
            Poll::Pending => Box::pin(rt::timeout(limit, call)).await,
        };
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HandlerError::retry("the handler panicked")),
            Err(_) => Err(HandlerError::retry(format!(
                "the handler timed out after {limit:?}"
            ))),
        };
        Finished {
            delivery,
            started_ms,
            result,
        }
    };
    if r.config.spawn_handlers {
        futures_util::future::Either::Left(rt::spawn(call).join())
    } else {
        futures_util::future::Either::Right(call)
    }
}

/// Hashes entry ids for the set of those being handled: three lookups per
/// entry, where SipHash cost ~200 instructions each. Ids come from the
/// store and the set holds at most `concurrency` of them, so a fast
/// multiplicative hash is enough.
#[derive(Default, Clone, Copy)]
struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// `at + d`, or a century on when that does not fit: every `Duration` setting is accepted.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}
