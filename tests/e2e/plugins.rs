//! Plugins: the bundled ones build, with the SDK, into WebAssembly
//! components, and a live gateway runs them in a listener's chain.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{Client, Gateway, listener};

/// Builds a plugin crate for wasm32-wasip2 and returns the `.wasm` bytes.
/// A target directory of its own keeps the nested cargo off the lock of
/// the build that runs this test.
pub fn build(package: &str, file: &str) -> Vec<u8> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-plugins");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(target.join("wasm32-wasip2/release").join(file)).unwrap()
}

#[test]
fn the_bundled_plugin_builds_into_a_component() {
    let wasm = build(
        "weir-plugin-block-recipients",
        "weir_plugin_block_recipients.wasm",
    );
    // "\0asm", then version 0x0d and layer 1: a component, not a core module.
    assert_eq!(&wasm[..8], b"\0asm\x0d\x00\x01\x00");
    // It exports the contract's world.
    let text = String::from_utf8_lossy(&wasm);
    assert!(
        text.contains("weir:plugin/types@0.1.0"),
        "no weir:plugin interface in the component"
    );
    assert!(text.contains("on-rcpt"));
}

/// The block-recipients component, built once per test run.
fn block_recipients() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        build(
            "weir-plugin-block-recipients",
            "weir_plugin_block_recipients.wasm",
        )
    })
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
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[plugins]\ndir = \"{}\"\n{}",
            dir.path().join("data").display(),
            plugins.path().display(),
            listener("in", "chains = { rcpt = [\"broken\"] }")
        ),
    )
    .unwrap();
    let out = Command::new(crate::harness::weir_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugin broken"), "{err}");
}

#[test]
fn a_plugin_that_loops_allocates_or_traps_never_takes_the_gateway_down() {
    let wasm = build("weir-plugin-test-faults", "weir_plugin_test_faults.wasm");
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("faults.wasm"), &wasm).unwrap();
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
    for fault in ["loop", "alloc", "trap"] {
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
        3,
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
fn early_hooks_refuse_at_connect_helo_and_mail_from() {
    let wasm = build(
        "weir-plugin-example-policy",
        "weir_plugin_example_policy.wasm",
    );
    let plugins = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("policy.wasm"), &wasm).unwrap();
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
