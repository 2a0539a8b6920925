//! The plugin runtime: WebAssembly components (the `plugin` world of
//! `wit/plugin.wit`) run by wasmtime at the hooks of a transaction.
//!
//! Duty: load each `NAME.wasm` the chains name (compiled once, through the
//! on-disk cache, never on the hot path), keep a pool of ready instances per
//! plugin, run a listener's chain at a hook, and turn the verdicts into an
//! [`Outcome`] and a list of mutations. Reloads build a new [`Generation`]
//! beside the serving one and swap it in only when every plugin loaded;
//! sessions keep the generation they started with.
//!
//! Distrusts: the plugins. Every call runs under an epoch deadline and a
//! memory limit; WASI is linked with nothing granted (no files, sockets,
//! environment or inherited stdio), and the host imports check the
//! plugin's grants. A trap, an overrun or a breach is logged with the
//! plugin's name, the instance is dropped (a trapped instance cannot be
//! entered again), and the chain's `on_error` policy answers.
//!
//! Never: touches a socket or a file on behalf of a plugin.

mod cache;
mod host;
pub mod message;
mod pool;
pub mod stats;

pub use host::bindings as host_bindings;
pub use host::{HostState, Services};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder,
};

pub use host::bindings::weir::plugin::types::{
    Decision, DeliveryOutcome, Header, Hook, Mutation, PartReplacement, Reply as PluginReply,
    Verdict,
};
pub use message::MessageView;

use crate::config::{ChainEntry, Grant, ListenerConfig, OnError, PluginSettings, PluginsConfig};
use crate::smtp::{Enhanced, Reply};

/// Epoch ticks: the deadline's resolution.
const TICK: Duration = Duration::from_millis(5);
/// Memory the engine's instance slots are sized for, at least.
const MIN_SLOT_MEMORY: u64 = 64 << 20;

/// Why the plugins could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The engine could not be set up.
    #[error("plugin runtime: {0}")]
    Engine(String),
    /// A plugin named in a chain has no `NAME.wasm`.
    #[error("plugin {name}: {path} not found")]
    Missing {
        /// The plugin.
        name: String,
        /// Where it was looked for.
        path: String,
    },
    /// A file is not a valid component, or imports what the host lacks.
    #[error("plugin {name}: {reason}")]
    Invalid {
        /// The plugin.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// `init` refused its configuration.
    #[error("plugin {name} refused its configuration: {reason}")]
    Refused {
        /// The plugin.
        name: String,
        /// Its message.
        reason: String,
    },
}

/// What a chain decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go on (accept, subject to the gateway's own checks).
    Continue,
    /// Answer with this reply (4xx or 5xx).
    Refuse(Reply),
    /// Answer with this reply, then close.
    Disconnect(Reply),
    /// (data, pre-delivery) Accept, then drop the message.
    Discard {
        /// The plugin that decided.
        plugin: String,
    },
    /// (data, pre-delivery) Accept into the quarantine.
    Quarantine {
        /// The plugin that decided.
        plugin: String,
        /// Its reason.
        reason: String,
    },
}

/// A chain's verdict and the changes its plugins asked for, in order.
#[derive(Debug)]
pub struct ChainResult {
    /// The outcome.
    pub outcome: Outcome,
    /// Mutations to apply if the message goes on.
    pub mutations: Vec<Mutation>,
}

/// What a hook call is about: the session and the envelope, which plugins
/// read through the `transaction` import. Built once per chain run and
/// shared by its calls; nothing of it is copied into a plugin that does
/// not ask.
#[derive(Debug)]
pub struct Context {
    /// The client's address and port.
    pub client: std::net::SocketAddr,
    /// The listener that took the connection.
    pub listener: String,
    /// The EHLO/HELO argument, once given.
    pub helo: Option<String>,
    /// TLS, if the session is encrypted.
    pub tls: Option<crate::queue::TlsInfo>,
    /// The authenticated user, if any.
    pub authenticated_user: Option<String>,
    /// The queue id, from MAIL FROM on.
    pub queue_id: Option<String>,
    /// The reverse path, from MAIL FROM on.
    pub sender: Option<String>,
    /// The recipients so far (at delivery: those of this attempt).
    pub recipients: Vec<String>,
    /// The receiving transaction's authentication checks, for
    /// `auth-results` (none outside a receiving transaction).
    pub auth: Option<Arc<crate::auth::Transaction>>,
    /// The listener's own domains (`is-local-domain`).
    pub local_domains: Arc<[String]>,
    /// Tags and score so far: updated as each plugin of the chain returns,
    /// so the next one sees them.
    pub marks: std::sync::Mutex<Marks>,
}

