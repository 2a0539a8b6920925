//! Email authentication through a live gateway: SPF, DKIM, DMARC (with
//! the bundled auth-policy plugin deciding), the Authentication-Results
//! header as it arrives downstream, DKIM signing checked by dkimpy (an
//! independent implementation) and dkimpy's signatures checked by weir.
//! DNS is the test server; the client is 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::dns::{Records, TestDns, txt};
use crate::harness::{Client, Gateway, listener};
use crate::plugins::{plugin_dir, plugins_table};
use crate::sink::{Delivered, Sink, SinkOptions};

fn key_path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/dkim")
        .join(file)
}

fn public_key(file: &str) -> String {
    std::fs::read_to_string(key_path(file))
        .unwrap()
        .trim()
        .to_string()
}

/// The domains of the tests and what they publish.
fn records() -> Records {
    let mut r = Records::new();
    r.add("pass.test", txt("v=spf1 ip4:127.0.0.1 -all"))
        .add("fail.test", txt("v=spf1 ip4:192.0.2.1 -all"))
        .add("soft.test", txt("v=spf1 ~all"))
        .exists("none.test")
        .servfail("temp.test")
        // DKIM, DMARC: SPF says nothing (neutral), so DKIM decides.
        .add("dk.test", txt("v=spf1 ?all"))
        .add(
            "s1._domainkey.dk.test",
            txt(&format!("v=DKIM1; k=rsa; p={}", public_key("rsa.pub"))),
        )
        .add("_dmarc.dk.test", txt("v=DMARC1; p=reject"))
        .add("dmnone.test", txt("v=spf1 ?all"))
        .add("_dmarc.dmnone.test", txt("v=DMARC1; p=none"))
        .add("dmq.test", txt("v=spf1 ?all"))
        .add("_dmarc.dmq.test", txt("v=DMARC1; p=quarantine"))
        .add("dmr.test", txt("v=spf1 ?all"))
        .add("_dmarc.dmr.test", txt("v=DMARC1; p=reject"))
        // pct=0: the policy applies to no message, the next lower does.
        .add("dmpct.test", txt("v=spf1 ?all"))
        .add("_dmarc.dmpct.test", txt("v=DMARC1; p=reject; pct=0"))
        // Bad input.
        .add("bad.test", txt("v=spf1 ip4:127.0.0.1 -all"))
        .add(
            "junk._domainkey.bad.test",
            txt(&format!("v=DKIM1; k=rsa; p={}", "A".repeat(3000))),
        )
        .timeout("slow._domainkey.bad.test")
        .servfail("_dmarc.bad.test");
    r
}

/// The values of every `name` field of a message, unfolded.
fn header_values(data: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_string());
        }
    }
    let prefix = format!("{}:", name.to_ascii_lowercase());
    fields
        .iter()
        .filter(|f| f.to_ascii_lowercase().starts_with(&prefix))
        .map(|f| f[prefix.len()..].trim().to_string())
        .collect()
}

fn message(from: &str, subject: &str, extra_headers: &str) -> String {
    format!(
        "{extra_headers}From: Sender <{from}>\r\nTo: <rcpt@example.test>\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nHello.\r\n"
    )
}

/// Sends `body` from `from` and returns the final reply's code, enhanced
/// code and text.
fn send(gw: &Gateway, from: &str, body: &str) -> (u16, String, String) {
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    c.expect("RCPT TO:<rcpt@example.test>", 250);
    c.expect("DATA", 354);
    // Dot-stuffing is not needed: no line starts with a dot.
    c.send(body.as_bytes());
    c.send(b".\r\n");
    let r = c.read_reply();
    c.cmd("QUIT");
    (r.code, r.enhanced().to_string(), r.text())
}

fn delivered<'a>(got: &'a [Delivered], subject: &str) -> &'a Delivered {
    got.iter()
        .find(|d| {
            header_values(&d.data, "Subject")
                .first()
                .is_some_and(|s| s == subject)
        })
        .unwrap_or_else(|| panic!("{subject} was not delivered"))
}

