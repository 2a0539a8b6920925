//! The configuration (`attachments.toml`, handed over as JSON), checked
//! once per instance at `init`.

use std::time::Duration;

use serde::Deserialize;

use crate::detect::Kind;

/// What happens to a message with a blocked attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// 550 5.7.1 naming the file.
    Reject,
    /// Replace the attachment by a text note; deliver the rest.
    Strip,
    /// Keep the message in the quarantine.
    Quarantine,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ArchivesFile {
    inspect: bool,
    max_depth: u32,
    max_entries: u64,
    max_expanded_size: serde_json::Value,
    max_scan_time: String,
    encrypted: String,
}

impl Default for ArchivesFile {
    fn default() -> Self {
        ArchivesFile {
            inspect: true,
            max_depth: 3,
            max_entries: 1000,
            max_expanded_size: serde_json::Value::String("200 MiB".into()),
            max_scan_time: "500ms".into(),
            encrypted: "block".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct File {
    action: Action,
    note: String,
    blocked_extensions: Option<Vec<String>>,
    block_double_extensions: bool,
    blocked_names: Vec<String>,
    blocked_types: Vec<String>,
    blocked_content: Option<Vec<String>>,
    archives: ArchivesFile,
}

impl Default for File {
    fn default() -> Self {
        File {
            action: Action::Reject,
            note: "The attachment {name} was removed: {reason}.".into(),
            blocked_extensions: None,
            block_double_extensions: true,
            blocked_names: Vec::new(),
            blocked_types: Vec::new(),
            blocked_content: None,
            archives: ArchivesFile::default(),
        }
    }
}

/// Programs and scripts Windows runs when they are opened (what
/// Exchange's common attachment filter blocks).
const EXECUTABLES: &[&str] = &[
    "ade", "adp", "app", "appx", "bas", "bat", "chm", "cmd", "com", "cpl", "dll", "exe", "hta",
    "img", "inf", "ins", "iso", "isp", "jar", "jnlp", "js", "jse", "lnk", "mde", "msc", "msi",
    "msix", "msp", "mst", "pif", "ps1", "reg", "scf", "scr", "sct", "shb", "sys", "vb", "vbe",
    "vbs", "vhd", "vhdx", "wsc", "wsf", "wsh", "xll",
];

/// Archives, and what they may hold.
#[derive(Debug)]
pub struct Archives {
    pub inspect: bool,
    pub max_depth: u32,
    pub max_entries: u64,
    pub max_expanded: u64,
    pub max_time: Duration,
    pub block_encrypted: bool,
}

/// Everything, checked.
#[derive(Debug)]
pub struct Settings {
    pub action: Action,
    pub note: String,
    pub extensions: Vec<String>,
    pub double_extensions: bool,
    pub names: Vec<String>,
    pub types: Vec<String>,
    pub content: Vec<Kind>,
    pub archives: Archives,
}

/// A size: a number of octets, or a string such as `"200 MiB"`.
pub fn size(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a size")),
        serde_json::Value::String(s) => weir_plugin_sdk::size::parse_size(s),
        _ => Err("a size is a number of octets or a string such as \"100 MiB\"".into()),
    }
}

pub fn parse(text: &str) -> Result<Settings, String> {
    let f: File = serde_json::from_str(text).map_err(|e| format!("attachments: {e}"))?;
    let lower = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim().trim_start_matches('.').to_lowercase())
            .collect()
    };
    let extensions = match &f.blocked_extensions {
        Some(list) => lower(list),
        None => EXECUTABLES.iter().map(|s| s.to_string()).collect(),
    };
    let content = match &f.blocked_content {
        Some(list) => {
            let mut kinds = Vec::new();
            for name in list {
                kinds.extend(Kind::parse(name).ok_or_else(|| {
                    format!("attachments: blocked_content: {name:?} is none of executable, windows-executable, elf, mach-o, java-class, script, ole, zip, archive, pdf")
                })?);
            }
            kinds
        }
        None => Kind::parse("executable").expect("a known name"),
    };
    let a = &f.archives;
    let encrypted = match a.encrypted.as_str() {
        "block" => true,
        "allow" => false,
        other => {
            return Err(format!(
                "attachments: archives.encrypted {other:?}: block or allow"
            ));
        }
    };
    let archives = Archives {
        inspect: a.inspect,
        max_depth: a.max_depth,
        max_entries: a.max_entries,
        max_expanded: size(&a.max_expanded_size)
            .map_err(|e| format!("attachments: archives.max_expanded_size: {e}"))?,
        max_time: weir_plugin_sdk::time::parse_duration(&a.max_scan_time)
            .map_err(|e| format!("attachments: archives.max_scan_time: {e}"))?,
        block_encrypted: encrypted,
    };
    if archives.max_entries == 0 || archives.max_expanded == 0 || archives.max_time.is_zero() {
        return Err("attachments: archives limits must be above zero".into());
    }
    Ok(Settings {
        action: f.action,
        note: f.note,
        extensions,
        double_extensions: f.block_double_extensions,
        names: lower(&f.blocked_names),
        types: lower(&f.blocked_types),
        content,
        archives,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_have_safe_defaults_and_refuse_nonsense() {
        let s = parse("{}").unwrap();
        assert_eq!(s.action, Action::Reject);
        assert!(s.extensions.iter().any(|e| e == "exe"));
        assert_eq!(s.archives.max_expanded, 200 << 20);
        assert_eq!(s.content.len(), 4);
        let s =
            parse(r#"{"blocked_extensions": [".EXE"], "archives": {"max_expanded_size": "50MB"}}"#)
                .unwrap();
        assert_eq!(s.extensions, ["exe"]);
        assert_eq!(s.archives.max_expanded, 50_000_000);
        for (bad, says) in [
            (r#"{"action": "burn"}"#, "unknown variant"),
            (r#"{"blocked_content": ["virus"]}"#, "blocked_content"),
            (r#"{"archives": {"encrypted": "maybe"}}"#, "encrypted"),
            (
                r#"{"archives": {"max_expanded_size": "lots"}}"#,
                "max_expanded_size",
            ),
            (r#"{"archives": {"max_entries": 0}}"#, "above zero"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
