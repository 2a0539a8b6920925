//! Greylisting: the first attempt of a (client network, sender, recipient)
//! triplet is deferred with 451 4.7.1; a retry after `delay` (and within
//! `expiry` of the first) passes, and the triplet is then let through for
//! `allow_for`, renewed on every pass. A network whose triplets have passed
//! `auto_allow_after` times is let through whole (postgrey's
//! auto-whitelisting of clients). Real MTAs retry; most spam tools do not.
//!
//! Kept in `state`, so with Redis a pass on one gateway is honoured by
//! every other. When the state cannot be reached the mail is let through
//! (greylisting fails open) and the log says so.

use std::net::IpAddr;

use ipnet::IpNet;
use weir_plugin_sdk::{Reply, Verdict, log, state};

use crate::settings::Greylist;

fn ttl(d: std::time::Duration) -> u32 {
    d.as_secs().clamp(1, u64::from(u32::MAX)) as u32
}

/// The network a client is greylisted as.
pub fn network(g: &Greylist, ip: IpAddr) -> String {
    let prefix = if ip.is_ipv4() {
        g.ipv4_prefix
    } else {
        g.ipv6_prefix
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc().to_string())
        .unwrap_or_else(|_| ip.to_string())
}

/// The verdict for one recipient.
pub fn check(g: &Greylist, ip: IpAddr, sender: &str, recipient: &str) -> Verdict {
    match decide(g, ip, sender, recipient) {
        Ok(verdict) => verdict,
        Err(e) => {
            let why = match e {
                state::StateError::Denied => "no `state` grant".to_string(),
                state::StateError::Unavailable(w) => w,
            };
            log::log(
                log::Level::Warn,
                &format!("greylisting skipped ({why}): mail let through (greylisting fails open)"),
            );
            Verdict::Continue
        }
    }
}

fn decide(
    g: &Greylist,
    ip: IpAddr,
    sender: &str,
    recipient: &str,
) -> Result<Verdict, state::StateError> {
    let net = network(g, ip);
    if g.auto_allow_after > 0 && state::get(&format!("grey:client:{net}"))?.is_some() {
        return Ok(Verdict::Continue);
    }
    let sender = if sender.is_empty() {
        "<>".to_string()
    } else {
        sender.to_ascii_lowercase()
    };
    let triplet = format!("{net}/{sender}/{}", recipient.to_ascii_lowercase());
    let pass = format!("grey:pass:{triplet}");
    if state::get(&pass)?.is_some() {
        state::set(&pass, b"1", ttl(g.allow_for))?;
        return Ok(Verdict::Continue);
    }
    let seen = format!("grey:seen:{triplet}");
    let wait = format!("grey:wait:{triplet}");
    if state::get(&seen)?.is_none() {
        // The wait first: whoever sees `seen` (on any gateway) sees the
        // wait too, until the delay has passed.
        state::set_if_absent(&wait, b"1", ttl(g.delay))?;
        state::set(&seen, b"1", ttl(g.expiry))?;
        log::log(
            log::Level::Info,
            &format!("greylisted {triplet} (first attempt)"),
        );
        return Ok(deferred(g));
    }
    if state::get(&wait)?.is_some() {
        log::log(
            log::Level::Info,
            &format!("greylisted {triplet} (retried too soon)"),
        );
        return Ok(deferred(g));
    }
    state::set(&pass, b"1", ttl(g.allow_for))?;
    log::log(log::Level::Info, &format!("greylisting passed {triplet}"));
    if g.auto_allow_after > 0 {
        let passes = state::incr(&format!("grey:passes:{net}"), 1, ttl(g.allow_for))?;
        if passes >= g.auto_allow_after {
            state::set(&format!("grey:client:{net}"), b"1", ttl(g.allow_for))?;
            log::log(
                log::Level::Info,
                &format!("{net} passed {passes} times: let through from now on"),
            );
        }
    }
    Ok(Verdict::Continue)
}

fn deferred(g: &Greylist) -> Verdict {
    Reply::tempfail(
        451,
        "4.7.1",
        &format!(
            "Greylisted: please try again in {} seconds",
            g.delay.as_secs().max(1)
        ),
    )
}
