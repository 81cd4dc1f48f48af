//! Conformance of [fleet control](crate::control) over a bus and a registry.
//!
//! The cases run real [`Lifecycle`]s with a control key as the instances
//! and a [`ControlClient`] as the sender, on the stores under test; each case
//! uses its own control stream and service names.

use super::{ensure, unique, CaseResult, Report, Step};
use crate::{
    control::{
        reason, Ack, AckStatus, Command, ControlClient, ControlConfig, ControlKey, Op, Outcome, Results,
        RollingOptions, Target,
    },
    health::ComponentStatus,
    rt::{self, TaskHandle},
    service::{Context, Lifecycle, Service, EXIT_RESTART},
    Backlog, Capabilities, Claimed, Delivery, Envelope, Error, ErrorKind, EventBus, GroupName, InstanceId,
    MessageId, PendingEntry, PendingSummary, ReadOptions, RegistryStore, Release, Result, ServiceName,
    StartFrom, Status, StreamInfo, StreamName, Subscription, Topic, TopicPattern, TrimPolicy,
};
use async_trait::async_trait;
use event_listener::Event;
use futures_util::future::{join_all, select, Either};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    pin::pin,
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How long a case waits for answers that should come.
const ANSWER: Duration = Duration::from_secs(5);
/// How long a case waits to be sure something does not happen.
const SILENCE: Duration = Duration::from_millis(400);

fn key() -> ControlKey {
    ControlKey::new("testkit fleet control key, 32 b").expect("a long enough key")
}