/// Our Authentication-Results field of a delivered message (there must
/// be exactly one).
fn our_results(d: &Delivered) -> String {
    let ours: Vec<String> = header_values(&d.data, "Authentication-Results")
        .into_iter()
        .filter(|v| v.starts_with("mx.test;"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one Authentication-Results of ours: {ours:?}"
    );
    ours[0].clone()
}

fn gateway(dns: &TestDns, sink: &Sink, extra: &str) -> (Gateway, tempfile::TempDir) {
    let plugins = plugin_dir(&[("auth-policy", "weir-plugin-auth-policy", "")]);
    let gw = Gateway::start(&format!(
        "{}{}{}[plugins.settings.auth-policy]\ngrants = [\"modify\"]\n\
         [[route]]\nname = \"out\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n{extra}",
        listener("in", "chains = { data = [\"auth-policy\"] }"),
        dns.config(),
        plugins_table(plugins.path(), ""),
        sink.addr.port(),
    ));
    (gw, plugins)
}

#[test]
fn spf_dkim_and_dmarc_decide_and_the_results_arrive_downstream() {
    let dns = TestDns::serve(records());
    let sink = Sink::start(SinkOptions::default());
    let (gw, _plugins) = gateway(&dns, &sink, "");

    // SPF pass, with a forged Authentication-Results of ours (removed) and
    // another server's (kept).
    let forged = "Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n\
                  Authentication-Results: other.example; spf=fail smtp.mailfrom=x@pass.test\r\n";
    let r = send(
        &gw,
        "a@pass.test",
        &message("a@pass.test", "spf-pass", forged),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // SPF fail: refused at the end of data (DMARC did not excuse it).
    let r = send(&gw, "a@fail.test", &message("a@fail.test", "spf-fail", ""));
    assert_eq!((r.0, r.1.as_str()), (550, "5.7.23"), "{r:?}");
    assert!(
        r.2.contains("fail.test") && r.2.contains("127.0.0.1"),
        "{r:?}"
    );
    // Softfail, none, temperror: accepted, and said downstream.
    for (from, subject) in [
        ("a@soft.test", "spf-softfail"),
        ("a@none.test", "spf-none"),
        ("a@temp.test", "spf-temperror"),
    ] {
        let r = send(&gw, from, &message(from, subject, ""));
        assert_eq!(r.0, 250, "{subject}: {r:?}");
    }

    // DKIM pass (RSA, signed for dk.test): DMARC passes through DKIM.
    let signer = weir::auth::sign::Signer::load(&[weir::config::DkimSignConfig {
        domain: "dk.test".into(),
        selector: "s1".into(),
        key: key_path("rsa.pem"),
        headers: None,
    }])
    .unwrap();
    let sign = |m: &str| format!("{}{m}", signer.sign(m.as_bytes()).concat());
    let good = sign(&message("a@dk.test", "dkim-pass", ""));
    assert!(good.starts_with("DKIM-Signature:"), "{good}");
    let r = send(&gw, "bounce@dk.test", &good);
    assert_eq!(r.0, 250, "{r:?}");
    // The body changed after signing: DKIM fails, so does DMARC, and
    // dk.test's policy is reject.
    let changed = sign(&message("a@dk.test", "dkim-fail", "")).replace("Hello.", "Hello!");
    let r = send(&gw, "bounce@dk.test", &changed);
    assert_eq!((r.0, r.1.as_str()), (550, "5.7.1"), "{r:?}");
    assert!(r.2.contains("DMARC") && r.2.contains("dk.test"), "{r:?}");

    // DMARC fail under each policy.
    let r = send(
        &gw,
        "a@dmnone.test",
        &message("a@dmnone.test", "dmarc-none", ""),
    );
    assert_eq!(r.0, 250, "p=none delivers: {r:?}");
    let r = send(
        &gw,
        "a@dmr.test",
        &message("a@dmr.test", "dmarc-reject", ""),
    );
    assert_eq!((r.0, r.1.as_str()), (550, "5.7.1"), "{r:?}");
    assert!(r.2.contains("DMARC policy (reject) of dmr.test"), "{r:?}");
    // Quarantine: accepted into the quarantine, never delivered.
    let r = send(
        &gw,
        "a@dmq.test",
        &message("a@dmq.test", "dmarc-quarantine", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // p=reject with pct=0: the next lower policy, quarantine.
    let r = send(
        &gw,
        "a@dmpct.test",
        &message("a@dmpct.test", "dmarc-pct", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let held = gw.cli(&["quarantine", "ls"]);
    let held = String::from_utf8_lossy(&held.stdout);
    assert_eq!(held.lines().count(), 2, "{held}");
    assert!(
        held.contains("<a@dmq.test>")
            && held.contains("[auth-policy at data: DMARC fail, policy quarantine of dmq.test]"),
        "{held}"
    );

    let got = sink.wait_for(6);
    assert_eq!(got.len(), 6, "only the accepted messages arrive");

    let pass = delivered(&got, "spf-pass");
    let ar = our_results(pass);
    assert!(
        ar.contains("spf=pass (mx.test: domain of a@pass.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=a@pass.test"),
        "{ar}"
    );
    assert!(
        ar.contains("spf=none") && ar.contains("smtp.helo=client.test"),
        "{ar}"
    );
    assert!(ar.contains("dkim=none"), "{ar}");
    assert!(ar.contains("dmarc=none header.from=pass.test"), "{ar}");
    assert!(ar.contains("iprev="), "{ar}");
    let all = header_values(&pass.data, "Authentication-Results");
    assert!(
        all.iter().any(|v| v.starts_with("other.example;")),
        "another server's results are kept: {all:?}"
    );
    assert!(
        !all.iter().any(|v| v.contains("bank.test")),
        "the forged results claiming our name are gone: {all:?}"
    );

    for (subject, expect) in [
        ("spf-softfail", "spf=softfail"),
        ("spf-none", "spf=none"),
        ("spf-temperror", "spf=temperror"),
    ] {
        let ar = our_results(delivered(&got, subject));
        assert!(ar.contains(expect), "{subject}: {ar}");
    }
    let ar = our_results(delivered(&got, "dkim-pass"));
    assert!(
        ar.contains("dkim=pass header.d=dk.test header.s=s1 header.a=rsa-sha256"),
        "{ar}"
    );
    assert!(
        ar.contains("dmarc=pass header.from=dk.test policy.dmarc=reject"),
        "{ar}"
    );
    let ar = our_results(delivered(&got, "dmarc-none"));
    assert!(
        ar.contains("dmarc=fail") && ar.contains("policy.dmarc=none"),
        "{ar}"
    );

    let log = gw.log();
    assert!(
        log.contains("SPF could not be evaluated"),
        "temperror logged"
    );
}

#[test]
fn bad_signatures_records_and_dns_failures_are_errors_not_crashes() {
    let dns = TestDns::serve(records());
    let sink = Sink::start(SinkOptions::default());
    let (gw, _plugins) = gateway(&dns, &sink, "");
    let cases = [
        (
            "malformed",
            "DKIM-Signature: v=1; a=rsa-sha256; d=bad.test; this is not a tag list\r\n",
            "dkim=permerror",
        ),
        (
            "huge-key",
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=bad.test; s=junk;\r\n h=From:Subject; bh=yZQq1c8wjBl0fZ4Wc/oraMCAG1mZJv5v/hlvyFy+t6A=; b=AAAA\r\n",
            "dkim=permerror",
        ),
        (
            "key-timeout",
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=bad.test; s=slow;\r\n h=From:Subject; bh=yZQq1c8wjBl0fZ4Wc/oraMCAG1mZJv5v/hlvyFy+t6A=; b=AAAA\r\n",
            "dkim=temperror",
        ),
    ];
    for (subject, header, _) in &cases {
        let r = send(&gw, "a@bad.test", &message("a@bad.test", subject, header));
        assert_eq!(r.0, 250, "{subject}: {r:?}");
    }
    // A flood of signatures, broken and with long domains, beside a forged
    // Authentication-Results of ours: at most 5 are checked, the results
    // fit in a field, and the forged one still goes.
    let long = format!("{0}.{0}.{0}.bad.test", "x".repeat(60));
    let mut flood =
        String::from("Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n");
    for i in 0..40 {
        flood.push_str(&format!(
            "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d={long}; s=s{i};\r\n h=From; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b=AAAA\r\n"
        ));
        flood.push_str("DKIM-Signature: v=1; a=rsa-sha256; d=bad.test; this is not a tag list\r\n");
    }
    let r = send(&gw, "a@bad.test", &message("a@bad.test", "flood", &flood));
    assert_eq!(r.0, 250, "flood: {r:?}");
    let got = sink.wait_for(cases.len() + 1);
    let flooded = delivered(&got, "flood");
    let ar = our_results(flooded);
    // mail-auth drops the 40 it cannot parse: one permerror says so.
    assert!(
        ar.contains("dkim=policy (35 more DKIM-Signature fields not checked: at most 5 are)"),
        "{ar}"
    );
    assert!(
        ar.contains("dkim=permerror (40 malformed DKIM-Signature fields)"),
        "{ar}"
    );
    assert_eq!(ar.matches("dkim=").count(), 7, "{ar}");
    let all = header_values(&flooded.data, "Authentication-Results");
    assert!(
        !all.iter().any(|v| v.contains("bank.test")),
        "the forged results claiming our name are gone: {all:?}"
    );
    let text = String::from_utf8_lossy(&flooded.data);
    let head = text.split("\r\n\r\n").next().unwrap();
    assert!(head.split("\r\n").all(|l| l.len() <= 998), "{head}");
    for (subject, _, expect) in &cases {
        let ar = our_results(delivered(&got, subject));
        assert!(ar.contains(expect), "{subject}: {ar}");
        // _dmarc.bad.test answers SERVFAIL.
        assert!(ar.contains("dmarc=temperror"), "{subject}: {ar}");
        assert!(ar.contains("spf=pass"), "{subject}: {ar}");
    }
    let log = gw.log();
    for needle in [
        "method=\"dkim\" result=\"permerror\"",
        "method=\"dkim\" result=\"temperror\"",
        "method=\"dmarc\" result=\"temperror\"",
    ] {
        assert!(log.contains(needle), "{needle} in the log");
    }
    assert!(!log.contains("panicked"), "no panic");
}

/// Python with dkimpy (Debian's python3-dkim), its DNS pointed at `dns`.
fn dkimpy(dns: &TestDns, script: &str, args: &[&str]) -> std::process::Output {
    let prelude = format!(
        "import sys, dns.resolver, dkim\n\
         r = dns.resolver.Resolver(configure=False)\n\
         r.nameservers = ['127.0.0.1']\nr.port = {}\n\
         dns.resolver.default_resolver = r\n",
        dns.addr.port()
    );
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .args(args)
        .output()
        .expect("/usr/bin/python3 with python3-dkim (installed by .ci/run)")
}

#[test]
fn weir_signs_what_it_sends_and_dkimpy_verifies_it_and_the_other_way() {
    let mut records = records();
    records
        .add(
            "rsa._domainkey.corp.test",
            txt(&format!("v=DKIM1; k=rsa; p={}", public_key("rsa.pub"))),
        )
        .add(
            "ed._domainkey.corp.test",
            txt(&format!(
                "v=DKIM1; k=ed25519; p={}",
                public_key("ed25519.pub")
            )),
        )
        .add("corp.test", txt("v=spf1 ?all"))
        .add(
            "py._domainkey.py.test",
            txt(&format!("v=DKIM1; k=rsa; p={}", public_key("rsa.pub"))),
        )
        .add(
            "pyed._domainkey.py.test",
            txt(&format!(
                "v=DKIM1; k=ed25519; p={}",
                public_key("ed25519.pub")
            )),
        )
        .add("py.test", txt("v=spf1 ?all"))
        .add("_dmarc.py.test", txt("v=DMARC1; p=reject"));
    let dns = TestDns::serve(records);
    let sink = Sink::start(SinkOptions::default());
    let signing = format!(
        "[[dkim.sign]]\ndomain = \"corp.test\"\nselector = \"rsa\"\nkey = \"{}\"\n\
         [[dkim.sign]]\ndomain = \"corp.test\"\nselector = \"ed\"\nkey = \"{}\"\n",
        key_path("rsa.pem").display(),
        key_path("ed25519.pem").display()
    );
    let (gw, _plugins) = gateway(&dns, &sink, &signing);

    // Weir signs mail from corp.test (its client may relay) with both keys.
    let r = send(
        &gw,
        "a@corp.test",
        &message("a@corp.test", "signed-by-weir", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // Not mail of another domain.
    let r = send(&gw, "a@pass.test", &message("a@pass.test", "not-ours", ""));
    assert_eq!(r.0, 250, "{r:?}");

    // dkimpy signs (RSA and Ed25519, relaxed/simple as it does by default).
    let dir = tempfile::tempdir().unwrap();
    let unsigned = dir.path().join("unsigned.eml");
    std::fs::write(&unsigned, message("a@py.test", "signed-by-dkimpy", "")).unwrap();
    let out = dkimpy(
        &dns,
        "m = open(sys.argv[1], 'rb').read()\n\
         rsa = dkim.sign(m, b'py', b'py.test', open(sys.argv[2], 'rb').read())\n\
         ed = dkim.sign(m, b'pyed', b'py.test', open(sys.argv[3], 'rb').read(), signature_algorithm=b'ed25519-sha256')\n\
         sys.stdout.buffer.write(ed + rsa + m)\n",
        &[
            unsigned.to_str().unwrap(),
            key_path("rsa.pem").to_str().unwrap(),
            key_path("ed25519.dkimpy.key").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "dkimpy signs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py_signed = String::from_utf8(out.stdout)
        .unwrap()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    let r = send(&gw, "a@py.test", &py_signed);
    assert_eq!(r.0, 250, "dkimpy's signatures pass DMARC in weir: {r:?}");

    let got = sink.wait_for(3);
    let ours = delivered(&got, "signed-by-weir");
    let sigs = header_values(&ours.data, "DKIM-Signature");
    assert_eq!(sigs.len(), 2, "one signature per key: {sigs:?}");
    assert!(
        sigs.iter()
            .any(|s| s.contains("a=rsa-sha256") && s.contains("s=rsa")),
        "{sigs:?}"
    );
    assert!(
        sigs.iter()
            .any(|s| s.contains("a=ed25519-sha256") && s.contains("s=ed")),
        "{sigs:?}"
    );
    for s in &sigs {
        let h = s
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_ascii_lowercase();
        let froms = h.split(':').filter(|n| n.trim() == "from").count();
        assert_eq!(froms, 2, "From oversigned: h={h}");
    }
    assert!(
        header_values(&delivered(&got, "not-ours").data, "DKIM-Signature").is_empty(),
        "mail of a domain without keys is not signed"
    );
    // dkimpy verifies both of weir's signatures, as the sink received them.
    let signed = dir.path().join("signed.eml");
    std::fs::write(&signed, &ours.data).unwrap();
    let out = dkimpy(
        &dns,
        "m = open(sys.argv[1], 'rb').read()\n\
         ok = [dkim.DKIM(m).verify(idx=i) for i in range(2)]\n\
         print(ok)\nsys.exit(0 if all(ok) else 1)\n",
        &[signed.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "dkimpy verifies weir's signatures: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Weir verified dkimpy's.
    let ar = our_results(delivered(&got, "signed-by-dkimpy"));
    assert!(
        ar.contains("dkim=pass header.d=py.test header.i=@py.test header.s=py header.a=rsa-sha256"),
        "{ar}"
    );
    assert!(
        ar.contains(
            "dkim=pass header.d=py.test header.i=@py.test header.s=pyed header.a=ed25519-sha256"
        ),
        "{ar}"
    );
    assert!(ar.contains("dmarc=pass header.from=py.test"), "{ar}");
}
