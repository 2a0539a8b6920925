//! Shared state: the counters, throttles and values behind the plugins'
//! `state` import, kept in this process's memory (the embedded default) or
//! in Redis, so that every gateway of a cluster counts and remembers
//! together.
//!
//! The semantics are the same for both backends:
//! - a counter (`incr`) is a fixed window, started by its first increment
//!   and reset `window` later (Redis: `INCRBY`, `PEXPIRE ... NX`);
//! - a throttle (`throttle`) is a token bucket that holds `limit` tokens
//!   and refills them evenly over `window` (GCRA: one timestamp per key,
//!   in Redis a script that reads the server's clock, so gateways whose
//!   clocks differ still agree); an event over the limit is refused and
//!   not counted;
//! - a value lives until its TTL runs out (0: forever); `set_if_absent`
//!   stores only where nothing lives;
//! - keys are scoped to a plugin (its name), so two plugins never see each
//!   other's.
//!
//! Distrusts: Redis, which may be down, slow or gone mid-run. Every
//! operation has a deadline (`state.timeout`); a backend that cannot answer
//! in time is an [`StateError::Unavailable`] the plugin sees and decides on
//! (the bundled plugins document what they then do), logged at most once
//! per ten seconds. Never a crash, never a wait past the deadline.

mod memory;
mod redis;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{StateBackend, StateConfig};

/// Why an operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backend could not be reached or did not answer in time.
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
}

/// What a throttle said of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The event is within the limit (and was counted).
    pub allowed: bool,
    /// Events still allowed right now.
    pub remaining: u64,
    /// When refused: how long until this event would be allowed.
    pub retry_after: Duration,
}

/// The store every plugin's `state` import reaches.
pub struct State {
    backend: Backend,
    timeout: Duration,
    /// When unavailability was last logged (one line per ten seconds).
    logged: Mutex<Option<Instant>>,
}

enum Backend {
    Memory(memory::Memory),
    Redis(redis::Redis),
}

impl Default for State {
    /// The embedded store.
    fn default() -> State {
        State::memory()
    }
}

impl State {
    /// The embedded store (this process's memory).
    pub fn memory() -> State {
        State {
            backend: Backend::Memory(memory::Memory::default()),
            timeout: Duration::from_secs(1),
            logged: Mutex::new(None),
        }
    }

    /// The store the configuration names. Redis is connected lazily: a
    /// gateway starts, and serves, while Redis is down.
    pub fn new(config: &StateConfig) -> Result<State, String> {
        let backend = match config.backend {
            StateBackend::Memory => Backend::Memory(memory::Memory::new(config.max_entries)),
            StateBackend::Redis => {
                let url = config
                    .url
                    .as_deref()
                    .ok_or("state.url is required with state.backend = \"redis\"")?;
                Backend::Redis(redis::Redis::new(url, &config.prefix, config.timeout)?)
            }
        };
        Ok(State {
            backend,
            timeout: config.timeout,
            logged: Mutex::new(None),
        })
    }

    /// Which backend this is, for the logs.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Memory(_) => "memory".into(),
            Backend::Redis(r) => format!("redis ({})", r.describe()),
        }
    }

    /// Adds `by` to `scope`'s counter `key` and returns the new total.
    pub async fn incr(
        &self,
        scope: &str,
        key: &str,
        by: u64,
        window: Duration,
    ) -> Result<u64, StateError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.incr(scope, key, by, window)),
            Backend::Redis(r) => self.bounded(r.incr(scope, key, by, window)).await,
        }
    }

    /// Counts `cost` events against `limit` per `window` on `scope`'s
    /// throttle `key`.
    pub async fn throttle(
        &self,
        scope: &str,
        key: &str,
        cost: u64,
        limit: u64,
        window: Duration,
    ) -> Result<Throttle, StateError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.throttle(scope, key, cost, limit, window)),
            Backend::Redis(r) => {
                self.bounded(r.throttle(scope, key, cost, limit, window))
                    .await
            }
        }
    }

    /// The live value of `scope`'s `key`.
    pub async fn get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.get(scope, key)),
            Backend::Redis(r) => self.bounded(r.get(scope, key)).await,
        }
    }

    /// Stores `value` for `ttl` (zero: no expiry).
    pub async fn set(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        match &self.backend {
            Backend::Memory(m) => {
                m.set(scope, key, value, ttl);
                Ok(())
            }
            Backend::Redis(r) => self.bounded(r.set(scope, key, value, ttl)).await,
        }
    }

    /// Stores `value` only if the key holds nothing live; true if stored.
    pub async fn set_if_absent(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        match &self.backend {
            Backend::Memory(m) => Ok(m.set_if_absent(scope, key, value, ttl)),
            Backend::Redis(r) => self.bounded(r.set_if_absent(scope, key, value, ttl)).await,
        }
    }

    /// Runs a backend operation under the deadline; failures are logged
    /// (now and then) and handed on.
    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        };
        if let Err(StateError::Unavailable(why)) = &result {
            let now = Instant::now();
            let mut logged = self.logged.lock().expect("state log gate poisoned");
            if logged.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
                *logged = Some(now);
                tracing::warn!(backend = %self.describe(), reason = %why, "state backend unavailable; plugins are told so and apply their fallback");
            }
        }
        result
    }
}

