//! An example of the message hooks and the `state` import, from the
//! plugin's config (`NAME.toml`; the plugin receives it as JSON):
//!
//! ```toml
//! header = "X-Filtered: weir"            # data: add this header field
//! strip_extensions = ["exe", "scr"]      # data: replace such attachments by a note
//! max_messages_per_sender = 100          # mail-from: over this, 451 4.7.1 ...
//! window_secs = 3600                     # ... within this window (state counter)
//!
//! [[reroute]]                            # pre-delivery: mail for this domain
//! domain = "partner.example"             # goes through this [[route]]
//! route = "partner"
//! ```
//!
//! Grants it needs: `modify` (header, attachments, reroute) and `state`
//! (the sender counter). It reads the MIME tree's metadata only, so it
//! needs no `body` grant.

use std::sync::OnceLock;

use serde::Deserialize;
use weir_plugin_sdk::{
    Decision, Hook, Message, Mutation, Plugin, Reply, Verdict, config, export_plugin, log, state,
    transaction,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Filter {
    header: Option<String>,
    strip_extensions: Vec<String>,
    max_messages_per_sender: u64,
    window_secs: u32,
    reroute: Vec<Reroute>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            header: None,
            strip_extensions: Vec::new(),
            max_messages_per_sender: 0,
            window_secs: 3600,
            reroute: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reroute {
    domain: String,
    route: String,
}

static FILTER: OnceLock<Filter> = OnceLock::new();

fn parse(text: &str) -> Result<Filter, String> {
    let f: Filter = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(h) = &f.header
        && !h.contains(':')
    {
        return Err(format!("header {h:?} is not \"Name: value\""));
    }
    Ok(f)
}

fn filter() -> &'static Filter {
    FILTER.get_or_init(|| parse(&config::get()).unwrap_or_default())
}

struct ExampleFilter;

impl Plugin for ExampleFilter {
    const HOOKS: &'static [Hook] = &[Hook::MailFrom, Hook::Data, Hook::PreDelivery];

    fn init(text: &str) -> Result<(), String> {
        let _ = FILTER.set(parse(text)?);
        Ok(())
    }

    fn on_mail_from(sender: String) -> Verdict {
        let f = filter();
        if f.max_messages_per_sender == 0 {
            return Verdict::Continue;
        }
        let sender = sender.to_lowercase();
        // One counter per sender, shared by every connection (and, with a
        // Redis backend, by every gateway).
        match state::incr(&format!("sender:{sender}"), 1, f.window_secs) {
            Ok(n) if n > f.max_messages_per_sender => Reply::tempfail(
                451,
                "4.7.1",
                &format!("Too many messages from {sender}; try again later"),
            ),
            Ok(_) => Verdict::Continue,
            Err(e) => {
                // No state (not granted, or unavailable): fail open.
                log::log(log::Level::Warn, &format!("state unavailable: {e:?}"));
                Verdict::Continue
            }
        }
    }

    fn on_data(msg: &Message) -> Decision {
        let f = filter();
        let mut changes = Vec::new();
        if let Some((name, value)) = f.header.as_deref().and_then(|h| h.split_once(':')) {
            changes.push(Mutation::add_header(name.trim(), value.trim()));
        }
        if !f.strip_extensions.is_empty() {
            for part in msg.parts() {
                let Some(name) = part.filename.as_deref() else {
                    continue;
                };
                let ext = name.rsplit('.').next().unwrap_or("").to_lowercase();
                if f.strip_extensions
                    .iter()
                    .any(|e| e.eq_ignore_ascii_case(&ext))
                {
                    log::log(log::Level::Info, &format!("stripping attachment {name}"));
                    changes.push(Mutation::Tag("stripped-attachment".into()));
                    changes.push(Mutation::AddScore(1.0));
                    changes.push(Mutation::replace_part_with_text(
                        part.id,
                        &format!("The attachment {name} was removed by policy.\n"),
                    ));
                }
            }
        }
        Decision::changes(changes)
    }

    fn on_pre_delivery(_destination: String, _msg: &Message) -> Decision {
        let f = filter();
        let domain = transaction::recipients()
            .first()
            .and_then(|r| r.rsplit_once('@'))
            .map(|(_, d)| d.to_lowercase())
            .unwrap_or_default();
        match f
            .reroute
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(&domain))
        {
            Some(r) => Decision::changes(vec![Mutation::SetRoute(r.route.clone())]),
            None => Decision::from(Verdict::Continue),
        }
    }
}

export_plugin!(ExampleFilter);

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_is_checked() {
        let f = super::parse(r#"{"header": "X-A: b", "reroute": [{"domain": "d", "route": "r"}]}"#)
            .unwrap();
        assert_eq!(f.reroute[0].route, "r");
        assert!(super::parse(r#"{"header": "no colon"}"#).is_err());
        assert!(super::parse(r#"{"bogus": 1}"#).is_err());
    }
}
