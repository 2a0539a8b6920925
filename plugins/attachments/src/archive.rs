//! Inside zip archives: every entry's name and first bytes are judged like
//! an attachment's, nested zips are opened in turn, and hard caps on depth,
//! entries, expanded size and time stop a zip bomb early. The outermost
//! archive is read straight from the message through `part-range`, a
//! chunk at a time, so even a large one never sits whole in the plugin's
//! memory; a nested one is expanded into memory, up to
//! [`MAX_NESTED_IN_MEMORY`]. The number of entries is read from the
//! archive's end record before the zip reader loads its directory, so an
//! archive claiming a million entries is a finding, not a plugin out of
//! memory.

use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

use weir_plugin_sdk::Message;

use crate::detect::{self, Kind};
use crate::settings::Archives;

const CHUNK: u32 = 64 << 10;

/// The largest nested archive expanded into the plugin's memory to be
/// looked into (the plugin has 64 MiB by default).
pub const MAX_NESTED_IN_MEMORY: u64 = 16 << 20;

/// How many entries the archive in `reader` says it has, from its end of
/// central directory record (ZIP64's when the classic one overflows):
/// `None` when no such record is found, which the zip reader then
/// reports. Written by hand because the zip crate reads the whole
/// directory before it says how long it is.
fn declared_entries<R: Read + Seek>(reader: &mut R) -> std::io::Result<Option<u64>> {
    let len = reader.seek(SeekFrom::End(0))?;
    // The record is 22 octets and a comment of up to 65,535 follows it.
    let tail_len = len.min(22 + 65_535);
    reader.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = Vec::with_capacity(tail_len as usize);
    reader.take(tail_len).read_to_end(&mut tail)?;
    let Some(at) = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| tail[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
    else {
        return Ok(None);
    };
    let u16_at = |i: usize| u16::from_le_bytes([tail[at + i], tail[at + i + 1]]);
    let entries = u16_at(10);
    if entries != 0xffff {
        return Ok(Some(u64::from(entries)));
    }
    // ZIP64: a 20-octet locator precedes the record and points at the
    // ZIP64 end record, whose entry count is at offset 32.
    let Some(locator) = at.checked_sub(20) else {
        return Ok(None);
    };
    if tail[locator..locator + 4] != [0x50, 0x4b, 0x06, 0x07] {
        return Ok(None);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&tail[locator + 8..locator + 16]);
    let mut record = [0u8; 40];
    reader.seek(SeekFrom::Start(u64::from_le_bytes(offset)))?;
    if reader.read_exact(&mut record).is_err() || record[..4] != [0x50, 0x4b, 0x06, 0x06] {
        return Ok(None);
    }
    let mut count = [0u8; 8];
    count.copy_from_slice(&record[32..40]);
    Ok(Some(u64::from_le_bytes(count)))
}

/// One part's decoded content, read on demand.
pub struct PartReader<'a> {
    msg: &'a Message,
    id: u32,
    len: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_at: u64,
}

