//! Building the stores and the lifecycle a [`Config`] describes.

use super::{BackendKind, Config};
use crate::{
    error::{Error, ErrorKind, Result},
    service::{Lifecycle, LifecycleBuilder},
    EventBus, LivenessStore, RegistryStore,
};
use std::{sync::Arc, time::Duration};

/// The three stores of one backend, ready for a
/// [`LifecycleBuilder`](crate::service::LifecycleBuilder) or a consumer.
#[derive(Clone)]
#[non_exhaustive]
pub struct Backends {
    /// Which backend they come from.
    pub kind: BackendKind,
    /// The service registry.
    pub registry: Arc<dyn RegistryStore>,
    /// The liveness store.
    pub liveness: Arc<dyn LivenessStore>,
    /// The event bus.
    pub bus: Arc<dyn EventBus>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The error for a backend this build of fleetwire leaves out.
#[cfg_attr(
    all(feature = "memory", feature = "noop", feature = "redis"),
    allow(dead_code)
)]
fn not_compiled(kind: BackendKind) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "config field `backend`: `{0}` needs fleetwire's `{0}` feature, which this build leaves out",
            kind.name()
        ),
    )
}

impl Config {
    /// Build the registry, liveness store and bus of the configured backend.
    /// Connects to nothing yet (Redis connects on first use), so it succeeds
    /// while the store is down; call it inside the async runtime.
    pub fn backends(&self) -> Result<Backends> {
        let kind = self.backend;
        let stores =
            |registry: Arc<dyn RegistryStore>, liveness: Arc<dyn LivenessStore>, bus: Arc<dyn EventBus>| {
                Ok::<_, Error>(Backends {
                    kind,
                    registry,
                    liveness,
                    bus,
                })
            };
        match kind {
            #[cfg(feature = "memory")]
            BackendKind::Memory => stores(
                Arc::new(crate::memory::MemoryRegistry::new()),
                Arc::new(crate::memory::MemoryLiveness::new()),
                Arc::new(crate::memory::MemoryBus::new()),
            ),
            #[cfg(feature = "noop")]
            BackendKind::Noop => stores(
                Arc::new(crate::noop::NoopRegistry),
                Arc::new(crate::noop::NoopLiveness),
                Arc::new(crate::noop::NoopBus),
            ),
            #[cfg(feature = "redis")]
            BackendKind::Redis => {
                let redis = self.redis_backend()?;
                stores(
                    Arc::new(redis.registry()),
                    Arc::new(redis.liveness()),
                    Arc::new(redis.bus()),
                )
            }
            #[allow(unreachable_patterns)]
            other => {
                let _ = stores;
                Err(not_compiled(other))
            }
        }
    }

    /// The [`RedisBackend`](crate::redis::RedisBackend) of the `[redis]`
    /// section, whatever `backend` says.
    #[cfg(feature = "redis")]
    pub fn redis_backend(&self) -> Result<crate::redis::RedisBackend> {
        let r = &self.redis;
        let ms = Duration::from_millis;
        if r.pool_size == 0 {
            return Err(Error::invalid(
                "config field `redis.pool_size`: must be at least 1",
            ));
        }
        let mut b = crate::redis::RedisBackend::builder()
            .url(r.url.clone())
            .namespace(r.namespace.clone())
            .pool_size(r.pool_size)
            .connect_timeout(ms(r.connect_timeout_ms))
            .response_timeout(ms(r.response_timeout_ms))
            .probe_every(ms(r.probe_every_ms))
            .max_len_floor(r.max_len_floor)
            .max_len(r.max_len)
            .adopt_legacy_keys(r.adopt_legacy_keys_every_ms.map(ms));
        if let Some(prefix) = &r.liveness_key_prefix {
            b = b.liveness_key_prefix(prefix.clone());
        }
        let t = &r.tls;
        let wants_tls = t.ca_file.is_some() || t.client_cert_file.is_some() || t.client_key_file.is_some();
        if wants_tls {
            b = with_tls(b, t)?;
        }
        b.build()
            .map_err(|e| Error::new(e.kind(), format!("config section `redis`: {e}")))
    }

    /// A lifecycle builder for `[service]` with the `[lifecycle]` settings,
    /// the stores of `backends` and, with the `http` feature and
    /// `health.enabled`, a health server on `health.port`. Add hooks or
    /// metadata, then [`build`](LifecycleBuilder::build).
    pub fn lifecycle(&self, backends: &Backends) -> Result<LifecycleBuilder> {
        let instance = match &self.service.instance {
            Some(id) => id.clone(),
            None => format!(
                "{}-{}",
                gethostname::gethostname().to_string_lossy(),
                std::process::id()
            ),
        };
        let name_error = |field: &str, e: Error| Error::new(e.kind(), format!("config field `{field}`: {e}"));
        crate::ServiceName::new(&self.service.name).map_err(|e| name_error("service.name", e))?;
        crate::InstanceId::new(&instance).map_err(|e| name_error("service.instance", e))?;
        let l = &self.lifecycle;
        let ms = Duration::from_millis;
        if l.ttl_ms == 0 {
            return Err(Error::invalid(
                "config field `lifecycle.ttl_ms`: must be at least 1",
            ));
        }
        let mut b = Lifecycle::builder(&self.service.name, &instance)?
            .registry(backends.registry.clone())
            .liveness(backends.liveness.clone())
            .bus(backends.bus.clone())
            .ttl(ms(l.ttl_ms))
            .health_heartbeat_every(ms(l.health_heartbeat_every_ms))
            .jitter(ms(l.jitter_ms))
            .store_required(l.store_required)
            .op_timeout(ms(l.op_timeout_ms))
            .shutdown_timeout(ms(l.shutdown_timeout_ms))
            .handle_signals(l.handle_signals);
        if let Some(every) = l.heartbeat_every_ms {
            b = b.heartbeat_every(ms(every));
        }
        #[cfg(feature = "http")]
        if self.health.enabled {
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], self.health.port));
            b = b.health_server(Arc::new(crate::http::HttpHealthServer::new(addr)));
        }
        Ok(b)
    }
}

#[cfg(all(feature = "redis", feature = "redis-tls"))]
fn with_tls(
    b: crate::redis::RedisBackendBuilder,
    t: &super::TlsConfig,
) -> Result<crate::redis::RedisBackendBuilder> {
    let field = |name: &str, e: Error| Error::new(e.kind(), format!("config field `redis.tls.{name}`: {e}"));
    let mut tls = crate::redis::RedisTls::new();
    if let Some(ca) = &t.ca_file {
        tls = tls.ca_file(ca).map_err(|e| field("ca_file", e))?;
    }
    match (&t.client_cert_file, &t.client_key_file) {
        (Some(cert), Some(key)) => {
            tls = tls
                .client_cert_files(cert, key)
                .map_err(|e| field("client_cert_file", e))?
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(Error::invalid(
                "config field `redis.tls.client_key_file`: missing, needed with `client_cert_file`",
            ))
        }
        (None, Some(_)) => {
            return Err(Error::invalid(
                "config field `redis.tls.client_cert_file`: missing, needed with `client_key_file`",
            ))
        }
    }
    Ok(b.tls(tls))
}

#[cfg(all(feature = "redis", not(feature = "redis-tls")))]
fn with_tls(
    _: crate::redis::RedisBackendBuilder,
    _: &super::TlsConfig,
) -> Result<crate::redis::RedisBackendBuilder> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "config section `redis.tls`: needs fleetwire's `redis-tls` feature, which this build leaves out",
    ))
}
