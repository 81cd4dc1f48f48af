//! The Redis key layout, in one place.
//!
//! With the namespace `sg` the registry key of an instance is exactly the
//! reference design's `sg:registry:service:{name}:{instance_id}`, so older
//! services and fleetwire services see each other. Stream keys are the
//! stream names as given (`sg:stream:inbound`).
//!
//! On Redis Cluster (a `redis+cluster://` URL) every multi-key operation of
//! one service must hit one hash slot, so the service name is a hash tag:
//! `sg:registry:service:{gateway}:gw-1`, `sg:registry:index:{gateway}`,
//! `sg:registry:version:{gateway}`, and the scripts' copy of the service's
//! membership in the set of services, `sg:registry:listed:{gateway}`. The
//! set of services itself (`sg:registry:services`) is one key in its own
//! slot, only ever added to there, so listing needs no `SCAN`. Service names
//! and the namespace must not contain `{` or `}` on Cluster.
//! A stream's derived keys share its slot: with no hash tag in the stream
//! name, they wrap it in one (`{orders}:due:workers` for stream `orders`);
//! with a tag, they keep it (`{shop}orders:due:workers`); a stream name with
//! a `}` but no tag cannot be wrapped, and its scripts fail with `CROSSSLOT`
//! (an `InvalidInput` error). Liveness keys are
//! one key per id, as on standalone.

