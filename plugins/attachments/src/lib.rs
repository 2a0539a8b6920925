//! attachments: blocks, strips or quarantines attachments by file name
//! (extension, a document extension hiding an executable one, names that
//! reorder themselves on screen, wildcard patterns), by declared type and
//! by the type their first bytes show (a renamed program is still a
//! program), and looks inside zip archives, nested ones too, with hard
//! caps on depth, entries, expanded size and time, so a zip bomb is a
//! finding and not an outage. Password-protected archives are blocked or
//! let through as configured.
//!
//! At `data` only. It reads the MIME tree the gateway parsed (`parts()`,
//! no grant) and, of each attachment, only what it must: its first 512
//! bytes, and for a zip archive its directory and entries, through
//! `part-range` (grant `body`). A blocked attachment means, by `action`:
//! `reject` (550 5.7.1 naming the file and why), `strip` (the part is
//! replaced by a text note, `note`, and the message delivered; grant
//! `modify`), or `quarantine`.
//!
//! Configuration: `plugins/attachments/attachments.toml` is a commented
//! example, `docs/attachments.md` the description of every key.

mod archive;
mod detect;
mod names;
mod settings;

use std::sync::OnceLock;

use weir_plugin_sdk::{
    Decision, Hook, Message, Mutation, PartInfo, Plugin, Reply, Verdict, config, export_plugin, log,
};

use settings::{Action, Settings};

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| settings::parse(&config::get()).expect("checked at init"))
}

/// Why a file name is blocked, if it is.
fn name_verdict(s: &Settings, name: &str) -> Option<String> {
    if names::has_bidi_controls(name) {
        return Some("its name hides its real extension (right-to-left text)".into());
    }
    let n = names::normalise(name);
    let ext = names::extension(&n);
    if s.extensions.iter().any(|e| e == ext) {
        if s.double_extensions
            && let Some(doc) = names::disguise(&n)
        {
            return Some(format!(
                "a .{doc}.{ext} file: a program disguised as a document"
            ));
        }
        return Some(format!("files of type .{ext} are not accepted"));
    }
    s.names
        .iter()
        .find(|p| weir_plugin_sdk::pattern::wildcard(p, &n))
        .map(|p| format!("its name matches {p:?}"))
}

/// What one part is called in replies and the log.
fn label(part: &PartInfo) -> String {
    match &part.filename {
        Some(n) => n.chars().filter(|c| !c.is_control()).take(120).collect(),
        None => format!("part {} ({})", part.id, part.content_type),
    }
}

/// Why one part is blocked, if it is.
fn judge(
    s: &Settings,
    msg: &Message,
    part: &PartInfo,
    budget: &mut archive::Budget,
) -> Option<String> {
    if let Some(name) = &part.filename
        && let Some(why) = name_verdict(s, name)
    {
        return Some(why);
    }
    if let Some(t) = s
        .types
        .iter()
        .find(|t| weir_plugin_sdk::pattern::wildcard(t, &part.content_type))
    {
        return Some(format!(
            "its declared type {} matches {t:?}",
            part.content_type
        ));
    }
    let head = match msg.part_range(part.id, 0, 512) {
        Ok(h) => h,
        Err(e) => {
            log::log(
                log::Level::Warn,
                &format!("{}: content not checked ({e})", label(part)),
            );
            return None;
        }
    };
    let kind = detect::kind(&head);
    if let Some(k) = kind.filter(|k| s.content.contains(k)) {
        return Some(format!("it is {} (whatever its name says)", k.describe()));
    }
    let ext = part
        .filename
        .as_deref()
        .map(|n| names::extension(&names::normalise(n)).to_string())
        .unwrap_or_default();
    if s.archives.inspect && (kind == Some(detect::Kind::Zip) || ext == "zip") {
        let reader = archive::PartReader::new(msg, part.id, part.size);
        let check = |n: &str| name_verdict(s, n);
        let found = archive::inspect(reader, 1, &s.archives, budget, &check, &s.content);
        log::log(
            log::Level::Debug,
            &format!(
                "{}: {} entries, {} octets expanded, {} ms",
                label(part),
                budget.entries,
                budget.expanded,
                budget.started.elapsed().as_millis()
            ),
        );
        return match found {
            Ok(()) => None,
            Err(archive::Finding::Blocked { entry, reason }) => {
                Some(format!("it holds {entry}, which is blocked: {reason}"))
            }
            Err(archive::Finding::Encrypted { entry }) => Some(format!(
                "it is password-protected ({entry}), so its content cannot be checked"
            )),
            Err(archive::Finding::OverLimit(what)) => {
                Some(format!("the archive {what} (a zip bomb?)"))
            }
            Err(archive::Finding::Unreadable(why)) => {
                Some(format!("the archive cannot be read ({why})"))
            }
        };
    }
    None
}

struct Attachments;

impl Plugin for Attachments {
    const HOOKS: &'static [Hook] = &[Hook::Data];

    fn init(text: &str) -> Result<(), String> {
        let _ = SETTINGS.set(settings::parse(text)?);
        Ok(())
    }

    fn on_data(msg: &Message) -> Decision {
        let s = settings();
        let mut blocked = Vec::new();
        // The caps on archives are for the whole message: a hundred zips
        // get the time and expansion one gets.
        let mut budget = archive::Budget::new();
        let parts = msg.parts();
        let parents: std::collections::HashSet<u32> =
            parts.iter().filter_map(|p| p.parent).collect();
        for part in &parts {
            // Leaves only: a multipart's or an attached message's parts
            // are judged one by one (the gateway lists the parts of
            // forwarded messages too).
            let leaf = !parents.contains(&part.id);
            let body_text = part.content_type.starts_with("text/") && part.filename.is_none();
            if !leaf || (body_text && !part.is_attachment) {
                continue;
            }
            let part = part.clone();
            if let Some(reason) = judge(s, msg, &part, &mut budget) {
                log::log(log::Level::Info, &format!("{}: {reason}", label(&part)));
                blocked.push((part, reason));
            }
        }
        let Some((first, why)) = blocked.first() else {
            return Decision::from(Verdict::Continue);
        };
        match s.action {
            Action::Reject => Decision::from(Reply::reject(
                550,
                "5.7.1",
                &format!("Attachment {} refused: {why}", label(first)),
            )),
            Action::Quarantine => Decision::from(Verdict::Quarantine(format!(
                "attachment {}: {why}",
                label(first)
            ))),
            Action::Strip => {
                let mut changes = vec![Mutation::Tag("attachment-stripped".into())];
                for (part, reason) in &blocked {
                    let note = s
                        .note
                        .replace("{name}", &label(part))
                        .replace("{reason}", reason);
                    changes.push(Mutation::replace_part_with_text(
                        part.id,
                        &format!("{note}\r\n"),
                    ));
                }
                Decision::changes(changes)
            }
        }
    }
}

export_plugin!(Attachments);
