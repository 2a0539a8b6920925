//! `weir serve`: opens the spool, loads the plugins, starts the queue
//! manager on what it recovered, binds every listener, runs until SIGTERM
//! or SIGINT, then stops accepting and lets sessions finish their current
//! command and deliveries in flight finish (up to a deadline) before
//! exiting; what is not delivered stays in the spool.
//!
//! SIGHUP (sent by `weir plugins reload`) and, with `plugins.watch`, a
//! change in the plugin directory reload the plugins and the chains: the
//! configuration file is read again, the plugins are loaded beside the
//! serving ones, and the new set serves new sessions only if every plugin
//! loaded. Other settings need a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::delivery::Delivery;
use crate::listener::Listener;
use crate::plugins::Runtime;
use crate::queue::{Spool, manager};
use crate::shutdown;
use crate::smtp::ListenerContext;

/// How long sessions get to finish once shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The file holding the running gateway's process id, in the data
/// directory (for `weir plugins reload`).
pub const PID_FILE: &str = "weir.pid";

/// Where compiled plugins are kept.
pub fn cache_dir(config: &Config) -> PathBuf {
    config
        .plugins
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("plugin-cache"))
}

/// Runs the gateway until a signal arrives. `config_file` is read again on
/// reload.
pub async fn serve(config: Config, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let (spool, recovered) = Spool::open(&config.data_dir, config.spool.segment_size.as_u64())?;
    tracing::info!(
        spool = %spool.dir().display(),
        messages = recovered.len(),
        "spool opened"
    );
    // Signal handlers first: a signal that arrives once we say we are ready
    // must find them installed (the default action would kill us).
    let signals = Signals::install()?;
    // The spool's lock is held: this is the only gateway on this directory.
    let pid_file = config.data_dir.join(PID_FILE);
    std::fs::write(&pid_file, format!("{}\n", std::process::id()))?;

    let (trigger, shutdown) = shutdown::channel();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let delivery = Arc::new(Delivery::new(&config, spool.clone())?);
    // Authentication checks share delivery's resolver and its cache.
    let auth = Arc::new(crate::auth::Authenticator::new(
        delivery.resolver().clone(),
        config.authserv_id(),
    ));
    // The plugins' shared state; Redis is connected on first use, so the
    // gateway starts while it is down.
    let state = crate::state::State::new(&config.state).map_err(|e| anyhow::anyhow!(e))?;
    tracing::info!(backend = %state.describe(), "state store");
    // Plugins: loaded (compiled, or taken from the cache) before anything
    // is accepted or delivered.
    let plugins = Arc::new(Runtime::new(
        &config.plugins,
        crate::plugins::Services {
            resolver: Some(delivery.resolver().clone()),
            state: Arc::new(state),
            authserv_id: config.authserv_id(),
        },
        Some(cache_dir(&config)),
    )?);
    // The directory as it is loaded: any later change counts as one,
    // however late the watcher task first runs.
    let loaded_dir = fingerprint(&config.plugins.dir);
    plugins.load(&config.plugins, &config.listeners).await?;
    delivery.set_plugins(plugins.clone());
    let queue = manager::start(
        delivery,
        config.queue.clone(),
        recovered,
        shutdown.clone(),
        done_tx.clone(),
    );
    let directory = Arc::new(crate::directory::Directory::load(&config.directory)?);
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let ctx = Arc::new(ListenerContext {
            config: l.clone(),
            hostname: l
                .banner_hostname
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            spool: spool.clone(),
            queue: queue.clone(),
            plugins: Some(plugins.clone()),
            auth: Some(auth.clone()),
            directory: Some(directory.clone()),
            quarantine: crate::queue::quarantine::Quarantine::new(&config.data_dir),
            local_domains: l.local_domains.clone().into(),
        });
        listeners.push(Listener::bind(ctx, shutdown.clone(), done_tx.clone()).await?);
    }
    drop(done_tx);
    for l in listeners {
        let addr = l.local_addr()?;
        tracing::info!(listener = %l.name(), %addr, "listening");
        // A stable line on stdout for scripts and tests to wait on.
        println!("weir: listener {} ready on {addr}", l.name());
        tokio::spawn(l.run());
    }

    let (release_tx, release_rx) = mpsc::unbounded_channel();
    tokio::spawn(releaser(
        crate::queue::quarantine::Quarantine::new(&config.data_dir),
        spool.clone(),
        queue.clone(),
        release_rx,
    ));
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    tokio::spawn(reloader(plugins.clone(), config_file.clone(), reload_rx));
    if config.plugins.watch {
        tokio::spawn(watch(
            config.plugins.dir.clone(),
            loaded_dir,
            config.plugins.watch_interval,
            reload_tx.clone(),
        ));
    }
    signals.wait(reload_tx, release_tx).await;
    tracing::info!("shutting down: no new connections; sessions finish their current command");
    trigger.fire();
    if tokio::time::timeout(DRAIN_DEADLINE, done_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(
            "sessions still open after {DRAIN_DEADLINE:?}; exiting anyway (nothing acknowledged is lost)"
        );
    }
    // Queue state written without waiting (retry times, finished messages)
    // must reach the disk before the process ends.
    spool.flush().await?;
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("stopped");
    Ok(())
}

/// Why a reload was asked for.
#[derive(Debug)]
enum Reload {
    Signal,
    DirectoryChanged,
}

