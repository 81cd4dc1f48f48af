//! What the connected server can do, read once from `INFO server`.
//!
//! Used for fast paths that only newer servers have; Redis 7.0 is the
//! baseline every path works on.

use super::connection::Shared as ConnectionManager;
use std::sync::atomic::{AtomicU8, Ordering};

/// A Redis version, `major.minor.patch`.
pub(crate) type Version = (u32, u32, u32);

/// The first version whose `XTRIM` takes `ACKED` (trim only entries every
/// consumer group has read and acknowledged).
pub(crate) const ACKED_TRIM_SINCE: Version = (8, 2, 0);

/// `redis_version:x.y.z` out of an `INFO` reply.
pub(crate) fn parse_version(info: &str) -> Option<Version> {
    let line = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let mut parts = line.trim().split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether the server trims with `ACKED`, detected on first use.
///
/// Detection is one `INFO server` per backend; until it has succeeded the
/// answer is "no" (the Redis 7.0 path, correct on every server). The append
/// script falls back to its own safe-point trim if `ACKED` is refused, so a
/// failover to an older server stays correct too.
#[derive(Debug)]
pub(crate) struct AckedTrim(AtomicU8); // 0: not yet known

const NO: u8 = 1;
const YES: u8 = 2;

impl AckedTrim {
    /// Detect on first use (`None`), or always / never use `ACKED`.
    pub(crate) fn new(fixed: Option<bool>) -> Self {
        Self(AtomicU8::new(match fixed {
            None => 0,
            Some(false) => NO,
            Some(true) => YES,
        }))
    }

    /// The cached answer, detecting it first when unknown. A server that
    /// refuses `INFO` (an ACL, a renamed command) counts as older; a lost
    /// connection answers "no" this time and detects again on the next call.
    pub(crate) async fn get(&self, conn: &mut ConnectionManager) -> bool {
        match self.0.load(Ordering::Relaxed) {
            YES => return true,
            NO => return false,
            _ => {}
        }
        let info: redis::RedisResult<String> = redis::cmd("INFO").arg("server").query_async(conn).await;
        let info = match info {
            Ok(info) => info,
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => return false,
            Err(_) => String::new(), // refused: NOPERM, a renamed command
        };
        let yes = parse_version(&info).is_some_and(|v| v >= ACKED_TRIM_SINCE);
        tracing::debug!(acked_trim = yes, "detected the server's stream trimming");
        self.0.store(if yes { YES } else { NO }, Ordering::Relaxed);
        yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(parse_version(info), Some((7, 0, 15)));
        assert_eq!(parse_version("redis_version:8.2.1\r\n"), Some((8, 2, 1)));
        assert_eq!(parse_version("redis_version:8.2\r\n"), Some((8, 2, 0)));
        assert_eq!(parse_version("redis_version:255.255.255"), Some((255, 255, 255)));
        assert_eq!(parse_version("# Server\r\nother:1\r\n"), None);
        assert_eq!(parse_version("redis_version:x.y\r\n"), None);
    }

    #[test]
    fn acked_trim_starts_at_8_2() {
        assert!((8, 1, 9) < ACKED_TRIM_SINCE);
        assert!((8, 2, 0) >= ACKED_TRIM_SINCE);
        assert!((9, 0, 0) >= ACKED_TRIM_SINCE);
        assert!((7, 4, 2) < ACKED_TRIM_SINCE);
    }
}
