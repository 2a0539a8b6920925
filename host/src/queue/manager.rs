//! The queue manager: decides when each recipient is tried, groups
//! recipients by next hop, starts delivery workers within the concurrency
//! limits, applies the retry schedule, expires, and asks for bounces.
//!
//! One task owns all queue state (no locks around it); sessions hand it new
//! messages and workers their outcomes over one channel.
//!
//! Strategies (after Postfix's qmgr):
//! - backoff: the first retry comes after `retry_initial`, then the delay
//!   doubles up to `retry_max`, each delay scaled by a random factor in
//!   [0.8, 1.2] so that a crowd of deferred messages does not come back at
//!   once; a recipient still failing after `max_lifetime` bounces (4.4.7);
//! - fairness: each destination (MX domain, or smart host route) has its own
//!   queue, worked first come first served by at most
//!   `max_per_destination` workers; destinations waiting for a free slot
//!   under `max_concurrency` are served in turn;
//! - connection reuse: a worker keeps its connection for the next job of
//!   its destination, and keeps it open `connection_cache_time` after the
//!   queue runs empty in case more comes.
//!
//! Bounces: when no attempt is in flight for a message, the recipients that
//! failed (and, with NOTIFY=SUCCESS, were delivered) since the last report
//! get one DSN, stored as a new message to the sender. Nothing is sent for
//! the null sender or NOTIFY=NEVER. A message whose recipients are all
//! settled is finished and leaves the spool.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::mpsc;

use super::{Envelope, Location, QueueId, RcptState, Spool, StoredMessage};
use crate::config::QueueConfig;
use crate::delivery::client::RcptOutcome;
use crate::delivery::dsn::{self, Action};
use crate::delivery::{Delivery, Job, JobQueue, NextHop, WorkerEvent};
use crate::shutdown::Shutdown;

/// How sessions hand accepted messages to the queue manager.
#[derive(Clone)]
pub struct QueueHandle {
    events: mpsc::UnboundedSender<Event>,
}

impl QueueHandle {
    /// A handle whose messages go nowhere (they stay in the spool): for
    /// tests of the SMTP side alone.
    #[cfg(test)]
    pub(crate) fn detached() -> QueueHandle {
        QueueHandle {
            events: mpsc::unbounded_channel().0,
        }
    }

    /// Queues a message that is already in the spool. If the manager has
    /// stopped, the message waits in the spool for the next start.
    pub fn submit(&self, message: StoredMessage) {
        let _ = self.events.send(Event::New(Box::new(message)));
    }
}

enum Event {
    New(Box<StoredMessage>),
    Worker(WorkerEvent),
    /// A message has been moved forward in the spool (or could not be).
    Moved {
        id: QueueId,
        location: Option<Location>,
    },
    /// A DSN for these recipients has been stored (or could not be).
    Notified {
        id: QueueId,
        rcpts: Vec<usize>,
        stored: bool,
    },
}

struct Entry {
    envelope: Arc<Envelope>,
    location: Location,
    states: Vec<RcptState>,
    in_flight: Vec<bool>,
    /// A DSN is being built for this message.
    notifying: bool,
    /// The delay warning has been sent (kept in memory only).
    warned: bool,
    /// Being rewritten into a newer spool segment: not dispatched meanwhile.
    moving: bool,
}

#[derive(Default)]
struct Destination {
    jobs: Arc<JobQueue>,
    workers: usize,
}

/// The manager's state; runs as one task.
struct Manager {
    delivery: Arc<Delivery>,
    spool: Spool,
    config: QueueConfig,
    messages: HashMap<QueueId, Entry>,
    /// (time due in Unix ms, message): when each message next needs a look.
    due: BTreeSet<(i64, QueueId)>,
    destinations: HashMap<NextHop, Destination>,
    /// Destinations with jobs but no worker, waiting for a free slot.
    waiting: VecDeque<NextHop>,
    workers: usize,
    /// Shutting down: no new deliveries start.
    stopping: bool,
    events_tx: mpsc::UnboundedSender<Event>,
    worker_tx: mpsc::UnboundedSender<WorkerEvent>,
    shutdown: Shutdown,
}

