//! `ctl`: send a signed control command to an instance, a service or the
//! fleet, and show each instance's answer; `--rolling N` restarts a service
//! N instances at a time.

use crate::{conn::Ctx, output, Failure, Outcome};
use fleetwire::{
    control::{ControlClient, ControlKey, Op, Outcome as Answer, RollingEvent, RollingOptions, Target},
    ServiceName,
};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub(crate) struct Ctl {
    /// restart, quiet, resume, ping, or an application command (e.g. pull).
    command: String,
    /// Target every instance of this service.
    #[arg(long)]
    service: Option<String>,
    /// Target this one instance (with --service).
    #[arg(long, requires = "service")]
    instance: Option<String>,
    /// Target the whole fleet.
    #[arg(long, conflicts_with_all = ["service", "instance"])]
    fleet: bool,
    /// Restart the service N instances at a time, each back before the next (restart only).
    #[arg(long, value_name = "N", requires = "service", conflicts_with = "instance")]
    rolling: Option<usize>,
    /// Arguments for the command, as JSON.
    #[arg(long, default_value = "null")]
    args: String,
    /// Seconds to wait for the answers.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

#[derive(Debug, Serialize)]
struct Row {
    service: String,
    instance: String,
    accepted: bool,
    outcome: &'static str,
    detail: serde_json::Value,
}

pub(crate) async fn run(ctx: &Ctx, c: Ctl) -> Outcome {
    let key = ControlKey::from_env()?.ok_or_else(|| {
        Failure::Usage("set SG_CONTROL_KEY to the fleet's control key to send commands".into())
    })?;
    let client = ControlClient::builder(ctx.bus.clone(), key)
        .registry(ctx.registry.clone())
        .sender("fleetwire-cli")
        .build()
        .await?;
    if let Some(n) = c.rolling {
        return rolling(ctx, &client, &c, n).await;
    }
    let target = match (&c.service, &c.instance, c.fleet) {
        (Some(s), Some(i), _) => Target::instance(s, i)?,
        (Some(s), None, _) => Target::service(s)?,
        (None, None, true) => Target::Fleet,
        _ => {
            return Err(Failure::Usage(
                "name a target: --service S [--instance I] or --fleet".into(),
            ))
        }
    };
    let args: serde_json::Value =
        serde_json::from_str(&c.args).map_err(|e| Failure::Usage(format!("--args is not JSON: {e}")))?;
    let results = client
        .call(
            target,
            Op::parse(&c.command)?,
            args,
            Duration::from_secs(c.timeout),
        )
        .await?;
    let rows: Vec<Row> = results
        .instances
        .iter()
        .map(|r| {
            let (outcome, detail) = match &r.outcome {
                Some(Answer::Done(v)) => ("done", v.clone()),
                Some(Answer::Failed(why)) => ("failed", why.clone().into()),
                Some(Answer::Ignored(why)) => ("ignored", why.clone().into()),
                Some(_) => ("other", serde_json::Value::Null),
                None => ("no answer", serde_json::Value::Null),
            };
            Row {
                service: r.service.to_string(),
                instance: r.instance.to_string(),
                accepted: r.accepted,
                outcome,
                detail,
            }
        })
        .collect();
    if ctx.json {
        output::print_json(&rows)?;
    } else {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    r.instance.clone(),
                    if r.accepted { "yes" } else { "no" }.into(),
                    r.outcome.into(),
                    match &r.detail {
                        serde_json::Value::Null => "-".into(),
                        serde_json::Value::String(s) => s.clone(),
                        v => v.to_string(),
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            output::table(&["SERVICE", "INSTANCE", "ACCEPTED", "OUTCOME", "DETAIL"], &table)
        );
    }
    let missing = rows.iter().filter(|r| r.outcome != "done").count();
    if rows.is_empty() {
        return Err(Failure::NotFound(
            "no instance answered or is registered for that target".into(),
        ));
    }
    if missing > 0 {
        return Err(Failure::Runtime(format!(
            "{missing} of {} instances did not complete it",
            rows.len()
        )));
    }
    Ok(())
}

async fn rolling(ctx: &Ctx, client: &ControlClient, c: &Ctl, at_once: usize) -> Outcome {
    if c.command != "restart" {
        return Err(Failure::Usage("--rolling only goes with restart".into()));
    }
    let service = ServiceName::new(c.service.as_deref().unwrap_or_default())?;
    let json = ctx.json;
    let options = RollingOptions::default().at_once(at_once).on_progress(move |e| {
        // Progress goes to stderr, so `--json` output stays clean.
        let line = match e {
            RollingEvent::Started { instances, at_once } => {
                format!("rolling restart: {instances} instances, {at_once} at a time")
            }
            RollingEvent::Restarting(id) => format!("  restarting {id} ..."),
            RollingEvent::Back(id, took) => {
                format!("  {id} back after {}", output::duration(took.as_millis() as u64))
            }
            other => format!("  {other:?}"),
        };
        if !json {
            eprintln!("{line}");
        }
    });
    let report = client.rolling_restart(&service, options).await?;
    #[derive(Serialize)]
    struct Back {
        instance: String,
        back_after_ms: u64,
    }
    let back: Vec<Back> = report
        .restarted
        .iter()
        .map(|(id, d)| Back {
            instance: id.to_string(),
            back_after_ms: d.as_millis() as u64,
        })
        .collect();
    if json {
        return output::print_json(&serde_json::json!({
            "service": report.service.to_string(),
            "restarted": back,
            "took_ms": report.took.as_millis() as u64,
        }));
    }
    println!(
        "{} instances of {} restarted in {}",
        back.len(),
        report.service,
        output::duration(report.took.as_millis() as u64)
    );
    Ok(())
}
