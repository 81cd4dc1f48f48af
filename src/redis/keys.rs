//! The Redis key layout, in one place.
//!
//! With the namespace `sg` the registry key of an instance is exactly the
//! reference design's `sg:registry:service:{name}:{instance_id}`, so older
//! services and fleetwire services see each other. Stream keys are the
//! stream names as given (`sg:stream:inbound`).

use crate::{
    error::{Error, Result},
    name::{GroupName, InstanceId, ServiceName, StreamName, Topic, TopicPattern},
};

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
    /// Liveness keys are `{liveness_prefix}{id}`; `{ns}:liveness:` unless set.
    liveness_prefix: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Result<Self> {
        // Same rules as a service name: one key segment, no glob characters.
        ServiceName::new(namespace)
            .map_err(|e| Error::invalid(format!("invalid Redis namespace `{namespace}`")).with_source(e))?;
        Ok(Self {
            ns: namespace.to_owned(),
            liveness_prefix: format!("{namespace}:liveness:"),
        })
    }

    /// Liveness keys `{prefix}{id}`, e.g. the reference Go store's `mul:runtime:hb:`.
    pub(crate) fn with_liveness_prefix(mut self, prefix: &str) -> Result<Self> {
        if prefix.is_empty() || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid(format!(
                "invalid liveness key prefix {prefix:?}: it must be non-empty, without spaces or control characters"
            )));
        }
        self.liveness_prefix = prefix.to_owned();
        Ok(self)
    }

    pub(crate) fn instance(&self, service: &ServiceName, id: &InstanceId) -> String {
        format!("{}:registry:service:{service}:{id}", self.ns)
    }

    /// `SCAN` pattern matching every instance key, ours and the reference design's.
    pub(crate) fn instance_scan_pattern(&self) -> String {
        format!("{}:registry:service:*", self.ns)
    }

    /// Service and id of an instance key, if it is one with valid names.
    pub(crate) fn parse_instance(&self, key: &str) -> Option<(ServiceName, InstanceId)> {
        let rest = key.strip_prefix(&self.ns)?.strip_prefix(":registry:service:")?;
        let (service, id) = rest.split_once(':')?;
        Some((ServiceName::new(service).ok()?, InstanceId::new(id).ok()?))
    }

    /// Set of instance ids of `service`, so listing never scans the keyspace.
    pub(crate) fn index(&self, service: &ServiceName) -> String {
        format!("{}:registry:index:{service}", self.ns)
    }

    /// Counter bumped whenever the members of `service`'s index change, so
    /// a reader can keep the ids it read while the counter stays the same.
    pub(crate) fn index_version(&self, service: &ServiceName) -> String {
        format!("{}:registry:version:{service}", self.ns)
    }

    /// Set of service names that have (or had) an index.
    pub(crate) fn services(&self) -> String {
        format!("{}:registry:services", self.ns)
    }

    pub(crate) fn liveness(&self, id: &InstanceId) -> String {
        format!("{}{id}", self.liveness_prefix)
    }

    /// The liveness keys of `ids` as command arguments, each written straight
    /// into the command buffer (no `String` per key on the batch path).
    pub(crate) fn liveness_args<'a>(&'a self, ids: &'a [InstanceId]) -> PrefixedArgs<'a> {
        PrefixedArgs {
            prefix: &self.liveness_prefix,
            ids,
        }
    }

    /// The instance keys of `service` for `ids`, as command arguments.
    pub(crate) fn instance_args<'a>(
        &'a self,
        service: &'a ServiceName,
        ids: &'a [InstanceId],
    ) -> InstanceArgs<'a> {
        InstanceArgs {
            ns: &self.ns,
            service,
            ids,
        }
    }

    /// Not-before times of a group's delayed retries, kept beside the stream
    /// (field: entry id, value: unix ms).
    pub(crate) fn due(&self, stream: &StreamName, group: &GroupName) -> String {
        format!("{stream}:due:{group}")
    }

    pub(crate) fn topic_prefix(&self) -> String {
        format!("{}:topic:", self.ns)
    }

    pub(crate) fn topic(&self, topic: &Topic) -> String {
        format!("{}:topic:{topic}", self.ns)
    }

    /// A `PSUBSCRIBE` glob; Redis's `*` also matches dots, so events are
    /// filtered again with [`TopicPattern::matches`].
    pub(crate) fn topic_pattern(&self, pattern: &TopicPattern) -> String {
        format!("{}:topic:{pattern}", self.ns)
    }
}

/// `{prefix}{id}` for each id, as separate Redis arguments.
pub(crate) struct PrefixedArgs<'a> {
    prefix: &'a str,
    ids: &'a [InstanceId],
}

impl redis::ToRedisArgs for PrefixedArgs<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        for id in self.ids {
            let mut w = out.writer_for_next_arg();
            // Writing into the command's own buffer cannot fail.
            let _ = w.write_all(self.prefix.as_bytes());
            let _ = w.write_all(id.as_str().as_bytes());
        }
    }
}

/// `{ns}:registry:service:{service}:{id}` for each id, as separate Redis arguments.
pub(crate) struct InstanceArgs<'a> {
    ns: &'a str,
    service: &'a ServiceName,
    ids: &'a [InstanceId],
}

impl redis::ToRedisArgs for InstanceArgs<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        for id in self.ids {
            let mut w = out.writer_for_next_arg();
            let _ = w.write_all(self.ns.as_bytes());
            let _ = w.write_all(b":registry:service:");
            let _ = w.write_all(self.service.as_str().as_bytes());
            let _ = w.write_all(b":");
            let _ = w.write_all(id.as_str().as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_layout() {
        let k = Keys::new("sg").unwrap();
        let (s, i) = (
            ServiceName::new("gateway").unwrap(),
            InstanceId::new("gw-1").unwrap(),
        );
        assert_eq!(k.instance(&s, &i), "sg:registry:service:gateway:gw-1");
        assert_eq!(
            k.parse_instance("sg:registry:service:gateway:gw-1"),
            Some((s.clone(), i))
        );
        assert_eq!(k.parse_instance("sg:registry:service:gateway:gw:1"), None);
        assert_eq!(k.parse_instance("xx:registry:service:gateway:gw-1"), None);
        assert!(Keys::new("a*b").is_err());
        let ids = [InstanceId::new("a").unwrap(), InstanceId::new("b").unwrap()];
        let args = redis::ToRedisArgs::to_redis_args(&k.liveness_args(&ids));
        assert_eq!(
            args,
            [k.liveness(&ids[0]).into_bytes(), k.liveness(&ids[1]).into_bytes()]
        );
        assert_eq!(k.liveness(&ids[0]), "sg:liveness:a");
        let args = redis::ToRedisArgs::to_redis_args(&k.instance_args(&s, &ids));
        assert_eq!(
            args,
            [
                k.instance(&s, &ids[0]).into_bytes(),
                k.instance(&s, &ids[1]).into_bytes()
            ]
        );
        let go = k.clone().with_liveness_prefix("mul:runtime:hb:").unwrap();
        assert_eq!(go.liveness(&ids[0]), "mul:runtime:hb:a");
        let args = redis::ToRedisArgs::to_redis_args(&go.liveness_args(&ids[1..]));
        assert_eq!(args, [b"mul:runtime:hb:b".to_vec()]);
        assert!(k.clone().with_liveness_prefix("").is_err());
        assert!(k.clone().with_liveness_prefix("a b:").is_err());
    }
}
