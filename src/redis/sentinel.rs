//! Redis Sentinel: the primary is found through the Sentinels, and the
//! backend's connections follow it across a failover.
//!
//! A URL `redis+sentinel://[user:password@]host:port,host:port/<master>[/<db>]`
//! names the Sentinels (port 26379 when left out) and the master name they
//! monitor; the user, password and database are those of the data nodes.
//! `?sentinel_username=..&sentinel_password=..` authenticate to the Sentinels.
//!
//! [`RedisBackendBuilder::build`](super::RedisBackendBuilder::build) asks the
//! Sentinels once (all within the connect timeout) and points the
//! backend at the primary they name, after that node confirmed with `ROLE`
//! that it is a primary: reads and writes never go to a replica. A follower
//! task then re-asks on every `+switch-master` a Sentinel announces, at once
//! when a registry or liveness call finds the server gone or read-only, and
//! once a second otherwise; a new primary replaces the backend's connections (one atomic
//! pointer swap) without rebuilding anything.

use super::connection::{Conn, Endpoint, Settings};
use crate::{
    error::{Error, Result},
    rt,
};
use futures_util::StreamExt;
use redis::{
    sentinel::{Sentinel, SentinelNodeConnectionInfo},
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
};
use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

/// The URL scheme that selects Sentinel.
pub(crate) const SCHEME: &str = "redis+sentinel://";

/// How often the follower re-asks the Sentinels with nothing to prompt it.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Shortest pause between two questions to the Sentinels, however often
/// failing calls prompt one.
const MIN_GAP: Duration = Duration::from_millis(50);

/// A parsed `redis+sentinel://` URL.
#[derive(Clone)]
pub(crate) struct Target {
    sentinels: Vec<(String, u16)>,
    master: String,
    node: RedisConnectionInfo,
    sentinel_auth: RedisConnectionInfo,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

fn bad(url: &str, problem: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "invalid Sentinel URL `{}`: {problem} (expected redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/<db>])",
        super::connection::redact(url)
    ))
}

