//! `members` (and `members --watch`) and `deregister`.

use crate::{
    conn::{self, Ctx},
    output, Failure, Outcome,
};
use fleetwire::{
    watch::{RegistryWatch, WatchEvent},
    Instance, InstanceId, ServiceName,
};
use serde::Serialize;
use std::{collections::BTreeMap, io::Write, time::Duration};

#[derive(Debug, Serialize)]
pub(crate) struct Member {
    service: String,
    id: String,
    host: Option<String>,
    pid: Option<u32>,
    status: String,
    started_at_ms: Option<u64>,
    /// When it last registered or heartbeated (ms since the epoch): its
    /// registered TTL minus what is left; null for entries without `ttl_ms`.
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

    fn of(i: Instance, now_ms: u64) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            last_seen_ms: i.since_heartbeat().map(|d| now_ms.saturating_sub(ms(d))),
            ttl_ms: i.expires_in.map(ms),
            service: i.service.to_string(),
            id: i.id.to_string(),
            host: i.host,
            pid: i.pid,
            status: i.status.to_string(),
            started_at_ms: i.started_at_ms,
            metadata: i.metadata,
        }
    }

    fn row(&self, now_ms: u64) -> Vec<String> {
        vec![
            self.service.clone(),
            self.id.clone(),
            output::opt(self.host.as_deref()),
            output::opt(self.pid),
            self.status.clone(),
            output::opt(
                self.last_seen_ms
                    .map(|t| format!("{} ago", output::duration(now_ms.saturating_sub(t)))),
            ),
            output::opt(self.ttl_ms.map(output::duration)),
        ]
    }
}

pub(crate) async fn members(ctx: &Ctx, service: Option<&str>) -> Result<Vec<Member>, Failure> {
    let service = service.map(ServiceName::new).transpose()?;
    // The registry reports each entry's remaining TTL with the listing.
    let mut instances: Vec<Instance> = ctx.registry.list_with_expiry(service.as_ref()).await?;
    instances.sort_by(|a, b| (a.service.as_str(), a.id.as_str()).cmp(&(b.service.as_str(), b.id.as_str())));
    let now = output::now_ms();
    Ok(instances.into_iter().map(|i| Member::of(i, now)).collect())
}

pub(crate) async fn list(ctx: &Ctx, service: Option<&str>) -> Outcome {
    let members = members(ctx, service).await?;
    if ctx.json {
        return output::print_json(&members);
    }
    let now = output::now_ms();
    let rows: Vec<Vec<String>> = members.iter().map(|m| m.row(now)).collect();
    print!(
        "{}",
        output::table(
            &["SERVICE", "ID", "HOST", "PID", "STATUS", "LAST-SEEN", "TTL"],
            &rows
        )
    );
    Ok(())
}

/// One event of `members --watch --json`: a JSON object per line.
#[derive(Debug, Serialize)]
struct WatchLine {
    event: &'static str,
    at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<Member>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instances: Option<Vec<Member>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<WatchLine>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl WatchLine {
    fn of(e: WatchEvent, now: u64) -> Self {
        let mut line = Self {
            event: e.name(),
            at_ms: now,
            instance: None,
            from: None,
            instances: None,
            changes: None,
            error: None,
        };
        let all = |list: Vec<Instance>| Some(list.into_iter().map(|i| Member::of(i, now)).collect());
        match e {
            WatchEvent::Snapshot(list) => line.instances = all(list),
            WatchEvent::Joined(i) => line.instance = Some(Member::of(i, now)),
            // As last listed: it has no TTL left now, and its last-seen time
            // would be reckoned from the wrong listing.
            WatchEvent::Left(i) | WatchEvent::Expired(i) => {
                let mut gone = Member::of(i, now);
                (gone.ttl_ms, gone.last_seen_ms) = (None, None);
                line.instance = Some(gone);
            }
            WatchEvent::StatusChanged { from, instance } => {
                line.from = Some(from.to_string().into());
                line.instance = Some(Member::of(instance, now));
            }
            WatchEvent::MetadataChanged { from, instance } => {
                let mut before = Member::of(from, now);
                (before.ttl_ms, before.last_seen_ms) = (None, None);
                line.from = serde_json::to_value(before).ok();
                line.instance = Some(Member::of(instance, now));
            }
            WatchEvent::Unavailable(err) => line.error = Some(conn::redact(&err.to_string())),
            WatchEvent::Resynced { instances, changes } => {
                line.instances = all(instances);
                line.changes = Some(changes.into_iter().map(|c| Self::of(c, now)).collect());
            }
            _ => {}
        }
        line
    }

    /// `service/id`, or `service/id (status)` with `status`.
    fn who(m: &Member, status: bool) -> String {
        if status {
            format!("{}/{} ({})", m.service, m.id, m.status)
        } else {
            format!("{}/{}", m.service, m.id)
        }
    }

    /// The line's text without the time.
    fn text(&self) -> String {
        let one = self.instance.as_ref();
        match self.event {
            "snapshot" | "resynced" => {
                let list = self.instances.as_deref().unwrap_or_default();
                let mut t = format!(
                    "{} instance{}",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" }
                );
                if self.event == "snapshot" && !list.is_empty() {
                    let names: Vec<String> = list.iter().map(|m| Self::who(m, true)).collect();
                    t.push_str(": ");
                    t.push_str(&names.join(", "));
                }
                if let Some(changes) = &self.changes {
                    let names: Vec<String> = changes.iter().map(Self::text_with_event).collect();
                    t.push_str("; changes: ");
                    t.push_str(
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                        .as_str(),
                    );
                }
                t
            }
            "joined" => one.map_or_else(String::new, |m| {
                format!(
                    "{} host={} pid={}",
                    Self::who(m, true),
                    output::opt(m.host.as_deref()),
                    output::opt(m.pid)
                )
            }),
            "status_changed" => one.map_or_else(String::new, |m| {
                format!(
                    "{} {} -> {}",
                    Self::who(m, false),
                    self.from.as_ref().and_then(|f| f.as_str()).unwrap_or("?"),
                    m.status
                )
            }),
            "unavailable" => self.error.clone().unwrap_or_default(),
            _ => one.map_or_else(String::new, |m| Self::who(m, false)),
        }
    }

    fn text_with_event(&self) -> String {
        format!("{} {}", self.event, self.text())
    }
}

/// `HH:MM:SS` of `ms` since the epoch, UTC.
fn clock_time(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Print a line per registry event until interrupted (Ctrl-C exits 0).
pub(crate) async fn watch(ctx: &Ctx, service: Option<&str>, every: Duration) -> Outcome {
    let service = service.map(ServiceName::new).transpose()?;
    let mut watch = RegistryWatch::new(ctx.registry.clone(), service).interval(every);
    let print = async {
        loop {
            let mut line = WatchLine::of(watch.next().await, output::now_ms());
            if let Some(e) = &mut line.error {
                *e = format!("Redis at {}: {e}", ctx.url);
            }
            let text = if ctx.json {
                serde_json::to_string(&line).map_err(|e| Failure::Runtime(format!("encode JSON: {e}")))?
            } else {
                format!("{} {:<16} {}", clock_time(line.at_ms), line.event, line.text())
            };
            // `members --watch | head` closes the pipe: that ends the watch, quietly.
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{text}").and_then(|()| out.flush()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(Failure::Runtime(format!("write to stdout: {e}"))),
            }
        }
    };
    tokio::select! {
        r = print => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
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
