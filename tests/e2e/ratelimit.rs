//! The bundled ratelimit plugin through a live gateway: each key type trips
//! at exactly its limit and serves again once the window has passed; the
//! fallback when Redis goes away.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::harness::{Client, Gateway, listener};
use crate::plugins::{plugin_dir, plugins_table};
use crate::redis::RedisServer;

/// The windows of these tests: long enough for a burst, short enough to
/// wait out.
const WINDOW: Duration = Duration::from_secs(1);

/// A gateway with ratelimit at connect, mail_from, rcpt and data, the
/// given `[[rule]]`s, AUTH in clear for alice and bob (password
/// "secret"), and `extra` configuration (e.g. the Redis state).
fn gateway(rules: &str, extra: &str) -> (Gateway, tempfile::TempDir) {
    let plugins = plugin_dir(&[("ratelimit", "weir-plugin-ratelimit", rules)]);
    let sha = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    let gw = Gateway::start(&format!(
        "{extra}[directory]\nusers = {{ alice = \"{sha}\", bob = \"{sha}\" }}\n{}\
         [plugins.settings.ratelimit]\ngrants = [\"state\"]\n{}",
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            "relay_clients = [\"127.0.0.0/8\"]\nauth_mechanisms = [\"PLAIN\"]\nauth_require_tls = false\n\
             chains = { connect = [\"ratelimit\"], mail_from = [\"ratelimit\"], rcpt = [\"ratelimit\"], data = [\"ratelimit\"] }"
        )
    ));
    (gw, plugins)
}

fn rule(name: &str, count: &str, key: &str, limit: u32, more: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\ncount = \"{count}\"\nkey = \"{key}\"\nlimit = {limit}\nwindow = \"{}ms\"\n{more}\n",
        WINDOW.as_millis()
    )
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Connects from `source` and returns the greeting's code (421 when
/// refused).
fn greeting_from(gw: &Gateway, source: &str) -> u16 {
    let mut c = Client::connect_raw_from(gw.addr("in"), ip(source));
    c.read_reply().code
}

#[test]
fn connections_trip_at_the_limit_per_client_and_per_network() {
    let (gw, _p) = gateway(
        &(rule("conn-ip", "connections", "client_ip", 2, "")
            + &rule(
                "conn-net",
                "connections",
                "client_net",
                3,
                "ipv4_prefix = 24",
            )),
        "",
    );
    assert_eq!(greeting_from(&gw, "127.0.0.2"), 220);
    assert_eq!(greeting_from(&gw, "127.0.0.2"), 220);
    // The third from one address, refused by its rule.
    let mut c = Client::connect_raw_from(gw.addr("in"), ip("127.0.0.2"));
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"), "{r:?}");
    assert!(r.text().contains("127.0.0.2"), "{r:?}");
    c.expect_closed();
    // Another address of the same /24 has its own per-address count, but
    // shares the network's: its second connection is the network's fourth.
    assert_eq!(greeting_from(&gw, "127.0.0.3"), 220);
    assert_eq!(greeting_from(&gw, "127.0.0.3"), 421);
    // Another network is not affected.
    assert_eq!(greeting_from(&gw, "127.0.1.2"), 220);
    // After the window, served again.
    std::thread::sleep(WINDOW);
    assert_eq!(greeting_from(&gw, "127.0.0.2"), 220);
    assert_eq!(greeting_from(&gw, "127.0.0.3"), 220);
    assert!(
        gw.log().contains("rule conn-net refused 127.0.0.0/24"),
        "{}",
        gw.log()
    );
}

#[test]
fn messages_trip_at_the_limit_per_sender_and_per_sender_domain() {
    let (gw, _p) = gateway(
        &(rule("msg-sender", "messages", "sender", 2, "")
            + &rule("msg-domain", "messages", "sender_domain", 3, "")),
        "",
    );
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    let mut mail = |from: &str, code: u16| {
        let r = c.expect(&format!("MAIL FROM:<{from}>"), code);
        if code == 250 {
            c.expect("RSET", 250);
        }
        r
    };
    mail("a@one.test", 250);
    mail("A@One.test", 250);
    let r = mail("a@one.test", 451);
    assert_eq!(r.enhanced(), "4.7.1");
    assert!(
        r.text()
            .contains("Too many messages from a@one.test (2 per 1s)"),
        "{r:?}"
    );
    // The domain's third message is b's first; its fourth is refused.
    mail("b@one.test", 250);
    let r = mail("c@one.test", 451);
    assert!(r.text().contains("from one.test"), "{r:?}");
    mail("a@two.test", 250);
    // The null sender names nobody: bounces are not limited.
    for _ in 0..5 {
        mail("", 250);
    }
    std::thread::sleep(WINDOW);
    mail("a@one.test", 250);
    mail("c@one.test", 250);
}

