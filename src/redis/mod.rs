//! Redis backends over redis-rs.
//!
//! ```no_run
//! # async fn demo() -> fleetwire::Result<()> {
//! use fleetwire::redis::RedisBackend;
//! let redis = RedisBackend::builder().url("redis://127.0.0.1:6379").namespace("sg").build()?;
//! let (registry, liveness, bus) = (redis.registry(), redis.liveness(), redis.bus());
//! # Ok(()) }
//! ```
//!
//! One [`RedisBackend`] holds the connections; the registry, liveness store
//! and bus it hands out share them. Ordinary commands go over one
//! multiplexed connection that reconnects by itself; blocking reads use a
//! bb8 pool on Tokio and dedicated connections on async-std / smol.
//! A password in the URL never appears in `Debug` output, logs or errors.
//!
//! Registry and liveness calls wait at most the response timeout (default
//! 2 s). After a call finds Redis unreachable or silent, [`RedisBackend::available`]
//! turns false and those calls fail at once with a temporary
//! [`Unavailable`](crate::ErrorKind::Unavailable) error, until a background
//! `PING` (every 250 ms by default) is answered. The bus does not consult
//! this: its reads have their own waits.
//!
//! With the `redis-cluster` feature, a `redis+cluster://host:port,host:port`
//! URL (seed nodes; `rediss+cluster://` for TLS) runs the same backends on Redis Cluster, with a
//! hash-tagged key layout (see the README's "Scaling out: Cluster").
//!
//! With the `redis-sentinel` feature, a `redis+sentinel://host:port,host:port/<master>`
//! URL finds the primary through Redis Sentinel and follows it across a
//! failover (see the README's "Scaling out: Sentinel").

mod bus;
#[cfg(feature = "redis-cluster")]
mod cluster;
#[cfg(feature = "redis-cluster")]
mod cluster_tls;
mod connection;
mod guard;
mod keys;
mod liveness;
pub mod parse;
mod registry;
mod scan;
mod scripts;
#[cfg(feature = "redis-sentinel")]
mod sentinel;
mod server;
#[cfg(feature = "redis-tls")]
mod tls;
mod topics;

pub use bus::RedisBus;
pub use liveness::RedisLiveness;
pub use registry::RedisRegistry;
#[cfg(feature = "redis-tls")]
pub use tls::RedisTls;

use crate::{
    bus::BacklogPolicy,
    bus_config::BusConfig,
    envelope::Codec,
    error::{Error, Result},
    name::StreamName,
};
use connection::{redact, Conn};
use keys::Keys;
use server::AckedTrim;
use std::{sync::Arc, time::Duration};

/// The connections and settings shared by the Redis backends.
#[derive(Debug, Clone)]
pub struct RedisBackend {
    conn: Arc<Conn>,
    keys: Keys,
    bus: BusConfig,
    adopt_legacy_every: Option<Duration>,
    adoption: Arc<std::sync::Once>,
    acked_trim: Arc<AckedTrim>,
    publish_replicas: Option<(u32, Duration)>,
}

/// Builds a [`RedisBackend`]. Every setting has a documented default.
#[derive(Clone)]
pub struct RedisBackendBuilder {
    url: String,
    namespace: String,
    pool_size: u32,
    connect_timeout: Duration,
    response_timeout: Duration,
    probe_every: Duration,
    liveness_key_prefix: Option<String>,
    bus: BusConfig,
    adopt_legacy_every: Option<Duration>,
    acked_trim: Option<bool>,
    #[cfg(feature = "redis-tls")]
    tls: Option<RedisTls>,
    publish_replicas: Option<(u32, Duration)>,
}

impl std::fmt::Debug for RedisBackendBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackendBuilder")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("probe_every", &self.probe_every)
            .field("liveness_key_prefix", &self.liveness_key_prefix)
            .field("adopt_legacy_every", &self.adopt_legacy_every)
            .field("acked_trim", &self.acked_trim)
            .field("publish_replicas", &self.publish_replicas)
            .finish_non_exhaustive()
    }
}

impl Default for RedisBackendBuilder {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            namespace: "sg".into(),
            pool_size: 8,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            probe_every: Duration::from_millis(250),
            liveness_key_prefix: None,
            bus: BusConfig::default(),
            adopt_legacy_every: None,
            acked_trim: None,
            #[cfg(feature = "redis-tls")]
            tls: None,
            publish_replicas: None,
        }
    }
}

