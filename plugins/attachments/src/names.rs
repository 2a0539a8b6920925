//! What a file name says: its extension once normalised (case, trailing
//! dots and spaces, which Windows drops), a document extension hiding an
//! executable one (`invoice.pdf.exe`), bidirectional-override characters
//! (U+202E) that make `invoice<U+202E>fdp.exe` show as `invoiceexe.pdf`.

/// Extensions that look like documents: before an executable one, a
/// disguise.
const DOCUMENTS: &[&str] = &[
    "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "rtf", "txt", "csv", "jpg",
    "jpeg", "png", "gif", "mp3", "mp4", "avi", "zip", "htm", "html",
];

/// Unicode formatting characters that reorder what a name shows.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
}

/// A file name as it is judged: lower case, without trailing dots and
/// spaces, without bidirectional controls.
pub fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !is_bidi_control(*c))
        .collect::<String>()
        .trim_end_matches(['.', ' '])
        .to_lowercase()
}

/// Whether the name reorders itself on screen.
pub fn has_bidi_controls(name: &str) -> bool {
    name.chars().any(is_bidi_control)
}

/// The last extension of a normalised name.
pub fn extension(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.trim(),
        _ => "",
    }
}

/// The document extension before the last one, if the name has one
/// (`pdf` of `invoice.pdf.exe`).
pub fn disguise(name: &str) -> Option<&str> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let mut parts = base.rsplit('.');
    parts.next()?;
    let before = parts.next()?.trim();
    parts.next()?;
    DOCUMENTS.contains(&before).then_some(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_judged_as_windows_shows_them() {
        assert_eq!(normalise("Setup.EXE. "), "setup.exe");
        assert_eq!(extension("setup.exe"), "exe");
        assert_eq!(extension(".bashrc"), "");
        assert_eq!(extension("dir/file.tar.gz"), "gz");
        assert_eq!(disguise("invoice.pdf.exe"), Some("pdf"));
        assert_eq!(disguise("my.file.exe"), None);
        assert_eq!(disguise("report.exe"), None);
        let rtlo = "invoice\u{202e}fdp.exe";
        assert!(has_bidi_controls(rtlo));
        assert_eq!(extension(&normalise(rtlo)), "exe");
    }
}
