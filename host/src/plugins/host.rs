//! The host side of the contract: what plugins may call. Each import checks
//! the calling plugin's grants; a call outside them answers the interface's
//! `denied` error (or an error string for the message body), which the
//! plugin sees.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use wasmtime::StoreLimits;
use wasmtime::component::{Resource, ResourceTable};

use super::message::MessageView;
use crate::config::Grant;
use crate::state::State;

/// Bindings generated from `wit/plugin.wit`. DNS and state are async host
/// functions (they wait on the network, or on Redis later); the rest are
/// plain calls.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: {
            "weir:plugin/dns": async | trappable,
            "weir:plugin/state": async | trappable,
            "weir:plugin/auth-results": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        with: {
            "weir:plugin/message.message": super::MessageData,
        },
    });
}

use bindings::weir::plugin::{auth_results, config, dns, log, message, state, transaction, types};

/// The message behind a `message` resource: a view shared by the calls of
/// one chain.
pub struct MessageData(pub Arc<MessageView>);

/// What the imports reach, shared by every plugin.
pub struct Services {
    /// The gateway's resolver (the one delivery uses), if DNS is set up.
    pub resolver: Option<TokioResolver>,
    /// The `state` store.
    pub state: Arc<State>,
    /// The gateway's authserv-id (Authentication-Results).
    pub authserv_id: String,
}

/// Per-store state: WASI (with nothing granted), resources, limits, and the
/// plugin's identity and grants for its imports.
pub struct HostState {
    pub(super) wasi: wasmtime_wasi::WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    pub(super) plugin: Arc<str>,
    pub(super) config: Arc<str>,
    pub(super) grants: Arc<[Grant]>,
    pub(super) services: Arc<Services>,
    /// What the current call is about (`transaction`, `auth-results`).
    pub(super) context: Option<Arc<super::Context>>,
    /// The current call's clock: its deadline measures the plugin's own
    /// time, not the time it spent waiting in host imports.
    pub(super) clock: CallClock,
}

/// One call's deadline, kept so the epoch callback can tell the plugin's
/// own time from time spent waiting in host imports (DNS, state,
/// authentication checks).
///
/// Everything is measured from the call's start, so a plugin cannot earn
/// credit twice for the same wait, and the waits themselves are capped:
/// a call lasts at most `deadline + wait_limit` of wall-clock time.
#[derive(Debug, Clone)]
pub struct CallClock {
    /// When the call started.
    pub started: Instant,
    /// The plugin's own time allowed.
    pub deadline: Duration,
    /// Waiting in host imports allowed on top.
    pub wait_limit: Duration,
    /// Time spent in host imports so far.
    pub waited: Duration,
    /// Time spent yielded to the runtime so far (added by the yields
    /// themselves, which run outside the store).
    pub yielded: Yielded,
}

/// Time a call spent yielded, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Yielded(Arc<std::sync::atomic::AtomicU64>);

