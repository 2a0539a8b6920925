//! The bundled attachments and transport-rules plugins through a live
//! gateway, with real MIME messages built by mail-builder (nested
//! multiparts, base64 and quoted-printable parts, zips inside zips, a
//! renamed program, a zip bomb, a 50 MB message), checking the reply the
//! client gets and what arrives downstream.

use std::io::Write;
use std::sync::mpsc;
use std::time::Instant;

use mail_builder::MessageBuilder;
use mail_builder::mime::MimePart;

use crate::harness::{Client, Gateway, listener};
use crate::plugins::{plugin_dir, plugins_table};
use crate::sink::{Delivered, Sink, SinkOptions};

/// A Windows program's first bytes.
const PROGRAM: &[u8] =
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xffThis program cannot be run in DOS mode.";

/// `entries` as a zip: (name, content, deflated or stored).
fn zip_of(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    for (name, content, deflate) in entries {
        let method = if *deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(method)
            .large_file(content.len() > u32::MAX as usize / 2);
        z.start_file(*name, options).unwrap();
        z.write_all(content).unwrap();
    }
    z.finish().unwrap();
    out.into_inner()
}

/// A message with a text body, an HTML alternative and `attachments`
/// (name, type, content).
fn with_attachments(subject: &str, attachments: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut parts = vec![MimePart::new(
        "multipart/alternative",
        vec![
            MimePart::new("text/plain", "Hello,\r\nplease find the files.\r\n"),
            MimePart::new(
                "text/html",
                "<html><body><p>Hello, please find the files.</p></body></html>",
            ),
        ],
    )];
    for (name, kind, content) in attachments {
        parts.push(MimePart::new(*kind, content.to_vec()).attachment(*name));
    }
    MessageBuilder::new()
        .from(("Sender", "a@sender.test"))
        .to("r@example.test")
        .subject(subject)
        .body(MimePart::new("multipart/mixed", parts))
        .write_to_vec()
        .unwrap()
}

/// Dot-stuffed (RFC 5321 4.5.2), ending with the final dot.
fn data(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One transaction: the final reply (code, text).
fn send(gw: &Gateway, from: &str, to: &[&str], message: &[u8]) -> (u16, String) {
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    for r in to {
        c.expect(&format!("RCPT TO:<{r}>"), 250);
    }
    c.expect("DATA", 354);
    c.send(&data(message));
    let r = c.read_reply();
    (r.code, r.text())
}

fn text(d: &Delivered) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

fn parsed(d: &Delivered) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(&d.data)
        .unwrap()
}

/// A gateway for example.test with `plugin` (configured by `toml`) in the
/// data chain, delivering to `sink`.
fn gateway(
    plugin: &str,
    package: &str,
    toml: &str,
    sink: &Sink,
    extra: &str,
) -> (Gateway, tempfile::TempDir) {
    let plugins = plugin_dir(&[(plugin, package, toml)]);
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.{plugin}]\ngrants = [\"body\", \"modify\"]\ndata_deadline = \"10s\"\n{}\
         [[route]]\nname = \"out\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n{extra}",
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            &format!(
                "local_domains = [\"example.test\"]\nmax_message_size = \"60 MiB\"\nchains = {{ data = [\"{plugin}\"] }}"
            )
        ),
        sink.addr.port(),
    ));
    (gw, plugins)
}

fn attachments(toml: &str, sink: &Sink) -> (Gateway, tempfile::TempDir) {
    gateway("attachments", "weir-plugin-attachments", toml, sink, "")
}

