//! Delivery: routing, finding the next hop's hosts, talking SMTP or LMTP to
//! them, and reporting each recipient's outcome.
//!
//! Talks to: the queue manager (takes `Job`s from a destination's queue,
//! sends back `WorkerEvent`s), the spool (reads message bytes; records a
//! recipient as delivered before moving on, so a crash cannot make it
//! deliver twice beyond the attempt in flight), DNS, the network.
//!
//! Never: decides policy (retry, expiry, bounces are the queue manager's),
//! or sends anything but CRLF line ends and dot-stuffed data.
//!
//! Failures are classified by scope, as Postfix's smtp_trouble.c does:
//! - session: a host cannot be reached, refuses the greeting, or TLS policy
//!   cannot be met: the next host is tried; if none works, every recipient
//!   of every job waiting for that destination is deferred (temporary) or,
//!   for NXDOMAIN and null MX, bounced (permanent);
//! - message: MAIL FROM refused, DATA refused, or the message needs an
//!   extension the host lacks: all its recipients share the outcome;
//! - recipient: each RCPT reply (and each LMTP data reply) decides its own.
//!
//! Soft (4xx) outcomes are retried by the queue manager with backoff until
//! the message's lifetime runs out; hard (5xx) ones bounce at once.
//!
//! Standards: RFC 5321, 2033 (LMTP), 2920, 3207, 3461, 3464, 4954, 6152,
//! 6531, 7505 (null MX).

pub mod client;
pub mod dns;
pub mod dsn;
pub mod route;
pub mod tls;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use rustls::ClientConfig;
use tokio::sync::{Notify, mpsc};

use crate::config::{Config, OutboundTls, QueueConfig, RouteKind};
use crate::queue::{Envelope, Location, QueueId, RcptState, Spool};
use crate::shutdown::Shutdown;
use client::{AttemptError, Connection, RcptOutcome, Settings};
use dns::ResolveError;
pub use route::{NextHop, Router};

/// Work for one destination: some recipients of one message.
#[derive(Debug, Clone)]
pub struct Job {
    /// The message.
    pub id: QueueId,
    /// Its envelope.
    pub envelope: Arc<Envelope>,
    /// Where its bytes are.
    pub location: Location,
    /// Indices of the recipients to deliver to.
    pub rcpts: Vec<usize>,
}

/// The jobs waiting for one destination, shared by the queue manager (which
/// pushes) and the destination's workers (which take).
#[derive(Default)]
pub struct JobQueue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Notify,
}

impl JobQueue {
    /// Adds a job and wakes a worker that is waiting for one.
    pub fn push(&self, job: Job) {
        self.jobs.lock().expect("job queue poisoned").push_back(job);
        self.ready.notify_one();
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("job queue poisoned").len()
    }

    /// Whether no job is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn pop(&self) -> Option<Job> {
        self.jobs.lock().expect("job queue poisoned").pop_front()
    }

    fn drain(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .expect("job queue poisoned")
            .drain(..)
            .collect()
    }

    /// The next job, waiting up to `idle` for one to come.
    async fn next(&self, idle: Duration, shutdown: &mut Shutdown) -> Option<Job> {
        let deadline = tokio::time::Instant::now() + idle;
        loop {
            if let Some(job) = self.pop() {
                return Some(job);
            }
            if idle.is_zero() || shutdown.is_set() {
                return None;
            }
            tokio::select! {
                _ = self.ready.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return self.pop(),
                _ = shutdown.wait() => return None,
            }
        }
    }
}

/// What workers tell the queue manager.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The outcome of each recipient of a job.
    Outcomes {
        /// The message.
        id: QueueId,
        /// (recipient index, outcome).
        outcomes: Vec<(usize, RcptOutcome)>,
    },
    /// A worker for this destination has stopped.
    Exited(NextHop),
}

/// Why delivery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The DNS resolver could not be built.
    #[error("{0}")]
    Dns(String),
    /// A DKIM signing key is unusable.
    #[error("{0}")]
    Dkim(#[from] crate::auth::sign::SignError),
    /// A route's TLS settings are unusable.
    #[error("route {route}: {reason}")]
    Tls {
        /// The route's name.
        route: String,
        /// What is wrong.
        reason: String,
    },
}

