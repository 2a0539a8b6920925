//! STARTTLS (RFC 3207), TLS required before MAIL, and implicit TLS (RFC
//! 8314), with a certificate made for the test.

use crate::harness::{Client, Gateway, listener, test_cert};

fn tls_gateway(mode: &str) -> (Gateway, rcgen::Certificate) {
    let certs = tempfile::tempdir().unwrap();
    let (keys, cert) = test_cert(certs.path());
    let gw = Gateway::start(&listener("in", &format!("tls = \"{mode}\"\n{keys}")));
    // The gateway has read its certificate at start.
    drop(certs);
    (gw, cert)
}

#[test]
fn starttls_then_a_message_records_the_tls_parameters() {
    let (gw, cert) = tls_gateway("starttls");
    let mut c = Client::connect(gw.addr("in"));
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    c.expect("STARTTLS", 220);
    c.start_tls(&cert);
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(
        !ehlo.lines.iter().any(|l| l == "STARTTLS"),
        "offered twice: {ehlo:?}"
    );
    assert_eq!(c.expect("STARTTLS", 503).enhanced(), "5.5.1");
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: tls\r\n\r\nsecret\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    let (env, bytes) = &gw.spooled()[0];
    let tls = env.client.tls.as_ref().expect("TLS recorded");
    assert_eq!(tls.version, "TLSv1_3");
    let text = String::from_utf8_lossy(bytes);
    assert!(text.contains("with ESMTPS\r\n\t(TLSv1_3 TLS13_"), "{text}");
}

#[test]
fn plaintext_pipelined_behind_starttls_is_thrown_away() {
    let (gw, cert) = tls_gateway("starttls");
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<b@example.net>\r\n");
    assert_eq!(c.read_reply().code, 220);
    c.start_tls(&cert);
    // The first reply over TLS answers our EHLO: the injected commands were
    // never executed, and the session starts afresh.
    let ehlo = c.expect("EHLO client.test", 250);
    assert_eq!(ehlo.lines[0], "mx.test");
    assert_eq!(c.expect("RCPT TO:<b@example.net>", 503).enhanced(), "5.5.1");
    assert!(gw.log().contains("plaintext sent after STARTTLS discarded"));
}

#[test]
fn the_session_needs_ehlo_again_after_starttls() {
    let (gw, cert) = tls_gateway("starttls");
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    c.start_tls(&cert);
    assert_eq!(
        c.expect("MAIL FROM:<a@example.org>", 503).enhanced(),
        "5.5.1"
    );
}

#[test]
fn required_tls_refuses_mail_before_starttls() {
    let (gw, cert) = tls_gateway("required");
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("NOOP", 250);
    let r = c.expect("MAIL FROM:<a@example.org>", 530);
    assert_eq!(r.enhanced(), "5.7.0");
    c.expect("STARTTLS", 220);
    c.start_tls(&cert);
    let r = c.send_mail(
        "a@example.org",
        &["b@example.net"],
        "Subject: t\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250);
}

#[test]
fn implicit_tls_speaks_tls_from_the_first_byte() {
    let (gw, cert) = tls_gateway("implicit");
    let mut c = Client::connect_implicit_tls(gw.addr("in"), &cert);
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"));
    let r = c.send_mail(
        "a@example.org",
        &["b@example.net"],
        "Subject: t\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250);
    assert!(gw.spooled()[0].0.client.tls.is_some());
}
