//! What each path answers.

use super::{overview::Overview, MetricsSource};
use crate::health::{ComponentStatus, Health};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};
use std::sync::Arc;

/// The page served on `/`: one file, no external resources.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Everything the routes read: the health state and the optional extras.
#[derive(Clone, Debug)]
pub(super) struct App {
    pub(super) health: Health,
    pub(super) metrics: Option<Arc<dyn MetricsSource>>,
    pub(super) overview: Option<Arc<Overview>>,
}

fn json(status: StatusCode, body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    let value = header::HeaderValue::from_str(content_type)
        .unwrap_or(header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r.headers_mut().insert(header::CONTENT_TYPE, value);
    r
}

fn not_found(what: &'static str) -> Response<Full<Bytes>> {
    json(StatusCode::NOT_FOUND, &serde_json::json!({ "error": what }))
}

pub(super) async fn respond<B>(req: Request<B>, app: App) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(
        path,
        "/livez" | "/readyz" | "/health" | "/fleet" | "/metrics" | "/" | "/api/overview"
    ) {
        return not_found("not found");
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method not allowed"}),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let code = |ok: bool| {
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let health = &app.health;
    match path {
        "/livez" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => {
            let report = health.report().await;
            let ok = report.status == ComponentStatus::Ok;
            json(code(ok), &serde_json::json!({"ready": ok}))
        }
        "/health" => {
            let report = health.report().await;
            json(code(report.status == ComponentStatus::Ok), &report)
        }
        "/metrics" => match &app.metrics {
            Some(m) => text(m.content_type(), m.render().await),
            None => not_found("no metrics"),
        },
        "/" => match &app.overview {
            Some(_) => {
                let mut r = text("text/html; charset=utf-8", DASHBOARD);
                // The page runs only its own inline script and reads only this origin.
                r.headers_mut().insert(
                    header::CONTENT_SECURITY_POLICY,
                    header::HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                         connect-src 'self'; img-src 'self' data:",
                    ),
                );
                r
            }
            None => not_found("no dashboard"),
        },
        "/api/overview" => match &app.overview {
            Some(o) => json(StatusCode::OK, &o.snapshot(health.fleet()).await),
            None => not_found("no dashboard"),
        },
        _ => match health.fleet() {
            Some(view) => json(StatusCode::OK, &view.snapshot()),
            None => not_found("no fleet monitor"),
        },
    }
}
