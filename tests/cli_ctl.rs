//! `fleetwire ctl` against two live instances with the control daemon on, on
//! a private, real redis-server: a roll call, quiet and resume, the table and
//! `--json` answers, and the exit codes.
#![cfg(all(feature = "cli", feature = "rt-tokio"))]

mod support;

use fleetwire::{
    control::{ControlConfig, ControlKey},
    redis::RedisBackend,
    service::Lifecycle,
    EventBus, RegistryStore, Status,
};
use std::{process::Command, sync::Arc, time::Duration};
use support::Idle;

const KEY: &str = "a fleet key for the ctl test, 32b";

/// Run the binary off the async runtime; `(exit code, stdout, stderr)`.
async fn ctl(url: &str, key: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let (url, key) = (url.to_owned(), key.map(str::to_owned));
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetwire"));
        cmd.arg("--redis").arg(&url).arg("ctl").args(&args);
        cmd.env_remove("SG_CONTROL_KEY").env_remove("SG_NAMESPACE");
        if let Some(k) = key {
            cmd.env("SG_CONTROL_KEY", k);
        }
        let out = cmd.output().expect("run fleetwire");
        (
            out.status.code().expect("exited"),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reaches_live_instances_and_reports_each_answer() {
    let Some(server) = support::RedisServer::start() else {
        return;
    };
    let url = server.url();
    let backend = RedisBackend::builder().url(url.clone()).build().unwrap();
    let registry: Arc<dyn RegistryStore> = Arc::new(backend.registry());
    let bus: Arc<dyn EventBus> = Arc::new(backend.bus());
    let mut running = Vec::new();
    for id in ["api-1", "api-2"] {
        let lifecycle = Arc::new(
            Lifecycle::builder("api", id)
                .unwrap()
                .registry(registry.clone())
                .bus(bus.clone())
                .control(ControlConfig::new(ControlKey::new(KEY).unwrap()))
                .jitter(Duration::ZERO)
                .handle_signals(false)
                .build(),
        );
        let l = lifecycle.clone();
        running.push((lifecycle, tokio::spawn(async move { l.run(&Idle).await })));
    }
    // Both registered and running before the roll call.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = registry.list(None).await.unwrap();
        if listed.len() == 2 && listed.iter().all(|i| i.status == Status::Running) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "instances never ran: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (code, out, err) = ctl(&url, Some(KEY), &["ping", "--service", "api", "--timeout", "5"]).await;
    println!("$ fleetwire ctl ping --service api\n{out}");
    assert_eq!(code, 0, "{out}{err}");
    for id in ["api-1", "api-2"] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(id))
            .unwrap_or_else(|| panic!("{out}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cells[..4], ["api", id, "yes", "done"], "{out}");
    }

    let (code, out, err) = ctl(
        &url,
        Some(KEY),
        &["quiet", "--service", "api", "--instance", "api-2", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(
        (rows[0]["instance"].as_str(), rows[0]["outcome"].as_str()),
        (Some("api-2"), Some("done")),
        "{out}"
    );
    let quiet = registry.list(None).await.unwrap();
    assert_eq!(
        quiet
            .iter()
            .find(|i| i.id.as_str() == "api-2")
            .map(|i| i.status.to_string()),
        Some("quiet".to_owned())
    );
    let (code, _, err) = ctl(
        &url,
        Some(KEY),
        &["resume", "--service", "api", "--instance", "api-2"],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // No key: bad usage. A wrong key: nobody executes it, so nothing completes.
    assert_eq!(ctl(&url, None, &["ping", "--fleet"]).await.0, 2);
    let (code, out, _) = ctl(
        &url,
        Some("not the fleet's key, but long enough"),
        &["ping", "--service", "api", "--timeout", "1"],
    )
    .await;
    assert_eq!(code, 1, "a forged command was answered: {out}");
    assert!(out.contains("no answer"), "{out}");
    // No instance of that service: not found.
    assert_eq!(
        ctl(
            &url,
            Some(KEY),
            &["ping", "--service", "nobody", "--timeout", "1"]
        )
        .await
        .0,
        3
    );

    for (lifecycle, task) in running {
        lifecycle.shutdown_handle().trigger();
        task.await.unwrap().unwrap();
    }
}
