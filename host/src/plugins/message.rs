//! The message as plugins see it (the `message` resource), and the
//! mutations they ask for, applied to the bytes and the envelope.
//!
//! The message is parsed (with mail-parser) at most once per chain, when a
//! plugin first asks for its headers or parts; a chain of plugins that only
//! looks at the size parses nothing. Mutations are applied by
//! [`apply`] all together, after the chain, or not at all: body edits
//! (`replace-body`, `replace-part`, `remove-part`) refer to the parts as the
//! chain saw them and are applied first, then header edits in order.

use std::sync::{Arc, OnceLock};

use mail_parser::{MessageParser, MimeHeaders, PartType};

use super::host_bindings::weir::plugin::types::{Header, Mutation, PartInfo};

/// A received message, shared by the calls of one chain.
pub struct MessageView {
    raw: Arc<Vec<u8>>,
    parsed: OnceLock<Parsed>,
}

/// Messages from this size are parsed on a blocking thread before the
/// chain, not inside a plugin's first call on a runtime thread.
const PARSE_AHEAD: usize = 1 << 20;

/// Parses a large message's MIME structure off the runtime's threads, so
/// a 50 MB message does not hold one of them while other sessions wait.
pub async fn parse_if_large(view: &Arc<MessageView>) {
    if view.raw().len() >= PARSE_AHEAD {
        let view = view.clone();
        let _ = tokio::task::spawn_blocking(move || view.parse_now()).await;
    }
}

/// What parsing found.
struct Parsed {
    headers: Vec<Header>,
    parts: Vec<Part>,
}

struct Part {
    info: PartInfo,
    /// Where the part's header starts and its content ends, in the raw bytes.
    start: usize,
    end: usize,
    /// For a multipart: its boundary.
    boundary: Option<String>,
    /// The part an edit of this one changes: itself, or the attached
    /// message holding it where this part has no bytes of its own in the
    /// raw message (see [`add_parts`]).
    edit_as: u32,
    decoded: Vec<u8>,
}

impl MessageView {
    /// A view of `raw` (the message as it would be spooled).
    pub fn new(raw: Arc<Vec<u8>>) -> MessageView {
        MessageView {
            raw,
            parsed: OnceLock::new(),
        }
    }

    /// The bytes.
    pub fn raw(&self) -> &Arc<Vec<u8>> {
        &self.raw
    }

    /// The bytes, giving the view up: without a copy once nothing else
    /// holds them (the chain is over).
    pub fn into_bytes(self: Arc<Self>) -> Vec<u8> {
        match Arc::try_unwrap(self) {
            Ok(view) => Arc::try_unwrap(view.raw).unwrap_or_else(|shared| shared.to_vec()),
            Err(view) => view.raw.to_vec(),
        }
    }

    /// All top-level header fields, unfolded.
    pub fn headers(&self) -> &[Header] {
        &self.parsed().headers
    }

    /// Values of the fields named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Vec<String> {
        self.headers()
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone())
            .collect()
    }

    /// The MIME tree, parents first.
    pub fn parts(&self) -> Vec<PartInfo> {
        self.parsed().parts.iter().map(|p| p.info.clone()).collect()
    }

    /// The decoded content of part `id`.
    pub fn part_bytes(&self, id: u32) -> Option<&[u8]> {
        self.parsed()
            .parts
            .get(id as usize)
            .map(|p| p.decoded.as_slice())
    }

    /// Parses the message now (it is otherwise parsed when a plugin first
    /// asks): for large messages, on a blocking thread before the chain,
    /// so no runtime thread parses 50 MB inside a plugin call.
    pub fn parse_now(&self) {
        self.parsed();
    }

    fn parsed(&self) -> &Parsed {
        self.parsed.get_or_init(|| parse(&self.raw))
    }
}

fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Parsed {
            headers: Vec::new(),
            parts: Vec::new(),
        };
    };
    let headers = message
        .headers()
        .iter()
        .map(|h| Header {
            name: h.name.as_str().to_string(),
            value: unfold(&raw[h.offset_start as usize..h.offset_end as usize]),
        })
        .collect();
    let mut parts = Vec::new();
    add_parts(&message, None, None, &mut parts);
    Parsed { headers, parts }
}