/// Percent-decoding of a user name or password (`%40` for `@`).
fn decode(url: &str, s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(url, "a `%` in the user info is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(url, "the user info is not UTF-8 once decoded"))
}

/// The bad-port message; with user info in the URL the token may be a piece
/// of a password cut off at an unescaped `/` or `?`, so it is not echoed.
fn not_a_port(url: &str, port: &str, host: &str) -> String {
    if url.contains('@') {
        "a Sentinel address has a port that is not a number (percent-encode any `/`, `?` or `@` in the password)".into()
    } else {
        format!("`{port}` is not a port (in `{host}`)")
    }
}

impl Target {
    /// Parse `url`; `None` when it is not a Sentinel URL at all.
    pub(crate) fn parse(url: &str) -> Result<Option<Self>> {
        let Some(rest) = url.strip_prefix(SCHEME) else {
            return Ok(None);
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| {
            bad(
                url,
                "no master name: add `/<master-name>` after the Sentinel addresses",
            )
        })?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let mut node = RedisConnectionInfo::default();
        if let Some(userinfo) = userinfo {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                node = node.set_username(decode(url, user)?);
            }
            if let Some(p) = password.filter(|p| !p.is_empty()) {
                node = node.set_password(decode(url, p)?);
            }
        }
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad(url, "an empty Sentinel address"));
            }
            let (name, port) = match host.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let port = p
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad(url, not_a_port(url, p, host)))?;
                    (h, port)
                }
                _ => (host, 26379),
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(bad(url, format!("no host in `{host}`")));
            }
            sentinels.push((name.to_owned(), port));
        }
        let mut segments = path.split('/');
        let master = segments.next().unwrap_or_default();
        if master.is_empty() {
            return Err(bad(
                url,
                "no master name: add `/<master-name>` after the Sentinel addresses",
            ));
        }
        if let Some(db) = segments.next().filter(|d| !d.is_empty()) {
            let db = db
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| bad(url, format!("`{db}` is not a database number")))?;
            node = node.set_db(db);
        }
        if segments.any(|s| !s.is_empty()) {
            return Err(bad(url, "too many path segments after the master name"));
        }
        let mut sentinel_auth = RedisConnectionInfo::default();
        for param in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
        {
            match param.split_once('=') {
                Some(("sentinel_username", v)) => sentinel_auth = sentinel_auth.set_username(decode(url, v)?),
                Some(("sentinel_password", v)) => sentinel_auth = sentinel_auth.set_password(decode(url, v)?),
                _ => {
                    let name = param.split_once('=').map_or(param, |(k, _)| k);
                    return Err(bad(
                        url,
                        format!("unknown parameter `{name}` (known: sentinel_username, sentinel_password)"),
                    ));
                }
            }
        }
        Ok(Some(Self {
            sentinels,
            master: master.to_owned(),
            node,
            sentinel_auth,
        }))
    }

    /// The connection info of one Sentinel.
    fn sentinel_info(&self, (host, port): &(String, u16)) -> ConnectionInfo {
        ConnectionAddr::Tcp(host.clone(), *port)
            .into_connection_info()
            .expect("a TCP address always converts")
            .set_redis_settings(self.sentinel_auth.clone())
    }

    /// The connection info of the data node at `addr`.
    fn node_info(&self, addr: ConnectionAddr) -> ConnectionInfo {
        addr.into_connection_info()
            .expect("a TCP address always converts")
            .set_redis_settings(self.node.clone())
    }

    /// Ask the Sentinels in turn, synchronously, all within `timeout`, for a
    /// primary that confirms its role. Used once, by `build`.
    fn discover_blocking(&self, timeout: Duration) -> std::result::Result<ConnectionAddr, String> {
        let deadline = Instant::now() + timeout;
        let mut why = String::from("no Sentinel answered");
        for s in &self.sentinels {
            if left(deadline).is_none() {
                why = format!("{why}; no time left for the others within the connect timeout ({timeout:?})");
                break;
            }
            match self.ask_blocking(s, deadline) {
                Ok(addr) => return Ok(addr),
                Err(e) => why = format!("Sentinel {}:{}: {e}", s.0, s.1),
            }
        }
        Err(why)
    }

    /// Ask one Sentinel, then check the role of the node it names; every
    /// connect and read gets only what is left until `deadline`.
    fn ask_blocking(&self, s: &(String, u16), deadline: Instant) -> redis::RedisResult<ConnectionAddr> {
        let mut c = redis::Client::open(quick(self.sentinel_info(s)))?
            .get_connection_with_timeout(time_left(deadline)?)?;
        c.set_read_timeout(Some(time_left(deadline)?))?;
        let (host, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query(&mut c)?;
        let addr = ConnectionAddr::Tcp(host, port);
        let mut node = redis::Client::open(quick(self.node_info(addr.clone())))?
            .get_connection_with_timeout(time_left(deadline)?)?;
        node.set_read_timeout(Some(time_left(deadline)?))?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut node)?;
        match role.first() {
            Some(redis::Value::BulkString(r)) if r == b"master" => Ok(addr),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "the node the Sentinel named is not a primary (yet)",
            ))),
        }
    }
}

/// `info` without the `CLIENT SETINFO` handshake: redis-rs ignores its
/// errors, timeouts included, so a hung server would cost one timeout per
/// command of it.
fn quick(info: ConnectionInfo) -> ConnectionInfo {
    let redis = info.redis_settings().clone().set_skip_set_lib_name();
    info.set_redis_settings(redis)
}

/// Time left until `deadline`, `None` below a millisecond (a zero timeout
/// would mean "wait forever" to a socket).
fn left(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|d| *d >= Duration::from_millis(1))
}

fn time_left(deadline: Instant) -> redis::RedisResult<Duration> {
    left(deadline).ok_or_else(|| {
        redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the connect timeout ran out",
        ))
    })
}