impl RedisBackendBuilder {
    /// Server URL (default `redis://127.0.0.1:6379`); `redis://:password@host`
    /// and, with the `redis-tls` feature, `rediss://` work. With the
    /// `redis-cluster` feature, `redis+cluster://host:port,host:port,...`
    /// (seed nodes) selects Redis Cluster (`rediss+cluster://` over TLS,
    /// with `redis-tls` too); with `redis-sentinel`,
    /// `redis+sentinel://...` selects Sentinel.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Key namespace (default `sg`, the reference design's).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Connections for blocking reads (default 8).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// Time to establish a connection (default 2 s; at least 1 ms).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Time to wait for a reply, besides a read's own block time (default 2 s;
    /// at least 1 ms). A registry or liveness call fails with a `Timeout`
    /// error after it, whatever the connection was doing (connecting, retrying).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// How often the background probe `PING`s Redis while it is marked
    /// unavailable (default 250 ms; at least 10 ms).
    pub fn probe_every(mut self, d: Duration) -> Self {
        self.probe_every = d.max(Duration::from_millis(10));
        self
    }

    /// Liveness keys are `{prefix}{id}` (default `{namespace}:liveness:`).
    /// `mul:runtime:hb:` shares keys with the reference Go liveness store.
    pub fn liveness_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.liveness_key_prefix = Some(prefix.into());
        self
    }

    /// Length cap of every stream (default 100 000; at least the floor, 1,000).
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.bus.max_len = max_len;
        self
    }

    /// Length cap of one stream.
    pub fn stream_max_len(mut self, stream: StreamName, max_len: u64) -> Self {
        self.bus.stream_max_len.insert(stream, max_len);
        self
    }

    /// How every stream is trimmed past its cap (default [`TrimPolicy::DropOldest`](crate::TrimPolicy)).
    pub fn trim_policy(mut self, policy: crate::TrimPolicy) -> Self {
        self.bus.trim = policy;
        self
    }

    /// How `stream` is trimmed past its cap.
    pub fn stream_trim_policy(mut self, stream: StreamName, policy: crate::TrimPolicy) -> Self {
        self.bus.stream_trim.insert(stream, policy);
        self
    }

    /// Accept stream caps down to `floor` (default 1,000, as the reference
    /// design clamps; lower caps are raised to it with a warning).
    pub fn max_len_floor(mut self, floor: u64) -> Self {
        self.bus.max_len_floor = floor;
        self
    }

    /// When to warn about backlogs (default: 80 % of the cap or 1000 pending, every 30 s).
    pub fn backlog_policy(mut self, policy: BacklogPolicy) -> Self {
        self.bus.backlog = policy;
        self
    }

    /// Envelope size limit (default 1 MiB).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.bus.codec = codec;
        self
    }

    /// Adopt registry keys written without the index (by older services'
    /// plain `SET ... EX`): a background task `SCAN`s for them every `every`
    /// and adds them to the index, logging its errors. `None` (the default)
    /// never scans; `list` never scans either way.
    pub fn adopt_legacy_keys(mut self, every: Option<Duration>) -> Self {
        self.adopt_legacy_every = every.map(|d| d.max(Duration::from_millis(10)));
        self
    }

    /// Whether keep-unacknowledged trimming uses Redis 8.2's `XTRIM ... ACKED`
    /// (the server trims exactly the entries every group has read and
    /// acknowledged) instead of computing that point in a script. Default:
    /// detected once per backend from `INFO server` (a server that refuses
    /// `INFO`, e.g. by ACL, counts as older). `Some(true)` skips detection; a
    /// server that then refuses `ACKED` falls back to the script's own trim
    /// within the same call, so no setting can lose an entry.
    pub fn acked_trim(mut self, use_acked: Option<bool>) -> Self {
        self.acked_trim = use_acked;
        self
    }

    /// Make every publish wait until `replicas` replicas acknowledged it
    /// (`WAIT replicas timeout` after the `XADD`, on the same connection);
    /// fewer in time fail the publish with
    /// [`NotReplicated`](crate::ErrorKind::NotReplicated). Default: off.
    ///
    /// Redis replicates asynchronously: without this, a publish returns `Ok`
    /// once the primary has it, and a failover (or a restart without
    /// persistence) loses whatever the replicas had not received yet,
    /// typically the last milliseconds of writes. With it, a publish that
    /// returned `Ok` survives the loss of the primary as long as a replica
    /// that acknowledged it is promoted (what Sentinel picks: the most
    /// up-to-date one). Each publish then costs a round trip to the replicas
    /// and holds one of the `pool_size` blocking-read connections while
    /// waiting; streams with a keep-unacknowledged trim policy refuse it
    /// (`Unsupported`). A publish dropped while waiting may still have
    /// appended its entry, as any dropped publish may.
    pub fn publish_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.publish_replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Build the backend. No connection is made until the first call, so
    /// this succeeds while Redis is down; call it inside the async runtime.
    /// (A `redis+sentinel://` URL is the exception: the Sentinels are asked
    /// for the primary here, blocking for at most the connect timeout.)
    pub fn build(self) -> Result<RedisBackend> {
        self.bus.warn_raised_caps();
        let redacted_url = redact(&self.url);
        let mut keys = Keys::new(&self.namespace)?;
        if let Some(prefix) = &self.liveness_key_prefix {
            keys = keys.with_liveness_prefix(prefix)?;
        }
        #[cfg(feature = "redis-cluster")]
        if cluster::is_cluster_url(&self.url) {
            keys = keys.for_cluster()?;
            if self.adopt_legacy_every.is_some() {
                return Err(Error::new(
                    crate::ErrorKind::Unsupported,
                    "adopt_legacy_keys scans the keyspace, which a Redis Cluster spreads over its nodes: not supported on Cluster",
                ));
            }
        }
        let settings = connection::Settings {
            pool_size: self.pool_size,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            probe_every: self.probe_every,
        };
        let conn = self.connect(settings, redacted_url)?;
        Ok(RedisBackend {
            conn,
            keys,
            bus: self.bus,
            adopt_legacy_every: self.adopt_legacy_every,
            adoption: Arc::new(std::sync::Once::new()),
            acked_trim: Arc::new(AckedTrim::new(self.acked_trim)),
            publish_replicas: self.publish_replicas,
        })
    }
}