/// The tags and score of a transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marks {
    /// Tags, in the order they were attached.
    pub tags: Vec<String>,
    /// Sum of the scores added.
    pub score: f64,
}

impl Context {
    /// A session from `client` on `listener` that has told nothing yet.
    pub fn new(client: std::net::SocketAddr, listener: &str) -> Context {
        Context {
            client,
            listener: listener.to_string(),
            helo: None,
            tls: None,
            authenticated_user: None,
            queue_id: None,
            sender: None,
            recipients: Vec::new(),
            auth: None,
            local_domains: Arc::from([]),
            marks: Default::default(),
        }
    }

    /// The tags and score so far.
    pub fn marks(&self) -> Marks {
        self.marks.lock().expect("marks poisoned").clone()
    }

    /// Whether `domain` is one of the listener's own.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.local_domains
            .iter()
            .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
    }
}

/// What a hook is given besides its [`Context`]: what it decides on.
pub enum HookArgs<'a> {
    /// A client connected.
    Connect,
    /// EHLO/HELO, with the name.
    Helo(&'a str),
    /// MAIL FROM, with the reverse path.
    MailFrom(&'a str),
    /// RCPT TO, with the recipient.
    Rcpt(&'a str),
    /// End of data.
    Data(Arc<MessageView>),
    /// Before delivery to a destination.
    PreDelivery(&'a str, Arc<MessageView>),
    /// After a delivery attempt.
    DeliveryResult(&'a [DeliveryOutcome]),
}

impl HookArgs<'_> {
    /// The hook these arguments are for.
    pub fn hook(&self) -> Hook {
        match self {
            HookArgs::Connect => Hook::Connect,
            HookArgs::Helo(_) => Hook::Helo,
            HookArgs::MailFrom(_) => Hook::MailFrom,
            HookArgs::Rcpt(_) => Hook::Rcpt,
            HookArgs::Data(_) => Hook::Data,
            HookArgs::PreDelivery(..) => Hook::PreDelivery,
            HookArgs::DeliveryResult(_) => Hook::DeliveryResult,
        }
    }

    /// The message, at the hooks that have one.
    pub fn message(&self) -> Option<&Arc<MessageView>> {
        match self {
            HookArgs::Data(m) | HookArgs::PreDelivery(_, m) => Some(m),
            _ => None,
        }
    }
}

fn hook_index(hook: Hook) -> usize {
    match hook {
        Hook::Connect => 0,
        Hook::Helo => 1,
        Hook::MailFrom => 2,
        Hook::Rcpt => 3,
        Hook::Data => 4,
        Hook::PreDelivery => 5,
        Hook::DeliveryResult => 6,
    }
}

/// The hooks' names as the configuration spells them, in [`Hook`] order.
const HOOK_NAMES: [&str; 7] = [
    "connect",
    "helo",
    "mail_from",
    "rcpt",
    "data",
    "pre_delivery",
    "delivery_result",
];

/// The hook's name as the configuration spells it.
pub fn hook_name(hook: Hook) -> &'static str {
    HOOK_NAMES[hook_index(hook)]
}

/// One loaded plugin (a `.wasm` with one configuration).
pub struct Plugin {
    /// Its name (the file's stem).
    pub name: Arc<str>,
    /// The name plus, for a chain entry with its own configuration, a
    /// suffix that tells the two apart.
    pub key: String,
    /// The configuration its instances got.
    pub config: Arc<str>,
    /// Its grants and limits.
    pub settings: PluginSettings,
    grants: Arc<[Grant]>,
    /// SHA-256 of the `.wasm`.
    pub digest: String,
    /// Whether its compiled form came from the cache.
    pub cached: bool,
    /// The hooks it implements.
    pub hooks: Vec<Hook>,
    /// Its counters.
    pub stats: stats::Stats,
    pre: host::bindings::PluginPre<HostState>,
    services: Arc<Services>,
    memory_limit: usize,
    /// Ready instances, each in its own store, already given `init`.
    /// (Boxed: a ready instance is large, and moves in and out at every
    /// call.)
    pool: pool::Pool<Box<Ready>>,
}

struct Ready {
    store: Store<HostState>,
    instance: host::bindings::Plugin,
}

// Every call runs on a fiber (wasmtime's `call_async`), woken every epoch
// tick to yield to the runtime: a plugin that computes for a second does
// not stop its thread's other sessions, nor the runtime's I/O, for that
// second. (A synchronous path for plugins without the waiting imports was
// tried and dropped: wasmtime-wasi's synchronous streams block on the
// runtime from inside it, so a plugin's panic message crashed its task.)

/// A plugin in a chain, with the entry's failure policy.
#[derive(Clone)]
pub struct Link {
    /// The plugin.
    pub plugin: Arc<Plugin>,
    /// What a failure of it means.
    pub on_error: OnError,
}

/// One set of loaded plugins and the chains that use them. Swapped whole
/// on reload.
pub struct Generation {
    /// Loaded plugins by key.
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    /// Per listener, per hook (in [`Hook`] order).
    chains: HashMap<String, [Vec<Link>; 7]>,
}

impl Generation {
    /// No plugins at all.
    pub fn empty() -> Generation {
        Generation {
            plugins: BTreeMap::new(),
            chains: HashMap::new(),
        }
    }

    /// The chain of `listener` at `hook` (empty if none).
    pub fn chain(&self, listener: &str, hook: Hook) -> &[Link] {
        self.chains
            .get(listener)
            .map(|c| c[hook_index(hook)].as_slice())
            .unwrap_or(&[])
    }

    /// Whether `listener` has plugins at `hook`: ask first, and build the
    /// hook's arguments only then.
    pub fn has_chain(&self, listener: &str, hook: Hook) -> bool {
        !self.chain(listener, hook).is_empty()
    }

    /// Runs the chain of the context's listener for `args`: the first
    /// plugin with an opinion decides; mutations are collected from every
    /// plugin that ran.
    pub async fn run(&self, context: &Arc<Context>, args: HookArgs<'_>) -> ChainResult {
        let hook = args.hook();
        let mut mutations = Vec::new();
        for link in self.chain(&context.listener, hook) {
            let plugin = &link.plugin;
            if !plugin.hooks.contains(&hook) {
                continue;
            }
            let decision = match plugin.call(context, &args).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(plugin = %plugin.name, hook = hook_name(hook), error = %e, "plugin failed; on_error applies");
                    match link.on_error {
                        OnError::Continue => continue,
                        OnError::Tempfail => {
                            return ChainResult {
                                outcome: Outcome::Refuse(Reply::new(
                                    451,
                                    Enhanced(4, 3, 0),
                                    "Temporary policy failure, try again later",
                                )),
                                mutations,
                            };
                        }
                    }
                }
            };
            let changes_message = decision
                .mutations
                .iter()
                .any(|m| !matches!(m, Mutation::Tag(_) | Mutation::AddScore(_)));
            let may_modify = plugin.grants.contains(&Grant::Modify);
            // Each plugin's changes apply all or none, on their own: one
            // plugin's bad header must not cost another's changes.
            let unfit = match args.message() {
                Some(view) if changes_message && may_modify => {
                    message::check(view, &decision.mutations).err()
                }
                _ => None,
            };
            let kept: Vec<Mutation> = if let Some(e) = unfit {
                tracing::warn!(plugin = %plugin.name, hook = hook_name(hook), error = %e, "plugin's changes not applied (all or none)");
                Vec::new()
            } else if changes_message && !may_modify {
                tracing::warn!(plugin = %plugin.name, hook = hook_name(hook), "plugin asked for changes without the `modify` grant; ignored");
                decision
                    .mutations
                    .into_iter()
                    .filter(|m| matches!(m, Mutation::Tag(_) | Mutation::AddScore(_)))
                    .collect()
            } else {
                decision.mutations
            };
            // Tags and score kept are for the plugins after this one too.
            {
                let mut marks = context.marks.lock().expect("marks poisoned");
                for m in &kept {
                    match m {
                        Mutation::Tag(t) => marks.tags.push(t.clone()),
                        Mutation::AddScore(s) if s.is_finite() => marks.score += s,
                        _ => {}
                    }
                }
            }
            mutations.extend(kept);
            let data_stage = matches!(hook, Hook::Data | Hook::PreDelivery);
            let name = &plugin.name;
            let outcome = match decision.verdict {
                Verdict::Continue => continue,
                Verdict::Discard | Verdict::Quarantine(_) if !data_stage => continue,
                Verdict::Accept => Outcome::Continue,
                Verdict::Reject(r) => Outcome::Refuse(to_reply(name, r, 5)),
                Verdict::Tempfail(r) => Outcome::Refuse(to_reply(name, r, 4)),
                Verdict::Disconnect(r) => {
                    let class = if r.code == 421 { 4 } else { 5 };
                    Outcome::Disconnect(to_reply(name, r, class))
                }
                Verdict::Discard => Outcome::Discard {
                    plugin: name.to_string(),
                },
                Verdict::Quarantine(reason) => Outcome::Quarantine {
                    plugin: name.to_string(),
                    reason,
                },
            };
            return ChainResult { outcome, mutations };
        }
        ChainResult {
            outcome: Outcome::Continue,
            mutations,
        }
    }

    /// Each listener's chains, for `weir plugins ls`: (listener, hook,
    /// plugin keys in order).
    pub fn describe_chains(&self) -> Vec<(String, &'static str, Vec<String>)> {
        let mut out = Vec::new();
        let mut listeners: Vec<&String> = self.chains.keys().collect();
        listeners.sort();
        for l in listeners {
            for (i, chain) in self.chains[l].iter().enumerate() {
                if !chain.is_empty() {
                    out.push((
                        l.clone(),
                        HOOK_NAMES[i],
                        chain.iter().map(|c| c.plugin.key.clone()).collect(),
                    ));
                }
            }
        }
        out
    }
}