#[test]
fn programs_are_refused_by_name_by_disguise_and_by_content() {
    let sink = Sink::start(SinkOptions::default());
    let (gw, _p) = attachments("", &sink);
    let pdf = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n".as_slice();
    let cases: [(&str, &str, &[u8], &str); 4] = [
        (
            "setup.exe",
            "application/octet-stream",
            PROGRAM,
            "Attachment setup.exe refused: files of type .exe are not accepted",
        ),
        (
            "invoice.pdf.exe",
            "application/pdf",
            PROGRAM,
            "Attachment invoice.pdf.exe refused: a .pdf.exe file: a program disguised as a document",
        ),
        // A program under a document's name and type: its bytes tell.
        (
            "invoice.pdf",
            "application/pdf",
            PROGRAM,
            "Attachment invoice.pdf refused: it is a Windows program (whatever its name says)",
        ),
        (
            "payload\u{202e}fdp.js",
            "application/octet-stream",
            b"alert(1)",
            "refused: its name hides its real extension",
        ),
    ];
    for (name, kind, content, says) in cases {
        let r = send(
            &gw,
            "a@sender.test",
            &["r@example.test"],
            &with_attachments(name, &[(name, kind, content)]),
        );
        assert_eq!(r.0, 550, "{name}: {r:?}");
        assert!(
            r.1.starts_with("5.7.1 ") && r.1.contains(says),
            "{name}: {r:?}"
        );
    }
    // A real PDF, base64, and a quoted-printable text attachment: fine.
    let qp = MimePart::new("text/plain", "caf\u{e9} ol\u{e9}\r\n".to_string())
        .attachment("notes.txt")
        .transfer_encoding("quoted-printable");
    let ok = MessageBuilder::new()
        .from("a@sender.test")
        .to("r@example.test")
        .subject("fine")
        .body(MimePart::new(
            "multipart/mixed",
            vec![
                MimePart::new("text/plain", "See attached.\r\n"),
                MimePart::new("application/pdf", pdf.to_vec()).attachment("report.pdf"),
                qp,
            ],
        ))
        .write_to_vec()
        .unwrap();
    assert!(String::from_utf8_lossy(&ok).contains("Content-Transfer-Encoding: quoted-printable"));
    assert_eq!(send(&gw, "a@sender.test", &["r@example.test"], &ok).0, 250);
    assert_eq!(sink.wait_for(1).len(), 1);
}

#[test]
fn archives_are_looked_into_nested_and_password_protected() {
    let sink = Sink::start(SinkOptions::default());
    let (gw, _p) = attachments("", &sink);
    // A zip inside a zip, the program in the inner one.
    let inner = zip_of(&[
        ("readme.txt", b"hello", true),
        ("tools/evil.exe", PROGRAM, true),
    ]);
    let outer = zip_of(&[
        ("docs/letter.txt", b"dear", true),
        ("more.zip", &inner, false),
    ]);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("nested", &[("archive.zip", "application/zip", &outer)]),
    );
    assert_eq!(r.0, 550, "{r:?}");
    assert!(
        r.1.contains("it holds tools/evil.exe, which is blocked: files of type .exe"),
        "{r:?}"
    );
    // A program renamed inside an archive.
    let renamed = zip_of(&[("photo.jpg", PROGRAM, true)]);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("renamed", &[("photos.zip", "application/zip", &renamed)]),
    );
    assert!(
        r.1.contains("it holds photo.jpg, which is blocked: is a Windows program"),
        "{r:?}"
    );
    // Password-protected: the entries' flag says so (bit 0 of the general
    // purpose flags, in the local and the central headers).
    let mut locked = zip_of(&[("secret.docx", b"PK-ish", false)]);
    for sig in [&b"PK\x03\x04"[..], &b"PK\x01\x02"[..]] {
        let at = locked.windows(4).position(|w| w == sig).unwrap();
        let flags = if sig[2] == 3 { at + 6 } else { at + 8 };
        locked[flags] |= 1;
    }
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("locked", &[("secret.zip", "application/zip", &locked)]),
    );
    assert!(
        r.1.contains("it is password-protected (secret.docx)"),
        "{r:?}"
    );
    // Zips four deep, past max_depth (3).
    let mut deep = zip_of(&[("core.txt", b"x", true)]);
    for level in 0..3 {
        deep = zip_of(&[(&format!("level{level}.zip"), &deep, false)]);
    }
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("deep", &[("deep.zip", "application/zip", &deep)]),
    );
    assert!(r.1.contains("archives nested deeper than 3"), "{r:?}");
    // An archive whose end record claims 2,000 entries (max_entries is
    // 1,000) is refused before its directory is read.
    let mut claims = zip_of(&[("a.txt", b"text", true)]);
    let end = claims.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    claims[end + 8..end + 12].copy_from_slice(&[0xd0, 0x07, 0xd0, 0x07]);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("claims", &[("many.zip", "application/zip", &claims)]),
    );
    assert!(r.1.contains("the archive more than 1000 entries"), "{r:?}");
    // An entry named .zip that is no zip is opened all the same, and is
    // unreadable: not let through unseen.
    let fake = zip_of(&[("inner.zip", b"not a zip at all", true)]);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("fake", &[("fake.zip", "application/zip", &fake)]),
    );
    assert!(r.1.contains("the archive cannot be read"), "{r:?}");
    // A harmless archive passes.
    let fine = zip_of(&[("a.txt", b"text", true), ("b.pdf", b"%PDF-1.4", true)]);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &with_attachments("fine", &[("fine.zip", "application/zip", &fine)]),
    );
    assert_eq!(r.0, 250, "{r:?}");
}

