//! Passwords out of URLs before they reach a log, an error or `Debug`.

/// `url` with every password replaced by `***`: the one in the user info
/// (`redis://user:pw@host`) and any query parameter naming one
/// (`redis+unix:///path?pass=pw`, `?password=pw`).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL redis-rs accepts; whatever it is, it may hold a secret.
        return "(unparsable URL)".to_owned();
    };
    let rest = redact_query(rest);
    // The user info ends at the last `@`, wherever the password's own
    // unescaped characters (`/`, `?`, `#`, `@`) would have put it.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) if !user.contains(['/', '?', '#']) => format!("{scheme}://{user}:***@{host}"),
            Some(_) => format!("{scheme}://***@{host}"),
            // A user name alone is no secret.
            None => format!("{scheme}://{rest}"),
        },
        None => format!("{scheme}://{rest}"),
    }
}

/// Query parameters whose name says "password" get their value replaced.
fn redact_query(rest: &str) -> String {
    let Some((before, query)) = rest.split_once('?') else {
        return rest.to_owned();
    };
    let mut out = format!("{before}?");
    let mut secret = false;
    for (n, param) in query.split('&').enumerate() {
        let name = param.split_once('=').map(|(k, _)| k);
        match name {
            Some(k) if is_secret_name(k) => secret = true,
            // A `&` in a secret value does not end it unless a `name=` follows.
            None if secret => continue,
            _ => secret = false,
        }
        if n > 0 {
            out.push('&');
        }
        match (secret, name) {
            (true, Some(k)) => {
                out.push_str(k);
                out.push_str("=***");
            }
            _ => out.push_str(param),
        }
    }
    out
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token"].iter().any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(super::redact("rediss://me:p@ss@h"), "rediss://me:***@h");
        assert_eq!(super::redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(super::redact("redis://me@h"), "redis://me@h");
        assert_eq!(
            super::redact("redis+unix:///var/run/redis.sock?db=1&pass=S3cret"),
            "redis+unix:///var/run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            super::redact("unix:///s.sock?user=u&pass=a&b&protocol=resp3"),
            "unix:///s.sock?user=u&pass=***&protocol=resp3"
        );
        assert_eq!(
            super::redact("redis://h/0?password=p@w"),
            "redis://h/0?password=***"
        );
        assert_eq!(super::redact("redis://:pa/ss?x@h"), "redis://:***@h");
        assert_eq!(super::redact("redis://u/x:pw@h"), "redis://***@h");
        assert_eq!(super::redact("h:pw@6379"), "(unparsable URL)");
    }
}
