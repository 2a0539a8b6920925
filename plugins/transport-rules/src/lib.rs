//! transport-rules: an ordered list of mail-flow rules, as Exchange
//! administrators write them, in TOML. Each rule has conditions (`if`:
//! all must hold), exceptions (`unless`: any one makes the rule not
//! apply) and actions (`then`). Rules run in order at `data`; every rule
//! that applies adds its actions; a rule that rejects or quarantines ends
//! the list, as does one with `stop = true`.
//!
//! Conditions: sender, sender domain, recipient, recipient domain and From
//! address (exact, `*wildcard*` or `/regex/`); sender or recipient inside
//! or outside the organisation (the listener's local domains); a header
//! field present or matching; the subject matching or containing; the
//! body containing (text parts; grant `body`); an attachment present or
//! named; the size over; the spam score over (what an anti-spam plugin
//! before this one in the chain added); an authentication result
//! (`dmarc=fail`); the listener; authenticated or not.
//!
//! Actions: add or remove header fields, prepend a subject tag (once),
//! append a disclaimer to the text and HTML parts (once per message),
//! redirect to other recipients or add recipients (a journaling copy),
//! deliver through a named route with TLS required, reject with a reply,
//! quarantine. Header and recipient changes need `modify`; the disclaimer
//! and body conditions need `body`.
//!
//! Configuration: `plugins/transport-rules/transport-rules.toml` has the
//! common cases, `docs/transport-rules.md` every key and how it compares
//! with Exchange's mail-flow rules.

mod rules;

use std::cell::OnceCell;
use std::sync::OnceLock;

use weir_plugin_sdk::auth_results;
use weir_plugin_sdk::{
    Decision, Hook, Message, Mutation, PartInfo, PartReplacement, Plugin, Reply, Verdict, config,
    export_plugin, log, transaction,
};

use rules::{Condition, Rule, Scope};

static RULES: OnceLock<Vec<Rule>> = OnceLock::new();

fn rules() -> &'static [Rule] {
    RULES.get_or_init(|| rules::parse(&config::get()).expect("checked at init"))
}

fn domain(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// The address of a From value (`Name <a@b>` or `a@b`).
fn address_of(value: &str) -> String {
    match (value.rfind('<'), value.rfind('>')) {
        (Some(o), Some(c)) if o < c => value[o + 1..c].trim().to_string(),
        _ => value.trim().to_string(),
    }
}

/// An outcome as RFC 8601 (and the `auth` condition) spells it.
fn outcome(o: auth_results::Outcome) -> &'static str {
    use auth_results::Outcome as O;
    match o {
        O::None => "none",
        O::Pass => "pass",
        O::Fail => "fail",
        O::Softfail => "softfail",
        O::Neutral => "neutral",
        O::Temperror => "temperror",
        O::Permerror => "permerror",
        O::Policy => "policy",
    }
}

/// What the conditions look at, read from the message once, when first
/// needed.
struct Facts<'a> {
    msg: &'a Message,
    sender: String,
    recipients: Vec<String>,
    parts: OnceCell<Vec<PartInfo>>,
    body: OnceCell<String>,
    auth: OnceCell<Vec<(String, String)>>,
}

