//! `streams` and `groups`.

use crate::{
    conn::{missing_stream, Ctx},
    output, Failure, Outcome,
};
use fleetwire::{ErrorKind, GroupName, StreamInfo, StreamName};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub(crate) struct StreamRow {
    pub(crate) stream: String,
    pub(crate) length: u64,
    pub(crate) groups: u64,
    pub(crate) pending: u64,
    pub(crate) first_id: Option<String>,
    pub(crate) last_id: Option<String>,
    /// The length cap this client applies (`SG_STREAM_MAXLEN`, else the crate's default).
    pub(crate) max_len: u64,
}

/// `stream_info`, `None` when the stream does not exist.
pub(crate) async fn info(ctx: &Ctx, stream: &StreamName) -> Result<Option<StreamInfo>, Failure> {
    match ctx.bus.stream_info(stream).await {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn rows(ctx: &Ctx) -> Result<Vec<StreamRow>, Failure> {
    let mut out = Vec::new();
    for stream in ctx.streams().await? {
        let Some(info) = info(ctx, &stream).await? else {
            // Gone since the scan, or named with --stream.
            if ctx.streams_named() {
                return Err(missing_stream(&stream));
            }
            continue;
        };
        out.push(StreamRow {
            stream: stream.to_string(),
            length: info.length,
            groups: info.groups.len() as u64,
            pending: info.groups.iter().map(|g| g.pending).sum(),
            first_id: info.first_id.map(|i| i.to_string()),
            last_id: info.last_id.map(|i| i.to_string()),
            max_len: ctx.bus.max_len(&stream),
        });
    }
    Ok(out)
}

pub(crate) async fn list(ctx: &Ctx) -> Outcome {
    let rows = rows(ctx).await?;
    if ctx.json {
        return output::print_json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.stream.clone(),
                r.length.to_string(),
                r.groups.to_string(),
                output::opt(r.first_id.as_deref()),
                output::opt(r.last_id.as_deref()),
                r.max_len.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["STREAM", "LENGTH", "GROUPS", "FIRST-ID", "LAST-ID", "MAXLEN"],
            &cells
        )
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct GroupRow {
    group: String,
    consumers: u64,
    pending: u64,
    lag: Option<u64>,
    last_delivered_id: String,
    oldest_pending_id: Option<String>,
    /// Time since the oldest pending entry was published.
    oldest_pending_age_ms: Option<u64>,
}

pub(crate) async fn groups(ctx: &Ctx, stream: &str) -> Outcome {
    let stream = StreamName::new(stream)?;
    let info = info(ctx, &stream).await?.ok_or_else(|| missing_stream(&stream))?;
    let now = output::now_ms();
    let mut rows = Vec::with_capacity(info.groups.len());
    for g in &info.groups {
        let oldest = if g.pending > 0 {
            ctx.bus.pending(&stream, &GroupName::new(&g.name)?).await?.lowest
        } else {
            None
        };
        rows.push(GroupRow {
            group: g.name.clone(),
            consumers: g.consumers,
            pending: g.pending,
            lag: g.lag,
            last_delivered_id: g.last_delivered.to_string(),
            oldest_pending_id: oldest.map(|i| i.to_string()),
            oldest_pending_age_ms: oldest.map(|i| now.saturating_sub(i.ms)),
        });
    }
    if ctx.json {
        return output::print_json(&rows);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.group.clone(),
                r.consumers.to_string(),
                r.pending.to_string(),
                output::opt(r.lag),
                output::opt(r.oldest_pending_age_ms.map(output::duration)),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["GROUP", "CONSUMERS", "PENDING", "LAG", "OLDEST-PENDING-AGE"],
            &cells
        )
    );
    Ok(())
}
