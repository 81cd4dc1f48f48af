//! `members` and `deregister`.

use crate::{conn::Ctx, output, Failure, Outcome};
use fleetwire::{Instance, InstanceId, ServiceName};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub(crate) struct Member {
    service: String,
    id: String,
    host: Option<String>,
    pid: Option<u32>,
    status: String,
    started_at_ms: Option<u64>,
    /// Always null for now: the registry records no heartbeat time.
    last_seen_ms: Option<u64>,
    /// Remaining TTL of its registry entry.
    ttl_ms: Option<u64>,
    metadata: BTreeMap<String, serde_json::Value>,
}

impl Member {
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn status(&self) -> &str {
        &self.status
    }
}

pub(crate) async fn members(ctx: &Ctx, service: Option<&str>) -> Result<Vec<Member>, Failure> {
    let service = service.map(ServiceName::new).transpose()?;
    let mut instances: Vec<Instance> = ctx.registry.list(service.as_ref()).await?;
    instances.sort_by(|a, b| (a.service.as_str(), a.id.as_str()).cmp(&(b.service.as_str(), b.id.as_str())));
    let mut out = Vec::with_capacity(instances.len());
    for i in instances {
        let ttl_ms = ctx.instance_ttl_ms(&i.service, &i.id).await?;
        out.push(Member {
            service: i.service.to_string(),
            id: i.id.to_string(),
            host: i.host,
            pid: i.pid,
            status: i.status.to_string(),
            started_at_ms: i.started_at_ms,
            last_seen_ms: None,
            ttl_ms,
            metadata: i.metadata,
        });
    }
    Ok(out)
}

pub(crate) async fn list(ctx: &Ctx, service: Option<&str>) -> Outcome {
    let members = members(ctx, service).await?;
    if ctx.json {
        return output::print_json(&members);
    }
    let now = output::now_ms();
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.service.clone(),
                m.id.clone(),
                output::opt(m.host.as_deref()),
                output::opt(m.pid),
                m.status.clone(),
                output::opt(
                    m.last_seen_ms
                        .map(|t| format!("{} ago", output::duration(now.saturating_sub(t)))),
                ),
                output::opt(m.ttl_ms.map(output::duration)),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["SERVICE", "ID", "HOST", "PID", "STATUS", "LAST-SEEN", "TTL"],
            &rows
        )
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Deregistered<'a> {
    service: &'a str,
    id: &'a str,
    deregistered: bool,
}

pub(crate) async fn deregister(ctx: &Ctx, service: &str, id: &str) -> Outcome {
    let service_name = ServiceName::new(service)?;
    let instance = InstanceId::new(id)?;
    // Deregistering a missing instance succeeds in the store; the operator
    // most likely mistyped, so look first and say so.
    let present = ctx
        .registry
        .list(Some(&service_name))
        .await?
        .iter()
        .any(|i| i.id == instance);
    if !present {
        return Err(Failure::NotFound(format!(
            "no instance `{id}` of service `{service}`"
        )));
    }
    ctx.registry.deregister(&service_name, &instance).await?;
    if ctx.json {
        return output::print_json(&Deregistered {
            service,
            id,
            deregistered: true,
        });
    }
    println!("deregistered {service}/{id}");
    Ok(())
}
