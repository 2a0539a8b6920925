//! What a file is, by its first bytes (magic numbers), whatever its name
//! and declared type say.

/// A kind of content, as `blocked_content` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Windows program or library (PE, `MZ`).
    WindowsExecutable,
    /// A Linux or Unix program (`\x7fELF`).
    Elf,
    /// A macOS program (Mach-O, thin or fat).
    MachO,
    /// A Java class file (`CAFEBABE` followed by a class-file version).
    JavaClass,
    /// A script with an interpreter line (`#!`).
    Script,
    /// An OLE2 compound file: MSI installers, Office 97 documents.
    Ole,
    /// A zip archive (also docx, xlsx, jar, apk: zips themselves).
    Zip,
    /// Other archives: RAR, 7-Zip, gzip, xz, bzip2.
    OtherArchive,
    /// A PDF document.
    Pdf,
}

impl Kind {
    /// The name `blocked_content` uses.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WindowsExecutable => "windows-executable",
            Kind::Elf => "elf",
            Kind::MachO => "mach-o",
            Kind::JavaClass => "java-class",
            Kind::Script => "script",
            Kind::Ole => "ole",
            Kind::Zip => "zip",
            Kind::OtherArchive => "archive",
            Kind::Pdf => "pdf",
        }
    }

    /// The kinds by name, for the configuration; `executable` is every
    /// program format.
    pub fn parse(name: &str) -> Option<Vec<Kind>> {
        let all = [
            Kind::WindowsExecutable,
            Kind::Elf,
            Kind::MachO,
            Kind::JavaClass,
            Kind::Script,
            Kind::Ole,
            Kind::Zip,
            Kind::OtherArchive,
            Kind::Pdf,
        ];
        if name == "executable" {
            return Some(vec![
                Kind::WindowsExecutable,
                Kind::Elf,
                Kind::MachO,
                Kind::JavaClass,
            ]);
        }
        all.iter().find(|k| k.name() == name).map(|k| vec![*k])
    }

    /// In words, for replies and notes.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::WindowsExecutable => "a Windows program",
            Kind::Elf => "a Linux program",
            Kind::MachO => "a macOS program",
            Kind::JavaClass => "a Java class",
            Kind::Script => "a script",
            Kind::Ole => "an OLE file (installer or macro document)",
            Kind::Zip => "a zip archive",
            Kind::OtherArchive => "an archive",
            Kind::Pdf => "a PDF document",
        }
    }
}

/// The kind of content that starts with `head`, if it is one we know.
pub fn kind(head: &[u8]) -> Option<Kind> {
    let starts = |m: &[u8]| head.starts_with(m);
    if starts(b"MZ") {
        return Some(Kind::WindowsExecutable);
    }
    if starts(b"\x7fELF") {
        return Some(Kind::Elf);
    }
    if starts(&[0xfe, 0xed, 0xfa, 0xce])
        || starts(&[0xfe, 0xed, 0xfa, 0xcf])
        || starts(&[0xce, 0xfa, 0xed, 0xfe])
        || starts(&[0xcf, 0xfa, 0xed, 0xfe])
    {
        return Some(Kind::MachO);
    }
    if starts(&[0xca, 0xfe, 0xba, 0xbe]) && head.len() >= 8 {
        // A fat Mach-O binary counts its architectures (a few) where a
        // class file has its version (45 and up).
        let n = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        return Some(if n < 20 { Kind::MachO } else { Kind::JavaClass });
    }
    if starts(b"#!") {
        return Some(Kind::Script);
    }
    if starts(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        return Some(Kind::Ole);
    }
    if starts(b"PK\x03\x04") || starts(b"PK\x05\x06") {
        return Some(Kind::Zip);
    }
    if starts(b"Rar!\x1a\x07")
        || starts(&[0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])
        || starts(&[0x1f, 0x8b])
        || starts(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || starts(b"BZh")
    {
        return Some(Kind::OtherArchive);
    }
    if starts(b"%PDF-") {
        return Some(Kind::Pdf);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_known_by_their_first_bytes() {
        assert_eq!(kind(b"MZ\x90\x00"), Some(Kind::WindowsExecutable));
        assert_eq!(kind(b"\x7fELF\x02"), Some(Kind::Elf));
        assert_eq!(kind(b"PK\x03\x04rest"), Some(Kind::Zip));
        assert_eq!(kind(b"%PDF-1.7"), Some(Kind::Pdf));
        assert_eq!(
            kind(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 52]),
            Some(Kind::JavaClass)
        );
        assert_eq!(
            kind(&[0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 2]),
            Some(Kind::MachO)
        );
        assert_eq!(kind(b"#!/bin/sh"), Some(Kind::Script));
        assert_eq!(kind(b"Hello"), None);
        assert_eq!(Kind::parse("executable").unwrap().len(), 4);
        assert_eq!(Kind::parse("zip"), Some(vec![Kind::Zip]));
        assert_eq!(Kind::parse("exe"), None);
    }
}
