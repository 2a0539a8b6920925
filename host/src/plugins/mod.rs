//! The plugin runtime: WebAssembly components (the `plugin` world of
//! `wit/plugin.wit`) run by wasmtime at the hooks of a transaction.
//!
//! Duty: load each `NAME.wasm` of the plugin directory once (compiled at
//! load, never on the hot path), keep a pool of ready instances per plugin,
//! run a listener's chain of plugins at a hook, and turn their verdicts into
//! replies.
//!
//! Distrusts: the plugins. Every call runs under an epoch deadline and a
//! memory limit; WASI is linked with nothing granted (no files, sockets,
//! environment or inherited stdio). A trap, an overrun or a breach is
//! logged with the plugin's name, the instance is dropped (a trapped
//! instance cannot be entered again), and the chain's `on_error` policy
//! answers.
//!
//! Never: touches a socket or a file on behalf of a plugin.
//!
//! This is the first slice of the runtime: the envelope hooks (connect,
//! helo, mail-from, rcpt) with the log and config imports. DNS and state calls answer
//! `denied`, the message resource and the data hooks, reload, grants,
//! `weir plugin test` and the compiled-artifact cache are still to come.

mod host;

pub use host::bindings as host_bindings;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

pub use host::bindings::weir::plugin::types::{
    Connection, Envelope, Hook, Reply as PluginReply, TlsInfo, Verdict,
};

/// One call into a plugin instance: which export, with what.
pub type Call<'a> =
    dyn Fn(&host::bindings::Plugin, &mut Store<HostState>) -> wasmtime::Result<Verdict> + 'a;

use crate::config::{OnError, PluginsConfig};
use crate::smtp::{Enhanced, Reply};

/// Epoch ticks: the deadline's resolution.
const TICK: Duration = Duration::from_millis(5);
/// Deadline of an envelope-stage call.
const ENVELOPE_DEADLINE: Duration = Duration::from_millis(100);
/// Memory one instance may grow to.
const MEMORY_LIMIT: usize = 64 << 20;
/// Ready instances kept per plugin.
const POOL_SIZE: usize = 16;

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

/// Per-store state: WASI (with nothing granted), resources, limits, and the
/// plugin's identity for its imports.
pub struct HostState {
    wasi: wasmtime_wasi::WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
    config: Arc<str>,
}

/// One loaded plugin.
struct Plugin {
    name: Arc<str>,
    config: Arc<str>,
    pre: host::bindings::PluginPre<HostState>,
    hooks: Vec<Hook>,
    /// Ready instances, each in its own store, already given `init`.
    pool: Mutex<Vec<Ready>>,
}

struct Ready {
    store: Store<HostState>,
    instance: host::bindings::Plugin,
}

/// The loaded plugins and the chains that use them.
pub struct Runtime {
    plugins: HashMap<String, Arc<Plugin>>,
    on_error: OnError,
    _ticker: Ticker,
}

/// Advances the engine's epoch; stops when dropped.
struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
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
}

impl Runtime {
    /// Loads every plugin the chains name from `config.dir`.
    pub fn load(config: &PluginsConfig, chains: &[&[String]]) -> Result<Runtime, PluginError> {
        let mut wasm = Config::new();
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(2000)
            .total_memories(2000)
            .max_memory_size(MEMORY_LIMIT)
            .linear_memory_keep_resident(64 << 10);
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Engine(e.to_string()))?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
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

        let mut plugins = HashMap::new();
        for name in chains.iter().flat_map(|c| c.iter()) {
            if plugins.contains_key(name) {
                continue;
            }
            let plugin = load_one(&engine, &linker, &config.dir, name)?;
            plugins.insert(name.clone(), Arc::new(plugin));
        }
        Ok(Runtime {
            plugins,
            on_error: config.on_error,
            _ticker: Ticker(stop),
        })
    }

    /// Runs a chain at an envelope hook: the first plugin with an opinion
    /// decides.
    pub fn run(&self, chain: &[String], hook: Hook, call: &Call<'_>) -> Outcome {
        for name in chain {
            let Some(plugin) = self.plugins.get(name) else {
                continue;
            };
            if !plugin.hooks.contains(&hook) {
                continue;
            }
            let verdict = match plugin.call(call) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(plugin = %name, hook = ?hook, error = %e, "plugin failed; on_error applies");
                    match self.on_error {
                        OnError::Continue => continue,
                        OnError::Tempfail => {
                            return Outcome::Refuse(Reply::new(
                                451,
                                Enhanced(4, 3, 0),
                                "Temporary policy failure, try again later",
                            ));
                        }
                    }
                }
            };
            match verdict {
                Verdict::Continue | Verdict::Discard | Verdict::Quarantine(_) => continue,
                Verdict::Accept => return Outcome::Continue,
                Verdict::Reject(r) => return Outcome::Refuse(to_reply(name, r, 5)),
                Verdict::Tempfail(r) => return Outcome::Refuse(to_reply(name, r, 4)),
                Verdict::Disconnect(r) => {
                    let class = if r.code == 421 { 4 } else { 5 };
                    return Outcome::Disconnect(to_reply(name, r, class));
                }
            }
        }
        Outcome::Continue
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

