//! The durable spool: an append-only log of segment files with group commit.
//!
//! Why a log and not a file per message (Postfix's way): on this class of
//! disk one `fsync` costs about 0.3–0.6 ms, so a file per message with its
//! directory fsync caps a gateway near 2,000 messages/s however many cores
//! it has. Appending many messages and syncing once acknowledges them all
//! for the price of one sync (measured: 0.025 ms per 4 KiB message in
//! batches of 20).
//!
//! Layout: `DATA_DIR/spool/segment-NNNNNNNNNNNNNNNN.log`. A running gateway
//! appends only to the segment it created at start; earlier segments are
//! read-only. Each record is
//!
//! ```text
//! magic "WEIR" | kind u8 | 0 0 0 | payload length u32 LE | CRC-32 u32 LE | payload
//! ```
//!
//! and the CRC covers kind and payload. Three kinds of record:
//!
//! - message: the envelope's length (u32 LE), the envelope as JSON, then the
//!   message bytes;
//! - state: JSON `{id, rcpts: [[index, RcptState], ...]}`, a change in some
//!   recipients' delivery state;
//! - done: JSON `{id}`, the message is finished and may be forgotten;
//! - moved: a message rewritten into a newer segment with its recipients'
//!   states (the metadata's length, JSON `{envelope, states}`, the bytes);
//!   it replaces the older copy.
//!
//! Recovery replays them in order. A segment is deleted once every message
//! stored in it and in all older segments is done: deleting oldest first
//! means a state or done record never outlives the message it is about.
//! So that one message deferred for days does not keep every later segment
//! on disk, the queue manager moves a deferred message that holds the
//! oldest segment forward ([`Spool::relocate`]).
//!
//! Guarantee: [`Spool::store`] resolves only after the record has been
//! written and `fdatasync`ed (and, for a new segment, after the directory
//! entry has been synced too). A crash can leave a torn record at the end of
//! the newest segment; its length or CRC then fails to check, and recovery
//! stops reading that segment there, so a partial write is never taken for
//! a message.
//!
//! One writer thread owns the open segment: sessions send it records over a
//! channel; it takes everything waiting, writes it, syncs once and answers
//! each sender. Under load the batch grows by itself. When other sessions
//! are about to hand over a message (they hold an [`Arriving`]: their
//! data is in, their data-hook plugins are running), the writer waits for
//! those announced before the wait began, up to [`COMMIT_DELAY`], before
//! it syncs, as PostgreSQL's `commit_delay` with `commit_siblings` does:
//! one sync then covers them too. Measured in `bench/` (relay, 20
//! sessions): with the bundled plugins at data each message had a sync of
//! its own (1.0 per message, about 75 µs of kernel time each on this VM),
//! because the plugins spread the arrivals out; with the wait, 0.53 and
//! 9-12% more messages/s, with and without plugins. A lone session never
//! waits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Envelope, RcptState};

const MAGIC: &[u8; 4] = b"WEIR";
const HEADER_LEN: usize = 16;
const KIND_MESSAGE: u8 = 1;
const KIND_STATE: u8 = 2;
const KIND_DONE: u8 = 3;
const KIND_MOVED: u8 = 4;
/// Writes larger than this skip the batch buffer.
const WRITE_BUFFER: usize = 256 * 1024;

/// A message's identity in the queue: microseconds since the Unix epoch at
/// MAIL FROM, made unique and increasing by the spool. Shown as 16 hex
/// digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl FromStr for QueueId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(QueueId)
    }
}

impl Serialize for QueueId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The disk said no.
    #[error("spool I/O error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process holds the spool.
    #[error("spool {0} is in use by another weir process")]
    Locked(PathBuf),
    /// The writer thread is gone (it only stops when every handle is dropped,
    /// or after an I/O error it could not recover from).
    #[error("spool writer has stopped")]
    WriterGone,
    /// A message too large for a record (over 4 GiB).
    #[error("message of {0} bytes is too large for the spool")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a message's bytes are in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Segment number.
    pub segment: u64,
    /// Offset of the message bytes in the segment.
    pub offset: u64,
    /// Length of the message bytes.
    pub len: u64,
}

/// A message found in the spool, with its recipients' states.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its envelope.
    pub envelope: Envelope,
    /// Where its bytes are.
    pub location: Location,
    /// One state per envelope recipient, in the same order.
    pub states: Vec<RcptState>,
    /// The message bytes, if asked for.
    pub message: Option<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct StateRecord {
    id: QueueId,
    rcpts: Vec<(usize, RcptState)>,
}

