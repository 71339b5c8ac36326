//! The benchmark harness behind `cargo run --release -p test-support --bin bench` (SPEC §23.3).
//!
//! Sub-benchmarks live in the `bench` binary; this module holds what they share:
//! - [`server`]: find (or build) the release `appstrate` binary, start it in a fresh temporary directory,
//!   time boot to `/health` 200, run its CLI with the same environment, stop it with SIGTERM;
//! - [`load`]: a fixed-duration, closed-loop HTTP/1.1 load generator (one keep-alive connection per worker)
//!   with a latency histogram and per-status error counts;
//! - [`report`]: tables and the final PASS/MISS summary;
//! - [`proc`]: process memory from `/proc/<pid>/status`;
//! - [`client`]: one-off HTTP requests for setting up fixtures;
//! - [`runs`]: run benchmarks: keep-alive API calls, first runner events from the realtime stream,
//!   runner peak memory;
//! - [`docker`]: Docker mode: run start with and without run slots, image sizes, engine floor;
//! - [`fixtures`]: rows inserted straight into the server's SQLite database (e.g. many API keys);
//! - [`history`]: a long history seeded in SQLite and PostgreSQL, measured against an empty one;
//! - [`mcp`]: listing the tools of a stdio MCP server through the sidecar at run start.

pub mod client;
pub mod dashboard;
pub mod docker;
pub mod fixtures;
pub mod history;
pub mod load;
pub mod mcp;
pub mod proc;
pub mod report;
pub mod runs;
pub mod server;

use std::time::Duration;

/// Milliseconds with two decimals, the unit every figure is printed in.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `(min, median, max)` of a non-empty sample; `None` when empty.
pub fn min_median_max(sample: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    if sample.is_empty() {
        return None;
    }
    let mut s = sample.to_vec();
    s.sort();
    Some((s[0], s[s.len() / 2], s[s.len() - 1]))
}

/// The number of CPUs this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let d = |n| Duration::from_millis(n);
        assert_eq!(min_median_max(&[]), None);
        assert_eq!(
            min_median_max(&[d(5), d(1), d(3)]),
            Some((d(1), d(3), d(5)))
        );
        assert_eq!(
            min_median_max(&[d(4), d(1), d(3), d(2)]),
            Some((d(1), d(3), d(4)))
        );
    }
}
