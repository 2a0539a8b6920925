//! Clients that are not ours: Python's smtplib (with STARTTLS) and swaks.
//! `.ci/run` installs swaks; python3 is on every machine.

use std::process::Command;

use crate::harness::{Gateway, listener, test_cert};

#[test]
fn python_smtplib_sends_over_starttls() {
    let certs = tempfile::tempdir().unwrap();
    let (keys, _) = test_cert(certs.path());
    let gw = Gateway::start(&listener("in", &format!("tls = \"starttls\"\n{keys}")));
    let addr = gw.addr("in");
    let script = r#"
import smtplib, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP(host, port, local_hostname="py.test") as s:
    s.starttls(context=ctx)
    s.ehlo("py.test")
    refused = s.sendmail("a@example.org", ["b@example.net", "c@example.net"],
        "Subject: from python\r\n\r\nhello from smtplib\r\n.starts with a dot\r\n")
    assert refused == {}, refused
    code, _ = s.noop()
    assert code == 250
print("sent")
"#;
    let out = Command::new("python3")
        .args(["-c", script, "localhost", &addr.port().to_string()])
        .arg(certs.path().join("cert.pem"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (env, bytes) = &gw.spooled()[0];
    assert_eq!(env.recipients.len(), 2);
    let text = String::from_utf8_lossy(bytes);
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(
        text.ends_with("hello from smtplib\r\n.starts with a dot\r\n"),
        "{text}"
    );
}

#[test]
fn swaks_sends_plain_and_pipelined_and_over_tls() {
    let certs = tempfile::tempdir().unwrap();
    let (keys, _) = test_cert(certs.path());
    let gw = Gateway::start(&listener("in", &format!("tls = \"starttls\"\n{keys}")));
    let server = gw.addr("in").to_string();
    for extra in [&[][..], &["--pipeline"][..], &["--tls"][..]] {
        let out = Command::new("swaks")
            .args([
                "--server",
                &server,
                "--from",
                "a@example.org",
                "--to",
                "b@example.net",
                "--helo",
                "swaks.test",
                "--silent",
                "2",
            ])
            .args(extra)
            .output()
            .expect("swaks is installed (by .ci/run)");
        assert!(
            out.status.success(),
            "swaks {extra:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let spooled = gw.spooled();
    assert_eq!(spooled.len(), 3);
    assert!(spooled[2].0.client.tls.is_some());
}
