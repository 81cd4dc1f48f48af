//! `dlq list|show|redrive|purge <stream>`: the dead letters of a stream.

use crate::{conn::Ctx, output, Failure, Outcome};
use fleetwire::{
    consumer::{DeadEntry, DeadLetters},
    Codec, MessageId, StreamName,
};
use serde::Serialize;
use std::collections::BTreeMap;

/// Dead letters redriven per round of `redrive --all`.
const PAGE: usize = 100;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// Dead letters of STREAM, oldest first.
    List {
        /// The stream whose dead letters (`{stream}:dlq`) to list.
        stream: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// From this dead-letter id on.
        #[arg(long, value_name = "ID")]
        from: Option<String>,
    },
    /// One dead letter, with its original envelope.
    Show {
        /// The stream whose dead letters to look in.
        stream: String,
        /// The dead letter's id (in `{stream}:dlq`).
        id: String,
    },
    /// Publish dead letters back to their stream and remove them.
    Redrive {
        /// The stream whose dead letters to redrive.
        stream: String,
        /// Dead-letter ids; or `--all`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter of the stream.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters.
    Purge {
        /// The stream whose dead letters to delete.
        stream: String,
        /// Dead-letter ids; or `--all`.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter of the stream.
        #[arg(long)]
        all: bool,
    },
}

pub(crate) async fn run(ctx: &Ctx, cmd: DlqCommand) -> Outcome {
    match cmd {
        DlqCommand::List { stream, count, from } => list(ctx, &stream, count, from.as_deref()).await,
        DlqCommand::Show { stream, id } => show(ctx, &stream, &id).await,
        DlqCommand::Redrive { stream, ids, all } => redrive(ctx, &stream, &ids, all).await,
        DlqCommand::Purge { stream, ids, all } => purge(ctx, &stream, &ids, all).await,
    }
}

fn dead_letters(ctx: &Ctx, stream: &str) -> Result<DeadLetters, Failure> {
    Ok(DeadLetters::of(ctx.bus.clone(), &StreamName::new(stream)?)?)
}

fn ids(raw: &[String]) -> Result<Vec<MessageId>, Failure> {
    raw.iter()
        .map(|s| s.parse::<MessageId>().map_err(Failure::from))
        .collect()
}

#[derive(Debug, Serialize)]
struct Entry {
    id: String,
    /// False when the entry is not a dead-letter record (written by someone else).
    record: bool,
    original_id: Option<String>,
    stream: Option<String>,
    group: Option<String>,
    consumer: Option<String>,
    reason: Option<String>,
    attempts: Option<u64>,
    published_at_ms: Option<u64>,
    first_delivered_at_ms: Option<u64>,
    last_delivered_at_ms: Option<u64>,
    dead_at_ms: Option<u64>,
}

fn entry(e: &DeadEntry) -> Entry {
    let l = e.letter.as_ref();
    Entry {
        id: e.id.to_string(),
        record: l.is_some(),
        original_id: l.map(|l| l.original_id.clone()),
        stream: l.map(|l| l.stream.clone()),
        group: l.map(|l| l.group.clone()),
        consumer: l.map(|l| l.consumer.clone()),
        reason: l.map(|l| l.reason.clone()),
        attempts: l.map(|l| l.attempts),
        published_at_ms: l.map(|l| l.published_at_ms),
        first_delivered_at_ms: l.and_then(|l| l.first_delivered_at_ms),
        last_delivered_at_ms: l.map(|l| l.last_delivered_at_ms),
        dead_at_ms: l.map(|l| l.dead_at_ms),
    }
}

#[derive(Debug, Serialize)]
struct Listing {
    stream: String,
    dead_letter_stream: String,
    length: u64,
    entries: Vec<Entry>,
}

async fn list(ctx: &Ctx, stream: &str, count: usize, from: Option<&str>) -> Outcome {
    let dl = dead_letters(ctx, stream)?;
    let start = from
        .map(str::parse::<MessageId>)
        .transpose()?
        .unwrap_or(MessageId::ZERO);
    let length = dl.len().await?;
    let entries: Vec<Entry> = dl.list(start, count).await?.iter().map(entry).collect();
    let listing = Listing {
        stream: stream.to_owned(),
        dead_letter_stream: dl.stream().to_string(),
        length,
        entries,
    };
    if ctx.json {
        return output::print_json(&listing);
    }
    let now = output::now_ms();
    let rows: Vec<Vec<String>> = listing
        .entries
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                output::opt(e.original_id.as_deref()),
                output::opt(e.group.as_deref()),
                output::opt(e.attempts),
                output::opt(
                    e.dead_at_ms
                        .map(|t| format!("{} ago", output::duration(now.saturating_sub(t)))),
                ),
                e.reason
                    .clone()
                    .unwrap_or_else(|| "(not a dead-letter record)".into()),
            ]
        })
        .collect();
    println!(
        "{}: {} dead letter(s), showing {}",
        listing.dead_letter_stream,
        listing.length,
        rows.len()
    );
    print!(
        "{}",
        output::table(
            &["ID", "ORIGINAL-ID", "GROUP", "ATTEMPTS", "DEAD", "REASON"],
            &rows
        )
    );
    Ok(())
}

#[derive(Debug, Serialize)]
struct Shown {
    dead_letter_stream: String,
    #[serde(flatten)]
    entry: Entry,
    envelope: Option<EnvelopeView>,
}

#[derive(Debug, Serialize)]
struct EnvelopeView {
    kind: String,
    trace_id: Option<String>,
    headers: BTreeMap<String, String>,
    created_at_ms: u64,
    payload_bytes: usize,
    /// The payload decoded from msgpack, when it is msgpack.
    payload: Option<serde_json::Value>,
}

