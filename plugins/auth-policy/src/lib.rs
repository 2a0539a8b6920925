//! auth-policy: what Weir does with the results of SPF, DKIM, DMARC and
//! ARC (computed by the gateway, read through `auth-results`), and the
//! Authentication-Results header.
//!
//! At `data`, for every message:
//!
//! - removes any incoming Authentication-Results field that claims the
//!   gateway's authserv-id (RFC 8601 5: a forged one could vouch for a
//!   message), and adds one with this gateway's results;
//! - DMARC fail (neither SPF nor DKIM passed aligned with the From
//!   domain): with the domain's policy `reject`, refuses with 550 5.7.1
//!   naming the reason; with `quarantine`, quarantines; each configurable;
//! - SPF fail of the MAIL FROM domain: refuses with 550 5.7.23 (RFC 7372)
//!   unless DMARC passed (DKIM aligned vouches for the message, e.g. one
//!   sent through a forwarder); softfail and errors are tagged;
//! - a forwarder on `trusted_arc_sealers` whose ARC chain passes, and whose
//!   own results (its newest ARC-Authentication-Results) say SPF, DKIM or
//!   DMARC passed, is believed: mail it forwards is not refused for the
//!   SPF or DMARC failures forwarding causes.
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
//! add_header = true             # Authentication-Results
//! ```

use std::sync::OnceLock;

use serde::Deserialize;
use weir_plugin_sdk::auth_results::{self, AuthResult, Outcome};
use weir_plugin_sdk::{
    Connection, Decision, Envelope, Hook, Message, Mutation, Plugin, Reply, Verdict, config,
    export_plugin,
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

    fn on_mail_from(_conn: Connection, _env: Envelope) -> Verdict {
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

    fn on_data(_conn: Connection, _env: Envelope, msg: &Message) -> Decision {
        let c = cfg();
        let results = auth_results::results();
        let mut mutations = Vec::new();
        if c.add_header {
            let ours = auth_results::authserv_id();
            for (i, value) in msg.header("Authentication-Results").iter().enumerate() {
                if authserv_id_of(value) == ours {
                    mutations.push(Mutation::remove_header_at(
                        "Authentication-Results",
                        i as u32,
                    ));
                }
            }
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

/// The sealer of a passing ARC chain that the configuration trusts and
/// whose newest ARC-Authentication-Results say SPF, DKIM or DMARC passed.
fn trusted_forwarder(c: &Config, results: &[AuthResult], aar: &[String]) -> Option<String> {
    let arc = find(results, "arc", None)?;
    if arc.outcome != Outcome::Pass {
        return None;
    }
    let sealer = arc.property("header.d")?.to_ascii_lowercase();
    if !c.trusted_arc_sealers.contains(&sealer) {
        return None;
    }
    let newest = aar.iter().max_by_key(|v| instance(v))?;
    let said_pass = newest.split(';').skip(1).any(|r| {
        let r = r.trim().to_ascii_lowercase();
        ["spf=pass", "dkim=pass", "dmarc=pass"].iter().any(|p| {
            r.starts_with(p)
                && r[p.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !c.is_alphanumeric())
        })
    });
    said_pass.then_some(sealer)
}

/// The `i=` instance of an ARC-Authentication-Results value.
fn instance(value: &str) -> u32 {
    value
        .split(';')
        .next()
        .and_then(|t| t.trim().strip_prefix("i="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The authserv-id an Authentication-Results value names (the text before
/// the first `;`, past comments), lower case.
pub fn authserv_id_of(value: &str) -> String {
    let head = value.split(';').next().unwrap_or_default();
    let mut plain = String::new();
    let mut depth = 0usize;
    for ch in head.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ch if depth == 0 => plain.push(ch),
            _ => {}
        }
    }
    plain
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_ascii_lowercase()
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
            "i=2; lists.example.org; dkim=pass header.d=example.com; dmarc=pass".to_string(),
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
        // Nor a forwarder whose own results passed nothing.
        let aar = vec!["i=1; lists.example.org; dkim=fail; dmarc=passx".to_string()];
        let res = results(Outcome::Fail, Outcome::Fail, "reject", Outcome::Pass);
        assert!(code(&decide(&c, &res, &aar).verdict).is_some());
    }

    #[test]
    fn configuration_is_checked() {
        assert!(Config::parse("{}").is_ok());
        let e = Config::parse(r#"{"spf_temperror": "reject"}"#).unwrap_err();
        assert!(e.contains("spf_temperror"), "{e}");
        let e = Config::parse(r#"{"dmarc": "reject"}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        assert_eq!(authserv_id_of(" (x) MX.test 1; spf=pass"), "mx.test");
    }
}