/// Run every control case on `bus` and `registry`.
pub async fn run(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> Report {
    let mut r = Report::default();
    let (b, g) = (&bus, &registry);
    r.case(
        "targets_one_instance_one_service_or_the_fleet",
        targets(b.clone(), g.clone()),
    )
    .await;
    r.case("every_outcome_is_acknowledged", outcomes(b.clone(), g.clone()))
        .await;
    r.case(
        "a_command_runs_at_most_once_per_instance",
        at_most_once(b.clone(), g.clone()),
    )
    .await;
    r.case(
        "expired_and_out_of_policy_commands_are_ignored",
        expiry(b.clone(), g.clone()),
    )
    .await;
    r.case(
        "forged_unsigned_tampered_and_malformed_commands_are_rejected",
        forged(b.clone(), g.clone()),
    )
    .await;
    r.case(
        "an_instance_never_runs_a_command_older_than_its_boot",
        older_than_boot(b.clone(), g.clone()),
    )
    .await;
    r.case("quiet_pauses_and_resume_undoes_it", quiet(b.clone(), g.clone()))
        .await;
    r.case(
        "restart_shuts_down_and_exits_with_the_restart_code",
        restart(b.clone(), g.clone()),
    )
    .await;
    r.case(
        "an_instance_cut_off_gets_what_was_sent_meanwhile",
        cut_off(b.clone(), g.clone()),
    )
    .await;
    r.case("without_a_key_nothing_runs", without_key(b.clone(), g.clone()))
        .await;
    r.case(
        "rolling_restart_one_at_a_time_keeps_the_others_ready",
        rolling(b.clone(), g.clone()),
    )
    .await;
    r
}

/// A service that counts the application commands it ran.
#[derive(Default)]
struct App {
    counts: Mutex<HashMap<String, u64>>,
    /// How long `on_start` takes.
    start_for: Duration,
}

impl App {
    fn count(&self, op: &str) -> u64 {
        self.counts.lock().get(op).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Service for App {
    async fn on_start(&self, _: &Context) -> Result<()> {
        rt::sleep(self.start_for).await;
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> Result<()> {
        ctx.stopped().await;
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    async fn on_command(&self, _: &Context, command: &Command) -> Result<serde_json::Value> {
        let op = command.op.name();
        match op {
            "fail" => return Err(Error::invalid("asked to fail")),
            "slow" => {
                let ms = command.args.get("ms").and_then(|v| v.as_u64()).unwrap_or(0);
                rt::sleep(Duration::from_millis(ms)).await;
            }
            "count" => {}
            _ => return Err(Error::new(ErrorKind::Unsupported, format!("App has no `{op}`"))),
        }
        let mut counts = self.counts.lock();
        let n = counts.entry(op.to_owned()).or_default();
        *n += 1;
        Ok(serde_json::json!({"count": *n, "args": command.args}))
    }
}

/// A service that keeps the default `on_command`.
struct Plain;

#[async_trait]
impl Service for Plain {
    async fn on_start(&self, _: &Context) -> Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> Result<()> {
        ctx.stopped().await;
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> Result<()> {
        Ok(())
    }
}

/// One running instance.
struct Node {
    service: ServiceName,
    instance: InstanceId,
    lifecycle: Arc<Lifecycle>,
    app: Arc<App>,
    task: TaskHandle<ExitCode>,
}

impl Node {
    fn target(&self) -> Target {
        Target::Instance {
            service: self.service.clone(),
            instance: self.instance.clone(),
        }
    }

    async fn stop(self) -> ExitCode {
        self.lifecycle.shutdown_handle().trigger();
        self.task.join().await
    }
}

/// The stores, a control stream of the case's own and a client on it.
struct Fleet {
    bus: Arc<dyn EventBus>,
    registry: Arc<dyn RegistryStore>,
    stream: StreamName,
    client: ControlClient,
}

impl Fleet {
    async fn new(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> Result<Self, String> {
        let stream = StreamName::new(unique("sg:stream:control")).step("stream name")?;
        let client = ControlClient::builder(bus.clone(), key())
            .registry(registry.clone())
            .stream(stream.clone())
            .sender("testkit")
            .build()
            .await
            .step("start the control client")?;
        Ok(Self {
            bus,
            registry,
            stream,
            client,
        })
    }

    fn lifecycle(&self, bus: Arc<dyn EventBus>, service: &ServiceName, instance: &str) -> Lifecycle {
        Lifecycle::builder(service, instance)
            .expect("valid names")
            .registry(self.registry.clone())
            .bus(bus)
            .control(ControlConfig::new(key()).stream(self.stream.clone()))
            .jitter(Duration::ZERO)
            .handle_signals(false)
            .ttl(Duration::from_secs(10))
            .op_timeout(Duration::from_secs(2))
            .shutdown_timeout(Duration::from_secs(2))
            .build()
    }

    /// Start an `App` instance and wait until its daemon answers.
    async fn start(&self, service: &ServiceName, instance: &str) -> Result<Node, String> {
        let lifecycle = Arc::new(self.lifecycle(self.bus.clone(), service, instance));
        self.start_with(lifecycle, service, instance).await
    }

    async fn start_with(
        &self,
        lifecycle: Arc<Lifecycle>,
        service: &ServiceName,
        instance: &str,
    ) -> Result<Node, String> {
        let app = Arc::new(App::default());
        let (l, a) = (lifecycle.clone(), app.clone());
        let task = rt::spawn(async move { l.run_process(&*a).await });
        let node = Node {
            service: service.clone(),
            instance: InstanceId::new(instance).step("instance id")?,
            lifecycle,
            app,
            task,
        };
        self.answering(&node.target()).await?;
        Ok(node)
    }

    /// Ping `target` until it answers `done` (a daemon that just booted
    /// ignores pings issued before its boot, and misses those sent before
    /// its group existed).
    async fn answering(&self, target: &Target) -> Result<Results, String> {
        let deadline = Instant::now() + ANSWER;
        loop {
            let r = self
                .client
                .call(
                    target.clone(),
                    Op::Ping,
                    serde_json::Value::Null,
                    Duration::from_millis(300),
                )
                .await
                .step("ping")?;
            if r.all_done() {
                return Ok(r);
            }
            ensure!(Instant::now() < deadline, "{target} never answered a ping: {r:?}");
        }
    }

    async fn call(&self, target: Target, op: &str, args: serde_json::Value) -> Result<Results, String> {
        let op = Op::parse(op).step("op")?;
        self.client.call(target, op, args, ANSWER).await.step("call")
    }

    /// Every acknowledgement of `command_id` on the client's reply stream.
    async fn acks_for(&self, command_id: &str) -> Result<Vec<Ack>, String> {
        let entries = self
            .bus
            .range(self.client.reply_stream(), MessageId::ZERO, 10_000)
            .await
            .step("range over the reply stream")?;
        Ok(entries
            .iter()
            .filter_map(|d| Ack::verify(&d.envelope().ok()?, &key()).ok())
            .filter(|a| a.command_id == command_id)
            .collect())
    }

    /// A signed command for the client's reply stream.
    fn command(&self, target: Target, op: &str) -> Command {
        Command::new(target, Op::parse(op).expect("valid op"))
            .with_reply_to(self.client.reply_stream().clone())
            .with_sender("testkit")
    }
}

fn names(r: &Results) -> Vec<String> {
    let mut v: Vec<String> = r.instances.iter().map(|i| i.instance.to_string()).collect();
    v.sort();
    v
}

async fn stop_all(nodes: Vec<Node>) {
    join_all(nodes.into_iter().map(Node::stop)).await;
}

async fn targets(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus, registry).await?;
    let (a, b) = (
        ServiceName::new(unique("ctl-a")).step("name")?,
        ServiceName::new(unique("ctl-b")).step("name")?,
    );
    let nodes = vec![
        f.start(&a, "a1").await?,
        f.start(&a, "a2").await?,
        f.start(&b, "b1").await?,
    ];
    let out = async {
        let counts = || nodes.iter().map(|n| n.app.count("count")).collect::<Vec<_>>();
        let one = f
            .call(nodes[0].target(), "count", serde_json::json!({"n": 1}))
            .await?;
        ensure!(
            one.all_done() && names(&one) == ["a1"],
            "instance target answered by {one:?}"
        );
        let svc = f
            .call(Target::Service(a.clone()), "count", serde_json::Value::Null)
            .await?;
        ensure!(
            svc.all_done() && names(&svc) == ["a1", "a2"],
            "service target answered by {svc:?}"
        );
        let all = f
            .client
            .call(
                Target::Fleet,
                Op::parse("count").step("op")?,
                serde_json::Value::Null,
                Duration::from_secs(3),
            )
            .await
            .step("fleet call")?;
        for n in ["a1", "a2", "b1"] {
            ensure!(
                all.get(n).is_some_and(|r| r.is_done()),
                "fleet target: {n} did not answer done: {all:?}"
            );
        }
        // A last ping to each, after which every earlier command was handled.
        for n in &nodes {
            f.answering(&n.target()).await?;
        }
        ensure!(
            counts() == [3, 2, 1],
            "runs per instance (a1, a2, b1): {:?}, expected [3, 2, 1]",
            counts()
        );
        let skipped: Vec<u64> = nodes
            .iter()
            .map(|n| n.lifecycle.control_counts().not_targeted)
            .collect();
        // a2 was not targeted by the command to a1; b1 by that one and the one to service a.
        ensure!(
            skipped[1] >= 1 && skipped[2] >= 2,
            "commands for others were not counted as not targeted (a1, a2, b1): {skipped:?}"
        );
        Ok(())
    }
    .await;
    stop_all(nodes).await;
    out
}

async fn outcomes(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry).await?;
    let s = ServiceName::new(unique("ctl-outcomes")).step("name")?;
    let node = f.start(&s, "o1").await?;
    let plain_lifecycle = Arc::new(f.lifecycle(bus, &s, "plain"));
    let pl = plain_lifecycle.clone();
    let plain_task = rt::spawn(async move { pl.run_process(&Plain).await });
    let out = async {
        let plain = Target::instance(&s, "plain").step("target")?;
        f.answering(&plain).await?;
        let args = serde_json::json!({"ref": "main", "depth": 2});
        let done = f.call(node.target(), "count", args.clone()).await?;
        let r = done.get("o1").ok_or("no answer from o1")?;
        ensure!(
            r.acks.len() == 2 && r.acks[0] == AckStatus::Accepted && r.accepted,
            "acks of a done command: {:?}",
            r.acks
        );
        ensure!(
            r.outcome == Some(Outcome::Done(serde_json::json!({"count": 1, "args": args}))),
            "result of a done command: {:?}",
            r.outcome
        );
        let failed = f.call(node.target(), "fail", serde_json::Value::Null).await?;
        let r = failed.get("o1").ok_or("no answer to fail")?;
        ensure!(
            r.accepted && matches!(&r.outcome, Some(Outcome::Failed(why)) if why.contains("asked to fail")),
            "a failing hook: {r:?}"
        );
        let ignored = f.call(plain.clone(), "pull", serde_json::Value::Null).await?;
        let r = ignored.get("plain").ok_or("no answer to pull")?;
        ensure!(
            r.accepted
                && matches!(&r.outcome, Some(Outcome::Ignored(why)) if why.starts_with(reason::UNSUPPORTED)),
            "the default hook: {r:?}"
        );
        let ping = f.call(node.target(), "ping", serde_json::Value::Null).await?;
        let state = ping.get("o1").and_then(|r| r.outcome.as_ref()?.result().cloned());
        ensure!(
            state
                .as_ref()
                .is_some_and(|v| v["ready"] == true && v["quiet"] == false && v["boot_id"].is_string()),
            "ping result: {state:?}"
        );
        let expired = f
            .client
            .send_command(f.command(node.target(), "count").with_times(1_000, 2_000))
            .await
            .step("send")?
            .wait(ANSWER)
            .await;
        let r = expired.get("o1").ok_or("no answer to an expired command")?;
        ensure!(
            !r.accepted
                && matches!(&r.outcome, Some(Outcome::Ignored(why)) if why.starts_with(reason::EXPIRED)),
            "an expired command: {r:?}"
        );
        Ok(())
    }
    .await;
    plain_lifecycle.shutdown_handle().trigger();
    plain_task.join().await;
    node.stop().await;
    out
}

async fn at_most_once(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry).await?;
    let s = ServiceName::new(unique("ctl-once")).step("name")?;
    let nodes = vec![f.start(&s, "m1").await?, f.start(&s, "m2").await?];
    let out = async {
        let command = f.command(Target::Service(s.clone()), "count");
        let signed = command.sign(&key()).step("sign")?;
        let first = f
            .client
            .send_command(command.clone())
            .await
            .step("send")?
            .wait(ANSWER)
            .await;
        ensure!(
            first.all_done() && names(&first) == ["m1", "m2"],
            "first delivery: {first:?}"
        );
        // The very same signed entry, appended again twice: a replay.
        for _ in 0..2 {
            bus.publish(&f.stream, &signed).await.step("replay")?;
        }
        for n in &nodes {
            f.answering(&n.target()).await?;
        }
        for n in &nodes {
            ensure!(
                n.app.count("count") == 1,
                "{} ran the command {} times",
                n.instance,
                n.app.count("count")
            );
            let c = n.lifecycle.control_counts();
            ensure!(
                c.replayed == 2,
                "{}: {} replays counted, expected 2",
                n.instance,
                c.replayed
            );
        }
        let acks = f.acks_for(&command.id).await?;
        ensure!(
            acks.len() == 4,
            "{} acks for one command on two instances, expected 4 (no ack for a replay)",
            acks.len()
        );
        Ok(())
    }
    .await;
    stop_all(nodes).await;
    out
}

async fn expiry(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus, registry).await?;
    let s = ServiceName::new(unique("ctl-expiry")).step("name")?;
    let node = f.start(&s, "e1").await?;
    let out = async {
        let now = crate::clock::unix_ms();
        let cases = [
            (now - 10_000, now - 5_000, reason::EXPIRED),
            (now, now + 2 * 3_600_000, reason::LIFETIME_TOO_LONG),
            (now + 60_000, now + 70_000, reason::ISSUED_IN_FUTURE),
        ];
        for (issued, expires, why) in cases {
            let r = f
                .client
                .send_command(f.command(node.target(), "count").with_times(issued, expires))
                .await
                .step("send")?
                .wait(ANSWER)
                .await;
            let got = r.get("e1").and_then(|r| r.outcome.clone());
            ensure!(
                matches!(&got, Some(Outcome::Ignored(w)) if w.starts_with(why)),
                "issued {issued}, expiring {expires}: {got:?}, expected ignored ({why})"
            );
        }
        // Valid when sent, expired when its turn comes: the daemon is busy for 600 ms.
        let slow = f
            .client
            .send(
                node.target(),
                Op::app("slow").step("op")?,
                serde_json::json!({"ms": 600}),
            )
            .await
            .step("send slow")?;
        let short = f
            .client
            .send_command(
                f.command(node.target(), "count")
                    .with_ttl(Duration::from_millis(200)),
            )
            .await
            .step("send short")?;
        let (slow, short) = (slow.wait(ANSWER).await, short.wait(ANSWER).await);
        ensure!(slow.all_done(), "slow command: {slow:?}");
        let got = short.get("e1").and_then(|r| r.outcome.clone());
        ensure!(
            matches!(&got, Some(Outcome::Ignored(w)) if w.starts_with(reason::EXPIRED)),
            "a command that expired while queued: {got:?}"
        );
        ensure!(node.app.count("count") == 0, "an untimely command ran");
        let c = node.lifecycle.control_counts();
        ensure!(c.expired == 2 && c.rejected == 2, "counts: {c:?}");
        Ok(())
    }
    .await;
    node.stop().await;
    out
}

async fn forged(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry).await?;
    let s = ServiceName::new(unique("ctl-forged")).step("name")?;
    let node = f.start(&s, "f1").await?;
    let out = async {
        let other = ControlKey::new("not the fleet key, but as long").step("key")?;
        let restart = f.command(node.target(), "restart");
        let signed = f
            .command(node.target(), "count")
            .with_args(serde_json::json!({"n": 1}));
        let bad = [
            (restart.id.clone(), restart.sign(&other).step("sign")?),
            (restart.id.clone(), restart.unsigned().step("encode")?),
            (
                signed.id.clone(),
                crate::control::tamper_args(&signed.sign(&key()).step("sign")?, &serde_json::json!({"n": 2}))
                    .step("tamper")?,
            ),
            (
                "malformed".to_owned(),
                Envelope::new(crate::control::COMMAND_KIND).with_raw_payload(b"\x92not a command".to_vec()),
            ),
        ];
        for (_, env) in &bad {
            bus.publish(&f.stream, env).await.step("publish")?;
        }
        f.answering(&node.target()).await?;
        ensure!(node.app.count("count") == 0, "a tampered command ran");
        ensure!(
            !node.lifecycle.restart_requested(),
            "a forged or unsigned restart was acted on"
        );
        let c = node.lifecycle.control_counts();
        ensure!(
            c.rejected == 4,
            "{} rejections counted, expected 4: {c:?}",
            c.rejected
        );
        for (id, _) in &bad {
            let acks = f.acks_for(id).await?;
            ensure!(acks.is_empty(), "a refused command was acknowledged: {acks:?}");
        }
        Ok(())
    }
    .await;
    node.stop().await;
    out
}

async fn older_than_boot(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry).await?;
    let s = ServiceName::new(unique("ctl-old")).step("name")?;
    // The group a previous incarnation left behind (it crashed), holding a
    // restart sent before this one boots.
    let group = GroupName::new(format!("{s}:old1")).step("group")?;
    bus.ensure_group(&f.stream, &group, StartFrom::Latest)
        .await
        .step("create the old group")?;
    let restart = f
        .client
        .send_command(f.command(Target::instance(&s, "old1").step("target")?, "restart"))
        .await
        .step("send restart")?;
    rt::sleep(Duration::from_millis(20)).await;
    let node = f.start(&s, "old1").await?;
    let out = async {
        let r = restart.wait(ANSWER).await;
        let got = r.get("old1").and_then(|r| r.outcome.clone());
        ensure!(
            matches!(&got, Some(Outcome::Ignored(w)) if w.starts_with(reason::ISSUED_BEFORE_BOOT)),
            "a restart issued before boot: {got:?}"
        );
        f.answering(&node.target()).await?;
        ensure!(!node.lifecycle.restart_requested(), "the old restart was run");
        // Pings sent while it booted may be stale too: the old group keeps them.
        ensure!(node.lifecycle.control_counts().stale >= 1, "not counted as stale");
        Ok(())
    }
    .await;
    node.stop().await;
    out
}

async fn quiet(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus, registry.clone()).await?;
    let s = ServiceName::new(unique("ctl-quiet")).step("name")?;
    let node = f.start(&s, "q1").await?;
    let status = |reg: Arc<dyn RegistryStore>, s: ServiceName| async move {
        reg.list(Some(&s))
            .await
            .map(|l| l.first().map(|i| i.status.to_string()))
    };
    let out = async {
        let r = f.call(node.target(), "quiet", serde_json::Value::Null).await?;
        ensure!(r.all_done(), "quiet: {r:?}");
        let l = &node.lifecycle;
        let report = l.health().report().await;
        ensure!(
            l.is_quiet() && l.pause().is_paused() && report.status == ComponentStatus::Down,
            "after quiet: quiet {}, paused {}, health {:?}",
            l.is_quiet(),
            l.pause().is_paused(),
            report
        );
        let st = status(registry.clone(), s.clone()).await.step("list")?;
        ensure!(
            st.as_deref() == Some("quiet"),
            "registry status while quiet: {st:?}"
        );
        let ping = f.answering(&node.target()).await?;
        let state = ping.get("q1").and_then(|r| r.outcome.as_ref()?.result().cloned());
        ensure!(
            state
                .as_ref()
                .is_some_and(|v| v["quiet"] == true && v["ready"] == false),
            "ping while quiet: {state:?}"
        );
        let r = f.call(node.target(), "resume", serde_json::Value::Null).await?;
        ensure!(r.all_done(), "resume: {r:?}");
        let report = l.health().report().await;
        ensure!(
            !l.is_quiet() && !l.pause().is_paused() && report.status == ComponentStatus::Ok,
            "after resume: quiet {}, paused {}, health {:?}",
            l.is_quiet(),
            l.pause().is_paused(),
            report
        );
        let st = status(registry.clone(), s.clone()).await.step("list")?;
        ensure!(
            st.as_deref() == Some("running"),
            "registry status after resume: {st:?}"
        );
        Ok(())
    }
    .await;
    node.stop().await;
    out
}

