//! ratelimit: limits on connections, messages and recipients per window,
//! counted per client address, client network, envelope sender, sender
//! domain, authenticated user or recipient domain, in the gateway's
//! `state` (so with `state.backend = "redis"` a limit holds for a whole
//! cluster).
//!
//! Each rule is a token bucket (`state.throttle`, GCRA): `limit` events
//! pass at once, the next is refused, one comes back every
//! `window / limit`, and after a whole window without events the bucket is
//! full again. A refused event is not counted by the rule that refuses
//! it, so a client that waits is served again; rules go in order and the
//! first that refuses decides, the ones before it having counted the
//! event.
//!
//! Over a limit: connections get `421 4.7.0` and the connection is closed,
//! messages and recipients `451 4.7.1`, with the rule's text (which may
//! name `{key}`, `{limit}`, `{window}` and `{retry}`, the seconds until
//! the next event would pass).
//!
//! The state backend unreachable (Redis down): `on_state_error = "allow"`
//! (the default) lets the event through, `"tempfail"` answers `451 4.3.0`
//! (`421 4.3.0` at connect); either way the plugin logs it.
//!
//! Configuration (`ratelimit.toml`), one `[[rule]]` per limit:
//!
//! ```toml
//! on_state_error = "allow"        # allow | tempfail
//!
//! [[rule]]
//! name = "conn-per-net"           # unique: the counters' name
//! count = "connections"           # connections | messages | recipients
//! key = "client_net"              # client_ip | client_net | sender |
//!                                 # sender_domain | user | recipient_domain
//! limit = 30
//! window = "1m"                   # "90s", "5m", "1h", "1d", or seconds
//! ipv4_prefix = 24                # client_net: the network's size
//! ipv6_prefix = 64
//! except_clients = ["10.0.0.0/8"] # not counted
//! stage = "mail_from"             # messages: mail_from (default) or data
//! code = 451                      # 4xx; 421 closes the connection
//! enhanced = "4.7.1"
//! text = "Too many messages from {key}; try again in {retry}s"
//! ```
//!
//! Where each count is made: connections at `connect` (keys `client_ip`,
//! `client_net`), recipients at `rcpt` (every key; `recipient_domain` is
//! the recipient's), messages at `mail_from` or `data` (every key;
//! `recipient_domain` only at `data`, once per domain among the message's
//! recipients). The plugin must be in the chains of the hooks its rules
//! use. A rule keyed on the sender skips the null sender (bounces name
//! nobody), one keyed on the user skips clients that did not
//! authenticate. Grant: `state`.

use std::sync::OnceLock;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use weir_plugin_sdk::address::{client_ip as client, domain_of, parse_net as net};
use weir_plugin_sdk::{
    Decision, Hook, Message, Plugin, Reply, Verdict, config, export_plugin, log, state, transaction,
};

/// What a rule counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Count {
    Connections,
    Messages,
    Recipients,
}

/// What a rule counts per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Key {
    ClientIp,
    ClientNet,
    Sender,
    SenderDomain,
    User,
    RecipientDomain,
}

/// Where messages are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum Stage {
    #[default]
    MailFrom,
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
enum OnStateError {
    #[default]
    Allow,
    Tempfail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    name: String,
    count: Count,
    key: Key,
    limit: u64,
    window: serde_json::Value,
    #[serde(default = "default_v4")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6")]
    ipv6_prefix: u8,
    #[serde(default)]
    except_clients: Vec<String>,
    stage: Option<Stage>,
    code: Option<u16>,
    enhanced: Option<String>,
    text: Option<String>,
}

fn default_v4() -> u8 {
    24
}

fn default_v6() -> u8 {
    64
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ConfigFile {
    on_state_error: OnStateError,
    rule: Vec<RuleConfig>,
}

/// A rule, checked.
#[derive(Debug)]
struct Rule {
    name: String,
    count: Count,
    key: Key,
    limit: u64,
    window: Duration,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    except: Vec<IpNet>,
    hook: Hook,
    code: u16,
    enhanced: String,
    text: String,
}

#[derive(Debug)]
struct Limits {
    on_state_error: OnStateError,
    rules: Vec<Rule>,
}

static LIMITS: OnceLock<Limits> = OnceLock::new();

fn limits() -> &'static Limits {
    LIMITS.get_or_init(|| {
        parse(&config::get()).unwrap_or(Limits {
            on_state_error: OnStateError::Allow,
            rules: Vec::new(),
        })
    })
}

