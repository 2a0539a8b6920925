//! DNS lists: the client's address looked up in address lists (DNSBL,
//! `4.3.2.1.zone` for 1.2.3.4, nibbles for IPv6) and names in domain lists
//! (RHSBL/DBL, `example.com.zone`). An answer counts when it is one of the
//! list's codes; anything else (no answer, a timeout, an answer that is no
//! listing code, such as a list's "refused" code or a hijacked zone's
//! wildcard) does not, and the odd ones are logged.

use std::net::{IpAddr, Ipv4Addr};

use weir_plugin_sdk::{dns, log};

use crate::settings::List;

/// What one lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// Listed, with the code that says so.
    Listed(Ipv4Addr),
    /// Not listed (or not counted: see the log).
    Clean,
}

/// The name to look up for `ip` in `zone`.
pub fn address_query(ip: IpAddr, zone: &str) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name.push_str(zone);
            name
        }
    }
}

/// Looks `query` up in `list`: the first answer that is a listing code.
pub fn lookup(list: &List, query: &str) -> Found {
    let answers = match dns::lookup_a(query) {
        Ok(a) => a,
        Err(dns::DnsError::NotFound) => return Found::Clean,
        Err(dns::DnsError::Temporary(why)) => {
            log::log(
                log::Level::Warn,
                &format!(
                    "{} ({}): lookup of {query} failed for now ({why}); not counted",
                    list.name, list.zone
                ),
            );
            return Found::Clean;
        }
        Err(dns::DnsError::Denied) => {
            log::log(
                log::Level::Warn,
                &format!(
                    "{} ({}): no `dns` grant; lists are not checked",
                    list.name, list.zone
                ),
            );
            return Found::Clean;
        }
    };
    let mut odd = Vec::new();
    for answer in &answers {
        match answer.parse::<Ipv4Addr>() {
            Ok(a) if list.codes.iter().any(|c| c.contains(a)) => return Found::Listed(a),
            _ => odd.push(answer.as_str()),
        }
    }
    if !odd.is_empty() {
        let why = if odd.iter().any(|a| a.starts_with("127.255.255.")) {
            "the list's error code (queries refused, e.g. through a public resolver, or over quota)"
        } else {
            "no listing code (a wildcard, or a zone that is not a list)"
        };
        log::log(
            log::Level::Warn,
            &format!(
                "{} ({}): {query} answered {}: {why}; not counted",
                list.name,
                list.zone,
                odd.join(", ")
            ),
        );
    }
    Found::Clean
}

/// The lists among `lists` that have the client's address.
pub fn client_hits(lists: &[List], ip: IpAddr) -> Vec<(&List, Ipv4Addr)> {
    lists
        .iter()
        .filter_map(|l| match lookup(l, &address_query(ip, &l.zone)) {
            Found::Listed(code) => Some((l, code)),
            Found::Clean => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_reverse_the_address() {
        assert_eq!(
            address_query("192.0.2.99".parse().unwrap(), "bl.test"),
            "99.2.0.192.bl.test"
        );
        let q = address_query("2001:db8::1".parse().unwrap(), "bl.test");
        assert!(q.starts_with("1.0.0.0.0.0.0.0."), "{q}");
        assert!(q.ends_with("8.b.d.0.1.0.0.2.bl.test"), "{q}");
        assert_eq!(q.split('.').count(), 32 + 2);
    }
}