use crate::{
    error::{Error, Result},
    name::{GroupName, InstanceId, ServiceName, StreamName, Topic, TopicPattern},
};

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
    /// Liveness keys are `{liveness_prefix}{id}`; `{ns}:liveness:` unless set.
    liveness_prefix: String,
    /// The hash-tagged Cluster layout (see the module docs).
    cluster: bool,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Result<Self> {
        // Same rules as a service name: one key segment, no glob characters.
        ServiceName::new(namespace)
            .map_err(|e| Error::invalid(format!("invalid Redis namespace `{namespace}`")).with_source(e))?;
        Ok(Self {
            ns: namespace.to_owned(),
            liveness_prefix: format!("{namespace}:liveness:"),
            cluster: false,
        })
    }

    /// The hash-tagged Cluster layout; the namespace and liveness prefix
    /// must hold no `{` or `}`.
    #[cfg(feature = "redis-cluster")]
    pub(crate) fn for_cluster(mut self) -> Result<Self> {
        for (what, s) in [
            ("namespace", &self.ns),
            ("liveness key prefix", &self.liveness_prefix),
        ] {
            if s.contains(['{', '}']) {
                return Err(Error::invalid(format!(
                    "invalid Redis {what} `{s}` on Cluster: `{{` and `}}` are reserved for the hash tags fleetwire adds"
                )));
            }
        }
        self.cluster = true;
        Ok(self)
    }

    /// Whether keys use the Cluster layout.
    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Refuse a service name that would break the Cluster layout's hash tag.
    pub(crate) fn check_service(&self, service: &ServiceName) -> Result<()> {
        if self.cluster && service.as_str().contains(['{', '}']) {
            return Err(Error::invalid(format!(
                "invalid service name `{service}` on Redis Cluster: `{{` and `}}` are reserved for the hash tag fleetwire adds"
            )));
        }
        Ok(())
    }

    /// `service` as a key segment: itself, or `{service}` on Cluster.
    fn svc(&self, service: &ServiceName) -> String {
        if self.cluster {
            format!("{{{service}}}")
        } else {
            service.as_str().to_owned()
        }
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
        format!("{}:registry:service:{}:{id}", self.ns, self.svc(service))
    }

    /// `SCAN` pattern matching every instance key, ours and the reference design's.
    pub(crate) fn instance_scan_pattern(&self) -> String {
        format!("{}:registry:service:*", self.ns)
    }

    /// Service and id of an instance key, if it is one with valid names.
    pub(crate) fn parse_instance(&self, key: &str) -> Option<(ServiceName, InstanceId)> {
        let rest = key.strip_prefix(&self.ns)?.strip_prefix(":registry:service:")?;
        let (service, id) = if self.cluster {
            let (s, id) = rest.strip_prefix('{')?.split_once("}:")?;
            (s, id)
        } else {
            rest.split_once(':')?
        };
        Some((ServiceName::new(service).ok()?, InstanceId::new(id).ok()?))
    }

    /// Set of instance ids of `service`, so listing never scans the keyspace.
    pub(crate) fn index(&self, service: &ServiceName) -> String {
        format!("{}:registry:index:{}", self.ns, self.svc(service))
    }

    /// Version of `service`'s index, moved on whenever its members change
    /// (see the registry's bump script), so a reader can keep the ids it
    /// read while the version stays the same.
    pub(crate) fn index_version(&self, service: &ServiceName) -> String {
        format!("{}:registry:version:{}", self.ns, self.svc(service))
    }

    /// Set of service names that have (or had) an index.
    pub(crate) fn services(&self) -> String {
        format!("{}:registry:services", self.ns)
    }

    /// The set of services as the registry's scripts see it: the set itself,
    /// or on Cluster `{ns}:registry:listed:{service}` in the service's slot
    /// (the set itself is then written outside the scripts).
    pub(crate) fn services_in_script(&self, service: &ServiceName) -> String {
        if self.cluster {
            format!("{}:registry:listed:{{{service}}}", self.ns)
        } else {
            self.services()
        }
    }

    pub(crate) fn liveness(&self, id: &InstanceId) -> String {
        format!("{}{id}", self.liveness_prefix)
    }

    /// What every liveness key starts with.
    #[cfg(feature = "redis-cluster")]
    pub(crate) fn liveness_prefix(&self) -> &str {
        &self.liveness_prefix
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
            cluster: self.cluster,
        }
    }

    /// Not-before times of a group's delayed retries, kept beside the stream
    /// (field: entry id, value: unix ms).
    pub(crate) fn due(&self, stream: &StreamName, group: &GroupName) -> String {
        format!("{}:due:{group}", self.stream_base(stream))
    }

    /// The part of a derived key that puts it in `stream`'s slot: the name
    /// itself, or on Cluster wrapped in a hash tag when it has none.
    fn stream_base(&self, stream: &StreamName) -> String {
        if self.cluster && !has_hash_tag(stream.as_str()) {
            format!("{{{stream}}}")
        } else {
            stream.as_str().to_owned()
        }
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

/// Whether Redis Cluster hashes `key` by a tag: a `{` followed later by a
/// `}` with something in between.
fn has_hash_tag(key: &str) -> bool {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .is_some_and(|(tag, _)| !tag.is_empty())
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
    cluster: bool,
}

impl redis::ToRedisArgs for InstanceArgs<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        for id in self.ids {
            let mut w = out.writer_for_next_arg();
            let _ = w.write_all(self.ns.as_bytes());
            let _ = w.write_all(b":registry:service:");
            if self.cluster {
                let _ = w.write_all(b"{");
            }
            let _ = w.write_all(self.service.as_str().as_bytes());
            if self.cluster {
                let _ = w.write_all(b"}");
            }
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
        let (stream, group) = (StreamName::new("orders").unwrap(), GroupName::new("w").unwrap());
        assert_eq!(k.due(&stream, &group), "orders:due:w");
        assert_eq!(k.index(&s), "sg:registry:index:gateway");
        assert_eq!(k.index_version(&s), "sg:registry:version:gateway");
        assert_eq!(k.services_in_script(&s), "sg:registry:services");
    }

    #[cfg(feature = "redis-cluster")]
    #[test]
    fn cluster_layout_keeps_each_service_and_stream_in_one_slot() {
        use redis::cluster_routing::Slot;
        let k = Keys::new("sg").unwrap().for_cluster().unwrap();
        let s = ServiceName::new("gateway").unwrap();
        let ids = [InstanceId::new("gw-1").unwrap(), InstanceId::new("gw-2").unwrap()];
        assert_eq!(k.instance(&s, &ids[0]), "sg:registry:service:{gateway}:gw-1");
        assert_eq!(
            k.parse_instance("sg:registry:service:{gateway}:gw-1"),
            Some((s.clone(), ids[0].clone()))
        );
        let slot = Slot::for_key(k.index(&s));
        let mut keys = vec![k.index_version(&s), k.services_in_script(&s)];
        keys.extend(ids.iter().map(|i| k.instance(&s, i)));
        for key in redis::ToRedisArgs::to_redis_args(&k.instance_args(&s, &ids)) {
            keys.push(String::from_utf8(key).unwrap());
        }
        for key in &keys {
            assert_eq!(Slot::for_key(key), slot, "{key}");
        }
        assert!(k.check_service(&ServiceName::new("a{b}").unwrap()).is_err());
        assert!(Keys::new("sg")
            .unwrap()
            .check_service(&ServiceName::new("a{b}").unwrap())
            .is_ok());
        let group = GroupName::new("w").unwrap();
        for stream in ["orders", "{shop}orders", "a{b"] {
            let stream = StreamName::new(stream).unwrap();
            let due = k.due(&stream, &group);
            assert_eq!(Slot::for_key(&due), Slot::for_key(stream.as_str()), "{due}");
        }
        assert_eq!(
            k.due(&StreamName::new("orders").unwrap(), &group),
            "{orders}:due:w"
        );
    }
}