/// Everything a delivery worker needs; shared by all of them.
pub struct Delivery {
    router: Router,
    resolver: TokioResolver,
    /// Per route: the TLS configuration its policy calls for.
    tls: Vec<Arc<ClientConfig>>,
    hostname: String,
    queue: QueueConfig,
    spool: Spool,
    /// DKIM keys for the mail we send.
    signer: crate::auth::sign::Signer,
    /// The listeners, to tell mail from our own clients (signed) from
    /// mail relayed from elsewhere (never signed).
    listeners: Vec<crate::config::ListenerConfig>,
    /// Each listener's `local_domains`, shared by the plugin contexts of
    /// its messages' deliveries (not copied per job).
    local_domains: std::collections::HashMap<String, Arc<[String]>>,
    /// The plugins, for the pre-delivery and delivery-result hooks (set
    /// once, before the queue manager starts).
    plugins: std::sync::OnceLock<Arc<crate::plugins::Runtime>>,
    /// Where a pre-delivery plugin's quarantine puts a copy.
    quarantine: crate::queue::quarantine::Quarantine,
}

/// What the pre-delivery chain decided for a job.
enum PreDelivery {
    /// Deliver: the message to send if the chain read or changed it, and
    /// another next hop if it rerouted.
    Deliver {
        message: Option<Vec<u8>>,
        reroute: Option<NextHop>,
    },
    /// Do not deliver: every recipient of the job gets this outcome.
    Settled(RcptOutcome),
}

impl Delivery {
    /// Builds the resolver and the routes' TLS configurations.
    pub fn new(config: &Config, spool: Spool) -> Result<Delivery, DeliveryError> {
        let resolver = dns::resolver(&config.dns).map_err(DeliveryError::Dns)?;
        let signer = crate::auth::sign::Signer::load(&config.dkim.sign)?;
        let unverified = tls::unverified();
        let mut tls_configs = Vec::new();
        for r in &config.routes {
            tls_configs.push(match r.tls {
                OutboundTls::Verify => {
                    tls::verified(r.tls_ca_file.as_deref()).map_err(|reason| {
                        DeliveryError::Tls {
                            route: r.name.clone(),
                            reason,
                        }
                    })?
                }
                _ => unverified.clone(),
            });
        }
        Ok(Delivery {
            router: Router::new(&config.routes),
            resolver,
            tls: tls_configs,
            hostname: config.hostname.clone(),
            queue: config.queue.clone(),
            spool,
            signer,
            listeners: config.listeners.clone(),
            local_domains: config
                .listeners
                .iter()
                .map(|l| (l.name.clone(), Arc::from(l.local_domains.clone())))
                .collect(),
            plugins: std::sync::OnceLock::new(),
            quarantine: crate::queue::quarantine::Quarantine::new(&config.data_dir),
        })
    }

    /// Gives delivery the plugins for its hooks.
    pub fn set_plugins(&self, plugins: Arc<crate::plugins::Runtime>) {
        let _ = self.plugins.set(plugins);
    }

    /// The resolver delivery uses (shared with the plugins' DNS import).
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The next hop of recipient `i`: the route a plugin named, else the
    /// route for its domain; `None` if no route takes it.
    pub fn next_hop_for(&self, envelope: &Envelope, i: usize) -> Option<NextHop> {
        let address = &envelope.recipients[i].address;
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let named = envelope.route.as_deref().and_then(|name| {
            let hop = self.router.by_name(name, domain);
            if hop.is_none() {
                tracing::error!(queue_id = %envelope.id, route = name, "a plugin named a route that is not configured; routing by domain");
            }
            hop
        });
        let mut hop = named.or_else(|| self.router.next_hop(domain))?;
        hop.require_tls = envelope.require_tls;
        Some(hop)
    }

