//! The quarantine: messages a plugin gave the `quarantine` verdict, kept
//! out of delivery with the reason, until an operator releases or deletes
//! them (`weir quarantine ls|show|release|delete`).
//!
//! One file per message, `DATA_DIR/quarantine/ID.msg`: a line of JSON (the
//! envelope, the reason, the plugin, when), then the message as it would
//! have been delivered. A quarantined message is long-lived and rare, so
//! it is kept out of the spool's segment log, where it would pin a
//! segment. Like the spool, a message is written and fsynced (file, then
//! directory) before the client is told 250: nothing accepted is lost.
//!
//! Releasing moves the file into `quarantine/released/` (an atomic rename,
//! done by the command line, with or without a running gateway); the
//! gateway takes what is there at start and when told (SIGUSR1), stores it
//! in the spool under a new queue id, and only then removes the file, so a
//! crash in between delivers it twice rather than never.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Envelope, QueueId};

/// Why a quarantine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// The disk said no.
    #[error("quarantine {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// No such message is held.
    #[error("no message {0} in the quarantine")]
    NotFound(String),
    /// A file that is not a quarantined message.
    #[error("quarantine {0}: not a quarantined message")]
    Corrupt(PathBuf),
}

/// A quarantined message's description: the first line of its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The envelope it would have been delivered with.
    pub envelope: Envelope,
    /// Why (the plugin's reason).
    pub reason: String,
    /// The plugin that decided.
    pub plugin: String,
    /// At which hook: `data` or `pre-delivery`.
    pub hook: String,
    /// When, seconds since the Unix epoch.
    pub held_at: i64,
}

/// The quarantine directory.
#[derive(Debug, Clone)]
pub struct Quarantine {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> QuarantineError + '_ {
    move |source| QuarantineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Quarantine {
    /// The quarantine of `data_dir` (its directories are made when first
    /// needed).
    pub fn new(data_dir: &Path) -> Quarantine {
        Quarantine {
            dir: data_dir.join("quarantine"),
        }
    }

    fn released_dir(&self) -> PathBuf {
        self.dir.join("released")
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }

    /// Keeps `message`; returns once it is on disk and fsynced.
    pub async fn hold(&self, held: Held, message: Vec<u8>) -> Result<(), QuarantineError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write(&held, &message))
            .await
            .map_err(|e| QuarantineError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?
    }

    fn write(&self, held: &Held, message: &[u8]) -> Result<(), QuarantineError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let id = held.envelope.id.to_string();
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut line = serde_json::to_vec(held).expect("a held message serialises");
        line.push(b'\n');
        f.write_all(&line)
            .and_then(|_| f.write_all(message))
            .and_then(|_| f.sync_all())
            .map_err(io(&tmp))?;
        let file = self.file(&id);
        std::fs::rename(&tmp, &file).map_err(io(&file))?;
        sync_dir(&self.dir)
    }

    /// Every held message's description, oldest first.
    pub fn list(&self) -> Result<Vec<Held>, QuarantineError> {
        let mut out = Vec::new();
        for path in msg_files(&self.dir)? {
            out.push(read(&path, false)?.0);
        }
        out.sort_by_key(|h| (h.held_at, h.envelope.id));
        Ok(out)
    }

    /// One held message: its description and bytes.
    pub fn get(&self, id: &str) -> Result<(Held, Vec<u8>), QuarantineError> {
        let (path, _) = self.existing(id)?;
        read(&path, true)
    }

    /// Marks `id` for release: the gateway delivers it (now if it runs and
    /// is told, else at its next start).
    pub fn release(&self, id: &str) -> Result<(), QuarantineError> {
        let (path, id) = self.existing(id)?;
        let released = self.released_dir();
        std::fs::create_dir_all(&released).map_err(io(&released))?;
        let to = released.join(format!("{id}.msg"));
        std::fs::rename(&path, &to).map_err(io(&to))?;
        sync_dir(&released)?;
        sync_dir(&self.dir)
    }

    /// Deletes `id` for good.
    pub fn delete(&self, id: &str) -> Result<(), QuarantineError> {
        let (path, _) = self.existing(id)?;
        std::fs::remove_file(&path).map_err(io(&path))?;
        sync_dir(&self.dir)
    }

    /// The files of the messages marked for release, oldest id first.
    pub fn released(&self) -> Result<Vec<PathBuf>, QuarantineError> {
        msg_files(&self.released_dir())
    }

    /// A released message, read to be stored in the spool.
    pub fn take(&self, path: &Path) -> Result<(Held, Vec<u8>), QuarantineError> {
        read(path, true)
    }

    /// Moves a file that is not a quarantined message out of the way
    /// (`ID.msg` becomes `ID.corrupt`, for an operator to look at), so one
    /// bad file does not stop the others being released.
    pub fn set_aside(&self, path: &Path) -> Result<PathBuf, QuarantineError> {
        let to = path.with_extension("corrupt");
        std::fs::rename(path, &to).map_err(io(&to))?;
        Ok(to)
    }

    /// Removes a released file once its message is in the spool.
    pub fn forget(&self, path: &Path) -> Result<(), QuarantineError> {
        std::fs::remove_file(path).map_err(io(path))?;
        sync_dir(&self.released_dir())
    }

    /// The file of `id`, which must name a held message (a queue id: no
    /// path can be smuggled in).
    fn existing(&self, id: &str) -> Result<(PathBuf, String), QuarantineError> {
        let parsed: QueueId = id
            .parse()
            .map_err(|_| QuarantineError::NotFound(id.to_string()))?;
        let id = parsed.to_string();
        let path = self.file(&id);
        if path.is_file() {
            Ok((path, id))
        } else {
            Err(QuarantineError::NotFound(id.to_string()))
        }
    }
}