#[test]
fn strip_replaces_the_attachment_by_a_note_and_keeps_the_rest() {
    let sink = Sink::start(SinkOptions::default());
    let (gw, _p) = attachments(
        "action = \"strip\"\nnote = \"Removed: {name} ({reason}).\"\n",
        &sink,
    );
    let message = with_attachments(
        "strip me",
        &[
            ("setup.exe", "application/octet-stream", PROGRAM),
            ("report.pdf", "application/pdf", b"%PDF-1.7 ok"),
        ],
    );
    assert_eq!(
        send(&gw, "a@sender.test", &["r@example.test"], &message).0,
        250
    );
    let got = sink.wait_for(1);
    let m = parsed(&got[0]);
    let body = text(&got[0]);
    assert!(
        !body.contains("TVqQ"),
        "the program's base64 is gone: {body}"
    );
    // The text and HTML alternatives and the PDF are intact, the program
    // is a note.
    assert!(m.body_text(0).unwrap().contains("please find the files"));
    assert!(m.body_html(0).unwrap().contains("please find the files"));
    use mail_parser::MimeHeaders;
    let names: Vec<_> = m
        .attachments()
        .filter_map(|a| a.attachment_name())
        .collect();
    assert_eq!(names, ["report.pdf"], "{body}");
    assert!(
        body.contains("Removed: setup.exe (files of type .exe are not accepted)."),
        "{body}"
    );
}

/// `inner` forwarded as an attachment (message/rfc822), as mail clients
/// forward: the attached message's bytes as they are.
fn forwarding(inner: &[u8]) -> Vec<u8> {
    let mut m = b"From: <a@sender.test>\r\nTo: <r@example.test>\r\nSubject: fwd\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"fwd\"\r\n\r\n\
        --fwd\r\nContent-Type: text/plain\r\n\r\nForwarded, see below.\r\n\
        --fwd\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n"
        .to_vec();
    m.extend_from_slice(inner);
    m.extend_from_slice(b"\r\n--fwd--\r\n");
    m
}

#[test]
fn attachments_of_forwarded_messages_are_judged_and_stripped_inside_them() {
    let inner = with_attachments(
        "the original",
        &[
            ("setup.exe", "application/octet-stream", PROGRAM),
            ("report.pdf", "application/pdf", b"%PDF-1.7 ok"),
        ],
    );
    let sink = Sink::start(SinkOptions::default());
    let (gw, _p) = attachments("", &sink);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &forwarding(&inner),
    );
    assert_eq!(r.0, 550, "{r:?}");
    assert!(r.1.contains("Attachment setup.exe refused"), "{r:?}");
    drop(gw);

    // Stripped: the program inside the forwarded message becomes a note;
    // the forwarded message, its text and its PDF stay.
    let (gw, _p) = attachments("action = \"strip\"\n", &sink);
    let r = send(
        &gw,
        "a@sender.test",
        &["r@example.test"],
        &forwarding(&inner),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let got = sink.wait_for(1);
    let body = text(&got[0]);
    assert!(!body.contains("TVqQ"), "the program is gone: {body}");
    let m = parsed(&got[0]);
    use mail_parser::MimeHeaders;
    let forwarded = m
        .attachments()
        .find_map(|a| a.message())
        .expect("the forwarded message is still attached");
    assert_eq!(forwarded.subject(), Some("the original"));
    assert!(
        forwarded
            .body_text(0)
            .unwrap()
            .contains("please find the files")
    );
    let names: Vec<_> = forwarded
        .attachments()
        .filter_map(|a| a.attachment_name())
        .collect();
    assert_eq!(names, ["report.pdf"], "{body}");
    assert!(body.contains("setup.exe"), "the note names it: {body}");
}

