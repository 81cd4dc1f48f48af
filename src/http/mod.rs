//! The health server over hyper (HTTP/1).
//!
//! | route | answer |
//! |---|---|
//! | `GET /livez` | 200 while the process runs; calls nothing external |
//! | `GET /readyz` | 200 when booted, not stopping and every check passes; else 503 |
//! | `GET /health` | `{"status", "ready", "components": {name: {status, latency_ms}}}`, 200 or 503 |
//! | `GET /fleet` | the [`FleetMonitor`](crate::monitor::FleetMonitor) table, 404 when none is set |
//!
//! Other paths are 404, other methods 405. Responses carry no error details
//! or credentials; failed checks are logged instead. The server runs on
//! async-io (via smol-hyper), so it works under any runtime.

use crate::{
    error::{Error, Result},
    health::{ComponentStatus, Health},
    rt::{self, TaskHandle},
    service::Shutdown,
    HealthServer,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::{select, Either};
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use parking_lot::Mutex;
use std::{convert::Infallible, net::SocketAddr, pin::pin, time::Duration};

/// Default port, as the reference design's `SG_HEALTH_PORT`.
pub const DEFAULT_PORT: u16 = 9090;

/// The hyper health server.
#[derive(Debug)]
pub struct HttpHealthServer {
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    local: SocketAddr,
    stop: Shutdown,
    task: TaskHandle<()>,
}

impl HttpHealthServer {
    /// A server that will listen on `addr` (port 0 picks a free port).
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            running: Mutex::new(None),
        }
    }

    /// Listen on `0.0.0.0:$SG_HEALTH_PORT` (default 9090).
    pub fn from_env() -> Result<Self> {
        let port = match std::env::var("SG_HEALTH_PORT") {
            Ok(p) => p
                .parse()
                .map_err(|_| Error::invalid(format!("SG_HEALTH_PORT `{p}` is not a port")))?,
            Err(_) => DEFAULT_PORT,
        };
        Ok(Self::new(SocketAddr::from(([0, 0, 0, 0], port))))
    }

    /// The bound address while serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.lock().as_ref().map(|r| r.local)
    }
}

#[async_trait]
impl HealthServer for HttpHealthServer {
    async fn start(&self, health: Health) -> Result<Option<SocketAddr>> {
        if self.running.lock().is_some() {
            return Err(Error::invalid("health server is already running"));
        }
        let listener = async_net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| Error::unavailable(format!("bind health server to {}", self.addr)).with_source(e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::unavailable("health server address").with_source(e))?;
        let stop = Shutdown::default();
        let task = rt::spawn(accept_loop(listener, health, stop.clone()));
        *self.running.lock() = Some(Running { local, stop, task });
        Ok(Some(local))
    }

    async fn stop(&self) -> Result<()> {
        let running = self.running.lock().take();
        if let Some(r) = running {
            r.stop.trigger();
            r.task.join().await;
        }
        Ok(())
    }
}

async fn accept_loop(listener: async_net::TcpListener, health: Health, stop: Shutdown) {
    loop {
        let accepted = match select(pin!(listener.accept()), pin!(stop.wait())).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(_) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let health = health.clone();
                // One request per connection (no keep-alive), so these end by themselves.
                rt::spawn_detached(async move {
                    let service = hyper::service::service_fn(move |req| respond(req, health.clone()));
                    let served = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .timer(smol_hyper::rt::SmolTimer::new())
                        .header_read_timeout(Duration::from_secs(5))
                        .serve_connection(smol_hyper::rt::FuturesIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(event = "health_connection_failed", error = %e);
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(event = "health_accept_failed", error = %e);
                rt::sleep(Duration::from_millis(50)).await;
            }
        }
    }
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

async fn respond(req: Request<Incoming>, health: Health) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    if !matches!(path, "/livez" | "/readyz" | "/health" | "/fleet") {
        return Ok(json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not found"}),
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method not allowed"}),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let code = |ok: bool| {
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    Ok(match path {
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
            Some(monitor) => json(StatusCode::OK, &monitor.snapshot()),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no fleet monitor"}),
            ),
        },
    })
}
