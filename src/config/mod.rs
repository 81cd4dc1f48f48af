//! Run-time configuration: choose the backend and tune the lifecycle from a
//! TOML file and the environment instead of in code (feature `config`).
//!
//! ```no_run
//! # async fn demo() -> fleetwire::Result<()> {
//! use fleetwire::config::Config;
//! // `$SG_CONFIG` names the file, if any; `SG_*` variables override it.
//! let config = Config::load()?;
//! let backends = config.backends()?;
//! let lifecycle = config.lifecycle(&backends)?.build();
//! # let _ = lifecycle; Ok(()) }
//! ```
//!
//! A complete file, every value its default:
//!
//! ```toml
//! backend = "redis"              # "memory", "noop" or "redis"
//!
//! [redis]
//! url = "redis://127.0.0.1:6379" # rediss:// with the `redis-tls` feature
//! namespace = "sg"
//! pool_size = 8                  # connections for blocking reads
//! connect_timeout_ms = 2000
//! response_timeout_ms = 2000
//! probe_every_ms = 250
//! max_len = 100000               # length cap of every stream
//! max_len_floor = 1000
//! # liveness_key_prefix = "mul:runtime:hb:"   (default "{namespace}:liveness:")
//! # adopt_legacy_keys_every_ms = 30000        (default: never)
//!
//! [redis.tls]                    # all optional
//! # ca_file = "/etc/redis/ca.crt"
//! # client_cert_file = "/etc/redis/client.crt"
//! # client_key_file = "/etc/redis/client.key"
//!
//! [service]
//! name = "service"
//! # instance = "gw-1"            (default "{host}-{pid}")
//!
//! [lifecycle]
//! ttl_ms = 15000
//! # heartbeat_every_ms = 5000    (default ttl / 3)
//! health_heartbeat_every_ms = 30000
//! jitter_ms = 2000
//! store_required = true
//! op_timeout_ms = 5000
//! shutdown_timeout_ms = 10000
//! handle_signals = true
//!
//! [health]                       # the HTTP health server (feature `http`)
//! enabled = true
//! port = 9090
//! ```
//!
//! Environment variables, applied over the file (empty ones are ignored):
//!
//! | variable | field |
//! |---|---|
//! | `SG_BACKEND` | `backend` |
//! | `SG_REDIS_URL`, else `REDIS_URL` | `redis.url` |
//! | `SG_NAMESPACE` | `redis.namespace` |
//! | `SG_STREAM_MAXLEN` | `redis.max_len` |
//! | `SG_REDIS_POOL_SIZE` | `redis.pool_size` |
//! | `SG_REDIS_TLS_CA`, `SG_REDIS_TLS_CERT`, `SG_REDIS_TLS_KEY` | `redis.tls.*_file` |
//! | `SG_SERVICE`, `SG_INSTANCE` | `service.name`, `service.instance` |
//! | `SG_SERVICE_TTL_MS` | `lifecycle.ttl_ms` |
//! | `SG_HEALTH_PORT` | `health.port` |
//!
//! `SG_CONTROL_KEY` keeps working as before: the lifecycle reads it itself.
//! The stream layout (`SG_INBOUND_STREAM` ...) is read by
//! [`Topology`](crate::topology::Topology), not here.
//!
//! Mistakes name the field: ``config field `redis.pool_size`: invalid type:
//! string "eight", expected u32``; unknown fields are rejected, so a typo
//! cannot silently keep a default.
//!
//! To add a backend (Redis Sentinel, Cluster): a [`BackendKind`] variant,
//! its section in [`Config`], and its arm in [`Config::backends`].

mod build;
mod env;

pub use build::Backends;

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Which backend the stores come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// In-process stores (feature `memory`): one process, nothing persists.
    Memory,
    /// Stores that accept every call and keep nothing (feature `noop`).
    Noop,
    /// Redis (feature `redis`), configured by [`Config::redis`]. The default.
    #[default]
    Redis,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Noop => "noop",
            Self::Redis => "redis",
        }
    }
}

/// The whole configuration. Every field has a default, so an empty file is
/// valid; unknown fields are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Where the registry, liveness store and bus live (default `redis`).
    pub backend: BackendKind,
    /// Used when `backend = "redis"`.
    pub redis: RedisConfig,
    /// This process's name in the registry.
    pub service: ServiceConfig,
    /// Lifecycle timings.
    pub lifecycle: LifecycleConfig,
    /// The HTTP health server.
    pub health: HealthConfig,
}

