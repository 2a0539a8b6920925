//! auth-policy: what Weir does with the results of SPF, DKIM, DMARC and
//! ARC (computed by the gateway, read through `auth-results`), and the
//! Authentication-Results header.
//!
//! At `data`, for every message:
//!
//! - removes any incoming Authentication-Results field that claims the
//!   gateway's authserv-id (RFC 8601 5: a forged one could vouch for a
//!   message), and adds one with this gateway's results (`add_header`);
//! - DMARC fail (neither SPF nor DKIM passed aligned with the From
//!   domain): with the domain's policy `reject`, refuses with 550 5.7.1
//!   naming the reason; with `quarantine`, quarantines; each configurable;
//! - SPF fail of the MAIL FROM domain: refuses with 550 5.7.23 (RFC 7372)
//!   unless DMARC passed (DKIM aligned vouches for the message, e.g. one
//!   sent through a forwarder); softfail and errors are tagged;
//! - a forwarder on `trusted_arc_sealers` whose ARC chain passes, and whose
//!   own results (its newest ARC-Authentication-Results) say DMARC passed
//!   for the From domain, or DKIM or SPF passed for a domain aligned with
//!   it, is believed: mail it forwards is not refused for the SPF or DMARC
//!   failures forwarding causes.
//!
//! With `spf_stage = "mail_from"` an SPF fail is refused at MAIL FROM
//! instead (as Postfix's policyd-spf does): earlier, but blind to DKIM and
//! ARC. Configuration (`auth-policy.toml`, every key optional):
//!
//! ```toml
//! spf_fail = "reject"           # reject | tag | none
//! spf_softfail = "tag"          # reject | tag | none
//! spf_temperror = "tag"         # tempfail | tag | none
//! spf_permerror = "tag"         # reject | tag | none
//! spf_stage = "data"            # data | mail_from
//! dmarc_reject = "reject"       # reject | quarantine | tag | none
//! dmarc_quarantine = "quarantine"
//! dmarc_temperror = "tag"       # tempfail | tag | none
//! trusted_arc_sealers = []      # e.g. ["lists.example.org"]
//! add_header = true             # add ours (forged ones always go)
//! ```

use std::sync::OnceLock;

use serde::Deserialize;
use weir_plugin_sdk::auth_results::{self, AuthResult, Outcome};
use weir_plugin_sdk::{
    Decision, Hook, Message, Mutation, Plugin, Reply, Verdict, config, export_plugin,
};

/// What to do about a failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Refuse (5xx).
    Reject,
    /// Refuse for now (4xx): for errors that may go away.
    Tempfail,
    /// Accept into the quarantine.
    Quarantine,
    /// Accept, with a tag on the transaction.
    Tag,
    /// Nothing.
    None,
}

/// Where SPF fail is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// At the end of data, knowing DKIM, DMARC and ARC.
    Data,
    /// At MAIL FROM, on SPF alone.
    MailFrom,
}

/// The configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub spf_fail: Action,
    pub spf_softfail: Action,
    pub spf_temperror: Action,
    pub spf_permerror: Action,
    pub spf_stage: Stage,
    pub dmarc_reject: Action,
    pub dmarc_quarantine: Action,
    pub dmarc_temperror: Action,
    pub trusted_arc_sealers: Vec<String>,
    pub add_header: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            spf_fail: Action::Reject,
            spf_softfail: Action::Tag,
            spf_temperror: Action::Tag,
            spf_permerror: Action::Tag,
            spf_stage: Stage::Data,
            dmarc_reject: Action::Reject,
            dmarc_quarantine: Action::Quarantine,
            dmarc_temperror: Action::Tag,
            trusted_arc_sealers: Vec::new(),
            add_header: true,
        }
    }
}