impl RedisBackendBuilder {
    /// The connection state for the URL: a Sentinel-followed primary for
    /// `redis+sentinel://`, else one server.
    fn connect(&self, settings: connection::Settings, redacted_url: String) -> Result<Arc<Conn>> {
        #[cfg(feature = "redis-cluster")]
        if let Some(target) = cluster::Target::parse(&self.url)? {
            let certs = self.cluster_certs(target.tls, &redacted_url)?;
            return cluster::connect(target, settings, redacted_url, certs);
        }
        #[cfg(not(feature = "redis-cluster"))]
        if self.url.starts_with("redis+cluster://") || self.url.starts_with("rediss+cluster://") {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                format!("Cluster URL `{redacted_url}` needs fleetwire's `redis-cluster` feature"),
            ));
        }
        #[cfg(feature = "redis-sentinel")]
        if let Some(target) = sentinel::Target::parse(&self.url)? {
            self.refuse_tls("Sentinel", &redacted_url)?;
            return sentinel::connect(target, settings, redacted_url);
        }
        #[cfg(not(feature = "redis-sentinel"))]
        if self.url.starts_with("redis+sentinel://") {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                format!("Sentinel URL `{redacted_url}` needs fleetwire's `redis-sentinel` feature"),
            ));
        }
        let client = self.open_client(&redacted_url)?;
        let endpoint = connection::Endpoint::new(client, &settings, &redacted_url)?;
        Ok(Conn::new(endpoint, settings, redacted_url))
    }
}

impl RedisBackendBuilder {
    /// The certificates for a Cluster URL: TLS settings need
    /// `rediss+cluster://`, as they need `rediss://` on one server.
    #[cfg(feature = "redis-cluster")]
    fn cluster_certs(&self, tls_url: bool, redacted_url: &str) -> Result<cluster::Certs> {
        #[cfg(feature = "redis-tls")]
        {
            if self.tls.is_some() && !tls_url {
                return Err(Error::invalid(format!(
                    "TLS settings with the plain Cluster URL `{redacted_url}`: use rediss+cluster://"
                )));
            }
            if tls_url {
                tls::install_crypto_provider();
            }
            self.tls.as_ref().map(RedisTls::certificates).transpose()
        }
        #[cfg(not(feature = "redis-tls"))]
        {
            if tls_url {
                return Err(Error::invalid(format!(
                    "Cluster URL `{redacted_url}` asks for TLS: enable fleetwire's `redis-tls` feature"
                )));
            }
            Ok(None)
        }
    }

    /// The Sentinel path opens plain TCP connections: refuse TLS settings
    /// rather than send in the clear what the user asked to protect.
    #[cfg_attr(not(feature = "redis-sentinel"), allow(dead_code))]
    fn refuse_tls(&self, through: &str, redacted_url: &str) -> Result<()> {
        #[cfg(feature = "redis-tls")]
        if self.tls.is_some() {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                format!(
                    "TLS settings with the URL `{redacted_url}`: TLS through {through} is not supported yet"
                ),
            ));
        }
        let _ = (through, redacted_url);
        Ok(())
    }

    fn open_client(&self, redacted_url: &str) -> Result<redis::Client> {
        #[cfg(feature = "redis-tls")]
        if let Some(tls) = &self.tls {
            return tls.client(&self.url, redacted_url);
        }
        if self.url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(Error::invalid(format!(
                "Redis URL `{redacted_url}` asks for TLS: enable fleetwire's `redis-tls` feature"
            )));
        }
        #[cfg(feature = "redis-tls")]
        tls::install_crypto_provider();
        redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::invalid(format!(
                "invalid Redis URL `{redacted_url}`: {}",
                e.detail().unwrap_or("unparsable")
            ))
        })
    }
}

