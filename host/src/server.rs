//! `weir serve`: opens the spool, starts the queue manager on what it
//! recovered, binds every listener, runs until SIGTERM or SIGINT, then
//! stops accepting and lets sessions finish their current command and
//! deliveries in flight finish (up to a deadline) before exiting; what is
//! not delivered stays in the spool.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::delivery::Delivery;
use crate::listener::Listener;
use crate::queue::{Spool, manager};
use crate::shutdown;
use crate::smtp::ListenerContext;

/// How long sessions get to finish once shutdown starts.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the gateway until a signal arrives.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let (spool, recovered) = Spool::open(&config.data_dir, config.spool.segment_size.as_u64())?;
    tracing::info!(
        spool = %spool.dir().display(),
        messages = recovered.len(),
        "spool opened"
    );

    let (trigger, shutdown) = shutdown::channel();
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let delivery = Arc::new(Delivery::new(&config, spool.clone())?);
    let queue = manager::start(
        delivery,
        config.queue.clone(),
        recovered,
        shutdown.clone(),
        done_tx.clone(),
    );
    // Plugins: loaded (compiled) once, before anything is accepted.
    let chains: Vec<&[String]> = config
        .listeners
        .iter()
        .flat_map(|l| {
            let c = &l.chains;
            [&c.connect[..], &c.helo[..], &c.mail_from[..], &c.rcpt[..]]
        })
        .collect();
    let plugins = if chains.iter().any(|c| !c.is_empty()) {
        Some(Arc::new(crate::plugins::Runtime::load(
            &config.plugins,
            &chains,
        )?))
    } else {
        None
    };
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
            plugins: plugins.clone(),
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

    wait_for_signal().await;
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
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
