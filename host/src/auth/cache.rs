//! mail-auth's record caches: SPF, DKIM-key and DMARC records kept parsed,
//! and the PTR, address and MX sets the checks resolve, each until its DNS
//! TTL runs out. Without them every transaction asked the resolver again
//! and parsed the same SPF and DMARC records again (about a fifth of the
//! authentication checks' cost, measured in `bench/`). Answers that are
//! errors (NXDOMAIN, timeouts) are not kept here; the resolver's own
//! cache has them.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use mail_auth::{MX, Parameters, RecordSet, ResolverCache, Txt};
use moka::Expiry;
use moka::sync::Cache;

/// Entries each cache keeps at most (least recently used go first).
const CAPACITY: u64 = 10_000;

/// One cache per record type, as mail-auth's `Parameters` take them.
pub struct Caches {
    /// TXT records, parsed: SPF, DKIM keys, DMARC.
    pub txt: Records<Box<str>, Txt>,
    /// MX sets (SPF's `mx` mechanism).
    pub mx: Records<Box<str>, RecordSet<MX>>,
    /// A sets.
    pub ipv4: Records<Box<str>, RecordSet<Ipv4Addr>>,
    /// AAAA sets.
    pub ipv6: Records<Box<str>, RecordSet<Ipv6Addr>>,
    /// PTR sets (iprev, SPF's `ptr`).
    pub ptr: Records<IpAddr, RecordSet<Box<str>>>,
}

impl Caches {
    /// Empty caches.
    pub fn new() -> Caches {
        Caches {
            txt: Records::new(),
            mx: Records::new(),
            ipv4: Records::new(),
            ipv6: Records::new(),
            ptr: Records::new(),
        }
    }
}

/// mail-auth's parameters for a check, with these caches.
pub type Cached<'x, P> = Parameters<
    'x,
    P,
    Records<Box<str>, Txt>,
    Records<Box<str>, RecordSet<MX>>,
    Records<Box<str>, RecordSet<Ipv4Addr>>,
    Records<Box<str>, RecordSet<Ipv6Addr>>,
    Records<IpAddr, RecordSet<Box<str>>>,
>;

impl Caches {
    /// `params` for one of mail-auth's checks, looking in these caches
    /// first.
    pub fn with<P>(&self, params: P) -> Cached<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
            .with_ptr_cache(&self.ptr)
    }
}

impl Default for Caches {
    fn default() -> Self {
        Caches::new()
    }
}

/// Values kept until the instant mail-auth gives with each.
pub struct Records<K, V>(Cache<K, (V, Instant)>);

/// An entry lives until its `valid_until`.
struct UntilValid;

impl<K, V> Expiry<K, (V, Instant)> for UntilValid {
    fn expire_after_create(&self, _: &K, value: &(V, Instant), now: Instant) -> Option<Duration> {
        Some(value.1.saturating_duration_since(now))
    }
}

impl<K, V> Records<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn new() -> Records<K, V> {
        Records(
            Cache::builder()
                .max_capacity(CAPACITY)
                .expire_after(UntilValid)
                .build(),
        )
    }
}

impl<K, V> ResolverCache<K, V> for Records<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).map(|(v, _)| v)
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.0.insert(key, (value, valid_until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_until_their_ttl() {
        let c: Records<IpAddr, RecordSet<Box<str>>> = Records::new();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let set = RecordSet {
            rrset: vec!["mx.example.".into()].into(),
            dnssec_status: Default::default(),
        };
        c.insert(ip, set.clone(), Instant::now() + Duration::from_secs(60));
        assert_eq!(c.get(&ip), Some(set.clone()));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        c.insert(other, set, Instant::now());
        assert_eq!(c.get(&other), None, "an entry valid until now is gone");
        assert!(c.remove(&ip).is_some());
        assert_eq!(c.get(&ip), None);
    }
}
