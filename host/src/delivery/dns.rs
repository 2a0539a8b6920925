//! Finding the hosts to connect to: MX records in preference order (RFC
//! 5321 5.1) with the A/AAAA fallback for a domain without MX, the null MX
//! of RFC 7505, and smart host lists.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use rand::seq::SliceRandom;

use crate::config::DnsConfig;

/// One host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name (for TLS verification and logs).
    pub host: String,
    /// Where to connect.
    pub addr: SocketAddr,
}

/// Why no host could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The domain does not take mail (NXDOMAIN, null MX): bounce.
    Permanent(String),
    /// DNS failed for now: retry later.
    Temporary(String),
}

/// Builds the resolver: the configured name servers, or the system's.
pub fn resolver(config: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if config.nameservers.is_empty() {
        Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
    } else {
        let mut rc = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
        for ns in &config.nameservers {
            let mut udp = ConnectionConfig::udp();
            udp.port = ns.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = ns.port();
            rc.add_name_server(NameServerConfig::new(ns.ip(), true, vec![udp, tcp]));
        }
        Resolver::builder_with_config(rc, TokioRuntimeProvider::default())
    };
    let opts = builder.options_mut();
    if let Some(t) = config.timeout {
        opts.timeout = t;
    } else {
        opts.timeout = Duration::from_secs(5);
    }
    opts.attempts = 2;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

/// The hosts of `domain`'s MX records, best preference first (equal
/// preferences shuffled), each with its addresses.
pub async fn mx_targets(
    resolver: &TokioResolver,
    domain: &str,
    port: u16,
) -> Result<Vec<Target>, ResolveError> {
    // An address literal: [192.0.2.1] or [IPv6:2001:db8::1].
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let ip: IpAddr = literal
            .strip_prefix("IPv6:")
            .unwrap_or(literal)
            .parse()
            .map_err(|_| ResolveError::Permanent(format!("5.1.2 bad address literal {domain}")))?;
        return Ok(vec![Target {
            host: ip.to_string(),
            addr: SocketAddr::new(ip, port),
        }]);
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let hosts: Vec<String> = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(lookup) => {
            let mut mx: Vec<(u16, String)> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect();
            if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) {
                return Err(ResolveError::Permanent(format!(
                    "5.1.10 Domain {domain} does not accept mail (null MX, RFC 7505)"
                )));
            }
            // Shuffle first, then a stable sort keeps equal preferences shuffled.
            mx.shuffle(&mut rand::rng());
            mx.sort_by_key(|(pref, _)| *pref);
            mx.into_iter().map(|(_, h)| h).collect()
        }
        Err(e) if e.is_nx_domain() => {
            return Err(ResolveError::Permanent(format!(
                "5.1.2 Domain {domain} not found (NXDOMAIN)"
            )));
        }
        // No MX: the domain itself is the mail host (RFC 5321 5.1).
        Err(e) if e.is_no_records_found() => vec![fqdn.clone()],
        Err(e) => {
            return Err(ResolveError::Temporary(format!(
                "4.4.3 DNS lookup of MX for {domain} failed: {e}"
            )));
        }
    };
    let mut targets = Vec::new();
    let mut last_error = None;
    for host in hosts {
        match resolver.lookup_ip(host.as_str()).await {
            Ok(ips) => targets.extend(ips.iter().map(|ip| Target {
                host: host.trim_end_matches('.').to_string(),
                addr: SocketAddr::new(ip, port),
            })),
            Err(e) => last_error = Some(format!("{host}: {e}")),
        }
    }
    if targets.is_empty() {
        return Err(ResolveError::Temporary(format!(
            "4.4.4 No address for the mail hosts of {domain}: {}",
            last_error.unwrap_or_else(|| "no records".into())
        )));
    }
    Ok(targets)
}

/// The addresses of a smart host list (`host:port` or `host`), in order.
pub async fn host_targets(
    resolver: &TokioResolver,
    hosts: &[String],
    default_port: u16,
) -> Result<Vec<Target>, ResolveError> {
    let mut targets = Vec::new();
    let mut last_error = None;
    for entry in hosts {
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            targets.push(Target {
                host: addr.ip().to_string(),
                addr,
            });
            continue;
        }
        let (host, port) = match entry.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().expect("checked")),
            _ => (entry.as_str(), default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            targets.push(Target {
                host: ip.to_string(),
                addr: SocketAddr::new(ip, port),
            });
            continue;
        }
        match resolver.lookup_ip(host).await {
            Ok(ips) => targets.extend(ips.iter().map(|ip| Target {
                host: host.to_string(),
                addr: SocketAddr::new(ip, port),
            })),
            Err(e) => last_error = Some(format!("{host}: {e}")),
        }
    }
    if targets.is_empty() {
        return Err(ResolveError::Temporary(format!(
            "4.4.4 No address for relay host: {}",
            last_error.unwrap_or_else(|| "no hosts".into())
        )));
    }
    Ok(targets)
}