fn msg_files(dir: &Path) -> Result<Vec<PathBuf>, QuarantineError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "msg") && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The longest description line read: an envelope with many recipients
/// is long, but a file without a newline near its start is no
/// quarantined message.
const MAX_DESCRIPTION: u64 = 16 * 1024 * 1024;

/// A file's description and, if asked, its message (`ls` reads the first
/// line only).
fn read(path: &Path, with_message: bool) -> Result<(Held, Vec<u8>), QuarantineError> {
    use std::io::{BufRead, Read};
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut reader = std::io::BufReader::new(file);
    let mut line = Vec::new();
    (&mut reader)
        .take(MAX_DESCRIPTION)
        .read_until(b'\n', &mut line)
        .map_err(io(path))?;
    if line.pop() != Some(b'\n') {
        return Err(QuarantineError::Corrupt(path.to_path_buf()));
    }
    let held: Held =
        serde_json::from_slice(&line).map_err(|_| QuarantineError::Corrupt(path.to_path_buf()))?;
    let mut message = Vec::new();
    if with_message {
        reader.read_to_end(&mut message).map_err(io(path))?;
    }
    Ok((held, message))
}

fn sync_dir(dir: &Path) -> Result<(), QuarantineError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(id: u64) -> Held {
        Held {
            envelope: Envelope::sample(QueueId(id)),
            reason: "spam score 11".into(),
            plugin: "antispam".into(),
            hook: "data".into(),
            held_at: 10,
        }
    }

    #[test]
    fn held_messages_are_listed_released_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path());
        assert!(q.list().unwrap().is_empty());
        q.write(&held(1), b"one\r\n").unwrap();
        q.write(&held(2), b"two\r\n").unwrap();
        let listed = q.list().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].reason, "spam score 11");
        let (h, bytes) = q.get("0000000000000002").unwrap();
        assert_eq!(
            (h.envelope.id, bytes.as_slice()),
            (QueueId(2), &b"two\r\n"[..])
        );
        // An id as the operator may type it names the same file.
        q.release("1").unwrap();
        assert_eq!(q.list().unwrap().len(), 1);
        let released = q.released().unwrap();
        assert_eq!(released.len(), 1);
        assert!(released[0].ends_with("released/0000000000000001.msg"));
        assert_eq!(q.take(&released[0]).unwrap().1, b"one\r\n");
        q.forget(&released[0]).unwrap();
        assert!(q.released().unwrap().is_empty());
        q.delete("2").unwrap();
        assert!(q.list().unwrap().is_empty());
        assert!(matches!(q.get("2"), Err(QuarantineError::NotFound(_))));
        assert!(matches!(
            q.release("../etc"),
            Err(QuarantineError::NotFound(_))
        ));
    }

    #[test]
    fn a_corrupt_file_is_named_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path());
        std::fs::create_dir_all(q.released_dir()).unwrap();
        let bad = q.released_dir().join("0000000000000009.msg");
        std::fs::write(&bad, b"no description line").unwrap();
        assert!(matches!(q.take(&bad), Err(QuarantineError::Corrupt(p)) if p == bad));
        let aside = q.set_aside(&bad).unwrap();
        assert!(aside.is_file() && q.released().unwrap().is_empty());
    }
}
