//! Delivery end to end: weir relays to a real SMTP/LMTP sink found through
//! a real DNS server on loopback (or a smart host list); retries, bounces,
//! expiry, per-recipient outcomes, TLS policy, and SIGKILL mid-delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_parser::MimeHeaders;

use crate::dns::{TestDns, zone};
use crate::harness::{Client, Gateway, PATIENCE, listener};
use crate::sink::{Delivered, Sink, SinkOptions};

const FAST_RETRY: &str = "[queue]\nretry_initial = \"100ms\"\nretry_max = \"300ms\"\n";

/// A DNS server for `example.test` whose MX is the sink's machine, with a
/// dead first preference to show failover, plus domains for the edge cases.
fn dns() -> TestDns {
    TestDns::start(&[
        (
            "example.test",
            zone(
                "example.test",
                "@ IN MX 10 dead.example.test.\n@ IN MX 20 mx.example.test.\ndead IN A 127.0.0.2\nmx IN A 127.0.0.1",
            ),
        ),
        // No MX: the domain's own address is used (RFC 5321 5.1).
        ("a-only.test", zone("a-only.test", "@ IN A 127.0.0.1")),
        // Null MX (RFC 7505): takes no mail.
        ("nullmx.test", zone("nullmx.test", "@ IN MX 0 .")),
    ])
}

fn mx_route(sink: &Sink, extra: &str) -> String {
    format!(
        "[[route]]\nname = \"mx\"\ndomains = [\"*\"]\ntype = \"mx\"\nport = {}\n{extra}\n",
        sink.addr.port()
    )
}

/// A sink that takes mail for sender@example.test (the DSNs) and answers
/// `reply` to every other recipient.
fn refusing_all_but_the_sender(reply: &'static str) -> Sink {
    Sink::start(SinkOptions {
        rcpt: Arc::new(move |a| {
            if a == "sender@example.test" {
                "250 2.1.5 ok".into()
            } else {
                reply.into()
            }
        }),
        ..Default::default()
    })
}

/// A sink that answers `reply` to recipients whose address starts with
/// "bad", and takes everything else.
fn refusing_bad(reply: &'static str) -> Sink {
    Sink::start(SinkOptions {
        rcpt: Arc::new(move |a| {
            if a.starts_with("bad") {
                reply.into()
            } else {
                "250 2.1.5 ok".into()
            }
        }),
        ..Default::default()
    })
}

/// A gateway that delivers by MX through `dns`, to the sink's port.
fn mx_gateway(dns: &TestDns, sink: &Sink, queue: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{queue}{}{}",
        listener("in", ""),
        dns.config(),
        mx_route(sink, "")
    ))
}

fn send(gw: &Gateway, from: &str, to: &[&str], body: &str) -> String {
    let mut c = Client::connect(gw.addr("in"));
    let r = c.send_mail(from, to, body);
    assert_eq!(r.code, 250, "{r:?}");
    c.expect("QUIT", 221);
    r.text().rsplit(' ').next().unwrap().to_string()
}

/// Polls a condition that has no signal of its own (the spool on disk).
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dsns(received: &[Delivered]) -> Vec<&Delivered> {
    received.iter().filter(|d| d.from.is_empty()).collect()
}

/// The message/delivery-status part of a DSN, checked with mail-parser.
fn delivery_status(dsn: &Delivered) -> String {
    let message = mail_parser::MessageParser::default()
        .parse(&dsn.data)
        .expect("DSN parses");
    let ct = message.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let part = message
        .parts
        .iter()
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.ctype() == "message" && c.subtype() == Some("delivery-status"))
        })
        .expect("a message/delivery-status part");
    String::from_utf8_lossy(part.contents()).into_owned()
}

