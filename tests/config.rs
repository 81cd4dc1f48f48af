//! Run-time configuration: each backend choice builds stores that work
//! (Redis against a private, real redis-server), the environment overrides
//! the file, the documented defaults are the real ones, and mistakes are
//! errors naming the field.
#![cfg(all(feature = "config", feature = "memory", feature = "noop", feature = "redis"))]

mod support;

use fleetwire::{
    config::{BackendKind, Backends, Config},
    service::{Context, Service},
    ConsumerName, Envelope, ErrorKind, GroupName, Instance, InstanceId, ReadOptions, ServiceName, StartFrom,
    Status, StreamName,
};
use std::{sync::Arc, time::Duration};
use support::RedisServer;

/// Register, list, touch, publish, read and ack through the built stores.
async fn exercise(b: &Backends, stores_data: bool) {
    let svc = ServiceName::new("cfg-svc").unwrap();
    let id = InstanceId::new("cfg-1").unwrap();
    b.registry
        .register(
            &Instance::new(svc.clone(), id.clone(), Status::Running),
            Duration::from_secs(30),
        )
        .await
        .expect("register");
    let listed = b.registry.list(Some(&svc)).await.expect("list");
    assert_eq!(listed.len(), usize::from(stores_data), "{:?}: {listed:?}", b.kind);

    b.liveness
        .touch(&id, Duration::from_secs(30))
        .await
        .expect("touch");
    let alive = b.liveness.is_alive_batch(std::slice::from_ref(&id)).await;
    if stores_data {
        assert_eq!(alive.expect("alive"), vec![true], "{:?}", b.kind);
    } else {
        // The no-op store cannot answer "alive?": callers fall back, as when one is down.
        assert_eq!(alive.expect_err("noop alive").kind(), ErrorKind::Unavailable);
    }

    let (stream, group) = (
        StreamName::new("cfg-stream").unwrap(),
        GroupName::new("cfg-group").unwrap(),
    );
    b.bus
        .ensure_group(&stream, &group, StartFrom::Beginning)
        .await
        .expect("group");
    b.bus
        .publish(&stream, &Envelope::new("hello"))
        .await
        .expect("publish");
    let got = b
        .bus
        .read(
            &stream,
            &group,
            &ConsumerName::new("c1").unwrap(),
            ReadOptions::count(10),
        )
        .await
        .expect("read");
    assert_eq!(got.len(), usize::from(stores_data), "{:?}", b.kind);
    if let Some(d) = got.first() {
        assert_eq!(d.envelope().unwrap().kind, "hello");
        b.bus.ack(&stream, &group, &[d.id]).await.expect("ack");
    }
}