/// Adds `message`'s parts to `out`, then the parts of each message
/// attached to it (message/rfc822), parents first, so that plugins look
/// into forwarded mail as they do into the message itself.
///
/// `within` is the message/rfc822 part holding `message`; `encoded` is
/// set when `message` came out of a transfer encoding (base64 or
/// quoted-printable, which RFC 2046 5.2.1 forbids but senders use): its
/// offsets are into the decoded bytes, not the raw message, so an edit of
/// any part in it acts on that whole encoded part.
fn add_parts(
    message: &mail_parser::Message,
    within: Option<u32>,
    encoded: Option<u32>,
    out: &mut Vec<Part>,
) {
    let first = out.len() as u32;
    // The root's parent is the part holding the message; every other
    // part is a child of one of the message's multiparts.
    let mut parents = vec![None; message.parts.len()];
    if let Some(slot) = parents.first_mut() {
        *slot = within;
    }
    for (i, p) in message.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &p.body {
            for &c in children {
                if let Some(slot) = parents.get_mut(c as usize).filter(|_| c != 0) {
                    *slot = Some(first + i as u32);
                }
            }
        }
    }
    for (i, p) in message.parts.iter().enumerate() {
        let id = first + i as u32;
        let content_type = p
            .content_type()
            .map(|c| match &c.c_subtype {
                Some(sub) => format!("{}/{}", c.c_type, sub),
                None => c.c_type.to_string(),
            })
            .unwrap_or_else(|| "text/plain".into())
            .to_ascii_lowercase();
        let decoded: Vec<u8> = match &p.body {
            PartType::Text(t) | PartType::Html(t) => t.as_bytes().to_vec(),
            PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
            PartType::Message(m) => m.raw_message().to_vec(),
            PartType::Multipart(_) => Vec::new(),
        };
        let filename = p.attachment_name().map(str::to_string);
        let is_attachment = filename.is_some()
            || p.content_disposition()
                .is_some_and(|d| d.c_type.eq_ignore_ascii_case("attachment"));
        // An attached message's root has no delimiter of its own: an edit
        // of it is an edit of the part that holds it.
        let edit_as = match (encoded, within) {
            (Some(e), _) => out[e as usize].edit_as,
            (None, Some(w)) if i == 0 => out[w as usize].edit_as,
            _ => id,
        };
        out.push(Part {
            info: PartInfo {
                id,
                parent: parents[i],
                content_type,
                filename,
                size: decoded.len() as u64,
                is_attachment,
            },
            start: p.offset_header as usize,
            end: p.offset_end as usize,
            boundary: p
                .content_type()
                .and_then(|c| c.attribute("boundary"))
                .map(str::to_string),
            edit_as,
            decoded,
        });
    }
    for (i, p) in message.parts.iter().enumerate() {
        if let PartType::Message(m) = &p.body {
            let id = first + i as u32;
            let encoded = encoded.or((p.encoding != mail_parser::Encoding::None).then_some(id));
            add_parts(m, Some(id), encoded, out);
        }
    }
}

/// A field value without its line breaks (RFC 5322 2.2.3) and outer space.
fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.replace("\r\n", "")
        .replace('\n', "")
        .trim()
        .to_string()
}

/// Changes to the envelope and the route that a chain asked for.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EnvelopeChanges {
    /// Recipients to add, in order.
    pub add_recipients: Vec<String>,
    /// Recipients to remove (compared case-insensitively).
    pub remove_recipients: Vec<String>,
    /// Deliver through this route.
    pub route: Option<String>,
    /// Deliver only over TLS.
    pub require_tls: bool,
    /// Tags attached to the transaction.
    pub tags: Vec<String>,
    /// Sum of the scores added.
    pub score: f64,
}

/// The outcome of applying a chain's mutations.
#[derive(Debug, Default)]
pub struct Edited {
    /// The new message, if any mutation changed it.
    pub message: Option<Vec<u8>>,
    /// Everything else.
    pub envelope: EnvelopeChanges,
}

