//! Real child processes under the Lifecycle receiving SIGTERM: while
//! running (it leaves the registry at once, drains, exits 0) and at each
//! boot phase (boot ends at once, exit 0, nothing registered). This file is
//! its own harness: run plainly it is the parent; run with
//! `child SCENARIO REDIS_URL [HUNG_URL]` it is the service.

mod support;

use fleetwire::{
    redis::RedisBackend,
    service::{Context, Lifecycle, Service},
    RegistryStore, ServiceName,
};
use std::{
    io::{BufRead, BufReader, Lines},
    net::TcpListener,
    process::{Child, ChildStdout, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

/// How long `run` keeps draining after shutdown was asked.
const DRAIN: Duration = Duration::from_millis(500);
/// Exit after SIGTERM during boot must come within this.
const PROMPT: Duration = Duration::from_secs(1);
/// Out of the registry after SIGTERM while running within this: half the
/// drain, with room for a loaded machine (the clock includes forking `kill`).
const WITHDRAW_WITHIN: Duration = Duration::from_millis(250);

struct Probe {
    slow_start: bool,
}

#[fleetwire::async_trait]
impl Service for Probe {
    async fn on_start(&self, _: &Context) -> fleetwire::Result<()> {
        println!("ON_START");
        if self.slow_start {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> fleetwire::Result<()> {
        println!("READY");
        ctx.stopped().await;
        tokio::time::sleep(DRAIN).await;
        println!("RUN_RETURNED");
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> fleetwire::Result<()> {
        println!("ON_STOP");
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    /// SIGTERM once `run` is running.
    Running,
    /// SIGTERM during a boot jitter of up to an hour.
    Jitter,
    /// SIGTERM while the gate pings a bus that accepts and never answers.
    Gate,
    /// SIGTERM while `on_start` takes 30 s.
    OnStart,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario::Running,
    Scenario::Jitter,
    Scenario::Gate,
    Scenario::OnStart,
];

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Running => "sigterm_while_running_withdraws_at_once_drains_and_exits_0",
            Scenario::Jitter => "sigterm_during_boot_jitter_exits_0_promptly",
            Scenario::Gate => "sigterm_during_a_hung_store_gate_exits_0_promptly",
            Scenario::OnStart => "sigterm_during_on_start_exits_0_promptly",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Scenario::Running => "running",
            Scenario::Jitter => "jitter",
            Scenario::Gate => "gate",
            Scenario::OnStart => "on_start",
        }
    }

    fn from_arg(s: &str) -> Self {
        *SCENARIOS
            .iter()
            .find(|sc| sc.arg() == s)
            .unwrap_or_else(|| panic!("unknown scenario {s}"))
    }

    fn service(self) -> String {
        format!("sigterm-{}", self.arg().replace('_', "-"))
    }
}

fn child(scenario: Scenario, url: &str, hung: Option<&str>) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisBackend::builder().url(url).build().unwrap();
        let mut builder = Lifecycle::builder(scenario.service(), "probe-1")
            .unwrap()
            .registry(Arc::new(redis.registry()))
            .jitter(if scenario == Scenario::Jitter {
                Duration::from_secs(3600)
            } else {
                Duration::ZERO
            })
            .ttl(Duration::from_secs(5));
        if let Some(hung) = hung {
            let bus = RedisBackend::builder().url(hung).build().unwrap().bus();
            builder = builder.bus(Arc::new(bus));
        }
        let lifecycle = builder.build();
        println!("BOOTING");
        let probe = Probe {
            slow_start: scenario == Scenario::OnStart,
        };
        lifecycle.run_process(&probe).await
    })
}

struct Parent {
    server: support::RedisServer,
    registry: Box<dyn RegistryStore>,
    rt: tokio::runtime::Runtime,
}

impl Parent {
    fn listed(&self, scenario: Scenario) -> Result<usize, String> {
        let svc = ServiceName::new(scenario.service()).unwrap();
        self.rt
            .block_on(self.registry.list(Some(&svc)))
            .map(|l| l.len())
            .map_err(|e| e.to_string())
    }

    fn spawn(
        &self,
        scenario: Scenario,
        hung: Option<&str>,
    ) -> Result<(Child, Lines<BufReader<ChildStdout>>), String> {
        let mut args = vec!["child".to_owned(), scenario.arg().to_owned(), self.server.url()];
        args.extend(hung.map(str::to_owned));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn child: {e}"))?;
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Ok((child, lines))
    }

