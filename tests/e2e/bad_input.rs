//! Hostile and broken input: SMTP smuggling, over-long lines, control
//! characters, oversize messages, slow clients, connection floods.

use std::time::{Duration, Instant};

use crate::harness::{Client, Gateway, listener};

/// Each sequence that must never end DATA, with a second message hidden
/// behind it. The hidden message must never be accepted; the first is
/// refused with 521 and the connection closed.
#[test]
fn smuggling_sequences_never_end_the_message() {
    let gw = Gateway::start(&listener("in", ""));
    let cases: &[(&str, &[u8])] = &[
        ("bare LF", b"Subject: a\r\n\r\nline\nnext\r\n"),
        ("bare CR", b"Subject: a\r\n\r\nline\rnext\r\n"),
        ("<LF>.<LF>", b"Subject: a\r\n\r\nx\n.\n"),
        ("<LF>.<CR><LF>", b"Subject: a\r\n\r\nx\n.\r\n"),
        ("<CR>.<LF>", b"Subject: a\r\n\r\nx\r.\n"),
        ("<CR>.<CR><LF>", b"Subject: a\r\n\r\nx\r.\r\n"),
        ("<CR><CR><LF>.<CR><LF>", b"Subject: a\r\n\r\nx\r\r\n.\r\n"),
    ];
    for (name, head) in cases {
        let mut c = Client::connect(gw.addr("in"));
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<first@example.org>", 250);
        c.expect("RCPT TO:<b@example.net>", 250);
        c.expect("DATA", 354);
        let mut payload = head.to_vec();
        payload.extend_from_slice(
            b"MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\nQUIT\r\n",
        );
        c.send(&payload);
        let r = c.read_reply();
        assert_eq!((r.code, r.enhanced()), (521, "5.5.2"), "{name}: {r:?}");
        c.expect_closed();
    }
    let spooled = gw.spooled();
    assert!(
        spooled.is_empty(),
        "nothing may be accepted: {:?}",
        spooled.iter().map(|s| &s.0.sender).collect::<Vec<_>>()
    );
    // The gateway still serves.
    let mut c = Client::connect(gw.addr("in"));
    assert_eq!(
        c.send_mail(
            "a@example.org",
            &["b@example.net"],
            "Subject: ok\r\n\r\nok\r\n"
        )
        .code,
        250
    );
}

#[test]
fn command_lines_over_512_octets_get_500_and_the_session_stays_in_step() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    // Just over the limit: 513 octets with CRLF.
    let line = format!("NOOP {}", "x".repeat(513 - 5 - 2));
    let r = c.expect(&line, 500);
    assert_eq!(r.enhanced(), "5.5.2");
    // Exactly 512 is fine.
    c.expect(&format!("NOOP {}", "x".repeat(512 - 5 - 2)), 250);
    // A huge line sent in pieces is read with a bounded buffer and answered once.
    for _ in 0..20 {
        c.send("y".repeat(4000).as_bytes());
    }
    c.send(b"\r\n");
    assert_eq!(c.read_reply().code, 500);
    c.expect("NOOP", 250);
    // MAIL may be longer: RFC 3461/1870/6531 parameters raise the limit.
    let envid = "E".repeat(100);
    c.expect(
        &format!(
            "MAIL FROM:<{}@example.org> SIZE=1000 BODY=8BITMIME RET=FULL ENVID={envid} SMTPUTF8",
            "a".repeat(64)
        ),
        250,
    );
}

#[test]
fn over_long_local_parts_and_domains_get_501() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    let long_local = "l".repeat(65);
    let r = c.expect(&format!("MAIL FROM:<{long_local}@example.org>"), 501);
    assert_eq!(r.enhanced(), "5.1.7");
    let long_domain = format!("{}.example", "d".repeat(250));
    c.expect(&format!("MAIL FROM:<a@{long_domain}>"), 501);
    c.expect("MAIL FROM:<a@example.org>", 250);
    let r = c.expect(&format!("RCPT TO:<{long_local}@example.net>"), 501);
    assert_eq!(r.enhanced(), "5.1.3");
    c.expect(&format!("RCPT TO:<b@{long_domain}>"), 501);
    c.expect(&format!("RCPT TO:<{}@example.net>", "l".repeat(64)), 250);
}