impl Config {
    /// Reads and checks a configuration (JSON text).
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut c: Config = serde_json::from_str(text).map_err(|e| format!("auth-policy: {e}"))?;
        let allowed = |key: &str, a: Action, ok: &[Action]| {
            if ok.contains(&a) {
                Ok(())
            } else {
                Err(format!("auth-policy: {key} cannot be {a:?}").to_lowercase())
            }
        };
        use Action::*;
        allowed("spf_fail", c.spf_fail, &[Reject, Tag, None])?;
        allowed("spf_softfail", c.spf_softfail, &[Reject, Tag, None])?;
        allowed("spf_temperror", c.spf_temperror, &[Tempfail, Tag, None])?;
        allowed("spf_permerror", c.spf_permerror, &[Reject, Tag, None])?;
        allowed(
            "dmarc_reject",
            c.dmarc_reject,
            &[Reject, Quarantine, Tag, None],
        )?;
        allowed(
            "dmarc_quarantine",
            c.dmarc_quarantine,
            &[Reject, Quarantine, Tag, None],
        )?;
        allowed("dmarc_temperror", c.dmarc_temperror, &[Tempfail, Tag, None])?;
        for s in &mut c.trusted_arc_sealers {
            *s = s.trim_end_matches('.').to_ascii_lowercase();
        }
        Ok(c)
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn cfg() -> &'static Config {
    CONFIG.get_or_init(|| Config::parse(&config::get()).unwrap_or_default())
}

struct AuthPolicy;

impl Plugin for AuthPolicy {
    const HOOKS: &'static [Hook] = &[Hook::MailFrom, Hook::Data];

    fn init(config: &str) -> Result<(), String> {
        let _ = CONFIG.set(Config::parse(config)?);
        Ok(())
    }

    fn on_mail_from(_sender: String) -> Verdict {
        let c = cfg();
        if c.spf_stage != Stage::MailFrom {
            return Verdict::Continue;
        }
        let results = auth_results::results();
        match spf_decision(c, &results, false) {
            Some((Action::Reject | Action::Tempfail, verdict, _)) => verdict,
            _ => Verdict::Continue,
        }
    }

    fn on_data(msg: &Message) -> Decision {
        let c = cfg();
        let results = auth_results::results();
        let mut mutations = Vec::new();
        // A field claiming our name was not written by us (RFC 8601 5):
        // it goes, whether or not ours is added.
        let ours = auth_results::authserv_id().to_ascii_lowercase();
        for (i, value) in msg.header("Authentication-Results").iter().enumerate() {
            if authserv_id_of(value) == ours {
                mutations.push(Mutation::remove_header_at(
                    "Authentication-Results",
                    i as u32,
                ));
            }
        }
        if c.add_header {
            mutations.push(Mutation::add_header(
                "Authentication-Results",
                &auth_results::header_value(),
            ));
        }
        let aar = msg.header("ARC-Authentication-Results");
        let decision = decide(c, &results, &aar);
        mutations.extend(decision.tags.into_iter().map(Mutation::Tag));
        Decision::with(decision.verdict, mutations)
    }
}

/// What the policy decided for a message.
#[derive(Debug)]
pub struct Decided {
    /// The verdict.
    pub verdict: Verdict,
    /// Tags for the transaction (e.g. "spf=softfail").
    pub tags: Vec<String>,
}

fn find<'a>(
    results: &'a [AuthResult],
    method: &str,
    property: Option<&str>,
) -> Option<&'a AuthResult> {
    results
        .iter()
        .find(|r| r.method == method && property.is_none_or(|p| r.property(p).is_some()))
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::None => "none",
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::Softfail => "softfail",
        Outcome::Neutral => "neutral",
        Outcome::Temperror => "temperror",
        Outcome::Permerror => "permerror",
        Outcome::Policy => "policy",
    }
}

/// The SPF action for the MAIL FROM identity: (action, verdict, tag), or
/// `None` when nothing applies. `excused`: DMARC or a trusted forwarder
/// vouches for the message, so a fail is only tagged.
fn spf_decision(
    c: &Config,
    results: &[AuthResult],
    excused: bool,
) -> Option<(Action, Verdict, String)> {
    let spf = find(results, "spf", Some("smtp.mailfrom"))?;
    let sender = spf.property("smtp.mailfrom").unwrap_or_default();
    let domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
    let ip = find(results, "iprev", None)
        .and_then(|r| r.property("policy.iprev"))
        .unwrap_or("the client");
    let action = match spf.outcome {
        Outcome::Fail => c.spf_fail,
        Outcome::Softfail => c.spf_softfail,
        Outcome::Temperror => c.spf_temperror,
        Outcome::Permerror => c.spf_permerror,
        _ => return None,
    };
    let action = if excused && action == Action::Reject {
        Action::Tag
    } else {
        action
    };
    let tag = format!("spf={}", outcome_name(spf.outcome));
    let verdict = match (action, spf.outcome) {
        (Action::Reject, Outcome::Permerror) => Reply::reject(
            550,
            "5.7.24",
            &format!("SPF record of {domain} is broken (permerror)"),
        ),
        (Action::Reject, _) => Reply::reject(
            550,
            "5.7.23",
            &format!("SPF of {domain} does not allow {ip} to send its mail"),
        ),
        (Action::Tempfail, _) => Reply::tempfail(
            451,
            "4.7.24",
            &format!("SPF of {domain} could not be checked (DNS error); try again later"),
        ),
        _ => Verdict::Continue,
    };
    Some((action, verdict, tag))
}

