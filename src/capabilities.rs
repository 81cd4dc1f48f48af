//! What a backend can do, so conformance suites and callers adapt instead of skipping.

/// Capability flags of one backend instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Writes are kept and read back (false only for no-op backends).
    pub stores_data: bool,
    /// Other processes see the same data (Redis), not just this one (memory).
    pub shared_across_processes: bool,
    /// How many entries above its cap a trimmed stream may stay: Redis trims
    /// `MAXLEN ~` in whole radix-tree nodes (100 entries by default), memory trims exactly.
    pub trim_slack: u64,
}

impl Capabilities {
    /// A backend that keeps data in this process and trims exactly.
    pub const MEMORY: Self = Self {
        stores_data: true,
        shared_across_processes: false,
        trim_slack: 0,
    };
    /// A backend that keeps nothing.
    pub const NOOP: Self = Self {
        stores_data: false,
        shared_across_processes: false,
        trim_slack: 0,
    };
    /// A shared store with approximate trimming in nodes of `trim_slack` entries.
    pub const fn shared(trim_slack: u64) -> Self {
        Self {
            stores_data: true,
            shared_across_processes: true,
            trim_slack,
        }
    }
}
