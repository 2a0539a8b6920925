//! The bundled antispam plugin through a live gateway, its lists served by
//! the test DNS server: a listed client refused at the configured stage;
//! the score tagging, quarantining and refusing; greylisting; lists that
//! answer garbage or not at all. Clients connect from several 127.x
//! addresses (all loopback), so that one can be listed and another not.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::A;

use crate::dns::{Records, TestDns};
use crate::harness::{Client, Gateway, listener};
use crate::plugins::{plugin_dir, plugins_table};
use crate::sink::{Delivered, Sink, SinkOptions};

fn a(ip: &str) -> RData {
    RData::A(A(ip.parse().unwrap()))
}

/// What the lists say: bl.test refuses at connect, rbl.test at RCPT,
/// score.test and dbl.test only score; garbage.test, refused.test and
/// slow.test misbehave.
fn records() -> Records {
    let mut r = Records::new();
    r.add("2.0.0.127.bl.test", a("127.0.0.2"))
        .add("4.0.0.127.rbl.test", a("127.0.0.4"))
        .add("5.0.0.127.score.test", a("127.0.0.2"))
        .add("6.0.0.127.score.test", a("127.0.0.3"))
        .add("spammer.test.dbl.test", a("127.0.1.2"))
        .add("7.0.0.127.garbage.test", a("10.0.0.1"))
        .add("7.0.0.127.refused.test", a("127.255.255.254"))
        .timeout("7.0.0.127.slow.test")
        .exists("example.test");
    r
}

/// A gateway for example.test (delivered to `sink`), with antispam on
/// every hook it has, configured by `toml`, and DNS answered in time or
/// given up after 300 ms.
fn gateway(dns: &TestDns, sink: &Sink, toml: &str, extra: &str) -> (Gateway, tempfile::TempDir) {
    let plugins = plugin_dir(&[("antispam", "weir-plugin-antispam", toml)]);
    let gw = Gateway::start(&format!(
        "{extra}[dns]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\n{}\
         [plugins.settings.antispam]\ngrants = [\"dns\", \"state\", \"modify\"]\n{}\
         [[route]]\nname = \"out\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n",
        dns.addr,
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            "local_domains = [\"example.test\"]\n\
             chains = { connect = [\"antispam\"], helo = [\"antispam\"], mail_from = [\"antispam\"], rcpt = [\"antispam\"], data = [\"antispam\"] }"
        ),
        sink.addr.port(),
    ));
    (gw, plugins)
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A well-formed message with `subject`, and `extra` header fields.
fn message(subject: &str, extra: &str) -> String {
    format!(
        "{extra}From: Sender <a@sender.test>\r\nTo: <r@example.test>\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@sender.test>\r\n\r\nHello.\r\n"
    )
}

/// One transaction from `source`: the final reply's code and text.
fn send(gw: &Gateway, source: &str, helo: &str, from: &str, body: &str) -> (u16, String) {
    let mut c = Client::connect_from(gw.addr("in"), ip(source));
    c.expect(&format!("EHLO {helo}"), 250);
    c.expect(&format!("MAIL FROM:<{from}>"), 250);
    c.expect("RCPT TO:<r@example.test>", 250);
    c.expect("DATA", 354);
    c.send(body.as_bytes());
    c.send(b".\r\n");
    let r = c.read_reply();
    (r.code, r.text())
}

