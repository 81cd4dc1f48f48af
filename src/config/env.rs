//! The `SG_*` environment variables, applied over a parsed configuration.

use super::{BackendKind, Config};
use crate::error::{Error, Result};
use std::{collections::HashMap, path::PathBuf, str::FromStr};

type Vars = HashMap<String, String>;

/// Parse `var` for `field`, naming both when it does not parse.
fn parse<T: FromStr>(vars: &Vars, var: &str, field: &str, expected: &str) -> Result<Option<T>> {
    vars.get(var)
        .map(|v| {
            v.trim().parse().map_err(|_| {
                Error::invalid(format!(
                    "environment variable `{var}` (config field `{field}`): expected {expected}, got `{v}`"
                ))
            })
        })
        .transpose()
}

pub(super) fn apply(c: &mut Config, vars: &Vars) -> Result<()> {
    if let Some(b) = vars.get("SG_BACKEND") {
        c.backend = match b.trim().to_ascii_lowercase().as_str() {
            "memory" => BackendKind::Memory,
            "noop" => BackendKind::Noop,
            "redis" => BackendKind::Redis,
            _ => {
                return Err(Error::invalid(format!(
                    "environment variable `SG_BACKEND` (config field `backend`): expected one of `memory`, `noop`, `redis`, got `{b}`"
                )))
            }
        };
    }
    if let Some(url) = vars.get("SG_REDIS_URL").or_else(|| vars.get("REDIS_URL")) {
        c.redis.url = url.clone();
    }
    if let Some(ns) = vars.get("SG_NAMESPACE") {
        c.redis.namespace = ns.clone();
    }
    if let Some(n) = parse(vars, "SG_STREAM_MAXLEN", "redis.max_len", "an integer")? {
        c.redis.max_len = n;
    }
    if let Some(n) = parse(vars, "SG_REDIS_POOL_SIZE", "redis.pool_size", "an integer")? {
        c.redis.pool_size = n;
    }
    let path = |var: &str| vars.get(var).map(PathBuf::from);
    if let Some(p) = path("SG_REDIS_TLS_CA") {
        c.redis.tls.ca_file = Some(p);
    }
    if let Some(p) = path("SG_REDIS_TLS_CERT") {
        c.redis.tls.client_cert_file = Some(p);
    }
    if let Some(p) = path("SG_REDIS_TLS_KEY") {
        c.redis.tls.client_key_file = Some(p);
    }
    if let Some(name) = vars.get("SG_SERVICE") {
        c.service.name = name.clone();
    }
    if let Some(id) = vars.get("SG_INSTANCE") {
        c.service.instance = Some(id.clone());
    }
    if let Some(ms) = parse(vars, "SG_SERVICE_TTL_MS", "lifecycle.ttl_ms", "an integer (ms)")? {
        c.lifecycle.ttl_ms = ms;
    }
    if let Some(port) = parse(vars, "SG_HEALTH_PORT", "health.port", "a port (0-65535)")? {
        c.health.port = port;
    }
    Ok(())
}
