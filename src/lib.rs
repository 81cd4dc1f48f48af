//! # fleetwire
//!
//! Shared plumbing for a fleet of microservices: who is alive, how events
//! move, and how each process boots and shuts down.
//!
//! Four contracts, each object-safe (`Arc<dyn Trait>`) and backed by several
//! stores chosen by Cargo feature or at run time:
//!
//! | contract | what it does |
//! |---|---|
//! | [`RegistryStore`] | register instances with metadata and a TTL, heartbeat, deregister, list |
//! | [`LivenessStore`] | touch ids with a TTL, batch "alive?", forget |
//! | [`EventBus`] | streams with consumer groups, ack, pending, reclaim, trimming; wildcard topics |
//! | [`HealthServer`] | HTTP liveness / readiness / health / fleet for probes |
//!
//! The [`service::Lifecycle`] drives them through boot and graceful shutdown;
//! [`monitor::FleetMonitor`] turns `system.{worker}.health` heartbeats into an
//! ok / stale / unknown table; [`topology`] and [`request`] carry the stream
//! layout and the request/reply pattern of the reference design.
//! [`control`] is the fleet control daemon every lifecycle can run: signed,
//! acknowledged restart / quiet / resume / ping / application commands to
//! one instance, one service or the whole fleet, and rolling restarts.
//! [`watch`] turns the registry into a snapshot and a stream of joined /
//! left / expired / changed events, resynced after an outage.
//!
//! ## How the pieces fit
//!
//! - Contracts and their value types never import a backend; backends import
//!   the contracts; the lifecycle only sees `Arc<dyn Trait>`, so a backend can
//!   be picked from configuration at run time as well as by feature.
//! - Every call returns [`Result`]; errors carry an [`ErrorKind`] and
//!   [`Error::is_temporary`]. Best-effort policies (log a failed heartbeat and
//!   carry on) live in the lifecycle, not in the stores.
//! - What a backend cannot do is a [`Capabilities`] flag, which the
//!   conformance suites read (`testkit`); the in-memory backends pass the same
//!   suites as Redis.
//! - Background tasks run on the caller's runtime: Tokio when one is current,
//!   else async-std or smol as enabled, else one thread per task.
//!
//! ## Backends
#![cfg_attr(
    feature = "memory",
    doc = "- [`memory`]: in-process, same semantics, manual clock for tests."
)]
#![cfg_attr(feature = "noop", doc = "- [`noop`]: accepts every call, stores nothing.")]
#![cfg_attr(
    feature = "redis",
    doc = "- [`redis`]: Redis via redis-rs; bb8 pool for blocking reads on Tokio."
)]
#![cfg_attr(
    feature = "redis-sentinel",
    doc = "- `redis-sentinel`: `redis+sentinel://` URLs; connections follow a failover."
)]
#![cfg_attr(
    feature = "redis-cluster",
    doc = "- `redis-cluster`: `redis+cluster://` seed-node URLs (`rediss+cluster://` over TLS with `redis-tls`); a hash-tagged key layout on Redis Cluster."
)]
#![cfg_attr(feature = "http", doc = "- [`http`]: the health server over hyper.")]
#![cfg_attr(
    feature = "metrics",
    doc = "- [`metrics`]: Prometheus metrics on the health server's `/metrics`."
)]
#![cfg_attr(
    feature = "testkit",
    doc = "- [`testkit`]: the conformance suites every backend runs."
)]
#![cfg_attr(feature = "mock", doc = "- [`mock`]: mockall mocks of every contract.")]
#![cfg_attr(
    feature = "config",
    doc = "- [`config`]: pick the backend and tune the lifecycle from TOML and `SG_*` variables."
)]
#![cfg_attr(
    feature = "redis-tls",
    doc = "- [`redis::RedisTls`]: `rediss://` with a custom CA and client certificate (rustls)."
)]
//!
//! ## Quick start
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # async_io::block_on(async {
//! use fleetwire::{memory::MemoryBus, EventBus, Envelope, GroupName, StreamName, ConsumerName, ReadOptions, StartFrom};
//!
//! let bus = MemoryBus::new();
//! let stream = StreamName::new("sg:stream:inbound")?;
//! let group = GroupName::new("sg:workers")?;
//! bus.ensure_group(&stream, &group, StartFrom::Latest).await?;
//! bus.publish(&stream, &Envelope::new("hello")).await?;
//! let got = bus.read(&stream, &group, &ConsumerName::new("w1")?, ReadOptions::count(10)).await?;
//! assert_eq!(got[0].envelope()?.kind, "hello");
//! bus.ack(&stream, &group, &[got[0].id]).await?;
//! # Ok::<(), fleetwire::Error>(())
//! # }).unwrap();
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod bus;
mod bus_config;
mod capabilities;
pub mod clock;
pub mod consumer;
pub mod control;
mod envelope;
mod error;
mod fleet;
pub mod health;
mod liveness;
mod name;
#[cfg(any(feature = "redis", feature = "config"))]
mod redact;
mod registry;
pub(crate) mod rt;
pub mod service;

#[cfg(feature = "config")]
pub mod config;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "noop")]
pub mod noop;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use async_trait::async_trait;
pub use bus::{
    Backlog, BacklogPolicy, Claimed, Delivery, EventBus, EventBusExt, GroupInfo, MessageId, Overflow,
    PendingEntry, PendingSummary, ReadOptions, Release, StartFrom, StreamInfo, Subscription,
    SubscriptionStats, TopicEvent, TrimPolicy, TOPIC_BUFFER,
};
pub use capabilities::Capabilities;
pub use envelope::{Codec, Envelope, DEFAULT_MAX_ENVELOPE_BYTES};
pub use error::{Error, ErrorKind, Result};
pub use fleet::{monitor, request, topology, watch};
pub use health::{Health, HealthServer};
pub use liveness::LivenessStore;
pub use name::{
    ConsumerName, GroupName, InstanceId, ServiceName, StreamName, Topic, TopicPattern, MAX_NAME_LEN,
};
pub use registry::{Instance, RegistryStore, Status};

// The README's example compiles (doctests only).
#[cfg(all(doctest, feature = "redis", feature = "http", feature = "rt-tokio"))]
#[doc = include_str!("../README.md")]
struct ReadmeExample;

/// mockall mocks of every contract, for users' unit tests.
#[cfg(feature = "mock")]
pub mod mock {
    pub use crate::bus::MockEventBus;
    pub use crate::health::MockHealthServer;
    pub use crate::liveness::MockLivenessStore;
    pub use crate::registry::MockRegistryStore;
}