    /// This gateway's name (for DSNs).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Finds the destination's hosts and connects to the first that works.
    async fn connect(&self, hop: &NextHop) -> Result<Connection, AttemptError> {
        let route = self.router.route(hop.route);
        let targets = match route.kind {
            RouteKind::Mx => {
                dns::mx_targets(&self.resolver, &hop.domain, route.port.unwrap_or(25)).await
            }
            RouteKind::Smarthost => {
                dns::host_targets(&self.resolver, &route.hosts, route.port.unwrap_or(25)).await
            }
            RouteKind::Lmtp => {
                dns::host_targets(&self.resolver, &route.hosts, route.port.unwrap_or(24)).await
            }
        }
        .map_err(|e| match e {
            ResolveError::Permanent(reason) => AttemptError::permanent(reason),
            ResolveError::Temporary(reason) => AttemptError::temporary(reason),
        })?;
        // A plugin's require-tls raises the route's policy.
        let tls = match route.tls {
            OutboundTls::None | OutboundTls::Opportunistic if hop.require_tls => {
                OutboundTls::Required
            }
            tls => tls,
        };
        let settings = Settings {
            helo: route.helo.as_deref().unwrap_or(&self.hostname),
            lmtp: route.kind == RouteKind::Lmtp,
            tls,
            tls_config: self.tls[hop.route].clone(),
            source: route.source_address,
            auth: route
                .auth_username
                .as_deref()
                .zip(route.auth_password.as_deref()),
            connect_timeout: self.queue.connect_timeout,
            command_timeout: self.queue.command_timeout,
            data_timeout: self.queue.data_timeout,
        };
        let mut last = None;
        for target in &targets {
            match Connection::open(target, &settings, true).await {
                Ok(c) => return Ok(c),
                Err(e) if e.tls_failed && tls == OutboundTls::Opportunistic => {
                    tracing::info!(host = %target.host, addr = %target.addr, reason = %e.reason, "TLS failed; opportunistic route retries in clear");
                    match Connection::open(target, &settings, false).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = Some(e),
                    }
                }
                Err(e) => {
                    tracing::info!(host = %target.host, addr = %target.addr, reason = %e.reason, "host failed; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("targets is never empty"))
    }

    /// Delivers the jobs queued for `hop` over one connection, reused from
    /// job to job, until the queue has stayed empty for
    /// `connection_cache_time` or the gateway stops.
    pub async fn run_worker(
        self: Arc<Self>,
        hop: NextHop,
        jobs: Arc<JobQueue>,
        events: mpsc::UnboundedSender<WorkerEvent>,
        mut shutdown: Shutdown,
    ) {
        let mut conn: Option<Connection> = None;
        loop {
            if shutdown.is_set() {
                break;
            }
            // With a connection open, wait a little for more work before
            // closing it (Postfix's connection cache does the same).
            let idle = if conn.is_some() {
                self.queue.connection_cache_time
            } else {
                Duration::ZERO
            };
            let Some(job) = jobs.next(idle, &mut shutdown).await else {
                break;
            };
            let (prepared, reroute) = match self.pre_delivery(&hop, &job).await {
                PreDelivery::Settled(outcome) => {
                    self.finish_job(&job, vec![outcome; job.rcpts.len()], "-", &events)
                        .await;
                    continue;
                }
                PreDelivery::Deliver { message, reroute } => (message, reroute),
            };
            if let Some(other) = reroute {
                // A plugin sent this job elsewhere: a connection of its own,
                // outside this destination's cache.
                self.deliver_once(&other, &job, prepared, &events).await;
                continue;
            }
            if conn.is_none() {
                match self.connect(&hop).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        // The destination is down: everything waiting for it
                        // shares the outcome, rather than each job waiting
                        // out the same timeouts.
                        let outcome = if e.permanent {
                            RcptOutcome::Permanent(e.reason.clone())
                        } else {
                            RcptOutcome::Temporary(e.reason.clone())
                        };
                        tracing::info!(domain = %hop.domain, route = hop.route, reason = %e.reason, "destination unreachable");
                        report(&events, &job, outcome.clone());
                        let waiting = jobs.drain();
                        for j in &waiting {
                            report(&events, j, outcome.clone());
                        }
                        break;
                    }
                }
            }
            let read = match prepared {
                Some(m) => Ok(m),
                None => self.spool.read(job.location).await,
            };
            let message = match read {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(queue_id = %job.id, error = %e, "cannot read a queued message");
                    report(
                        &events,
                        &job,
                        RcptOutcome::Temporary(format!("451 4.3.0 cannot read queue file: {e}")),
                    );
                    continue;
                }
            };
            let c = conn.as_mut().expect("connected above");
            let outcomes = match c.send(&job.envelope, &job.rcpts, &message).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::info!(queue_id = %job.id, host = %c.target.host, reason = %e.reason, "connection failed during the transaction");
                    conn = None;
                    job.rcpts
                        .iter()
                        .map(|_| RcptOutcome::Temporary(e.reason.clone()))
                        .collect()
                }
            };
            let relay = conn
                .as_ref()
                .map(|c| c.target.host.clone())
                .unwrap_or_else(|| "-".into());
            self.finish_job(&job, outcomes, &relay, &events).await;
        }
        if let Some(c) = conn {
            c.quit().await;
        }
        let _ = events.send(WorkerEvent::Exited(hop));
    }
}

