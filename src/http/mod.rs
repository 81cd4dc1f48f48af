//! The health server over hyper (HTTP/1).
//!
//! | route | answer |
//! |---|---|
//! | `GET /livez` | 200 while the process runs; calls nothing external |
//! | `GET /readyz` | 200 when booted, not stopping and every check passes; else 503 |
//! | `GET /health` | `{"status", "ready", "components": {name: {status, latency_ms}}}`, 200 or 503 |
//! | `GET /fleet` | the [`FleetMonitor`](crate::monitor::FleetMonitor) table, 404 when none is set |
//! | `GET /metrics` | the [`MetricsSource`] set with [`metrics`](HttpHealthServerBuilder::metrics) (Prometheus / OpenMetrics text), else 404 |
//! | `GET /` | the live dashboard, one self-contained HTML page, when an [`Overview`] is set with [`dashboard`](HttpHealthServerBuilder::dashboard), else 404 |
//! | `GET /api/overview` | the [`OverviewSnapshot`] the dashboard refreshes itself from |
//!
//! Other paths are 404, other methods 405. Responses carry no error details
//! or credentials; failed checks are logged instead. The server runs on
//! async-io (via smol-hyper), so it works under any runtime.
//!
//! ## Limits
//!
//! | limit | default | builder method |
//! |---|---|---|
//! | open connections | [`DEFAULT_MAX_CONNECTIONS`] (1,024) | [`max_connections`](HttpHealthServerBuilder::max_connections) |
//! | time to send a request's headers | [`DEFAULT_HEADER_READ_TIMEOUT`] (5 s) | [`header_read_timeout`](HttpHealthServerBuilder::header_read_timeout) |
//! | time a kept-alive connection may idle between requests | [`DEFAULT_IDLE_TIMEOUT`] (15 s) | [`idle_timeout`](HttpHealthServerBuilder::idle_timeout) |
//!
//! The header timeout runs from accept, and on a kept-alive connection from
//! the first byte of each later request, to the end of the headers; a client
//! that dribbles its headers (slowloris) is closed when it passes.
//!
//! **At the cap, the server keeps accepting and closes the connection that
//! has waited longest for a request** (idle, or still sending headers) to
//! make room. Probes open a fresh connection and send their request at once,
//! so they always get in while idle or slow clients fill the cap; stopping
//! accepting instead would leave a probe in the kernel's queue behind them
//! until a timeout freed a place, and the orchestrator would restart a
//! healthy process. Only when every open connection is in the middle of a
//! request is the new one closed at once, unanswered. Open sockets never
//! exceed the cap.
//!
//! The listen backlog is 1,024 (or the cap, if larger; the kernel may lower
//! it to `net.core.somaxconn`), not the standard library's 128: a burst of
//! connects larger than the backlog loses SYNs, and a client retries a lost
//! SYN only after a second.

mod conn;
mod overview;
mod routes;

pub use overview::{
    GroupRow, InstanceRow, Overview, OverviewSnapshot, ServiceRow, StreamRow, DEFAULT_OVERVIEW_TIMEOUT,
};

use crate::{
    error::{Error, Result},
    health::Health,
    rt::{self, TaskHandle},
    service::Shutdown,
    HealthServer,
};
use async_trait::async_trait;
use conn::Connections;
use futures_util::future::{select, Either};
use parking_lot::Mutex;
use std::{net::SocketAddr, pin::pin, sync::Arc, time::Duration};

/// Default port, as the reference design's `SG_HEALTH_PORT`.
pub const DEFAULT_PORT: u16 = 9090;

/// Default cap on open connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default time a client has to send a request's headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time a kept-alive connection may sit idle between requests:
/// longer than the usual 10 s probe period, so a prober that reuses its
/// connection keeps it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// The listen backlog when the cap is smaller.
const MIN_BACKLOG: usize = 1024;

/// How long `stop` lets requests in flight finish before closing them.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// What `/metrics` serves: a text exposition rendered at scrape time.
///
/// `fleetwire::metrics::Metrics` (feature `metrics`) is the implementation;
/// anything else that renders the Prometheus text format can be served too.
#[async_trait]
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// The `Content-Type` of [`render`](Self::render)'s output.
    fn content_type(&self) -> &str;
    /// The exposition as of now. Must finish in bounded time (a scrape
    /// waits for it): sources that ask a store bound each call.
    ///
    /// # Cancel safety
    /// Safe to drop: rendering only reads.
    async fn render(&self) -> String;
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The hyper health server.
///
/// Dropping a running server, or dropping the future of `stop`, closes its
/// listener and asks every connection to close: idle ones at once, others
/// after the response in flight.
///
/// ```
/// use fleetwire::http::HttpHealthServer;
/// use std::time::Duration;
///
/// let server = HttpHealthServer::builder()
///     .addr(([127, 0, 0, 1], 0).into())
///     .max_connections(256)
///     .header_read_timeout(Duration::from_secs(2))
///     .idle_timeout(Duration::from_secs(30))
///     .build()?;
/// # Ok::<_, fleetwire::Error>(())
/// ```
#[derive(Debug)]
pub struct HttpHealthServer {
    addr: SocketAddr,
    limits: Limits,
    metrics: Option<Arc<dyn MetricsSource>>,
    overview: Option<Arc<Overview>>,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    local: SocketAddr,
    stop: Shutdown,
    conns: Arc<Connections>,
    task: TaskHandle<()>,
}

/// Builds an [`HttpHealthServer`]; every setting has a default.
#[derive(Debug, Clone)]
#[must_use]
pub struct HttpHealthServerBuilder {
    addr: SocketAddr,
    limits: Limits,
    metrics: Option<Arc<dyn MetricsSource>>,
    overview: Option<Arc<Overview>>,
}

