//! Name validation: never a panic, and an accepted name never carries what
//! would break a Redis key or pattern.
#![no_main]

use fleetwire::{ConsumerName, GroupName, InstanceId, ServiceName, StreamName, Topic, TopicPattern};
use libfuzzer_sys::fuzz_target;

fn key_safe(s: &str, allow_colon: bool) -> bool {
    !s.is_empty()
        && s.len() <= fleetwire::MAX_NAME_LEN
        && s.chars().all(|c| {
            !c.is_control() && !c.is_whitespace() && !"*?[]\\".contains(c) && (allow_colon || c != ':')
        })
}

fuzz_target!(|s: &str| {
    assert_eq!(ServiceName::new(s).is_ok(), key_safe(s, false));
    assert_eq!(InstanceId::new(s).is_ok(), key_safe(s, false));
    assert_eq!(StreamName::new(s).is_ok(), key_safe(s, true));
    assert_eq!(GroupName::new(s).is_ok(), key_safe(s, true));
    assert_eq!(ConsumerName::new(s).is_ok(), key_safe(s, true));
    if let Ok(t) = Topic::new(s) {
        assert!(key_safe(t.as_str(), false) && !t.as_str().contains('*'));
        assert!(TopicPattern::new(s).is_ok(), "every topic is a pattern matching itself");
        assert!(TopicPattern::new(s).unwrap().matches(&t));
    }
    if let Ok(p) = TopicPattern::new(s) {
        assert!(p.as_str().split('.').all(|tok| tok == "*" || !tok.contains('*')));
    }
});
