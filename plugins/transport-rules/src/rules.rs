//! The rules as the configuration gives them (`transport-rules.toml`,
//! handed over as JSON), checked once per instance at `init`.

use serde::Deserialize;

/// A text pattern: `exact` (case-insensitive), `*wild?card*`, or
/// `/regex/` (case-insensitive).
#[derive(Debug)]
pub enum Pattern {
    Exact(String),
    Wildcard(String),
    Regex(regex::Regex),
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.len() >= 2 && text.starts_with('/') && text.ends_with('/') {
            let re = regex::RegexBuilder::new(&text[1..text.len() - 1])
                .case_insensitive(true)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| format!("{text:?}: {e}"))?;
            return Ok(Pattern::Regex(re));
        }
        let lower = text.to_lowercase();
        Ok(if lower.contains(['*', '?']) {
            Pattern::Wildcard(lower)
        } else {
            Pattern::Exact(lower)
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(p) => text.to_lowercase() == *p,
            Pattern::Wildcard(p) => weir_plugin_sdk::pattern::wildcard(p, &text.to_lowercase()),
            Pattern::Regex(re) => re.is_match(text),
        }
    }
}

/// Inside or outside the organisation (the listener's local domains).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Inside,
    Outside,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFile {
    name: String,
    matches: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConditionsFile {
    sender: Vec<String>,
    sender_domain: Vec<String>,
    recipient: Vec<String>,
    recipient_domain: Vec<String>,
    from: Vec<String>,
    sender_scope: Option<Scope>,
    recipient_scope: Option<Scope>,
    header: Vec<HeaderFile>,
    subject: Vec<String>,
    subject_contains: Vec<String>,
    body_contains: Vec<String>,
    has_attachment: Option<bool>,
    attachment_name: Vec<String>,
    size_over: Option<serde_json::Value>,
    spam_score_over: Option<f64>,
    auth: Vec<String>,
    listener: Vec<String>,
    authenticated: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddHeaderFile {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisclaimerFile {
    text: String,
    html: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectFile {
    code: Option<u16>,
    enhanced: Option<String>,
    text: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ActionsFile {
    add_header: Vec<AddHeaderFile>,
    remove_header: Vec<String>,
    prepend_subject: Option<String>,
    disclaimer: Option<DisclaimerFile>,
    redirect_to: Vec<String>,
    add_recipients: Vec<String>,
    route: Option<String>,
    require_tls: bool,
    reject: Option<RejectFile>,
    quarantine: Option<String>,
    stop: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(rename = "if", default)]
    when: ConditionsFile,
    #[serde(default)]
    unless: ConditionsFile,
    then: ActionsFile,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct File {
    rule: Vec<RuleFile>,
}

/// What a condition looks at.
#[derive(Debug)]
pub enum Condition {
    Sender(Vec<Pattern>),
    SenderDomain(Vec<Pattern>),
    Recipient(Vec<Pattern>),
    RecipientDomain(Vec<Pattern>),
    From(Vec<Pattern>),
    SenderScope(Scope),
    RecipientScope(Scope),
    /// A header field exists, with a value matching the pattern if given.
    Header(String, Option<Pattern>),
    Subject(Vec<Pattern>),
    SubjectContains(Vec<String>),
    BodyContains(Vec<String>),
    HasAttachment(bool),
    AttachmentName(Vec<Pattern>),
    SizeOver(u64),
    SpamScoreOver(f64),
    /// (method, outcome), lower case.
    Auth(Vec<(String, String)>),
    Listener(Vec<String>),
    Authenticated(bool),
}

/// The actions of a rule.
#[derive(Debug, Default)]
pub struct Actions {
    pub add_header: Vec<(String, String)>,
    pub remove_header: Vec<String>,
    pub prepend_subject: Option<String>,
    pub disclaimer: Option<(String, Option<String>)>,
    pub redirect_to: Vec<String>,
    pub add_recipients: Vec<String>,
    pub route: Option<String>,
    pub require_tls: bool,
    pub reject: Option<(u16, String, String)>,
    pub quarantine: Option<String>,
    pub stop: bool,
}

/// A rule, checked.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    /// All must hold.
    pub when: Vec<Condition>,
    /// None may hold.
    pub unless: Vec<Condition>,
    pub then: Actions,
}

fn patterns(list: &[String]) -> Result<Vec<Pattern>, String> {
    list.iter().map(|p| Pattern::parse(p)).collect()
}

/// A header field name (RFC 5322 3.6.8).
fn field_name(name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(format!("{name:?} is not a header field name"));
    }
    Ok(name.to_string())
}

/// A header field value the operator wrote: one line (the gateway folds
/// long ones), no control characters.
fn field_value(what: &str, value: String) -> Result<String, String> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "{what} {value:?}: no line breaks or control characters"
        ));
    }
    Ok(value)
}