impl Default for HttpHealthServerBuilder {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            limits: Limits::default(),
            metrics: None,
            overview: None,
        }
    }
}

impl HttpHealthServerBuilder {
    /// Listen on `addr` (port 0 picks a free port). Default `0.0.0.0:9090`.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Take the port from `SG_HEALTH_PORT` when it is set.
    pub fn port_from_env(mut self) -> Result<Self> {
        if let Ok(p) = std::env::var("SG_HEALTH_PORT") {
            let port = p
                .parse()
                .map_err(|_| Error::invalid(format!("SG_HEALTH_PORT `{p}` is not a port")))?;
            self.addr.set_port(port);
        }
        Ok(self)
    }

    /// Cap on open connections (at least 1). Default
    /// [`DEFAULT_MAX_CONNECTIONS`]; see the [module docs](self) for what
    /// happens at the cap.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.limits.max_connections = max;
        self
    }

    /// Time a client has to send a request's headers (non-zero). Default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_read_timeout = timeout;
        self
    }

    /// Time a kept-alive connection may idle between requests (non-zero).
    /// Default [`DEFAULT_IDLE_TIMEOUT`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Serve `source` on `/metrics` (default: none, 404).
    pub fn metrics(mut self, source: Arc<dyn MetricsSource>) -> Self {
        self.metrics = Some(source);
        self
    }

    /// Serve the dashboard on `/` and its data on `/api/overview`, read
    /// from `overview` (default: none, both 404).
    pub fn dashboard(mut self, overview: Overview) -> Self {
        self.overview = Some(Arc::new(overview));
        self
    }

    /// The server; `InvalidInput` for a cap of 0 or a zero timeout.
    pub fn build(self) -> Result<HttpHealthServer> {
        let l = self.limits;
        if l.max_connections == 0 {
            return Err(Error::invalid("health server max_connections must be at least 1"));
        }
        if l.header_read_timeout.is_zero() || l.idle_timeout.is_zero() {
            return Err(Error::invalid("health server timeouts must be above zero"));
        }
        Ok(HttpHealthServer {
            addr: self.addr,
            limits: l,
            metrics: self.metrics,
            overview: self.overview,
            running: Mutex::new(None),
        })
    }
}

impl HttpHealthServer {
    /// A server that will listen on `addr` (port 0 picks a free port), with
    /// the default limits.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            limits: Limits::default(),
            metrics: None,
            overview: None,
            running: Mutex::new(None),
        }
    }

    /// A builder, to set the address and limits.
    pub fn builder() -> HttpHealthServerBuilder {
        HttpHealthServerBuilder::default()
    }

    /// Listen on `0.0.0.0:$SG_HEALTH_PORT` (default 9090), default limits.
    pub fn from_env() -> Result<Self> {
        Self::builder().port_from_env()?.build()
    }

    /// The bound address while serving.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.running.lock().as_ref().map(|r| r.local)
    }

    /// Connections open now (0 when stopped).
    pub fn open_connections(&self) -> usize {
        self.running.lock().as_ref().map_or(0, |r| r.conns.len())
    }
}

#[async_trait]
impl HealthServer for HttpHealthServer {
    async fn start(&self, health: Health) -> Result<Option<SocketAddr>> {
        if self.running.lock().is_some() {
            return Err(Error::invalid("health server is already running"));
        }
        let listener = bind(self.addr, self.limits.max_connections.max(MIN_BACKLOG))
            .map_err(|e| Error::unavailable(format!("bind health server to {}", self.addr)).with_source(e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::unavailable("health server address").with_source(e))?;
        let stop = Shutdown::default();
        let conns = Connections::new(self.limits.max_connections);
        let app = routes::App {
            health,
            metrics: self.metrics.clone(),
            overview: self.overview.clone(),
        };
        let task = rt::spawn(accept_loop(
            listener,
            app,
            stop.clone(),
            conns.clone(),
            self.limits,
        ));
        *self.running.lock() = Some(Running {
            local,
            stop,
            conns,
            task,
        });
        Ok(Some(local))
    }

    async fn stop(&self) -> Result<()> {
        let running = self.running.lock().take();
        if let Some(r) = running {
            r.stop.trigger();
            // Asked here, not only by the accept loop, so a dropped `stop`
            // future still closes them.
            r.conns.close_all(false);
            r.task.join().await;
        }
        Ok(())
    }
}

impl Drop for HttpHealthServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.get_mut().take() {
            r.conns.close_all(false);
        }
    }
}

/// Bind with a listen queue of `backlog`: the standard library's 128 made
/// bursts of probes wait for SYN retries (a ~1 s p99 at 200 connections).
fn bind(addr: SocketAddr, backlog: usize) -> std::io::Result<async_net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the standard library does on Unix: rebinding right after a restart works.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    async_net::TcpListener::try_from(std::net::TcpListener::from(socket))
}

async fn accept_loop(
    listener: async_net::TcpListener,
    app: routes::App,
    stop: Shutdown,
    conns: Arc<Connections>,
    limits: Limits,
) {
    loop {
        let accepted = match select(pin!(listener.accept()), pin!(stop.wait())).await {
            Either::Left((accepted, _)) => accepted,
            Either::Right(_) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let Some(slot) = conns.admit().await else {
                    continue;
                };
                // One write per response, but a kept-alive connection must
                // not wait on the client's delayed ACK for the next one.
                let _ = stream.set_nodelay(true);
                rt::spawn_detached(conn::serve(stream, slot, app.clone(), limits));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(event = "health_accept_failed", error = %e);
                rt::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    conns.close_all(false);
    if !conns.wait_empty(STOP_GRACE).await {
        conns.close_all(true);
        conns.wait_empty(STOP_GRACE).await;
    }
}