#[tokio::test]
async fn memory_backend_builds_and_works() {
    let config = Config::from_toml_str(r#"backend = "memory""#).unwrap();
    let b = config.backends().unwrap();
    assert_eq!(b.kind, BackendKind::Memory);
    exercise(&b, true).await;
}

#[tokio::test]
async fn noop_backend_builds_and_accepts_everything() {
    let config = Config::from_toml_str(r#"backend = "noop""#).unwrap();
    let b = config.backends().unwrap();
    assert_eq!(b.kind, BackendKind::Noop);
    exercise(&b, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_builds_and_works() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let toml = format!(
        r#"
        backend = "redis"
        [redis]
        url = "{}"
        namespace = "cfgtest"
        pool_size = 2
        max_len = 5000
        "#,
        server.url()
    );
    let config = Config::from_toml_str(&toml).unwrap();
    let b = config.backends().unwrap();
    assert_eq!(b.kind, BackendKind::Redis);
    exercise(&b, true).await;
    // The namespace reached the keys.
    let keys = server.cmd(&["KEYS", "cfgtest:registry:service:cfg-svc:*"]);
    assert!(keys.contains("cfgtest:registry:service:cfg-svc:cfg-1"), "{keys}");
}

/// A service that checks it is registered while it runs, then stops.
struct CheckRegistered(Backends);

#[fleetwire::async_trait]
impl Service for CheckRegistered {
    async fn on_start(&self, _: &Context) -> fleetwire::Result<()> {
        Ok(())
    }
    async fn run(&self, ctx: &Context) -> fleetwire::Result<()> {
        let listed = self.0.registry.list(Some(&ServiceName::new("gateway")?)).await?;
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].id.as_str(), "gw-7");
        ctx.shutdown().trigger();
        Ok(())
    }
    async fn on_stop(&self, _: &Context) -> fleetwire::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_from_config_runs_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let config = Config::from_toml_str(
        r#"
        [service]
        name = "gateway"
        instance = "gw-7"
        [lifecycle]
        jitter_ms = 0
        ttl_ms = 3000
        handle_signals = false
        [health]
        port = 0
        "#,
    )
    .unwrap()
    .with_vars([("SG_REDIS_URL", server.url())])
    .unwrap();
    let backends = config.backends().unwrap();
    let lifecycle = config.lifecycle(&backends).unwrap().without_control().build();
    tokio::time::timeout(
        Duration::from_secs(20),
        lifecycle.run(&CheckRegistered(backends.clone())),
    )
    .await
    .expect("lifecycle ended")
    .expect("lifecycle ran");
    // Out of the registry at shutdown.
    let left = backends
        .registry
        .list(Some(&ServiceName::new("gateway").unwrap()))
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn environment_overrides_the_file() {
    let file = r#"
        backend = "memory"
        [redis]
        url = "redis://file-host:6379"
        namespace = "file"
        max_len = 7000
        [health]
        port = 8000
    "#;
    let config = Config::from_toml_str(file)
        .unwrap()
        .with_vars([
            ("SG_BACKEND", "redis"),
            ("REDIS_URL", "redis://generic:1"),
            ("SG_REDIS_URL", "redis://env-host:6380"),
            ("SG_NAMESPACE", "envns"),
            ("SG_STREAM_MAXLEN", "9000"),
            ("SG_HEALTH_PORT", "9191"),
            ("SG_SERVICE", "inference"),
            ("SG_SERVICE_TTL_MS", "4000"),
            // Empty variables are ignored, as unset.
            ("SG_REDIS_POOL_SIZE", ""),
        ])
        .unwrap();
    assert_eq!(config.backend, BackendKind::Redis);
    assert_eq!(
        config.redis.url, "redis://env-host:6380",
        "SG_REDIS_URL wins over REDIS_URL"
    );
    assert_eq!(config.redis.namespace, "envns");
    assert_eq!(config.redis.max_len, 9000);
    assert_eq!(config.redis.pool_size, 8);
    assert_eq!(config.health.port, 9191);
    assert_eq!(config.service.name, "inference");
    assert_eq!(config.lifecycle.ttl_ms, 4000);

    let only_generic = Config::default()
        .with_vars([("REDIS_URL", "redis://generic:1")])
        .unwrap();
    assert_eq!(only_generic.redis.url, "redis://generic:1");
}

#[test]
fn process_environment_and_sg_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleetwire.toml");
    std::fs::write(&path, "backend = \"noop\"\n[redis]\nnamespace = \"fromfile\"\n").unwrap();
    // The only test in this binary touching the process environment.
    std::env::set_var("SG_CONFIG", &path);
    std::env::set_var("SG_NAMESPACE", "fromenv");
    let loaded = Config::load();
    std::env::remove_var("SG_CONFIG");
    std::env::remove_var("SG_NAMESPACE");
    let loaded = loaded.unwrap();
    assert_eq!(loaded.backend, BackendKind::Noop);
    assert_eq!(loaded.redis.namespace, "fromenv");
}

/// The defaults the module docs print are the real ones.
#[test]
fn documented_file_is_the_default() {
    let documented = r#"
        backend = "redis"
        [redis]
        url = "redis://127.0.0.1:6379"
        namespace = "sg"
        pool_size = 8
        connect_timeout_ms = 2000
        response_timeout_ms = 2000
        probe_every_ms = 250
        max_len = 100000
        max_len_floor = 1000
        [redis.tls]
        [service]
        name = "service"
        [lifecycle]
        ttl_ms = 15000
        health_heartbeat_every_ms = 30000
        jitter_ms = 2000
        store_required = true
        op_timeout_ms = 5000
        shutdown_timeout_ms = 10000
        handle_signals = true
        [health]
        enabled = true
        port = 9090
    "#;
    let parsed = Config::from_toml_str(documented).unwrap();
    assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    assert_eq!(
        format!("{:?}", Config::from_toml_str("").unwrap()),
        format!("{:?}", Config::default())
    );
}

#[test]
fn bad_config_names_the_field() {
    let cases = [
        (
            "[redis]\npool_size = \"eight\"",
            "config field `redis.pool_size`",
            "line 2",
        ),
        ("[redis]\npool_sise = 8", "redis.pool_sise", "unknown field"),
        (
            "backend = \"mongodb\"",
            "config field `backend`",
            "unknown variant",
        ),
        (
            "[lifecycle]\nttl_ms = -1",
            "config field `lifecycle.ttl_ms`",
            "line 2",
        ),
        ("colour = \"blue\"", "colour", "unknown field"),
        ("[health]\nport = 70000", "config field `health.port`", ""),
        ("[redis\nurl = 1", "config:", "line 1"),
    ];
    for (toml, field, detail) in cases {
        let err = Config::from_toml_str(toml).expect_err(toml);
        let msg = err.to_string();
        println!("{toml:?} -> {msg}");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{msg}");
        assert!(msg.contains(field), "{toml:?}: {msg}");
        assert!(msg.contains(detail), "{toml:?}: {msg}");
    }

    let env_cases = [
        (
            "SG_STREAM_MAXLEN",
            "lots",
            "environment variable `SG_STREAM_MAXLEN` (config field `redis.max_len`)",
        ),
        ("SG_BACKEND", "etcd", "config field `backend`"),
        ("SG_HEALTH_PORT", "99999", "config field `health.port`"),
    ];
    for (var, value, want) in env_cases {
        let err = Config::default().with_vars([(var, value)]).expect_err(var);
        println!("{var}={value} -> {err}");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[tokio::test]
async fn bad_values_fail_at_build_naming_the_field() {
    let build = |toml: &str| {
        let config = Config::from_toml_str(toml).unwrap();
        config
            .backends()
            .map(|b| config.lifecycle(&b).map(|_| ()))
            .and_then(|r| r)
    };
    let cases = [
        ("[redis]\npool_size = 0", "redis.pool_size"),
        ("[redis]\nurl = \"http://nowhere\"", "config section `redis`"),
        (
            "backend = \"memory\"\n[service]\nname = \"bad:name\"",
            "service.name",
        ),
        (
            "backend = \"memory\"\n[lifecycle]\nttl_ms = 0",
            "lifecycle.ttl_ms",
        ),
        (
            "[redis.tls]\nclient_cert_file = \"/x.crt\"",
            "redis.tls.client_key_file",
        ),
        (
            "[redis.tls]\nca_file = \"/nonexistent/ca.crt\"",
            "redis.tls.ca_file",
        ),
    ];
    for (toml, field) in cases {
        let err = build(toml).expect_err(toml);
        println!("{toml:?} -> {err}");
        assert!(err.to_string().contains(field), "{toml:?}: {err}");
        assert!(!err.is_temporary());
    }
}

#[test]
fn debug_hides_the_password() {
    let config = Config::from_toml_str("[redis]\nurl = \"redis://user:s3cret@host:6379\"").unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("redis://user:***@host:6379"), "{shown}");
    for url in [
        "redis://host/0?password=s3cret",
        "redis+sentinel://s1:26379/m?sentinel_password=s3cret",
    ] {
        let config = Config::from_toml_str(&format!("[redis]\nurl = \"{url}\"")).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

#[test]
fn shared_backends_are_object_safe() {
    let config = Config::from_toml_str("backend = \"memory\"").unwrap();
    let b = async_io::block_on(async { config.backends() }).unwrap();
    let _: Arc<dyn fleetwire::EventBus> = b.bus;
}
