//! Fleet monitor.
/// Placeholder.
#[derive(Debug)]
pub struct FleetMonitor;