impl<'a> Facts<'a> {
    fn new(msg: &'a Message) -> Facts<'a> {
        Facts {
            msg,
            sender: transaction::sender().unwrap_or_default(),
            recipients: transaction::recipients(),
            parts: OnceCell::new(),
            body: OnceCell::new(),
            auth: OnceCell::new(),
        }
    }

    fn parts(&self) -> &[PartInfo] {
        self.parts.get_or_init(|| self.msg.parts())
    }

    /// The text of the message's text parts (not attachments), lower
    /// case, the first MiB of each.
    fn body(&self) -> &str {
        self.body.get_or_init(|| {
            let mut text = String::new();
            for p in self.parts() {
                if p.content_type.starts_with("text/") && !p.is_attachment {
                    match self.msg.part_range(p.id, 0, 1 << 20) {
                        Ok(bytes) => text.push_str(&String::from_utf8_lossy(&bytes).to_lowercase()),
                        Err(e) => log::log(log::Level::Warn, &format!("body not read: {e}")),
                    }
                    text.push('\n');
                }
            }
            text
        })
    }

    fn auth(&self) -> &[(String, String)] {
        self.auth.get_or_init(|| {
            auth_results::results()
                .into_iter()
                .map(|r| (r.method.to_lowercase(), outcome(r.outcome).to_string()))
                .collect()
        })
    }

    fn subject(&self) -> String {
        self.msg
            .header("subject")
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    fn holds(&self, c: &Condition) -> bool {
        let any = |ps: &[rules::Pattern], texts: &[String]| {
            texts.iter().any(|t| ps.iter().any(|p| p.matches(t)))
        };
        let scope = |address: &str, s: Scope| {
            let inside = transaction::is_local_domain(&domain(address));
            inside == (s == Scope::Inside)
        };
        match c {
            Condition::Sender(ps) => any(ps, std::slice::from_ref(&self.sender)),
            Condition::SenderDomain(ps) => any(ps, &[domain(&self.sender)]),
            Condition::Recipient(ps) => any(ps, &self.recipients),
            Condition::RecipientDomain(ps) => {
                let d: Vec<String> = self.recipients.iter().map(|r| domain(r)).collect();
                any(ps, &d)
            }
            Condition::From(ps) => {
                let from: Vec<String> = self
                    .msg
                    .header("from")
                    .iter()
                    .map(|v| address_of(v))
                    .collect();
                any(ps, &from)
            }
            Condition::SenderScope(s) => !self.sender.is_empty() && scope(&self.sender, *s),
            Condition::RecipientScope(s) => self.recipients.iter().any(|r| scope(r, *s)),
            Condition::Header(name, pattern) => {
                let values = self.msg.header(name);
                match pattern {
                    None => !values.is_empty(),
                    Some(p) => values.iter().any(|v| p.matches(v)),
                }
            }
            Condition::Subject(ps) => any(ps, &[self.subject()]),
            Condition::SubjectContains(words) => {
                let s = self.subject().to_lowercase();
                words.iter().any(|w| s.contains(w.as_str()))
            }
            Condition::BodyContains(words) => {
                let b = self.body();
                words.iter().any(|w| b.contains(w.as_str()))
            }
            Condition::HasAttachment(want) => self.parts().iter().any(|p| p.is_attachment) == *want,
            Condition::AttachmentName(ps) => {
                let names: Vec<String> = self
                    .parts()
                    .iter()
                    .filter_map(|p| p.filename.clone())
                    .collect();
                any(ps, &names)
            }
            Condition::SizeOver(n) => self.msg.raw_size() > *n,
            Condition::SpamScoreOver(s) => transaction::score() >= *s,
            Condition::Auth(pairs) => {
                let have = self.auth();
                pairs
                    .iter()
                    .any(|(m, o)| have.iter().any(|(hm, ho)| hm == m && ho == o))
            }
            Condition::Listener(names) => {
                let l = transaction::listener();
                names.contains(&l)
            }
            Condition::Authenticated(want) => transaction::authenticated_user().is_some() == *want,
        }
    }

    fn applies(&self, rule: &Rule) -> bool {
        rule.when.iter().all(|c| self.holds(c)) && !rule.unless.iter().any(|c| self.holds(c))
    }
}

/// The disclaimer appended to one text part: `None` if the part has it
/// already (a message that comes through twice gets it once).
fn with_disclaimer(
    msg: &Message,
    part: &PartInfo,
    text: &str,
    html: Option<&str>,
) -> Option<PartReplacement> {
    let bytes = match msg.part_bytes(part.id) {
        Ok(b) => b,
        Err(e) => {
            log::log(log::Level::Warn, &format!("disclaimer not added: {e}"));
            return None;
        }
    };
    let body = String::from_utf8_lossy(&bytes).into_owned();
    let (new, kind) = if part.content_type == "text/html" {
        let snippet = html.map(str::to_string).unwrap_or_else(|| {
            format!("<p>{}</p>", text.replace('&', "&amp;").replace('<', "&lt;"))
        });
        if body.contains(&snippet) {
            return None;
        }
        (before_body_end(&body, &snippet), "text/html; charset=utf-8")
    } else {
        if body.contains(text) {
            return None;
        }
        let sep = if body.ends_with('\n') { "" } else { "\r\n" };
        (
            format!("{body}{sep}\r\n{text}\r\n"),
            "text/plain; charset=utf-8",
        )
    };
    Some(PartReplacement {
        part: part.id,
        content_type: kind.to_string(),
        body: new.into_bytes(),
    })
}

/// Whether `part` belongs to a forwarded message (an ancestor is a
/// message/rfc822 part): the disclaimer goes on the message's own text,
/// not on the text of the mail it forwards.
fn in_attached_message(parts: &[PartInfo], part: &PartInfo) -> bool {
    let mut at = part.parent;
    // Parents come before children, so the walk ends.
    while let Some(id) = at {
        let Some(p) = parts.iter().find(|p| p.id == id) else {
            return false;
        };
        if p.content_type.starts_with("message/") {
            return true;
        }
        at = p.parent.filter(|&up| up < id);
    }
    false
}

/// `snippet` put into an HTML body before its `</body>` when it has one,
/// else at its end.
fn before_body_end(body: &str, snippet: &str) -> String {
    // ASCII-case-insensitive, on the body's own bytes: lowercasing the
    // whole body first can change its length (non-ASCII letters) and so
    // the offset. `<` is ASCII, so the offset is a character boundary.
    let at = body
        .as_bytes()
        .windows(7)
        .rposition(|w| w.eq_ignore_ascii_case(b"</body>"));
    match at {
        Some(at) => format!("{}{snippet}\r\n{}", &body[..at], &body[at..]),
        None => format!("{body}\r\n{snippet}\r\n"),
    }
}

struct TransportRules;

impl Plugin for TransportRules {
    const HOOKS: &'static [Hook] = &[Hook::Data];

    fn init(text: &str) -> Result<(), String> {
        let _ = RULES.set(rules::parse(text)?);
        Ok(())
    }

    fn on_data(msg: &Message) -> Decision {
        let facts = Facts::new(msg);
        let mut changes = Vec::new();
        let mut subject: Option<String> = None;
        let mut disclaimed = false;
        let mut recipients: Vec<String> = facts.recipients.clone();
        for rule in rules() {
            if !facts.applies(rule) {
                continue;
            }
            log::log(log::Level::Info, &format!("rule {:?} applies", rule.name));
            let a = &rule.then;
            for (name, value) in &a.add_header {
                changes.push(Mutation::add_header(name, value));
            }
            for name in &a.remove_header {
                changes.push(Mutation::RemoveHeader(name.clone()));
            }
            if let Some(prefix) = &a.prepend_subject {
                let current = subject.clone().unwrap_or_else(|| facts.subject());
                // Once: a reply to a tagged message keeps one tag.
                if !current.starts_with(prefix.as_str()) {
                    subject = Some(format!("{prefix}{current}"));
                }
            }
            if let (Some((text, html)), false) = (&a.disclaimer, disclaimed) {
                disclaimed = true;
                for part in facts.parts() {
                    let body_part = !part.is_attachment
                        && (part.content_type == "text/plain" || part.content_type == "text/html")
                        && !in_attached_message(facts.parts(), part);
                    if body_part && let Some(r) = with_disclaimer(msg, part, text, html.as_deref())
                    {
                        changes.push(Mutation::ReplacePart(r));
                    }
                }
            }
            if !a.redirect_to.is_empty() {
                for r in &recipients {
                    if !a.redirect_to.iter().any(|t| t.eq_ignore_ascii_case(r)) {
                        changes.push(Mutation::RemoveRecipient(r.clone()));
                    }
                }
                for t in &a.redirect_to {
                    changes.push(Mutation::AddRecipient(t.clone()));
                }
                recipients = a.redirect_to.clone();
            }
            for r in &a.add_recipients {
                changes.push(Mutation::AddRecipient(r.clone()));
            }
            if let Some(route) = &a.route {
                changes.push(Mutation::SetRoute(route.clone()));
            }
            if a.require_tls {
                changes.push(Mutation::RequireTls);
            }
            if let Some((code, enhanced, text)) = &a.reject {
                let reply = Reply::new(*code, enhanced, text);
                let verdict = if *code >= 500 {
                    Verdict::Reject(reply)
                } else {
                    Verdict::Tempfail(reply)
                };
                return Decision::with(verdict, changes);
            }
            if let Some(reason) = &a.quarantine {
                if let Some(s) = subject.take() {
                    changes.push(Mutation::replace_header("Subject", &s));
                }
                return Decision::with(
                    Verdict::Quarantine(format!("rule {:?}: {reason}", rule.name)),
                    changes,
                );
            }
            if a.stop {
                break;
            }
        }
        if let Some(s) = subject {
            changes.push(Mutation::replace_header("Subject", &s));
        }
        Decision::changes(changes)
    }
}

export_plugin!(TransportRules);

#[cfg(test)]
mod tests {
    use super::before_body_end;

    #[test]
    fn the_disclaimer_goes_before_the_last_body_end_tag_in_any_case() {
        // `İ` lowercases to three bytes: an offset found in the lowercased
        // copy would cut this body in the wrong place.
        let body = "<html><body><p>İİİ</p></BODY></html>";
        assert_eq!(
            before_body_end(body, "<p>D</p>"),
            "<html><body><p>İİİ</p><p>D</p>\r\n</BODY></html>"
        );
        assert_eq!(
            before_body_end("<p>x</p>", "<p>D</p>"),
            "<p>x</p>\r\n<p>D</p>\r\n"
        );
    }
}
