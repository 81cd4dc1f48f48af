//! The reference design's stream topology: roles, stream and group names
//! (overridable by the same `SG_*` environment variables), and provisioning.

use crate::{
    error::Result,
    name::{GroupName, InstanceId, StreamName},
    EventBus, StartFrom,
};

/// What a node does, which decides the groups it provisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Publishes inbound messages, consumes its platforms' outbound streams.
    Gateway,
    /// Consumes the inbound stream.
    Worker,
    /// Gateway and worker in one process (tools run in-process).
    Standalone,
    /// Consumes the shared tools stream.
    Tools,
}

/// The platforms a gateway serves when none are given.
pub const DEFAULT_PLATFORMS: [&str; 3] = ["discord", "matrix", "webchat"];

/// Stream and group names every service of the fleet agrees on.
///
/// ```
/// use fleetwire::topology::Topology;
/// let t = Topology::default();
/// assert_eq!(t.inbound.as_str(), "sg:stream:inbound");
/// assert_eq!(t.outbound("discord")?.as_str(), "sg:stream:outbound:discord");
/// assert_eq!(t.gateway_group("discord")?.as_str(), "sg:gateway:discord");
/// # Ok::<(), fleetwire::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Topology {
    /// The shared inbound stream (`SG_INBOUND_STREAM`, default `sg:stream:inbound`).
    pub inbound: StreamName,
    /// Prefix of per-platform outbound streams (`SG_OUTBOUND_STREAM_PREFIX`, default `sg:stream:outbound`).
    pub outbound_prefix: String,
    /// Group of the workers on the inbound stream (`SG_WORKER_GROUP`, default `sg:workers`).
    pub worker_group: GroupName,
    /// Prefix of per-platform gateway groups (`SG_GATEWAY_GROUP_PREFIX`, default `sg:gateway`).
    pub gateway_group_prefix: String,
    /// The shared tools request stream (`SG_TOOLS_STREAM`, default `sg:stream:tools`).
    pub tools: StreamName,
    /// Group of the tools service (`SG_TOOLS_GROUP`, default `sg:tools`).
    pub tools_group: GroupName,
    /// Prefix of per-worker reply streams (`SG_TOOLS_REPLY_STREAM_PREFIX`, default `sg:tools:reply`).
    pub tools_reply_prefix: String,
}

impl Default for Topology {
    fn default() -> Self {
        Self::from_lookup(|_| None).expect("the defaults are valid names")
    }
}

impl Topology {
    /// Names from the `SG_*` environment variables, defaults for the rest.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |k: &str, d: &str| get(k).unwrap_or_else(|| d.to_owned());
        let t = Self {
            inbound: StreamName::new(var("SG_INBOUND_STREAM", "sg:stream:inbound"))?,
            outbound_prefix: var("SG_OUTBOUND_STREAM_PREFIX", "sg:stream:outbound"),
            worker_group: GroupName::new(var("SG_WORKER_GROUP", "sg:workers"))?,
            gateway_group_prefix: var("SG_GATEWAY_GROUP_PREFIX", "sg:gateway"),
            tools: StreamName::new(var("SG_TOOLS_STREAM", "sg:stream:tools"))?,
            tools_group: GroupName::new(var("SG_TOOLS_GROUP", "sg:tools"))?,
            tools_reply_prefix: var("SG_TOOLS_REPLY_STREAM_PREFIX", "sg:tools:reply"),
        };
        // Validate the prefixes once, through a name built on them.
        t.outbound("x")?;
        t.gateway_group("x")?;
        t.tools_reply(&InstanceId::new("x")?)?;
        Ok(t)
    }

    /// `{outbound_prefix}:{platform}`.
    pub fn outbound(&self, platform: &str) -> Result<StreamName> {
        StreamName::new(format!("{}:{platform}", self.outbound_prefix))
    }

    /// `{gateway_group_prefix}:{platform}`.
    pub fn gateway_group(&self, platform: &str) -> Result<GroupName> {
        GroupName::new(format!("{}:{platform}", self.gateway_group_prefix))
    }

    /// `{tools_reply_prefix}:{worker}`, where tools replies to `worker` go.
    pub fn tools_reply(&self, worker: &InstanceId) -> Result<StreamName> {
        StreamName::new(format!("{}:{worker}", self.tools_reply_prefix))
    }

    /// The (stream, group) pairs a node of `role` consumes.
    pub fn groups_for(&self, role: Role, platforms: Option<&[&str]>) -> Result<Vec<(StreamName, GroupName)>> {
        let mut out = Vec::new();
        if matches!(role, Role::Worker | Role::Standalone) {
            out.push((self.inbound.clone(), self.worker_group.clone()));
        }
        if matches!(role, Role::Gateway | Role::Standalone) {
            for p in platforms.unwrap_or(&DEFAULT_PLATFORMS) {
                out.push((self.outbound(p)?, self.gateway_group(p)?));
            }
        }
        if role == Role::Tools {
            out.push((self.tools.clone(), self.tools_group.clone()));
        }
        Ok(out)
    }

    /// Create the groups of `role` (and their streams); existing ones are kept.
    /// Returns the pairs that were newly created.
    ///
    /// # Cancel safety
    /// Safe to drop: each group is created by one idempotent command; call it again.
    pub async fn ensure_streams(
        &self,
        bus: &dyn EventBus,
        role: Role,
        platforms: Option<&[&str]>,
    ) -> Result<Vec<(StreamName, GroupName)>> {
        let mut created = Vec::new();
        for (stream, group) in self.groups_for(role, platforms)? {
            if bus.ensure_group(&stream, &group, StartFrom::Latest).await? {
                tracing::info!(event = "consumer_group_created", stream = %stream, group = %group);
                created.push((stream, group));
            }
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_validation() {
        let t =
            Topology::from_lookup(|k| (k == "SG_INBOUND_STREAM").then(|| "custom:in".to_owned())).unwrap();
        assert_eq!(t.inbound.as_str(), "custom:in");
        assert!(Topology::from_lookup(|k| (k == "SG_WORKER_GROUP").then(|| "bad group".to_owned())).is_err());
        assert!(
            Topology::from_lookup(|k| (k == "SG_OUTBOUND_STREAM_PREFIX").then(|| "a*".to_owned())).is_err()
        );
        let groups = Topology::default()
            .groups_for(Role::Standalone, Some(&["discord"]))
            .unwrap();
        assert_eq!(groups.len(), 2);
        assert!(Topology::default().groups_for(Role::Gateway, None).unwrap().len() == 3);
    }
}
