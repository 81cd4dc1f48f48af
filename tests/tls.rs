//! Redis over TLS: certificates made at test time (rcgen), a private
//! redis-server serving only TLS, the registry, liveness and bus conformance
//! suites over it, mutual TLS, and the failures a user sees (unknown CA, a
//! host name the certificate does not name, no client certificate): a
//! non-temporary `Tls` error, quickly, never a retry loop.
#![cfg(all(feature = "redis-tls", feature = "testkit"))]

mod support;

use fleetwire::{
    redis::{RedisBackend, RedisTls},
    testkit::{self, RealTime},
    ErrorKind, Instance, InstanceId, RegistryStore, ServiceName,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};
use support::RedisServer;

/// A CA and the certificates it signed, as PEM, and as files for redis-server.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

fn ca(name: &str) -> (Issuer<'static, KeyPair>, String) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA cert");
    (Issuer::new(params, key), cert.pem())
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = usages.to_vec();
    let cert = params.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// A CA, a server certificate for `localhost` only (so `127.0.0.1` is a
    /// host-name mismatch), and a client certificate.
    fn new() -> Self {
        let (issuer, ca) = ca("fleetwire test CA");
        let (server_cert, server_key) = leaf(&issuer, &["localhost"], &[ExtendedKeyUsagePurpose::ServerAuth]);
        // Cluster nodes: named by the address the slot map gives, and
        // client certificates too (they connect to each other over TLS).
        let (node_cert, node_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf(
            &issuer,
            &["fleetwire-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, pem) in [
            ("ca.crt", &ca),
            ("server.crt", &server_cert),
            ("server.key", &server_key),
            ("client.crt", &client_cert),
            ("client.key", &client_key),
            ("node.crt", &node_cert),
            ("node.key", &node_key),
        ] {
            std::fs::write(dir.path().join(name), pem).expect("write pem");
        }
        Self {
            dir,
            ca,
            client_cert,
            client_key,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Start redis-server on TLS only; `auth_clients` is `no` or `yes` (mutual TLS).
    fn server(&self, auth_clients: &str) -> Option<RedisServer> {
        let (cert, key, ca) = (
            self.path("server.crt"),
            self.path("server.key"),
            self.path("ca.crt"),
        );
        RedisServer::start_tls(&[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth_clients,
        ])
    }

    fn tls(&self) -> RedisTls {
        RedisTls::new().ca_pem(self.ca.as_bytes())
    }

    fn mtls(&self) -> RedisTls {
        self.tls()
            .client_cert_pem(self.client_cert.as_bytes(), self.client_key.as_bytes())
    }
}

fn url(server: &RedisServer) -> String {
    format!("rediss://localhost:{}", server.port)
}

fn backend(url: String, tls: RedisTls) -> RedisBackend {
    RedisBackend::builder()
        .url(url)
        .tls(tls)
        .max_len_floor(1)
        .max_len(200)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("backend")
}

async fn suites(redis: &RedisBackend) {
    let reports = [
        (
            "registry",
            testkit::registry::run(&redis.registry(), &RealTime).await,
        ),
        (
            "liveness",
            testkit::liveness::run(&redis.liveness(), &RealTime).await,
        ),
        // Blocking reads go through the pool's own connections: TLS too.
        ("bus", testkit::bus::run(&redis.bus(), &RealTime).await),
    ];
    for (name, r) in &reports {
        println!("{name} over TLS:\n{r}");
        r.assert_all_passed();
    }
}

/// Expect a `Tls` error, not temporary, within a bounded time; and the same
/// (not "unavailable") on the next call.
async fn expect_tls_failure(redis: &RedisBackend, case: &str) {
    for attempt in 0..2 {
        let started = Instant::now();
        let err = redis.ping().await.expect_err(case);
        let took = started.elapsed();
        println!("{case} (call {attempt}): {err} [{:?} after {took:?}]", err.kind());
        assert_eq!(err.kind(), ErrorKind::Tls, "{case}: {err}");
        assert!(!err.is_temporary(), "{case}: a TLS failure is not temporary");
        assert!(took < Duration::from_secs(2), "{case}: took {took:?}");
    }
    assert!(redis.available(), "{case}: a rejected certificate is no outage");
    // The bus's blocking reads report the same.
    let stream = fleetwire::StreamName::new("tls-probe").unwrap();
    let group = fleetwire::GroupName::new("g").unwrap();
    let err = fleetwire::EventBus::ensure_group(&redis.bus(), &stream, &group, fleetwire::StartFrom::Latest)
        .await
        .expect_err(case);
    assert_eq!(err.kind(), ErrorKind::Tls, "{case}, bus: {err}");
    // A blocking read opens its own connection (the pool): the same verdict, as quickly.
    let started = Instant::now();
    let consumer = fleetwire::ConsumerName::new("c").unwrap();
    let read = fleetwire::ReadOptions::count(1).block(Duration::from_millis(500));
    let err = fleetwire::EventBus::read(&redis.bus(), &stream, &group, &consumer, read)
        .await
        .expect_err(case);
    println!(
        "{case}, blocking read: {err} [{:?} after {:?}]",
        err.kind(),
        started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Tls, "{case}, blocking read: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_tls_on_tokio() {
    let pki = Pki::new();
    let Some(server) = pki.server("no") else { return };
    suites(&backend(url(&server), pki.tls())).await;
}

#[cfg(feature = "rt-smol")]
#[test]
fn registry_over_tls_on_smol() {
    let pki = Pki::new();
    let Some(server) = pki.server("no") else { return };
    smol::block_on(async {
        let redis = backend(url(&server), pki.tls());
        let r = testkit::registry::run(&redis.registry(), &RealTime).await;
        r.assert_all_passed();
        let r = testkit::bus::run(&redis.bus(), &RealTime).await;
        r.assert_all_passed();
        // Blocking reads use dedicated connections here, not the bb8 pool.
        let (_, other_ca) = ca("some other CA");
        expect_tls_failure(
            &backend(url(&server), RedisTls::new().ca_pem(other_ca)),
            "unknown CA on smol",
        )
        .await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_client_certificate() {
    let pki = Pki::new();
    let Some(server) = pki.server("yes") else { return };
    let redis = backend(url(&server), pki.mtls());
    redis.ping().await.expect("ping with a client certificate");
    let registry = redis.registry();
    let svc = ServiceName::new("gateway").unwrap();
    let id = InstanceId::new("gw-1").unwrap();
    registry
        .register(
            &Instance::new(svc.clone(), id.clone(), fleetwire::Status::Running),
            Duration::from_secs(10),
        )
        .await
        .expect("register over mTLS");
    assert_eq!(registry.list(Some(&svc)).await.unwrap().len(), 1);
    let r = testkit::bus::run(&redis.bus(), &RealTime).await;
    r.assert_all_passed();

    // The same server refuses a client without a certificate.
    expect_tls_failure(&backend(url(&server), pki.tls()), "no client certificate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fails_cleanly() {
    let pki = Pki::new();
    let Some(server) = pki.server("no") else { return };
    let (_, other_ca) = ca("some other CA");
    let redis = backend(url(&server), RedisTls::new().ca_pem(other_ca));
    expect_tls_failure(&redis, "unknown CA").await;
    // The system's roots do not know the test CA either.
    expect_tls_failure(&backend(url(&server), RedisTls::new()), "system roots").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_mismatch_fails_cleanly() {
    let pki = Pki::new();
    let Some(server) = pki.server("no") else { return };
    // The certificate names `localhost`, not the address.
    let redis = backend(format!("rediss://127.0.0.1:{}", server.port), pki.tls());
    expect_tls_failure(&redis, "host name mismatch").await;
}

#[tokio::test]
async fn bad_settings_are_invalid_input() {
    let pki = Pki::new();
    let cases: [(&str, String, RedisTls); 4] = [
        ("plain URL", "redis://localhost:6379".into(), pki.tls()),
        (
            "not PEM",
            "rediss://localhost:1".into(),
            RedisTls::new().ca_pem("not a certificate"),
        ),
        (
            "no key",
            "rediss://localhost:1".into(),
            pki.tls().client_cert_pem(pki.client_cert.as_bytes(), "nothing"),
        ),
        (
            "empty CA",
            "rediss://localhost:1".into(),
            RedisTls::new().ca_pem(""),
        ),
    ];
    for (case, url, tls) in cases {
        let err = RedisBackend::builder().url(url).tls(tls).build().expect_err(case);
        println!("{case}: {err}");
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{case}: {err}");
    }
    let missing = PathBuf::from("/nonexistent/ca.crt");
    let err = RedisTls::new().ca_file(&missing).expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    // Files work as PEM does.
    let tls = RedisTls::new()
        .ca_file(pki.dir.path().join("ca.crt"))
        .expect("ca file");
    assert!(format!("{tls:?}").contains("custom_ca: true"));
}

/// The CLI's `--tls-ca` / `--tls-cert` / `--tls-key` (or `SG_REDIS_TLS_*`)
/// against a mutual-TLS server; a wrong CA is exit 1 naming TLS.
#[cfg(feature = "cli")]
#[test]
fn cli_over_mutual_tls() {
    use std::process::Command;
    let pki = Pki::new();
    let Some(server) = pki.server("yes") else { return };
    let run = |args: &[&str], env: &[(&str, String)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fleetwire"))
            .args(["--redis", &url(&server)])
            .args(args)
            .env_remove("SG_REDIS_URL")
            .env_remove("REDIS_URL")
            .env_remove("SG_REDIS_TLS_CA")
            .env_remove("SG_REDIS_TLS_CERT")
            .env_remove("SG_REDIS_TLS_KEY")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run fleetwire");
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (out.status.code().unwrap(), text(out.stdout), text(out.stderr))
    };
    let (ca, cert, key) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"));
    let flags = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];

    let (code, out, err) = run(&[&flags[..], &["members", "--json"]].concat(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "[]", "{out}");

    let (code, out, err) = run(
        &["streams"],
        &[
            ("SG_REDIS_TLS_CA", ca.clone()),
            ("SG_REDIS_TLS_CERT", cert.clone()),
            ("SG_REDIS_TLS_KEY", key.clone()),
        ],
    );
    assert_eq!(code, 0, "from the environment: {out}{err}");

    let (code, _, err) = run(&["--tls-ca", &ca, "members"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("TLS with Redis at"), "{err}");
    println!("no client certificate: {err}");

    let (code, _, err) = run(&["--tls-cert", &cert, "members"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");

    let wrong = pki.dir.path().join("other-ca.crt");
    std::fs::write(&wrong, ca_pem_of("other CA")).unwrap();
    let wrong = wrong.display().to_string();
    let (code, _, err) = run(
        &[
            "--tls-ca",
            &wrong,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "members",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    println!("wrong CA: {err}");
}

#[cfg(feature = "cli")]
fn ca_pem_of(name: &str) -> String {
    ca(name).1
}

/// `[redis.tls]` in a config file (and `SG_REDIS_TLS_*`) reach the backend.
#[cfg(feature = "config")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_with_tls_section() {
    use fleetwire::config::Config;
    let pki = Pki::new();
    let Some(server) = pki.server("yes") else { return };
    let toml = format!(
        "[redis]\nurl = \"{}\"\n[redis.tls]\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        url(&server),
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let config = Config::from_toml_str(&toml).unwrap();
    config
        .redis_backend()
        .unwrap()
        .ping()
        .await
        .expect("ping via config");
    let backends = config.backends().unwrap();
    let svc = ServiceName::new("cfg").unwrap();
    let instance = Instance::new(
        svc.clone(),
        InstanceId::new("c-1").unwrap(),
        fleetwire::Status::Running,
    );
    backends
        .registry
        .register(&instance, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(backends.registry.list(Some(&svc)).await.unwrap().len(), 1);

    let from_env = Config::default()
        .with_vars([
            ("SG_REDIS_URL", url(&server)),
            ("SG_REDIS_TLS_CA", pki.path("ca.crt")),
            ("SG_REDIS_TLS_CERT", pki.path("client.crt")),
            ("SG_REDIS_TLS_KEY", pki.path("client.key")),
        ])
        .unwrap();
    from_env
        .redis_backend()
        .unwrap()
        .ping()
        .await
        .expect("ping via SG_REDIS_TLS_*");
}

/// Cluster over TLS: `rediss+cluster://` with a custom CA, every node
/// serving TLS only (clients, cluster bus, replication). The conformance
/// suites pass, a batch liveness check spans every primary, topics flow
/// through a seed node's TLS pub/sub connection, and a wrong CA is a
/// non-temporary `Tls` error.
#[cfg(feature = "redis-cluster")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls() {
    use fleetwire::{EventBus, LivenessStore, Topic, TopicPattern};
    use futures_util::StreamExt;
    let pki = Pki::new();
    let Some(cluster) = support::cluster::Cluster::start_tls(
        &pki.path("node.crt"),
        &pki.path("node.key"),
        &pki.path("ca.crt"),
    ) else {
        return;
    };
    assert!(cluster.url().starts_with("rediss+cluster://"));
    let redis = backend(cluster.url(), pki.tls());
    suites(&redis).await;
    let live = redis.liveness();
    let ids: Vec<InstanceId> = (0..2000)
        .map(|i| InstanceId::new(format!("t-{i}")).unwrap())
        .collect();
    for id in ids.iter().step_by(3) {
        live.touch(id, Duration::from_secs(60)).await.unwrap();
    }
    let alive = live.is_alive_batch(&ids).await.unwrap();
    assert!(alive.iter().enumerate().all(|(i, a)| *a == (i % 3 == 0)));
    let bus = redis.bus();
    let mut sub = bus
        .subscribe(&TopicPattern::new("system.*.health").unwrap())
        .await
        .unwrap();
    let topic = Topic::new("system.api.health").unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            bus.publish_topic(&topic, &fleetwire::Envelope::new("beat"))
                .await
                .unwrap();
            if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                return e;
            }
        }
    })
    .await
    .expect("a topic event over TLS");
    println!("topic event over TLS: {got:?}");
    let (_, other_ca) = ca("some other CA");
    let wrong = backend(cluster.url(), RedisTls::new().ca_pem(other_ca));
    expect_tls_failure(&wrong, "Cluster, unknown CA").await;
    // Listing streams reads the slot map itself: the same verdict.
    let err = wrong.stream_names().await.expect_err("listing streams");
    assert_eq!(err.kind(), ErrorKind::Tls, "stream_names: {err}");
    // TLS settings need the TLS scheme, as on one server.
    let plain = cluster.url().replacen("rediss+", "redis+", 1);
    let err = RedisBackend::builder()
        .url(plain)
        .tls(pki.tls())
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}