/// Runs `big` (a transaction that keeps the gateway busy) on a thread
/// and, once its data is sent, a quick transaction beside it; returns
/// `big`'s reply and whether the quick one was answered first.
fn meanwhile(gw: &Gateway, big: Vec<u8>) -> ((u16, String), bool) {
    let addr = gw.addr("in");
    let (sent_tx, sent_rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<a@sender.test>", 250);
        c.expect("RCPT TO:<r@example.test>", 250);
        c.expect("DATA", 354);
        c.send(&data(&big));
        sent_tx.send(()).unwrap();
        let r = c.read_reply();
        (Instant::now(), (r.code, r.text()))
    });
    sent_rx.recv_timeout(crate::harness::PATIENCE).unwrap();
    let small = with_attachments("small", &[]);
    let r = send(gw, "b@sender.test", &["r@example.test"], &small);
    let quick_done = Instant::now();
    assert_eq!(r.0, 250, "the quick one: {r:?}");
    let (big_done, reply) = worker.join().unwrap();
    (reply, quick_done < big_done)
}

#[test]
fn a_zip_bomb_is_quarantined_within_the_caps_while_others_are_served() {
    let sink = Sink::start(SinkOptions::default());
    let (gw, _p) = attachments(
        "action = \"quarantine\"\n[archives]\nmax_expanded_size = \"512 MiB\"\nmax_scan_time = \"5s\"\n",
        &sink,
    );
    // Forty zips of 20 MB of zeros each (about 20 KB compressed): 800 MB
    // expanded from an attachment of under a megabyte. The plugin counts
    // what the first of them really expand to (a few hundred ms of work,
    // during which the quick transaction is served) until the cap.
    let zeros = vec![0u8; 20 << 20];
    let layer = zip_of(&[("zeros.bin", &zeros, true)]);
    let copies: Vec<(String, &[u8], bool)> = (0..40)
        .map(|i| (format!("part{i}.zip"), layer.as_slice(), true))
        .collect();
    let entries: Vec<(&str, &[u8], bool)> = copies
        .iter()
        .map(|(n, c, d)| (n.as_str(), *c, *d))
        .collect();
    let bomb = zip_of(&entries);
    assert!(bomb.len() < 1 << 20, "{} octets", bomb.len());
    let message = with_attachments("bomb", &[("invoice.zip", "application/zip", &bomb)]);
    let (reply, quick_first) = meanwhile(&gw, message);
    assert_eq!(reply.0, 250, "quarantined, not refused: {reply:?}");
    assert!(quick_first, "the quick transaction waited for the bomb");
    let ls = String::from_utf8_lossy(&gw.cli(&["quarantine", "ls"]).stdout).into_owned();
    assert!(
        ls.contains("attachment invoice.zip: the archive expands to more than 536870912 octets (a zip bomb?)"),
        "{ls}"
    );
    // Only the quick one was delivered.
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1);
}

#[test]
fn a_50_mb_message_is_read_in_pieces_and_refused_for_what_it_hides() {
    let sink = Sink::start(SinkOptions::default());
    let (gw, _p) = attachments("[archives]\nmax_scan_time = \"8s\"\n", &sink);
    // 37 MB that do not compress, stored, then a program: a zip of which
    // the plugin reads the directory, and the entries piece by piece.
    let mut filler = vec![0u8; 37 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in filler.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let zip = zip_of(&[("data.bin", &filler, false), ("run.exe", PROGRAM, true)]);
    drop(filler);
    let message = with_attachments("big", &[("backup.zip", "application/zip", &zip)]);
    assert!(message.len() > 50 << 20, "{} octets", message.len());
    let (reply, quick_first) = meanwhile(&gw, message);
    assert_eq!(reply.0, 550, "{reply:?}");
    assert!(reply.1.contains("it holds run.exe"), "{reply:?}");
    assert!(quick_first, "the quick transaction waited for the big one");
    assert!(gw.log().contains("backup.zip: it holds run.exe"));
}

// ----------------------------------------------------------- transport rules

fn rules(toml: &str, sink: &Sink, extra: &str) -> (Gateway, tempfile::TempDir) {
    gateway(
        "transport-rules",
        "weir-plugin-transport-rules",
        toml,
        sink,
        extra,
    )
}

fn header(d: &Delivered, name: &str) -> Vec<String> {
    parsed(d)
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| {
            let raw = &d.data[h.offset_start() as usize..h.offset_end() as usize];
            String::from_utf8_lossy(raw).trim().to_string()
        })
        .collect()
}