/// What GCRA's comparison forgives of floating-point rounding, in ms
/// (times in Redis are ms since 1970, whose last bit is about 0.0002 ms).
pub(crate) const GCRA_MARGIN_MS: f64 = 0.01;

/// GCRA, shared by both backends: given the key's theoretical arrival time
/// `tat` (ms, or `None`), the time `now` (ms), returns the verdict and the
/// new arrival time to store if the event is allowed.
pub(crate) fn gcra(
    tat: Option<f64>,
    now: f64,
    cost: u64,
    limit: u64,
    window_ms: f64,
) -> (Throttle, Option<f64>) {
    let limit = limit.max(1) as f64;
    let interval = window_ms / limit;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat + cost as f64 * interval;
    let allow_at = new_tat - window_ms;
    // Floating point: `now + window - window` need not be `now` again, so
    // the comparison allows a margin far below any rate's resolution.
    if now + GCRA_MARGIN_MS < allow_at {
        let remaining = ((window_ms - (tat - now)) / interval).floor().max(0.0) as u64;
        let wait = Duration::from_micros(((allow_at - now) * 1000.0).ceil() as u64);
        return (
            Throttle {
                allowed: false,
                remaining,
                retry_after: wait,
            },
            None,
        );
    }
    let remaining = ((window_ms - (new_tat - now)) / interval).floor().max(0.0) as u64;
    (
        Throttle {
            allowed: true,
            remaining,
            retry_after: Duration::ZERO,
        },
        Some(new_tat),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_never_refuses_what_the_limit_allows() {
        // Times as Redis has them (ms since 1970) and odd limits.
        for limit in [1, 3, 7, 10, 1000] {
            for now in [1_733_000_000_123.456, 0.1, 17.000_001] {
                let mut tat = None;
                for i in 0..limit {
                    let (t, next) = gcra(tat, now, 1, limit, 1000.0);
                    assert!(t.allowed, "limit {limit}, event {i}, now {now}");
                    tat = next;
                }
                assert!(!gcra(tat, now, 1, limit, 1000.0).0.allowed);
            }
        }
    }

    #[test]
    fn a_throttle_allows_its_limit_at_once_refuses_the_next_and_recovers_over_the_window() {
        let w = 1000.0;
        let mut tat = None;
        for i in 0..5 {
            let (t, next) = gcra(tat, 0.0, 1, 5, w);
            assert!(t.allowed, "event {i}");
            assert_eq!(t.remaining, 4 - i);
            tat = next;
        }
        let (t, next) = gcra(tat, 0.0, 1, 5, w);
        assert!(!t.allowed);
        assert_eq!(next, None, "a refused event is not counted");
        assert_eq!(t.retry_after, Duration::from_millis(200));
        // One token back every window/limit ...
        let (t, _) = gcra(tat, 200.0, 1, 5, w);
        assert!(t.allowed && t.remaining == 0);
        // ... and the whole bucket after the window.
        let (t, _) = gcra(tat, 1000.0, 5, 5, w);
        assert!(t.allowed);
        let (t, _) = gcra(tat, 999.0, 5, 5, w);
        assert!(!t.allowed);
    }
}
