//! The embedded backend: this process's memory, shared by every instance
//! and every connection of this gateway, gone at restart. The semantics
//! are the module's (see [`super`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sweep expired entries once this many operations have passed.
const SWEEP_EVERY: u32 = 4096;

/// The in-memory store.
pub struct Memory {
    inner: Mutex<Inner>,
}

impl Default for Memory {
    fn default() -> Memory {
        Memory::new(crate::config::StateConfig::default().max_entries)
    }
}

struct Inner {
    entries: HashMap<(String, String), Entry>,
    ops: u32,
    /// Throttles keep their times as ms since this instant.
    epoch: Instant,
    /// The most entries kept (`state.max_entries`).
    max_entries: usize,
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
    fn until(&self) -> Option<Instant> {
        match self {
            Entry::Counter { until, .. } | Entry::Throttle { until, .. } => Some(*until),
            Entry::Value { until, .. } => *until,
        }
    }

    fn live(&self, now: Instant) -> bool {
        match self {
            Entry::Counter { until, .. } | Entry::Throttle { until, .. } => *until > now,
            Entry::Value { until, .. } => until.is_none_or(|u| u > now),
        }
    }
}

impl Memory {
    /// A store of at most `max_entries` keys.
    pub fn new(max_entries: usize) -> Memory {
        Memory {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                ops: 0,
                epoch: Instant::now(),
                max_entries: max_entries.max(1),
            }),
        }
    }

    /// Adds `by` to `plugin`'s counter `key` and returns the new total; a
    /// counter older than `window` starts again from zero.
    pub fn incr(&self, plugin: &str, key: &str, by: u64, window: Duration) -> u64 {
        let now = Instant::now();
        let mut inner = self.lock(now);
        let k = (plugin.to_string(), key.to_string());
        inner.room_for(&k, now);
        let entry = inner.entries.entry(k).or_insert(Entry::Counter {
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
            inner.room_for(&k, now);
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
        let k = (plugin.to_string(), key.to_string());
        inner.room_for(&k, now);
        inner.entries.insert(k, value_entry(value, ttl, now));
    }

    /// Stores `value` only if the key holds nothing live; true if stored.
    pub fn set_if_absent(&self, plugin: &str, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut inner = self.lock(now);
        let k = (plugin.to_string(), key.to_string());
        if inner.entries.get(&k).is_some_and(|e| e.live(now)) {
            return false;
        }
        inner.room_for(&k, now);
        inner.entries.insert(k, value_entry(value, ttl, now));
        true
    }

    /// The lock, sweeping expired entries now and then so the map does not
    /// keep what has expired (new keys make room when it is full:
    /// [`Inner::room_for`]).
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

impl Inner {
    /// Room for `key` if it is new and the store is full.
    fn room_for(&mut self, key: &(String, String), now: Instant) {
        if self.entries.len() >= self.max_entries && !self.entries.contains_key(key) {
            self.make_room(now);
        }
    }

    /// Drops the expired entries and, if that is not enough, a tenth of
    /// the store, those closest to expiring first (what is lost is what
    /// would have gone soonest anyway; values without an expiry go last).
    /// A tenth at a time, so the sort is paid once per many new keys.
    fn make_room(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.live(now));
        if self.entries.len() < self.max_entries {
            return;
        }
        let drop = (self.max_entries / 10).max(1);
        let mut by_expiry: Vec<(Option<Instant>, (String, String))> = self
            .entries
            .iter()
            .map(|(k, e)| (e.until(), k.clone()))
            .collect();
        // `None` (no expiry) sorts first in Option's order: put it last.
        by_expiry.sort_by_key(|(until, _)| (until.is_none(), *until));
        for (_, k) in by_expiry.into_iter().take(drop) {
            self.entries.remove(&k);
        }
        tracing::warn!(
            max_entries = self.max_entries,
            dropped = drop,
            "state store full: dropped the entries closest to expiring (raise state.max_entries, or use Redis)"
        );
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
    fn a_full_store_drops_what_expires_soonest_and_keeps_the_rest() {
        let s = Memory::new(10);
        let long = Duration::from_secs(3600);
        s.set("p", "forever", b"1".to_vec(), Duration::ZERO);
        for i in 0..9 {
            s.set(
                "p",
                &format!("k{i}"),
                b"x".to_vec(),
                long + Duration::from_secs(i),
            );
        }
        // Full: the next key makes room by dropping k0, the soonest to go.
        s.set("p", "new", b"y".to_vec(), long);
        assert_eq!(s.get("p", "k0"), None);
        assert!(s.get("p", "k1").is_some() && s.get("p", "new").is_some());
        assert!(s.get("p", "forever").is_some());
        for i in 0..100 {
            s.incr("p", &format!("c{i}"), 1, long);
        }
        assert!(s.inner.lock().unwrap().entries.len() <= 10);
        assert!(s.get("p", "forever").is_some(), "no expiry goes last");
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