#[test]
fn an_external_sender_gets_a_banner_a_tag_and_a_disclaimer_once() {
    let sink = Sink::start(SinkOptions::default());
    let toml = r#"
[[rule]]
name = "external"
[rule.if]
sender_scope = "outside"
recipient_scope = "inside"
[rule.unless]
sender_domain = ["*.partner.test", "partner.test"]
[rule.then]
prepend_subject = "[EXTERNAL] "
add_header = [{ name = "X-External-Sender", value = "yes" }]
remove_header = ["X-Mailer"]
disclaimer = { text = "-- This message came from outside example.test.", html = "<p>-- This message came from outside example.test.</p>" }
"#;
    let (gw, _p) = rules(toml, &sink, "");
    let message = MessageBuilder::new()
        .from("a@outside.test")
        .to("r@example.test")
        .subject("Quarterly numbers")
        .header(
            "X-Mailer",
            mail_builder::headers::raw::Raw::new("Spammer 1.0"),
        )
        .text_body("The numbers are in.\r\n")
        .html_body("<html><body><p>The numbers are in.</p></body></html>")
        .write_to_vec()
        .unwrap();
    assert_eq!(
        send(&gw, "a@outside.test", &["r@example.test"], &message).0,
        250
    );
    // A partner is an exception; an internal sender is not outside.
    assert_eq!(
        send(&gw, "b@partner.test", &["r@example.test"], &message).0,
        250
    );
    assert_eq!(
        send(&gw, "c@example.test", &["r@example.test"], &message).0,
        250
    );
    let got = sink.wait_for(3);
    let outside = got.iter().find(|d| d.from == "a@outside.test").unwrap();
    let m = parsed(outside);
    assert_eq!(m.subject(), Some("[EXTERNAL] Quarterly numbers"));
    assert_eq!(header(outside, "X-External-Sender"), ["yes"]);
    assert!(header(outside, "X-Mailer").is_empty());
    let plain = m.body_text(0).unwrap();
    assert!(
        plain.contains("The numbers are in.")
            && plain.contains("-- This message came from outside"),
        "{plain}"
    );
    let html = m.body_html(0).unwrap();
    assert!(
        html.contains("<p>-- This message came from outside example.test.</p>\r\n</body>"),
        "{html}"
    );
    for other in got.iter().filter(|d| d.from != "a@outside.test") {
        assert_eq!(
            parsed(other).subject(),
            Some("Quarterly numbers"),
            "{}",
            other.from
        );
    }
    // Through the gateway again (a reply quoting it, a loop): one tag, one
    // disclaimer.
    let again = outside.data.clone();
    assert_eq!(
        send(&gw, "a@outside.test", &["r@example.test"], &again).0,
        250
    );
    let got = sink.wait_for(4);
    let twice = parsed(&got[3]);
    assert_eq!(twice.subject(), Some("[EXTERNAL] Quarterly numbers"));
    assert_eq!(
        twice
            .body_text(0)
            .unwrap()
            .matches("came from outside")
            .count(),
        1
    );
    assert_eq!(
        twice
            .body_html(0)
            .unwrap()
            .matches("came from outside")
            .count(),
        1
    );
    // A message forwarding another gets the disclaimer on its own text,
    // not on the text of the mail it forwards.
    let inner = b"From: <x@elsewhere.test>\r\nSubject: original\r\n\r\nThe original text.\r\n";
    assert_eq!(
        send(
            &gw,
            "a@outside.test",
            &["r@example.test"],
            &forwarding(inner)
        )
        .0,
        250
    );
    let got = sink.wait_for(5);
    let fwd = text(&got[4]);
    assert_eq!(fwd.matches("came from outside").count(), 1, "{fwd}");
    let at = fwd.find("came from outside").unwrap();
    assert!(at < fwd.find("The original text.").unwrap(), "{fwd}");
}

