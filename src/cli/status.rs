//! `status`: one screen on the fleet, as `sidekiqmon` gives one on Sidekiq.

use crate::{conn::Ctx, members, output, streams, Outcome};
use fleetwire::{consumer::DeadLetters, StreamName};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize)]
struct ServiceRow {
    service: String,
    instances: u64,
    /// Instances by status (`running`, `starting`, `stopping`, others as written).
    by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct StreamStatus {
    #[serde(flatten)]
    stream: streams::StreamRow,
    dead_letters: u64,
}

#[derive(Debug, Serialize)]
struct Status {
    redis: String,
    namespace: String,
    instances: u64,
    services: Vec<ServiceRow>,
    streams: Vec<StreamStatus>,
    dead_letters: u64,
}

pub(crate) async fn run(ctx: &Ctx) -> Outcome {
    let members = members::members(ctx, None).await?;
    let mut services: BTreeMap<String, ServiceRow> = BTreeMap::new();
    for m in &members {
        let row = services.entry(m.service().to_owned()).or_default();
        row.service = m.service().to_owned();
        row.instances += 1;
        *row.by_status.entry(m.status().to_owned()).or_default() += 1;
    }
    let mut stream_rows = Vec::new();
    for row in streams::rows(ctx).await? {
        // Dead-letter streams are counted beside their stream, not listed.
        if row.stream.ends_with(":dlq") {
            continue;
        }
        let dead_letters = DeadLetters::of(ctx.bus.clone(), &StreamName::new(&row.stream)?)?
            .len()
            .await?;
        stream_rows.push(StreamStatus {
            stream: row,
            dead_letters,
        });
    }
    let status = Status {
        redis: ctx.url.clone(),
        namespace: ctx.namespace.clone(),
        instances: members.len() as u64,
        dead_letters: stream_rows.iter().map(|s| s.dead_letters).sum(),
        services: services.into_values().collect(),
        streams: stream_rows,
    };
    if ctx.json {
        return output::print_json(&status);
    }
    println!("Redis:        {} (namespace {})", status.redis, status.namespace);
    println!(
        "Services:     {} ({} instance(s))",
        status.services.len(),
        status.instances
    );
    println!("Streams:      {}", status.streams.len());
    println!("Dead letters: {}", status.dead_letters);
    println!();
    let rows: Vec<Vec<String>> = status
        .services
        .iter()
        .map(|s| {
            let count = |k: &str| s.by_status.get(k).copied().unwrap_or(0).to_string();
            let other: u64 = s
                .by_status
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "running" | "starting" | "stopping"))
                .map(|(_, n)| n)
                .sum();
            vec![
                s.service.clone(),
                s.instances.to_string(),
                count("running"),
                count("starting"),
                count("stopping"),
                other.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["SERVICE", "INSTANCES", "RUNNING", "STARTING", "STOPPING", "OTHER"],
            &rows
        )
    );
    println!();
    let rows: Vec<Vec<String>> = status
        .streams
        .iter()
        .map(|s| {
            vec![
                s.stream.stream.clone(),
                s.stream.length.to_string(),
                s.stream.groups.to_string(),
                s.stream.pending.to_string(),
                s.dead_letters.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(&["STREAM", "LENGTH", "GROUPS", "PENDING", "DEAD-LETTERS"], &rows)
    );
    Ok(())
}