fn size(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a size")),
        serde_json::Value::String(s) => weir_plugin_sdk::size::parse_size(s),
        _ => Err("a size is a number of octets or a string such as \"10 MiB\"".into()),
    }
}

fn conditions(c: ConditionsFile) -> Result<Vec<Condition>, String> {
    let mut out = Vec::new();
    let mut list = |v: &[String], make: fn(Vec<Pattern>) -> Condition| -> Result<(), String> {
        if !v.is_empty() {
            out.push(make(patterns(v)?));
        }
        Ok(())
    };
    list(&c.sender, Condition::Sender)?;
    list(&c.sender_domain, Condition::SenderDomain)?;
    list(&c.recipient, Condition::Recipient)?;
    list(&c.recipient_domain, Condition::RecipientDomain)?;
    list(&c.from, Condition::From)?;
    list(&c.subject, Condition::Subject)?;
    list(&c.attachment_name, Condition::AttachmentName)?;
    if let Some(s) = c.sender_scope {
        out.push(Condition::SenderScope(s));
    }
    if let Some(s) = c.recipient_scope {
        out.push(Condition::RecipientScope(s));
    }
    for h in c.header {
        let pattern = h.matches.as_deref().map(Pattern::parse).transpose()?;
        out.push(Condition::Header(field_name(&h.name)?, pattern));
    }
    let lower = |v: Vec<String>| v.into_iter().map(|s| s.to_lowercase()).collect::<Vec<_>>();
    if !c.subject_contains.is_empty() {
        out.push(Condition::SubjectContains(lower(c.subject_contains)));
    }
    if !c.body_contains.is_empty() {
        out.push(Condition::BodyContains(lower(c.body_contains)));
    }
    if let Some(b) = c.has_attachment {
        out.push(Condition::HasAttachment(b));
    }
    if let Some(v) = &c.size_over {
        out.push(Condition::SizeOver(
            size(v).map_err(|e| format!("size_over: {e}"))?,
        ));
    }
    if let Some(s) = c.spam_score_over {
        if !s.is_finite() {
            return Err("spam_score_over must be a number".into());
        }
        out.push(Condition::SpamScoreOver(s));
    }
    if !c.auth.is_empty() {
        let mut pairs = Vec::new();
        for a in &c.auth {
            let (method, outcome) = a
                .split_once('=')
                .ok_or_else(|| format!("auth {a:?}: METHOD=RESULT, e.g. \"dmarc=fail\""))?;
            pairs.push((method.trim().to_lowercase(), outcome.trim().to_lowercase()));
        }
        out.push(Condition::Auth(pairs));
    }
    if !c.listener.is_empty() {
        out.push(Condition::Listener(c.listener));
    }
    if let Some(a) = c.authenticated {
        out.push(Condition::Authenticated(a));
    }
    Ok(out)
}