fn load_one(
    engine: &Engine,
    linker: &Linker<HostState>,
    dir: &Path,
    name: &str,
) -> Result<Plugin, PluginError> {
    let path = dir.join(format!("{name}.wasm"));
    if !path.exists() {
        return Err(PluginError::Missing {
            name: name.into(),
            path: path.display().to_string(),
        });
    }
    let invalid = |reason: String| PluginError::Invalid {
        name: name.into(),
        reason,
    };
    let component = Component::from_file(engine, &path).map_err(|e| invalid(format!("{e:#}")))?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| invalid(format!("{e:#}")))?;
    let pre =
        host::bindings::PluginPre::new(instance_pre).map_err(|e| invalid(format!("{e:#}")))?;
    let config_path = dir.join(format!("{name}.toml"));
    let config: Arc<str> = std::fs::read_to_string(&config_path)
        .unwrap_or_default()
        .into();
    let mut plugin = Plugin {
        name: name.into(),
        config,
        pre,
        hooks: Vec::new(),
        pool: Mutex::new(Vec::new()),
    };
    // One instance now: it checks the configuration and names the hooks.
    let mut ready = plugin.instantiate().map_err(|e| match e {
        InitError::Refused(reason) => PluginError::Refused {
            name: name.into(),
            reason,
        },
        InitError::Trap(e) => invalid(format!("{e:#}")),
    })?;
    ready.store.set_epoch_deadline(ticks(ENVELOPE_DEADLINE));
    plugin.hooks = ready
        .instance
        .call_hooks(&mut ready.store)
        .map_err(|e| invalid(format!("{e:#}")))?;
    tracing::info!(plugin = name, hooks = ?plugin.hooks, "plugin loaded");
    plugin.pool.lock().expect("pool poisoned").push(ready);
    Ok(plugin)
}

enum InitError {
    Refused(String),
    Trap(wasmtime::Error),
}

fn ticks(d: Duration) -> u64 {
    (d.as_millis() / TICK.as_millis()).max(1) as u64
}

impl Plugin {
    /// A new instance in its own store, given `init`.
    fn instantiate(&self) -> Result<Ready, InitError> {
        let state = HostState {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).build(),
            plugin: self.name.clone(),
            config: self.config.clone(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(ticks(ENVELOPE_DEADLINE));
        let instance = self.pre.instantiate(&mut store).map_err(InitError::Trap)?;
        instance
            .call_init(&mut store, &self.config)
            .map_err(InitError::Trap)?
            .map_err(InitError::Refused)?;
        Ok(Ready { store, instance })
    }

    /// Calls into a pooled (or new) instance under the deadline; an instance
    /// that failed is dropped, not returned to the pool.
    fn call(&self, call: &Call<'_>) -> Result<Verdict, String> {
        let ready = self.pool.lock().expect("pool poisoned").pop();
        let mut ready = match ready {
            Some(r) => r,
            None => self.instantiate().map_err(|e| match e {
                InitError::Refused(r) => format!("init refused: {r}"),
                InitError::Trap(e) => format!("{e:#}"),
            })?,
        };
        ready.store.set_epoch_deadline(ticks(ENVELOPE_DEADLINE));
        let result = call(&ready.instance, &mut ready.store);
        match result {
            Ok(v) => {
                let mut pool = self.pool.lock().expect("pool poisoned");
                if pool.len() < POOL_SIZE {
                    pool.push(ready);
                }
                Ok(v)
            }
            Err(e) => Err(format!("{e:#}")),
        }
    }
}