impl Yielded {
    /// Counts `d` more.
    pub fn add(&self, d: Duration) {
        self.0
            .fetch_add(d.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts again from zero (a new call).
    pub fn reset(&self) {
        self.0.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl CallClock {
    /// A clock for a call starting now.
    pub fn start(deadline: Duration, wait_limit: Duration) -> CallClock {
        CallClock {
            started: Instant::now(),
            deadline,
            wait_limit,
            waited: Duration::ZERO,
            yielded: Yielded::default(),
        }
    }

    /// The plugin's own time left, or `None` once it has run out (or the
    /// call has waited longer than it may).
    pub fn left(&self) -> Option<Duration> {
        if self.waited > self.wait_limit {
            return None;
        }
        // Time yielded to a busy runtime is given back too, but all the
        // credit together stays within `wait_limit`: a call lasts at most
        // `deadline + wait_limit`, however loaded the gateway.
        let credit = (self.waited + self.yielded.get()).min(self.wait_limit);
        let own = self.started.elapsed().saturating_sub(credit);
        self.deadline.checked_sub(own).filter(|d| !d.is_zero())
    }
}

impl HostState {
    fn granted(&self, g: Grant) -> bool {
        self.grants.contains(&g)
    }
}

impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

type Trappable<T> = wasmtime::Result<T>;

impl types::Host for HostState {}

impl transaction::Host for HostState {
    fn client_ip(&mut self) -> Trappable<String> {
        Ok(self
            .context
            .as_ref()
            .map(|c| c.client.ip().to_string())
            .unwrap_or_default())
    }
    fn client_port(&mut self) -> Trappable<u16> {
        Ok(self.context.as_ref().map_or(0, |c| c.client.port()))
    }
    fn listener(&mut self) -> Trappable<String> {
        Ok(self
            .context
            .as_ref()
            .map(|c| c.listener.clone())
            .unwrap_or_default())
    }
    fn helo(&mut self) -> Trappable<Option<String>> {
        Ok(self.context.as_ref().and_then(|c| c.helo.clone()))
    }
    fn tls(&mut self) -> Trappable<Option<types::TlsInfo>> {
        Ok(self.context.as_ref().and_then(|c| {
            c.tls.as_ref().map(|t| types::TlsInfo {
                version: t.version.clone(),
                cipher: t.cipher.clone(),
            })
        }))
    }
    fn authenticated_user(&mut self) -> Trappable<Option<String>> {
        Ok(self
            .context
            .as_ref()
            .and_then(|c| c.authenticated_user.clone()))
    }
    fn queue_id(&mut self) -> Trappable<Option<String>> {
        Ok(self.context.as_ref().and_then(|c| c.queue_id.clone()))
    }
    fn sender(&mut self) -> Trappable<Option<String>> {
        Ok(self.context.as_ref().and_then(|c| c.sender.clone()))
    }
    fn recipients(&mut self) -> Trappable<Vec<String>> {
        Ok(self
            .context
            .as_ref()
            .map(|c| c.recipients.clone())
            .unwrap_or_default())
    }
    fn tags(&mut self) -> Trappable<Vec<String>> {
        Ok(self
            .context
            .as_ref()
            .map(|c| c.marks().tags)
            .unwrap_or_default())
    }
    fn score(&mut self) -> Trappable<f64> {
        Ok(self.context.as_ref().map_or(0.0, |c| c.marks().score))
    }
    fn is_local_domain(&mut self, domain: String) -> Trappable<bool> {
        Ok(self
            .context
            .as_ref()
            .is_some_and(|c| c.is_local_domain(&domain)))
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> Trappable<()> {
        let plugin = &*self.plugin;
        // One line, whatever the plugin sent.
        let message: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(2000)
            .collect();
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl config::Host for HostState {
    fn get(&mut self) -> Trappable<String> {
        Ok(self.config.to_string())
    }
}

type DnsResult<T> = Trappable<Result<Vec<T>, dns::DnsError>>;

impl HostState {
    /// The resolver, if the plugin may use it. (Taken out of `self` so
    /// that the lookup's future does not hold the store's state.)
    fn resolver(&self) -> Result<TokioResolver, dns::DnsError> {
        if !self.granted(Grant::Dns) {
            return Err(dns::DnsError::Denied);
        }
        self.services
            .resolver
            .clone()
            .ok_or_else(|| dns::DnsError::Temporary("no resolver configured".into()))
    }
}

/// One lookup: the records of `kind` at `name`, each turned into what the
/// plugin gets.
async fn lookup<T>(
    resolver: Result<TokioResolver, dns::DnsError>,
    name: Option<Name>,
    kind: RecordType,
    pick: impl Fn(&RData) -> Option<T>,
) -> DnsResult<T> {
    let resolver = match resolver {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    // A name that does not parse has no records.
    let Some(name) = name else {
        return Ok(Err(dns::DnsError::NotFound));
    };
    Ok(match resolver.lookup(name, kind).await {
        Ok(l) => Ok(l.answers().iter().filter_map(|r| pick(&r.data)).collect()),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(dns::DnsError::NotFound),
        Err(e) => Err(dns::DnsError::Temporary(e.to_string())),
    })
}

/// A name from a plugin, if it parses.
fn name(text: &str) -> Option<Name> {
    Name::from_utf8(text).ok()
}

impl HostState {
    /// Runs `work` (a host import that may wait), counting the time as
    /// waiting only if it really waited (was pending at least once): an
    /// import answered at once (denied, cached) is the plugin's own time,
    /// or a loop over it would never reach its deadline.
    ///
    /// A wait longer than what is left of the call's `wait_limit` stops the
    /// call (as its deadline does): the epoch deadline only ticks while
    /// the plugin runs, so the waits are bounded here.
    async fn waiting<T>(&mut self, work: impl std::future::Future<Output = T>) -> Trappable<T> {
        let started = Instant::now();
        let mut work = std::pin::pin!(work);
        let mut waited = false;
        let budget = self.clock.wait_limit.saturating_sub(self.clock.waited);
        let out = tokio::time::timeout(
            budget,
            std::future::poll_fn(|cx| {
                let poll = work.as_mut().poll(cx);
                waited |= poll.is_pending();
                poll
            }),
        )
        .await;
        if waited {
            self.clock.waited += started.elapsed();
        }
        match out {
            Ok(out) => Ok(out),
            Err(_) => {
                // Past the limit whatever the rounding: the call's error
                // names wait_limit.
                self.clock.waited = self.clock.wait_limit + Duration::from_nanos(1);
                Err(wasmtime::Trap::Interrupt.into())
            }
        }
    }
}

impl dns::Host for HostState {
    async fn lookup_a(&mut self, host: String) -> DnsResult<String> {
        let resolver = self.resolver();
        self.waiting(lookup(resolver, name(&host), RecordType::A, |d| match d {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        }))
        .await?
    }
    async fn lookup_aaaa(&mut self, host: String) -> DnsResult<String> {
        let resolver = self.resolver();
        self.waiting(lookup(
            resolver,
            name(&host),
            RecordType::AAAA,
            |d| match d {
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            },
        ))
        .await?
    }
    async fn lookup_mx(&mut self, domain: String) -> DnsResult<dns::Mx> {
        let resolver = self.resolver();
        self.waiting(lookup(
            resolver,
            name(&domain),
            RecordType::MX,
            |d| match d {
                RData::MX(mx) => Some(dns::Mx {
                    preference: mx.preference,
                    exchange: mx.exchange.to_utf8(),
                }),
                _ => None,
            },
        ))
        .await?
    }
    async fn lookup_txt(&mut self, host: String) -> DnsResult<String> {
        let resolver = self.resolver();
        self.waiting(lookup(
            resolver,
            name(&host),
            RecordType::TXT,
            |d| match d {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect(),
                ),
                _ => None,
            },
        ))
        .await?
    }
    async fn lookup_ptr(&mut self, ip: String) -> DnsResult<String> {
        // The in-addr.arpa / ip6.arpa name of the address.
        let name = ip.parse::<std::net::IpAddr>().ok().map(Name::from);
        let resolver = self.resolver();
        self.waiting(lookup(resolver, name, RecordType::PTR, |d| match d {
            RData::PTR(p) => Some(p.0.to_utf8()),
            _ => None,
        }))
        .await?
    }
}

type StateResult<T> = Trappable<Result<T, state::StateError>>;

impl HostState {
    /// Runs a state operation if the plugin may, counting its wait as
    /// waiting (Redis is on the network) and handing a backend failure to
    /// the plugin as `unavailable`.
    async fn stateful<T, F>(&mut self, op: impl FnOnce(Arc<State>, Arc<str>) -> F) -> StateResult<T>
    where
        F: std::future::Future<Output = Result<T, crate::state::StateError>>,
    {
        if !self.granted(Grant::State) {
            return Ok(Err(state::StateError::Denied));
        }
        let work = op(self.services.state.clone(), self.plugin.clone());
        Ok(self.waiting(work).await?.map_err(|e| match e {
            crate::state::StateError::Unavailable(why) => state::StateError::Unavailable(why),
        }))
    }
}

impl state::Host for HostState {
    async fn incr(&mut self, key: String, by: u64, window: u32) -> StateResult<u64> {
        let window = Duration::from_secs(u64::from(window.max(1)));
        self.stateful(|s, p| async move { s.incr(&p, &key, by, window).await })
            .await
    }
    async fn throttle(
        &mut self,
        key: String,
        cost: u64,
        limit: u64,
        window_ms: u64,
    ) -> StateResult<state::Throttled> {
        let window = Duration::from_millis(window_ms.max(1));
        self.stateful(|s, p| async move {
            let t = s.throttle(&p, &key, cost, limit, window).await?;
            Ok(state::Throttled {
                allowed: t.allowed,
                remaining: t.remaining,
                retry_after_ms: t.retry_after.as_millis() as u64,
            })
        })
        .await
    }
    async fn get(&mut self, key: String) -> StateResult<Option<Vec<u8>>> {
        self.stateful(|s, p| async move { s.get(&p, &key).await })
            .await
    }
    async fn set(&mut self, key: String, value: Vec<u8>, ttl: u32) -> StateResult<()> {
        let ttl = Duration::from_secs(u64::from(ttl));
        self.stateful(|s, p| async move { s.set(&p, &key, value, ttl).await })
            .await
    }
    async fn set_if_absent(&mut self, key: String, value: Vec<u8>, ttl: u32) -> StateResult<bool> {
        let ttl = Duration::from_secs(u64::from(ttl));
        self.stateful(|s, p| async move { s.set_if_absent(&p, &key, value, ttl).await })
            .await
    }
}

impl HostState {
    /// The transaction's results so far (computed on the first ask).
    async fn auth_results(&mut self) -> Trappable<Vec<crate::auth::AuthResult>> {
        match self.context.as_ref().and_then(|c| c.auth.clone()) {
            Some(t) => self.waiting(t.results()).await,
            None => Ok(Vec::new()),
        }
    }
}

impl auth_results::Host for HostState {
    async fn results(&mut self) -> Trappable<Vec<auth_results::AuthResult>> {
        use crate::auth::Outcome as O;
        use auth_results::Outcome as W;
        Ok(self
            .auth_results()
            .await?
            .into_iter()
            .map(|r| auth_results::AuthResult {
                method: r.method.as_str().to_string(),
                outcome: match r.outcome {
                    O::None => W::None,
                    O::Pass => W::Pass,
                    O::Fail => W::Fail,
                    O::SoftFail => W::Softfail,
                    O::Neutral => W::Neutral,
                    O::TempError => W::Temperror,
                    O::PermError => W::Permerror,
                    O::Policy => W::Policy,
                },
                reason: r.reason,
                properties: r
                    .properties
                    .into_iter()
                    .map(|p| auth_results::Property {
                        name: p.name,
                        value: p.value,
                    })
                    .collect(),
            })
            .collect())
    }
    async fn authserv_id(&mut self) -> Trappable<String> {
        Ok(self.services.authserv_id.clone())
    }
    async fn header_value(&mut self) -> Trappable<String> {
        let results = self.auth_results().await?;
        Ok(crate::auth::header_value(
            &self.services.authserv_id,
            &results,
        ))
    }
}

impl message::Host for HostState {}

impl HostState {
    fn view(&self, msg: &Resource<MessageData>) -> wasmtime::Result<Arc<MessageView>> {
        Ok(self.table.get(msg)?.0.clone())
    }
}

impl message::HostMessage for HostState {
    fn raw_size(&mut self, msg: Resource<MessageData>) -> Trappable<u64> {
        Ok(self.view(&msg)?.raw().len() as u64)
    }
    fn headers(&mut self, msg: Resource<MessageData>) -> Trappable<Vec<types::Header>> {
        Ok(self.view(&msg)?.headers().to_vec())
    }
    fn header(&mut self, msg: Resource<MessageData>, name: String) -> Trappable<Vec<String>> {
        Ok(self.view(&msg)?.header(&name))
    }
    fn parts(&mut self, msg: Resource<MessageData>) -> Trappable<Vec<types::PartInfo>> {
        Ok(self.view(&msg)?.parts())
    }
    fn part_bytes(
        &mut self,
        msg: Resource<MessageData>,
        id: u32,
    ) -> Trappable<Result<Vec<u8>, String>> {
        if !self.granted(Grant::Body) {
            return Ok(Err("denied: the plugin has no `body` grant".into()));
        }
        let view = self.view(&msg)?;
        Ok(view
            .part_bytes(id)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| format!("no part {id}")))
    }
    fn part_range(
        &mut self,
        msg: Resource<MessageData>,
        id: u32,
        offset: u64,
        len: u32,
    ) -> Trappable<Result<Vec<u8>, String>> {
        if !self.granted(Grant::Body) {
            return Ok(Err("denied: the plugin has no `body` grant".into()));
        }
        let view = self.view(&msg)?;
        Ok(match view.part_bytes(id) {
            None => Err(format!("no part {id}")),
            Some(bytes) => {
                let start = (offset.min(bytes.len() as u64)) as usize;
                let end = start.saturating_add(len as usize).min(bytes.len());
                Ok(bytes[start..end].to_vec())
            }
        })
    }
    fn raw(&mut self, msg: Resource<MessageData>) -> Trappable<Result<Vec<u8>, String>> {
        if !self.granted(Grant::Body) {
            return Ok(Err("denied: the plugin has no `body` grant".into()));
        }
        Ok(Ok(self.view(&msg)?.raw().to_vec()))
    }
    fn drop(&mut self, msg: Resource<MessageData>) -> wasmtime::Result<()> {
        self.table.delete(msg)?;
        Ok(())
    }
}