fn parse(text: &str) -> Result<Limits, String> {
    let file: ConfigFile = serde_json::from_str(text).map_err(|e| format!("ratelimit: {e}"))?;
    let mut rules = Vec::new();
    for r in file.rule {
        let rule = check(r)?;
        if rules.iter().any(|o: &Rule| o.name == rule.name) {
            return Err(format!("ratelimit: two rules are named {:?}", rule.name));
        }
        rules.push(rule);
    }
    Ok(Limits {
        on_state_error: file.on_state_error,
        rules,
    })
}

fn check(r: RuleConfig) -> Result<Rule, String> {
    let name = r.name.clone();
    let fail = |why: String| format!("ratelimit: rule {name:?}: {why}");
    if r.name.is_empty() || r.name.contains(':') {
        return Err(fail("a name is needed, without ':'".into()));
    }
    if r.limit == 0 {
        return Err(fail("limit must be at least 1".into()));
    }
    let window = match &r.window {
        serde_json::Value::Number(n) => n
            .as_u64()
            .filter(|&s| s > 0)
            .map(Duration::from_secs)
            .ok_or_else(|| fail("window must be a positive number of seconds".into()))?,
        serde_json::Value::String(s) => {
            weir_plugin_sdk::time::parse_duration(s).map_err(|e| fail(format!("window: {e}")))?
        }
        _ => {
            return Err(fail(
                "window is a duration: \"1m\", \"1h\" or seconds".into(),
            ));
        }
    };
    if window.is_zero() {
        return Err(fail("window must be longer than zero".into()));
    }
    if r.ipv4_prefix > 32 || r.ipv6_prefix > 128 {
        return Err(fail(
            "ipv4_prefix is at most 32, ipv6_prefix at most 128".into(),
        ));
    }
    let except = r
        .except_clients
        .iter()
        .map(|n| {
            net(n).ok_or_else(|| {
                fail(format!(
                    "except_clients: {n:?} is not an address or network"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hook = match (r.count, r.stage) {
        (Count::Connections, None) => Hook::Connect,
        (Count::Recipients, None) => Hook::Rcpt,
        (Count::Messages, None | Some(Stage::MailFrom)) => Hook::MailFrom,
        (Count::Messages, Some(Stage::Data)) => Hook::Data,
        (_, Some(_)) => return Err(fail("stage is for counting messages only".into())),
    };
    match (r.count, r.key, hook) {
        (Count::Connections, Key::ClientIp | Key::ClientNet, _) => {}
        (Count::Connections, _, _) => {
            return Err(fail("connections are counted per client_ip or client_net (nothing else is known at connect)".into()));
        }
        (Count::Messages, Key::RecipientDomain, Hook::MailFrom) => {
            return Err(fail(
                "messages per recipient_domain are counted at stage = \"data\"".into(),
            ));
        }
        _ => {}
    }
    let (code, enhanced, text) = match r.count {
        Count::Connections => (
            421,
            "4.7.0",
            "Too many connections from {key}; try again in {retry}s",
        ),
        Count::Messages => (
            451,
            "4.7.1",
            "Too many messages from {key} ({limit} per {window}); try again in {retry}s",
        ),
        Count::Recipients => (
            451,
            "4.7.1",
            "Too many recipients for {key} ({limit} per {window}); try again in {retry}s",
        ),
    };
    let code = r.code.unwrap_or(code);
    if !(400..500).contains(&code) {
        return Err(fail(format!(
            "code {code}: a rate limit answers 4xx (421 closes the connection): the client may come back"
        )));
    }
    let enhanced = r.enhanced.unwrap_or_else(|| enhanced.to_string());
    if !enhanced.starts_with("4.") || enhanced.split('.').count() != 3 {
        return Err(fail(format!("enhanced {enhanced:?}: a 4.x.y code")));
    }
    Ok(Rule {
        name: r.name,
        count: r.count,
        key: r.key,
        limit: r.limit,
        window,
        ipv4_prefix: r.ipv4_prefix,
        ipv6_prefix: r.ipv6_prefix,
        except,
        hook,
        code,
        enhanced,
        text: r.text.unwrap_or_else(|| text.to_string()),
    })
}

/// The values a rule counts this event under (none: the rule does not
/// apply; several: recipient domains of a message).
fn keys(rule: &Rule, recipient: Option<&str>) -> Vec<String> {
    let sender = || transaction::sender().filter(|s| !s.is_empty());
    match rule.key {
        Key::ClientIp => client().map(|ip| ip.to_string()).into_iter().collect(),
        Key::ClientNet => client()
            .and_then(|ip| {
                let prefix = if ip.is_ipv4() {
                    rule.ipv4_prefix
                } else {
                    rule.ipv6_prefix
                };
                IpNet::new(ip, prefix).ok().map(|n| n.trunc().to_string())
            })
            .into_iter()
            .collect(),
        Key::Sender => sender()
            .map(|s| s.to_ascii_lowercase())
            .into_iter()
            .collect(),
        Key::SenderDomain => sender().and_then(|s| domain_of(&s)).into_iter().collect(),
        Key::User => transaction::authenticated_user()
            .map(|u| u.to_lowercase())
            .into_iter()
            .collect(),
        Key::RecipientDomain => match recipient {
            Some(r) => domain_of(r).into_iter().collect(),
            None => {
                let mut domains: Vec<String> = transaction::recipients()
                    .iter()
                    .filter_map(|r| domain_of(r))
                    .collect();
                domains.sort();
                domains.dedup();
                domains
            }
        },
    }
}

fn window_text(w: Duration) -> String {
    let s = w.as_secs();
    match s {
        0 => format!("{}ms", w.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The verdict of every rule counted at `hook`: the first refusal, else
/// continue.
fn run(hook: Hook, recipient: Option<&str>) -> Verdict {
    let limits = limits();
    let client = client();
    for rule in limits.rules.iter().filter(|r| r.hook == hook) {
        if client.is_some_and(|ip| rule.except.iter().any(|n| n.contains(&ip))) {
            continue;
        }
        for key in keys(rule, recipient) {
            let state_key = format!("{}:{key}", rule.name);
            let window_ms = rule.window.as_millis() as u64;
            match state::throttle(&state_key, 1, rule.limit, window_ms) {
                Ok(t) if t.allowed => {}
                Ok(t) => {
                    let retry = t.retry_after_ms.div_ceil(1000).max(1);
                    let text = rule
                        .text
                        .replace("{key}", &key)
                        .replace("{limit}", &rule.limit.to_string())
                        .replace("{window}", &window_text(rule.window))
                        .replace("{retry}", &retry.to_string());
                    log::log(
                        log::Level::Info,
                        &format!(
                            "rule {} refused {key}: over {} {} per {}",
                            rule.name,
                            rule.limit,
                            match rule.count {
                                Count::Connections => "connections",
                                Count::Messages => "messages",
                                Count::Recipients => "recipients",
                            },
                            window_text(rule.window)
                        ),
                    );
                    let reply = Reply::new(rule.code, &rule.enhanced, &text);
                    return if rule.code == 421 {
                        Verdict::Disconnect(reply)
                    } else {
                        Verdict::Tempfail(reply)
                    };
                }
                Err(e) => {
                    let why = match e {
                        state::StateError::Denied => "the plugin has no `state` grant".to_string(),
                        state::StateError::Unavailable(w) => w,
                    };
                    match limits.on_state_error {
                        OnStateError::Allow => {
                            log::log(
                                log::Level::Warn,
                                &format!(
                                    "rule {}: limits not checked ({why}); allowed (on_state_error = allow)",
                                    rule.name
                                ),
                            );
                        }
                        OnStateError::Tempfail => {
                            log::log(
                                log::Level::Warn,
                                &format!(
                                    "rule {}: limits not checked ({why}); deferred (on_state_error = tempfail)",
                                    rule.name
                                ),
                            );
                            let text = "Rate limits cannot be checked now; try again later";
                            return if hook == Hook::Connect {
                                Reply::disconnect(421, "4.3.0", text)
                            } else {
                                Reply::tempfail(451, "4.3.0", text)
                            };
                        }
                    }
                }
            }
        }
    }
    Verdict::Continue
}

struct RateLimit;

impl Plugin for RateLimit {
    const HOOKS: &'static [Hook] = &[Hook::Connect, Hook::MailFrom, Hook::Rcpt, Hook::Data];

    fn init(text: &str) -> Result<(), String> {
        let _ = LIMITS.set(parse(text)?);
        Ok(())
    }

    fn on_connect() -> Verdict {
        run(Hook::Connect, None)
    }

    fn on_mail_from(_sender: String) -> Verdict {
        run(Hook::MailFrom, None)
    }

    fn on_rcpt(recipient: String) -> Verdict {
        run(Hook::Rcpt, Some(&recipient))
    }

    fn on_data(_msg: &Message) -> Decision {
        Decision::from(run(Hook::Data, None))
    }
}

export_plugin!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Result<Limits, String> {
        parse(&format!("{{\"rule\": [{json}]}}"))
    }

    #[test]
    fn rules_are_checked_at_load() {
        let ok = rule(
            r#"{"name": "a", "count": "messages", "key": "sender", "limit": 5, "window": "1h"}"#,
        )
        .unwrap();
        assert_eq!(ok.rules[0].hook, Hook::MailFrom);
        assert_eq!(ok.rules[0].window, Duration::from_secs(3600));
        assert_eq!(ok.rules[0].code, 451);
        let data = rule(r#"{"name": "a", "count": "messages", "key": "recipient_domain", "limit": 5, "window": 60, "stage": "data"}"#)
            .unwrap();
        assert_eq!(data.rules[0].hook, Hook::Data);
        let bad = [
            (
                r#"{"name": "a", "count": "connections", "key": "sender", "limit": 5, "window": "1m"}"#,
                "client_ip or client_net",
            ),
            (
                r#"{"name": "a", "count": "messages", "key": "recipient_domain", "limit": 5, "window": "1m"}"#,
                "stage = \"data\"",
            ),
            (
                r#"{"name": "a", "count": "messages", "key": "sender", "limit": 0, "window": "1m"}"#,
                "at least 1",
            ),
            (
                r#"{"name": "a", "count": "messages", "key": "sender", "limit": 5, "window": "1 week"}"#,
                "window",
            ),
            (
                r#"{"name": "a", "count": "messages", "key": "sender", "limit": 5, "window": "1m", "code": 550}"#,
                "4xx",
            ),
            (
                r#"{"name": "a", "count": "recipients", "key": "sender", "limit": 5, "window": "1m", "stage": "data"}"#,
                "messages only",
            ),
            (
                r#"{"name": "a", "count": "messages", "key": "sender", "limit": 5, "window": "1m", "except_clients": ["nope"]}"#,
                "except_clients",
            ),
            (
                r#"{"name": "a", "count": "messages", "key": "sender", "limit": 5, "window": "1m", "colour": "red"}"#,
                "unknown field",
            ),
        ];
        for (json, says) in bad {
            let err = rule(json).unwrap_err();
            assert!(err.contains(says), "{json}: {err}");
        }
        let twice = parse(
            r#"{"rule": [
            {"name": "a", "count": "messages", "key": "sender", "limit": 5, "window": "1m"},
            {"name": "a", "count": "messages", "key": "user", "limit": 5, "window": "1m"}]}"#,
        )
        .unwrap_err();
        assert!(twice.contains("two rules"), "{twice}");
    }

    #[test]
    fn windows_read_back_in_their_unit() {
        assert_eq!(window_text(Duration::from_secs(3600)), "1h");
        assert_eq!(window_text(Duration::from_secs(90)), "90s");
        assert_eq!(window_text(Duration::from_secs(120)), "2m");
        assert_eq!(window_text(Duration::from_millis(500)), "500ms");
    }
}