impl<'a> PartReader<'a> {
    pub fn new(msg: &'a Message, id: u32, len: u64) -> PartReader<'a> {
        PartReader {
            msg,
            id,
            len,
            pos: 0,
            buf: Vec::new(),
            buf_at: 0,
        }
    }
}

impl Read for PartReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let end = self.buf_at + self.buf.len() as u64;
        if self.pos < self.buf_at || self.pos >= end {
            self.buf = self
                .msg
                .part_range(self.id, self.pos, CHUNK)
                .map_err(std::io::Error::other)?;
            self.buf_at = self.pos;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PartReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// Why an archive is not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An entry that is blocked, and why.
    Blocked { entry: String, reason: String },
    /// A password-protected entry (its content cannot be checked).
    Encrypted { entry: String },
    /// A cap was reached: too deep, too many entries, too large expanded,
    /// too long to read: a zip bomb, or as good as one.
    OverLimit(String),
    /// The archive cannot be read (damaged, or built to confuse readers).
    Unreadable(String),
}

/// What has been spent on one message's archives so far.
pub struct Budget {
    pub entries: u64,
    pub expanded: u64,
    pub started: Instant,
}

impl Budget {
    pub fn new() -> Budget {
        Budget {
            entries: 0,
            expanded: 0,
            started: Instant::now(),
        }
    }
}

fn out_of_time(limits: &Archives, budget: &Budget) -> Result<(), Finding> {
    if budget.started.elapsed() > limits.max_time {
        return Err(Finding::OverLimit(format!(
            "not read within {} ms",
            limits.max_time.as_millis()
        )));
    }
    Ok(())
}

fn spend(limits: &Archives, budget: &mut Budget, n: u64) -> Result<(), Finding> {
    budget.expanded += n;
    if budget.expanded > limits.max_expanded {
        return Err(Finding::OverLimit(format!(
            "expands to more than {} octets",
            limits.max_expanded
        )));
    }
    Ok(())
}

/// Walks the archive in `reader`, nested `depth` deep. `name_check` says
/// why an entry's name is blocked, `content` which kinds are.
pub fn inspect<R: Read + Seek>(
    mut reader: R,
    depth: u32,
    limits: &Archives,
    budget: &mut Budget,
    name_check: &dyn Fn(&str) -> Option<String>,
    content: &[Kind],
) -> Result<(), Finding> {
    let declared = declared_entries(&mut reader).map_err(|e| Finding::Unreadable(e.to_string()))?;
    if declared.is_some_and(|n| budget.entries.saturating_add(n) > limits.max_entries) {
        return Err(Finding::OverLimit(format!(
            "more than {} entries",
            limits.max_entries
        )));
    }
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| Finding::Unreadable(e.to_string()))?;
    for i in 0..zip.len() {
        budget.entries += 1;
        if budget.entries > limits.max_entries {
            return Err(Finding::OverLimit(format!(
                "more than {} entries",
                limits.max_entries
            )));
        }
        out_of_time(limits, budget)?;
        let (name, encrypted, declared, is_dir) = {
            let raw = zip
                .by_index_raw(i)
                .map_err(|e| Finding::Unreadable(e.to_string()))?;
            // A name that is not UTF-8 (nor CP437) is judged as shown.
            let name = match raw.name() {
                Ok(n) => n.into_owned(),
                Err(_) => String::from_utf8_lossy(raw.name_raw()).into_owned(),
            };
            (name, raw.encrypted(), raw.size(), raw.is_dir())
        };
        if is_dir {
            continue;
        }
        if let Some(reason) = name_check(&name) {
            return Err(Finding::Blocked {
                entry: name,
                reason,
            });
        }
        if encrypted {
            if limits.block_encrypted {
                return Err(Finding::Encrypted { entry: name });
            }
            continue;
        }
        // An honest header says it at once; a lying one is caught below,
        // as its content is counted.
        if budget.expanded.saturating_add(declared) > limits.max_expanded {
            return Err(Finding::OverLimit(format!(
                "expands to more than {} octets",
                limits.max_expanded
            )));
        }
        let mut file = zip
            .by_index(i)
            .map_err(|e| Finding::Unreadable(e.to_string()))?;
        let mut head = Vec::with_capacity(512);
        (&mut file)
            .take(512)
            .read_to_end(&mut head)
            .map_err(|e| Finding::Unreadable(e.to_string()))?;
        spend(limits, budget, head.len() as u64)?;
        let kind = detect::kind(&head);
        if let Some(k) = kind.filter(|k| content.contains(k)) {
            return Err(Finding::Blocked {
                entry: name,
                reason: format!("is {}", k.describe()),
            });
        }
        // A zip by its content or by its name (a damaged or disguised one
        // is then unreadable, and so a finding, as at the top).
        let zip_named = name.to_lowercase().ends_with(".zip");
        if kind == Some(Kind::Zip) || zip_named {
            if depth + 1 > limits.max_depth {
                return Err(Finding::OverLimit(format!(
                    "archives nested deeper than {}",
                    limits.max_depth
                )));
            }
            let room = (limits.max_expanded - budget.expanded).min(MAX_NESTED_IN_MEMORY);
            let head_len = head.len();
            let mut inner = head;
            (&mut file)
                .take(room + 1)
                .read_to_end(&mut inner)
                .map_err(|e| Finding::Unreadable(e.to_string()))?;
            spend(limits, budget, (inner.len() - head_len) as u64)?;
            if inner.len() as u64 > MAX_NESTED_IN_MEMORY {
                return Err(Finding::OverLimit(format!(
                    "holds an archive ({name}) over {} MiB",
                    MAX_NESTED_IN_MEMORY >> 20
                )));
            }
            drop(file);
            inspect(
                std::io::Cursor::new(inner),
                depth + 1,
                limits,
                budget,
                name_check,
                content,
            )?;
            continue;
        }
        // The rest is only counted: what it expands to, truly.
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = file
                .read(&mut chunk)
                .map_err(|e| Finding::Unreadable(e.to_string()))?;
            if n == 0 {
                break;
            }
            spend(limits, budget, n as u64)?;
            out_of_time(limits, budget)?;
        }
    }
    Ok(())
}
