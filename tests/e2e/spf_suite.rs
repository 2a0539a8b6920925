//! The openspf RFC 7208 test suite (`tests/data/rfc7208-tests.yml`, from
//! pyspf 2.0.14, BSD licence beside it) run against Weir's SPF evaluation
//! (`weir::auth`, on mail-auth), each scenario's records served by the test
//! DNS server.
//!
//! Every test must pass except those in [`KNOWN`], each with the reason
//! Weir differs; a known case that starts passing fails the test too, so
//! the list stays true.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR};
use serde::Deserialize;
use serde_norway::Value;
use weir::auth::spf::Identity;

use crate::dns::{Records, TestDns, name, txt_strings};

/// Where Weir's SPF differs from the suite, and why.
const KNOWN: &[(&str, &str)] = &[
    // mail-auth's record parser is lenient where RFC 7208 says permerror.
    (
        "badip4",
        "lenient parser: a bad ip4 address is skipped, not a permerror",
    ),
    ("cidr4-032", "lenient parser: ip4 CIDR /032 accepted"),
    ("cidr4-33", "lenient parser: ip4 CIDR /33 accepted"),
    ("cidr6-129", "lenient parser: ip6 CIDR /129 accepted"),
    ("a-bad-cidr4", "lenient parser: a bad a/ CIDR accepted"),
    ("a-bad-cidr6", "lenient parser: a bad a// CIDR accepted"),
    ("mx-bad-cidr4", "lenient parser: a bad mx/ CIDR accepted"),
    ("mx-bad-cidr6", "lenient parser: a bad mx// CIDR accepted"),
    (
        "a-dual-cidr-ip4-err",
        "lenient parser: a bad dual CIDR accepted",
    ),
    (
        "a-numeric",
        "lenient parser: a numeric top label in a: accepted",
    ),
    (
        "a-numeric-toplabel",
        "lenient parser: a numeric top label accepted",
    ),
    (
        "a-only-toplabel",
        "lenient parser: a one-label domain in a: accepted",
    ),
    (
        "a-only-toplabel-trailing-dot",
        "lenient parser: a one-label domain in a: accepted",
    ),
    (
        "mx-numeric-top-label",
        "lenient parser: a numeric top label in mx: accepted",
    ),
    ("a-colon-domain", "lenient parser: a colon in a domain-spec"),
    (
        "a-colon-domain-ip4mapped",
        "lenient parser: a colon in a domain-spec",
    ),
    (
        "mx-colon-domain",
        "lenient parser: a colon in a domain-spec",
    ),
    (
        "mx-colon-domain-ip4mapped",
        "lenient parser: a colon in a domain-spec",
    ),
    (
        "empty-modifier-name",
        "lenient parser: =value accepted as a modifier",
    ),
    (
        "invalid-modifier",
        "lenient parser: an invalid modifier name accepted",
    ),
    ("exp-syntax-error", "lenient parser: a bad exp= accepted"),
    (
        "redirect-syntax-error",
        "lenient parser: a bad redirect= accepted",
    ),
    (
        "modifier-charset-good",
        "parser: a valid modifier with odd characters refused",
    ),
    (
        "redirect-after-mechanisms2",
        "parser: redirect after mechanisms misread",
    ),
    (
        "invalid-domain",
        "lenient parser: an invalid domain-spec in a mechanism",
    ),
    (
        "non-ascii-mech",
        "lenient parser: non-ASCII in a mechanism accepted",
    ),
    (
        "non-ascii-policy",
        "lenient parser: non-ASCII in the record accepted",
    ),
    (
        "control-char-policy",
        "lenient parser: a control character in the record accepted",
    ),
    // Names in mechanisms that cannot be sent to DNS are a temporary
    // error in mail-auth, not "no match" or permerror.
    ("a-bad-domain", "an unusable a: domain gives a DNS error"),
    ("a-bad-toplabel", "an unusable a: domain gives a DNS error"),
    ("mx-bad-domain", "an unusable mx: domain gives a DNS error"),
    ("mx-bad-toplab", "an unusable mx: domain gives a DNS error"),
    (
        "a-null",
        "an a: domain with an empty label gives a DNS error",
    ),
    (
        "mx-null",
        "an mx: domain with an empty label gives a DNS error",
    ),
    (
        "invalid-domain-empty-label",
        "an empty label in a mechanism gives a DNS error",
    ),
    (
        "invalid-domain-long",
        "an over-long name in a mechanism gives a DNS error",
    ),
    (
        "invalid-domain-long-via-macro",
        "an over-long macro expansion gives a DNS error",
    ),
    (
        "macro-mania-in-domain",
        "a bad macro expansion in a domain gives a DNS error",
    ),
    (
        "hello-domain-literal",
        "%{h} of an address-literal HELO gives a DNS error",
    ),
    (
        "invalid-hello-macro",
        "%{h} of an invalid HELO name gives a DNS error",
    ),
    // IPv4-mapped IPv6 clients.
    (
        "a-cidr6-0-ip4mapped",
        "an IPv4-mapped client is matched as IPv4 by ip6:/0",
    ),
    (
        "mx-cidr6-0-ip4mapped",
        "an IPv4-mapped client is matched as IPv4 by mx//0",
    ),
    ("cidr6-0-ip4", "an IPv4 client is matched by ip6:::/0"),
    ("cidr6-ip4", "an IPv4 client is matched by ip6:"),
    // Lookups and limits.
    ("exists-ip6only", "exists: also queries AAAA"),
    (
        "void-over-limit",
        "no limit on void lookups (RFC 7208 4.6.4)",
    ),
    (
        "ptr-match-implicit",
        "PTR names keep their trailing dot: `ptr` without a domain never matches",
    ),
    (
        "ptr-match-ip6",
        "PTR names keep their trailing dot: `ptr` never matches over IPv6",
    ),
    (
        "p-macro-multiple",
        "%{p} is empty (the PTR names keep their dot)",
    ),
    ("p-macro-ip4-valid", "%{p} in exp= is empty"),
    ("p-macro-ip6-valid", "%{p} in exp= is empty"),
    ("p-macro-ip4-novalid", "%{p} in exp= is empty"),
    ("p-macro-ip6-novalid", "%{p} in exp= is empty"),
    // Explanations (exp=), which only change the text of a fail.
    (
        "exp-multiple-txt",
        "exp= with several TXT records: the first is used instead of none",
    ),
    (
        "two-exp-records",
        "two exp= records: the first is used instead of none",
    ),
    (
        "non-ascii-exp",
        "a non-ASCII explanation is used instead of the default",
    ),
    (
        "domain-name-truncation",
        "%{d1r}-style truncation in exp= differs",
    ),
    (
        "nolocalpart",
        "%{l} of a sender without local part is not postmaster",
    ),
    ("upper-macro", "%{R} (upper case: URL-escaped) not escaped"),
    ("v-macro-ip6", "%{i} of IPv6 in exp= not in dotted nibbles"),
];

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(s) => s.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        other => panic!("expected strings, got {other:?}"),
    }
}

