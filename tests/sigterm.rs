//! A real child process under the Lifecycle: SIGTERM makes it deregister
//! and exit 0. This file is its own harness: run plainly it is the parent;
//! run with `child URL` it is the service.

mod support;

use fleetwire::{
    redis::RedisBackend,
    service::{Context, Lifecycle, Service},
    RegistryStore, ServiceName,
};
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

struct Waits;

#[async_trait::async_trait]
impl Service for Waits {
    async fn on_start(&self, _: &Context) -> fleetwire::Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> fleetwire::Result<()> {
        println!("READY");
        ctx.stopped().await;
        println!("RUN_RETURNED");
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> fleetwire::Result<()> {
        println!("ON_STOP");
        Ok(())
    }
}

fn child(url: &str) -> std::process::ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let redis = RedisBackend::builder().url(url).build().unwrap();
        let lifecycle = Lifecycle::builder("sigterm-probe", "probe-1")
            .unwrap()
            .registry(Arc::new(redis.registry()))
            .jitter(Duration::from_millis(50))
            .ttl(Duration::from_secs(5))
            .build();
        lifecycle.run_process(&Waits).await
    })
}

fn parent() -> Result<(), String> {
    let Some(server) = support::RedisServer::start() else {
        return Ok(());
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child", &server.url()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(|l| l.ok());
    if first.as_deref() != Some("READY") {
        let _ = child.kill();
        return Err(format!("child did not boot: {first:?}"));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = RedisBackend::builder()
        .url(server.url())
        .build()
        .unwrap()
        .registry();
    let svc = ServiceName::new("sigterm-probe").unwrap();
    let listed =
        |rt: &tokio::runtime::Runtime| rt.block_on(registry.list(Some(&svc))).map_err(|e| e.to_string());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !listed(&rt)?
        .iter()
        .any(|i| i.status == fleetwire::Status::Running)
    {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("child never registered as running".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if !kill.success() {
        return Err("kill -TERM failed".into());
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().map_err(|e| e.to_string())?;
    if rest != ["RUN_RETURNED", "ON_STOP"] {
        return Err(format!("child printed {rest:?} after SIGTERM"));
    }
    if status.code() != Some(0) {
        return Err(format!("child exited with {status}"));
    }
    let left = listed(&rt)?;
    if !left.is_empty() {
        return Err(format!("child still registered after exit: {left:?}"));
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2]);
    }
    // libtest passes its own flags (e.g. --list, filters); only `--list` needs an answer.
    if args.iter().any(|a| a == "--list") {
        println!("sigterm_deregisters_and_exits_0: test");
        return std::process::ExitCode::SUCCESS;
    }
    match parent() {
        Ok(()) => {
            println!("test sigterm_deregisters_and_exits_0 ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test sigterm_deregisters_and_exits_0 ... FAILED\n{e}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
            std::process::ExitCode::FAILURE
        }
    }
}