impl Delivery {
    /// Records a job's outcomes: deliveries in the spool first (so a crash
    /// cannot repeat them), then the queue manager and the delivery-result
    /// chain are told.
    async fn finish_job(
        &self,
        job: &Job,
        outcomes: Vec<RcptOutcome>,
        relay: &str,
        events: &mpsc::UnboundedSender<WorkerEvent>,
    ) {
        let delivered: Vec<(usize, RcptState)> = job
            .rcpts
            .iter()
            .zip(&outcomes)
            .filter_map(|(&i, o)| match o {
                RcptOutcome::Delivered(reply) => Some((
                    i,
                    RcptState::Delivered {
                        reply: reply.clone(),
                        notified: !job.envelope.wants_success_dsn(i),
                    },
                )),
                _ => None,
            })
            .collect();
        for (&i, o) in job.rcpts.iter().zip(&outcomes) {
            tracing::info!(queue_id = %job.id, rcpt = %job.envelope.recipients[i].address, relay, outcome = ?o, "delivery attempt");
        }
        if !delivered.is_empty()
            && let Err(e) = self.spool.update(job.id, delivered).await
        {
            tracing::error!(queue_id = %job.id, error = %e, "cannot record a delivery; it may be repeated after a restart");
        }
        self.delivery_result(job, &outcomes, relay);
        let _ = events.send(WorkerEvent::Outcomes {
            id: job.id,
            outcomes: job.rcpts.iter().copied().zip(outcomes).collect(),
        });
    }

    /// Delivers one job over a connection of its own (a rerouted job).
    async fn deliver_once(
        &self,
        hop: &NextHop,
        job: &Job,
        prepared: Option<Vec<u8>>,
        events: &mpsc::UnboundedSender<WorkerEvent>,
    ) {
        let (outcomes, relay) = match self.connect(hop).await {
            Err(e) => {
                let o = if e.permanent {
                    RcptOutcome::Permanent(e.reason)
                } else {
                    RcptOutcome::Temporary(e.reason)
                };
                (vec![o; job.rcpts.len()], "-".to_string())
            }
            Ok(mut c) => {
                let message = match prepared {
                    Some(m) => Ok(m),
                    None => self.spool.read(job.location).await,
                };
                let outcomes = match message {
                    Err(e) => {
                        vec![
                            RcptOutcome::Temporary(format!("451 4.3.0 cannot read queue file: {e}"));
                            job.rcpts.len()
                        ]
                    }
                    Ok(m) => match c.send(&job.envelope, &job.rcpts, &m).await {
                        Ok(o) => o,
                        Err(e) => vec![RcptOutcome::Temporary(e.reason); job.rcpts.len()],
                    },
                };
                let relay = c.target.host.clone();
                c.quit().await;
                (outcomes, relay)
            }
        };
        self.finish_job(job, outcomes, &relay, events).await;
    }

    /// What happens before an attempt: the pre-delivery chain, then DKIM
    /// signing of what it leaves.
    async fn pre_delivery(&self, hop: &NextHop, job: &Job) -> PreDelivery {
        let decided = self.pre_delivery_chain(hop, job).await;
        let PreDelivery::Deliver { message, reroute } = decided else {
            return decided;
        };
        if !self.signs(job) {
            return PreDelivery::Deliver { message, reroute };
        }
        let message = match message {
            Some(m) => m,
            None => match self.spool.read(job.location).await {
                Ok(m) => m,
                Err(e) => {
                    return PreDelivery::Settled(RcptOutcome::Temporary(format!(
                        "451 4.3.0 cannot read queue file: {e}"
                    )));
                }
            },
        };
        let signatures = self.signer.sign(&message);
        if signatures.is_empty() {
            return PreDelivery::Deliver {
                message: Some(message),
                reroute,
            };
        }
        tracing::debug!(queue_id = %job.id, signatures = signatures.len(), "DKIM signed");
        let mut signed =
            Vec::with_capacity(message.len() + signatures.iter().map(String::len).sum::<usize>());
        for s in &signatures {
            signed.extend_from_slice(s.as_bytes());
        }
        signed.extend_from_slice(&message);
        PreDelivery::Deliver {
            message: Some(signed),
            reroute,
        }
    }