#[test]
fn cr_lf_or_nul_inside_arguments_get_501() {
    let gw = Gateway::start(&listener("in", "max_errors = 100"));
    let mut c = Client::connect(gw.addr("in"));
    let cases: &[&[u8]] = &[
        b"EHLO cli\rent.test\r\n",
        b"EHLO cli\nent.test\r\n",
        b"EHLO cli\0ent.test\r\n",
    ];
    for case in cases {
        c.send(case);
        let r = c.read_reply();
        assert_eq!(r.code, 501, "{case:?}: {r:?}");
    }
    c.expect("EHLO client.test", 250);
    for case in [
        &b"MAIL FROM:<a\r@example.org>\r\n"[..],
        b"MAIL FROM:<a\n@example.org>\r\n",
        b"MAIL FROM:<a\0@example.org>\r\n",
    ] {
        c.send(case);
        assert_eq!(c.read_reply().code, 501, "{case:?}");
    }
    c.expect("MAIL FROM:<a@example.org>", 250);
    for case in [
        &b"RCPT TO:<b\r@example.net>\r\n"[..],
        b"RCPT TO:<b\n@example.net>\r\n",
        b"RCPT TO:<b\0@example.net>\r\n",
    ] {
        c.send(case);
        assert_eq!(c.read_reply().code, 501, "{case:?}");
    }
    c.expect("RCPT TO:<b@example.net>", 250);
}

#[test]
fn a_message_over_the_size_limit_gets_552_after_its_end() {
    let gw = Gateway::start(&listener("in", "max_message_size = 1000"));
    let mut c = Client::connect(gw.addr("in"));
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.lines.iter().any(|l| l == "SIZE 1000"), "{ehlo:?}");
    // Declared too large: refused at once.
    let r = c.expect("MAIL FROM:<a@example.org> SIZE=1001", 552);
    assert_eq!(r.enhanced(), "5.3.4");
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    c.expect("DATA", 354);
    let big = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "z".repeat(70)).repeat(20)
    );
    c.send(big.as_bytes());
    c.send(b".\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (552, "5.3.4"), "{r:?}");
    // Still in step.
    c.expect("NOOP", 250);
    // The same through BDAT.
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    c.send(format!("BDAT {} LAST\r\n", big.len()).as_bytes());
    c.send(big.as_bytes());
    assert_eq!(c.read_reply().code, 552);
    c.expect("NOOP", 250);
    // A chunk claiming more than twice the limit is not read: refused, closed.
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    c.send(b"BDAT 99999999999999999999 LAST\r\n");
    assert_eq!(
        c.read_reply().code,
        501,
        "a size past 2^64 is a syntax error"
    );
    c.send(b"BDAT 10000000000 LAST\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (552, "5.3.4"), "{r:?}");
    c.expect_closed();
    assert!(gw.spooled().is_empty());
}

#[test]
fn a_silent_client_times_out_with_421() {
    let gw = Gateway::start(&listener("in", "command_timeout = \"1s\""));
    let mut c = Client::connect(gw.addr("in"));
    let start = Instant::now();
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.4.2"), "{r:?}");
    assert!(start.elapsed() >= Duration::from_millis(900));
    c.expect_closed();
}

#[test]
fn a_client_stalling_in_data_times_out() {
    let gw = Gateway::start(&listener("in", "data_timeout = \"1s\""));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: slow\r\n\r\npartial");
    let r = c.read_reply();
    assert_eq!(r.code, 421, "{r:?}");
    c.expect_closed();
    assert!(gw.spooled().is_empty());
}

#[test]
fn too_many_connections_from_one_address_get_421() {
    let gw = Gateway::start(&listener("in", "max_connections_per_ip = 2"));
    let a = Client::connect(gw.addr("in"));
    let b = Client::connect(gw.addr("in"));
    let mut third = Client::connect_raw(gw.addr("in"));
    let r = third.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"), "{r:?}");
    third.expect_closed();
    drop(a);
    drop(b);
}

#[test]
fn too_many_connections_in_total_get_421() {
    let gw = Gateway::start(&listener("in", "max_connections = 1"));
    let mut a = Client::connect(gw.addr("in"));
    let mut second = Client::connect_raw(gw.addr("in"));
    let r = second.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"), "{r:?}");
    second.expect_closed();
    // The first session is unaffected.
    a.expect("NOOP", 250);
}

#[test]
fn too_many_errors_end_the_session() {
    let gw = Gateway::start(&listener("in", "max_errors = 3"));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("BOGUS1", 500);
    c.expect("BOGUS2", 500);
    c.send(b"BOGUS3\r\n");
    assert_eq!(c.read_reply().code, 500);
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"), "{r:?}");
    c.expect_closed();
}