async fn restart(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry.clone()).await?;
    let s = ServiceName::new(unique("ctl-restart")).step("name")?;
    let node = f.start(&s, "r1").await?;
    let r = f.call(node.target(), "restart", serde_json::Value::Null).await?;
    let result = r.get("r1").and_then(|r| r.outcome.as_ref()?.result().cloned());
    ensure!(
        result.as_ref().is_some_and(|v| v["restarting"] == true),
        "restart answered {r:?}"
    );
    let lifecycle = node.lifecycle.clone();
    let code = rt::timeout(ANSWER, node.task.join())
        .await
        .map_err(|_| "the instance did not shut down after restart")?;
    ensure!(
        code == ExitCode::from(EXIT_RESTART) && lifecycle.restart_requested(),
        "exit code {code:?} after restart, expected {EXIT_RESTART}"
    );
    let listed = registry.list(Some(&s)).await.step("list")?;
    ensure!(listed.is_empty(), "still registered after restart: {listed:?}");
    let groups = bus.stream_info(&f.stream).await.step("stream info")?.groups;
    ensure!(
        !groups.iter().any(|g| g.name == format!("{s}:r1")),
        "the control group outlived its instance: {groups:?}"
    );
    Ok(())
}

async fn cut_off(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry).await?;
    let s = ServiceName::new(unique("ctl-cut")).step("name")?;
    let cut = Arc::new(Cut::new(bus.clone()));
    let lifecycle = Arc::new(f.lifecycle(cut.clone(), &s, "c1"));
    let node = f.start_with(lifecycle, &s, "c1").await?;
    let out = async {
        cut.set(true);
        let sent = f
            .client
            .send(
                node.target(),
                Op::app("count").step("op")?,
                serde_json::Value::Null,
            )
            .await
            .step("send while cut off")?;
        rt::sleep(Duration::from_millis(1500)).await;
        ensure!(node.app.count("count") == 0, "ran while cut off from the store");
        ensure!(
            cut.refused() > 0,
            "the instance never tried the store while cut off"
        );
        cut.set(false);
        // The daemon retries with a backoff of up to 5 s.
        let r = sent.wait(Duration::from_secs(8)).await;
        ensure!(r.all_done(), "the command sent while cut off: {r:?}");
        ensure!(
            node.app.count("count") == 1,
            "ran {} times",
            node.app.count("count")
        );
        Ok(())
    }
    .await;
    cut.set(false);
    node.stop().await;
    out
}