impl RedisBackend {
    /// Configure a backend.
    pub fn builder() -> RedisBackendBuilder {
        RedisBackendBuilder::default()
    }

    /// Build from the environment: `SG_REDIS_URL` (or `REDIS_URL`), `SG_NAMESPACE`,
    /// `SG_STREAM_MAXLEN`; anything unset keeps its default.
    pub fn from_env() -> Result<Self> {
        let mut b = Self::builder();
        if let Ok(url) = std::env::var("SG_REDIS_URL").or_else(|_| std::env::var("REDIS_URL")) {
            b = b.url(url);
        }
        if let Ok(ns) = std::env::var("SG_NAMESPACE") {
            b = b.namespace(ns);
        }
        if let Ok(n) = std::env::var("SG_STREAM_MAXLEN") {
            b = b.max_len(
                n.parse()
                    .map_err(|_| Error::invalid(format!("SG_STREAM_MAXLEN `{n}` is not a number")))?,
            );
        }
        b.build()
    }

    /// The service registry. The first call starts the legacy-key adoption,
    /// when [configured](RedisBackendBuilder::adopt_legacy_keys).
    pub fn registry(&self) -> RedisRegistry {
        if let Some(every) = self.adopt_legacy_every {
            self.adoption
                .call_once(|| registry::spawn_adoption(&self.conn, self.keys.clone(), every));
        }
        RedisRegistry::new(self.conn.clone(), self.keys.clone())
    }

    /// The liveness store.
    pub fn liveness(&self) -> RedisLiveness {
        RedisLiveness::new(self.conn.clone(), self.keys.clone())
    }

    /// The event bus.
    pub fn bus(&self) -> RedisBus {
        RedisBus::new(
            self.conn.clone(),
            self.keys.clone(),
            self.bus.clone(),
            self.acked_trim.clone(),
        )
        .with_replicas(self.publish_replicas)
    }

    /// `PING` the server (failing at once while it is marked unavailable).
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.manager();
        self.conn
            .run(
                || "ping Redis".into(),
                redis::cmd("PING").query_async::<()>(&mut conn),
            )
            .await
    }

    /// Whether Redis answers, as far as the registry and liveness store know:
    /// false from a call that found it unreachable or silent until a
    /// background `PING` is answered (the reference design's `Available()`;
    /// callers can skip the store meanwhile).
    pub fn available(&self) -> bool {
        self.conn.available()
    }
}

#[cfg(all(test, not(feature = "redis-tls")))]
mod tls_off_tests {
    #[test]
    fn rediss_without_the_feature_names_it() {
        let err = super::RedisBackend::builder()
            .url("rediss://:pw@localhost:6380")
            .build()
            .expect_err("no TLS support compiled in");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("`redis-tls` feature"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}

#[cfg(all(test, feature = "redis-tls", feature = "redis-sentinel"))]
mod tls_sentinel_tests {
    #[test]
    fn tls_settings_with_a_sentinel_url_are_refused_not_ignored() {
        let err = super::RedisBackend::builder()
            .url("redis+sentinel://:pw@127.0.0.1:1/m")
            .tls(super::RedisTls::new())
            .build()
            .expect_err("plain TCP would ignore the TLS settings");
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
        assert!(err.to_string().contains("TLS through Sentinel"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
    }
}

#[cfg(all(test, feature = "redis-tls", feature = "redis-cluster"))]
mod tls_cluster_tests {
    /// A plain Cluster URL with TLS settings is a mistake to name, as a
    /// plain `redis://` one is: TLS on Cluster is `rediss+cluster://`.
    #[test]
    fn tls_settings_with_a_plain_cluster_url_are_refused_not_ignored() {
        let err = super::RedisBackend::builder()
            .url("redis+cluster://:pw@127.0.0.1:1")
            .tls(super::RedisTls::new())
            .build()
            .expect_err("plain TCP would ignore the TLS settings");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{err}");
        assert!(err.to_string().contains("rediss+cluster://"), "{err}");
        assert!(!err.to_string().contains("pw"), "{err}");
        super::RedisBackend::builder()
            .url("rediss+cluster://:pw@127.0.0.1:1")
            .tls(super::RedisTls::new())
            .build()
            .expect("TLS settings with a TLS Cluster URL");
    }
}

#[cfg(all(test, not(feature = "redis-cluster")))]
mod cluster_off_tests {
    #[test]
    fn cluster_url_without_the_feature_names_it() {
        let err = super::RedisBackend::builder()
            .url("redis+cluster://:pw@a:1,b:2")
            .build()
            .expect_err("no Cluster support compiled in");
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
        assert!(err.to_string().contains("`redis-cluster` feature"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