fn actions(a: ActionsFile) -> Result<Actions, String> {
    let reject = match a.reject {
        None => None,
        Some(r) => {
            let code = r.code.unwrap_or(550);
            if !(400..600).contains(&code) || code == 421 {
                return Err(format!("reject.code {code}: 4xx or 5xx (not 421)"));
            }
            let class = code / 100;
            let enhanced = r.enhanced.unwrap_or_else(|| format!("{class}.7.1"));
            if !enhanced.starts_with(&format!("{class}.")) || enhanced.split('.').count() != 3 {
                return Err(format!(
                    "reject.enhanced {enhanced:?}: {class}.x.y to go with {code}"
                ));
            }
            Some((code, enhanced, r.text))
        }
    };
    if reject.is_some() && a.quarantine.is_some() {
        return Err("a rule rejects or quarantines, not both".into());
    }
    let address = |v: Vec<String>, what: &str| -> Result<Vec<String>, String> {
        for r in &v {
            if !r.contains('@') || r.contains([' ', '<', '>', ',']) {
                return Err(format!("{what}: {r:?} is not an address"));
            }
        }
        Ok(v)
    };
    Ok(Actions {
        add_header: a
            .add_header
            .into_iter()
            .map(|h| {
                let value = field_value(&format!("add_header {}", h.name), h.value)?;
                Ok((field_name(&h.name)?, value))
            })
            .collect::<Result<_, String>>()?,
        remove_header: a
            .remove_header
            .iter()
            .map(|h| field_name(h))
            .collect::<Result<_, _>>()?,
        prepend_subject: a
            .prepend_subject
            .map(|p| field_value("prepend_subject", p))
            .transpose()?,
        disclaimer: a.disclaimer.map(|d| (d.text, d.html)),
        redirect_to: address(a.redirect_to, "redirect_to")?,
        add_recipients: address(a.add_recipients, "add_recipients")?,
        route: a.route,
        require_tls: a.require_tls,
        reject,
        quarantine: a.quarantine,
        stop: a.stop,
    })
}

pub fn parse(text: &str) -> Result<Vec<Rule>, String> {
    let f: File = serde_json::from_str(text).map_err(|e| format!("transport-rules: {e}"))?;
    let mut rules = Vec::new();
    for r in f.rule {
        let name = r.name.clone();
        let fail = |e: String| format!("transport-rules: rule {name:?}: {e}");
        rules.push(Rule {
            name: r.name,
            when: conditions(r.when).map_err(fail)?,
            unless: conditions(r.unless).map_err(fail)?,
            then: actions(r.then).map_err(fail)?,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_exact_wildcards_or_regexes() {
        assert!(
            Pattern::parse("A@B.example")
                .unwrap()
                .matches("a@b.EXAMPLE")
        );
        assert!(
            Pattern::parse("*@partner.example")
                .unwrap()
                .matches("x@Partner.example")
        );
        assert!(
            !Pattern::parse("*@partner.example")
                .unwrap()
                .matches("x@partner.example.evil")
        );
        assert!(
            Pattern::parse("/^billing-[0-9]+@/")
                .unwrap()
                .matches("Billing-42@x.test")
        );
        assert!(Pattern::parse("/(/").is_err());
    }

    #[test]
    fn rules_are_checked_at_load() {
        let ok = parse(r#"{"rule": [{"name": "r", "if": {"sender_scope": "outside", "size_over": "10 MiB"}, "then": {"prepend_subject": "[EXT] "}}]}"#).unwrap();
        assert_eq!(ok[0].when.len(), 2);
        for (bad, says) in [
            (
                r#"{"rule": [{"name": "r", "then": {"reject": {"code": 250, "text": "x"}}}]}"#,
                "reject.code",
            ),
            (
                r#"{"rule": [{"name": "r", "then": {"reject": {"text": "x"}, "quarantine": "y"}}]}"#,
                "not both",
            ),
            (
                r#"{"rule": [{"name": "r", "then": {"add_header": [{"name": "Bad Name", "value": "x"}]}}]}"#,
                "header field name",
            ),
            (
                r#"{"rule": [{"name": "r", "then": {"add_header": [{"name": "X-A", "value": "a\r\nBcc: x@y"}]}}]}"#,
                "no line breaks",
            ),
            (
                r#"{"rule": [{"name": "r", "then": {"prepend_subject": "[EXT]\n"}}]}"#,
                "prepend_subject",
            ),
            (
                r#"{"rule": [{"name": "r", "if": {"auth": ["dmarc"]}, "then": {}}]}"#,
                "METHOD=RESULT",
            ),
            (
                r#"{"rule": [{"name": "r", "then": {"redirect_to": ["nobody"]}}]}"#,
                "not an address",
            ),
            (
                r#"{"rule": [{"name": "r", "if": {"colour": "red"}, "then": {}}]}"#,
                "unknown field",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