/// Build the connection state for `target`: the primary the Sentinels name
/// now, or (when none does) an endpoint that refuses until the follower finds one.
pub(crate) fn connect(target: Target, settings: Settings, redacted_url: String) -> Result<Arc<Conn>> {
    let found = target.discover_blocking(settings.connect_timeout);
    let (addr, why) = match &found {
        Ok(addr) => (addr.clone(), None),
        // Port 0 refuses at once: calls fail fast while no primary is known.
        Err(why) => (ConnectionAddr::Tcp("127.0.0.1".into(), 0), Some(why.clone())),
    };
    let client = redis::Client::open(target.node_info(addr.clone()))
        .map_err(|e| super::connection::map_err(e, "open the primary's client"))?;
    let endpoint = Endpoint::new(client, &settings, &redacted_url)?;
    let conn = Conn::new(endpoint, settings, redacted_url);
    if let Some(why) = why {
        conn.mark_down(format!(
            "no Sentinel named a primary for `{}` yet ({why})",
            target.master
        ));
    } else {
        tracing::info!(event = "sentinel_primary", master = %target.master, addr = %addr, "Sentinel named the primary");
    }
    let target = Arc::new(target);
    rt::spawn_detached(follow(
        Arc::downgrade(&conn),
        target.clone(),
        settings,
        found.ok(),
    ));
    rt::spawn_detached(listen_switches(Arc::downgrade(&conn), target));
    Ok(conn)
}

/// Re-ask the Sentinels when prompted or every [`POLL_EVERY`]; swap in a new
/// primary's connections when they name one. Ends with the backend.
async fn follow(
    conn: Weak<Conn>,
    target: Arc<Target>,
    settings: Settings,
    mut current: Option<ConnectionAddr>,
) {
    let infos: Vec<ConnectionInfo> = target.sentinels.iter().map(|s| target.sentinel_info(s)).collect();
    let mut sentinel = match Sentinel::build(infos) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(event = "sentinel_follower_failed", master = %target.master, error = %e, "failovers will not be followed");
            return;
        }
    };
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(target.node.clone());
    let budget = settings.connect_timeout + settings.response_timeout;
    let mut last_asked = std::time::Instant::now();
    let mut watch = Watch::default();
    loop {
        let prompt = match conn.upgrade() {
            Some(c) => c.suspect.listen(),
            None => return,
        };
        let woke = futures_util::future::select(prompt, Box::pin(rt::sleep(POLL_EVERY))).await;
        let prompted = matches!(woke, futures_util::future::Either::Left(_));
        if let Some(wait) = MIN_GAP.checked_sub(last_asked.elapsed()) {
            rt::sleep(wait).await;
        }
        last_asked = std::time::Instant::now();
        // The routine check is one command on a kept Sentinel connection; the
        // full question (which also opens a connection to the node for `ROLE`)
        // only when prompted or when the Sentinels name another node.
        if !prompted && current.is_some() && watch.named(&target, budget).await == current {
            continue;
        }
        let asked = rt::timeout(budget, sentinel.async_master_for(&target.master, Some(&node))).await;
        let Some(conn) = conn.upgrade() else {
            return;
        };
        let client = match asked {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                tracing::debug!(event = "sentinel_ask_failed", master = %target.master, error = %e);
                continue;
            }
            Err(rt::Elapsed) => {
                tracing::debug!(event = "sentinel_ask_failed", master = %target.master, error = "no answer in time");
                continue;
            }
        };
        let addr = client.get_connection_info().addr().clone();
        if current.as_ref() == Some(&addr) {
            continue;
        }
        match Endpoint::new(client, &settings, &conn.redacted_url) {
            Ok(endpoint) => {
                conn.endpoint.store(Arc::new(endpoint));
                tracing::warn!(
                    event = "sentinel_failover",
                    master = %target.master,
                    from = %current.as_ref().map(|a| a.to_string()).unwrap_or_else(|| "(none)".into()),
                    to = %addr,
                    "following the new primary"
                );
                current = Some(addr);
            }
            Err(e) => tracing::warn!(event = "sentinel_switch_failed", error = %e),
        }
    }
}

/// A kept connection to one Sentinel, for the routine "who is primary?".
#[derive(Default)]
struct Watch {
    conn: Option<redis::aio::MultiplexedConnection>,
    next: usize,
}