#[derive(Serialize, Deserialize)]
struct DoneRecord {
    id: QueueId,
}

#[derive(Serialize, Deserialize)]
struct MovedRecord {
    envelope: Envelope,
    states: Vec<RcptState>,
}

/// A handle on the spool; cheap to clone, shared by all sessions.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// The longest the writer waits for arriving messages before a sync.
pub const COMMIT_DELAY: Duration = Duration::from_millis(1);

/// A message on its way to the spool: while any is announced, the writer
/// holds a sync back (up to [`COMMIT_DELAY`]) for it. Handed to
/// [`Spool::store_arriving`], or dropped if the message is not stored
/// after all (a plugin refused it), which lets a waiting writer go on.
pub struct Arriving {
    count: Arc<Announced>,
    writer: mpsc::Sender<Job>,
    /// Still counted (not handed to the writer with its message).
    armed: bool,
}

impl Drop for Arriving {
    fn drop(&mut self) {
        if self.armed {
            self.count.settled.fetch_add(1, Ordering::AcqRel);
            // Wakes a writer waiting for this message.
            let (done, _) = oneshot::channel();
            let _ = self.writer.send(Job {
                head: Vec::new(),
                body: Vec::new(),
                kind: JobKind::Wake,
                arrived: false,
                done,
            });
        }
    }
}

struct Inner {
    /// The oldest segment on disk, as the writer last saw it.
    oldest: Arc<AtomicU64>,
    /// Messages announced with [`Spool::arriving`], and how many of them
    /// the writer has received (or will not get).
    arriving: Arc<Announced>,
    /// Syncs of appended records so far.
    syncs: Arc<AtomicU64>,
    writer: mpsc::Sender<Job>,
    last_id: AtomicU64,
    dir: PathBuf,
    // Held for the life of the spool: the advisory lock on `dir/lock`.
    _lock: File,
}

struct Job {
    /// Record header and the start of the payload.
    head: Vec<u8>,
    /// The rest of the payload (message bytes), kept apart to avoid a copy.
    body: Vec<u8>,
    kind: JobKind,
    /// Announced with [`Spool::arriving`]: the writer takes it off the
    /// count when it receives it.
    arrived: bool,
    done: oneshot::Sender<Result<Location, SpoolError>>,
}

enum JobKind {
    Message(QueueId),
    Moved(QueueId),
    State,
    Done(QueueId),
    /// Writes nothing; answered once everything queued before it is on disk.
    Barrier,
    /// Not written nor answered: an announced message will not come.
    Wake,
}

impl Spool {
    /// Opens (creating if needed) the spool under `data_dir/spool`, recovers
    /// what it holds, and starts the writer on a fresh segment.
    pub fn open(
        data_dir: &Path,
        segment_size: u64,
    ) -> Result<(Spool, Vec<StoredMessage>), SpoolError> {
        Spool::open_with(data_dir, segment_size, COMMIT_DELAY)
    }

    /// [`Spool::open`] with another longest wait for arriving messages.
    pub fn open_with(
        data_dir: &Path,
        segment_size: u64,
        commit_delay: Duration,
    ) -> Result<(Spool, Vec<StoredMessage>), SpoolError> {
        let dir = data_dir.join("spool");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        } != 0
        {
            return Err(SpoolError::Locked(dir));
        }

        let recovered = scan(data_dir, false)?;
        let segments = list_segments(&dir)?;
        let next_segment = segments.last().map(|(n, _)| n + 1).unwrap_or(1);
        let max_id = recovered.iter().map(|m| m.envelope.id.0).max().unwrap_or(0);

        // What keeps each existing segment alive: the unfinished messages in it.
        let mut live: BTreeMap<u64, usize> = segments.iter().map(|(n, _)| (*n, 0)).collect();
        let mut home = HashMap::new();
        for m in &recovered {
            *live.entry(m.location.segment).or_default() += 1;
            home.insert(m.envelope.id, m.location.segment);
        }
        let mut writer = SegmentWriter::create(&dir, next_segment, segment_size)?;
        writer.live = live;
        writer.home = home;
        writer.collect_garbage();
        let oldest = writer.oldest.clone();
        let (tx, rx) = mpsc::channel();
        let arriving = Arc::new(Announced::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let group = Group {
            arriving: arriving.clone(),
            delay: commit_delay,
            syncs: syncs.clone(),
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx, group))
            .map_err(io_err(&dir))?;