/// Reloads the plugins, one request at a time.
async fn reloader(
    plugins: Arc<Runtime>,
    config_file: Option<PathBuf>,
    mut requests: mpsc::UnboundedReceiver<Reload>,
) {
    while let Some(why) = requests.recv().await {
        // Requests that queued up meanwhile are served by this reload.
        while requests.try_recv().is_ok() {}
        tracing::info!(reason = ?why, "reloading plugins");
        let config = match Config::load(config_file.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload: bad configuration; the plugins in service stay");
                continue;
            }
        };
        match plugins.load(&config.plugins, &config.listeners).await {
            Ok(generation) => {
                tracing::info!(plugins = generation.plugins.len(), "plugins reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; the plugins in service stay")
            }
        }
    }
}

/// Watches the plugin directory: a reload once a change has settled (the
/// directory looked the same twice in a row), so that a file still being
/// written is not loaded half-way.
async fn watch(
    dir: PathBuf,
    mut seen: Vec<(String, u64, SystemTime)>,
    interval: Duration,
    reload: mpsc::UnboundedSender<Reload>,
) {
    let interval = interval.max(Duration::from_millis(50));
    let mut changed: Option<Vec<(String, u64, SystemTime)>> = None;
    loop {
        tokio::time::sleep(interval).await;
        let now = fingerprint(&dir);
        match &changed {
            Some(last) if *last == now => {
                changed = None;
                seen = now;
                if reload.send(Reload::DirectoryChanged).is_err() {
                    return;
                }
            }
            _ if now != seen => changed = Some(now),
            _ => changed = None,
        }
    }
}

/// The plugin files of `dir`: names, sizes, modification times.
fn fingerprint(dir: &Path) -> Vec<(String, u64, SystemTime)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".wasm") || name.ends_with(".toml")) {
                continue;
            }
            if let Ok(meta) = e.metadata() {
                out.push((
                    name,
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The signals `weir serve` handles.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }

    /// Returns at SIGTERM or SIGINT; turns each SIGHUP into a reload and
    /// each SIGUSR1 into a look at the quarantine's released messages.
    async fn wait(
        mut self,
        reload: mpsc::UnboundedSender<Reload>,
        release: mpsc::UnboundedSender<()>,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    let _ = reload.send(Reload::Signal);
                }
                _ = self.usr1.recv() => {
                    let _ = release.send(());
                }
            }
        }
    }
}

/// Sends `signal` to the gateway running on `data_dir` (the pid in its
/// `weir.pid`); `Ok(None)` when none runs there.
pub fn signal_gateway(data_dir: &Path, signal: i32) -> anyhow::Result<Option<i32>> {
    let pid_file = data_dir.join(PID_FILE);
    let text = match std::fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read {}: {e}", pid_file.display()),
    };
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{} does not hold a process id", pid_file.display()))?;
    // SAFETY: kill(2) with a pid and a signal number; no memory.
    if unsafe { libc::kill(pid, signal) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            // A pid file left by a gateway that was killed.
            return Ok(None);
        }
        anyhow::bail!("cannot signal process {pid}: {e}");
    }
    Ok(Some(pid))
}

/// Stores each message released from the quarantine in the spool (one
/// at a time, read on a blocking thread: a release of thousands does not
/// hold the whole lot in memory nor a runtime thread on the disk), as
/// received now, marked released.
async fn release_all(
    quarantine: &crate::queue::quarantine::Quarantine,
    spool: &Spool,
    queue: &crate::queue::QueueHandle,
) {
    use crate::queue::quarantine::QuarantineError;
    let q = quarantine.clone();
    let listed = tokio::task::spawn_blocking(move || q.released().map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let paths = match listed {
        Ok(paths) => paths,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the quarantine's released messages");
            return;
        }
    };
    for path in paths {
        let (q, p) = (quarantine.clone(), path.clone());
        let taken = tokio::task::spawn_blocking(move || q.take(&p))
            .await
            .unwrap_or_else(|e| {
                Err(QuarantineError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })
            });
        let (held, message) = match taken {
            Ok(t) => t,
            Err(QuarantineError::Corrupt(_)) => {
                match quarantine.set_aside(&path) {
                    Ok(to) => {
                        tracing::error!(file = %path.display(), moved_to = %to.display(), "released file is not a quarantined message; set aside")
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "released file is not a quarantined message and cannot be set aside")
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "released message not read; it stays released and is tried again");
                continue;
            }
        };
        let mut envelope = held.envelope;
        let was = envelope.id;
        envelope.id = spool.next_id();
        envelope.size = message.len() as u64;
        // Its queue lifetime and bounce timers start now, not when it was
        // first received (days ago, perhaps).
        envelope.received_at = chrono::Utc::now().timestamp();
        envelope.released = true;
        match spool.store(&envelope, message).await {
            Ok(location) => {
                tracing::info!(queue_id = %envelope.id, was = %was, recipients = envelope.recipients.len(), "released from the quarantine");
                if let Err(e) = quarantine.forget(&path) {
                    tracing::error!(error = %e, "released message stored, but its quarantine file stays (it will be released again)");
                }
                queue.submit(crate::queue::StoredMessage {
                    states: vec![crate::queue::RcptState::new(); envelope.recipients.len()],
                    envelope,
                    location,
                    message: None,
                });
            }
            Err(e) => {
                tracing::error!(was = %was, error = %e, "released message not stored; it stays released and is tried again");
            }
        }
    }
}

/// Stores the messages released from the quarantine in the spool, under
/// new queue ids, and hands them to delivery: at start, then whenever
/// asked (SIGUSR1 from `weir quarantine release`).
async fn releaser(
    quarantine: crate::queue::quarantine::Quarantine,
    spool: Spool,
    queue: crate::queue::QueueHandle,
    mut requests: mpsc::UnboundedReceiver<()>,
) {
    loop {
        release_all(&quarantine, &spool, &queue).await;
        if requests.recv().await.is_none() {
            return;
        }
        // Requests that queued up meanwhile are served by this look.
        while requests.try_recv().is_ok() {}
    }
}