#[test]
fn journaling_redirecting_rejecting_and_quarantining_follow_their_rules() {
    let sink = Sink::start(SinkOptions::default());
    let toml = r#"
[[rule]]
name = "journal"
[rule.if]
recipient_domain = ["example.test"]
[rule.then]
add_recipients = ["journal@archive.test"]

[[rule]]
name = "ceo"
[rule.if]
recipient = ["ceo@example.test"]
sender_scope = "outside"
[rule.then]
redirect_to = ["assistant@example.test"]
stop = true

[[rule]]
name = "lottery"
[rule.if]
subject_contains = ["lottery", "you have won"]
[rule.then]
reject = { code = 550, enhanced = "5.7.1", text = "We do not take part in lotteries" }

[[rule]]
name = "disk images"
[rule.if]
has_attachment = true
attachment_name = ["*.iso", "*.img"]
[rule.then]
quarantine = "a disk image, to be looked at"

[[rule]]
name = "big or confidential"
[rule.if]
body_contains = ["strictly confidential"]
[rule.unless]
size_over = "10 MiB"
[rule.then]
add_header = [{ name = "X-Confidential", value = "yes" }]
"#;
    let (gw, _p) = rules(toml, &sink, "");
    let plain = |subject: &str, body: &str| {
        MessageBuilder::new()
            .from("x@outside.test")
            .to("r@example.test")
            .subject(subject)
            .text_body(body.to_string())
            .write_to_vec()
            .unwrap()
    };
    // Journaling: a copy to the archive, besides the recipient.
    assert_eq!(
        send(
            &gw,
            "x@outside.test",
            &["r@example.test"],
            &plain("hello", "hi\r\n")
        )
        .0,
        250
    );
    // The CEO's mail from outside goes to the assistant; the journal rule
    // ran before, the rest not (stop).
    assert_eq!(
        send(
            &gw,
            "x@outside.test",
            &["ceo@example.test"],
            &plain("you have won", "hi\r\n")
        )
        .0,
        250
    );
    // Rejected with the rule's reply.
    let r = send(
        &gw,
        "x@outside.test",
        &["r@example.test"],
        &plain("Lottery results", "hi\r\n"),
    );
    assert_eq!(
        r,
        (550, "5.7.1 We do not take part in lotteries".to_string())
    );
    // Quarantined.
    let iso = with_attachments(
        "image",
        &[("ubuntu.iso", "application/octet-stream", b"CD001")],
    );
    assert_eq!(
        send(&gw, "x@outside.test", &["r@example.test"], &iso).0,
        250
    );
    // A body condition.
    assert_eq!(
        send(
            &gw,
            "x@outside.test",
            &["r@example.test"],
            &plain("plans", "This is STRICTLY Confidential.\r\n")
        )
        .0,
        250
    );

    let got = sink.wait_for(3);
    let by_subject = |s: &str| got.iter().find(|d| parsed(d).subject() == Some(s)).unwrap();
    let mut rcpts = by_subject("hello").rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["journal@archive.test", "r@example.test"]);
    let mut rcpts = by_subject("you have won").rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["assistant@example.test", "journal@archive.test"]);
    assert_eq!(header(by_subject("plans"), "X-Confidential"), ["yes"]);
    assert!(header(by_subject("hello"), "X-Confidential").is_empty());
    let ls = String::from_utf8_lossy(&gw.cli(&["quarantine", "ls"]).stdout).into_owned();
    assert!(
        ls.contains(
            "[transport-rules at data: rule \"disk images\": a disk image, to be looked at]"
        ),
        "{ls}"
    );
    assert_eq!(
        got.len(),
        3,
        "the lottery and the disk image were not delivered"
    );
}

#[test]
fn a_partner_domain_goes_through_its_smart_host_with_tls_required() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let default = Sink::start(SinkOptions::default());
    let partner = Sink::start(SinkOptions {
        tls: Some((ck.cert.pem(), ck.key_pair.serialize_pem())),
        ..Default::default()
    });
    // A relay that offers no TLS: mail that must go over TLS waits.
    let cleartext = Sink::start(SinkOptions::default());
    let toml = r#"
[[rule]]
name = "partner"
[rule.if]
recipient_domain = ["partner.test"]
[rule.then]
route = "partner-relay"
require_tls = true