    /// Whether `job` is ours to sign: keys are configured and the message
    /// came from a client allowed to relay through its listener (our own
    /// users), never from the outside, whatever its From says.
    fn signs(&self, job: &Job) -> bool {
        let client = &job.envelope.client;
        !self.signer.is_empty()
            && (client.authenticated_user.is_some()
                || self
                    .listeners
                    .iter()
                    .find(|l| l.name == client.listener)
                    .is_some_and(|l| l.may_relay(client.addr.ip())))
    }

    /// Runs the pre-delivery chain of the listener the message came in on.
    async fn pre_delivery_chain(&self, hop: &NextHop, job: &Job) -> PreDelivery {
        use crate::plugins::{Hook, HookArgs, Outcome};
        let go = PreDelivery::Deliver {
            message: None,
            reroute: None,
        };
        let Some(plugins) = self.plugins.get() else {
            return go;
        };
        let generation = plugins.current();
        let listener = &job.envelope.client.listener;
        if !generation.has_chain(listener, Hook::PreDelivery) {
            return go;
        }
        let message = match self.spool.read(job.location).await {
            Ok(m) => m,
            Err(e) => {
                return PreDelivery::Settled(RcptOutcome::Temporary(format!(
                    "451 4.3.0 cannot read queue file: {e}"
                )));
            }
        };
        let view = Arc::new(crate::plugins::MessageView::new(Arc::new(message)));
        crate::plugins::message::parse_if_large(&view).await;
        let route = self.router.route(hop.route);
        let destination = if hop.domain.is_empty() {
            route.name.clone()
        } else {
            hop.domain.clone()
        };
        let args = HookArgs::PreDelivery(&destination, view.clone());
        let result = generation.run(&self.plugin_context(job), args).await;
        let settled = |reply: crate::smtp::Reply| {
            let text = format!(
                "{} {} {}",
                reply.code,
                reply.enhanced.unwrap_or(crate::smtp::Enhanced(4, 0, 0)),
                reply.text
            );
            PreDelivery::Settled(if reply.code >= 500 {
                RcptOutcome::Permanent(text)
            } else {
                RcptOutcome::Temporary(text)
            })
        };
        match result.outcome {
            Outcome::Continue => {}
            Outcome::Refuse(reply) | Outcome::Disconnect(reply) => return settled(reply),
            Outcome::Discard { plugin } => {
                tracing::info!(queue_id = %job.id, plugin, "discarded by a plugin before delivery");
                return PreDelivery::Settled(RcptOutcome::Delivered(format!(
                    "250 2.0.0 discarded by plugin {plugin}"
                )));
            }
            Outcome::Quarantine { plugin, reason } if job.envelope.released => {
                // An operator released it from the quarantine: holding
                // it again would send it round for ever (Exchange also
                // delivers a released message past its filters).
                tracing::info!(queue_id = %job.id, plugin, reason, "released from the quarantine before: delivered despite the quarantine verdict");
            }
            Outcome::Quarantine { plugin, reason } => {
                // A copy for this attempt's recipients goes to the
                // quarantine under a queue id of its own (each next hop
                // may hold a copy); for the queue they are done.
                let mut envelope = (*job.envelope).clone();
                envelope.id = self.spool.next_id();
                envelope.recipients = job
                    .rcpts
                    .iter()
                    .map(|&i| job.envelope.recipients[i].clone())
                    .collect();
                let held = crate::queue::quarantine::Held {
                    envelope,
                    reason: reason.clone(),
                    plugin: plugin.clone(),
                    hook: "pre-delivery".into(),
                    held_at: chrono::Utc::now().timestamp(),
                };
                let held_id = held.envelope.id;
                return match self.quarantine.hold(held, view.raw().to_vec()).await {
                    Ok(()) => {
                        tracing::info!(queue_id = %job.id, held_as = %held_id, plugin, reason, "quarantined before delivery");
                        PreDelivery::Settled(RcptOutcome::Delivered(format!(
                            "250 2.0.0 held in the quarantine by plugin {plugin}"
                        )))
                    }
                    Err(e) => {
                        tracing::error!(queue_id = %job.id, error = %e, "quarantine write failed; delivery deferred");
                        PreDelivery::Settled(RcptOutcome::Temporary(format!(
                            "451 4.3.0 cannot write the quarantine: {e}"
                        )))
                    }
                };
            }
        }
        let edited = match crate::plugins::message::apply(&view, &result.mutations) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(queue_id = %job.id, error = %e, "plugin changes not applied (all or none)");
                Default::default()
            }
        };
        let env = edited.envelope;
        if !env.add_recipients.is_empty() || !env.remove_recipients.is_empty() {
            tracing::warn!(queue_id = %job.id, "recipients cannot change at pre-delivery; ignored");
        }
        let mut reroute = None;
        if let Some(name) = &env.route {
            let domain = job
                .envelope
                .recipients
                .get(job.rcpts[0])
                .and_then(|r| r.address.rsplit_once('@'))
                .map(|(_, d)| d)
                .unwrap_or("");
            match self.router.by_name(name, domain) {
                Some(mut other) => {
                    other.require_tls = hop.require_tls || env.require_tls;
                    if other != *hop {
                        tracing::info!(queue_id = %job.id, route = name, "rerouted by a plugin");
                        reroute = Some(other);
                    }
                }
                None => {
                    tracing::error!(queue_id = %job.id, route = name, "a plugin named a route that is not configured; not rerouted")
                }
            }
        }
        if reroute.is_none() && env.require_tls && !hop.require_tls {
            let mut other = hop.clone();
            other.require_tls = true;
            reroute = Some(other);
        }
        let message = edited.message.unwrap_or_else(|| view.into_bytes());
        PreDelivery::Deliver {
            message: Some(message),
            reroute,
        }
    }

    /// Tells the delivery-result chain (in the background: it cannot
    /// change anything).
    fn delivery_result(&self, job: &Job, outcomes: &[RcptOutcome], relay: &str) {
        use crate::plugins::{DeliveryOutcome, Hook, HookArgs};
        let Some(plugins) = self.plugins.get() else {
            return;
        };
        let generation = plugins.current();
        if !generation.has_chain(&job.envelope.client.listener, Hook::DeliveryResult) {
            return;
        }
        let list: Vec<DeliveryOutcome> = job
            .rcpts
            .iter()
            .zip(outcomes)
            .map(|(&i, o)| {
                let (status, reply) = match o {
                    RcptOutcome::Delivered(r) => ("delivered", r),
                    RcptOutcome::Temporary(r) => ("deferred", r),
                    RcptOutcome::Permanent(r) => ("bounced", r),
                };
                DeliveryOutcome {
                    recipient: job.envelope.recipients[i].address.clone(),
                    status: status.into(),
                    reply: reply.clone(),
                    remote_host: (relay != "-").then(|| relay.to_string()),
                }
            })
            .collect();
        let context = self.plugin_context(job);
        tokio::spawn(async move {
            generation
                .run(&context, HookArgs::DeliveryResult(&list))
                .await;
        });
    }
}