    /// Run one scenario; the line to print on success.
    fn run(&self, scenario: Scenario) -> Result<String, String> {
        // Accepts connections (the kernel's backlog does) and never answers.
        let hung = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let hung_url = format!("redis://{}", hung.local_addr().unwrap());
        let (mut child, mut lines) = self.spawn(
            scenario,
            (scenario == Scenario::Gate).then_some(hung_url.as_str()),
        )?;
        let out = self.drive(scenario, &mut child, &mut lines);
        if out.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        out
    }

    fn drive(
        &self,
        scenario: Scenario,
        child: &mut Child,
        lines: &mut Lines<BufReader<ChildStdout>>,
    ) -> Result<String, String> {
        let mut next = || lines.next().and_then(|l| l.ok());
        let expect = |got: Option<String>, want: &str| match got {
            Some(l) if l == want => Ok(()),
            other => Err(format!("child printed {other:?}, expected {want}")),
        };
        expect(next(), "BOOTING")?;
        match scenario {
            Scenario::Running => {
                expect(next(), "ON_START")?;
                expect(next(), "READY")?;
                let deadline = Instant::now() + Duration::from_secs(5);
                while self.listed(scenario)? == 0 {
                    if Instant::now() > deadline {
                        return Err("child never registered".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Scenario::OnStart => expect(next(), "ON_START")?,
            // Well inside the jitter (an hour) and the gate (5 s op timeout).
            Scenario::Jitter | Scenario::Gate => std::thread::sleep(Duration::from_millis(300)),
        }
        let signalled = Instant::now();
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if !kill.success() {
            return Err("kill -TERM failed".into());
        }
        let mut withdrawn = None;
        if scenario == Scenario::Running {
            while self.listed(scenario)? > 0 {
                if signalled.elapsed() > DRAIN {
                    return Err("still registered while run drained".into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            withdrawn = Some(signalled.elapsed());
        }
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().map_err(|e| e.to_string())?;
        let exited = signalled.elapsed();
        if status.code() != Some(0) {
            return Err(format!("child exited with {status} after {exited:?}"));
        }
        let left = self.listed(scenario)?;
        if left != 0 {
            return Err(format!("{left} instance(s) still registered after exit"));
        }
        match withdrawn {
            Some(withdrawn) => {
                if rest != ["RUN_RETURNED", "ON_STOP"] {
                    return Err(format!("child printed {rest:?} after SIGTERM"));
                }
                if withdrawn > WITHDRAW_WITHIN {
                    return Err(format!("deregistered {withdrawn:?} after SIGTERM"));
                }
                if exited < DRAIN {
                    return Err(format!("exited {exited:?} after SIGTERM, before run drained"));
                }
                Ok(format!(
                    "deregistered {withdrawn:?} after SIGTERM, exit 0 after {exited:?} (run drains {DRAIN:?})"
                ))
            }
            None => {
                if !rest.is_empty() {
                    return Err(format!("boot went on after SIGTERM: child printed {rest:?}"));
                }
                if exited > PROMPT {
                    return Err(format!("exited {exited:?} after SIGTERM"));
                }
                Ok(format!("exit 0 {exited:?} after SIGTERM, nothing registered"))
            }
        }
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(
            Scenario::from_arg(&args[2]),
            &args[3],
            args.get(4).map(String::as_str),
        );
    }
    // libtest passes its own flags (e.g. --list, filters); only `--list` needs an answer.
    if args.iter().any(|a| a == "--list") {
        for sc in SCENARIOS {
            println!("{}: test", sc.name());
        }
        return std::process::ExitCode::SUCCESS;
    }
    let Some(server) = support::RedisServer::start() else {
        return std::process::ExitCode::SUCCESS;
    };
    let registry = RedisBackend::builder()
        .url(server.url())
        .build()
        .expect("backend")
        .registry();
    let parent = Parent {
        server,
        registry: Box::new(registry),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    };
    let mut failed = 0;
    for sc in SCENARIOS {
        match parent.run(sc) {
            Ok(note) => println!("test {} ... ok ({note})", sc.name()),
            Err(e) => {
                failed += 1;
                println!("test {} ... FAILED\n    {e}", sc.name());
            }
        }
    }
    let passed = SCENARIOS.len() - failed;
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out"
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
