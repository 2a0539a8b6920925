//! antispam: DNS block lists, HELO, iprev, authentication and header
//! checks added up into a score that tags, quarantines or refuses a
//! message, and greylisting.
//!
//! - At `connect`, `helo`, `mail_from` or `rcpt`: an address list with
//!   `reject_at` there refuses a listed client outright (`554 5.7.1` and
//!   the connection closed at connect, `550 5.7.1` elsewhere, naming the
//!   list), as Postfix's `reject_rbl_client` does.
//! - At `rcpt`: greylisting, if enabled (`greylist.rs`).
//! - At `data`: the score. Every check that finds something adds its
//!   weight: each address list that has the client (`[[dnsbl]]`), each
//!   domain list that has the HELO name, the sender's domain or the From
//!   field's domain (`[[domain_list]]`); a HELO name that is not a domain
//!   or an address literal, an address literal that is not the client's,
//!   one of our own names (`local_names`), or (with a weight) a name
//!   without an address; iprev fail; SPF fail or softfail, DKIM fail,
//!   DMARC fail (and DMARC pass, whose default weight is negative); a
//!   missing Date or Message-ID, a From that is missing, repeated or holds
//!   no address. At `score.reject` and above the message is refused with
//!   `550 5.7.1`; at `score.quarantine` and above it is quarantined; at
//!   `score.tag` and above it is tagged `spam`. Every message gets
//!   `X-Spam-Score` and `X-Spam-Status` (SpamAssassin's form: `Yes,
//!   score=7.5 required=5.0 tests=DNSBL_ZEN=5.0,HELO_INVALID=1.5`), which
//!   replace any that came with it, and the score is added to the
//!   transaction's.
//!
//! Clients in `except_clients`, and authenticated ones
//! (`skip_authenticated`, default true), are not checked at all; only the
//! X-Spam fields they bring are removed.
//!
//! Failures: a list that does not answer in time or answers something
//! that is no listing code is not counted, and the log says which and why;
//! the state unreachable makes greylisting let mail through (logged).
//!
//! Configuration (`antispam.toml`): `plugins/antispam/antispam.toml` is a
//! commented example; `docs/antispam.md` describes every key. Grants:
//! `dns`, `state` (greylisting), `modify` (the headers).

mod greylist;
mod headers;
mod helo;
mod lists;
mod settings;

use std::net::IpAddr;
use std::sync::OnceLock;

use weir_plugin_sdk::address::client_ip as client;
use weir_plugin_sdk::auth_results::{self, Outcome};
use weir_plugin_sdk::{
    Decision, Hook, Message, Mutation, Plugin, Reply, Verdict, config, dns, export_plugin, log,
    transaction,
};

use settings::{Checked, Settings, Stage};

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| settings::parse(&config::get()).expect("checked at init"))
}

/// Whether this client is not checked at all.
fn exempt(s: &Settings, ip: Option<IpAddr>) -> bool {
    ip.is_some_and(|ip| s.except.iter().any(|n| n.contains(&ip)))
        || (s.skip_authenticated && transaction::authenticated_user().is_some())
}

/// The refusal of a client on a list with `reject_at` = `stage`, if any.
fn refused_at(stage: Stage) -> Option<Reply> {
    let s = settings();
    let ip = client()?;
    if exempt(s, Some(ip)) {
        return None;
    }
    let lists: Vec<_> = s
        .dnsbl
        .iter()
        .filter(|l| l.reject_at == Some(stage))
        .collect();
    let (list, code) = lists.into_iter().find_map(|l| {
        match lists::lookup(l, &lists::address_query(ip, &l.zone)) {
            lists::Found::Listed(code) => Some((l, code)),
            lists::Found::Clean => None,
        }
    })?;
    log::log(
        log::Level::Info,
        &format!("{ip} refused: listed by {} ({code})", list.zone),
    );
    let code = if stage == Stage::Connect { 554 } else { 550 };
    Some(Reply::new(
        code,
        "5.7.1",
        &format!(
            "Service unavailable; client [{ip}] blocked using {}",
            list.zone
        ),
    ))
}