impl Delivery {
    /// What the plugins are told of a job: how its message arrived, what
    /// the data chain made of it (tags, score), and of its envelope the
    /// recipients of this attempt only.
    fn plugin_context(&self, job: &Job) -> Arc<crate::plugins::Context> {
        let client = &job.envelope.client;
        let local_domains = self
            .local_domains
            .get(&client.listener)
            .cloned()
            .unwrap_or_else(|| Arc::from([]));
        Arc::new(crate::plugins::Context {
            local_domains,
            marks: std::sync::Mutex::new(crate::plugins::Marks {
                tags: job.envelope.tags.clone(),
                score: job.envelope.score,
            }),
            helo: Some(client.helo.clone()),
            tls: client.tls.clone(),
            authenticated_user: client.authenticated_user.clone(),
            queue_id: Some(job.id.to_string()),
            sender: Some(job.envelope.sender.clone()),
            recipients: job
                .rcpts
                .iter()
                .map(|&i| job.envelope.recipients[i].address.clone())
                .collect(),
            ..crate::plugins::Context::new(client.addr, &client.listener)
        })
    }
}

fn report(events: &mpsc::UnboundedSender<WorkerEvent>, job: &Job, outcome: RcptOutcome) {
    let _ = events.send(WorkerEvent::Outcomes {
        id: job.id,
        outcomes: job.rcpts.iter().map(|&i| (i, outcome.clone())).collect(),
    });
}
