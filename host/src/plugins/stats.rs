//! Per-plugin counters, kept in memory for the metrics endpoint and for
//! `weir plugins ls`: calls, verdicts, failures and a latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

use super::Verdict;

/// Upper bounds of the latency buckets, in microseconds (the last bucket
/// takes the rest).
pub const LATENCY_BOUNDS_US: [u64; 7] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000];

/// Counters of one plugin.
#[derive(Default)]
pub struct Stats {
    calls: AtomicU64,
    verdicts: [AtomicU64; 7],
    traps: AtomicU64,
    timeouts: AtomicU64,
    latency: [AtomicU64; 8],
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    /// Calls made (whatever their outcome).
    pub calls: u64,
    /// Verdicts returned: continue, accept, reject, tempfail, disconnect,
    /// discard, quarantine.
    pub verdicts: [u64; 7],
    /// Calls that trapped or broke a limit (deadline overruns excluded).
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Calls per latency bucket (see [`LATENCY_BOUNDS_US`]).
    pub latency: [u64; 8],
}

/// How a call ended, for the counters.
pub enum Ended<'a> {
    /// The plugin answered.
    Verdict(&'a Verdict),
    /// It trapped or broke a limit.
    Trap,
    /// Its deadline passed.
    Timeout,
}

impl Stats {
    /// Counts one call.
    pub fn record(&self, ended: Ended<'_>, took: Duration) {
        self.calls.fetch_add(1, Relaxed);
        match ended {
            Ended::Verdict(v) => {
                let i = match v {
                    Verdict::Continue => 0,
                    Verdict::Accept => 1,
                    Verdict::Reject(_) => 2,
                    Verdict::Tempfail(_) => 3,
                    Verdict::Disconnect(_) => 4,
                    Verdict::Discard => 5,
                    Verdict::Quarantine(_) => 6,
                };
                self.verdicts[i].fetch_add(1, Relaxed);
            }
            Ended::Trap => {
                self.traps.fetch_add(1, Relaxed);
            }
            Ended::Timeout => {
                self.timeouts.fetch_add(1, Relaxed);
            }
        }
        let us = took.as_micros() as u64;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us < b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[bucket].fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            calls: self.calls.load(Relaxed),
            verdicts: std::array::from_fn(|i| self.verdicts[i].load(Relaxed)),
            traps: self.traps.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            latency: std::array::from_fn(|i| self.latency[i].load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_outcome_and_latency() {
        let s = Stats::default();
        s.record(Ended::Verdict(&Verdict::Accept), Duration::from_micros(5));
        s.record(Ended::Timeout, Duration::from_millis(100));
        s.record(Ended::Trap, Duration::from_secs(3));
        let snap = s.snapshot();
        assert_eq!(snap.calls, 3);
        assert_eq!(snap.verdicts[1], 1);
        assert_eq!((snap.traps, snap.timeouts), (1, 1));
        assert_eq!(snap.latency[1], 1); // 5 µs: under 10 µs
        assert_eq!(snap.latency[6], 1); // 100 ms: under 1 s
        assert_eq!(snap.latency[7], 1); // 3 s: the rest
    }
}
