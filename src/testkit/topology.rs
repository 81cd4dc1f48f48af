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
    r.case(
        "reply_outside_the_reply_prefix_is_refused",
        reply_prefix_enforced(bus.clone()),
    )
    .await;
    r.case("dropped_requests_leave_no_waiter", dropped_requests(bus.clone()))
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
            request::reply(bus.as_ref(), &t.tools_reply_prefix, &req, answer)
                .await
                .step("reply")?;
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

async fn reply_prefix_enforced(bus: Arc<dyn EventBus>) -> CaseResult {
    let t = topology();
    let group = GroupName::new("watch").expect("valid");
    for (stream, _) in t
        .groups_for(Role::Standalone, Some(&["discord"]))
        .step("groups")?
    {
        bus.ensure_group(&stream, &group, crate::StartFrom::Latest)
            .await
            .step("ensure")?;
    }
    let reply_stream = t
        .tools_reply(&crate::InstanceId::new("worker-3").expect("valid"))
        .step("reply stream")?;
    bus.ensure_group(&reply_stream, &group, crate::StartFrom::Latest)
        .await
        .step("ensure")?;
    let request_to = |to: &str| {
        Envelope::new("tool.exec")
            .with_header(request::REQUEST_ID, "r1")
            .with_header(request::REPLY_TO, to)
    };
    let p = &t.tools_reply_prefix;
    let hostile = [
        t.inbound.to_string(),
        t.outbound("discord").step("name")?.to_string(),
        p.clone(),
        format!("{p}:"),
        format!("{p}:a:b"),
        format!("{p}x:worker-3"),
        format!("x{p}:worker-3"),
    ];
    for to in &hostile {
        let out = request::reply(bus.as_ref(), p, &request_to(to), Envelope::new("tool.result")).await;
        ensure!(
            matches!(&out, Err(e) if e.kind() == ErrorKind::InvalidInput),
            "reply to `{to}` gave {out:?}"
        );
    }
    let me = ConsumerName::new("watcher").expect("valid");
    for stream in [t.inbound.clone(), t.outbound("discord").step("name")?] {
        let got = bus
            .read(&stream, &group, &me, ReadOptions::count(10))
            .await
            .step("read")?;
        ensure!(got.is_empty(), "a refused reply reached `{stream}`: {got:?}");
    }
    request::reply(
        bus.as_ref(),
        p,
        &request_to(reply_stream.as_str()),
        Envelope::new("tool.result"),
    )
    .await
    .step("reply under the prefix")?;
    let got = bus
        .read(&reply_stream, &group, &me, ReadOptions::count(10))
        .await
        .step("read")?;
    ensure!(got.len() == 1, "the allowed reply arrived {} times", got.len());
    Ok(())
}

async fn dropped_requests(bus: Arc<dyn EventBus>) -> CaseResult {
    const N: usize = 1_000;
    let t = topology();
    bus.ensure_group(
        &t.tools,
        &GroupName::new("nobody").expect("valid"),
        crate::StartFrom::Latest,
    )
    .await
    .step("ensure")?;
    let reply_to = t
        .tools_reply(&crate::InstanceId::new("worker-4").expect("valid"))
        .step("reply stream")?;
    let client = RequestClient::start(bus, t.tools.clone(), reply_to)
        .await
        .step("client")?;
    let requests = futures_util::future::join_all(
        (0..N).map(|_| client.request(Envelope::new("tool.exec"), Duration::from_secs(60))),
    );
    // Watch until every request waits for its reply (or 5 s), then drop them all.
    let watch = async {
        let mut seen = 0;
        for _ in 0..500 {
            crate::rt::sleep(Duration::from_millis(10)).await;
            seen = client.in_flight();
            if seen == N {
                break;
            }
        }
        seen
    };
    let seen = match futures_util::future::select(std::pin::pin!(requests), std::pin::pin!(watch)).await {
        futures_util::future::Either::Left(_) => return Err("requests ended without a reply".into()),
        futures_util::future::Either::Right((seen, _)) => seen,
    };
    ensure!(seen == N, "only {seen} of {N} requests were waiting when dropped");
    let left = client.in_flight();
    ensure!(left == 0, "{left} waiters left after dropping {N} requests");
    Ok(())
}
