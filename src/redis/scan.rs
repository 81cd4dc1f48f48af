//! Listing the streams of a database: `SCAN … TYPE stream`, on every
//! primary of a Cluster.

use super::{
    connection::{Conn, Shared},
    RedisBackend,
};
use crate::{error::Result, name::StreamName};
use redis::{Cmd, RedisResult};
use std::{future::Future, sync::Arc};

const WHAT: &str = "list streams (SCAN TYPE stream)";

impl RedisBackend {
    /// Every stream key of the database, sorted: `SCAN … TYPE stream` (on
    /// Cluster, on every primary; on Sentinel, on the current primary).
    ///
    /// For operators' tools (the `fleetwire` CLI lists streams with it): it
    /// walks the whole keyspace, a page of 1,000 keys per round trip, each
    /// within the response timeout. Stream names are Redis keys as given, so
    /// other applications' streams are listed too; keys no fleetwire call
    /// could address (not UTF-8, whitespace, glob characters) are skipped.
    ///
    /// # Cancel safety
    /// Safe to drop: it only reads.
    pub async fn stream_names(&self) -> Result<Vec<StreamName>> {
        let mut keys = Vec::new();
        match self.conn.manager() {
            Shared::Single(manager) => {
                let send = |cmd: Cmd| {
                    let mut c = manager.clone();
                    async move { cmd.query_async(&mut c).await }
                };
                scan_node(&self.conn, send, &mut keys).await?;
            }
            #[cfg(feature = "redis-cluster")]
            Shared::Cluster(routed) => {
                let routes = self.conn.run(|| WHAT.into(), routed.each_primary()).await?;
                for route in routes {
                    let send = |cmd: Cmd| {
                        let (mut c, route) = (routed.connection(), route.clone());
                        async move { Ok(redis::from_redis_value(c.route_command(cmd, route).await?)?) }
                    };
                    scan_node(&self.conn, send, &mut keys).await?;
                }
            }
        }
        let mut names: Vec<StreamName> = keys
            .into_iter()
            .filter_map(|k| StreamName::new(String::from_utf8(k).ok()?).ok())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// One node's stream keys, page by page until its cursor comes back to 0.
async fn scan_node<F, Fut>(conn: &Arc<Conn>, mut send: F, out: &mut Vec<Vec<u8>>) -> Result<()>
where
    F: FnMut(Cmd) -> Fut,
    Fut: Future<Output = RedisResult<(u64, Vec<Vec<u8>>)>>,
{
    let mut cursor = 0u64;
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("COUNT").arg(1000).arg("TYPE").arg("stream");
        let (next, keys) = conn.run(|| WHAT.into(), send(cmd)).await?;
        out.extend(keys);
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
