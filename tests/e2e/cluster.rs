//! Two gateways sharing one real redis-server: a limit of N per sender
//! holds for both together, a greylisting pass on one is honoured by the
//! other, and when Redis goes away greylisting lets mail through and says
//! so.

use std::time::Duration;

use crate::dns::{Records, TestDns};
use crate::harness::{Client, Gateway, listener};
use crate::plugins::{plugin_dir, plugins_table};
use crate::redis::RedisServer;

/// A gateway for example.test with `plugin` (granted what it needs) at
/// `hook`, its state in `redis`.
fn gateway(
    redis: &RedisServer,
    dns: &TestDns,
    plugins: &std::path::Path,
    plugin: &str,
    hook: &str,
) -> Gateway {
    Gateway::start(&format!(
        "{}{}{}[plugins.settings.{plugin}]\ngrants = [\"dns\", \"state\"]\n{}",
        redis.config(),
        dns.config(),
        plugins_table(plugins, ""),
        listener(
            "in",
            &format!("local_domains = [\"example.test\"]\nchains = {{ {hook} = [\"{plugin}\"] }}")
        )
    ))
}

/// MAIL FROM and RCPT TO on a new connection: the code of the first that
/// is not 250, or 250.
fn attempt(gw: &Gateway, from: &str, to: &str) -> u16 {
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.example.test", 250);
    let r = c.cmd(&format!("MAIL FROM:<{from}>"));
    if r.code != 250 {
        return r.code;
    }
    c.cmd(&format!("RCPT TO:<{to}>")).code
}

fn dns() -> TestDns {
    let mut records = Records::new();
    records.exists("example.test");
    TestDns::serve(records)
}

#[test]
fn a_limit_per_sender_holds_for_two_gateways_together() {
    let redis = RedisServer::start();
    let dns = dns();
    let plugins = plugin_dir(&[(
        "ratelimit",
        "weir-plugin-ratelimit",
        "[[rule]]\nname = \"per-sender\"\ncount = \"messages\"\nkey = \"sender\"\nlimit = 3\nwindow = \"1h\"\n",
    )]);
    let one = gateway(&redis, &dns, plugins.path(), "ratelimit", "mail_from");
    let two = gateway(&redis, &dns, plugins.path(), "ratelimit", "mail_from");
    // Three from one sender, spread over both; the fourth is refused by
    // whichever gateway gets it.
    assert_eq!(attempt(&one, "busy@sender.test", "r@example.test"), 250);
    assert_eq!(attempt(&two, "busy@sender.test", "r@example.test"), 250);
    assert_eq!(attempt(&one, "busy@sender.test", "r@example.test"), 250);
    assert_eq!(attempt(&two, "busy@sender.test", "r@example.test"), 451);
    assert_eq!(attempt(&one, "busy@sender.test", "r@example.test"), 451);
    assert_eq!(attempt(&two, "quiet@sender.test", "r@example.test"), 250);
}

#[test]
fn greylisting_passed_on_one_gateway_is_honoured_by_the_other() {
    let mut redis = RedisServer::start();
    let dns = dns();
    let plugins = plugin_dir(&[(
        "antispam",
        "weir-plugin-antispam",
        "[greylist]\nenabled = true\ndelay = \"1s\"\nexpiry = \"1m\"\n",
    )]);
    let one = gateway(&redis, &dns, plugins.path(), "antispam", "rcpt");
    let two = gateway(&redis, &dns, plugins.path(), "antispam", "rcpt");
    // Greylisted on one, too soon on the other; after the delay, the
    // retry on the other passes, and so does the next on the first.
    assert_eq!(attempt(&one, "new@sender.test", "r@example.test"), 451);
    assert_eq!(attempt(&two, "new@sender.test", "r@example.test"), 451);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(attempt(&two, "new@sender.test", "r@example.test"), 250);
    assert_eq!(attempt(&one, "new@sender.test", "r@example.test"), 250);

    // Redis gone: greylisting fails open (a first attempt is let
    // through), and the log says so.
    redis.stop();
    assert_eq!(attempt(&one, "other@sender.test", "r@example.test"), 250);
    let log = one.wait_for_log("mail let through (greylisting fails open)", 1);
    assert!(log.contains("state backend unavailable"), "{log}");
}