/// Why a chain's mutations were not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MutationError {
    /// A header name or value that cannot be written.
    #[error("bad header field {0:?}")]
    BadHeader(String),
    /// A part id the message does not have.
    #[error("no MIME part {0}")]
    NoSuchPart(u32),
    /// The root cannot be removed (replace the body instead).
    #[error("the root part cannot be removed; replace the body instead")]
    RootPart,
    /// Two body edits touch the same bytes.
    #[error("two mutations change the same part of the message")]
    Overlap,
    /// A content type that cannot be written.
    #[error("bad content type {0:?}")]
    BadContentType(String),
    /// A header field to remove by position is not there.
    #[error("no header field {0}")]
    NoSuchHeader(String),
}

/// Mutations sorted by what they touch, checked except for the header
/// edits (checked when the header section is rewritten).
struct Plan {
    out: Edited,
    /// Byte ranges of the message to replace, in order, not overlapping.
    splices: Vec<(usize, usize, Vec<u8>)>,
    header_edits: Vec<Mutation>,
}

/// Whether `mutations` would apply to the message of `view`, without
/// building the changed message (only its header section is copied).
/// The chain runs it on each plugin's changes, so one plugin's mistake
/// costs only its own changes.
pub fn check(view: &MessageView, mutations: &[Mutation]) -> Result<(), MutationError> {
    let plan = plan(view, mutations)?;
    if !plan.header_edits.is_empty() {
        let raw = view.raw().as_slice();
        edit_headers(&raw[..body_start(raw)], &plan.header_edits)?;
    }
    Ok(())
}

/// Applies `mutations` (in chain order) to the message of `view`.
pub fn apply(view: &MessageView, mutations: &[Mutation]) -> Result<Edited, MutationError> {
    let Plan {
        mut out,
        splices,
        header_edits,
    } = plan(view, mutations)?;
    let raw = view.raw().as_slice();
    let mut message: Option<Vec<u8>> = None;
    if !splices.is_empty() {
        let mut new = Vec::with_capacity(raw.len());
        let mut at = 0;
        for (start, end, bytes) in &splices {
            new.extend_from_slice(&raw[at..*start]);
            new.extend_from_slice(bytes);
            at = *end;
        }
        new.extend_from_slice(&raw[at..]);
        message = Some(new);
    }
    if !header_edits.is_empty() {
        let base = message.as_deref().unwrap_or(raw);
        message = Some(edit_headers(base, &header_edits)?);
    }
    out.message = message;
    Ok(out)
}

fn plan(view: &MessageView, mutations: &[Mutation]) -> Result<Plan, MutationError> {
    let mut out = Edited::default();
    let mut splices: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let mut header_edits: Vec<Mutation> = Vec::new();
    let raw = view.raw().as_slice();
    // Parts already edited: a second edit of one (two attachments inside
    // one encoded attached message, say) is the first's.
    let mut edited: Vec<u32> = Vec::new();
    let mut target = |id: u32| -> Result<Option<&Part>, MutationError> {
        let parts = &view.parsed().parts;
        let part = parts
            .get(id as usize)
            .ok_or(MutationError::NoSuchPart(id))?;
        let part = &parts[part.edit_as as usize];
        if edited.contains(&part.info.id) {
            return Ok(None);
        }
        edited.push(part.info.id);
        Ok(Some(part))
    };
    for m in mutations {
        match m {
            Mutation::AddHeader(_)
            | Mutation::RemoveHeader(_)
            | Mutation::RemoveHeaderAt(_)
            | Mutation::ReplaceHeader(_) => header_edits.push(m.clone()),
            Mutation::AddRecipient(r) => out.envelope.add_recipients.push(r.clone()),
            Mutation::RemoveRecipient(r) => out.envelope.remove_recipients.push(r.clone()),
            Mutation::SetRoute(r) => out.envelope.route = Some(r.clone()),
            Mutation::RequireTls => out.envelope.require_tls = true,
            Mutation::Tag(t) => out.envelope.tags.push(t.clone()),
            Mutation::AddScore(s) if s.is_finite() => out.envelope.score += s,
            Mutation::AddScore(_) => {}
            Mutation::ReplaceBody(body) => {
                let start = body_start(raw);
                splices.push((start, raw.len(), crlf(body)));
            }
            Mutation::RemovePart(id) => {
                let parts = &view.parsed().parts;
                let Some(part) = target(*id)? else { continue };
                let parent = part.info.parent.ok_or(MutationError::RootPart)?;
                let boundary = parts[parent as usize]
                    .boundary
                    .as_deref()
                    .ok_or(MutationError::NoSuchPart(*id))?;
                // From the line break before the part's delimiter line to
                // the part's end: the next delimiter stays.
                let delimiter = format!("--{boundary}");
                let at = memchr::memmem::rfind(&raw[..part.start], delimiter.as_bytes())
                    .ok_or(MutationError::NoSuchPart(*id))?;
                let from = if raw[..at].ends_with(b"\r\n") {
                    at - 2
                } else {
                    at
                };
                splices.push((from, part.end, Vec::new()));
            }
            Mutation::ReplacePart(r) => {
                let Some(part) = target(r.part)? else {
                    continue;
                };
                if !is_field_value(&r.content_type) || r.content_type.is_empty() {
                    return Err(MutationError::BadContentType(r.content_type.clone()));
                }
                let (encoding, body) = encode(&r.body);
                if part.info.parent.is_none() {
                    // The root: its type lives in the message header.
                    splices.push((body_start(raw), raw.len(), body));
                    header_edits.push(Mutation::ReplaceHeader(Header {
                        name: "Content-Type".into(),
                        value: r.content_type.clone(),
                    }));
                    header_edits.push(Mutation::ReplaceHeader(Header {
                        name: "Content-Transfer-Encoding".into(),
                        value: encoding.into(),
                    }));
                } else {
                    let mut bytes = format!(
                        "Content-Type: {}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n",
                        r.content_type
                    )
                    .into_bytes();
                    bytes.extend_from_slice(&body);
                    splices.push((part.start, part.end, bytes));
                }
            }
        }
    }
    splices.sort_by_key(|s| s.0);
    if splices.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(MutationError::Overlap);
    }
    Ok(Plan {
        out,
        splices,
        header_edits,
    })
}

