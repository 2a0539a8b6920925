//! The configuration (`antispam.toml`, handed over as JSON), read and
//! checked once per instance at `init`.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// Where a list refuses a client outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Connect,
    Helo,
    MailFrom,
    Rcpt,
}

/// Which names a domain list looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checked {
    /// The EHLO/HELO name.
    Helo,
    /// The domain of the envelope sender.
    MailFrom,
    /// The domain of the From header field.
    From,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    zone: String,
    name: Option<String>,
    #[serde(default = "one")]
    weight: f64,
    #[serde(default)]
    codes: Vec<String>,
    reject_at: Option<Stage>,
    #[serde(default)]
    check: Vec<Checked>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ScoreFile {
    tag: f64,
    quarantine: f64,
    reject: f64,
    headers: bool,
}

impl Default for ScoreFile {
    fn default() -> ScoreFile {
        ScoreFile {
            tag: 5.0,
            quarantine: 0.0,
            reject: 15.0,
            headers: true,
        }
    }
}

/// The weights of the checks that are not lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    pub helo_invalid: f64,
    pub helo_ip_mismatch: f64,
    pub helo_forged: f64,
    pub helo_no_dns: f64,
    pub iprev_fail: f64,
    pub spf_fail: f64,
    pub spf_softfail: f64,
    pub dkim_fail: f64,
    pub dmarc_fail: f64,
    pub dmarc_pass: f64,
    pub missing_date: f64,
    pub missing_message_id: f64,
    pub bad_from: f64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights {
            helo_invalid: 1.5,
            helo_ip_mismatch: 2.0,
            helo_forged: 4.0,
            helo_no_dns: 0.0,
            iprev_fail: 1.5,
            spf_fail: 3.0,
            spf_softfail: 1.0,
            dkim_fail: 1.0,
            dmarc_fail: 3.0,
            dmarc_pass: -1.0,
            missing_date: 1.0,
            missing_message_id: 1.0,
            bad_from: 2.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct GreylistFile {
    enabled: bool,
    delay: String,
    expiry: String,
    allow_for: String,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    auto_allow_after: u64,
}

impl Default for GreylistFile {
    fn default() -> GreylistFile {
        GreylistFile {
            enabled: false,
            delay: "5m".into(),
            expiry: "2d".into(),
            allow_for: "36d".into(),
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            auto_allow_after: 5,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct File {
    except_clients: Vec<String>,
    skip_authenticated: Option<bool>,
    local_names: Vec<String>,
    score: ScoreFile,
    weights: Weights,
    dnsbl: Vec<ListFile>,
    domain_list: Vec<ListFile>,
    greylist: GreylistFile,
}

/// A DNS list (of addresses or of domains), checked.
#[derive(Debug)]
pub struct List {
    pub zone: String,
    /// The test's name in X-Spam-Status (`DNSBL_ZEN`).
    pub name: String,
    pub weight: f64,
    /// The answers that mean "listed".
    pub codes: Vec<Codes>,
    pub reject_at: Option<Stage>,
    pub check: Vec<Checked>,
}

/// A range of answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codes {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Codes {
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        self.first <= a && a <= self.last
    }
}

/// Greylisting, checked.
#[derive(Debug)]
pub struct Greylist {
    pub delay: Duration,
    pub expiry: Duration,
    pub allow_for: Duration,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub auto_allow_after: u64,
}

/// The thresholds of the score.
#[derive(Debug)]
pub struct Thresholds {
    /// `None`: never tagged (`tag = 0`).
    pub tag: Option<f64>,
    pub quarantine: Option<f64>,
    pub reject: Option<f64>,
    pub headers: bool,
}

/// Everything, checked.
#[derive(Debug)]
pub struct Settings {
    pub except: Vec<IpNet>,
    pub skip_authenticated: bool,
    pub local_names: Vec<String>,
    pub score: Thresholds,
    pub weights: Weights,
    pub dnsbl: Vec<List>,
    pub domain_lists: Vec<List>,
    pub greylist: Option<Greylist>,
}

pub use weir_plugin_sdk::address::parse_net as net;

/// `127.0.0.2`, `127.0.0.2-127.0.0.11` or `127.0.0.0/24`.
fn codes(text: &str) -> Option<Codes> {
    if let Some((a, b)) = text.split_once('-') {
        let (first, last) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        return (first <= last).then_some(Codes { first, last });
    }
    if let Ok(net) = text.parse::<ipnet::Ipv4Net>() {
        return Some(Codes {
            first: net.network(),
            last: net.broadcast(),
        });
    }
    let one: Ipv4Addr = text.trim().parse().ok()?;
    Some(Codes {
        first: one,
        last: one,
    })
}

/// What most lists mean by "listed": 127.0.0.0/8 but 127.255.255.0/24,
/// where Spamhaus and others put their error answers.
fn default_codes() -> Vec<Codes> {
    vec![Codes {
        first: Ipv4Addr::new(127, 0, 0, 0),
        last: Ipv4Addr::new(127, 255, 254, 255),
    }]
}

fn duration(what: &str, text: &str) -> Result<Duration, String> {
    weir_plugin_sdk::time::parse_duration(text).map_err(|e| format!("{what}: {e}"))
}

fn list(kind: &str, l: ListFile, domains: bool) -> Result<List, String> {
    let zone = l.zone.trim().trim_end_matches('.').to_ascii_lowercase();
    let fail = |why: String| format!("antispam: {kind} {zone:?}: {why}");
    if zone.is_empty() || !zone.contains('.') {
        return Err(fail("zone must be a domain".into()));
    }
    if !l.weight.is_finite() {
        return Err(fail("weight must be a number".into()));
    }
    let codes = if l.codes.is_empty() {
        default_codes()
    } else {
        l.codes
            .iter()
            .map(|c| {
                codes(c).ok_or_else(|| {
                    fail(format!(
                        "codes: {c:?} is not an address, a range a-b or a network"
                    ))
                })
            })
            .collect::<Result<_, _>>()?
    };
    if domains && l.reject_at.is_some() {
        return Err(fail("reject_at is for address lists ([[dnsbl]])".into()));
    }
    if !domains && !l.check.is_empty() {
        return Err(fail("check is for domain lists ([[domain_list]])".into()));
    }
    let check = if domains && l.check.is_empty() {
        vec![Checked::Helo, Checked::MailFrom, Checked::From]
    } else {
        l.check
    };
    let prefix = if domains { "DBL" } else { "DNSBL" };
    let name = l.name.unwrap_or_else(|| {
        let label = zone.split('.').next().unwrap_or("").to_ascii_uppercase();
        format!("{prefix}_{label}")
    });
    Ok(List {
        zone,
        name,
        weight: l.weight,
        codes,
        reject_at: l.reject_at,
        check,
    })
}

pub fn parse(text: &str) -> Result<Settings, String> {
    let f: File = serde_json::from_str(text).map_err(|e| format!("antispam: {e}"))?;
    let except = f
        .except_clients
        .iter()
        .map(|n| {
            net(n).ok_or_else(|| {
                format!("antispam: except_clients: {n:?} is not an address or network")
            })
        })
        .collect::<Result<_, _>>()?;
    let s = &f.score;
    for (k, v) in [
        ("tag", s.tag),
        ("quarantine", s.quarantine),
        ("reject", s.reject),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err(format!(
                "antispam: score.{k} must be a number, 0 or more (0: off)"
            ));
        }
    }
    let on = |v: f64| (v > 0.0).then_some(v);
    let score = Thresholds {
        tag: on(s.tag),
        quarantine: on(s.quarantine),
        reject: on(s.reject),
        headers: s.headers,
    };
    if let (Some(q), Some(r)) = (score.quarantine, score.reject)
        && q >= r
    {
        return Err("antispam: score.quarantine must be below score.reject".into());
    }
    let g = &f.greylist;
    let greylist = if g.enabled {
        if g.ipv4_prefix > 32 || g.ipv6_prefix > 128 {
            return Err(
                "antispam: greylist.ipv4_prefix is at most 32, ipv6_prefix at most 128".into(),
            );
        }
        let grey = Greylist {
            delay: duration("antispam: greylist.delay", &g.delay)?,
            expiry: duration("antispam: greylist.expiry", &g.expiry)?,
            allow_for: duration("antispam: greylist.allow_for", &g.allow_for)?,
            ipv4_prefix: g.ipv4_prefix,
            ipv6_prefix: g.ipv6_prefix,
            auto_allow_after: g.auto_allow_after,
        };
        if grey.expiry <= grey.delay {
            return Err("antispam: greylist.expiry must be longer than greylist.delay".into());
        }
        Some(grey)
    } else {
        None
    };
    Ok(Settings {
        except,
        skip_authenticated: f.skip_authenticated.unwrap_or(true),
        local_names: f
            .local_names
            .iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect(),
        score,
        weights: f.weights,
        dnsbl: f
            .dnsbl
            .into_iter()
            .map(|l| list("dnsbl", l, false))
            .collect::<Result<_, _>>()?,
        domain_lists: f
            .domain_list
            .into_iter()
            .map(|l| list("domain_list", l, true))
            .collect::<Result<_, _>>()?,
        greylist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_codes_and_thresholds_are_checked() {
        let s = parse(
            r#"{"dnsbl": [{"zone": "zen.spamhaus.org", "weight": 5, "codes": ["127.0.0.2-127.0.0.11", "127.0.1.0/24", "127.0.0.99"], "reject_at": "rcpt"}],
                "domain_list": [{"zone": "dbl.example", "check": ["from"]}],
                "greylist": {"enabled": true, "delay": "1s", "expiry": "1m"}}"#,
        )
        .unwrap();
        let l = &s.dnsbl[0];
        assert_eq!(l.name, "DNSBL_ZEN");
        assert!(l.codes[0].contains("127.0.0.11".parse().unwrap()));
        assert!(!l.codes[0].contains("127.0.0.12".parse().unwrap()));
        assert!(l.codes[1].contains("127.0.1.200".parse().unwrap()));
        assert!(l.codes[2].contains("127.0.0.99".parse().unwrap()));
        assert_eq!(s.domain_lists[0].name, "DBL_DBL");
        assert_eq!(s.greylist.as_ref().unwrap().delay, Duration::from_secs(1));
        // By default, 127.255.255.x (the lists' error answers) is not a listing.
        let d = parse(r#"{"dnsbl": [{"zone": "bl.example"}]}"#).unwrap();
        assert!(d.dnsbl[0].codes[0].contains("127.0.0.2".parse().unwrap()));
        assert!(!d.dnsbl[0].codes[0].contains("127.255.255.254".parse().unwrap()));
        // 0 turns a threshold off, tagging's too; the default tags at 5.
        assert_eq!(parse(r#"{"score": {"tag": 0}}"#).unwrap().score.tag, None);
        assert_eq!(d.score.tag, Some(5.0));
        for (bad, says) in [
            (r#"{"dnsbl": [{"zone": "bl"}]}"#, "domain"),
            (
                r#"{"dnsbl": [{"zone": "bl.example", "codes": ["x"]}]}"#,
                "codes",
            ),
            (
                r#"{"domain_list": [{"zone": "bl.example", "reject_at": "rcpt"}]}"#,
                "reject_at",
            ),
            (r#"{"score": {"quarantine": 20, "reject": 10}}"#, "below"),
            (
                r#"{"greylist": {"enabled": true, "delay": "1h", "expiry": "1m"}}"#,
                "longer",
            ),
            (
                r#"{"greylist": {"enabled": true, "delay": "soon"}}"#,
                "delay",
            ),
            (r#"{"weights": {"helo_bad": 1}}"#, "unknown field"),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
