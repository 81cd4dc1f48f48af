//! Conformance of the topology helper and request/reply on a bus backend.

use super::{ensure, unique, CaseResult, Report, Step};
use crate::{
    request::{self, RequestClient},
    topology::{Role, Topology},
    ConsumerName, Envelope, ErrorKind, EventBus, GroupName, ReadOptions, StreamName,
};
use std::{sync::Arc, time::Duration};

fn topology() -> Topology {
    let p = unique("tk");
    Topology {
        inbound: StreamName::new(format!("{p}:stream:inbound")).expect("valid"),
        outbound_prefix: format!("{p}:stream:outbound"),
        tools: StreamName::new(format!("{p}:stream:tools")).expect("valid"),
        tools_reply_prefix: format!("{p}:tools:reply"),
        ..Topology::default()
    }
}

/// Run the topology and request/reply cases against `bus`.
pub async fn run(bus: Arc<dyn EventBus>) -> Report {
    let mut r = Report::default();
    r.case(
        "ensure_streams_per_role_is_idempotent",
        ensure_streams(bus.as_ref()),
    )
    .await;
    r.case("request_reply_round_trip", round_trip(bus.clone())).await;
    r.case("request_without_responder_times_out", times_out(bus.clone()))
        .await;
    r
}

async fn ensure_streams(bus: &dyn EventBus) -> CaseResult {
    let t = topology();
    let created = t
        .ensure_streams(bus, Role::Standalone, Some(&["discord", "matrix"]))
        .await
        .step("ensure")?;
    ensure!(
        created.len() == 3,
        "standalone with 2 platforms created {created:?}"
    );
    let again = t
        .ensure_streams(bus, Role::Standalone, Some(&["discord", "matrix"]))
        .await
        .step("again")?;
    ensure!(again.is_empty(), "second ensure_streams created {again:?}");
    let tools = t.ensure_streams(bus, Role::Tools, None).await.step("tools")?;
    ensure!(
        tools == [(t.tools.clone(), t.tools_group.clone())],
        "tools role created {tools:?}"
    );
    let info = bus
        .stream_info(&t.outbound("matrix").step("name")?)
        .await
        .step("stream_info")?;
    ensure!(
        info.groups.iter().any(|g| g.name == "sg:gateway:matrix"),
        "gateway group missing: {info:?}"
    );
    Ok(())
}

async fn serve_tools(bus: Arc<dyn EventBus>, t: Topology, n: usize) -> CaseResult {
    let me = ConsumerName::new("tools-1").expect("valid");
    let mut served = 0;
    while served < n {
        let got = bus
            .read(
                &t.tools,
                &t.tools_group,
                &me,
                ReadOptions::count(8).block(Duration::from_secs(3)),
            )
            .await
            .step("tools read")?;
        ensure!(!got.is_empty(), "tools service got no request within 3 s");
        for d in got {
            let req = d.envelope().step("decode request")?;
            let answer = Envelope::new("tool.result")
                .with_raw_payload(req.payload.iter().rev().copied().collect::<Vec<u8>>());
            request::reply(bus.as_ref(), &req, answer).await.step("reply")?;
            bus.ack(&t.tools, &t.tools_group, &[d.id]).await.step("ack")?;
            served += 1;
        }
    }
    Ok(())
}

async fn round_trip(bus: Arc<dyn EventBus>) -> CaseResult {
    let t = topology();
    t.ensure_streams(bus.as_ref(), Role::Tools, None)
        .await
        .step("ensure")?;
    let reply_to = t
        .tools_reply(&crate::InstanceId::new("worker-1").expect("valid"))
        .step("reply stream")?;
    let client = RequestClient::start(bus.clone(), t.tools.clone(), reply_to)
        .await
        .step("client")?;
    let server = serve_tools(bus.clone(), t.clone(), 5);
    let requests = futures_util::future::join_all((0..5u8).map(|n| {
        let c = &client;
        async move {
            let reply = c
                .request(
                    Envelope::new("tool.exec").with_raw_payload(vec![n, 0, 9]),
                    Duration::from_secs(5),
                )
                .await;
            (n, reply)
        }
    }));
    let (served, replies) = futures_util::future::join(server, requests).await;
    served?;
    for (n, reply) in replies {
        let reply = reply.step("request")?;
        ensure!(
            reply.payload == [9, 0, n],
            "request {n} got the reply {:?}",
            reply.payload
        );
    }
    Ok(())
}

async fn times_out(bus: Arc<dyn EventBus>) -> CaseResult {
    let t = topology();
    bus.ensure_group(
        &t.tools,
        &GroupName::new("nobody").expect("valid"),
        crate::StartFrom::Latest,
    )
    .await
    .step("ensure")?;
    let reply_to = t
        .tools_reply(&crate::InstanceId::new("worker-2").expect("valid"))
        .step("reply stream")?;
    let client = RequestClient::start(bus, t.tools.clone(), reply_to)
        .await
        .step("client")?;
    let err = client
        .request(Envelope::new("tool.exec"), Duration::from_millis(300))
        .await;
    ensure!(
        matches!(&err, Err(e) if e.kind() == ErrorKind::Timeout),
        "unanswered request returned {err:?}"
    );
    Ok(())
}
