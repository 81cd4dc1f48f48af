//! The conformance suites against the no-op backends: their documented expectations.
#![cfg(all(feature = "noop", feature = "testkit"))]

use fleetwire::{
    noop::{NoopBus, NoopLiveness, NoopRegistry},
    testkit::{self, RealTime},
};

#[tokio::test]
async fn noop_backends_meet_their_documented_expectations() {
    let reports = [
        testkit::registry::run(&NoopRegistry, &RealTime).await,
        testkit::liveness::run(&NoopLiveness, &RealTime).await,
        testkit::bus::run(&NoopBus, &RealTime).await,
    ];
    for r in &reports {
        println!("{r}");
        r.assert_all_passed();
    }
}