/// The decision at `data` from the results and the message's
/// ARC-Authentication-Results fields.
pub fn decide(c: &Config, results: &[AuthResult], aar: &[String]) -> Decided {
    let mut tags = Vec::new();
    let trusted = trusted_forwarder(c, results, aar);
    if let Some(sealer) = &trusted {
        tags.push(format!("arc-trusted={sealer}"));
    }
    let dmarc = find(results, "dmarc", None);
    let dmarc_pass = dmarc.is_some_and(|d| d.outcome == Outcome::Pass);
    let mut verdict = Verdict::Continue;
    if let Some(d) = dmarc {
        let domain = d.property("header.from").unwrap_or("the From domain");
        match d.outcome {
            Outcome::Fail if trusted.is_none() => {
                tags.push("dmarc=fail".into());
                let policy = d.property("policy.dmarc").unwrap_or("none");
                let action = match policy {
                    "reject" => c.dmarc_reject,
                    "quarantine" => c.dmarc_quarantine,
                    _ => Action::None,
                };
                verdict = match action {
                    Action::Reject => Reply::reject(
                        550,
                        "5.7.1",
                        &format!(
                            "Message refused: it fails the DMARC policy ({policy}) of {domain}: neither SPF nor DKIM passed for that domain"
                        ),
                    ),
                    Action::Quarantine => {
                        Verdict::Quarantine(format!("DMARC fail, policy {policy} of {domain}"))
                    }
                    _ => Verdict::Continue,
                };
            }
            Outcome::Temperror => {
                tags.push("dmarc=temperror".into());
                if c.dmarc_temperror == Action::Tempfail {
                    verdict = Reply::tempfail(
                        451,
                        "4.7.1",
                        &format!(
                            "DMARC of {domain} could not be checked (DNS error); try again later"
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    if let Some((action, spf_verdict, tag)) =
        spf_decision(c, results, dmarc_pass || trusted.is_some())
    {
        if action != Action::None {
            tags.push(tag);
        }
        if matches!(verdict, Verdict::Continue) && c.spf_stage == Stage::Data {
            verdict = spf_verdict;
        }
    }
    Decided { verdict, tags }
}

/// The sealer of a passing ARC chain that the configuration trusts, when
/// its newest ARC-Authentication-Results say the message passed DMARC for
/// its From domain, or passed DKIM or SPF for a domain aligned with it
/// (RFC 7489 3.1): what DMARC would have said before forwarding broke it.
fn trusted_forwarder(c: &Config, results: &[AuthResult], aar: &[String]) -> Option<String> {
    let arc = find(results, "arc", None)?;
    if arc.outcome != Outcome::Pass {
        return None;
    }
    let sealer = arc.property("header.d")?.to_ascii_lowercase();
    if !c.trusted_arc_sealers.contains(&sealer) {
        return None;
    }
    let from = find(results, "dmarc", None)?
        .property("header.from")?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let newest = aar
        .iter()
        .filter_map(|v| parse_aar(v))
        .max_by_key(|(i, _)| *i)?
        .1;
    let vouches = newest.results.iter().any(|r| {
        if r.result != "pass" {
            return false;
        }
        let prop = |name: &str| r.property(name).map(|v| v.trim_end_matches('.'));
        match r.method.as_str() {
            "dmarc" => prop("header.from").is_some_and(|d| d.eq_ignore_ascii_case(&from)),
            "dkim" => prop("header.d").is_some_and(|d| aligned(d, &from)),
            "spf" => prop("smtp.mailfrom")
                .map(|m| m.rsplit_once('@').map_or(m, |(_, d)| d))
                .is_some_and(|d| aligned(d, &from)),
            _ => false,
        }
    });
    vouches.then_some(sealer)
}

/// Relaxed alignment, without the public suffix list, so on the safe
/// side: the same domain, or one under the other where the parent has at
/// least two labels (sibling subdomains are not taken as aligned).
fn aligned(domain: &str, from: &str) -> bool {
    let domain = domain.to_ascii_lowercase();
    let under = |child: &str, parent: &str| {
        parent.contains('.')
            && child
                .strip_suffix(parent)
                .is_some_and(|rest| rest.ends_with('.'))
    };
    domain == from || under(from, &domain) || under(&domain, from)
}

/// One result of an Authentication-Results value: `method=result` and its
/// properties (`reason` included), lower-cased except the values.
#[derive(Debug, PartialEq, Eq)]
pub struct Resinfo {
    /// The method, without a version (`dkim`).
    pub method: String,
    /// The result (`pass`).
    pub result: String,
    /// `ptype.property` (or `reason`) and value, unquoted.
    pub properties: Vec<(String, String)>,
}

impl Resinfo {
    fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An Authentication-Results value (RFC 8601 2.2), read.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The authserv-id, lower case.
    pub authserv_id: String,
    /// The results (none for `authserv-id; none`).
    pub results: Vec<Resinfo>,
}

/// Reads an Authentication-Results value: comments (nested, with quoted
/// pairs) are dropped and quoted strings unquoted before anything is
/// looked at, so neither can hide or forge a `;` or a result.
pub fn parse_results(value: &str) -> Parsed {
    parse_segments(segments(value))
}

/// The authserv-id an Authentication-Results value names, lower case.
pub fn authserv_id_of(value: &str) -> String {
    parse_results(value).authserv_id
}

/// Reads an ARC-Authentication-Results value (RFC 8617 4.1.1): its
/// instance and the results it carries.
pub fn parse_aar(value: &str) -> Option<(u32, Parsed)> {
    let mut segs = segments(value);
    if segs.is_empty() {
        return None;
    }
    let first = segs.remove(0);
    let instance = match first.as_slice() {
        [w] => w.text.strip_prefix("i=")?.trim().parse().ok()?,
        _ => return None,
    };
    Some((instance, parse_segments(segs)))
}

fn parse_segments(segs: Vec<Vec<Word>>) -> Parsed {
    let mut segs = segs.into_iter();
    let authserv_id = segs
        .next()
        .and_then(|words| words.into_iter().next())
        .map(|w| w.text.to_ascii_lowercase())
        .unwrap_or_default();
    let mut results = Vec::new();
    for words in segs {
        let mut words = words.into_iter();
        let Some(spec) = words.next() else { continue };
        let Some((method, result)) = spec.text.split_once('=') else {
            continue;
        };
        let method = method.split('/').next().unwrap_or_default();
        results.push(Resinfo {
            method: method.trim().to_ascii_lowercase(),
            result: result.trim().to_ascii_lowercase(),
            properties: words
                .filter_map(|w| {
                    let (n, v) = w.text.split_once('=')?;
                    Some((n.trim().to_ascii_lowercase(), v.to_string()))
                })
                .collect(),
        });
    }
    Parsed {
        authserv_id,
        results,
    }
}

/// A word of a structured field, and whether part of it was quoted.
#[derive(Debug)]
struct Word {
    text: String,
    quoted: bool,
}

/// Splits a value at `;` into segments of words, dropping comments and
/// unquoting quoted strings; `a = b` is the one word `a=b`.
fn segments(value: &str) -> Vec<Vec<Word>> {
    let mut segs: Vec<Vec<Word>> = vec![Vec::new()];
    let mut word: Option<Word> = None;
    let mut chars = value.chars();
    let end = |segs: &mut Vec<Vec<Word>>, word: &mut Option<Word>| {
        if let Some(w) = word.take() {
            segs.last_mut().expect("one segment at least").push(w);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                end(&mut segs, &mut word);
                let mut depth = 1;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert(Word {
                    text: String::new(),
                    quoted: true,
                });
                w.quoted = true;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => w.text.extend(chars.next()),
                        '"' => break,
                        c => w.text.push(c),
                    }
                }
            }
            ';' => {
                end(&mut segs, &mut word);
                segs.push(Vec::new());
            }
            c if c.is_whitespace() => end(&mut segs, &mut word),
            c => word
                .get_or_insert(Word {
                    text: String::new(),
                    quoted: false,
                })
                .text
                .push(c),
        }
    }
    end(&mut segs, &mut word);
    // `method = result`, `ptype.property = value`: one word each.
    for seg in &mut segs {
        let mut joined: Vec<Word> = Vec::with_capacity(seg.len());
        for w in seg.drain(..) {
            match joined.last_mut() {
                Some(last)
                    if (last.text.ends_with('=') && !last.quoted)
                        || (w.text.starts_with('=') && !w.quoted) =>
                {
                    last.text.push_str(&w.text);
                    last.quoted |= w.quoted;
                }
                _ => joined.push(w),
            }
        }
        *seg = joined;
    }
    segs
}

export_plugin!(AuthPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_plugin_sdk::auth_results::Property;

    fn r(method: &str, outcome: Outcome, props: &[(&str, &str)]) -> AuthResult {
        AuthResult {
            method: method.into(),
            outcome,
            reason: String::new(),
            properties: props
                .iter()
                .map(|(n, v)| Property {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
        }
    }

    fn results(spf: Outcome, dmarc: Outcome, policy: &str, arc: Outcome) -> Vec<AuthResult> {
        vec![
            r("spf", Outcome::None, &[("smtp.helo", "mx.example.com")]),
            r("spf", spf, &[("smtp.mailfrom", "a@example.com")]),
            r("dkim", Outcome::None, &[]),
            r(
                "arc",
                arc,
                &[
                    ("smtp.remote-ip", "192.0.2.1"),
                    ("header.d", "lists.example.org"),
                ],
            ),
            r(
                "dmarc",
                dmarc,
                &[("header.from", "example.com"), ("policy.dmarc", policy)],
            ),
            r("iprev", Outcome::Pass, &[("policy.iprev", "192.0.2.1")]),
        ]
    }

    fn code(v: &Verdict) -> Option<(u16, String)> {
        match v {
            Verdict::Reject(r) | Verdict::Tempfail(r) => Some((r.code, r.enhanced.clone())),
            _ => None,
        }
    }

    #[test]
    fn dmarc_policies_and_spf_fail() {
        let c = Config::default();
        let d = decide(
            &c,
            &results(Outcome::Fail, Outcome::Fail, "reject", Outcome::None),
            &[],
        );
        assert_eq!(code(&d.verdict), Some((550, "5.7.1".into())));
        let d = decide(
            &c,
            &results(Outcome::Fail, Outcome::Fail, "quarantine", Outcome::None),
            &[],
        );
        assert!(matches!(d.verdict, Verdict::Quarantine(_)));
        // p=none: SPF's own fail decides.
        let d = decide(
            &c,
            &results(Outcome::Fail, Outcome::Fail, "none", Outcome::None),
            &[],
        );
        assert_eq!(code(&d.verdict), Some((550, "5.7.23".into())));
        // DMARC pass (DKIM aligned) excuses an SPF fail.
        let d = decide(
            &c,
            &results(Outcome::Fail, Outcome::Pass, "reject", Outcome::None),
            &[],
        );
        assert!(matches!(d.verdict, Verdict::Continue));
        assert!(d.tags.contains(&"spf=fail".to_string()));
        // Softfail is tagged.
        let d = decide(
            &c,
            &results(Outcome::Softfail, Outcome::None, "none", Outcome::None),
            &[],
        );
        assert!(matches!(d.verdict, Verdict::Continue));
        assert_eq!(d.tags, vec!["spf=softfail".to_string()]);
    }

    #[test]
    fn a_trusted_forwarder_is_believed() {
        let mut c = Config::default();
        let aar = vec![
            "i=1; mx.origin.example; spf=fail smtp.mailfrom=a@example.com".to_string(),
            "i=2; lists.example.org; dkim=pass header.d=example.com; dmarc=pass header.from=example.com".to_string(),
        ];
        let res = results(Outcome::Fail, Outcome::Fail, "reject", Outcome::Pass);
        // Not trusted: refused.
        assert!(code(&decide(&c, &res, &aar).verdict).is_some());
        c.trusted_arc_sealers = vec!["lists.example.org".into()];
        let d = decide(&c, &res, &aar);
        assert!(matches!(d.verdict, Verdict::Continue), "{d:?}");
        // A chain that does not pass is not believed.
        let res = results(Outcome::Fail, Outcome::Fail, "reject", Outcome::Fail);
        assert!(code(&decide(&c, &res, &aar).verdict).is_some());
        // Nor a forwarder whose own results passed nothing for the From
        // domain: a pass hidden in a comment, DKIM of another domain,
        // DMARC of another From, a result that only starts like a pass.
        let res = results(Outcome::Fail, Outcome::Fail, "reject", Outcome::Pass);
        for newest in [
            "i=2; lists.example.org; dkim=fail; dmarc=passx",
            "i=2; lists.example.org; dkim=fail (dmarc=pass header.from=example.com)",
            "i=2; lists.example.org; dkim=fail (\\); dmarc=pass header.from=example.com)",
            "i=2; lists.example.org; dkim=pass header.d=elsewhere.example",
            "i=2; lists.example.org; dkim=pass header.d=com",
            "i=2; lists.example.org; dmarc=pass header.from=example.net",
            "i=2; lists.example.org; spf=pass smtp.mailfrom=a@notexample.com",
        ] {
            let aar = vec![
                "i=1; lists.example.org; dmarc=pass header.from=example.com".to_string(),
                newest.to_string(),
            ];
            let d = decide(&c, &res, &aar);
            assert!(code(&d.verdict).is_some(), "{newest}: {d:?}");
        }
        // Aligned DKIM or SPF, even of a subdomain, and quoting, vouch.
        for newest in [
            "i=2; lists.example.org; dkim=pass header.d=example.com",
            "i=2; lists.example.org; spf=pass smtp.mailfrom=bounce@mail.example.com",
            "i=2; lists.example.org; dmarc = pass (p=reject) header.from=\"EXAMPLE.com\"",
            "i=2; lists.example.org (comment; with a semicolon); dkim=pass header.d=example.com",
        ] {
            let aar = vec![newest.to_string()];
            let d = decide(&c, &res, &aar);
            assert!(matches!(d.verdict, Verdict::Continue), "{newest}: {d:?}");
        }
    }

    #[test]
    fn authentication_results_are_read_past_comments_and_quotes() {
        assert_eq!(authserv_id_of(" (x) MX.test 1; spf=pass"), "mx.test");
        // A quoted pair in a comment does not end it early.
        assert_eq!(authserv_id_of("(a \\) b) mx.test; spf=pass"), "mx.test");
        assert_eq!(authserv_id_of("(a \\( (nested)) mx.test; none"), "mx.test");
        // Nor does one in a quoted string; a `;` in a comment is not a
        // separator.
        assert_eq!(authserv_id_of("\"mx.\\\"test\"; none"), "mx.\"test");
        assert_eq!(authserv_id_of("(;) mx.test (;); none"), "mx.test");
        let p = parse_results(
            "mx.test; dkim/1 = pass (good (really)) header.d=\"a b\" header.s=s1;\r\n\tspf=fail smtp.mailfrom=x@y.test",
        );
        assert_eq!(p.authserv_id, "mx.test");
        assert_eq!(p.results.len(), 2);
        assert_eq!(p.results[0].method, "dkim");
        assert_eq!(p.results[0].result, "pass");
        assert_eq!(p.results[0].property("header.d"), Some("a b"));
        assert_eq!(p.results[1].property("smtp.mailfrom"), Some("x@y.test"));
        assert_eq!(
            parse_aar("i=3; mx.test; none"),
            Some((
                3,
                Parsed {
                    authserv_id: "mx.test".into(),
                    results: vec![]
                }
            ))
        );
        assert_eq!(parse_aar("mx.test; spf=pass"), None);
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Config::parse("{}").is_ok());
        let e = Config::parse(r#"{"spf_temperror": "reject"}"#).unwrap_err();
        assert!(e.contains("spf_temperror"), "{e}");
        let e = Config::parse(r#"{"dmarc": "reject"}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