[[rule]]
name = "legal"
[rule.if]
recipient_domain = ["legal.test"]
[rule.then]
route = "legal-relay"
require_tls = true
"#;
    let extra = format!(
        "[[route]]\nname = \"partner-relay\"\ndomains = [\"unused.invalid\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\ntls = \"none\"\n\
         [[route]]\nname = \"legal-relay\"\ndomains = [\"unused2.invalid\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\ntls = \"none\"\n",
        partner.addr.port(),
        cleartext.addr.port()
    );
    let (gw, _p) = rules(toml, &default, &extra);
    let msg = |to: &str| {
        MessageBuilder::new()
            .from("a@example.test")
            .to(to.to_string())
            .subject(format!("for {to}"))
            .text_body("contract attached\r\n")
            .write_to_vec()
            .unwrap()
    };
    assert_eq!(
        send(
            &gw,
            "a@example.test",
            &["p@partner.test"],
            &msg("p@partner.test")
        )
        .0,
        250
    );
    assert_eq!(
        send(
            &gw,
            "a@example.test",
            &["o@other.test"],
            &msg("o@other.test")
        )
        .0,
        250
    );
    assert_eq!(
        send(
            &gw,
            "a@example.test",
            &["l@legal.test"],
            &msg("l@legal.test")
        )
        .0,
        250
    );
    let got = partner.wait_for(1);
    assert_eq!(got[0].rcpts, ["p@partner.test"]);
    assert!(got[0].tls, "delivered over TLS");
    let got = default.wait_for(1);
    assert_eq!(got[0].rcpts, ["o@other.test"]);
    // The relay without TLS gets nothing: the message is deferred.
    let log = gw.wait_for_log("does not offer STARTTLS", 1);
    assert!(cleartext.received().is_empty(), "{log}");
    let queue = gw.cli(&["queue", "ls", "--verbose"]);
    let queue = String::from_utf8_lossy(&queue.stdout);
    assert!(queue.contains("l@legal.test: deferred"), "{queue}");
}

#[test]
fn conditions_on_score_authentication_listener_and_headers_are_met() {
    // antispam scores (a message without Date and Message-ID), then the
    // rules read that score, the authentication results, the listener,
    // whether the client authenticated, a header and the From.
    let sink = Sink::start(SinkOptions::default());
    let mut records = crate::dns::Records::new();
    records.exists("example.test");
    let dns = crate::dns::TestDns::serve(records);
    let toml = r#"
[[rule]]
name = "spam"
[rule.if]
spam_score_over = 2.0
listener = ["in"]
authenticated = false
[rule.then]
prepend_subject = "[SPAM] "

[[rule]]
name = "no spf"
[rule.if]
auth = ["spf=none"]
from = ["*@outside.test"]
header = [{ name = "X-Priority", matches = "1*" }]
[rule.then]
add_header = [{ name = "X-Checked", value = "spf none, urgent" }]
"#;
    let plugins = plugin_dir(&[
        (
            "antispam",
            "weir-plugin-antispam",
            "[weights]\niprev_fail = 0.0\n",
        ),
        ("transport-rules", "weir-plugin-transport-rules", toml),
    ]);
    let gw = Gateway::start(&format!(
        "{}{}[plugins.settings.antispam]\ngrants = [\"dns\", \"modify\"]\n\
         [plugins.settings.transport-rules]\ngrants = [\"body\", \"modify\"]\n{}\
         [[route]]\nname = \"out\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n",
        dns.config(),
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            "local_domains = [\"example.test\"]\nchains = { data = [\"antispam\", \"transport-rules\"] }"
        ),
        sink.addr.port(),
    ));
    let bare = b"From: <x@outside.test>\r\nTo: <r@example.test>\r\nSubject: cheap pills\r\nX-Priority: 1 (Highest)\r\n\r\nBuy now.\r\n";
    assert_eq!(
        send(&gw, "x@outside.test", &["r@example.test"], bare).0,
        250
    );
    let got = sink.wait_for(1);
    assert_eq!(parsed(&got[0]).subject(), Some("[SPAM] cheap pills"));
    assert_eq!(header(&got[0], "X-Checked"), ["spf none, urgent"]);
    assert!(header(&got[0], "X-Spam-Status")[0].starts_with("No, score=2.0"));
}

#[test]
fn every_commented_example_configuration_loads() {
    for (name, package) in [
        ("attachments", "weir-plugin-attachments"),
        ("transport-rules", "weir-plugin-transport-rules"),
    ] {
        let dir = plugin_dir(&[(name, package, "")]);
        let example = format!(
            "{}/../plugins/{name}/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = crate::plugins::plugin_test_ok(
            &dir.path().join(format!("{name}.wasm")),
            &["--hook", "data", "--config", &example],
        );
        assert!(out.contains("verdict:"), "{name}: {out}");
    }
}