async fn without_key(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Fleet::new(bus.clone(), registry.clone()).await?;
    let s = ServiceName::new(unique("ctl-nokey")).step("name")?;
    let lifecycle = Arc::new(
        Lifecycle::builder(&s, "n1")
            .step("builder")?
            .registry(registry.clone())
            .bus(bus)
            .without_control()
            .jitter(Duration::ZERO)
            .handle_signals(false)
            .build(),
    );
    ensure!(
        lifecycle.control_config().is_none(),
        "a daemon is configured without a key"
    );
    let app = Arc::new(App::default());
    let (l, a) = (lifecycle.clone(), app.clone());
    let task = rt::spawn(async move { l.run(&*a).await });
    let out = async {
        let deadline = Instant::now() + ANSWER;
        while registry.list(Some(&s)).await.step("list")?.is_empty() {
            ensure!(Instant::now() < deadline, "never registered");
            rt::sleep(Duration::from_millis(10)).await;
        }
        let r = f
            .client
            .call(
                Target::Service(s.clone()),
                Op::app("count").step("op")?,
                serde_json::Value::Null,
                SILENCE,
            )
            .await
            .step("call")?;
        ensure!(
            r.unanswered().count() == 1 && app.count("count") == 0,
            "without a key: {r:?}"
        );
        Ok(())
    }
    .await;
    lifecycle.shutdown_handle().trigger();
    task.join().await.step("run")?;
    out
}

