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
}

impl Delivery {
    /// Builds the resolver and the routes' TLS configurations.
    pub fn new(config: &Config, spool: Spool) -> Result<Delivery, DeliveryError> {
        let resolver = dns::resolver(&config.dns).map_err(DeliveryError::Dns)?;
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
        })
    }

    /// The next hop of a recipient address, if any route takes its domain.
    pub fn next_hop(&self, address: &str) -> Option<NextHop> {
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        self.router.next_hop(domain)
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
        let settings = Settings {
            helo: route.helo.as_deref().unwrap_or(&self.hostname),
            lmtp: route.kind == RouteKind::Lmtp,
            tls: route.tls,
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
                Err(e) if e.tls_failed && route.tls == OutboundTls::Opportunistic => {
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
            let message = match self.spool.read(job.location).await {
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
            let relay = conn.as_ref().map(|c| c.target.host.as_str()).unwrap_or("-");
            for (&i, o) in job.rcpts.iter().zip(&outcomes) {
                tracing::info!(queue_id = %job.id, rcpt = %job.envelope.recipients[i].address, relay, outcome = ?o, "delivery attempt");
            }
            if !delivered.is_empty()
                && let Err(e) = self.spool.update(job.id, delivered).await
            {
                tracing::error!(queue_id = %job.id, error = %e, "cannot record a delivery; it may be repeated after a restart");
            }
            let _ = events.send(WorkerEvent::Outcomes {
                id: job.id,
                outcomes: job.rcpts.iter().copied().zip(outcomes).collect(),
            });
        }
        if let Some(c) = conn {
            c.quit().await;
        }
        let _ = events.send(WorkerEvent::Exited(hop));
    }
}

fn report(events: &mpsc::UnboundedSender<WorkerEvent>, job: &Job, outcome: RcptOutcome) {
    let _ = events.send(WorkerEvent::Outcomes {
        id: job.id,
        outcomes: job.rcpts.iter().map(|&i| (i, outcome.clone())).collect(),
    });
}