fn header(d: &Delivered, name: &str) -> Option<String> {
    // Unfolded: the gateway folds long fields.
    let text = String::from_utf8_lossy(&d.data).replace("\r\n ", " ");
    text.split("\r\n\r\n")
        .next()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

fn subject_of(d: &Delivered) -> String {
    header(d, "Subject").unwrap_or_default()
}

#[test]
fn a_listed_client_is_refused_at_the_stage_its_list_says() {
    let dns = TestDns::serve(records());
    let sink = Sink::start(SinkOptions::default());
    let toml = "[[dnsbl]]\nzone = \"bl.test\"\nreject_at = \"connect\"\n\
                [[dnsbl]]\nzone = \"rbl.test\"\nreject_at = \"rcpt\"\n";
    let (gw, _p) = gateway(&dns, &sink, toml, "");
    // At connect: 554 instead of the greeting, and closed.
    let mut c = Client::connect_raw_from(gw.addr("in"), ip("127.0.0.2"));
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.7.1"), "{r:?}");
    assert!(
        r.text().contains("[127.0.0.2] blocked using bl.test"),
        "{r:?}"
    );
    c.expect_closed();
    // At RCPT: the session goes on to RCPT, which is refused.
    let mut c = Client::connect_from(gw.addr("in"), ip("127.0.0.4"));
    c.expect("EHLO client.example.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    let r = c.expect("RCPT TO:<r@example.test>", 550);
    assert_eq!(r.enhanced(), "5.7.1");
    assert!(r.text().contains("blocked using rbl.test"), "{r:?}");
    // A client on no list is served.
    let r = send(
        &gw,
        "127.0.0.3",
        "client.example.test",
        "a@sender.test",
        &message("clean", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    assert_eq!(sink.wait_for(1).len(), 1);
    assert!(
        gw.log()
            .contains("127.0.0.2 refused: listed by bl.test (127.0.0.2)")
    );
}

#[test]
fn the_score_tags_quarantines_and_refuses_as_configured() {
    let dns = TestDns::serve(records());
    let sink = Sink::start(SinkOptions::default());
    let toml = "except_clients = [\"127.0.0.7\"]\n\
                [score]\ntag = 3.0\nquarantine = 6.0\nreject = 9.0\n\
                [weights]\niprev_fail = 0.0\n\
                [[dnsbl]]\nzone = \"score.test\"\nweight = 3.0\n\
                [[domain_list]]\nzone = \"dbl.test\"\nweight = 3.0\n";
    let (gw, _p) = gateway(&dns, &sink, toml, "");
    // Clean: delivered, said so.
    let r = send(
        &gw,
        "127.0.0.3",
        "client.example.test",
        "a@sender.test",
        &message("clean", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // Listed (3.0): tagged; a forged X-Spam-Status it came with is replaced.
    let forged = "X-Spam-Status: No, score=-100\r\n";
    let r = send(
        &gw,
        "127.0.0.5",
        "client.example.test",
        "a@sender.test",
        &message("tagged", forged),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // Listed, and the sender's domain on the domain list (6.0): held.
    let r = send(
        &gw,
        "127.0.0.6",
        "client.example.test",
        "a@spammer.test",
        &message("held", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    // All that, a HELO that is no domain, no Date, no Message-ID (9.5):
    // refused.
    let bare = "From: <a@spammer.test>\r\nSubject: refused\r\n\r\nBuy.\r\n";
    let r = send(&gw, "127.0.0.6", "localhost", "a@spammer.test", bare);
    assert_eq!(r.0, 550, "{r:?}");
    assert!(
        r.1.contains("5.7.1 Message refused as spam (score 9.5)"),
        "{r:?}"
    );

    let got = sink.wait_for(2);
    let clean = got.iter().find(|d| subject_of(d) == "clean").unwrap();
    assert_eq!(header(clean, "X-Spam-Score").as_deref(), Some("0.0"));
    assert_eq!(
        header(clean, "X-Spam-Status").as_deref(),
        Some("No, score=0.0 required=3.0 tests=none")
    );
    let tagged = got.iter().find(|d| subject_of(d) == "tagged").unwrap();
    assert_eq!(
        header(tagged, "X-Spam-Status").as_deref(),
        Some("Yes, score=3.0 required=3.0 tests=DNSBL_SCORE=3.0")
    );
    let text = String::from_utf8_lossy(&tagged.data);
    assert_eq!(text.matches("X-Spam-Status").count(), 1, "{text}");

    // The held message is in the quarantine with its reason, and nowhere
    // else; released, it is delivered with the headers that say why.
    let ls = gw.cli(&["quarantine", "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert!(
        ls.contains("<a@spammer.test> r@example.test")
            && ls.contains("[antispam at data: spam score 6.0 (DNSBL_SCORE=3.0,DBL_DBL=3.0)]"),
        "{ls}"
    );
    let id = ls.split_whitespace().next().unwrap().to_string();
    let show = gw.cli(&["quarantine", "show", &id]);
    let shown = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(
        shown.contains("X-Spam-Status: Yes, score=6.0") && shown.contains("Subject: held"),
        "{shown}"
    );
    let out = gw.cli(&["quarantine", "release", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("the gateway (process"),
        "{out:?}"
    );
    let got = sink.wait_for(3);
    let held = got.iter().find(|d| subject_of(d) == "held").unwrap();
    assert_eq!(held.rcpts, ["r@example.test"]);
    assert!(
        header(held, "X-Spam-Status")
            .unwrap()
            .starts_with("Yes, score=6.0")
    );
    assert!(gw.cli(&["quarantine", "ls"]).stdout.is_empty());
    assert!(gw.log().contains("released from the quarantine"));

    // An exempt client is not checked, and the X-Spam fields it brings
    // are removed: no score the gateway did not give goes on.
    let r = send(
        &gw,
        "127.0.0.7",
        "client.example.test",
        "a@sender.test",
        &message("exempt", forged),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let got = sink.wait_for(4);
    let exempt = got.iter().find(|d| subject_of(d) == "exempt").unwrap();
    assert_eq!(header(exempt, "X-Spam-Status"), None);
    assert_eq!(header(exempt, "X-Spam-Score"), None);
}

#[test]
fn greylisting_defers_the_first_attempt_and_accepts_a_retry_after_the_delay() {
    let dns = TestDns::serve(records());
    let sink = Sink::start(SinkOptions::default());
    let toml =
        "[greylist]\nenabled = true\ndelay = \"1s\"\nexpiry = \"1m\"\nauto_allow_after = 0\n";
    let (gw, _p) = gateway(&dns, &sink, toml, "");
    let rcpt = |source: &str, from: &str, to: &str| {
        let mut c = Client::connect_from(gw.addr("in"), ip(source));
        c.expect("EHLO client.example.test", 250);
        c.expect(&format!("MAIL FROM:<{from}>"), 250);
        c.cmd(&format!("RCPT TO:<{to}>"))
    };
    let r = rcpt("127.0.0.3", "a@sender.test", "r@example.test");
    assert_eq!((r.code, r.enhanced()), (451, "4.7.1"), "{r:?}");
    assert!(r.text().contains("Greylisted"), "{r:?}");
    // Too soon: still deferred.
    assert_eq!(
        rcpt("127.0.0.3", "a@sender.test", "r@example.test").code,
        451
    );
    // The greylisting delay is time itself: nothing to wait on but it.
    std::thread::sleep(Duration::from_secs(1));
    // After the delay, from another address of the same /24: passes.
    assert_eq!(
        rcpt("127.0.0.9", "a@sender.test", "r@example.test").code,
        250
    );
    // Another triplet is greylisted on its own; the passed one stays let
    // through.
    assert_eq!(
        rcpt("127.0.0.3", "b@sender.test", "r@example.test").code,
        451
    );
    assert_eq!(
        rcpt("127.0.0.3", "a@sender.test", "r@example.test").code,
        250
    );
    let log = gw.log();
    assert!(
        log.contains("greylisted 127.0.0.0/24/a@sender.test/r@example.test (first attempt)"),
        "{log}"
    );
    assert!(
        log.contains("greylisting passed 127.0.0.0/24/a@sender.test/r@example.test"),
        "{log}"
    );
}

#[test]
fn lists_that_answer_garbage_or_nothing_are_not_counted_and_say_so() {
    let dns = TestDns::serve(records());
    let sink = Sink::start(SinkOptions::default());
    let toml = "[score]\ntag = 1.0\n[weights]\niprev_fail = 0.0\n\
                [[dnsbl]]\nzone = \"garbage.test\"\nweight = 5.0\n\
                [[dnsbl]]\nzone = \"refused.test\"\nweight = 5.0\n\
                [[dnsbl]]\nzone = \"slow.test\"\nweight = 5.0\n";
    let (gw, _p) = gateway(&dns, &sink, toml, "");
    let r = send(
        &gw,
        "127.0.0.7",
        "client.example.test",
        "a@sender.test",
        &message("odd-lists", ""),
    );
    assert_eq!(r.0, 250, "{r:?}");
    let got = sink.wait_for(1);
    assert_eq!(
        header(&got[0], "X-Spam-Status").as_deref(),
        Some("No, score=0.0 required=1.0 tests=none")
    );
    let log = gw.log();
    assert!(
        log.contains("7.0.0.127.garbage.test answered 10.0.0.1: no listing code"),
        "{log}"
    );
    assert!(
        log.contains("7.0.0.127.refused.test answered 127.255.255.254: the list's error code"),
        "{log}"
    );
    assert!(
        log.contains("lookup of 7.0.0.127.slow.test failed for now"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_commented_example_configuration_loads() {
    let dir = plugin_dir(&[("antispam", "weir-plugin-antispam", "")]);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/antispam/antispam.toml"
    );
    // At HELO: the local_names check needs no DNS.
    let out = crate::plugins::plugin_test_ok(
        &dir.path().join("antispam.wasm"),
        &[
            "--hook",
            "helo",
            "--helo",
            "mx.example.org",
            "--config",
            example,
        ],
    );
    assert!(out.contains("verdict: continue"), "{out}");
}