/// Where the body starts: after the blank line ending the header section.
fn body_start(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    memchr::memmem::find(raw, b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(raw.len())
}

/// Applies header edits to the header section of `raw`.
fn edit_headers(raw: &[u8], edits: &[Mutation]) -> Result<Vec<u8>, MutationError> {
    let split = body_start(raw);
    let (head, body) = raw.split_at(split);
    // Fields as (name, whole field bytes with folding and CRLF).
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for line in head.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" {
            continue;
        }
        match (line.first(), fields.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.1.extend_from_slice(line),
            _ => {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| String::from_utf8_lossy(&line[..i]).trim().to_string())
                    .unwrap_or_default();
                fields.push((name, line.to_vec()));
            }
        }
    }
    let field = |h: &Header| -> Result<Vec<u8>, MutationError> {
        let ok = is_field_name(&h.name) && is_field_value(&h.value);
        let bytes = format!("{}\r\n", fold(&format!("{}: {}", h.name, h.value))).into_bytes();
        // RFC 5322 2.1.1: no line longer than 998 characters, even where
        // folding found no white space to break at.
        let lines_fit = bytes.split(|&b| b == b'\n').all(|l| l.len() <= 999);
        if !ok || !lines_fit {
            let mut shown = format!("{}: {}", h.name, h.value);
            if shown.len() > 200 {
                let mut end = 200;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
                shown.push_str("...");
            }
            return Err(MutationError::BadHeader(shown));
        }
        Ok(bytes)
    };
    // Removals by position name fields of the message as the chain saw
    // it, so they go first, before any edit shifts the positions.
    let mut doomed: Vec<(String, u32)> = Vec::new();
    for edit in edits {
        if let Mutation::RemoveHeaderAt(at) = edit {
            let key = (at.name.to_ascii_lowercase(), at.index);
            if !doomed.contains(&key) {
                doomed.push(key);
            }
        }
    }
    if !doomed.is_empty() {
        let mut seen: std::collections::HashMap<String, u32> = Default::default();
        let before = fields.len();
        fields.retain(|(n, _)| {
            let n = n.to_ascii_lowercase();
            let i = seen.entry(n.clone()).or_insert(0);
            let keep = !doomed.contains(&(n, *i));
            *i += 1;
            keep
        });
        if before - fields.len() != doomed.len() {
            let (name, index) = &doomed[0];
            return Err(MutationError::NoSuchHeader(format!("{name}[{index}]")));
        }
    }
    for edit in edits {
        match edit {
            Mutation::AddHeader(h) => fields.insert(0, (h.name.clone(), field(h)?)),
            Mutation::RemoveHeader(name) => fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            Mutation::ReplaceHeader(h) => {
                let bytes = field(h)?;
                let at = fields
                    .iter()
                    .position(|(n, _)| n.eq_ignore_ascii_case(&h.name));
                fields.retain(|(n, _)| !n.eq_ignore_ascii_case(&h.name));
                fields.insert(at.unwrap_or(0).min(fields.len()), (h.name.clone(), bytes));
            }
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(raw.len() + 256);
    for (_, bytes) in &fields {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(b"\r\n");
    // `split` pointed past the blank line; the body follows it.
    out.extend_from_slice(body);
    Ok(out)
}

/// The longest line a folded header field is given where white space
/// allows (RFC 5322 2.1.1: lines SHOULD be at most 78 characters).
const FOLD_AT: usize = 78;

/// `field` (`Name: value`, perhaps folded already) with each line longer
/// than [`FOLD_AT`] folded before white space: a plugin's long
/// `X-Spam-Report` is written as RFC 5322 wants it, not refused. Folding
/// is a CRLF before existing white space, which unfolding removes, so the
/// value is unchanged.
fn fold(field: &str) -> String {
    let mut out = String::with_capacity(field.len() + field.len() / 32);
    for (i, line) in field.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let mut rest = line;
        // Not between the name and its value.
        let mut first = if i == 0 {
            line.find(':').map_or(0, |c| c + 1)
        } else {
            0
        };
        while rest.len() > FOLD_AT {
            // A break at `at` starts the next line with that white space;
            // never at the line's first character, and never leaving a
            // line of white space only: after the first other character
            // (`lo`) and before the last (`hi`). Found in one pass: this
            // runs for every header a plugin adds.
            let bytes = rest.as_bytes();
            let white = |b: u8| b == b' ' || b == b'\t';
            let (Some(lo), Some(hi)) = (
                bytes.iter().position(|&b| !white(b)),
                bytes.iter().rposition(|&b| !white(b)),
            ) else {
                break;
            };
            let fits = |at: &usize| *at > first && *at > lo && *at < hi && white(bytes[*at]);
            let at = (0..=FOLD_AT)
                .rev()
                .find(fits)
                .or_else(|| (FOLD_AT + 1..bytes.len()).find(fits));
            let Some(at) = at else { break };
            out.push_str(&rest[..at]);
            out.push_str("\r\n");
            rest = &rest[at..];
            first = 0;
        }
        out.push_str(rest);
    }
    out
}

fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// The longest header field value a mutation may write (folded: each
/// line also within RFC 5322's 998 characters).
const MAX_FIELD_VALUE: usize = 32 * 1024;

/// A value fit for a header field: no control characters but tab, and
/// line breaks only as folding (CRLF then a space or tab, and more than
/// white space on the line).
fn is_field_value(value: &str) -> bool {
    value.len() <= MAX_FIELD_VALUE
        && value.split("\r\n").enumerate().all(|(i, line)| {
            let folded = i == 0
                || (line.starts_with([' ', '\t']) && !line.trim_matches([' ', '\t']).is_empty());
            folded && !line.chars().any(|c| c.is_control() && c != '\t')
        })
}

/// Bytes with every line ending made CRLF.
fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 40);
    let mut prev = 0u8;
    for &b in body {
        match b {
            b'\n' if prev != b'\r' => out.extend_from_slice(b"\r\n"),
            b'\n' => out.push(b'\n'),
            _ if prev == b'\r' => {
                out.push(b'\n');
                out.push(b);
            }
            b'\r' => out.push(b'\r'),
            _ => out.push(b),
        }
        prev = b;
    }
    if prev == b'\r' {
        out.push(b'\n');
    }
    out
}

