//! What the EHLO/HELO name says about the client (RFC 5321 4.1.4: a domain
//! or an address literal): a name that is neither, an address literal that
//! is not the client's, a name only this gateway may use, a name with no
//! address in the DNS.

use std::net::IpAddr;

/// What is wrong with a HELO name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// Neither a domain with a dot nor an address literal (`localhost`,
    /// `WIN-7GH2`, a bare `192.0.2.1`).
    Invalid,
    /// An address literal that is not the client's address.
    IpMismatch,
    /// One of our own names (`local_names`).
    Forged,
}

/// The findings for `helo` from `client`.
pub fn check(helo: &str, client: Option<IpAddr>, local_names: &[String]) -> Vec<Finding> {
    let name = helo.trim_end_matches('.').to_ascii_lowercase();
    let mut out = Vec::new();
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        let literal = literal.strip_prefix("ipv6:").unwrap_or(literal);
        match literal.parse::<IpAddr>() {
            Ok(ip) => {
                if client.is_some_and(|c| c != ip) {
                    out.push(Finding::IpMismatch);
                }
            }
            Err(_) => out.push(Finding::Invalid),
        }
        return out;
    }
    if !is_domain(&name) {
        out.push(Finding::Invalid);
    }
    if local_names.contains(&name) {
        out.push(Finding::Forged);
    }
    out
}

/// A domain of at least two labels of letters, digits and hyphens, not all
/// digits at the top (so a bare address is not one).
fn is_domain(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() >= 2
        && name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        && !labels
            .last()
            .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helo_names_are_judged_as_rfc_5321_has_them() {
        let ip: Option<IpAddr> = Some("192.0.2.1".parse().unwrap());
        let local = vec!["mx.example.org".to_string()];
        assert!(check("mail.example.net", ip, &local).is_empty());
        assert!(check("[192.0.2.1]", ip, &local).is_empty());
        assert_eq!(check("[192.0.2.2]", ip, &local), [Finding::IpMismatch]);
        assert_eq!(check("192.0.2.1", ip, &local), [Finding::Invalid]);
        assert_eq!(check("localhost", ip, &local), [Finding::Invalid]);
        assert_eq!(check("[nonsense]", ip, &local), [Finding::Invalid]);
        assert_eq!(check("MX.Example.org.", ip, &local), [Finding::Forged]);
        assert_eq!(check("under_score.example", ip, &local), []);
        let v6: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        assert!(check("[IPv6:2001:db8::1]", v6, &local).is_empty());
    }
}
