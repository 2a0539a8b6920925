//! The embedded backend: this process's memory, shared by every instance
//! and every connection of this gateway, gone at restart. The semantics
//! are the module's (see [`super`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sweep expired entries once this many operations have passed.
const SWEEP_EVERY: u32 = 4096;

/// The in-memory store.
#[derive(Default)]
pub struct Memory {
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<(String, String), Entry>,
    ops: u32,
    /// Throttles keep their times as ms since this instant.
    epoch: Instant,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            entries: HashMap::new(),
            ops: 0,
            epoch: Instant::now(),
        }
    }
}

enum Entry {
    Counter {
        total: u64,
        until: Instant,
    },
    Value {
        bytes: Vec<u8>,
        until: Option<Instant>,
    },
    /// A throttle's theoretical arrival time, in ms since `epoch`.
    Throttle {
        tat: f64,
        until: Instant,
    },
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        match self {
            Entry::Counter { until, .. } | Entry::Throttle { until, .. } => *until > now,
            Entry::Value { until, .. } => until.is_none_or(|u| u > now),
        }
    }
}

impl Memory {
    /// Adds `by` to `plugin`'s counter `key` and returns the new total; a
    /// counter older than `window` starts again from zero.
    pub fn incr(&self, plugin: &str, key: &str, by: u64, window: Duration) -> u64 {
        let now = Instant::now();
        let mut inner = self.lock(now);
        let entry = inner
            .entries
            .entry((plugin.to_string(), key.to_string()))
            .or_insert(Entry::Counter {
                total: 0,
                until: now + window,
            });
        match entry {
            Entry::Counter { total, until } if *until > now => {
                *total = total.saturating_add(by);
                *total
            }
            // Expired, or a value stored under the same key: start anew.
            other => {
                *other = Entry::Counter {
                    total: by,
                    until: now + window,
                };
                by
            }
        }
    }

    /// Counts `cost` events against `limit` per `window` (GCRA).
    pub fn throttle(
        &self,
        plugin: &str,
        key: &str,
        cost: u64,
        limit: u64,
        window: Duration,
    ) -> super::Throttle {
        let now = Instant::now();
        let mut inner = self.lock(now);
        let at = |i: Instant| i.duration_since(inner.epoch).as_secs_f64() * 1000.0;
        let now_ms = at(now);
        let k = (plugin.to_string(), key.to_string());
        let tat = match inner.entries.get(&k) {
            Some(Entry::Throttle { tat, until }) if *until > now => Some(*tat),
            _ => None,
        };
        let (verdict, next) = super::gcra(tat, now_ms, cost, limit, window.as_secs_f64() * 1000.0);
        if let Some(tat) = next {
            let until = now + Duration::from_secs_f64(((tat - now_ms) / 1000.0).max(0.0));
            inner.entries.insert(k, Entry::Throttle { tat, until });
        }
        verdict
    }

    /// The live value of `plugin`'s `key`.
    pub fn get(&self, plugin: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let inner = self.lock(now);
        match inner.entries.get(&(plugin.to_string(), key.to_string())) {
            Some(e @ Entry::Value { bytes, .. }) if e.live(now) => Some(bytes.clone()),
            Some(e @ Entry::Counter { total, .. }) if e.live(now) => {
                Some(total.to_string().into_bytes())
            }
            // A throttle's timestamp means nothing to a reader.
            _ => None,
        }
    }

    /// Stores `value` for `ttl` (zero: no expiry).
    pub fn set(&self, plugin: &str, key: &str, value: Vec<u8>, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock(now);
        inner.entries.insert(
            (plugin.to_string(), key.to_string()),
            value_entry(value, ttl, now),
        );
    }

    /// Stores `value` only if the key holds nothing live; true if stored.
    pub fn set_if_absent(&self, plugin: &str, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut inner = self.lock(now);
        let k = (plugin.to_string(), key.to_string());
        if inner.entries.get(&k).is_some_and(|e| e.live(now)) {
            return false;
        }
        inner.entries.insert(k, value_entry(value, ttl, now));
        true
    }

    /// The lock, sweeping expired entries now and then so the map does not
    /// grow without bound.
    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Inner> {
        let mut inner = self.inner.lock().expect("state store poisoned");
        inner.ops += 1;
        if inner.ops >= SWEEP_EVERY {
            inner.ops = 0;
            inner.entries.retain(|_, e| e.live(now));
        }
        inner
    }
}

fn value_entry(bytes: Vec<u8>, ttl: Duration, now: Instant) -> Entry {
    Entry::Value {
        bytes,
        until: (!ttl.is_zero()).then(|| now + ttl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_counts_within_its_window_and_starts_again_after() {
        let s = Memory::default();
        let w = Duration::from_millis(50);
        assert_eq!(s.incr("p", "k", 1, w), 1);
        assert_eq!(s.incr("p", "k", 2, w), 3);
        // Another plugin's key of the same name is another counter.
        assert_eq!(s.incr("q", "k", 1, w), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.incr("p", "k", 1, w), 1);
    }

    #[test]
    fn values_expire_and_set_if_absent_is_once_only() {
        let s = Memory::default();
        assert!(s.set_if_absent("p", "grey", b"1".to_vec(), Duration::from_millis(50)));
        assert!(!s.set_if_absent("p", "grey", b"2".to_vec(), Duration::ZERO));
        assert_eq!(s.get("p", "grey").as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("q", "grey"), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.get("p", "grey"), None);
        assert!(s.set_if_absent("p", "grey", b"3".to_vec(), Duration::ZERO));
        s.set("p", "v", b"x".to_vec(), Duration::ZERO);
        assert_eq!(s.get("p", "v").as_deref(), Some(&b"x"[..]));
    }
}