/// A domain the lists can be asked about: one with a dot.
fn domain_of(address: &str) -> Option<String> {
    weir_plugin_sdk::address::domain_of(address).filter(|d| d.contains('.'))
}

/// Every check at data: (test name, weight) of each that found something.
fn tests(s: &Settings, ip: Option<IpAddr>, msg: &Message) -> Vec<(String, f64)> {
    let w = &s.weights;
    let mut tests: Vec<(String, f64)> = Vec::new();
    let mut add = |name: &str, weight: f64| {
        if weight != 0.0 {
            tests.push((name.to_string(), weight));
        }
    };
    if let Some(ip) = ip {
        for (list, _) in lists::client_hits(&s.dnsbl, ip) {
            add(&list.name, list.weight);
        }
    }
    let helo = transaction::helo().unwrap_or_default();
    let (header_findings, from_domain) = headers::check(msg);
    let sender_domain = transaction::sender().as_deref().and_then(domain_of);
    for list in &s.domain_lists {
        let names = list.check.iter().filter_map(|c| match c {
            Checked::Helo => (!helo.starts_with('[')).then(|| helo.to_ascii_lowercase()),
            Checked::MailFrom => sender_domain.clone(),
            Checked::From => from_domain.clone(),
        });
        let mut names: Vec<String> = names.collect();
        names.sort();
        names.dedup();
        if names.iter().any(|n| {
            matches!(
                lists::lookup(list, &format!("{n}.{}", list.zone)),
                lists::Found::Listed(_)
            )
        }) {
            add(&list.name, list.weight);
        }
    }
    for finding in helo::check(&helo, ip, &s.local_names) {
        match finding {
            helo::Finding::Invalid => add("HELO_INVALID", w.helo_invalid),
            helo::Finding::IpMismatch => add("HELO_IP_MISMATCH", w.helo_ip_mismatch),
            helo::Finding::Forged => add("HELO_FORGED", w.helo_forged),
        }
    }
    if w.helo_no_dns != 0.0 && !helo.starts_with('[') && !helo.is_empty() {
        let none =
            |r: Result<Vec<String>, dns::DnsError>| matches!(r, Err(dns::DnsError::NotFound));
        if none(dns::lookup_a(&helo)) && none(dns::lookup_aaaa(&helo)) {
            add("HELO_NO_DNS", w.helo_no_dns);
        }
    }
    let results = auth_results::results();
    let has = |method: &str, outcome: Outcome, property: Option<&str>| {
        results.iter().any(|r| {
            r.method == method
                && r.outcome == outcome
                && property.is_none_or(|p| r.property(p).is_some())
        })
    };
    if has("iprev", Outcome::Fail, None) || has("iprev", Outcome::Permerror, None) {
        add("IPREV_FAIL", w.iprev_fail);
    }
    if has("spf", Outcome::Fail, Some("smtp.mailfrom")) {
        add("SPF_FAIL", w.spf_fail);
    } else if has("spf", Outcome::Softfail, Some("smtp.mailfrom")) {
        add("SPF_SOFTFAIL", w.spf_softfail);
    }
    if has("dkim", Outcome::Fail, None) && !has("dkim", Outcome::Pass, None) {
        add("DKIM_FAIL", w.dkim_fail);
    }
    if has("dmarc", Outcome::Fail, None) {
        add("DMARC_FAIL", w.dmarc_fail);
    } else if has("dmarc", Outcome::Pass, None) {
        add("DMARC_PASS", w.dmarc_pass);
    }
    for finding in header_findings {
        match finding {
            headers::Finding::MissingDate => add("MISSING_DATE", w.missing_date),
            headers::Finding::MissingMessageId => add("MISSING_MESSAGE_ID", w.missing_message_id),
            headers::Finding::BadFrom => add("BAD_FROM", w.bad_from),
        }
    }
    tests
}

