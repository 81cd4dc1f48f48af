//! The conformance suites over one Redis deployment (a server, a Sentinel
//! set, a Cluster), shared by the tests of each.

use fleetwire::{
    redis::RedisBackend,
    testkit::{self, RealTime, Report},
};
use std::{sync::Arc, time::Duration};

/// The backend the suites run on: namespace `sg`, streams capped at 200.
pub fn backend(url: &str) -> RedisBackend {
    RedisBackend::builder()
        .url(url)
        .namespace("sg")
        .max_len_floor(1)
        .max_len(200)
        .build()
        .expect("backend")
}

/// A standalone backend pointed at a port nothing listens on.
pub fn unreachable() -> RedisBackend {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    RedisBackend::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .expect("backend")
}

/// The registry, liveness, bus, topology and lifecycle suites on `url`.
pub async fn core(url: &str) -> Vec<(&'static str, Report)> {
    let redis = backend(url);
    vec![
        (
            "registry",
            testkit::registry::run(&redis.registry(), &RealTime).await,
        ),
        (
            "liveness",
            testkit::liveness::run(&redis.liveness(), &RealTime).await,
        ),
        ("bus", testkit::bus::run(&redis.bus(), &RealTime).await),
        ("topology", testkit::topology::run(Arc::new(redis.bus())).await),
        (
            "lifecycle",
            testkit::lifecycle::run(Arc::new(redis.registry()), Arc::new(unreachable().registry())).await,
        ),
    ]
}

/// [`core`], then the control suite and the consumer suite (on a backend
/// with default caps) on `url`.
pub async fn all(url: &str) -> Vec<(&'static str, Report)> {
    let mut reports = core(url).await;
    let redis = backend(url);
    reports.push((
        "control",
        testkit::control::run(Arc::new(redis.bus()), Arc::new(redis.registry())).await,
    ));
    let plain = RedisBackend::builder().url(url).build().expect("backend");
    reports.push(("consumer", testkit::consumer::run(Arc::new(plain.bus())).await));
    reports
}

/// Print each report, then fail on the first that did not pass.
pub fn assert_passed(on: &str, reports: &[(&str, Report)]) {
    for (name, r) in reports {
        println!("{name} on {on}:\n{r}");
        r.assert_all_passed();
    }
}