/// A scenario's zonedata as the reference driver (pyspf's testspf.py)
/// serves it: SPF (type 99) records are served as TXT unless the name has
/// TXT records of its own; `TXT: NONE` means a name without TXT; a bare
/// `TIMEOUT` means queries for what the name lacks are never answered.
fn records(zonedata: &Value) -> Records {
    let mut records = Records::new();
    for (owner, list) in zonedata.as_mapping().unwrap() {
        let owner = owner.as_str().unwrap();
        records.exists(owner);
        let list = list.as_sequence().unwrap();
        let has_txt = list.iter().any(|r| r.get("TXT").is_some());
        for r in list {
            if r.as_str() == Some("TIMEOUT") {
                records.timeout(owner);
                continue;
            }
            let (kind, value) = r.as_mapping().unwrap().iter().next().unwrap();
            let kind = kind.as_str().unwrap();
            let rdata = match kind {
                "A" => RData::A(A(value.as_str().unwrap().parse::<Ipv4Addr>().unwrap())),
                "AAAA" => RData::AAAA(AAAA(value.as_str().unwrap().parse::<Ipv6Addr>().unwrap())),
                "PTR" => RData::PTR(PTR(name(value.as_str().unwrap()))),
                "CNAME" => RData::CNAME(CNAME(name(value.as_str().unwrap()))),
                "MX" => {
                    let mx = value.as_sequence().unwrap();
                    RData::MX(MX::new(
                        mx[0].as_u64().unwrap() as u16,
                        name(mx[1].as_str().unwrap()),
                    ))
                }
                "TXT" | "SPF" => {
                    let parts = strings(value);
                    if parts == ["NONE"] || (kind == "SPF" && has_txt) {
                        continue;
                    }
                    // `[]` (no strings) cannot be sent: one empty string.
                    let parts = if parts.is_empty() {
                        vec![String::new()]
                    } else {
                        parts
                    };
                    txt_strings(parts.iter().map(|s| s.as_bytes()).collect())
                }
                other => panic!("record type {other} in the suite"),
            };
            records.add(owner, rdata);
        }
    }
    records
}