/// A plugin's reply, made safe to send: the code kept in the verdict's
/// class, the enhanced code checked, the text on one printable line.
fn to_reply(plugin: &str, r: PluginReply, class: u16) -> Reply {
    let code = if r.code / 100 == class {
        r.code
    } else {
        class * 100 + 50
    };
    let enhanced = parse_enhanced(&r.enhanced)
        .filter(|e| u16::from(e.0) == class)
        .unwrap_or(Enhanced(class as u8, 0, 0));
    let text: String = r
        .text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect();
    if code != r.code {
        tracing::warn!(
            plugin,
            code = r.code,
            "plugin reply code outside its verdict's class; corrected"
        );
    }
    Reply::new(code, enhanced, text)
}

fn parse_enhanced(s: &str) -> Option<Enhanced> {
    let mut parts = s.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5) && subject < 1000 && detail < 1000)
        .then_some(Enhanced(class, subject, detail))
}

/// The engine, the linker, the services the imports reach, and the
/// generation serving now.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    services: Arc<Services>,
    cache_dir: Option<PathBuf>,
    slot_memory: u64,
    current: RwLock<Arc<Generation>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    _ticker: Ticker,
}

/// Advances the engine's epoch; stops when dropped.
struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Runtime {
    /// Sets up the engine (no plugin loaded yet). `cache_dir` keeps the
    /// compiled components.
    pub fn new(
        config: &PluginsConfig,
        services: Services,
        cache_dir: Option<PathBuf>,
    ) -> Result<Runtime, PluginError> {
        // Every instance slot is as large as the largest memory limit.
        let slot_memory = config
            .settings
            .values()
            .map(|s| s.memory_limit.as_u64())
            .max()
            .unwrap_or(0)
            .max(MIN_SLOT_MEMORY);
        let mut wasm = Config::new();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(2000)
            .total_memories(2000)
            .max_memory_size(slot_memory as usize)
            .linear_memory_keep_resident(64 << 10);
        // Pitfall (wasmtime 48): concurrency support on makes every call
        // 2-4x slower, and the plugin ABI is the synchronous one.
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if config.perf_map {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        host::bindings::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| PluginError::Engine(e.to_string()))?;
        }
        Ok(Runtime {
            engine,
            linker,
            services: Arc::new(services),
            cache_dir,
            slot_memory,
            current: RwLock::new(Arc::new(Generation::empty())),
            reloading: tokio::sync::Mutex::new(()),
            _ticker: Ticker(stop),
        })
    }

    /// The generation serving now.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .expect("generation lock poisoned")
            .clone()
    }

    /// Loads every plugin the listeners' chains name and makes that the
    /// serving generation; on any error the serving one stays and the
    /// error names the plugin. Plugins whose file, configuration and
    /// settings did not change are kept as they are (their instances too).
    pub async fn load(
        &self,
        config: &PluginsConfig,
        listeners: &[ListenerConfig],
    ) -> Result<Arc<Generation>, PluginError> {
        let _one = self.reloading.lock().await;
        let previous = self.current();
        let mut plugins: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
        let mut chains = HashMap::new();
        for l in listeners {
            let mut by_hook: [Vec<Link>; 7] = Default::default();
            for (i, entries) in l.chains.all().into_iter().enumerate() {
                for entry in entries {
                    let plugin = self
                        .plugin_for(config, entry, &previous, &mut plugins)
                        .await?;
                    by_hook[i].push(Link {
                        plugin,
                        on_error: entry.on_error().unwrap_or(config.on_error),
                    });
                }
            }
            chains.insert(l.name.clone(), by_hook);
        }
        let generation = Arc::new(Generation { plugins, chains });
        *self.current.write().expect("generation lock poisoned") = generation.clone();
        Ok(generation)
    }

    async fn plugin_for(
        &self,
        config: &PluginsConfig,
        entry: &ChainEntry,
        previous: &Generation,
        loaded: &mut BTreeMap<String, Arc<Plugin>>,
    ) -> Result<Arc<Plugin>, PluginError> {
        let name = entry.plugin();
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(PluginError::Invalid {
                name: name.into(),
                reason: "a plugin name is a file name in plugins.dir, without .wasm".into(),
            });
        }
        let key = match entry.config() {
            None => name.to_string(),
            Some(table) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                toml::to_string(table).unwrap_or_default().hash(&mut h);
                format!("{name}#{:08x}", h.finish() as u32)
            }
        };
        if let Some(p) = loaded.get(&key) {
            return Ok(p.clone());
        }
        let mut settings = config.settings_of(name);
        if settings.memory_limit.as_u64() > self.slot_memory {
            tracing::warn!(
                plugin = name,
                "memory_limit above what this engine was started with; a restart applies it"
            );
            settings.memory_limit = bytesize::ByteSize::b(self.slot_memory);
        }
        let text = plugin_config(&config.dir, name, &settings.config, entry.config())?;
        let wasm = config.dir.join(format!("{name}.wasm"));
        if !wasm.exists() {
            return Err(PluginError::Missing {
                name: name.into(),
                path: wasm.display().to_string(),
            });
        }
        let invalid = |reason: String| PluginError::Invalid {
            name: name.into(),
            reason,
        };
        // Compiling is CPU work of up to seconds: off the async workers.
        let (engine, cache, path) = (self.engine.clone(), self.cache_dir.clone(), wasm.clone());
        let compiled =
            tokio::task::spawn_blocking(move || cache::load(&engine, &path, cache.as_deref()))
                .await
                .map_err(|e| invalid(e.to_string()))?
                .map_err(invalid)?;
        if let Some(p) = previous.plugins.get(&key)
            && p.digest == compiled.digest
            && *p.config == *text
            && p.settings == settings
        {
            loaded.insert(key, p.clone());
            return Ok(p.clone());
        }
        let instance_pre = self
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre =
            host::bindings::PluginPre::new(instance_pre).map_err(|e| invalid(format!("{e:#}")))?;
        let instances = settings.instances;
        let mut plugin = Plugin {
            name: name.into(),
            key: key.clone(),
            config: text.into(),
            grants: settings.grants.clone().into(),
            memory_limit: settings.memory_limit.as_u64() as usize,
            settings,
            digest: compiled.digest,
            cached: compiled.cached,
            hooks: Vec::new(),
            stats: stats::Stats::default(),
            pre,
            services: self.services.clone(),
            pool: pool::Pool::new(instances),
        };
        // One instance now: it checks the configuration and names the hooks.
        let mut ready = plugin.instantiate().await.map_err(|e| match e {
            InitError::Refused(reason) => PluginError::Refused {
                name: name.into(),
                reason,
            },
            InitError::Trap(e) => invalid(format!("{e:#}")),
        })?;
        arm(
            &mut ready.store,
            Instant::now(),
            plugin.settings.deadline,
            plugin.settings.wait_limit,
        );
        plugin.hooks = ready
            .instance
            .call_hooks(&mut ready.store)
            .await
            .map_err(|e| invalid(format!("{e:#}")))?;
        tracing::info!(plugin = name, key, hooks = ?plugin.hooks, cached = compiled.cached, "plugin loaded");
        plugin.pool.give(ready);
        let plugin = Arc::new(plugin);
        loaded.insert(key, plugin.clone());
        Ok(plugin)
    }
}