#[test]
fn recipients_per_recipient_domain_and_messages_per_user_trip_at_the_limit() {
    let (gw, _p) = gateway(
        &(rule("rcpt-domain", "recipients", "recipient_domain", 3, "")
            + &rule("msg-user", "messages", "user", 1, "stage = \"data\"")),
        "",
    );
    let auth = |user: &str| {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret"));
        format!("AUTH PLAIN {b}")
    };
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect(&auth("alice"), 235);
    c.expect("MAIL FROM:<alice@example.org>", 250);
    for i in 0..3 {
        c.expect(&format!("RCPT TO:<r{i}@dest.test>"), 250);
    }
    let r = c.expect("RCPT TO:<r3@dest.test>", 451);
    assert!(
        r.text().contains("Too many recipients for dest.test"),
        "{r:?}"
    );
    c.expect("RCPT TO:<r3@other.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: one\r\n\r\nx\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!(r.code, 250, "alice's first message: {r:?}");
    // Her second message is refused at the end of its data.
    c.expect("MAIL FROM:<alice@example.org>", 250);
    c.expect("RCPT TO:<r@another.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: two\r\n\r\nx\r\n.\r\n");
    let r = c.read_reply();
    assert_eq!((r.code, r.enhanced()), (451, "4.7.1"), "{r:?}");
    assert!(r.text().contains("from alice"), "{r:?}");
    // Bob, authenticated on another connection, has his own count.
    let mut b = Client::connect(gw.addr("in"));
    b.expect("EHLO client.test", 250);
    b.expect(&auth("bob"), 235);
    b.expect("MAIL FROM:<bob@example.org>", 250);
    b.expect("RCPT TO:<x@third.test>", 250);
    b.expect("DATA", 354);
    b.send(b"Subject: bob\r\n\r\nx\r\n.\r\n");
    let r = b.read_reply();
    assert_eq!(r.code, 250, "bob: {r:?}");
    std::thread::sleep(WINDOW);
    c.expect("MAIL FROM:<alice@example.org>", 250);
    c.expect("RCPT TO:<r4@dest.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: three\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250, "served again after the window");
    assert_eq!(gw.spooled().len(), 3);
}

#[test]
fn redis_going_away_falls_back_as_configured_and_comes_back() {
    let mut redis = RedisServer::start();
    let (gw, _p) = gateway(
        &("on_state_error = \"tempfail\"\n".to_string()
            + &rule("strict", "messages", "sender", 100, "")),
        &redis.config(),
    );
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@one.test>", 250);
    c.expect("RSET", 250);
    redis.stop();
    let r = c.expect("MAIL FROM:<a@one.test>", 451);
    assert_eq!(r.enhanced(), "4.3.0", "{r:?}");
    let log = gw.wait_for_log("state backend unavailable", 1);
    assert!(
        log.contains("deferred (on_state_error = tempfail)"),
        "{log}"
    );
    redis.restart();
    // The connection comes back on its own; the next operations succeed.
    let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
    loop {
        let r = c.cmd("MAIL FROM:<a@one.test>");
        if r.code == 250 {
            break;
        }
        assert_eq!(r.code, 451, "{r:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(gw);

    // With the default, `allow`, the mail goes through and the log says so.
    let (gw, _p) = gateway(
        &rule("lenient", "messages", "sender", 100, ""),
        &redis.config(),
    );
    redis.stop();
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@one.test>", 250);
    let log = gw.wait_for_log("allowed (on_state_error = allow)", 1);
    assert!(log.contains("state backend unavailable"), "{log}");
}

#[test]
fn the_commented_example_configuration_loads() {
    let dir = plugin_dir(&[("ratelimit", "weir-plugin-ratelimit", "")]);
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../plugins/ratelimit/ratelimit.toml"
    );
    let out = crate::plugins::plugin_test_ok(
        &dir.path().join("ratelimit.wasm"),
        &["--hook", "connect", "--config", example],
    );
    assert!(out.contains("verdict: continue"), "{out}");
}