#[test]
fn the_openspf_rfc_7208_suite() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/rfc7208-tests.yml"
    ))
    .unwrap();
    let dns = TestDns::serve(Records::new());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut passed = 0;
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut total = 0;
    for doc in serde_norway::Deserializer::from_str(&text) {
        let scenario = Value::deserialize(doc).unwrap();
        if scenario.is_null() {
            continue;
        }
        dns.set(records(&scenario["zonedata"]));
        // A resolver per scenario: its cache must not carry answers over.
        let auth = weir::auth::Authenticator::new(
            dns.resolver(Duration::from_millis(250)),
            "receiver.test",
        );
        for (test, t) in scenario["tests"].as_mapping().unwrap() {
            total += 1;
            let test = test.as_str().unwrap();
            let helo = t["helo"].as_str().unwrap();
            let sender = t["mailfrom"].as_str().unwrap();
            let ip: IpAddr = t["host"].as_str().unwrap().parse().unwrap();
            let identity = if sender.is_empty() {
                Identity::Helo
            } else {
                Identity::MailFrom(sender)
            };
            let check = runtime.block_on(auth.spf(ip, helo, identity));
            let got = check.outcome.as_str();
            let want = strings(&t["result"]);
            let mut problem = None;
            if !want.iter().any(|w| w == got) {
                problem = Some(format!("got {got}, want {want:?}"));
            } else if got == "fail"
                && let Some(exp) = t.get("explanation").and_then(Value::as_str)
            {
                let got_exp = check.explanation.as_deref().unwrap_or("DEFAULT");
                if got_exp != exp {
                    problem = Some(format!("explanation {got_exp:?}, want {exp:?}"));
                }
            }
            match problem {
                None => passed += 1,
                Some(p) => {
                    failed.insert(test.to_string(), p);
                }
            }
        }
    }
    println!("openspf RFC 7208 suite: {passed} of {total} pass");
    let unexpected: Vec<String> = failed
        .iter()
        .filter(|(name, _)| !KNOWN.iter().any(|(k, _)| k == name))
        .map(|(n, p)| format!("{n}: {p}"))
        .collect();
    let now_passing: Vec<&str> = KNOWN
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !failed.contains_key(*k))
        .collect();
    assert_eq!(total, 203, "the suite has 203 tests");
    assert!(
        unexpected.is_empty() && now_passing.is_empty(),
        "{} unexpected failures:\n{}\nknown deviations that now pass (remove them from KNOWN): {now_passing:?}",
        unexpected.len(),
        unexpected.join("\n")
    );
    assert_eq!(passed, total - KNOWN.len());
}
