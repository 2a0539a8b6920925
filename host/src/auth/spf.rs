//! SPF (RFC 7208) for one identity, on mail-auth's evaluator, with the
//! checks mail-auth leaves out done first:
//!
//! - a HELO or MAIL FROM domain that is not a fully qualified domain name
//!   (an address literal, an empty or over-long label, a single label) has
//!   no SPF policy: `none` (RFC 7208 4.3), not a DNS error;
//! - a domain that publishes more than one SPF record is a `permerror`
//!   (RFC 7208 4.5); mail-auth would take the first that parses.
//!
//! The rest of the openspf suite's findings are listed in
//! `tests/e2e/spf_suite.rs`.

use std::net::IpAddr;

use hickory_resolver::proto::rr::RData;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

use super::cache::Caches;
use super::results::Outcome;

/// Which identity is checked (RFC 7208 2.3 and 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity<'a> {
    /// The HELO/EHLO name.
    Helo,
    /// The MAIL FROM address; empty for the null reverse path, which is
    /// checked as `postmaster@` the HELO name.
    MailFrom(&'a str),
}

/// The result of one SPF check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfCheck {
    /// The result.
    pub outcome: Outcome,
    /// The domain whose policy was evaluated.
    pub domain: String,
    /// The domain's explanation (`exp=`), on `fail` only.
    pub explanation: Option<String>,
}

/// Evaluates SPF for `identity` of a client at `ip` that said `helo`;
/// `receiver` is our own name (`%{r}`).
pub async fn check(
    auth: &MessageAuthenticator,
    caches: &Caches,
    ip: IpAddr,
    helo: &str,
    receiver: &str,
    identity: Identity<'_>,
) -> SpfCheck {
    let domain = match identity {
        Identity::MailFrom(sender) if !sender.is_empty() => {
            sender.rsplit_once('@').map_or(sender, |(_, d)| d)
        }
        _ => helo,
    };
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let verdict = |outcome| SpfCheck {
        outcome,
        domain: domain.to_ascii_lowercase(),
        explanation: None,
    };
    if !is_fqdn(domain) {
        return verdict(Outcome::None);
    }
    if spf_records(auth, domain).await > 1 {
        tracing::info!(domain, "more than one SPF record: permerror (RFC 7208 4.5)");
        return verdict(Outcome::PermError);
    }
    let params = match identity {
        Identity::Helo => SpfParameters::verify_ehlo(ip, helo, receiver),
        Identity::MailFrom(sender) => SpfParameters::verify_mail_from(ip, helo, receiver, sender),
    };
    let out = auth.verify_spf(caches.with(params)).await;
    let outcome = match out.result() {
        SpfResult::Pass => Outcome::Pass,
        SpfResult::Fail => Outcome::Fail,
        SpfResult::SoftFail => Outcome::SoftFail,
        SpfResult::Neutral => Outcome::Neutral,
        SpfResult::TempError => Outcome::TempError,
        SpfResult::PermError => Outcome::PermError,
        SpfResult::None => Outcome::None,
    };
    if matches!(outcome, Outcome::TempError | Outcome::PermError) {
        tracing::info!(
            domain,
            result = outcome.as_str(),
            "SPF could not be evaluated"
        );
    }
    SpfCheck {
        outcome,
        domain: domain.to_ascii_lowercase(),
        explanation: out.explanation().map(str::to_string),
    }
}

/// Whether `domain` can have an SPF policy: a name of two or more labels,
/// each 1-63 octets, 253 in all, with a top label that is not numeric.
pub fn is_fqdn(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > 253 || domain.starts_with('[') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80)
        })
        && !labels
            .last()
            .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
}

/// How many SPF records (`v=spf1`, RFC 7208 4.5) `domain` publishes; 0
/// when the lookup fails, which mail-auth then reports.
async fn spf_records(auth: &MessageAuthenticator, domain: &str) -> usize {
    let Ok(lookup) = auth.0.txt_lookup(format!("{domain}.")).await else {
        return 0;
    };
    lookup
        .answers()
        .iter()
        .filter(|r| match &r.data {
            RData::TXT(t) => {
                let text: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                is_spf_record(&text)
            }
            _ => false,
        })
        .count()
}

fn is_spf_record(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_without_a_policy() {
        for bad in [
            "",
            "[192.0.2.1]",
            "localhost",
            "a..example.org",
            ".example.org",
            "example.123",
            &format!("{}.example.org", "a".repeat(64)),
        ] {
            assert!(!is_fqdn(bad), "{bad}");
        }
        for good in [
            "example.org",
            "mx-1.example.org",
            "_spf.example.org",
            "123.example.org",
        ] {
            assert!(is_fqdn(good), "{good}");
        }
        assert!(is_spf_record(b"v=spf1 -all"));
        assert!(is_spf_record(b"V=SPF1"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b"spf2.0/pra"));
    }
}
