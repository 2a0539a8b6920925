//! SMTP AUTH (RFC 4954) on a submission listener: PLAIN and LOGIN over
//! STARTTLS, refused before TLS, required before MAIL; an authenticated
//! client relays and its messages say so. Driven by the test client and by
//! two clients that are not ours, Python's smtplib and swaks.

use std::process::Command;

use base64::Engine;

use crate::harness::{Client, Gateway, listener, test_cert};

/// A submission listener (STARTTLS, AUTH required, no relay by address)
/// with users alice (argon2, from `weir hash-password`) and bob (SHA-512
/// crypt of "secret", in a users file).
fn submission() -> (Gateway, rcgen::Certificate, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (keys, cert) = test_cert(certs.path());
    let hash = Command::new(crate::harness::weir_bin())
        .arg("hash-password")
        .stdin_with("wonderland\n");
    let users = certs.path().join("users");
    std::fs::write(
        &users,
        "# name:hash\nbob:$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1\n",
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "[directory]\nusers_file = \"{}\"\nusers = {{ alice = \"{}\" }}\n{}",
        users.display(),
        hash.trim(),
        listener(
            "submission",
            &format!(
                "tls = \"starttls\"\n{keys}relay_clients = []\nauth_mechanisms = [\"PLAIN\", \"LOGIN\"]\nrequire_auth = true"
            )
        )
    ));
    (gw, cert, certs)
}

trait StdinWith {
    fn stdin_with(&mut self, input: &str) -> String;
}

impl StdinWith for Command {
    /// Runs with `input` on standard input; what it printed.
    fn stdin_with(&mut self, input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn auth_over_starttls_lets_a_user_relay_and_nothing_else_does() {
    let (gw, cert, _certs) = submission();
    let mut c = Client::connect(gw.addr("submission"));
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "AUTH offered in clear: {ehlo:?}"
    );
    let r = c.expect(&format!("AUTH PLAIN {}", b64("\0alice\0wonderland")), 538);
    assert_eq!(r.enhanced(), "5.7.11");
    c.expect("STARTTLS", 220);
    c.start_tls(&cert);
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    // No MAIL before AUTH on this listener.
    assert_eq!(
        c.expect("MAIL FROM:<a@example.org>", 530).enhanced(),
        "5.7.0"
    );
    // Wrong password (answered after a pause: one guess a second), a
    // mechanism not offered, a broken response, a cancelled exchange.
    let started = std::time::Instant::now();
    let r = c.expect(&format!("AUTH PLAIN {}", b64("\0alice\0rabbit")), 535);
    assert_eq!(r.enhanced(), "5.7.8");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(c.expect("AUTH CRAM-MD5", 504).enhanced(), "5.5.4");
    assert_eq!(c.expect("AUTH PLAIN !!notbase64", 501).enhanced(), "5.5.2");
    c.expect("AUTH PLAIN", 334);
    assert_eq!(c.expect("*", 501).enhanced(), "5.0.0");
    // LOGIN, prompt by prompt, with the name in another case.
    let r = c.expect("AUTH LOGIN", 334);
    assert_eq!(r.text(), "VXNlcm5hbWU6");
    c.expect(&b64("Alice"), 334);
    let r = c.expect(&b64("wonderland"), 235);
    assert_eq!(r.enhanced(), "2.7.0");
    assert_eq!(c.expect("AUTH PLAIN", 503).enhanced(), "5.5.1");
    // Authenticated: relaying to any domain is allowed, AUTH= is taken.
    c.expect("MAIL FROM:<alice@example.org> AUTH=<>", 250);
    c.expect("RCPT TO:<someone@elsewhere.example>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: from alice\r\n\r\nhello\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    let (env, bytes) = &gw.spooled()[0];
    assert_eq!(env.client.authenticated_user.as_deref(), Some("alice"));
    let text = String::from_utf8_lossy(bytes);
    assert!(text.contains("with ESMTPSA"), "{text}");
    let log = gw.log();
    assert!(
        log.contains("authentication failed") && log.contains("user=alice"),
        "{log}"
    );
    assert!(!log.contains("rabbit"), "a password in the log: {log}");
}

#[test]
fn smtplib_and_swaks_authenticate_as_real_clients_do() {
    let (gw, _cert, certs) = submission();
    let port = gw.addr("submission").port().to_string();
    // smtplib: STARTTLS then login() (it picks PLAIN or LOGIN itself).
    let script = r#"
import smtplib, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP(host, port, local_hostname="py.test") as s:
    s.starttls(context=ctx)
    s.login("bob", "secret")
    s.sendmail("bob@example.org", ["x@elsewhere.example"], "Subject: smtplib\r\n\r\nhi\r\n")
    # A second login: smtplib returns the 503 rather than raising it.
    code, _ = s.login("bob", "secret")
    assert code == 503, code
print("sent")
"#;
    let out = Command::new("python3")
        .args(["-c", script, "localhost", &port])
        .arg(certs.path().join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // swaks with AUTH LOGIN, and a wrong password refused.
    let swaks = |password: &str| {
        Command::new("swaks")
            .args([
                "--server",
                &format!("localhost:{port}"),
                "--tls",
                "--tls-verify",
            ])
            .arg("--tls-ca-path")
            .arg(certs.path().join("cert.pem"))
            .args(["--auth", "LOGIN", "--auth-user", "alice"])
            .args(["--auth-password", password, "--from", "alice@example.org"])
            .args(["--to", "y@elsewhere.example", "--helo", "swaks.test"])
            .output()
            .unwrap()
    };
    let out = swaks("wonderland");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("235 2.7.0"), "{text}");
    let out = swaks("queen");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("535 5.7.8"),
        "{text}"
    );
    let users: Vec<_> = gw
        .spooled()
        .into_iter()
        .map(|(e, _)| e.client.authenticated_user.unwrap_or_default())
        .collect();
    assert_eq!(users, ["bob", "alice"]);
}

#[test]
fn auth_plain_may_have_commands_pipelined_behind_it_and_a_challenge_may_not() {
    let (gw, cert, _certs) = submission();
    let tls = |c: &mut Client| {
        c.expect("EHLO client.test", 250);
        c.expect("STARTTLS", 220);
        c.start_tls(&cert);
        c.expect("EHLO client.test", 250);
    };
    // RFC 4954 4: PLAIN with its initial response completes in one round
    // trip, so MAIL and RCPT may follow it in the same write.
    let mut c = Client::connect(gw.addr("submission"));
    tls(&mut c);
    c.send(
        format!(
            "AUTH PLAIN {}\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\n",
            b64("\0alice\0wonderland")
        )
        .as_bytes(),
    );
    assert_eq!(c.read_reply().code, 235);
    assert_eq!(c.read_reply().code, 250);
    assert_eq!(c.read_reply().code, 250);
    // An initial response of 12,000 octets is a line AUTH may have (a
    // Kerberos ticket is that long): these zeros are refused as no PLAIN
    // response, not as a line too long.
    let mut c = Client::connect(gw.addr("submission"));
    tls(&mut c);
    let long = format!("AUTH PLAIN {}", "A".repeat(12_000));
    assert_eq!(c.expect(&long, 501).enhanced(), "5.5.2");
    // A response sent before the 334 asked for it is a synchronization
    // error: the connection is closed, as for any other.
    let mut c = Client::connect(gw.addr("submission"));
    tls(&mut c);
    c.send(format!("AUTH LOGIN\r\n{}\r\n", b64("alice")).as_bytes());
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.5.0"), "{r:?}");
    c.expect_closed();
}
