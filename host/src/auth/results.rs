//! What the checks found, in the shape RFC 8601 gives it: a method, a
//! result, an optional reason and `ptype.property=value` pairs; and the
//! Authentication-Results field that says it.
//!
//! Written here rather than with mail-auth's `AuthenticationResults`
//! builder because Weir's results are not all mail-auth's: SPF goes
//! through Weir's own pre-checks and DMARC's policy through `pct`.

use std::fmt::Write;

/// The authentication methods Weir checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Sender Policy Framework (RFC 7208).
    Spf,
    /// DomainKeys Identified Mail (RFC 6376), one result per signature.
    Dkim,
    /// Authenticated Received Chain (RFC 8617).
    Arc,
    /// DMARC (RFC 7489).
    Dmarc,
    /// The client's reverse DNS, forward-confirmed (RFC 8601 3).
    Iprev,
}

impl Method {
    /// The method's name as RFC 8601 writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Spf => "spf",
            Method::Dkim => "dkim",
            Method::Arc => "arc",
            Method::Dmarc => "dmarc",
            Method::Iprev => "iprev",
        }
    }
}

/// A method's result (RFC 8601 2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to check: no record, no signature.
    None,
    /// Passed.
    Pass,
    /// Failed.
    Fail,
    /// SPF softfail.
    SoftFail,
    /// SPF neutral; DKIM: a signature that did not verify for a reason
    /// other than a bad signature (body hash, expiry).
    Neutral,
    /// A temporary error (DNS): the same check may pass later.
    TempError,
    /// A permanent error: a broken record or signature.
    PermError,
    /// Valid, but unacceptable by local policy.
    Policy,
}

impl Outcome {
    /// The result's name as RFC 8601 writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::None => "none",
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::SoftFail => "softfail",
            Outcome::Neutral => "neutral",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
            Outcome::Policy => "policy",
        }
    }
}

/// One `ptype.property=value` of a result, e.g. `header.d=example.org`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// `ptype.property`, e.g. "smtp.mailfrom".
    pub name: String,
    /// The value, unquoted.
    pub value: String,
}

/// One method's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResult {
    /// The method.
    pub method: Method,
    /// Its result.
    pub outcome: Outcome,
    /// Why, in words (the field's comment); may be empty.
    pub reason: String,
    /// What was checked, as properties.
    pub properties: Vec<Property>,
}

impl AuthResult {
    pub(super) fn new(method: Method, outcome: Outcome) -> AuthResult {
        AuthResult {
            method,
            outcome,
            reason: String::new(),
            properties: Vec::new(),
        }
    }

    pub(super) fn reason(mut self, reason: impl Into<String>) -> AuthResult {
        self.reason = reason.into();
        self
    }

    pub(super) fn property(mut self, name: &str, value: impl Into<String>) -> AuthResult {
        self.properties.push(Property {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// The value of the property `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    }
}

/// The value of an Authentication-Results field (RFC 8601 2.2) for
/// `results`, folded one result per line: `authserv-id; spf=pass ...`.
pub fn header_value(authserv_id: &str, results: &[AuthResult]) -> String {
    let mut out = String::with_capacity(64 + 96 * results.len());
    out.push_str(authserv_id);
    if results.is_empty() {
        out.push_str("; none");
        return out;
    }
    for r in results {
        let _ = write!(out, ";\r\n\t{}={}", r.method.as_str(), r.outcome.as_str());
        if !r.reason.is_empty() {
            out.push_str(" (");
            for c in clip(&r.reason, MAX_REASON).chars() {
                match c {
                    '(' | ')' | '\\' => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if c.is_control() => out.push(' '),
                    c => out.push(c),
                }
            }
            out.push(')');
        }
        for p in &r.properties {
            let mut prop = format!("{}=", p.name);
            push_pvalue(&mut prop, &clip(&p.value, MAX_VALUE));
            // Lines stay well within RFC 5322's 998 characters, whatever
            // a signature or a record put in the values.
            let line = out.len() - out.rfind('\n').map_or(0, |i| i + 1);
            out.push_str(if line + prop.len() > 160 {
                "\r\n\t "
            } else {
                " "
            });
            out.push_str(&prop);
        }
    }
    out
}

/// The longest reason (in characters) the field gives before cutting it.
const MAX_REASON: usize = 200;
/// The longest property value (in characters): a domain name's 253 and
/// an address's 320 fit; longer ones come only from broken input.
const MAX_VALUE: usize = 320;

/// `text`, cut to `max` characters with "..." when it is longer.
fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((end, _)) => format!("{}...", &text[..end]).into(),
    }
}

/// A pvalue (RFC 8601 2.2): bare when it is a token or an address made of
/// tokens, otherwise a quoted string.
fn push_pvalue(out: &mut String, value: &str) {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
    };
    let bare = token(value)
        || value
            .rsplit_once('@')
            .is_some_and(|(l, d)| (l.is_empty() || token(l)) && token(d));
    if bare {
        out.push_str(value);
        return;
    }
    out.push('"');
    for c in value.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_is_rfc_8601_with_quoting_where_needed() {
        let results = vec![
            AuthResult::new(Method::Spf, Outcome::Pass)
                .reason("mx.test: domain of a@example.org designates 192.0.2.1 as permitted sender")
                .property("smtp.mailfrom", "a@example.org"),
            AuthResult::new(Method::Dkim, Outcome::Neutral)
                .reason("body hash did not verify (x)")
                .property("header.d", "example.org")
                .property("header.s", "s1"),
            AuthResult::new(Method::Spf, Outcome::None).property("smtp.mailfrom", "<>"),
        ];
        assert_eq!(
            header_value("mx.test", &results),
            "mx.test;\r\n\tspf=pass (mx.test: domain of a@example.org designates 192.0.2.1 as permitted sender) smtp.mailfrom=a@example.org;\r\n\tdkim=neutral (body hash did not verify \\(x\\)) header.d=example.org header.s=s1;\r\n\tspf=none smtp.mailfrom=\"<>\""
        );
        assert_eq!(header_value("mx.test", &[]), "mx.test; none");
    }

    #[test]
    fn long_reasons_and_values_are_cut_and_lines_stay_short() {
        let result = AuthResult::new(Method::Dkim, Outcome::PermError)
            .reason("(".repeat(1000))
            .property("header.d", "d".repeat(2000))
            .property("header.s", "\"".repeat(2000))
            .property("header.i", "@".repeat(2000));
        let value = header_value("mx.test", &vec![result; 20]);
        for line in value.split("\r\n") {
            assert!(line.len() < 998 - 40, "{} long: {line}", line.len());
        }
        assert!(value.contains(&format!("header.d={}...", "d".repeat(320))));
        assert!(value.contains(&format!("({}...)", "\\(".repeat(200))));
    }
}