#[test]
fn mx_delivery_arrives_byte_for_byte_after_failing_over_to_the_next_mx() {
    let dns = dns();
    let sink = Sink::start(SinkOptions::default());
    let gw = mx_gateway(&dns, &sink, "");
    // As the client sends it (dot-stuffed), and as the content is.
    let wire =
        "From: a@sender.test\r\nSubject: relay\r\n\r\nline\r\n..leading dot\r\n...two dots\r\n";
    let body =
        "From: a@sender.test\r\nSubject: relay\r\n\r\nline\r\n.leading dot\r\n..two dots\r\n";
    send(
        &gw,
        "a@sender.test",
        &["user@example.test", "other@a-only.test"],
        wire,
    );
    let got = sink.wait_until("both domains", |r| {
        r.iter().map(|d| d.rcpts.len()).sum::<usize>() >= 2
    });
    for d in &got {
        assert!(d.crlf_only);
        assert_eq!(d.from, "a@sender.test");
        assert!(d.mail_params.contains("SIZE="), "{}", d.mail_params);
        let text = String::from_utf8_lossy(&d.data);
        // Byte for byte, apart from the Received header weir added.
        assert!(
            text.starts_with("Received: from client.test ([127.0.0.1])\r\n"),
            "{text}"
        );
        assert!(text.ends_with(body), "{text}");
    }
    let mut rcpts: Vec<_> = got.iter().flat_map(|d| d.rcpts.clone()).collect();
    rcpts.sort();
    assert_eq!(rcpts, ["other@a-only.test", "user@example.test"]);
    // Delivered messages leave the spool.
    eventually("an empty spool", || gw.spooled().is_empty());
    assert!(
        gw.log().contains("dead.example.test"),
        "the first MX was tried first"
    );
}

#[test]
fn a_smart_host_list_fails_over_in_order() {
    let sink = Sink::start(SinkOptions::default());
    let gw = Gateway::start(&format!(
        "{}[[route]]\nname = \"relay\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:1\", \"127.0.0.1:{}\"]\n",
        listener("in", ""),
        sink.addr.port()
    ));
    send(
        &gw,
        "a@sender.test",
        &["b@anywhere.test"],
        "Subject: s\r\n\r\nx\r\n",
    );
    let got = sink.wait_for(1);
    assert_eq!(got[0].rcpts, ["b@anywhere.test"]);
    // The route's defaults: the gateway's name, any source address.
    assert_eq!(got[0].helo, "mx.test");
}

#[test]
fn a_route_sends_from_its_own_address_with_its_own_helo() {
    let sink = Sink::start(SinkOptions::default());
    let gw = Gateway::start(&format!(
        "{}[[route]]\nname = \"dedicated\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\nsource_address = \"127.0.0.2\"\nhelo = \"out2.mx.test\"\n",
        listener("in", ""),
        sink.addr.port()
    ));
    send(
        &gw,
        "a@sender.test",
        &["b@anywhere.test"],
        "Subject: s\r\n\r\nx\r\n",
    );
    let got = sink.wait_for(1);
    assert_eq!(got[0].peer.ip().to_string(), "127.0.0.2");
    assert_eq!(got[0].helo, "out2.mx.test");
}

#[test]
fn a_transient_failure_is_retried_and_delivered() {
    let dns = dns();
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let sink = Sink::start(SinkOptions {
        rcpt: Arc::new(move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                "451 4.7.1 greylisted, try later".into()
            } else {
                "250 2.1.5 ok".into()
            }
        }),
        ..Default::default()
    });
    let gw = mx_gateway(&dns, &sink, FAST_RETRY);
    send(
        &gw,
        "a@sender.test",
        &["user@example.test"],
        "Subject: t\r\n\r\nx\r\n",
    );
    let got = sink.wait_for(1);
    assert_eq!(got[0].rcpts, ["user@example.test"]);
    assert!(attempts.load(Ordering::SeqCst) >= 2);
    eventually("an empty spool", || gw.spooled().is_empty());
    assert!(
        dsns(&sink.received()).is_empty(),
        "no DSN for a delivered message"
    );
}