/// A transfer encoding for decoded content: 7bit when it is short-lined
/// ASCII text, base64 otherwise.
fn encode(content: &[u8]) -> (&'static str, Vec<u8>) {
    let text = crlf(content);
    let plain = text.is_ascii()
        && !text.contains(&0)
        && text.split(|&b| b == b'\n').all(|l| l.len() <= 998);
    if plain {
        let mut text = text;
        if !text.ends_with(b"\r\n") {
            text.extend_from_slice(b"\r\n");
        }
        return ("7bit", text);
    }
    let mut out = Vec::new();
    let _ = mail_builder::encoders::base64::base64_encode_mime(content, &mut out, false);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    ("base64", out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::host_bindings::weir::plugin::types::{HeaderAt, PartReplacement};

    const MULTIPART: &[u8] = b"Received: x\r\nFrom: a@b\r\nSubject: hi\r\n there\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.exe\"\r\n\r\nTVqQAAMAAAAEAAAA\r\n--XX--\r\nepilogue\r\n";

    fn view(raw: &[u8]) -> MessageView {
        MessageView::new(Arc::new(raw.to_vec()))
    }

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn headers_are_unfolded_and_parts_described() {
        let v = view(MULTIPART);
        assert_eq!(v.header("subject"), ["hi there"]);
        let parts = v.parts();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].content_type, "multipart/mixed");
        assert_eq!(parts[1].parent, Some(0));
        assert_eq!(parts[2].filename.as_deref(), Some("a.exe"));
        assert!(parts[2].is_attachment && !parts[1].is_attachment);
        // Decoded from base64: an MZ header.
        assert_eq!(&v.part_bytes(2).unwrap()[..2], b"MZ");
        assert_eq!(parts[2].size, 12);
    }

    /// A message forwarding another as an attachment, which holds a
    /// program; and a second attached message, base64-encoded.
    const FORWARDED: &[u8] = b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=\"OUT\"\r\n\r\n--OUT\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--OUT\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\nSubject: inner\r\nContent-Type: multipart/mixed; boundary=\"IN\"\r\n\r\n--IN\r\nContent-Type: text/plain\r\n\r\ninner text\r\n--IN\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"x.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--IN--\r\n\r\n--OUT\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nU3ViamVjdDogZW5jDQpDb250ZW50LVR5cGU6IGFwcGxpY2F0aW9uL29jdGV0LXN0cmVhbQ0KQ29u\r\ndGVudC1EaXNwb3NpdGlvbjogYXR0YWNobWVudDsgZmlsZW5hbWU9InkuZXhlIg0KDQpNWg0K\r\n--OUT--\r\n";

    #[test]
    fn attached_messages_are_looked_into_and_edited_where_they_can_be() {
        let v = view(FORWARDED);
        let parts = v.parts();
        let named = |name: &str| parts.iter().find(|p| p.filename.as_deref() == Some(name));
        // The program inside the forwarded message is listed, under the
        // attached message's multipart, under the message/rfc822 part.
        let exe = named("x.exe").expect("the inner attachment is listed");
        assert_eq!(&v.part_bytes(exe.id).unwrap()[..2], b"MZ");
        let inner_root = &parts[exe.parent.unwrap() as usize];
        assert_eq!(inner_root.content_type, "multipart/mixed");
        let holder = &parts[inner_root.parent.unwrap() as usize];
        assert_eq!(holder.content_type, "message/rfc822");
        // So is the one inside the base64-encoded attached message.
        let y = named("y.exe").expect("the encoded message's part is listed");
        assert_eq!(v.part_bytes(y.id).unwrap(), b"MZ\r\n");

        // Removing x.exe takes it out of the attached message only.
        let out = apply(&v, &[Mutation::RemovePart(exe.id)])
            .unwrap()
            .message
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            !text.contains("x.exe") && text.contains("inner text"),
            "{text}"
        );
        assert!(
            text.contains("--IN--") && text.contains("U3ViamVjdDog"),
            "{text}"
        );
        assert_eq!(view(&out).parts().len(), parts.len() - 1);

        // y.exe (the attached message's only part, so its root) has no
        // bytes of its own in the raw message: replacing it replaces the
        // encoded message/rfc822 part holding it, once however often asked.
        let holder = y.parent.unwrap();
        assert_eq!(parts[holder as usize].content_type, "message/rfc822");
        let note = |part| {
            Mutation::ReplacePart(PartReplacement {
                part,
                content_type: "text/plain".into(),
                body: b"removed".to_vec(),
            })
        };
        let out = apply(&v, &[note(y.id), note(holder)])
            .unwrap()
            .message
            .unwrap();
        let text = String::from_utf8_lossy(&out).into_owned();
        assert!(
            !text.contains("U3ViamVjdDog") && text.contains("removed"),
            "{text}"
        );
        assert!(
            text.contains("x.exe") && text.ends_with("--OUT--\r\n"),
            "{text}"
        );
    }

    #[test]
    fn removing_a_part_keeps_the_structure_valid() {
        let v = view(MULTIPART);
        let out = apply(&v, &[Mutation::RemovePart(2)]).unwrap();
        let new = out.message.unwrap();
        let reparsed = view(&new);
        let parts = reparsed.parts();
        assert_eq!(parts.len(), 2, "{}", String::from_utf8_lossy(&new));
        assert_eq!(reparsed.part_bytes(1).unwrap(), b"hello");
        assert!(String::from_utf8_lossy(&new).contains("hello\r\n--XX--\r\nepilogue"));
        assert_eq!(
            apply(&v, &[Mutation::RemovePart(0)]).unwrap_err(),
            MutationError::RootPart
        );
        assert_eq!(
            apply(&v, &[Mutation::RemovePart(9)]).unwrap_err(),
            MutationError::NoSuchPart(9)
        );
    }

    #[test]
    fn one_field_is_removed_by_position_and_folded_values_are_kept() {
        let v = view(
            b"Authentication-Results: a; spf=pass\r\nX: 1\r\nauthentication-results: mx.test;\r\n dkim=pass\r\nAuthentication-Results: c; none\r\n\r\nbody\r\n",
        );
        let out = apply(
            &v,
            &[
                // Added first: positions still name the fields as received.
                Mutation::AddHeader(header("Authentication-Results", "mx.test;\r\n\tspf=none")),
                Mutation::RemoveHeaderAt(HeaderAt {
                    name: "Authentication-Results".into(),
                    index: 1,
                }),
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out.message.unwrap()).unwrap(),
            "Authentication-Results: mx.test;\r\n\tspf=none\r\nAuthentication-Results: a; spf=pass\r\nX: 1\r\nAuthentication-Results: c; none\r\n\r\nbody\r\n"
        );
        let missing = HeaderAt {
            name: "X".into(),
            index: 1,
        };
        assert!(matches!(
            apply(&v, &[Mutation::RemoveHeaderAt(missing)]),
            Err(MutationError::NoSuchHeader(_))
        ));
        // Folding must be folding: no bare line break, no empty line.
        for bad in ["a\r\nBcc: x", "a\r\n \r\n b", "a\nb"] {
            assert!(
                apply(&v, &[Mutation::AddHeader(header("X-A", bad))]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn replacing_a_part_and_adding_a_header() {
        let v = view(MULTIPART);
        let out = apply(
            &v,
            &[
                Mutation::ReplacePart(PartReplacement {
                    part: 2,
                    content_type: "text/plain; charset=utf-8".into(),
                    body: b"The attachment a.exe was removed.".to_vec(),
                }),
                Mutation::AddHeader(header("X-Filtered", "yes")),
                Mutation::ReplaceHeader(header("Subject", "[ext] hi")),
                Mutation::AddRecipient("journal@example.org".into()),
            ],
        )
        .unwrap();
        let new = out.message.unwrap();
        let text = String::from_utf8_lossy(&new);
        assert!(
            text.starts_with("X-Filtered: yes\r\nReceived: x\r\n"),
            "{text}"
        );
        let reparsed = view(&new);
        assert_eq!(reparsed.header("subject"), ["[ext] hi"]);
        assert_eq!(
            reparsed.part_bytes(2).unwrap(),
            b"The attachment a.exe was removed.\r\n"
        );
        assert_eq!(reparsed.parts()[2].content_type, "text/plain");
        assert_eq!(out.envelope.add_recipients, ["journal@example.org"]);
    }

    #[test]
    fn binary_replacements_are_base64_and_the_root_can_be_replaced() {
        let v = view(b"Subject: s\r\nContent-Type: text/plain\r\n\r\nold\r\n");
        let out = apply(
            &v,
            &[Mutation::ReplacePart(PartReplacement {
                part: 0,
                content_type: "application/octet-stream".into(),
                body: vec![0, 159, 146, 150],
            })],
        )
        .unwrap();
        let new = view(&out.message.unwrap());
        assert_eq!(new.header("content-transfer-encoding"), ["base64"]);
        assert_eq!(new.part_bytes(0).unwrap(), [0, 159, 146, 150]);
    }

    #[test]
    fn bad_headers_and_overlaps_are_refused_whole() {
        let v = view(MULTIPART);
        assert!(matches!(
            apply(&v, &[Mutation::AddHeader(header("X-Bad", "a\r\nBcc: x"))]),
            Err(MutationError::BadHeader(_))
        ));
        assert!(matches!(
            apply(&v, &[Mutation::AddHeader(header("Bad Name", "a"))]),
            Err(MutationError::BadHeader(_))
        ));
        assert_eq!(
            apply(
                &v,
                &[
                    Mutation::ReplaceBody(b"x".to_vec()),
                    Mutation::RemovePart(2)
                ]
            )
            .unwrap_err(),
            MutationError::Overlap
        );
    }

    #[test]
    fn check_refuses_what_apply_refuses_and_long_lines() {
        let v = view(MULTIPART);
        let good = [
            Mutation::AddHeader(header("X-Ok", &format!("a\r\n\t{}", "b".repeat(900)))),
            Mutation::RemovePart(2),
        ];
        assert_eq!(check(&v, &good), Ok(()));
        assert!(apply(&v, &good).is_ok());
        for bad in [
            vec![Mutation::AddHeader(header("X-Long", &"b".repeat(1000)))],
            vec![Mutation::AddHeader(header("X-Bad", "a\r\nBcc: x"))],
            vec![Mutation::RemovePart(99)],
            vec![Mutation::RemoveHeaderAt(HeaderAt {
                name: "X-None".into(),
                index: 0,
            })],
            vec![
                Mutation::ReplaceBody(b"x".to_vec()),
                Mutation::RemovePart(2),
            ],
        ] {
            assert!(check(&v, &bad).is_err(), "{bad:?}");
            assert_eq!(check(&v, &bad).err(), apply(&v, &bad).err(), "{bad:?}");
        }
    }

    #[test]
    fn long_header_values_are_folded_at_white_space() {
        let words = vec!["word"; 300].join(" ");
        let folded = fold(&format!("X-Report: {words}"));
        assert!(folded.split("\r\n").all(|l| l.len() <= FOLD_AT), "{folded}");
        // Unfolding (RFC 5322 2.2.3) gives back the value.
        assert_eq!(folded.replace("\r\n", ""), format!("X-Report: {words}"));
        // Short fields and folded ones are left as they are.
        assert_eq!(fold("Subject: hi"), "Subject: hi");
        assert_eq!(fold("X-A: a\r\n\tb"), "X-A: a\r\n\tb");
        // A run too long to break is broken after it, where it can.
        let long = "b".repeat(100);
        assert_eq!(
            fold(&format!("X-A: {long} c")),
            format!("X-A: {long}\r\n c")
        );
        // Never a line of white space only, nor a break after the colon.
        let tail = format!("X-A: {long}   ");
        assert_eq!(fold(&tail), tail);
        assert_eq!(fold(&format!("X-A: {long}")), format!("X-A: {long}"));
        // Through a mutation: a 2,000-character value is written, folded.
        let v = view(MULTIPART);
        let out = apply(&v, &[Mutation::AddHeader(header("X-Report", &words))]).unwrap();
        let msg = out.message.unwrap();
        let head = &msg[..body_start(&msg)];
        assert!(head.split(|&b| b == b'\n').all(|l| l.len() <= FOLD_AT + 1));
    }

    #[test]
    fn a_replaced_body_gets_crlf_line_ends() {
        let v = view(b"Subject: s\r\n\r\nold\r\n");
        let out = apply(&v, &[Mutation::ReplaceBody(b"new\nlines\r\n".to_vec())]).unwrap();
        assert_eq!(out.message.unwrap(), b"Subject: s\r\n\r\nnew\r\nlines\r\n");
        assert!(
            apply(&v, &[Mutation::Tag("t".into())])
                .unwrap()
                .message
                .is_none()
        );
    }
}