async fn show(ctx: &Ctx, stream: &str, id: &str) -> Outcome {
    let dl = dead_letters(ctx, stream)?;
    let wanted: MessageId = id.parse()?;
    let Some(found) = dl.get(wanted).await? else {
        return Err(Failure::NotFound(format!(
            "no dead letter `{id}` in `{}`",
            dl.stream()
        )));
    };
    let envelope = found
        .letter
        .as_ref()
        .and_then(|l| Codec::default().decode(&l.body).ok())
        .map(|env| EnvelopeView {
            payload: rmp_serde::from_slice(&env.payload).ok(),
            payload_bytes: env.payload.len(),
            kind: env.kind,
            trace_id: env.trace_id,
            headers: env.headers,
            created_at_ms: env.created_at_ms,
        });
    let shown = Shown {
        dead_letter_stream: dl.stream().to_string(),
        entry: entry(&found),
        envelope,
    };
    if ctx.json {
        return output::print_json(&shown);
    }
    let e = &shown.entry;
    let mut lines: Vec<(&str, String)> = vec![
        ("id", e.id.clone()),
        ("dead-letter stream", shown.dead_letter_stream.clone()),
    ];
    if e.record {
        lines.extend([
            ("original id", output::opt(e.original_id.as_deref())),
            ("stream", output::opt(e.stream.as_deref())),
            ("group", output::opt(e.group.as_deref())),
            ("consumer", output::opt(e.consumer.as_deref())),
            ("attempts", output::opt(e.attempts)),
            ("reason", output::opt(e.reason.as_deref())),
            ("published at ms", output::opt(e.published_at_ms)),
            ("dead at ms", output::opt(e.dead_at_ms)),
        ]);
    } else {
        lines.push(("record", "not a dead-letter record".into()));
    }
    if let Some(env) = &shown.envelope {
        lines.push(("kind", env.kind.clone()));
        lines.push(("trace id", output::opt(env.trace_id.as_deref())));
        for (k, v) in &env.headers {
            lines.push(("header", format!("{k}={v}")));
        }
        lines.push((
            "payload",
            match &env.payload {
                Some(v) => v.to_string(),
                None => format!("{} bytes, not msgpack", env.payload_bytes),
            },
        ));
    }
    for (k, v) in lines {
        println!("{:<19} {v}", format!("{k}:"));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Failed {
    id: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct RedriveReport {
    dead_letter_stream: String,
    moved: u64,
    failed: Vec<Failed>,
}

async fn redrive(ctx: &Ctx, stream: &str, raw_ids: &[String], all: bool) -> Outcome {
    let dl = dead_letters(ctx, stream)?;
    let mut report = RedriveReport {
        dead_letter_stream: dl.stream().to_string(),
        moved: 0,
        failed: Vec::new(),
    };
    let note = |r: fleetwire::consumer::Redriven, report: &mut RedriveReport| {
        report.moved += r.moved;
        report
            .failed
            .extend(r.failed.into_iter().map(|(id, reason)| Failed {
                id: id.to_string(),
                reason,
            }));
    };
    if all {
        // Page by page rather than `redrive_all`, to drive the progress bar;
        // entries that fail stay behind, so the next page starts after them.
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(dl.len().await?),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("redrive {bar:40} {pos}/{len} {per_sec} eta {eta}")
        {
            bar.set_style(style);
        }
        let mut start = MessageId::ZERO;
        loop {
            let page = dl.list(start, PAGE).await?;
            let Some(last) = page.last().map(|e| e.id) else {
                break;
            };
            let ids: Vec<MessageId> = page.iter().map(|e| e.id).collect();
            note(dl.redrive(&ids).await?, &mut report);
            bar.inc(ids.len() as u64);
            start = last.next();
        }
        bar.finish_and_clear();
    } else {
        let ids = ids(raw_ids)?;
        note(dl.redrive(&ids).await?, &mut report);
        if report.moved == 0 && report.failed.iter().all(|f| f.reason == "no such dead letter") {
            return Err(Failure::NotFound(format!(
                "no such dead letter in `{}`: {}",
                report.dead_letter_stream,
                raw_ids.join(", ")
            )));
        }
    }
    if ctx.json {
        output::print_json(&report)?;
    } else {
        println!(
            "redrove {} dead letter(s) from {}",
            report.moved, report.dead_letter_stream
        );
        for f in &report.failed {
            println!("not redriven: {}: {}", f.id, f.reason);
        }
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Runtime(format!(
            "{} dead letter(s) were not redriven",
            report.failed.len()
        )))
    }
}

#[derive(Debug, Serialize)]
struct PurgeReport {
    dead_letter_stream: String,
    purged: u64,
}

async fn purge(ctx: &Ctx, stream: &str, raw_ids: &[String], all: bool) -> Outcome {
    let dl = dead_letters(ctx, stream)?;
    let purged = if all {
        dl.purge_all().await?
    } else {
        let n = dl.purge(&ids(raw_ids)?).await?;
        if n == 0 {
            return Err(Failure::NotFound(format!(
                "no such dead letter in `{}`: {}",
                dl.stream(),
                raw_ids.join(", ")
            )));
        }
        n
    };
    let report = PurgeReport {
        dead_letter_stream: dl.stream().to_string(),
        purged,
    };
    if ctx.json {
        return output::print_json(&report);
    }
    println!(
        "purged {} dead letter(s) from {}",
        report.purged, report.dead_letter_stream
    );
    Ok(())
}