        let spool = Spool {
            inner: Arc::new(Inner {
                arriving,
                syncs,
                writer: tx,
                last_id: AtomicU64::new(max_id),
                oldest,
                dir,
                _lock: lock,
            }),
        };
        Ok((spool, recovered))
    }

    /// Announces a message that will be stored soon (its data is in), so
    /// a sync due meanwhile waits for it; see [`COMMIT_DELAY`].
    pub fn arriving(&self) -> Arriving {
        self.inner.arriving.announced.fetch_add(1, Ordering::AcqRel);
        Arriving {
            count: self.inner.arriving.clone(),
            writer: self.inner.writer.clone(),
            armed: true,
        }
    }

    /// [`Spool::store`] for a message announced with [`Spool::arriving`].
    pub async fn store_arriving(
        &self,
        mut arriving: Arriving,
        envelope: &Envelope,
        message: Vec<u8>,
    ) -> Result<Location, SpoolError> {
        let wait = self.enqueue_message(envelope, message, true);
        // Sent: the writer settles it. Not sent: dropping it does.
        arriving.armed = wait.is_err();
        drop(arriving);
        wait?.await.map_err(|_| SpoolError::WriterGone)?
    }

    /// How many times the writer has synced appended records.
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A new queue id, unique within this spool and larger than any before.
    pub fn next_id(&self) -> QueueId {
        let now = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let prev = self
            .inner
            .last_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .expect("closure always returns Some");
        QueueId(now.max(prev + 1))
    }

    /// Stores a message; resolves once it is on disk and synced.
    pub async fn store(
        &self,
        envelope: &Envelope,
        message: Vec<u8>,
    ) -> Result<Location, SpoolError> {
        let wait = self.enqueue_message(envelope, message, false)?;
        wait.await.map_err(|_| SpoolError::WriterGone)?
    }

    fn enqueue_message(
        &self,
        envelope: &Envelope,
        message: Vec<u8>,
        arrived: bool,
    ) -> Result<oneshot::Receiver<Result<Location, SpoolError>>, SpoolError> {
        let envelope_json = serde_json::to_vec(envelope).expect("envelope serialises");
        let mut prefix = Vec::with_capacity(4 + envelope_json.len());
        prefix.extend_from_slice(&(envelope_json.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&envelope_json);
        self.enqueue_as(
            KIND_MESSAGE,
            prefix,
            message,
            JobKind::Message(envelope.id),
            arrived,
        )
    }

    /// Records new states for some recipients of a message.
    pub async fn update(
        &self,
        id: QueueId,
        rcpts: Vec<(usize, RcptState)>,
    ) -> Result<(), SpoolError> {
        let json = serde_json::to_vec(&StateRecord { id, rcpts }).expect("state serialises");
        self.append(KIND_STATE, json, Vec::new(), JobKind::State)
            .await
            .map(drop)
    }

    /// Marks a message finished: it will not be recovered again, and its
    /// segment can go once everything older is finished too.
    pub async fn finish(&self, id: QueueId) -> Result<(), SpoolError> {
        let json = serde_json::to_vec(&DoneRecord { id }).expect("done serialises");
        self.append(KIND_DONE, json, Vec::new(), JobKind::Done(id))
            .await
            .map(drop)
    }

    /// Whether a message stored at `location` keeps the oldest segment on
    /// disk while newer ones exist: then moving it lets that segment go.
    pub fn holds_oldest(&self, location: Location) -> bool {
        location.segment <= self.inner.oldest.load(Ordering::Relaxed)
    }

    /// Rewrites a message, with its recipients' current states, into the
    /// segment being written; returns its new location. The old copy stops
    /// counting once this is on disk.
    pub async fn relocate(
        &self,
        envelope: &Envelope,
        states: &[RcptState],
        old: Location,
    ) -> Result<Location, SpoolError> {
        let bytes = self.read(old).await?;
        let meta = serde_json::to_vec(&MovedRecord {
            envelope: envelope.clone(),
            states: states.to_vec(),
        })
        .expect("moved record serialises");
        let mut prefix = Vec::with_capacity(4 + meta.len());
        prefix.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        prefix.extend_from_slice(&meta);
        self.append(KIND_MOVED, prefix, bytes, JobKind::Moved(envelope.id))
            .await
    }

    /// Resolves once every record handed to the spool before it is on disk
    /// (the detached ones included).
    pub async fn flush(&self) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.inner
            .writer
            .send(Job {
                head: Vec::new(),
                body: Vec::new(),
                kind: JobKind::Barrier,
                arrived: false,
                done,
            })
            .map_err(|_| SpoolError::WriterGone)?;
        wait.await.map_err(|_| SpoolError::WriterGone)?.map(drop)
    }

    /// Reads a message's bytes back.
    pub async fn read(&self, location: Location) -> Result<Vec<u8>, SpoolError> {
        let path = self.inner.dir.join(segment_name(location.segment));
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let file = File::open(&path).map_err(io_err(&path))?;
            let mut bytes = vec![0; location.len as usize];
            file.read_exact_at(&mut bytes, location.offset)
                .map_err(io_err(&path))?;
            Ok(bytes)
        })
        .await
        .map_err(|_| SpoolError::WriterGone)?
    }

    /// Like [`Spool::update`], without waiting for the disk: the record is
    /// queued at once, so it is written before anything queued after it
    /// (a later `finish`, say). Errors are logged.
    pub fn update_detached(&self, id: QueueId, rcpts: Vec<(usize, RcptState)>) {
        let json = serde_json::to_vec(&StateRecord { id, rcpts }).expect("state serialises");
        self.detach(self.enqueue(KIND_STATE, json, Vec::new(), JobKind::State));
    }

    /// Like [`Spool::finish`], without waiting for the disk.
    pub fn finish_detached(&self, id: QueueId) {
        let json = serde_json::to_vec(&DoneRecord { id }).expect("done serialises");
        self.detach(self.enqueue(KIND_DONE, json, Vec::new(), JobKind::Done(id)));
    }

    fn detach(&self, queued: Result<oneshot::Receiver<Result<Location, SpoolError>>, SpoolError>) {
        match queued {
            Ok(wait) => {
                tokio::spawn(async move {
                    if let Ok(Err(e)) = wait.await {
                        tracing::error!(error = %e, "spool: a queue state record was not written");
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "spool: a queue state record was not written"),
        }
    }

    async fn append(
        &self,
        kind: u8,
        prefix: Vec<u8>,
        body: Vec<u8>,
        job: JobKind,
    ) -> Result<Location, SpoolError> {
        let wait = self.enqueue(kind, prefix, body, job)?;
        wait.await.map_err(|_| SpoolError::WriterGone)?
    }

    /// Hands a record to the writer thread now; the receiver resolves once
    /// it is on disk.
    fn enqueue(
        &self,
        kind: u8,
        prefix: Vec<u8>,
        body: Vec<u8>,
        job: JobKind,
    ) -> Result<oneshot::Receiver<Result<Location, SpoolError>>, SpoolError> {
        self.enqueue_as(kind, prefix, body, job, false)
    }

    fn enqueue_as(
        &self,
        kind: u8,
        prefix: Vec<u8>,
        body: Vec<u8>,
        job: JobKind,
        arrived: bool,
    ) -> Result<oneshot::Receiver<Result<Location, SpoolError>>, SpoolError> {
        let payload_len = prefix.len() + body.len();
        let payload_len32 =
            u32::try_from(payload_len).map_err(|_| SpoolError::TooLarge(body.len()))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&[kind]);
        crc.update(&prefix);
        crc.update(&body);

        let mut head = Vec::with_capacity(HEADER_LEN + prefix.len());
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&[kind, 0, 0, 0]);
        head.extend_from_slice(&payload_len32.to_le_bytes());
        head.extend_from_slice(&crc.finalize().to_le_bytes());
        head.extend_from_slice(&prefix);

        let (done, wait) = oneshot::channel();
        self.inner
            .writer
            .send(Job {
                head,
                body,
                kind: job,
                arrived,
                done,
            })
            .map_err(|_| SpoolError::WriterGone)?;
        Ok(wait)
    }
}

