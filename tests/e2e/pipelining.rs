//! RFC 2920: correct pipelining is served in one round trip; sending ahead
//! where it is not allowed disconnects (as Postfix does), so replies and
//! commands can never drift apart.

use crate::harness::{Client, Gateway, listener};

#[test]
fn a_pipelined_transaction_gets_all_its_replies_in_order() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    let ehlo = c.expect("EHLO client.test", 250);
    assert!(ehlo.lines.iter().any(|l| l == "PIPELINING"));
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<bad\0@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..5).map(|_| c.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 501, 250, 354]);
    // The message, its end and the next transaction in one write.
    c.send(b"Subject: p\r\n\r\none\r\n.\r\nMAIL FROM:<x@example.org>\r\nRCPT TO:<y@example.net>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..4).map(|_| c.read_reply().code).collect();
    assert_eq!(codes, [250, 250, 250, 354]);
    c.send(b"Subject: q\r\n\r\ntwo\r\n.\r\nQUIT\r\n");
    assert_eq!(c.read_reply().code, 250);
    assert_eq!(c.read_reply().code, 221);
    c.expect_closed();
    let spooled = gw.spooled();
    assert_eq!(spooled.len(), 2);
    assert_eq!(spooled[0].0.recipients.len(), 2);
}

#[test]
fn commands_before_the_greeting_are_refused() {
    let gw = Gateway::start(&listener("in", "greeting_delay = \"300ms\""));
    let mut c = Client::connect_raw(gw.addr("in"));
    c.send(b"EHLO early.test\r\nMAIL FROM:<a@example.org>\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.5.0"), "{r:?}");
    c.expect_closed();
    // A patient client is served.
    let mut ok = Client::connect(gw.addr("in"));
    ok.expect("EHLO patient.test", 250);
}

#[test]
fn pipelining_after_helo_is_refused() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.send(b"HELO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.5.0"), "{r:?}");
    c.expect_closed();
}

#[test]
fn commands_sent_with_ehlo_before_its_reply_are_refused() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 554, "{r:?}");
    c.expect_closed();
}

#[test]
fn data_sent_before_354_is_refused_and_nothing_is_accepted() {
    let gw = Gateway::start(&listener("in", ""));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@example.org>", 250);
    c.expect("RCPT TO:<b@example.net>", 250);
    c.send(b"DATA\r\nSubject: early\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.5.0"), "{r:?}");
    c.expect_closed();
    assert!(gw.spooled().is_empty());
}