/// Starts the queue manager with the messages recovered from the spool.
/// `done` is held until the manager and all its workers have stopped.
pub fn start(
    delivery: Arc<Delivery>,
    config: QueueConfig,
    recovered: Vec<StoredMessage>,
    shutdown: Shutdown,
    done: mpsc::Sender<()>,
) -> QueueHandle {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let (worker_tx, mut worker_rx) = mpsc::unbounded_channel();
    let mut manager = Manager {
        spool: delivery.spool().clone(),
        delivery,
        config,
        messages: HashMap::new(),
        due: BTreeSet::new(),
        destinations: HashMap::new(),
        waiting: VecDeque::new(),
        workers: 0,
        stopping: false,
        events_tx: events_tx.clone(),
        worker_tx,
        shutdown: shutdown.clone(),
    };
    for m in recovered {
        let id = m.envelope.id;
        manager.add(m);
        manager.due.insert((0, id));
    }
    let mut stop = shutdown;
    tokio::spawn(async move {
        let _done = done;
        let mut stopping = false;
        if manager.config.paused {
            tracing::info!(
                messages = manager.messages.len(),
                "queue is paused (queue.paused = true): nothing will be delivered"
            );
        }
        loop {
            if stopping {
                if manager.workers == 0 {
                    tracing::debug!("queue manager stopped");
                    break;
                }
            } else if !manager.config.paused {
                manager.dispatch_due(now_ms());
            }
            let wake = manager.due.first().map(|(t, _)| *t);
            let sleep = async {
                match wake {
                    Some(t) if !stopping => {
                        let ms = (t - now_ms()).max(0) as u64;
                        tokio::time::sleep(Duration::from_millis(ms)).await
                    }
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(e) = events_rx.recv() => manager.handle(e),
                Some(e) = worker_rx.recv() => manager.handle(Event::Worker(e)),
                _ = sleep => {}
                _ = stop.wait(), if !stopping => {
                    tracing::info!(workers = manager.workers, "queue manager stopping; deliveries in flight finish");
                    stopping = true;
                    manager.stopping = true;
                }
            }
        }
    });
    QueueHandle { events: events_tx }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Manager {
    fn add(&mut self, m: StoredMessage) {
        let id = m.envelope.id;
        let n = m.states.len();
        self.messages.insert(
            id,
            Entry {
                envelope: Arc::new(m.envelope),
                location: m.location,
                states: m.states,
                in_flight: vec![false; n],
                notifying: false,
                warned: false,
                moving: false,
            },
        );
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::New(m) => {
                let id = m.envelope.id;
                self.add(*m);
                if self.config.paused || self.stopping {
                    self.due.insert((0, id));
                } else {
                    self.dispatch(id, now_ms());
                }
            }
            Event::Worker(WorkerEvent::Outcomes { id, outcomes }) => self.outcomes(id, outcomes),
            Event::Worker(WorkerEvent::Exited(hop)) => {
                self.workers -= 1;
                if let Some(d) = self.destinations.get_mut(&hop) {
                    d.workers -= 1;
                }
                self.start_workers(&hop);
                while self.workers < self.config.max_concurrency {
                    let Some(hop) = self.waiting.pop_front() else {
                        break;
                    };
                    self.start_workers(&hop);
                }
            }
            Event::Moved { id, location } => {
                let Some(e) = self.messages.get_mut(&id) else {
                    return;
                };
                e.moving = false;
                if let Some(location) = location {
                    e.location = location;
                }
                self.due.insert((now_ms(), id));
            }
            Event::Notified { id, rcpts, stored } => {
                let Some(e) = self.messages.get_mut(&id) else {
                    return;
                };
                e.notifying = false;
                if stored {
                    let mut changed = Vec::new();
                    for i in rcpts {
                        match &mut e.states[i] {
                            RcptState::Delivered { notified, .. }
                            | RcptState::Failed { notified, .. } => {
                                *notified = true;
                                changed.push((i, e.states[i].clone()));
                            }
                            RcptState::Pending { .. } => {}
                        }
                    }
                    if !changed.is_empty() {
                        self.spool.update_detached(id, changed);
                    }
                } else {
                    // Try the report again in a minute.
                    self.due.insert((now_ms() + 60_000, id));
                }
                self.settle(id);
            }
        }
    }

    fn dispatch_due(&mut self, now: i64) {
        while let Some(&(t, id)) = self.due.first() {
            if t > now {
                break;
            }
            self.due.pop_first();
            self.dispatch(id, now);
        }
    }

    /// Sends the due recipients of a message to their destinations.
    fn dispatch(&mut self, id: QueueId, now: i64) {
        let Some(e) = self.messages.get_mut(&id) else {
            return;
        };
        let mut groups: HashMap<NextHop, Vec<usize>> = HashMap::new();
        let mut unroutable = Vec::new();
        let mut next_due: Option<i64> = None;
        for (i, state) in e.states.iter().enumerate() {
            let RcptState::Pending { next_attempt, .. } = state else {
                continue;
            };
            if e.in_flight[i] {
                continue;
            }
            if *next_attempt > now {
                next_due = Some(next_due.map_or(*next_attempt, |d: i64| d.min(*next_attempt)));
                continue;
            }
            match self.delivery.next_hop_for(&e.envelope, i) {
                Some(hop) => groups.entry(hop).or_default().push(i),
                None => unroutable.push(i),
            }
        }
        for i in unroutable {
            e.states[i] = RcptState::Failed {
                reply: "554 5.4.4 No route for the recipient's domain".into(),
                notified: !e.envelope.wants_failure_dsn(i),
            };
            self.spool
                .update_detached(id, vec![(i, e.states[i].clone())]);
        }
        let mut jobs = Vec::with_capacity(groups.len());
        for (hop, rcpts) in groups {
            for &i in &rcpts {
                e.in_flight[i] = true;
            }
            let job = Job {
                id,
                envelope: e.envelope.clone(),
                location: e.location,
                rcpts,
            };
            jobs.push((hop, job));
        }
        for (hop, job) in jobs {
            self.destinations
                .entry(hop.clone())
                .or_default()
                .jobs
                .push(job);
            self.start_workers(&hop);
        }
        if let Some(t) = next_due {
            self.due.insert((t, id));
        }
        self.warn_if_delayed(id, now);
        self.settle(id);
    }

    /// Starts workers for a destination up to the limits.
    fn start_workers(&mut self, hop: &NextHop) {
        // Shutting down: workers in flight finish, no new ones start.
        if self.stopping {
            return;
        }
        let Some(d) = self.destinations.get_mut(hop) else {
            return;
        };
        let queued = d.jobs.len();
        let wanted = queued.min(self.config.max_per_destination);
        while d.workers < wanted {
            if self.workers >= self.config.max_concurrency {
                if !self.waiting.contains(hop) {
                    self.waiting.push_back(hop.clone());
                }
                return;
            }
            d.workers += 1;
            self.workers += 1;
            tokio::spawn(self.delivery.clone().run_worker(
                hop.clone(),
                d.jobs.clone(),
                self.worker_tx.clone(),
                self.shutdown.clone(),
            ));
        }
        if queued == 0 && d.workers == 0 {
            self.destinations.remove(hop);
        }
    }

    /// Applies a job's outcomes: delivered, bounced, or deferred with backoff.
    fn outcomes(&mut self, id: QueueId, outcomes: Vec<(usize, RcptOutcome)>) {
        let now = now_ms();
        let Some(e) = self.messages.get_mut(&id) else {
            return;
        };
        let mut changed = Vec::new();
        let mut next_due: Option<i64> = None;
        for (i, outcome) in outcomes {
            e.in_flight[i] = false;
            let state = match outcome {
                RcptOutcome::Delivered(reply) => RcptState::Delivered {
                    reply,
                    notified: !e.envelope.wants_success_dsn(i),
                },
                RcptOutcome::Permanent(reply) => RcptState::Failed {
                    reply,
                    notified: !e.envelope.wants_failure_dsn(i),
                },
                RcptOutcome::Temporary(reply) => {
                    let attempts = match &e.states[i] {
                        RcptState::Pending { attempts, .. } => attempts + 1,
                        _ => 1,
                    };
                    let age = now - e.envelope.received_at * 1000;
                    if age >= self.config.max_lifetime.as_millis() as i64 {
                        RcptState::Failed {
                            reply: format!(
                                "451 4.4.7 Delivery time expired after {attempts} attempts; last error: {reply}"
                            ),
                            notified: !e.envelope.wants_failure_dsn(i),
                        }
                    } else {
                        let next = now + backoff(&self.config, attempts).as_millis() as i64;
                        next_due = Some(next_due.map_or(next, |d: i64| d.min(next)));
                        RcptState::Pending {
                            attempts,
                            next_attempt: next,
                            last_reply: Some(reply),
                        }
                    }
                }
            };
            e.states[i] = state.clone();
            changed.push((i, state));
        }
        if !changed.is_empty() {
            self.spool.update_detached(id, changed);
        }
        if let Some(t) = next_due {
            self.due.insert((t, id));
            self.move_forward_if_old(id);
        }
        self.settle(id);
    }

    /// A deferred message that keeps the oldest spool segment on disk is
    /// rewritten into the current one, so a long outage to one destination
    /// does not keep everything received since on disk.
    fn move_forward_if_old(&mut self, id: QueueId) {
        let Some(e) = self.messages.get_mut(&id) else {
            return;
        };
        if e.moving || e.in_flight.iter().any(|&f| f) || !self.spool.holds_oldest(e.location) {
            return;
        }
        e.moving = true;
        let (spool, events) = (self.spool.clone(), self.events_tx.clone());
        let (envelope, states, old) = (e.envelope.clone(), e.states.clone(), e.location);
        tokio::spawn(async move {
            let location = match spool.relocate(&envelope, &states, old).await {
                Ok(l) => {
                    tracing::debug!(queue_id = %id, from = old.segment, to = l.segment, "deferred message moved forward in the spool");
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(queue_id = %id, error = %e, "cannot move a deferred message forward in the spool");
                    None
                }
            };
            let _ = events.send(Event::Moved { id, location });
        });
    }

    /// Once nothing is in flight: report what needs reporting, and finish
    /// the message when every recipient is settled.
    fn settle(&mut self, id: QueueId) {
        let Some(e) = self.messages.get_mut(&id) else {
            return;
        };
        if e.notifying || e.in_flight.iter().any(|&f| f) {
            return;
        }
        let entries: Vec<dsn::Entry> = e
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                RcptState::Delivered {
                    reply,
                    notified: false,
                } => Some(dsn::Entry {
                    rcpt: i,
                    action: Action::Delivered,
                    reply: reply.clone(),
                }),
                RcptState::Failed {
                    reply,
                    notified: false,
                } => Some(dsn::Entry {
                    rcpt: i,
                    action: Action::Failed,
                    reply: reply.clone(),
                }),
                _ => None,
            })
            .collect();
        if !entries.is_empty() {
            e.notifying = true;
            let rcpts = entries.iter().map(|x| x.rcpt).collect();
            let (envelope, location) = (e.envelope.clone(), e.location);
            self.notify(id, envelope, location, entries, rcpts);
            return;
        }
        if e.states.iter().all(RcptState::is_settled) {
            self.messages.remove(&id);
            self.spool.finish_detached(id);
            tracing::info!(queue_id = %id, "removed");
        }
    }

    /// Sends one "delayed" DSN when a message has waited `delay_warning`.
    fn warn_if_delayed(&mut self, id: QueueId, now: i64) {
        let limit = self.config.delay_warning;
        let Some(e) = self.messages.get_mut(&id) else {
            return;
        };
        if limit.is_zero() || e.warned || e.envelope.sender.is_empty() {
            return;
        }
        let age = now - e.envelope.received_at * 1000;
        if age < limit.as_millis() as i64 {
            // Look again when the warning would be due.
            self.due
                .insert((e.envelope.received_at * 1000 + limit.as_millis() as i64, id));
            return;
        }
        let entries: Vec<dsn::Entry> = e
            .states
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                RcptState::Pending {
                    last_reply: Some(reply),
                    ..
                } => {
                    let n = &e.envelope.recipients[i].notify;
                    // DELAY is on by default (RFC 3461 4.1), off if NOTIFY
                    // was given without it.
                    let wants = n.delay || !(n.success || n.failure || n.never);
                    wants.then(|| dsn::Entry {
                        rcpt: i,
                        action: Action::Delayed,
                        reply: reply.clone(),
                    })
                }
                _ => None,
            })
            .collect();
        if entries.is_empty() {
            return;
        }
        e.warned = true;
        let (envelope, location) = (e.envelope.clone(), e.location);
        self.notify(id, envelope, location, entries, Vec::new());
    }

    /// Builds and stores a DSN in the background, then reports back.
    fn notify(
        &self,
        id: QueueId,
        envelope: Arc<Envelope>,
        location: Location,
        entries: Vec<dsn::Entry>,
        rcpts: Vec<usize>,
    ) {
        let spool = self.spool.clone();
        let events = self.events_tx.clone();
        let hostname = self.delivery.hostname().to_string();
        tokio::spawn(async move {
            let stored = match store_dsn(&spool, &hostname, &envelope, location, &entries).await {
                Ok(Some(m)) => {
                    tracing::info!(queue_id = %id, dsn = %m.envelope.id, to = %envelope.sender, "delivery status notification queued");
                    let _ = events.send(Event::New(Box::new(m)));
                    true
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "cannot queue a delivery status notification");
                    false
                }
            };
            let _ = events.send(Event::Notified { id, rcpts, stored });
        });
    }
}

