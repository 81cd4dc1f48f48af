//! The topic matcher agrees with a plain reference matcher.
#![no_main]

use arbitrary::Arbitrary;
use fleetwire::{Topic, TopicPattern};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    pattern: &'a str,
    topic: &'a str,
}

/// Reference: collect both token lists, equal length, each token equal or `*`.
fn reference(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    p.len() == t.len() && p.iter().zip(&t).all(|(p, t)| *p == "*" || p == t)
}

fuzz_target!(|input: Input<'_>| {
    if let (Ok(p), Ok(t)) = (TopicPattern::new(input.pattern), Topic::new(input.topic)) {
        assert_eq!(p.matches(&t), reference(input.pattern, input.topic), "{input:?}");
    }
});
