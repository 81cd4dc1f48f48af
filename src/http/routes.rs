//! What each path answers.

use crate::health::{ComponentStatus, Health};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{header, Method, Request, Response, StatusCode};

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

pub(super) async fn respond<B>(req: Request<B>, health: Health) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/livez" | "/readyz" | "/health" | "/fleet") {
        return json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not found"}));
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
        _ => match health.fleet() {
            Some(view) => json(StatusCode::OK, &view.snapshot()),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no fleet monitor"}),
            ),
        },
    }
}
