//! The plain receive path: a message goes in and is found whole in the
//! spool; BDAT; DSN parameters; relay control; limits.

use crate::harness::{Client, Gateway, listener};

#[test]
fn a_message_is_spooled_whole_with_its_envelope() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    let body = "From: a@example.org\r\nSubject: hello\r\n\r\nline one\r\n..leading dot\r\n";
    let r = c.send_mail("a@example.org", &["b@example.net", "c@example.com"], body);
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.text().starts_with("2.0.0 OK queued as "), "{r:?}");
    let id = r.text().rsplit(' ').next().unwrap().to_string();
    c.expect("QUIT", 221);

    let spooled = gw.spooled();
    assert_eq!(spooled.len(), 1);
    let (env, bytes) = &spooled[0];
    assert_eq!(env.id.to_string(), id);
    assert_eq!(env.sender, "a@example.org");
    let rcpts: Vec<_> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["b@example.net", "c@example.com"]);
    assert_eq!(env.client.helo, "client.test");
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Weir) with ESMTP\r\n"
        ),
        "{text}"
    );
    assert!(text.contains(&format!("\tid {id}")), "{text}");
    // Dot-unstuffed, otherwise byte for byte.
    assert!(
        text.ends_with(&body.replace("..leading", ".leading")),
        "{text}"
    );

    // The operator's view.
    let out = gw.cli(&["queue", "ls"]);
    let ls = String::from_utf8(out.stdout).unwrap();
    assert!(
        ls.starts_with(&id) && ls.contains("<a@example.org> b@example.net c@example.com"),
        "{ls}"
    );
    let out = gw.cli(&["queue", "cat", &id]);
    assert_eq!(out.stdout, *bytes);
}

#[test]
fn dsn_parameters_and_null_sender_are_kept_in_the_envelope() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect(
        "MAIL FROM:<> RET=HDRS ENVID=QQ314159 BODY=8BITMIME SIZE=100",
        250,
    );
    c.expect(
        "RCPT TO:<x@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@example.net",
        250,
    );
    c.expect("RCPT TO:<y@example.net> NOTIFY=NEVER", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: dsn\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    let (env, _) = &gw.spooled()[0];
    assert_eq!(env.sender, "");
    assert_eq!(env.ret, Some(weir::queue::Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("QQ314159"));
    assert_eq!(env.body, weir::queue::BodyType::EightBitMime);
    assert!(env.recipients[0].notify.success && env.recipients[0].notify.failure);
    assert_eq!(env.recipients[0].orcpt.as_deref(), Some("x@example.net"));
    assert!(env.recipients[1].notify.never);
}

#[test]
fn bdat_chunks_make_one_message() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.lines.iter().any(|l| l == "CHUNKING"), "{ehlo:?}");
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    let part1 = b"Subject: chunks\r\n\r\n";
    let part2 = b"first\r\n.not stuffed\r\n";
    c.send(format!("BDAT {}\r\n", part1.len()).as_bytes());
    c.send(part1);
    assert_eq!(c.read_reply().code, 250);
    // A chunk and the last (empty) one pipelined in one write.
    let mut both = format!("BDAT {}\r\n", part2.len()).into_bytes();
    both.extend_from_slice(part2);
    both.extend_from_slice(b"BDAT 0 LAST\r\n");
    c.send(&both);
    assert_eq!(c.read_reply().code, 250);
    let last = c.read_reply();
    assert_eq!(last.code, 250);
    assert!(last.text().contains("queued as"), "{last:?}");
    let (_, bytes) = &gw.spooled()[0];
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.ends_with("Subject: chunks\r\n\r\nfirst\r\n.not stuffed\r\n"),
        "{text}"
    );
    // BDAT without a transaction is consumed whole and refused, in step.
    c.send(b"BDAT 5 LAST\r\nhello");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (503, "5.5.1"));
    c.expect("NOOP", 250);
}

#[test]
fn relay_is_refused_outside_the_relay_ranges_but_local_domains_are_accepted() {
    let gw = Gateway::start(&listener(
        "mx",
        "relay_clients = []\nlocal_domains = [\"example.org\"]",
    ));
    let mut c = Client::connect(gw.addr("mx"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<someone@elsewhere.test>", 250);
    c.expect("RCPT TO:<user@example.org>", 250);
    c.expect("RCPT TO:<user@EXAMPLE.ORG>", 250);
    let r = c.expect("RCPT TO:<victim@other.test>", 554);
    assert_eq!(r.enhanced(), "5.7.1");
    assert!(r.text().contains("Relay access denied"));
    // Postmaster without a domain is always accepted (RFC 5321 4.5.1).
    c.expect("RCPT TO:<Postmaster>", 250);
}

#[test]
fn the_embedded_default_relays_only_for_loopback() {
    // The default listener's relay ranges are loopback; a listener that
    // keeps the default relay ranges but sees a non-loopback client is
    // covered by the unit test of `may_relay`. Here: loopback may relay.
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<anyone@anywhere.test>", 250);
}

#[test]
fn clients_outside_the_allowed_ranges_are_refused_at_connect() {
    let gw = Gateway::start(&listener("in", "allowed_clients = [\"192.0.2.0/24\"]"));
    let mut c = Client::connect_raw(gw.addr("in"));
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.7.1"));
    c.expect_closed();
}

#[test]
fn too_many_recipients_get_452() {
    let gw = Gateway::start(&listener("in", "max_recipients = 2"));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<1@example.net>", 250);
    c.expect("RCPT TO:<2@example.net>", 250);
    let r = c.expect("RCPT TO:<3@example.net>", 452);
    assert_eq!(r.enhanced(), "4.5.3");
    c.expect("DATA", 354);
    c.send(b"Subject: two\r\n\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    assert_eq!(gw.spooled()[0].0.recipients.len(), 2);
}

#[test]
fn commands_out_of_order_get_503_and_the_session_goes_on() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    assert_eq!(
        c.expect("MAIL FROM:<a@example.org>", 503).enhanced(),
        "5.5.1"
    );
    c.expect("EHLO client.test", 250);
    assert_eq!(c.expect("RCPT TO:<b@example.net>", 503).enhanced(), "5.5.1");
    c.expect("DATA", 503);
    c.expect("MAIL FROM:<a@example.org>", 250);
    assert_eq!(c.expect("DATA", 554).enhanced(), "5.5.1");
    c.expect("RSET", 250);
    c.expect("VRFY postmaster", 252);
    c.expect("HELP", 214);
    c.expect("NOOP", 250);
    assert_eq!(c.expect("XYZZY", 500).enhanced(), "5.5.1");
    c.expect("QUIT", 221);
    c.expect_closed();
}

#[test]
fn an_empty_message_ends_at_the_first_dot() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    let r = c.send_mail("a@example.org", &["b@example.net"], "");
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("NOOP", 250);
}

#[test]
fn text_lines_over_1000_octets_are_accepted_unchanged() {
    // The documented policy (docs/config.md): kept as sent, like Postfix
    // and Exchange do, rather than refused or folded.
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    let long = "w".repeat(5000);
    let body = format!("Subject: long\r\n\r\n{long}\r\nshort\r\n");
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.net"], &body).code,
        250
    );
    let (_, bytes) = &gw.spooled()[0];
    assert!(bytes.ends_with(body.as_bytes()));
}