/// A score as the headers write it.
fn fmt(score: f64) -> String {
    format!("{score:.1}")
}

struct AntiSpam;

impl Plugin for AntiSpam {
    const HOOKS: &'static [Hook] = &[
        Hook::Connect,
        Hook::Helo,
        Hook::MailFrom,
        Hook::Rcpt,
        Hook::Data,
    ];

    fn init(text: &str) -> Result<(), String> {
        let _ = SETTINGS.set(settings::parse(text)?);
        Ok(())
    }

    fn on_connect() -> Verdict {
        match refused_at(Stage::Connect) {
            Some(reply) => Verdict::Disconnect(reply),
            None => Verdict::Continue,
        }
    }

    fn on_helo(_name: String) -> Verdict {
        refused_at(Stage::Helo).map_or(Verdict::Continue, Verdict::Reject)
    }

    fn on_mail_from(_sender: String) -> Verdict {
        refused_at(Stage::MailFrom).map_or(Verdict::Continue, Verdict::Reject)
    }

    fn on_rcpt(recipient: String) -> Verdict {
        if let Some(reply) = refused_at(Stage::Rcpt) {
            return Verdict::Reject(reply);
        }
        let s = settings();
        let (Some(g), Some(ip)) = (&s.greylist, client()) else {
            return Verdict::Continue;
        };
        if exempt(s, Some(ip)) {
            return Verdict::Continue;
        }
        greylist::check(
            g,
            ip,
            &transaction::sender().unwrap_or_default(),
            &recipient,
        )
    }

    fn on_data(msg: &Message) -> Decision {
        let s = settings();
        let ip = client();
        if exempt(s, ip) {
            // Not checked, so not vouched for: X-Spam fields it brings
            // (forged or from elsewhere) go, as they do for everyone else,
            // so that no filter after the gateway trusts them.
            let forged: Vec<Mutation> = ["X-Spam-Score", "X-Spam-Status"]
                .iter()
                .filter(|n| s.score.headers && !msg.header(n).is_empty())
                .map(|n| Mutation::RemoveHeader(n.to_string()))
                .collect();
            return Decision::changes(forged);
        }
        let tests = tests(s, ip, msg);
        // (A float sum of nothing is -0.0.)
        let score = tests.iter().fold(0.0, |sum, (_, w)| sum + w);
        let spam = s.score.tag.is_some_and(|t| score >= t);
        let list: Vec<String> = tests
            .iter()
            .map(|(n, w)| format!("{n}={}", fmt(*w)))
            .collect();
        // With tagging off there is no threshold to name.
        let required = s
            .score
            .tag
            .map_or(String::new(), |t| format!(" required={}", fmt(t)));
        let status = format!(
            "{}, score={}{required} tests={}",
            if spam { "Yes" } else { "No" },
            fmt(score),
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(",")
            }
        );
        let mut changes = Vec::new();
        if s.score.headers {
            changes.push(Mutation::replace_header("X-Spam-Score", &fmt(score)));
            changes.push(Mutation::replace_header("X-Spam-Status", &status));
        }
        if spam {
            changes.push(Mutation::Tag("spam".into()));
        }
        changes.push(Mutation::AddScore(score));
        log::log(log::Level::Info, &format!("score {}: {status}", fmt(score)));
        if s.score.reject.is_some_and(|r| score >= r) {
            return Decision::with(
                Reply::reject(
                    550,
                    "5.7.1",
                    &format!("Message refused as spam (score {})", fmt(score)),
                ),
                changes,
            );
        }
        if s.score.quarantine.is_some_and(|q| score >= q) {
            let reason = format!("spam score {} ({})", fmt(score), list.join(","));
            return Decision::with(Verdict::Quarantine(reason), changes);
        }
        Decision::changes(changes)
    }
}

export_plugin!(AntiSpam);
