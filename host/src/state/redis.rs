//! The Redis backend: every gateway of a cluster pointed at the same Redis
//! shares counters, throttles and values. Keys are `PREFIX PLUGIN : KEY`
//! (`weir:greylist:...`), so one Redis can serve several clusters with
//! different prefixes.
//!
//! One multiplexed connection, managed by redis-rs's connection manager:
//! it is made on first use (a gateway starts while Redis is down) and made
//! again in the background after it breaks; while it is down, operations
//! fail at once or at their deadline, and the caller tells the plugin.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{StateError, Throttle};

/// GCRA on the server's clock (`TIME`), so gateways whose clocks differ
/// still agree. KEYS[1]: the throttle; ARGV: cost, limit, window (ms).
/// Returns {allowed (0/1), remaining, retry-after (ms)}.
const THROTTLE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local limit = math.max(tonumber(ARGV[2]), 1)
local window = tonumber(ARGV[3])
local interval = window / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - window
-- The margin forgives floating-point rounding (GCRA_MARGIN_MS).
if now + 0.01 < allow_at then
  return {0, math.max(math.floor((window - (tat - now)) / interval), 0), math.ceil(allow_at - now)}
end
-- Three decimals: tostring's 14 digits keep one of a millisecond timestamp.
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.max(math.ceil(new_tat - now), 1))
return {1, math.max(math.floor((window - (new_tat - now)) / interval), 0), 0}
";

/// The Redis store.
pub struct Redis {
    manager: ConnectionManager,
    prefix: String,
    /// Where it points, for the logs (the URL without its password).
    endpoint: String,
    throttle: redis::Script,
}

impl Redis {
    /// A store on `url` (`redis://host:port/db`); nothing is connected yet.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("state.url {url:?}: {e}"))?;
        let info = client.get_connection_info();
        let endpoint = format!("{} db {}", info.addr(), info.redis_settings().db());
        // A short connection attempt and few quick retries: while Redis is
        // down, each operation is told so within its deadline, and the
        // next one tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| format!("state.url {url:?}: {e}"))?;
        Ok(Redis {
            manager,
            prefix: prefix.to_string(),
            endpoint,
            throttle: redis::Script::new(THROTTLE),
        })
    }

    pub fn describe(&self) -> &str {
        &self.endpoint
    }

    fn key(&self, scope: &str, key: &str) -> String {
        format!("{}{scope}:{key}", self.prefix)
    }

    pub async fn incr(
        &self,
        scope: &str,
        key: &str,
        by: u64,
        window: Duration,
    ) -> Result<u64, StateError> {
        let key = self.key(scope, key);
        // The window starts at the first increment: the expiry is set only
        // where the key has none (NX, Redis 7).
        let (total,): (u64,) = redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg(&key)
            .arg(by)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(window))
            .arg("NX")
            .ignore()
            .query_async(&mut self.manager.clone())
            .await
            .map_err(unavailable)?;
        Ok(total)
    }

    pub async fn throttle(
        &self,
        scope: &str,
        key: &str,
        cost: u64,
        limit: u64,
        window: Duration,
    ) -> Result<Throttle, StateError> {
        let (allowed, remaining, retry_ms): (u8, u64, u64) = self
            .throttle
            .key(self.key(scope, key))
            .arg(cost)
            .arg(limit)
            .arg(millis(window))
            .invoke_async(&mut self.manager.clone())
            .await
            .map_err(unavailable)?;
        Ok(Throttle {
            allowed: allowed == 1,
            remaining,
            retry_after: Duration::from_millis(retry_ms),
        })
    }

    pub async fn get(&self, scope: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        redis::cmd("GET")
            .arg(self.key(scope, key))
            .query_async(&mut self.manager.clone())
            .await
            .map_err(unavailable)
    }

    pub async fn set(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(scope, key)).arg(value);
        if !ttl.is_zero() {
            cmd.arg("PX").arg(millis(ttl));
        }
        cmd.query_async(&mut self.manager.clone())
            .await
            .map_err(unavailable)
    }

    pub async fn set_if_absent(
        &self,
        scope: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(scope, key)).arg(value).arg("NX");
        if !ttl.is_zero() {
            cmd.arg("PX").arg(millis(ttl));
        }
        // "OK" when stored, nil when the key was there.
        let stored: Option<String> = cmd
            .query_async(&mut self.manager.clone())
            .await
            .map_err(unavailable)?;
        Ok(stored.is_some())
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

fn unavailable(e: redis::RedisError) -> StateError {
    StateError::Unavailable(e.to_string())
}