/// `[redis]`: the [`RedisBackendBuilder`](crate::redis::RedisBackendBuilder) settings.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Server URL (default `redis://127.0.0.1:6379`).
    pub url: String,
    /// Key namespace (default `sg`).
    pub namespace: String,
    /// Connections for blocking reads (default 8).
    pub pool_size: u32,
    /// Time to connect, in ms (default 2000).
    pub connect_timeout_ms: u64,
    /// Time to wait for a reply, in ms (default 2000).
    pub response_timeout_ms: u64,
    /// Probe interval while Redis is unavailable, in ms (default 250).
    pub probe_every_ms: u64,
    /// Length cap of every stream (default 100 000).
    pub max_len: u64,
    /// Lowest accepted cap (default 1000).
    pub max_len_floor: u64,
    /// Liveness key prefix (default `{namespace}:liveness:`).
    pub liveness_key_prefix: Option<String>,
    /// Adopt registry keys written without the index every so many ms (default: never).
    pub adopt_legacy_keys_every_ms: Option<u64>,
    /// `[redis.tls]`: custom CA and client certificate (feature `redis-tls`).
    pub tls: TlsConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            namespace: "sg".into(),
            pool_size: 8,
            connect_timeout_ms: 2000,
            response_timeout_ms: 2000,
            probe_every_ms: 250,
            max_len: 100_000,
            max_len_floor: 1000,
            liveness_key_prefix: None,
            adopt_legacy_keys_every_ms: None,
            tls: TlsConfig::default(),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::redact::redact(&self.url))
            .field("namespace", &self.namespace)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("probe_every_ms", &self.probe_every_ms)
            .field("max_len", &self.max_len)
            .field("max_len_floor", &self.max_len_floor)
            .field("liveness_key_prefix", &self.liveness_key_prefix)
            .field("adopt_legacy_keys_every_ms", &self.adopt_legacy_keys_every_ms)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `[redis.tls]`: PEM files (default: none; a `rediss://` URL then trusts
/// the system's roots).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// CA certificate(s) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// Private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

/// `[service]`: who this process is.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Service name (default `service`).
    pub name: String,
    /// Instance id (default `{host}-{pid}`).
    pub instance: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: "service".into(),
            instance: None,
        }
    }
}

/// `[lifecycle]`: the [`LifecycleBuilder`](crate::service::LifecycleBuilder)
/// settings, with its defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LifecycleConfig {
    /// Registry TTL in ms (default 15 000).
    pub ttl_ms: u64,
    /// Registry heartbeat interval in ms (default TTL / 3).
    pub heartbeat_every_ms: Option<u64>,
    /// Topic health heartbeat interval in ms (default 30 000).
    pub health_heartbeat_every_ms: u64,
    /// Upper bound of the random boot delay in ms (default 2000).
    pub jitter_ms: u64,
    /// Fail boot when a store does not answer (default true).
    pub store_required: bool,
    /// Time limit of each store call the lifecycle makes, in ms (default 5000).
    pub op_timeout_ms: u64,
    /// Drain and `on_stop` time limit, in ms (default 10 000).
    pub shutdown_timeout_ms: u64,
    /// Shut down on SIGTERM / SIGINT (default true).
    pub handle_signals: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 15_000,
            heartbeat_every_ms: None,
            health_heartbeat_every_ms: 30_000,
            jitter_ms: 2000,
            store_required: true,
            op_timeout_ms: 5000,
            shutdown_timeout_ms: 10_000,
            handle_signals: true,
        }
    }
}

/// `[health]`: the HTTP health server, run by the lifecycle (feature `http`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// Run it (default true; without the `http` feature it is never run).
    pub enabled: bool,
    /// Port on all interfaces (default 9090, as `SG_HEALTH_PORT`).
    pub port: u16,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: 9090,
        }
    }
}

impl Config {
    /// Parse TOML (no environment). Errors name the field and the line.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(text, None, &e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            toml_error(text, Some(path), e.inner())
        })
    }

    /// Read and parse a TOML file (no environment).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("cannot read config file `{}`: {e}", path.display())))?;
        Self::from_toml_str(&text)
            .map_err(|e| Error::new(e.kind(), format!("config file `{}`: {e}", path.display())))
    }

    /// Defaults, overridden by the environment (see the [module docs](self)).
    pub fn from_env() -> Result<Self> {
        Self::default().with_env()
    }

    /// The file named by `SG_CONFIG` (defaults when unset), then the
    /// environment over it.
    pub fn load() -> Result<Self> {
        let base = match std::env::var_os("SG_CONFIG").filter(|p| !p.is_empty()) {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        base.with_env()
    }

    /// Apply the process environment over this configuration.
    pub fn with_env(self) -> Result<Self> {
        self.with_vars(std::env::vars())
    }

    /// Apply these variables as if they were the environment (for tests,
    /// or another source of `SG_*` pairs).
    pub fn with_vars<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Result<Self>
    where
        K: AsRef<str>,
        V: Into<String>,
    {
        let vars: std::collections::HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.into()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        env::apply(&mut self, &vars)?;
        Ok(self)
    }
}

/// A TOML error as "config field `a.b`: message (line n)".
fn toml_error(text: &str, path: Option<String>, e: &toml::de::Error) -> Error {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let mut message = match path.filter(|p| p != ".") {
        Some(path) => format!("config field `{path}`: {}", e.message()),
        None => format!("config: {}", e.message()),
    };
    if let Some(line) = line {
        message.push_str(&format!(" (line {line})"));
    }
    Error::invalid(message)
}
