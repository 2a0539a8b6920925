//! Refuses mail to the recipients listed in its configuration, at RCPT,
//! with 550 5.7.1. Configuration (`NAME.toml`, received as JSON):
//! `block = ["a@example.org", ...]`
//! (compared case-insensitively).
//!
//! The list is parsed once per instance, in `init` (every instance gets
//! `init` before it serves), and kept in the instance.

use std::sync::OnceLock;

use weir_plugin_sdk::{Hook, Plugin, Reply, Verdict, config, export_plugin};

struct BlockRecipients;

static BLOCKED: OnceLock<Vec<String>> = OnceLock::new();

impl Plugin for BlockRecipients {
    const HOOKS: &'static [Hook] = &[Hook::Rcpt];

    fn init(config: &str) -> Result<(), String> {
        let list = blocked(config)?;
        let _ = BLOCKED.set(list);
        Ok(())
    }

    fn on_rcpt(recipient: String) -> Verdict {
        let list = BLOCKED.get_or_init(|| blocked(&config::get()).unwrap_or_default());
        if list.contains(&recipient.to_ascii_lowercase()) {
            return Reply::reject(
                550,
                "5.7.1",
                &format!("<{recipient}>: recipient refused by policy"),
            );
        }
        Verdict::Continue
    }
}

/// The `block` list of a configuration, lower-cased.
pub fn blocked(config: &str) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        #[serde(default)]
        block: Vec<String>,
    }
    let config: Config = serde_json::from_str(config).map_err(|e| e.to_string())?;
    Ok(config
        .block
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect())
}

export_plugin!(BlockRecipients);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_list_is_read_from_the_config() {
        assert_eq!(
            blocked(r#"{"block": ["A@x.test", "b@y.test"]}"#).unwrap(),
            ["a@x.test", "b@y.test"]
        );
        assert!(blocked(r#"{"block": "nonsense"}"#).is_err());
        assert!(blocked("{}").unwrap().is_empty());
    }
}
