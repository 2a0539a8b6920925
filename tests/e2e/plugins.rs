//! Plugins: the bundled ones build, with the SDK, into WebAssembly
//! components, and a live gateway runs them in a listener's chain.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{Client, Gateway, listener};
use crate::sink::{Sink, SinkOptions};

/// The plugin crates the tests use, built together once per test run.
const CRATES: &[&str] = &[
    "weir-plugin-antispam",
    "weir-plugin-attachments",
    "weir-plugin-auth-policy",
    "weir-plugin-block-recipients",
    "weir-plugin-example-policy",
    "weir-plugin-example-filter",
    "weir-plugin-noop",
    "weir-plugin-ratelimit",
    "weir-plugin-test-echo",
    "weir-plugin-test-faults",
    "weir-plugin-test-unknown-import",
    "weir-plugin-transport-rules",
];

/// The `.wasm` of a plugin crate (`weir_plugin_noop.wasm` for
/// `weir-plugin-noop`), built for wasm32-wasip2 with the `plugin` profile
/// (release, without debug information). A target
/// directory of its own keeps the nested cargo off the lock of the build
/// that runs this test.
pub fn wasm(package: &str) -> &'static [u8] {
    static BUILT: OnceLock<std::collections::HashMap<String, Vec<u8>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-plugins");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--profile", "plugin", "--target", "wasm32-wasip2"]);
        for c in CRATES {
            cmd.args(["-p", c]);
        }
        let out = cmd
            .arg("--target-dir")
            .arg(&target)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the plugins: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        CRATES
            .iter()
            .map(|c| {
                let file = format!("{}.wasm", c.replace('-', "_"));
                let bytes = std::fs::read(target.join("wasm32-wasip2/plugin").join(&file))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                (c.to_string(), bytes)
            })
            .collect()
    });
    &built[package]
}

/// A plugin directory: (name, crate, NAME.toml).
pub fn plugin_dir(plugins: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, package, toml) in plugins {
        std::fs::write(dir.path().join(format!("{name}.wasm")), wasm(package)).unwrap();
        if !toml.is_empty() {
            std::fs::write(dir.path().join(format!("{name}.toml")), toml).unwrap();
        }
    }
    dir
}

/// The `[plugins]` table for a directory, with a compile cache shared by
/// the tests of this run (it is exercised, and starts stay quick).
pub fn plugins_table(dir: &Path, extra: &str) -> String {
    format!(
        "[plugins]\ndir = \"{}\"\ncache_dir = \"{}\"\n{extra}\n",
        dir.display(),
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("plugin-cache")
            .display()
    )
}

/// Runs `weir plugin test FILE ARGS...` with the tests' compile cache.
pub fn plugin_test(file: &Path, args: &[&str]) -> std::process::Output {
    Command::new(crate::harness::weir_bin())
        .args(["plugin", "test"])
        .arg(file)
        .args(args)
        .arg("--cache-dir")
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"))
        .output()
        .unwrap()
}

