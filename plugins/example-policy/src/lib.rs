//! An example of policy at the early hooks, from the plugin's config
//! (`NAME.toml`; the plugin receives it as JSON):
//!
//! ```toml
//! drop_clients = ["192.0.2.7"]          # connect: 554 5.7.1, then close
//! bad_helo = ["localhost", "friend"]    # HELO/EHLO: 550 5.7.1
//! later_senders = ["slow@example.org"]  # MAIL FROM: 451 4.7.1 (try later)
//! helo_must_resolve = true              # HELO/EHLO: 550 5.7.1 if the name has no A record
//! ```
//!
//! `helo_must_resolve` needs the `dns` grant; without it (or when DNS
//! fails for now) the check is skipped and logged.

use std::sync::OnceLock;

use serde::Deserialize;
use weir_plugin_sdk::{Hook, Plugin, Reply, Verdict, config, dns, export_plugin, log, transaction};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Policy {
    drop_clients: Vec<String>,
    bad_helo: Vec<String>,
    later_senders: Vec<String>,
    helo_must_resolve: bool,
}

static POLICY: OnceLock<Policy> = OnceLock::new();

fn parse(text: &str) -> Result<Policy, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn policy() -> &'static Policy {
    POLICY.get_or_init(|| parse(&config::get()).unwrap_or_default())
}

struct ExamplePolicy;

impl Plugin for ExamplePolicy {
    const HOOKS: &'static [Hook] = &[Hook::Connect, Hook::Helo, Hook::MailFrom];

    fn init(text: &str) -> Result<(), String> {
        let policy = parse(text)?;
        let _ = POLICY.set(policy);
        Ok(())
    }

    fn on_connect() -> Verdict {
        let client = transaction::client_ip();
        if policy().drop_clients.contains(&client) {
            log::log(log::Level::Info, &format!("dropping {client}"));
            return Reply::disconnect(554, "5.7.1", "Your address is not welcome here");
        }
        Verdict::Continue
    }

    fn on_helo(name: String) -> Verdict {
        let helo = name.to_ascii_lowercase();
        if policy()
            .bad_helo
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&helo))
        {
            return Reply::reject(
                550,
                "5.7.1",
                &format!("HELO {helo} is not a name you can have"),
            );
        }
        if policy().helo_must_resolve && !helo.starts_with('[') {
            match dns::lookup_a(&helo) {
                Err(dns::DnsError::NotFound) => {
                    return Reply::reject(
                        550,
                        "5.7.1",
                        &format!("HELO {helo} has no address in the DNS"),
                    );
                }
                Err(e) => log::log(log::Level::Warn, &format!("HELO check skipped: {e:?}")),
                Ok(_) => {}
            }
        }
        Verdict::Continue
    }

    fn on_mail_from(sender: String) -> Verdict {
        let sender = sender.to_ascii_lowercase();
        if policy()
            .later_senders
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&sender))
        {
            return Reply::tempfail(451, "4.7.1", "Not now, try again later");
        }
        Verdict::Continue
    }
}

export_plugin!(ExamplePolicy);

#[cfg(test)]
mod tests {
    #[test]
    fn the_policy_is_read_and_unknown_keys_are_refused() {
        let p = super::parse(r#"{"bad_helo": ["friend"]}"#).unwrap();
        assert_eq!(p.bad_helo, ["friend"]);
        assert!(super::parse(r#"{"bad_hello": []}"#).is_err());
        assert!(super::parse("{}").unwrap().bad_helo.is_empty());
    }
}