/// Builds the DSN and stores it as a new message from the null sender.
async fn store_dsn(
    spool: &Spool,
    hostname: &str,
    envelope: &Envelope,
    location: Location,
    entries: &[dsn::Entry],
) -> Result<Option<StoredMessage>, super::SpoolError> {
    if envelope.sender.is_empty() {
        return Ok(None);
    }
    let original = spool.read(location).await?;
    let bytes = dsn::build(hostname, envelope, entries, &original);
    let id = spool.next_id();
    let dsn_envelope = Envelope {
        id,
        sender: String::new(),
        recipients: vec![super::Recipient {
            address: envelope.sender.clone(),
            orcpt: None,
            notify: Default::default(),
        }],
        ret: None,
        envid: None,
        // The report may carry 8-bit text from the original; its envelope
        // needs SMTPUTF8 only if the sender's address does.
        body: super::BodyType::EightBitMime,
        smtputf8: !envelope.sender.is_ascii(),
        client: super::ClientInfo {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            helo: hostname.to_string(),
            listener: "dsn".into(),
            tls: None,
            authenticated_user: None,
        },
        received_at: chrono::Utc::now().timestamp(),
        size: bytes.len() as u64,
        route: None,
        require_tls: false,
        tags: Vec::new(),
        score: 0.0,
        released: false,
    };
    let location = spool.store(&dsn_envelope, bytes).await?;
    Ok(Some(StoredMessage {
        states: vec![RcptState::new()],
        envelope: dsn_envelope,
        location,
        message: None,
    }))
}

/// The delay before attempt `attempts + 1`.
fn backoff(config: &QueueConfig, attempts: u32) -> Duration {
    let base =
        config.retry_initial.as_secs_f64() * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
    let jittered = base * rand::rng().random_range(0.8..1.2);
    Duration::from_secs_f64(jittered.min(config.retry_max.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let config = QueueConfig::default();
        for _ in 0..100 {
            let first = backoff(&config, 1).as_secs_f64();
            assert!((240.0..=360.0).contains(&first), "{first}");
            let third = backoff(&config, 3).as_secs_f64();
            assert!((960.0..=1440.0).contains(&third), "{third}");
            assert!(backoff(&config, 40) <= config.retry_max);
        }
    }
}