/// `plugin_test` that must succeed; returns what it printed.
pub fn plugin_test_ok(file: &Path, args: &[&str]) -> String {
    let out = plugin_test(file, args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "weir plugin test {} {args:?}: {text}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Starts weir with `plugin` in a chain, expecting it to refuse to start;
/// returns what it said.
fn refused_at_start(plugins: &Path, plugin: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{}{}",
            dir.path().join("data").display(),
            plugins_table(plugins, ""),
            listener("in", &format!("chains = {{ rcpt = [\"{plugin}\"] }}"))
        ),
    )
    .unwrap();
    let out = Command::new(crate::harness::weir_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_bundled_plugin_builds_into_a_component() {
    let wasm = wasm("weir-plugin-block-recipients");
    // "\0asm", then version 0x0d and layer 1: a component, not a core module.
    assert_eq!(&wasm[..8], b"\0asm\x0d\x00\x01\x00");
    // It exports the contract's world.
    let text = String::from_utf8_lossy(wasm);
    assert!(
        text.contains("weir:plugin/types@0.2.0"),
        "no weir:plugin interface in the component"
    );
    assert!(text.contains("on-rcpt"));
}

fn block_recipients() -> &'static [u8] {
    wasm("weir-plugin-block-recipients")
}

#[test]
fn perf_map_lets_perf_name_the_plugins_code() {
    let plugins = plugin_dir(&[("noop", "weir-plugin-noop", "")]);
    let gw = Gateway::start(&format!(
        "{}{}",
        plugins_table(plugins.path(), "perf_map = true"),
        listener("in", "chains = { rcpt = [\"noop\"] }")
    ));
    // perf's convention: /tmp/perf-PID.map, one "address size name" line
    // per function. Plugins are loaded before the listeners are ready.
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", gw.pid()));
    let text = std::fs::read_to_string(&map);
    let _ = std::fs::remove_file(&map);
    let text = text.expect("the perf map is written");
    assert!(
        text.lines().any(|l| l
            .split_whitespace()
            .nth(2)
            .is_some_and(|n| n.starts_with("wasm"))),
        "{text}"
    );
}

#[test]
fn a_plugin_in_the_rcpt_chain_refuses_with_its_own_reply() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("block.wasm"), block_recipients()).unwrap();
    std::fs::write(
        plugins.path().join("block.toml"),
        "block = [\"trap@example.org\", \"Abuse@Example.org\"]\n",
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = \"{}\"\n{}",
        plugins.path().display(),
        listener("in", "chains = { rcpt = [\"block\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    let r = c.expect("RCPT TO:<trap@example.org>", 550);
    assert_eq!(r.enhanced(), "5.7.1");
    assert!(
        r.text()
            .contains("<trap@example.org>: recipient refused by policy"),
        "{r:?}"
    );
    c.expect("RCPT TO:<abuse@example.org>", 550);
    c.expect("RCPT TO:<friend@example.org>", 250);
    // Many calls: the pooled instances keep serving.
    for i in 0..50 {
        c.expect(&format!("RCPT TO:<user{i}@example.org>"), 250);
    }
    c.expect("DATA", 354);
    c.send(b"Subject: through the chain\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);
    let (env, _) = &gw.spooled()[0];
    assert!(
        env.recipients
            .iter()
            .all(|r| !r.address.contains("trap") && !r.address.contains("abuse"))
    );
    assert!(
        gw.log().contains("plugin loaded plugin=\"block\"") || gw.log().contains("plugin loaded"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_file_that_is_not_a_component_is_refused_at_start_with_its_name() {
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("broken.wasm"), b"\0asm not really").unwrap();
    let err = refused_at_start(plugins.path(), "broken");
    assert!(err.contains("plugin broken"), "{err}");
}

#[test]
fn a_plugin_that_loops_allocates_or_traps_never_takes_the_gateway_down() {
    let wasm = wasm("weir-plugin-test-faults");
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("faults.wasm"), wasm).unwrap();
    std::fs::write(plugins.path().join("block.wasm"), block_recipients()).unwrap();
    std::fs::write(
        plugins.path().join("block.toml"),
        "block = [\"no@example.org\"]\n",
    )
    .unwrap();
    // on_error = tempfail (the default): a fault gets 451 4.3.0.
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = \"{}\"\n{}",
        plugins.path().display(),
        listener("in", "chains = { rcpt = [\"faults\", \"block\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    // `lookups` loops over an import that answers at once (DNS without
    // the grant): that is the plugin's own time, and its deadline stops it.
    for fault in ["loop", "alloc", "trap", "lookups"] {
        let r = c.expect(&format!("RCPT TO:<{fault}@example.org>"), 451);
        assert_eq!(r.enhanced(), "4.3.0", "{fault}: {r:?}");
    }
    // The chain goes on working: the next plugin still decides, new
    // instances replace the failed ones, and new sessions are served.
    c.expect("RCPT TO:<no@example.org>", 550);
    c.expect("RCPT TO:<fine@example.org>", 250);
    let mut other = Client::connect(gw.addr("in"));
    other.expect("EHLO other.test", 250);
    let log = gw.log();
    assert_eq!(
        log.matches("plugin failed; on_error applies").count(),
        4,
        "{log}"
    );
    assert!(
        log.contains("plugin=faults"),
        "the fault names the plugin: {log}"
    );
    drop(gw);

    // on_error = continue: the failed plugin is skipped.
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = \"{}\"\non_error = \"continue\"\n{}",
        plugins.path().display(),
        listener("in", "chains = { rcpt = [\"faults\", \"block\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<trap@example.org>", 250);
    c.expect("RCPT TO:<loop@example.org>", 250);
    c.expect("RCPT TO:<no@example.org>", 550);
}

#[test]
fn waiting_on_imports_is_credited_only_up_to_wait_limit() {
    // `slow.test` never answers: each lookup of the plugin's endless loop
    // really waits, which is credited to its deadline, but only up to the
    // plugin's wait_limit; then the call is stopped.
    let mut records = crate::dns::Records::new();
    records.timeout("slow.test");
    let dns = crate::dns::TestDns::serve(records);
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(
        plugins.path().join("faults.wasm"),
        wasm("weir-plugin-test-faults"),
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "{}[plugins]\ndir = \"{}\"\n[plugins.settings.faults]\ngrants = [\"dns\"]\nwait_limit = \"700ms\"\n{}",
        dns.config(),
        plugins.path().display(),
        listener("in", "chains = { rcpt = [\"faults\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    let r = c.expect("RCPT TO:<lookups@example.org>", 451);
    assert_eq!(r.enhanced(), "4.3.0", "{r:?}");
    c.expect("RCPT TO:<fine@example.org>", 250);
    let log = gw.log();
    assert!(
        log.contains("longer than its wait_limit of 700ms"),
        "the log says why: {log}"
    );
}

#[test]
fn early_hooks_refuse_at_connect_helo_and_mail_from() {
    let wasm = wasm("weir-plugin-example-policy");
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("policy.wasm"), wasm).unwrap();
    std::fs::write(
        plugins.path().join("policy.toml"),
        "drop_clients = [\"127.0.0.1\"]\nbad_helo = [\"friend\"]\nlater_senders = [\"slow@example.org\"]\n",
    )
    .unwrap();
    let gw = Gateway::start(&format!(
        "[plugins]\ndir = \"{}\"\n{}{}",
        plugins.path().display(),
        listener("guarded", "chains = { connect = [\"policy\"] }"),
        listener(
            "in",
            "chains = { helo = [\"policy\"], mail_from = [\"policy\"] }"
        ),
    ));
    // A client the plugin drops: 554 instead of the greeting, then closed.
    let mut dropped = Client::connect_raw(gw.addr("guarded"));
    let r = dropped.read_reply();
    assert_eq!((r.code, r.enhanced()), (554, "5.7.1"), "{r:?}");
    dropped.expect_closed();
    // A HELO name the plugin refuses gets 550.
    let mut c = Client::connect(gw.addr("in"));
    let r = c.expect("EHLO friend", 550);
    assert!(r.text().contains("HELO friend"), "{r:?}");
    // Refused, the client has not said hello yet.
    c.expect("MAIL FROM:<a@example.org>", 503);
    c.expect("EHLO client.test", 250);
    let r = c.expect("MAIL FROM:<slow@example.org>", 451);
    assert_eq!(r.enhanced(), "4.7.1");
    c.expect("MAIL FROM:<quick@example.org>", 250);
}

/// A message with a text part and an executable attachment.
const WITH_ATTACHMENT: &str = "From: <a@sender.test>\r\nSubject: the invoice\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nPlease see the attachment.\r\n--b1\r\nContent-Type: application/octet-stream; name=\"invoice.pdf.exe\"\r\nContent-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAA\r\n--b1--\r\n";

#[test]
fn a_data_plugin_adds_a_header_and_strips_an_attachment_in_the_spooled_message() {
    let plugins = plugin_dir(&[(
        "filter",
        "weir-plugin-example-filter",
        "header = \"X-Filtered: by weir\"\nstrip_extensions = [\"exe\"]\n",
    )]);
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.filter]\ngrants = [\"modify\"]\n{}",
        plugins_table(plugins.path(), ""),
        listener("in", "chains = { data = [\"filter\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    let r = c.send_mail("a@sender.test", &["b@example.org"], WITH_ATTACHMENT);
    assert_eq!(r.code, 250, "{r:?}");
    let spooled = gw.spooled();
    let text = String::from_utf8_lossy(&spooled[0].1).into_owned();
    assert!(
        text.starts_with("X-Filtered: by weir\r\nReceived: "),
        "the header is added at the top: {text}"
    );
    // The attachment is gone, a note in its place; the text part stays.
    let parsed = mail_parser::MessageParser::default()
        .parse(text.as_bytes())
        .unwrap();
    assert_eq!(parsed.parts.len(), 3, "{text}");
    assert!(!text.contains("TVqQAAMAAAAEAAAA"), "{text}");
    assert_eq!(
        parsed.body_text(1).unwrap().trim(),
        "The attachment invoice.pdf.exe was removed by policy."
    );
    assert!(text.contains("Please see the attachment."));
    assert_eq!(spooled[0].0.size as usize, spooled[0].1.len());

    // Without the `modify` grant the same plugin changes nothing, and the
    // log says why.
    let gw = Gateway::start(&format!(
        "{}{}",
        plugins_table(plugins.path(), ""),
        listener("in", "chains = { data = [\"filter\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    assert_eq!(
        c.send_mail("a@sender.test", &["b@example.org"], WITH_ATTACHMENT)
            .code,
        250
    );
    let text = String::from_utf8_lossy(&gw.spooled()[0].1).into_owned();
    assert!(!text.contains("X-Filtered"), "{text}");
    assert!(text.contains("TVqQAAMAAAAEAAAA"));
    assert!(gw.log().contains("without the `modify` grant"));
}

#[test]
fn a_pre_delivery_plugin_reroutes_through_another_route() {
    let default_sink = Sink::start(SinkOptions::default());
    let partner_sink = Sink::start(SinkOptions::default());
    let plugins = plugin_dir(&[(
        "filter",
        "weir-plugin-example-filter",
        "header = \"X-Seen: yes\"\n[[reroute]]\ndomain = \"partner.test\"\nroute = \"partner\"\n",
    )]);
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.filter]\ngrants = [\"modify\"]\n{}\
         [[route]]\nname = \"default\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n\
         [[route]]\nname = \"partner\"\ndomains = [\"only-by-plugin.invalid\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n",
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            "chains = { data = [\"filter\"], pre_delivery = [\"filter\"] }"
        ),
        default_sink.addr.port(),
        partner_sink.addr.port(),
    ));
    let mut c = Client::connect(gw.addr("in"));
    let body = "Subject: s\r\n\r\nx\r\n";
    assert_eq!(
        c.send_mail("a@sender.test", &["bob@partner.test"], body)
            .code,
        250
    );
    c.expect("RSET", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<carol@other.test>", 250);
    c.expect("DATA", 354);
    c.send(b"Subject: s\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.read_reply().code, 250);

    let got = partner_sink.wait_for(1);
    assert_eq!(got[0].rcpts, ["bob@partner.test"]);
    // The header the data hook added travelled with it.
    assert!(String::from_utf8_lossy(&got[0].data).starts_with("X-Seen: yes\r\n"));
    let got = default_sink.wait_for(1);
    assert_eq!(got[0].rcpts, ["carol@other.test"]);
    assert_eq!(partner_sink.received().len(), 1, "carol was not rerouted");
    assert!(gw.log().contains("rerouted by a plugin"));
}

#[test]
fn a_state_counter_is_shared_across_connections() {
    let plugins = plugin_dir(&[(
        "filter",
        "weir-plugin-example-filter",
        "max_messages_per_sender = 2\nwindow_secs = 3600\n",
    )]);
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.filter]\ngrants = [\"state\"]\n{}",
        plugins_table(plugins.path(), ""),
        listener("in", "chains = { mail_from = [\"filter\"] }")
    ));
    // Each MAIL FROM on a connection of its own (and so, often, on another
    // pooled instance): only the shared counter can see them all.
    for _ in 0..2 {
        let mut c = Client::connect(gw.addr("in"));
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<busy@sender.test>", 250);
    }
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    let r = c.expect("MAIL FROM:<Busy@Sender.test>", 451);
    assert_eq!(r.enhanced(), "4.7.1");
    // Another sender has a counter of its own.
    c.expect("MAIL FROM:<quiet@sender.test>", 250);

    // Without the grant the plugin is told `denied` and fails open.
    let gw = Gateway::start(&format!(
        "{}{}",
        plugins_table(plugins.path(), ""),
        listener("in", "chains = { mail_from = [\"filter\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    for _ in 0..3 {
        c.expect("MAIL FROM:<busy@sender.test>", 250);
        c.expect("RSET", 250);
    }
    let log = gw.log();
    assert!(
        log.contains("state unavailable") && log.contains("Denied"),
        "{log}"
    );
}

#[test]
fn a_component_importing_what_the_gateway_lacks_is_refused_naming_the_import() {
    let plugins = plugin_dir(&[("odd", "weir-plugin-test-unknown-import", "")]);
    let err = refused_at_start(plugins.path(), "odd");
    assert!(
        err.contains("plugin odd") && err.contains("test:unknown/clock"),
        "{err}"
    );
}

#[test]
fn a_plugin_replaced_while_sessions_run_serves_new_sessions_and_none_fails() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let plugins = plugin_dir(&[(
        "gate",
        "weir-plugin-block-recipients",
        "block = [\"a@example.org\"]\n",
    )]);
    let gw = Gateway::start(&format!(
        "{}{}",
        plugins_table(plugins.path(), "watch_interval = \"100ms\""),
        listener("in", "chains = { rcpt = [\"gate\"] }")
    ));
    let addr = gw.addr("in");
    // Sessions run all along; each must be served by the old plugin or the
    // new one, never fail.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = Client::connect(addr);
                    c.expect("EHLO client.test", 250);
                    c.expect("MAIL FROM:<s@sender.test>", 250);
                    let r = c.cmd("RCPT TO:<a@example.org>");
                    assert!(r.code == 550 || r.code == 250, "{r:?}");
                    c.expect("RCPT TO:<b@example.org>", 250);
                    c.expect("QUIT", 221);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let rcpt_a = || {
        let mut c = Client::connect(addr);
        c.expect("EHLO client.test", 250);
        c.expect("MAIL FROM:<s@sender.test>", 250);
        c.cmd("RCPT TO:<a@example.org>").code
    };
    assert_eq!(rcpt_a(), 550);

    // A broken file first: reported with its name, the chain in service stays.
    let replace = |bytes: &[u8]| {
        let tmp = plugins.path().join("gate.wasm.part");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, plugins.path().join("gate.wasm")).unwrap();
    };
    replace(b"\0asm this is not a component");
    let log = gw.wait_for_log("reload failed", 1);
    assert!(log.contains("plugin gate"), "{log}");
    assert_eq!(rcpt_a(), 550);

    // Then a working one (the no-op plugin): new sessions see it.
    replace(wasm("weir-plugin-noop"));
    gw.wait_for_log("plugins reloaded", 1);
    assert_eq!(rcpt_a(), 250);

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("no session failed");
    }
    assert!(served.load(Ordering::Relaxed) >= 2);
}

#[test]
fn the_cli_lists_plugins_reloads_and_tests_one() {
    let plugins = plugin_dir(&[
        (
            "block",
            "weir-plugin-block-recipients",
            "block = [\"x@example.org\"]\n",
        ),
        (
            "filter",
            "weir-plugin-example-filter",
            "header = \"X-A: b\"\n",
        ),
    ]);
    let gw = Gateway::start(&format!(
        "{}watch = false\n[plugins.settings.filter]\ngrants = [\"modify\", \"state\"]\n{}",
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            "chains = { rcpt = [\"block\", { plugin = \"block\", config = { block = [\"y@example.org\"] }, on_error = \"continue\" }], data = [\"filter\"] }"
        )
    ));

    // `weir plugins ls`: each plugin with hooks and grants, each chain in order.
    let out = gw.cli(&["plugins", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("filter  sha256:"), "{text}");
    assert!(
        text.contains("hooks: mail_from,data,pre_delivery  grants: modify,state"),
        "{text}"
    );
    assert!(text.contains("in rcpt: block -> block#"), "{text}");
    assert!(text.contains("in data: filter"), "{text}");
    // The entry with its own config is a plugin instance of its own.
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@sender.test>", 250);
    c.expect("RCPT TO:<x@example.org>", 550);
    c.expect("RCPT TO:<y@example.org>", 550);
    c.expect("RCPT TO:<z@example.org>", 250);

    // `weir plugins reload`: SIGHUP to the running gateway.
    let out = gw.cli(&["plugins", "reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.wait_for_log("plugins reloaded", 1);
    assert!(gw.log().contains("reason=Signal"));

    // `weir plugin test`: one plugin, one hook, no server.
    let eml = plugins.path().join("m.eml");
    std::fs::write(&eml, "Subject: hi\n\nbody\n").unwrap();
    let text = plugin_test_ok(
        &plugins.path().join("filter.wasm"),
        &[
            "--hook",
            "data",
            "--show-message",
            "--eml",
            eml.to_str().unwrap(),
        ],
    );
    assert!(text.contains("verdict: continue"), "{text}");
    assert!(text.contains("add-header X-A: b"), "{text}");
    assert!(text.contains("X-A: b\r\nSubject: hi\r\n"), "{text}");
    let out = plugin_test(
        &plugins.path().join("block.wasm"),
        &[
            "--hook",
            "rcpt",
            "--rcpt",
            "x@example.org",
            "--repeat",
            "10",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdict: reject 550 5.7.1 <x@example.org>"),
        "{text}"
    );
    assert!(text.contains("new instance: "), "{text}");
    assert!(
        text.contains("repeat: 10 calls on a ready instance: median "),
        "{text}"
    );
}

#[test]
fn a_plugin_with_the_dns_grant_looks_names_up_through_the_gateways_resolver() {
    use crate::dns::{TestDns, zone};
    let dns = TestDns::start(&[("example.test", zone("example.test", "mx IN A 127.0.0.1"))]);
    let plugins = plugin_dir(&[(
        "policy",
        "weir-plugin-example-policy",
        "helo_must_resolve = true\n",
    )]);
    let gw = Gateway::start(&format!(
        "{}{}[plugins.settings.policy]\ngrants = [\"dns\"]\n{}",
        dns.config(),
        plugins_table(plugins.path(), ""),
        listener("in", "chains = { helo = [\"policy\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO mx.example.test", 250);
    let r = c.expect("EHLO nothing.example.test", 550);
    assert!(r.text().contains("has no address in the DNS"), "{r:?}");

    // Without the grant the plugin is told `denied` and lets it pass.
    let gw = Gateway::start(&format!(
        "{}{}{}",
        dns.config(),
        plugins_table(plugins.path(), ""),
        listener("in", "chains = { helo = [\"policy\"] }")
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO nothing.example.test", 250);
    let log = gw.log();
    assert!(
        log.contains("HELO check skipped") && log.contains("Denied"),
        "{log}"
    );
}

#[test]
fn the_transaction_interface_tells_each_hook_what_it_is_about() {
    let sink = Sink::start(SinkOptions::default());
    // example-filter tags and scores a message it strips an attachment
    // of: what echo, after it in the chain, must see.
    let plugins = plugin_dir(&[
        ("echo", "weir-plugin-test-echo", ""),
        (
            "filter",
            "weir-plugin-example-filter",
            "strip_extensions = [\"exe\"]\n",
        ),
    ]);
    let certs = tempfile::tempdir().unwrap();
    let (keys, cert) = crate::harness::test_cert(certs.path());
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.echo]\ngrants = [\"modify\"]\ndeadline = \"100ms\"\n\
         [plugins.settings.filter]\ngrants = [\"modify\"]\n{}\
         [[route]]\nname = \"sink\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n",
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            &format!(
                "tls = \"starttls\"\n{keys}local_domains = [\"example.org\"]\n\
                 chains = {{ rcpt = [\"echo\"], data = [\"filter\", \"echo\"], pre_delivery = [\"echo\"] }}"
            )
        ),
        sink.addr.port(),
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("STARTTLS", 220);
    c.start_tls(&cert);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<b@example.org>", 250);
    c.expect("RCPT TO:<c@elsewhere.test>", 250);
    // At RCPT, `recipients` lists those accepted before this one.
    let r = c.expect("RCPT TO:<recipients@example.org>", 550);
    assert_eq!(r.text(), "5.1.1 before me: b@example.org,c@elsewhere.test");
    // A plugin spinning at RCPT is stopped at its deadline.
    let r = c.expect("RCPT TO:<spin@example.org>", 451);
    assert_eq!(r.enhanced(), "4.3.0");
    c.expect("DATA", 354);
    c.send(WITH_ATTACHMENT.as_bytes());
    c.send(b".\r\n");
    assert_eq!(c.read_reply().code, 250);

    let got = sink.wait_for(1);
    // Unfolded (RFC 5322 2.2.3): the gateway folds long fields.
    let text = String::from_utf8_lossy(&got[0].data).replace("\r\n ", " ");
    let header = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_string()
    };
    // The filter's tag and score are there for echo at once.
    assert_eq!(
        header("X-Echo-Data: "),
        "ip=127.0.0.1 port=set listener=in helo=client.test tls=TLSv1_3 user=none \
         queue=set sender=<a@sender.test> rcpts=b@example.org,c@elsewhere.test local=true,false \
         tags=stripped-attachment score=1.0"
    );
    // Before delivery: how the message arrived, what the data chain made
    // of it, and this attempt's recipients (both go to the one smart-host
    // route, named as the destination).
    assert_eq!(
        header("X-Echo-Delivery: "),
        "ip=127.0.0.1 port=set listener=in helo=client.test tls=TLSv1_3 user=none \
         queue=set sender=<a@sender.test> rcpts=b@example.org,c@elsewhere.test local=true,false \
         tags=stripped-attachment score=1.0 destination=sink"
    );
    assert!(
        gw.log().contains("deadline of 100ms passed"),
        "{}",
        gw.log()
    );
}

#[test]
fn a_message_held_before_delivery_is_released_past_the_verdict() {
    let sink = Sink::start(SinkOptions::default());
    let plugins = plugin_dir(&[("echo", "weir-plugin-test-echo", "")]);
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.echo]\ngrants = [\"modify\"]\n{}\
         [[route]]\nname = \"sink\"\ndomains = [\"*\"]\ntype = \"smarthost\"\nhosts = [\"127.0.0.1:{}\"]\n",
        plugins_table(plugins.path(), ""),
        listener(
            "in",
            "local_domains = [\"example.org\"]\nchains = { pre_delivery = [\"echo\"] }"
        ),
        sink.addr.port(),
    ));
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    let r = c.send_mail(
        "a@sender.test",
        &["hold@example.org"],
        "Subject: held\r\n\r\nx\r\n",
    );
    assert_eq!(r.code, 250, "{r:?}");
    let queued = r.text().rsplit(' ').next().unwrap().to_string();
    gw.wait_for_log("quarantined before delivery", 1);

    // The copy has a queue id of its own (one per next hop can be held).
    let ls = gw.cli(&["quarantine", "ls"]);
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert_eq!(ls.lines().count(), 1, "{ls}");
    assert!(
        ls.contains("[echo at pre-delivery: held before delivery]"),
        "{ls}"
    );
    let id = ls.split_whitespace().next().unwrap().to_string();
    assert_ne!(id, queued, "{ls}");

    // A file in released/ that is no quarantined message is set aside and
    // does not stop the release of the others.
    let released = gw.data_dir().join("quarantine/released");
    std::fs::create_dir_all(&released).unwrap();
    std::fs::write(released.join("0000000000000042.msg"), b"garbage").unwrap();

    // Released, the pre-delivery chain quarantines it again, and the
    // gateway delivers it all the same: it does not go round for ever.
    let out = gw.cli(&["quarantine", "release", &id]);
    assert!(out.status.success(), "{out:?}");
    let got = sink.wait_for(1);
    assert_eq!(got[0].rcpts, ["hold@example.org"]);
    let log = gw.wait_for_log("delivered despite the quarantine verdict", 1);
    assert!(log.contains("set aside"), "{log}");
    assert!(released.join("0000000000000042.corrupt").is_file());
    assert!(gw.cli(&["quarantine", "ls"]).stdout.is_empty());
}