/// Counts of [`Arriving`] messages: every announced one is settled once,
/// when the writer receives it or when it is dropped unstored.
#[derive(Default)]
struct Announced {
    announced: AtomicU64,
    settled: AtomicU64,
}

/// What the writer shares with the spool handles for group commit.
struct Group {
    /// Messages announced, and settled.
    arriving: Arc<Announced>,
    /// The longest a sync waits for them.
    delay: Duration,
    /// Syncs done.
    syncs: Arc<AtomicU64>,
}

/// The writer thread's state: the segment it appends to, and what keeps
/// older segments alive.
struct SegmentWriter {
    dir: PathBuf,
    number: u64,
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes known to be complete records (synced or about to be).
    len: u64,
    max_len: u64,
    /// Unfinished messages per segment (every segment on disk has an entry).
    live: BTreeMap<u64, usize>,
    /// The segment each unfinished message is in.
    home: HashMap<QueueId, u64>,
    /// Shared with the spool handles: the oldest segment still on disk,
    /// if it is not the one being written (else 0).
    oldest: Arc<AtomicU64>,
}

impl SegmentWriter {
    fn create(dir: &Path, number: u64, max_len: u64) -> Result<Self, SpoolError> {
        let path = dir.join(segment_name(number));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // The new name must survive a crash before any record in it is
        // acknowledged.
        sync_dir(dir)?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            number,
            path,
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            len: 0,
            max_len,
            live: BTreeMap::from([(number, 0)]),
            home: HashMap::new(),
            oldest: Arc::new(AtomicU64::new(0)),
        })
    }

    fn run(mut self, jobs: mpsc::Receiver<Job>, group: Group) {
        let mut batch = Vec::new();
        let take = |batch: &mut Vec<Job>, job: Job| {
            if job.arrived {
                group.arriving.settled.fetch_add(1, Ordering::AcqRel);
            }
            if !matches!(job.kind, JobKind::Wake) {
                batch.push(job);
            }
        };
        // Blocks for the first job; ends when every Spool handle is gone.
        while let Ok(first) = jobs.recv() {
            take(&mut batch, first);
            while let Ok(more) = jobs.try_recv() {
                take(&mut batch, more);
            }
            // Group commit with the messages on their way now (not with
            // those announced while it waits: under a steady stream that
            // would always wait the whole delay, and closed-loop clients
            // would see the latency as lost throughput).
            let due = group.arriving.announced.load(Ordering::Acquire);
            let until = Instant::now() + group.delay;
            while group.arriving.settled.load(Ordering::Acquire) < due {
                let left = until.saturating_duration_since(Instant::now());
                match jobs.recv_timeout(left) {
                    Ok(job) => take(&mut batch, job),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let mut answers = Vec::with_capacity(batch.len());
            let failed = match self.append(&batch) {
                Ok(locations) => {
                    group.syncs.fetch_add(1, Ordering::Relaxed);
                    for (job, location) in batch.drain(..).zip(locations) {
                        self.account(&job.kind, location.segment);
                        answers.push((job.done, Ok(location)));
                    }
                    false
                }
                Err(e) => {
                    tracing::error!(segment = %self.path.display(), error = %e, "spool: write failed");
                    for job in batch.drain(..) {
                        let err = SpoolError::Io {
                            path: self.path.clone(),
                            source: io::Error::new(e.kind(), e.to_string()),
                        };
                        answers.push((job.done, Err(err)));
                    }
                    true
                }
            };
            let stop = if (failed || self.len >= self.max_len)
                && let Err(e) = self.rotate(failed)
            {
                tracing::error!(error = %e, "spool: cannot start a new segment; refusing further messages");
                true
            } else {
                // Before answering, so a caller of `finish` sees the result.
                self.collect_garbage();
                false
            };
            for (done, answer) in answers {
                // A session that went away no longer waits.
                let _ = done.send(answer);
            }
            if stop {
                return;
            }
        }
        let _ = self.out.flush();
    }

    /// Keeps count of the unfinished messages in each segment.
    fn account(&mut self, kind: &JobKind, segment: u64) {
        match kind {
            JobKind::Message(id) => {
                *self.live.entry(segment).or_default() += 1;
                self.home.insert(*id, segment);
            }
            JobKind::Moved(id) => {
                if let Some(old) = self.home.insert(*id, segment)
                    && let Some(n) = self.live.get_mut(&old)
                {
                    *n = n.saturating_sub(1);
                }
                *self.live.entry(segment).or_default() += 1;
            }
            JobKind::Done(id) => {
                if let Some(home) = self.home.remove(id)
                    && let Some(n) = self.live.get_mut(&home)
                {
                    *n = n.saturating_sub(1);
                }
            }
            JobKind::State | JobKind::Barrier | JobKind::Wake => {}
        }
    }

    /// Appends a batch and syncs it; returns where each job's body went.
    fn append(&mut self, batch: &[Job]) -> io::Result<Vec<Location>> {
        let mut locations = Vec::with_capacity(batch.len());
        let mut at = self.len;
        for job in batch {
            self.out.write_all(&job.head)?;
            self.out.write_all(&job.body)?;
            locations.push(Location {
                segment: self.number,
                offset: at + job.head.len() as u64,
                len: job.body.len() as u64,
            });
            at += (job.head.len() + job.body.len()) as u64;
        }
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        self.len = at;
        Ok(locations)
    }

    /// Starts the next segment. After a failed write the old one is cut back
    /// to its last good record so nothing torn sits in front of later data.
    fn rotate(&mut self, after_failure: bool) -> Result<(), SpoolError> {
        if after_failure {
            let _ = self.out.get_ref().set_len(self.len);
            let _ = self.out.get_ref().sync_all();
        }
        let mut next = SegmentWriter::create(&self.dir, self.number + 1, self.max_len)?;
        next.live.extend(std::mem::take(&mut self.live));
        next.home = std::mem::take(&mut self.home);
        next.oldest = self.oldest.clone();
        let old = std::mem::replace(self, next);
        drop(old.out.into_inner());
        Ok(())
    }

    /// Deletes segments, oldest first, while nothing in them is unfinished.
    fn collect_garbage(&mut self) {
        let mut deleted = false;
        while let Some((&segment, &count)) = self.live.first_key_value() {
            if count > 0 || segment == self.number {
                break;
            }
            let path = self.dir.join(segment_name(segment));
            match fs::remove_file(&path) {
                Ok(()) => deleted = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "spool: cannot delete a finished segment");
                    break;
                }
            }
            self.live.pop_first();
        }
        if deleted && let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "spool: cannot sync the spool directory after deleting segments");
        }
        let oldest = self
            .live
            .first_key_value()
            .map(|(&segment, _)| segment)
            .filter(|&segment| segment != self.number)
            .unwrap_or(0);
        self.oldest.store(oldest, Ordering::Relaxed);
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn segment_name(number: u64) -> String {
    format!("segment-{number:016}.log")
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((number, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Reads every unfinished message in the spool under `data_dir`, oldest
/// first, with its recipients' current states. Needs no lock: segments are
/// append-only, and a record being written is not yet complete, so it is
/// skipped.
pub fn scan(data_dir: &Path, with_messages: bool) -> Result<Vec<StoredMessage>, SpoolError> {
    let dir = data_dir.join("spool");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<Option<StoredMessage>> = Vec::new();
    let mut index: HashMap<QueueId, usize> = HashMap::new();
    for (number, path) in list_segments(&dir)? {
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            // Deleted by a running gateway between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut offset = 0usize;
        while let Some((kind, payload)) = next_record(&bytes[offset..]) {
            let record_offset = offset;
            offset += HEADER_LEN + payload.len();
            match kind {
                KIND_MESSAGE => {
                    let Some((envelope, env_len)) = split_message(payload) else {
                        tracing::warn!(segment = %path.display(), offset = record_offset, "spool: undecodable envelope, record skipped");
                        continue;
                    };
                    let body_offset = record_offset + HEADER_LEN + 4 + env_len;
                    let message = &payload[4 + env_len..];
                    let states = vec![RcptState::new(); envelope.recipients.len()];
                    index.insert(envelope.id, found.len());
                    found.push(Some(StoredMessage {
                        envelope,
                        location: Location {
                            segment: number,
                            offset: body_offset as u64,
                            len: message.len() as u64,
                        },
                        states,
                        message: with_messages.then(|| message.to_vec()),
                    }));
                }
                KIND_STATE => {
                    let Ok(record) = serde_json::from_slice::<StateRecord>(payload) else {
                        tracing::warn!(segment = %path.display(), offset = record_offset, "spool: undecodable state record skipped");
                        continue;
                    };
                    if let Some(Some(m)) = index.get(&record.id).map(|&i| found[i].as_mut()) {
                        for (rcpt, state) in record.rcpts {
                            if let Some(slot) = m.states.get_mut(rcpt) {
                                *slot = state;
                            }
                        }
                    }
                }
                KIND_MOVED => {
                    let moved = payload
                        .get(..4)
                        .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
                        .and_then(|len| Some((len, payload.get(4..4 + len)?)))
                        .and_then(|(len, meta)| {
                            Some((len, serde_json::from_slice::<MovedRecord>(meta).ok()?))
                        });
                    let Some((meta_len, record)) = moved else {
                        tracing::warn!(segment = %path.display(), offset = record_offset, "spool: undecodable moved message skipped");
                        continue;
                    };
                    let message = &payload[4 + meta_len..];
                    let stored = StoredMessage {
                        location: Location {
                            segment: number,
                            offset: (record_offset + HEADER_LEN + 4 + meta_len) as u64,
                            len: message.len() as u64,
                        },
                        states: record.states,
                        message: with_messages.then(|| message.to_vec()),
                        envelope: record.envelope,
                    };
                    match index.get(&stored.envelope.id) {
                        Some(&i) => found[i] = Some(stored),
                        None => {
                            index.insert(stored.envelope.id, found.len());
                            found.push(Some(stored));
                        }
                    }
                }
                KIND_DONE => {
                    if let Ok(record) = serde_json::from_slice::<DoneRecord>(payload)
                        && let Some(i) = index.remove(&record.id)
                    {
                        found[i] = None;
                    }
                }
                _ => {}
            }
        }
        if offset < bytes.len() {
            tracing::info!(
                segment = %path.display(),
                offset,
                trailing = bytes.len() - offset,
                "spool: incomplete record at end of segment ignored (write interrupted before it was acknowledged)"
            );
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// Decodes one record at the start of `bytes`: `None` if it is incomplete
/// or does not check.
fn next_record(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let header = bytes.get(..HEADER_LEN)?;
    if &header[..4] != MAGIC {
        return None;
    }
    let kind = header[4];
    let len = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[12..16].try_into().ok()?);
    let payload = bytes.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    (hasher.finalize() == crc).then_some((kind, payload))
}

/// The envelope of a message record, and the envelope's length.
fn split_message(payload: &[u8]) -> Option<(Envelope, usize)> {
    let env_len = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let env = payload.get(4..4 + env_len)?;
    let envelope = serde_json::from_slice(env).ok()?;
    Some((envelope, env_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any test runs: a sync that waits this long failed.
    const FOREVER: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_sync_waits_for_an_announced_message_and_covers_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open_with(dir.path(), 1 << 20, FOREVER).unwrap();
        let coming = spool.arriving();
        let first = spool
            .enqueue_message(
                &Envelope::sample(spool.next_id()),
                b"one\r\n".to_vec(),
                false,
            )
            .unwrap();
        let second = spool
            .store_arriving(
                coming,
                &Envelope::sample(spool.next_id()),
                b"two\r\n".to_vec(),
            )
            .await
            .unwrap();
        let first = first.await.unwrap().unwrap();
        assert_eq!(spool.syncs(), 1, "one sync for both messages");
        assert_eq!(spool.read(first).await.unwrap(), b"one\r\n");
        assert_eq!(spool.read(second).await.unwrap(), b"two\r\n");
    }

    #[tokio::test]
    async fn a_message_announced_and_not_stored_holds_no_sync_back() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open_with(dir.path(), 1 << 20, FOREVER).unwrap();
        let refused = spool.arriving();
        let first = spool
            .enqueue_message(
                &Envelope::sample(spool.next_id()),
                b"one\r\n".to_vec(),
                false,
            )
            .unwrap();
        drop(refused);
        let stored = tokio::time::timeout(FOREVER / 2, first)
            .await
            .expect("the sync waited for a message that was not coming");
        stored.unwrap().unwrap();
        assert_eq!(spool.syncs(), 1);
        // Nothing announced: a store is synced at once.
        spool
            .store(&Envelope::sample(spool.next_id()), b"two\r\n".to_vec())
            .await
            .unwrap();
        assert_eq!(spool.syncs(), 2);
    }

    #[tokio::test]
    async fn stored_messages_are_recovered_and_torn_tails_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let ids = {
            let (spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
            assert!(recovered.is_empty());
            let mut ids = Vec::new();
            for i in 0..10 {
                let id = spool.next_id();
                let loc = spool
                    .store(&Envelope::sample(id), format!("msg {i}\r\n").into_bytes())
                    .await
                    .unwrap();
                assert_eq!(
                    spool.read(loc).await.unwrap(),
                    format!("msg {i}\r\n").into_bytes()
                );
                ids.push(id);
            }
            ids
        };
        // Simulate a crash mid-write: a torn record at the end of the segment.
        let seg = list_segments(&dir.path().join("spool")).unwrap()[0]
            .1
            .clone();
        let full = fs::read(&seg).unwrap();
        let last_start = {
            let mut off = 0;
            let mut last = 0;
            while let Some((_, p)) = next_record(&full[off..]) {
                last = off;
                off += HEADER_LEN + p.len();
            }
            last
        };
        let mut torn = full.clone();
        torn.extend_from_slice(&full[last_start..full.len() - 3]);
        fs::write(&seg, &torn).unwrap();

        let (spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        let got: Vec<QueueId> = recovered.iter().map(|m| m.envelope.id).collect();
        assert_eq!(got, ids);
        // Ids keep increasing across restarts.
        assert!(spool.next_id() > *ids.last().unwrap());
        assert_eq!(
            spool.read(recovered[3].location).await.unwrap(),
            b"msg 3\r\n"
        );
        let bodies = scan(dir.path(), true).unwrap();
        assert_eq!(bodies[3].message.as_deref(), Some(&b"msg 3\r\n"[..]));
    }

    #[tokio::test]
    async fn recipient_states_and_finished_messages_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
            let a = spool.next_id();
            let b = spool.next_id();
            spool
                .store(&Envelope::sample(a), b"a".to_vec())
                .await
                .unwrap();
            spool
                .store(&Envelope::sample(b), b"b".to_vec())
                .await
                .unwrap();
            let delivered = RcptState::Delivered {
                reply: "250 ok".into(),
                notified: true,
            };
            spool.update(a, vec![(0, delivered.clone())]).await.unwrap();
            spool.finish(a).await.unwrap();
            let pending = RcptState::Pending {
                attempts: 2,
                next_attempt: 1234,
                last_reply: Some("451 later".into()),
            };
            spool.update(b, vec![(0, pending)]).await.unwrap();
            (a, b)
        };
        let (_spool, recovered) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(recovered.len(), 1);
        assert_ne!(recovered[0].envelope.id, a);
        assert_eq!(recovered[0].envelope.id, b);
        assert!(matches!(
            recovered[0].states[0],
            RcptState::Pending {
                attempts: 2,
                next_attempt: 1234,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn finished_segments_are_deleted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let (spool, _) = Spool::open(dir.path(), 64).unwrap();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let id = spool.next_id();
            spool
                .store(&Envelope::sample(id), vec![b'x'; 100])
                .await
                .unwrap();
            ids.push(id);
        }
        // Each message went to its own segment (64-byte segments).
        assert!(list_segments(&spool_dir).unwrap().len() >= 4);
        // Finishing the second does not free anything: the first is older.
        spool.finish(ids[1]).await.unwrap();
        assert_eq!(scan(dir.path(), false).unwrap().len(), 2);
        let before = list_segments(&spool_dir).unwrap().len();
        spool.finish(ids[0]).await.unwrap();
        let after = list_segments(&spool_dir).unwrap();
        assert!(after.len() < before, "{after:?}");
        let left = scan(dir.path(), false).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].envelope.id, ids[2]);
        assert_eq!(spool.read(left[0].location).await.unwrap(), vec![b'x'; 100]);
    }

    #[tokio::test]
    async fn a_long_deferred_message_moved_forward_frees_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let (spool, _) = Spool::open(dir.path(), 64).unwrap();
        let stuck = spool.next_id();
        let stuck_loc = spool
            .store(&Envelope::sample(stuck), vec![b's'; 100])
            .await
            .unwrap();
        for _ in 0..3 {
            let id = spool.next_id();
            spool
                .store(&Envelope::sample(id), vec![b'x'; 100])
                .await
                .unwrap();
            spool.finish(id).await.unwrap();
        }
        // The stuck message holds the oldest segment, and with it all others.
        assert!(spool.holds_oldest(stuck_loc));
        let before = list_segments(&spool_dir).unwrap().len();
        let states = vec![RcptState::Pending {
            attempts: 3,
            next_attempt: 99,
            last_reply: Some("451 later".into()),
        }];
        let new_loc = spool
            .relocate(&Envelope::sample(stuck), &states, stuck_loc)
            .await
            .unwrap();
        assert!(new_loc.segment > stuck_loc.segment);
        let after = list_segments(&spool_dir).unwrap().len();
        assert!(after < before, "{before} -> {after}");
        assert_eq!(spool.read(new_loc).await.unwrap(), vec![b's'; 100]);
        drop(spool);
        // After a restart the moved copy, with its states, is the message.
        let (_spool, recovered) = Spool::open(dir.path(), 64).unwrap();
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].envelope.id, stuck);
        assert_eq!(recovered[0].states, states);
        assert_eq!(recovered[0].location.segment, new_loc.segment);
    }

    #[tokio::test]
    async fn a_corrupted_record_is_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(dir.path(), 1 << 20).unwrap();
            let id = spool.next_id();
            spool
                .store(&Envelope::sample(id), b"hello".to_vec())
                .await
                .unwrap();
        }
        let seg = list_segments(&dir.path().join("spool")).unwrap()[0]
            .1
            .clone();
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        assert!(scan(dir.path(), false).unwrap().is_empty());
    }

    #[test]
    fn a_second_process_cannot_open_a_locked_spool() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1 << 20).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), 1 << 20),
            Err(SpoolError::Locked(_))
        ));
    }
}