/// The configuration a plugin gets: `NAME.toml`, with the settings' table
/// and then the chain entry's merged over it, key by key, handed over as a
/// JSON object (every plugin language reads JSON without a library; few
/// read TOML).
fn plugin_config(
    dir: &Path,
    name: &str,
    settings: &toml::Table,
    entry: Option<&toml::Table>,
) -> Result<String, PluginError> {
    let path = dir.join(format!("{name}.toml"));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        // An unreadable file is not an empty configuration.
        Err(e) => {
            return Err(PluginError::Invalid {
                name: name.into(),
                reason: format!("{}: {e}", path.display()),
            });
        }
    };
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| PluginError::Invalid {
        name: name.into(),
        reason: format!("{}: {e}", path.display()),
    })?;
    for over in [Some(settings), entry].into_iter().flatten() {
        for (k, v) in over {
            table.insert(k.clone(), v.clone());
        }
    }
    json(toml::Value::Table(table))
        .map(|j| j.to_string())
        .map_err(|reason| PluginError::Invalid {
            name: name.into(),
            reason,
        })
}

/// TOML to JSON; dates and times become their RFC 3339 text. JSON has no
/// `nan` or `inf`: those are refused rather than turned into `null`.
fn json(value: toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match value {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map(J::Number)
            .ok_or_else(|| format!("the configuration holds {f}, which JSON cannot carry"))?,
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => J::Object(
            t.into_iter()
                .map(|(k, v)| Ok((k, json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

enum InitError {
    Refused(String),
    Trap(wasmtime::Error),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitError::Refused(r) => write!(f, "init refused: {r}"),
            InitError::Trap(e) => write!(f, "{e:#}"),
        }
    }
}

/// Starts a call's clock at `started`: `deadline` of the plugin's own
/// time, plus up to `wait_limit` waiting in host imports.
fn arm(store: &mut Store<HostState>, started: Instant, deadline: Duration, wait_limit: Duration) {
    let state = store.data_mut();
    state.clock.started = started;
    state.clock.deadline = deadline;
    state.clock.wait_limit = wait_limit;
    state.clock.waited = Duration::ZERO;
    state.clock.yielded.reset();
    // Woken every tick: to yield, and to see whether the time is up.
    store.set_epoch_deadline(1);
}

impl Plugin {
    /// A new instance in its own store, given `init`.
    async fn instantiate(&self) -> Result<Box<Ready>, InitError> {
        let state = HostState {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_limit)
                .build(),
            plugin: self.name.clone(),
            config: self.config.clone(),
            grants: self.grants.clone(),
            services: self.services.clone(),
            context: None,
            clock: host::CallClock::start(self.settings.data_deadline, self.settings.wait_limit),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        // The deadline is for the plugin's own work: when it comes, the
        // time the call spent waiting in host imports (DNS, authentication
        // checks) is taken off, up to `wait_limit`, and the plugin runs on
        // for what is left of its own time, if anything.
        //
        // A call on a fiber is woken every tick to yield to the runtime
        // (with tokio's own yield, which lets the worker poll for I/O and
        // its other tasks first); the time it spends yielded is not the
        // plugin's either.
        store.epoch_deadline_callback(|ctx| {
            let clock = &ctx.data().clock;
            Ok(match clock.left() {
                None => wasmtime::UpdateDeadline::Interrupt,
                Some(_) => {
                    let yielded = clock.yielded.clone();
                    wasmtime::UpdateDeadline::YieldCustom(
                        1,
                        Box::pin(async move {
                            let started = Instant::now();
                            tokio::task::yield_now().await;
                            yielded.add(started.elapsed());
                        }),
                    )
                }
            })
        });
        arm(
            &mut store,
            Instant::now(),
            self.settings.data_deadline,
            self.settings.wait_limit,
        );
        let instance = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(InitError::Trap)?;
        instance
            .call_init(&mut store, &self.config)
            .await
            .map_err(InitError::Trap)?
            .map_err(InitError::Refused)?;
        Ok(Box::new(Ready { store, instance }))
    }

    /// Makes a new instance (instantiation and `init`) and drops it: what a
    /// call pays on top when the pool has no ready instance.
    pub async fn time_new_instance(&self) -> Result<Duration, String> {
        let started = Instant::now();
        let ready = self.instantiate().await.map_err(|e| e.to_string())?;
        let took = started.elapsed();
        drop(ready);
        Ok(took)
    }

    /// Calls the hook of `args` about `context` on a pooled (or new)
    /// instance under the deadline; an instance that failed is dropped,
    /// not returned.
    pub async fn call(
        &self,
        context: &Arc<Context>,
        args: &HookArgs<'_>,
    ) -> Result<Decision, String> {
        let started = Instant::now();
        // A new instance's set-up counts in the call's latency, not
        // against its deadline.
        let (mut ready, clock_start) = match self.pool.take() {
            Some(r) => (r, started),
            None => (
                self.instantiate().await.map_err(|e| e.to_string())?,
                Instant::now(),
            ),
        };
        let deadline = match args.hook() {
            Hook::Data | Hook::PreDelivery | Hook::DeliveryResult => self.settings.data_deadline,
            _ => self.settings.deadline,
        };
        arm(
            &mut ready.store,
            clock_start,
            deadline,
            self.settings.wait_limit,
        );
        ready.store.data_mut().context = Some(context.clone());
        // The epoch deadline stops a plugin that computes too long; the
        // imports stop one that waits too long (see `HostState::waiting`).
        let result = call_export(&ready.instance, &mut ready.store, args).await;
        // A pooled instance must not keep the transaction alive.
        ready.store.data_mut().context = None;
        match result {
            Ok(decision) => {
                self.stats
                    .record(stats::Ended::Verdict(&decision.verdict), started.elapsed());
                self.pool.give(ready);
                Ok(decision)
            }
            Err(e) => {
                let timeout =
                    e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt);
                let ended = if timeout {
                    stats::Ended::Timeout
                } else {
                    stats::Ended::Trap
                };
                self.stats.record(ended, started.elapsed());
                let clock = &ready.store.data().clock;
                if timeout && clock.waited > clock.wait_limit {
                    Err(format!(
                        "waited on the gateway's imports (DNS, state, authentication) longer than its wait_limit of {:?}",
                        clock.wait_limit
                    ))
                } else if timeout {
                    Err(format!("deadline of {deadline:?} passed"))
                } else {
                    Err(format!("{e:#}"))
                }
            }
        }
    }
}

/// The message as a resource for one call: the owned handle (to delete
/// after the call) and the borrow the export takes.
type Lent = (Resource<host::MessageData>, Resource<host::MessageData>);

fn lend(store: &mut Store<HostState>, m: &Arc<MessageView>) -> wasmtime::Result<Lent> {
    let owned = store.data_mut().table.push(host::MessageData(m.clone()))?;
    let borrow = Resource::new_borrow(owned.rep());
    Ok((owned, borrow))
}

async fn call_export(
    p: &host::bindings::Plugin,
    store: &mut Store<HostState>,
    args: &HookArgs<'_>,
) -> wasmtime::Result<Decision> {
    let plain = |verdict| Decision {
        verdict,
        mutations: Vec::new(),
    };
    Ok(match args {
        HookArgs::Connect => plain(p.call_on_connect(&mut *store).await?),
        HookArgs::Helo(name) => plain(p.call_on_helo(&mut *store, name).await?),
        HookArgs::MailFrom(sender) => plain(p.call_on_mail_from(&mut *store, sender).await?),
        HookArgs::Rcpt(rcpt) => plain(p.call_on_rcpt(&mut *store, rcpt).await?),
        HookArgs::Data(m) => {
            let (owned, borrow) = lend(store, m)?;
            let result = p.call_on_data(&mut *store, borrow).await;
            store.data_mut().table.delete(owned)?;
            result?
        }
        HookArgs::PreDelivery(d, m) => {
            let (owned, borrow) = lend(store, m)?;
            let result = p.call_on_pre_delivery(&mut *store, d, borrow).await;
            store.data_mut().table.delete(owned)?;
            result?
        }
        HookArgs::DeliveryResult(o) => {
            p.call_on_delivery_result(&mut *store, o).await?;
            plain(Verdict::Continue)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_is_merged_and_handed_over_as_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "block = [\"a@example.org\"]\nlimit = 3\nsince = 2026-01-02T03:04:05Z\n[nested]\nx = 1.5\n",
        )
        .unwrap();
        let settings: toml::Table = toml::from_str("limit = 5\nextra = true").unwrap();
        let entry: toml::Table = toml::from_str("limit = 7").unwrap();
        let text = plugin_config(dir.path(), "p", &settings, Some(&entry)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "block": ["a@example.org"],
                "limit": 7,
                "extra": true,
                "since": "2026-01-02T03:04:05Z",
                "nested": {"x": 1.5},
            })
        );
        // No file and no tables: an empty object, never empty text.
        let none = plugin_config(dir.path(), "absent", &toml::Table::new(), None).unwrap();
        assert_eq!(none, "{}");
        // JSON has no infinity.
        let inf: toml::Table = toml::from_str("score = inf").unwrap();
        let err = plugin_config(dir.path(), "absent", &inf, None).unwrap_err();
        assert!(err.to_string().contains("inf"), "{err}");
        // A NAME.toml that cannot be read (here: a directory) names the
        // file rather than passing for an empty configuration.
        std::fs::create_dir(dir.path().join("dir.toml")).unwrap();
        let err = plugin_config(dir.path(), "dir", &toml::Table::new(), None).unwrap_err();
        assert!(err.to_string().contains("dir.toml"), "{err}");
        // A broken NAME.toml names the file.
        std::fs::write(dir.path().join("bad.toml"), "block = [").unwrap();
        let err = plugin_config(dir.path(), "bad", &toml::Table::new(), None).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