#[test]
fn a_permanent_failure_gives_exactly_one_dsn() {
    let dns = dns();
    let sink = refusing_bad("550 5.1.1 <bad@example.test>: no such user");
    let gw = mx_gateway(&dns, &sink, FAST_RETRY);
    send(
        &gw,
        "sender@example.test",
        &["bad@example.test", "bad2@example.test"],
        "Subject: bounce me\r\n\r\nbody\r\n",
    );
    let got = sink.wait_until("a DSN", |r| !dsns(r).is_empty());
    let dsn = dsns(&got)[0];
    assert_eq!(dsn.rcpts, ["sender@example.test"]);
    let status = delivery_status(dsn);
    assert!(status.contains("Reporting-MTA: dns; mx.test"), "{status}");
    assert!(
        status.contains("Final-Recipient: rfc822; bad@example.test"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; bad2@example.test"),
        "{status}"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(status.contains("Status: 5.1.1"), "{status}");
    assert!(
        status.contains("Diagnostic-Code: smtp; 550 5.1.1"),
        "{status}"
    );
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Subject: bounce me"),
        "the original is returned"
    );
    // Both the original and its DSN leave the spool, and only one DSN came.
    eventually("an empty spool", || gw.spooled().is_empty());
    assert_eq!(dsns(&sink.received()).len(), 1);
}

#[test]
fn a_message_that_cannot_be_delivered_in_time_expires_with_a_dsn() {
    let dns = dns();
    let sink = refusing_all_but_the_sender("451 4.3.0 try again");
    let gw = mx_gateway(
        &dns,
        &sink,
        "[queue]\nretry_initial = \"100ms\"\nretry_max = \"200ms\"\nmax_lifetime = \"1s\"\n",
    );
    send(
        &gw,
        "sender@example.test",
        &["slow@example.test"],
        "Subject: expire\r\n\r\nx\r\n",
    );
    let got = sink.wait_until("an expiry DSN", |r| !dsns(r).is_empty());
    let status = delivery_status(dsns(&got)[0]);
    assert!(
        status.contains("Action: failed") && status.contains("Status: 4.4.7"),
        "{status}"
    );
    assert!(
        status.contains("451 4.3.0 try again"),
        "the last error is reported: {status}"
    );
}

#[test]
fn each_recipient_gets_its_own_outcome() {
    let dns = dns();
    let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let t = tries.clone();
    let sink = Sink::start(SinkOptions {
        rcpt: Arc::new(move |a| {
            let mut t = t.lock().unwrap();
            let n = t.entry(a.to_string()).or_default();
            *n += 1;
            match a {
                "gone@example.test" => "550 5.1.1 no such user".into(),
                "later@example.test" if *n == 1 => "452 4.2.2 mailbox full".into(),
                _ => "250 2.1.5 ok".into(),
            }
        }),
        ..Default::default()
    });
    let gw = mx_gateway(&dns, &sink, FAST_RETRY);
    send(
        &gw,
        "sender@example.test",
        &[
            "now@example.test",
            "gone@example.test",
            "later@example.test",
        ],
        "Subject: mixed\r\n\r\nx\r\n",
    );
    sink.wait_until("the retried recipient and the DSN", |r| {
        r.iter()
            .any(|d| d.rcpts.contains(&"later@example.test".to_string()))
            && !dsns(r).is_empty()
    });
    eventually("an empty spool", || gw.spooled().is_empty());
    let got = sink.received();
    let count = |rcpt: &str| {
        got.iter()
            .filter(|d| d.from == "sender@example.test" && d.rcpts.iter().any(|r| r == rcpt))
            .count()
    };
    assert_eq!(
        count("now@example.test"),
        1,
        "delivered once, not again with the retry"
    );
    assert_eq!(count("later@example.test"), 1);
    assert_eq!(count("gone@example.test"), 0);
    let dsn_list = dsns(&got);
    assert_eq!(dsn_list.len(), 1);
    let status = delivery_status(dsn_list[0]);
    assert!(status.contains("gone@example.test"), "{status}");
    assert!(
        !status.contains("now@example.test") && !status.contains("later@example.test"),
        "{status}"
    );
}

#[test]
fn notify_never_and_the_null_sender_get_no_dsn_but_success_does() {
    let dns = dns();
    let sink = refusing_bad("550 5.1.1 no");
    let gw = mx_gateway(&dns, &sink, FAST_RETRY);
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    // NOTIFY=NEVER: a bounce is not reported.
    c.expect("MAIL FROM:<sender@example.test>", 250);
    c.expect("RCPT TO:<bad@example.test> NOTIFY=NEVER", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: never\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    // The null sender: a bounce is never reported.
    c.expect("MAIL FROM:<>", 250);
    c.expect("RCPT TO:<bad@example.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: null sender\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    // NOTIFY=SUCCESS: the delivery is reported.
    c.expect("MAIL FROM:<sender@example.test> RET=HDRS", 250);
    c.expect("RCPT TO:<good@example.test> NOTIFY=SUCCESS", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: tell me\r\n\r\nsecret body\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    let got = sink.wait_until("the success DSN", |r| !dsns(r).is_empty());
    eventually("an empty spool", || gw.spooled().is_empty());
    let got_all = sink.received();
    assert_eq!(dsns(&got_all).len(), 1, "{got:#?}");
    let status = delivery_status(dsns(&got_all)[0]);
    assert!(
        status.contains("Action: delivered") && status.contains("good@example.test"),
        "{status}"
    );
    let text = String::from_utf8_lossy(&dsns(&got_all)[0].data);
    assert!(
        !text.contains("secret body"),
        "a success report returns headers only"
    );
    // The DSN parameters went on to the next hop.
    let tell = got_all
        .iter()
        .find(|d| d.rcpts == ["good@example.test"])
        .unwrap();
    assert!(
        tell.mail_params.contains("RET=HDRS"),
        "{}",
        tell.mail_params
    );
}

#[test]
fn a_null_mx_bounces_at_once() {
    let dns = dns();
    let sink = Sink::start(SinkOptions::default());
    let gw = mx_gateway(&dns, &sink, "");
    send(
        &gw,
        "sender@example.test",
        &["x@nullmx.test"],
        "Subject: n\r\n\r\nx\r\n",
    );
    let got = sink.wait_until("a DSN", |r| !dsns(r).is_empty());
    let status = delivery_status(dsns(&got)[0]);
    assert!(status.contains("Status: 5.1.10"), "{status}");
}

#[test]
fn lmtp_reports_each_recipient_after_the_data() {
    let sink = Sink::start(SinkOptions {
        lmtp: true,
        rcpt: Arc::new(|a| match a {
            "data:full@mailbox.test" => "552 5.2.2 mailbox full".into(),
            _ => "250 2.1.5 ok".into(),
        }),
        ..Default::default()
    });
    let gw = Gateway::start(&format!(
        "{}{FAST_RETRY}[[route]]\nname = \"store\"\ndomains = [\"mailbox.test\"]\ntype = \"lmtp\"\nhosts = [\"127.0.0.1:{port}\"]\n[[route]]\nname = \"rest\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{port}\"]\n",
        listener("in", ""),
        port = sink.addr.port()
    ));
    send(
        &gw,
        "sender@other.test",
        &["ok@mailbox.test", "full@mailbox.test"],
        "Subject: l\r\n\r\nx\r\n",
    );
    let got = sink.wait_until("a delivery and a DSN", |r| {
        r.len() >= 2 && !dsns(r).is_empty()
    });
    let delivered: Vec<_> = got.iter().filter(|d| !d.from.is_empty()).collect();
    assert_eq!(delivered[0].rcpts, ["ok@mailbox.test"]);
    let status = delivery_status(dsns(&got)[0]);
    assert!(
        status.contains("full@mailbox.test") && status.contains("Status: 5.2.2"),
        "{status}"
    );
}

/// A CA and a certificate for mx.example.test signed by it.
fn ca_and_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["mx.example.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn tls_policies_are_kept() {
    let dns = dns();
    let (ca, cert, key) = ca_and_cert();
    let plain = Sink::start(SinkOptions::default());
    let tls = Sink::start(SinkOptions {
        tls: Some((cert.clone(), key.clone())),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();

    // opportunistic (the default) uses TLS when offered.
    let gw = Gateway::start(&format!(
        "{}{}{}",
        listener("in", ""),
        dns.config(),
        mx_route(&tls, "")
    ));
    send(
        &gw,
        "a@sender.test",
        &["u@example.test"],
        "Subject: o\r\n\r\nx\r\n",
    );
    assert!(tls.wait_for(1)[0].tls, "opportunistic TLS was used");
    drop(gw);

    // required, to a peer without STARTTLS: deferred, never sent in clear.
    let gw = Gateway::start(&format!(
        "{}{FAST_RETRY}{}{}",
        listener("in", ""),
        dns.config(),
        mx_route(&plain, "tls = \"required\"")
    ));
    send(
        &gw,
        "a@sender.test",
        &["u@example.test"],
        "Subject: r\r\n\r\nx\r\n",
    );
    eventually("a deferral for lack of TLS", || {
        gw.log().contains("does not offer STARTTLS")
    });
    assert!(plain.received().is_empty());
    assert_eq!(gw.spooled().len(), 1, "the message waits");
    drop(gw);

    // verify, with a certificate we do not trust: deferred.
    let gw = Gateway::start(&format!(
        "{}{FAST_RETRY}{}{}",
        listener("in", ""),
        dns.config(),
        mx_route(&tls, "tls = \"verify\"")
    ));
    send(
        &gw,
        "a@sender.test",
        &["u@example.test"],
        "Subject: v\r\n\r\nx\r\n",
    );
    eventually("a TLS failure", || {
        gw.log().contains("TLS handshake with mx.example.test")
    });
    assert_eq!(tls.received().len(), 1, "nothing more arrived");
    assert_eq!(gw.spooled().len(), 1, "the message waits");
    drop(gw);

    // verify, trusting the CA: delivered over TLS.
    let gw = Gateway::start(&format!(
        "{}{}{}",
        listener("in", ""),
        dns.config(),
        mx_route(
            &tls,
            &format!("tls = \"verify\"\ntls_ca_file = \"{}\"", ca_file.display())
        )
    ));
    send(
        &gw,
        "a@sender.test",
        &["u@example.test"],
        "Subject: v2\r\n\r\nx\r\n",
    );
    let got = tls.wait_for(2);
    assert!(got[1].tls);
}

/// SIGKILL while messages are being delivered, then restart: every message
/// arrives, and only deliveries in flight at the kill may repeat.
#[test]
fn sigkill_during_delivery_loses_nothing_and_repeats_only_what_was_in_flight() {
    const MESSAGES: usize = 40;
    const WORKERS: usize = 2;
    let dns = dns();
    let sink = Sink::start(SinkOptions {
        data_delay: Duration::from_millis(30),
        ..Default::default()
    });
    let config = format!(
        "{}[queue]\nretry_initial = \"100ms\"\nretry_max = \"200ms\"\nmax_per_destination = {WORKERS}\n{}{}",
        listener("in", ""),
        dns.config(),
        mx_route(&sink, "")
    );
    let gw = Gateway::start(&config);
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    for i in 0..MESSAGES {
        c.expect("MAIL FROM:<a@sender.test>", 250);
        c.expect("RCPT TO:<user@example.test>", 250);
        c.expect("DATA", 354);
        c.send(
            format!("Subject: m{i}\r\nMessage-ID: <m{i}@test>\r\n\r\nbody {i}\r\n.\r\n").as_bytes(),
        );
        assert_eq!(c.read_reply().code, 250);
    }
    drop(c);
    // Kill while the queue is half way through.
    sink.wait_for(MESSAGES / 4);
    let dir = gw.kill();
    let gw = Gateway::start_in(dir, &config);
    let subject = |d: &Delivered| {
        String::from_utf8_lossy(&d.data)
            .lines()
            .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            .unwrap()
    };
    let got = sink.wait_until("every message", |r| {
        let mut s: Vec<String> = r.iter().map(subject).collect();
        s.sort();
        s.dedup();
        s.len() >= MESSAGES
    });
    eventually("an empty spool", || gw.spooled().is_empty());
    let repeats = got.len() - MESSAGES;
    assert!(
        repeats <= WORKERS,
        "{repeats} repeated deliveries; at most {WORKERS} were in flight"
    );
}

#[test]
fn sigterm_lets_a_delivery_in_flight_finish() {
    let dns = dns();
    let sink = Sink::start(SinkOptions {
        data_delay: Duration::from_millis(500),
        ..Default::default()
    });
    let mut gw = mx_gateway(&dns, &sink, "");
    send(
        &gw,
        "a@sender.test",
        &["user@example.test"],
        "Subject: in flight\r\n\r\nx\r\n",
    );
    sink.wait_for_data_start(1);
    let status = gw.terminate();
    assert!(status.success(), "{status:?}");
    // The delivery finished before the gateway exited, and was recorded.
    assert_eq!(sink.received().len(), 1);
    assert!(
        gw.spooled().is_empty(),
        "the delivered message is finished in the spool"
    );
}

#[test]
fn a_message_needing_smtputf8_bounces_when_the_next_hop_lacks_it() {
    let dns = dns();
    let sink = Sink::start(SinkOptions {
        no_smtputf8: true,
        ..Default::default()
    });
    let gw = mx_gateway(&dns, &sink, "");
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<sender@example.test> SMTPUTF8", 250);
    c.expect("RCPT TO:<jörg@example.test>", 250);
    c.expect("DATA", 354);
    c.send("Subject: grüße\r\n\r\nx\r\n.\r\n".as_bytes());
    assert_eq!(c.read_reply().code, 250);
    let got = sink.wait_until("a DSN", |r| !dsns(r).is_empty());
    assert_eq!(got.len(), 1, "the message itself was not sent: {got:#?}");
    let status = delivery_status(dsns(&got)[0]);
    assert!(
        status.contains("Status: 5.6.7") && status.contains("SMTPUTF8"),
        "{status}"
    );
}

#[test]
fn a_smart_host_gets_auth_plain_over_tls_only() {
    let (_, cert, key) = ca_and_cert();
    let sink = Sink::start(SinkOptions {
        tls: Some((cert, key)),
        // base64("\0relay-user\0s3cret")
        auth_plain: Some("AHJlbGF5LXVzZXIAczNjcmV0".into()),
        ..Default::default()
    });
    let gw = Gateway::start(&format!(
        "{}[[route]]\nname = \"relay\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\ntls = \"required\"\nauth_username = \"relay-user\"\nauth_password = \"s3cret\"\n",
        listener("in", ""),
        sink.addr.port()
    ));
    send(
        &gw,
        "a@sender.test",
        &["b@anywhere.test"],
        "Subject: auth\r\n\r\nx\r\n",
    );
    let got = sink.wait_for(1);
    assert!(got[0].tls);
    assert_eq!(got[0].auth.as_deref(), Some("AHJlbGF5LXVzZXIAczNjcmV0"));
}

#[test]
fn a_delay_warning_is_sent_once_when_configured() {
    let dns = dns();
    let sink = refusing_all_but_the_sender("451 4.2.1 mailbox busy");
    let gw = mx_gateway(
        &dns,
        &sink,
        "[queue]\nretry_initial = \"100ms\"\nretry_max = \"200ms\"\ndelay_warning = \"500ms\"\n",
    );
    send(
        &gw,
        "sender@example.test",
        &["busy@example.test"],
        "Subject: slow\r\n\r\nx\r\n",
    );
    let got = sink.wait_until("a delay DSN", |r| !dsns(r).is_empty());
    let status = delivery_status(dsns(&got)[0]);
    assert!(
        status.contains("Action: delayed") && status.contains("451 4.2.1 mailbox busy"),
        "{status}"
    );
    // Several more attempts fail; no second warning comes.
    eventually("more attempts", || {
        gw.log().matches("mailbox busy").count() >= 8
    });
    assert_eq!(dsns(&sink.received()).len(), 1);
    // The message is still queued.
    assert_eq!(gw.spooled().len(), 1);
}

#[test]
fn one_connection_carries_many_messages() {
    let sink = Sink::start(SinkOptions::default());
    let gw = Gateway::start(&format!(
        "{}[queue]\nconnection_cache_time = \"10s\"\n[[route]]\nname = \"relay\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n",
        listener("in", ""),
        sink.addr.port()
    ));
    // One at a time: each is delivered before the next arrives, so only
    // the connection cache can explain a shared connection.
    for i in 1..=5 {
        send(
            &gw,
            "a@sender.test",
            &["b@anywhere.test"],
            &format!("Subject: {i}\r\n\r\nx\r\n"),
        );
        sink.wait_for(i);
    }
    assert_eq!(sink.connections(), 1);
}
