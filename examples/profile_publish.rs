//! 200,000 in-memory publishes, for `valgrind --tool=callgrind` (see BENCHMARKS.md).
use fleetwire::{memory::MemoryBus, Envelope, EventBus, StreamName};

fn main() {
    let env = Envelope::new("message.inbound")
        .with_trace_id("6f1c2a9e-93f1-4a57-b0b2-1d0e6f3a2c11")
        .with_header("platform", "discord")
        .with_header("channel_id", "1234567890")
        .with_raw_payload(vec![b'x'; 100]);
    let bus = MemoryBus::builder().max_len(1000).build();
    let s = StreamName::new("profile").unwrap();
    let encode_only = std::env::args().any(|a| a == "--encode-only");
    let codec = fleetwire::Codec::default();
    async_io::block_on(async {
        for _ in 0..200_000 {
            if encode_only {
                std::hint::black_box(codec.encode(&env).unwrap());
            } else {
                bus.publish(&s, &env).await.unwrap();
            }
        }
    });
}
