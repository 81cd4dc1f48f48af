//! One million publishes to an in-memory stream capped at 1000 entries:
//! resident memory must stay flat. Also counts heap allocations per publish.
//!
//!     cargo bench --bench memory_flat

use fleetwire::{memory::MemoryBus, Codec, EventBus, StreamName};
mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn main() {
    // cargo bench passes `--bench`; nothing else to parse.
    let env = common::envelope();
    let bus = MemoryBus::builder().max_len(1000).build();
    let s = StreamName::new("flat").unwrap();
    async_io::block_on(async {
        for _ in 0..10_000 {
            bus.publish(&s, &env).await.unwrap();
        }
        let codec = Codec::default();
        let before = ALLOCS.load(Relaxed);
        for _ in 0..10_000 {
            std::hint::black_box(codec.encode(&env).unwrap());
        }
        let encode = (ALLOCS.load(Relaxed) - before) as f64 / 10_000.0;
        let before = ALLOCS.load(Relaxed);
        for _ in 0..10_000 {
            bus.publish(&s, &env).await.unwrap();
        }
        let publish = (ALLOCS.load(Relaxed) - before) as f64 / 10_000.0;
        println!("allocations per call: encode alone {encode:.2}, memory publish {publish:.2}");

        let start = rss_kib();
        println!("{:>9} publishes  rss {:>7} KiB", 0, start);
        let mut last = start;
        for round in 1..=10 {
            for _ in 0..100_000 {
                bus.publish(&s, &env).await.unwrap();
            }
            last = rss_kib();
            println!("{:>9} publishes  rss {:>7} KiB", round * 100_000, last);
        }
        let len = bus.stream_info(&s).await.unwrap().length;
        println!(
            "stream length {len}; rss grew {} KiB over 1,000,000 publishes",
            last as i64 - start as i64
        );
    });
}
