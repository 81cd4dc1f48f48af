//! Arbitrary bytes → `Result<Envelope>`: never a panic, never past the size limit.
#![no_main]

use fleetwire::{Codec, Envelope};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let codec = Codec::new(LIMIT);
    if let Ok(env) = codec.decode(data) {
        assert!(data.len() <= LIMIT);
        // What decodes re-encodes, and round-trips.
        let again = codec.encode(&env).expect("a decoded envelope re-encodes");
        assert_eq!(codec.decode(&again).expect("re-decodes"), env);
        let _ = env.payload_as::<Envelope>();
    }
});