/// Three supervised instances (a restart runs the lifecycle again), a
/// rolling restart one at a time, and a watcher counting ready instances.
async fn rolling(bus: Arc<dyn EventBus>, registry: Arc<dyn RegistryStore>) -> CaseResult {
    let f = Arc::new(Fleet::new(bus, registry.clone()).await?);
    let s = ServiceName::new(unique("ctl-roll")).step("name")?;
    let stop = Arc::new(AtomicBool::new(false));
    let current: Arc<Mutex<HashMap<String, Arc<Lifecycle>>>> = Default::default();
    let restarts = Arc::new(AtomicUsize::new(0));
    let mut slots = Vec::new();
    for id in ["w1", "w2", "w3"] {
        let (f, s, stop, current, restarts) = (
            f.clone(),
            s.clone(),
            stop.clone(),
            current.clone(),
            restarts.clone(),
        );
        slots.push(rt::spawn(async move {
            loop {
                let lifecycle = Arc::new(f.lifecycle(f.bus.clone(), &s, id));
                current.lock().insert(id.to_owned(), lifecycle.clone());
                // A boot that takes a while, so a restarting instance is
                // visibly not ready for the watcher.
                let app = App {
                    start_for: Duration::from_millis(150),
                    ..App::default()
                };
                let code = lifecycle.run_process(&app).await;
                if code != ExitCode::from(EXIT_RESTART) || stop.load(Ordering::SeqCst) {
                    return code;
                }
                restarts.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let out = async {
        f.answering(&Target::instance(&s, "w1").step("t")?).await?;
        f.answering(&Target::instance(&s, "w2").step("t")?).await?;
        f.answering(&Target::instance(&s, "w3").step("t")?).await?;
        let watching = Arc::new(AtomicBool::new(true));
        let (w, reg, s2, cur) = (watching.clone(), registry.clone(), s.clone(), current.clone());
        let watcher = rt::spawn(async move {
            let (mut min, mut samples, mut two) = (usize::MAX, 0usize, 0usize);
            while w.load(Ordering::SeqCst) {
                let running: Vec<InstanceId> = match reg.list(Some(&s2)).await {
                    Ok(l) => l
                        .into_iter()
                        .filter(|i| i.status == Status::Running)
                        .map(|i| i.id)
                        .collect(),
                    Err(_) => {
                        rt::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let ready = running
                    .iter()
                    .filter(|id| {
                        cur.lock()
                            .get(id.as_str())
                            .is_some_and(|l| l.health().is_serving())
                    })
                    .count();
                min = min.min(ready);
                samples += 1;
                two += usize::from(ready == 2);
                rt::sleep(Duration::from_millis(2)).await;
            }
            (min, samples, two)
        });
        let report = f
            .client
            .rolling_restart(&s, RollingOptions::default().back_within(Duration::from_secs(10)))
            .await
            .step("rolling restart")?;
        watching.store(false, Ordering::SeqCst);
        let (min, samples, two) = watcher.join().await;
        let restarted: Vec<&str> = report.restarted.iter().map(|(i, _)| i.as_str()).collect();
        ensure!(restarted == ["w1", "w2", "w3"], "restarted {restarted:?}");
        ensure!(
            restarts.load(Ordering::SeqCst) == 3,
            "{} process restarts, expected 3",
            restarts.load(Ordering::SeqCst)
        );
        ensure!(
            two >= 3,
            "the watcher saw a restarting instance in only {two} of {samples} samples: too slow to judge"
        );
        ensure!(
            min >= 2,
            "fewest ready instances seen: {min} in {samples} samples, expected >= 2"
        );
        Ok(())
    }
    .await;
    stop.store(true, Ordering::SeqCst);
    for l in current.lock().values() {
        l.shutdown_handle().trigger();
    }
    for slot in slots {
        // A slot whose lifecycle was being replaced when asked to stop runs once more.
        if rt::timeout(ANSWER, slot.join()).await.is_err() {
            for l in current.lock().values() {
                l.shutdown_handle().trigger();
            }
        }
    }
    out
}

/// A bus that refuses every call while cut off, as a network partition
/// between one instance and the store would; a read waiting when the cut
/// comes is abandoned (reads are cancel-safe).
#[derive(Debug)]
struct Cut {
    inner: Arc<dyn EventBus>,
    cut: AtomicBool,
    flipped: Event,
    refused: AtomicUsize,
}

impl Cut {
    fn new(inner: Arc<dyn EventBus>) -> Self {
        Self {
            inner,
            cut: AtomicBool::new(false),
            flipped: Event::new(),
            refused: AtomicUsize::new(0),
        }
    }

    fn set(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        self.flipped.notify(usize::MAX);
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(Error::unavailable("cut off from the store (testkit)"));
        }
        Ok(())
    }

    /// Wait until the instance is cut off.
    async fn cut_comes(&self) {
        loop {
            let listener = self.flipped.listen();
            if self.cut.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

#[async_trait]
impl EventBus for Cut {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn max_len(&self, stream: &StreamName) -> u64 {
        self.inner.max_len(stream)
    }
    fn trim_policy(&self, stream: &StreamName) -> TrimPolicy {
        self.inner.trim_policy(stream)
    }
    async fn ping(&self) -> Result<()> {
        self.check()?;
        self.inner.ping().await
    }
    async fn ensure_group(&self, stream: &StreamName, group: &GroupName, start: StartFrom) -> Result<bool> {
        self.check()?;
        self.inner.ensure_group(stream, group, start).await
    }
    async fn publish(&self, stream: &StreamName, envelope: &Envelope) -> Result<MessageId> {
        self.check()?;
        self.inner.publish(stream, envelope).await
    }
    async fn publish_batch(&self, stream: &StreamName, envelopes: &[Envelope]) -> Result<Vec<MessageId>> {
        self.check()?;
        self.inner.publish_batch(stream, envelopes).await
    }
    async fn read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.check()?;
        let read = self.inner.read(stream, group, consumer, options);
        match select(pin!(read), pin!(self.cut_comes())).await {
            // Cut off while the answer was on its way: the store handed the
            // entries out, the instance never hears of them.
            Either::Left((got, _)) => self.check().and(got),
            Either::Right(_) => self.check().map(|()| Vec::new()),
        }
    }
    async fn ack(&self, stream: &StreamName, group: &GroupName, ids: &[MessageId]) -> Result<u64> {
        self.check()?;
        self.inner.ack(stream, group, ids).await
    }
    async fn claim(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        min_idle: Duration,
        count: usize,
    ) -> Result<Claimed> {
        self.check()?;
        self.inner.claim(stream, group, consumer, min_idle, count).await
    }
    async fn pending(&self, stream: &StreamName, group: &GroupName) -> Result<PendingSummary> {
        self.check()?;
        self.inner.pending(stream, group).await
    }
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo> {
        self.check()?;
        self.inner.stream_info(stream).await
    }
    async fn backlog(&self, stream: &StreamName, group: &GroupName) -> Result<Backlog> {
        self.check()?;
        self.inner.backlog(stream, group).await
    }
    async fn ack_and_read(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        acks: &[MessageId],
        options: ReadOptions,
    ) -> Result<Vec<Delivery>> {
        self.check()?;
        self.inner
            .ack_and_read(stream, group, consumer, acks, options)
            .await
    }
    async fn claim_ids(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        min_idle: Duration,
        ids: &[MessageId],
    ) -> Result<Claimed> {
        self.check()?;
        self.inner.claim_ids(stream, group, consumer, min_idle, ids).await
    }
    async fn pending_entries(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: Option<crate::ConsumerName>,
        start: MessageId,
        count: usize,
    ) -> Result<Vec<PendingEntry>> {
        self.check()?;
        self.inner
            .pending_entries(stream, group, consumer, start, count)
            .await
    }
    async fn renew(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        self.check()?;
        self.inner.renew(stream, group, consumer, ids).await
    }
    async fn release(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        ids: &[MessageId],
        how: Release,
    ) -> Result<u64> {
        self.check()?;
        self.inner.release(stream, group, consumer, ids, how).await
    }
    async fn dead_letter(
        &self,
        stream: &StreamName,
        group: &GroupName,
        id: MessageId,
        dead_letters: &StreamName,
        record: &[u8],
        max_len: u64,
    ) -> Result<Option<MessageId>> {
        self.check()?;
        self.inner
            .dead_letter(stream, group, id, dead_letters, record, max_len)
            .await
    }
    async fn range(&self, stream: &StreamName, start: MessageId, count: usize) -> Result<Vec<Delivery>> {
        self.check()?;
        self.inner.range(stream, start, count).await
    }
    async fn delete_entries(&self, stream: &StreamName, ids: &[MessageId]) -> Result<u64> {
        self.check()?;
        self.inner.delete_entries(stream, ids).await
    }
    async fn delete_group(&self, stream: &StreamName, group: &GroupName) -> Result<bool> {
        self.check()?;
        self.inner.delete_group(stream, group).await
    }
    async fn delete_consumer(
        &self,
        stream: &StreamName,
        group: &GroupName,
        consumer: &crate::ConsumerName,
        force: bool,
    ) -> Result<u64> {
        self.check()?;
        self.inner.delete_consumer(stream, group, consumer, force).await
    }
    async fn publish_topic(&self, topic: &Topic, envelope: &Envelope) -> Result<()> {
        self.check()?;
        self.inner.publish_topic(topic, envelope).await
    }
    async fn subscribe(&self, pattern: &TopicPattern) -> Result<Subscription> {
        self.check()?;
        self.inner.subscribe(pattern).await
    }
}
