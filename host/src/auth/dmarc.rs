//! DMARC's `pct` (RFC 7489 6.6.4), which mail-auth 0.13 does not read (it
//! follows DMARCbis, which replaced `pct` with `t`): the policy applies to
//! that percentage of failing messages, the next lower one to the rest.

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;

/// A DMARC disposition, from the weakest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Policy {
    /// Monitor only.
    None,
    /// Treat as suspicious.
    Quarantine,
    /// Refuse.
    Reject,
}

impl Policy {
    /// The policy's name as the record and Authentication-Results write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Quarantine => "quarantine",
            Policy::Reject => "reject",
        }
    }

    /// The policy for a message that `pct` does not select: one step down.
    pub fn lower(self) -> Policy {
        match self {
            Policy::Reject => Policy::Quarantine,
            _ => Policy::None,
        }
    }
}

/// The `pct` of the DMARC record that governs `domain`, chosen as
/// mail-auth 0.13 chooses the record whose policy it applies (RFC 9989
/// 4.10): the domain's own record; else, walking up to the top-level
/// domain, the first record tagged `psd=n` or `psd=y`, or the last one
/// found (the organizational domain's). Answered from the resolver's
/// cache, which the policy lookup just filled. 100 when no record says
/// otherwise or the value is not a number from 0 to 100.
pub async fn pct(resolver: &TokioResolver, domain: &str) -> u8 {
    let domain = domain.trim_end_matches('.');
    if let Some(record) = record_at(resolver, domain).await {
        return parse_pct(&record);
    }
    let mut chosen = None;
    let mut name = domain;
    while let Some((_, parent)) = name.split_once('.') {
        name = parent;
        if let Some(record) = record_at(resolver, name).await {
            let psd = tag(&record, "psd").is_some_and(|v| v == "y" || v == "n");
            chosen = Some(record);
            if psd {
                break;
            }
        }
    }
    chosen.map_or(100, |r| parse_pct(&r))
}

/// The value of tag `name` in a DMARC record, lower case.
fn tag(record: &str, name: &str) -> Option<String> {
    record
        .split(';')
        .filter_map(|tag| tag.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_ascii_lowercase())
}

async fn record_at(resolver: &TokioResolver, domain: &str) -> Option<String> {
    let lookup = resolver
        .txt_lookup(format!("_dmarc.{domain}."))
        .await
        .ok()?;
    lookup.answers().iter().find_map(|r| match &r.data {
        RData::TXT(t) => {
            let text: String = t
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s))
                .collect();
            text.trim_start()
                .get(..8)
                .is_some_and(|v| v.eq_ignore_ascii_case("v=DMARC1"))
                .then_some(text)
        }
        _ => None,
    })
}

/// The `pct=` tag of a record's text (RFC 7489 6.3).
pub fn parse_pct(record: &str) -> u8 {
    tag(record, "pct")
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|p| *p <= 100)
        .unwrap_or(100)
}

/// The policy to apply to one failing message: `policy` if `roll` (a
/// number from 0 to 99 drawn for the message) falls under `pct`, else the
/// next lower.
pub fn sample(policy: Policy, pct: u8, roll: u8) -> Policy {
    if roll < pct { policy } else { policy.lower() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_selects_the_policy_or_the_next_lower() {
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=20"), 20);
        assert_eq!(parse_pct("v=DMARC1; p=reject; PCT = 0 "), 0);
        assert_eq!(parse_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=101"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=x"), 100);
        assert_eq!(sample(Policy::Reject, 100, 99), Policy::Reject);
        assert_eq!(sample(Policy::Reject, 0, 0), Policy::Quarantine);
        assert_eq!(sample(Policy::Quarantine, 50, 50), Policy::None);
        assert_eq!(sample(Policy::Quarantine, 50, 49), Policy::Quarantine);
        assert_eq!(sample(Policy::None, 0, 0), Policy::None);
    }
}