impl Watch {
    /// The address the Sentinels name now (`None` when none answers).
    async fn named(&mut self, target: &Target, budget: Duration) -> Option<ConnectionAddr> {
        for _ in 0..target.sentinels.len() {
            if self.conn.is_none() {
                let s = &target.sentinels[self.next % target.sentinels.len()];
                self.next += 1;
                let client = redis::Client::open(target.sentinel_info(s)).ok()?;
                self.conn = rt::timeout(budget, client.get_multiplexed_async_connection())
                    .await
                    .ok()
                    .and_then(|c| c.ok());
            }
            let Some(c) = self.conn.as_mut() else {
                continue;
            };
            let mut ask = redis::cmd("SENTINEL");
            ask.arg("get-master-addr-by-name").arg(&target.master);
            match rt::timeout(budget, ask.query_async::<Option<(String, u16)>>(c)).await {
                Ok(Ok(named)) => return named.map(|(host, port)| ConnectionAddr::Tcp(host, port)),
                _ => self.conn = None,
            }
        }
        None
    }
}

/// Subscribe to `+switch-master` on one Sentinel after another, prompting
/// the follower on each announcement. Ends with the backend.
async fn listen_switches(conn: Weak<Conn>, target: Arc<Target>) {
    let mut next = 0usize;
    loop {
        let s = &target.sentinels[next % target.sentinels.len()];
        next += 1;
        if let Ok(client) = redis::Client::open(target.sentinel_info(s)) {
            if let Ok(Ok(mut pubsub)) = rt::timeout(Duration::from_secs(2), client.get_async_pubsub()).await {
                // A Sentinel that accepts the connection but never answers
                // must not hold this task (and its socket) forever.
                let subscribed =
                    rt::timeout(Duration::from_secs(2), pubsub.subscribe("+switch-master")).await;
                if matches!(subscribed, Ok(Ok(()))) {
                    let mut messages = pubsub.on_message();
                    loop {
                        // Wake up now and then to notice a dropped backend.
                        match rt::timeout(Duration::from_secs(5), messages.next()).await {
                            Ok(Some(_)) => match conn.upgrade() {
                                Some(c) => {
                                    c.suspect.notify(usize::MAX);
                                }
                                None => return,
                            },
                            Ok(None) => break,
                            Err(rt::Elapsed) if conn.strong_count() == 0 => return,
                            Err(rt::Elapsed) => {}
                        }
                    }
                }
            }
        }
        if conn.strong_count() == 0 {
            return;
        }
        rt::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn parses_sentinel_urls() {
        let t = Target::parse("redis+sentinel://:pw@a:1,b:2,c/m/3?sentinel_password=sp")
            .unwrap()
            .unwrap();
        assert_eq!(
            t.sentinels,
            vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 26379)]
        );
        assert_eq!(t.master, "m");
        assert_eq!(t.node.db(), 3);
        assert_eq!(t.node.password(), Some("pw"));
        assert_eq!(t.sentinel_auth.password(), Some("sp"));
        assert!(Target::parse("redis://h").unwrap().is_none());
    }

    #[test]
    fn rejects_malformed_sentinel_urls() {
        for (url, says) in [
            ("redis+sentinel://a:1", "no master name"),
            ("redis+sentinel://a:1/", "no master name"),
            ("redis+sentinel://a:x/m", "`x` is not a port"),
            ("redis+sentinel://a:1,,b:2/m", "empty Sentinel address"),
            ("redis+sentinel://:1/m", "no host"),
            ("redis+sentinel://a/m/x", "`x` is not a database number"),
            ("redis+sentinel://a/m/1/2", "too many path segments"),
            ("redis+sentinel://:s3cret@a/m?x=1", "unknown parameter `x`"),
            // An unescaped `/` cuts the password; its first half is not echoed.
            ("redis+sentinel://app:s3cret/tail@a/m", "percent-encode"),
        ] {
            let e = Target::parse(url).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(says), "{url}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }
}
