//! Plugins written in Python (componentize-py) and JavaScript
//! (componentize-js), built from `plugins/examples/` by their own scripts,
//! in one chain with a Rust plugin in a live gateway, and under
//! `weir plugin test`.
//!
//! The tools come from `plugins/examples/setup` (the README's test command
//! runs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::harness::{Client, Gateway, listener};
use crate::plugins::{plugin_test, plugin_test_ok, plugins_table, wasm};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds an example with `build` (given the output path) unless the
/// output of an earlier run was built from the same `inputs` (paths from
/// the repository's root; the contract is always one). Building a Python
/// or JavaScript component takes about ten seconds.
fn build_example(name: &str, inputs: &[&str], build: impl Fn(&Path) -> Command) -> Vec<u8> {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("example-plugins");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join(format!("{name}.wasm"));
    let stamp = out_dir.join(format!("{name}.inputs"));
    let mut digest = Sha256::new();
    for input in inputs.iter().chain(&["wit/plugin.wit"]) {
        digest.update(input.as_bytes());
        digest.update(std::fs::read(repo().join(input)).unwrap());
    }
    let digest = format!("{:x}", digest.finalize());
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(&digest)
        && let Ok(bytes) = std::fs::read(&out)
    {
        return bytes;
    }
    let result = build(&out).output().expect("the build script runs");
    assert!(
        result.status.success(),
        "building {name} failed (are the tools installed? plugins/examples/setup does it):\n{}{}",
        String::from_utf8_lossy(&result.stdout),
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::write(&stamp, digest).unwrap();
    std::fs::read(&out).unwrap()
}

/// `plugins/examples/python` (sender-policy), built with componentize-py.
fn python() -> &'static [u8] {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT.get_or_init(|| {
        example(
            "sender-policy",
            "plugins/examples/python",
            &["app.py", "build.sh", "requirements.txt"],
            &["bash", "build.sh"],
        )
    })
}

/// `plugins/examples/javascript` (content-inspector), built with
/// componentize-js.
fn javascript() -> &'static [u8] {
    static BUILT: OnceLock<Vec<u8>> = OnceLock::new();
    BUILT.get_or_init(|| {
        example(
            "content-inspector",
            "plugins/examples/javascript",
            &["plugin.js", "build.mjs", "package-lock.json"],
            &["node", "build.mjs"],
        )
    })
}

/// An example in `dir`, built by `script OUTPUT` run in `dir`, from
/// `inputs` in `dir`.
fn example(name: &str, dir: &str, inputs: &[&str], script: &[&str]) -> Vec<u8> {
    let inputs: Vec<String> = inputs.iter().map(|i| format!("{dir}/{i}")).collect();
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    build_example(name, &inputs, |out| {
        let mut cmd = Command::new(script[0]);
        cmd.args(&script[1..])
            .arg(out)
            .current_dir(repo().join(dir));
        cmd
    })
}

/// Compiles the two components into the tests' cache once, before any
/// test loads them: three tests compiling the same 30 MB of Wasm at once
/// on two cores would each wait half a minute.
fn compiled_once(dir: &Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        for name in ["sender-policy", "content-inspector"] {
            // connect: neither implements it, so this loads (and caches)
            // and exits 2; the second load finds the compiled form.
            for _ in 0..2 {
                let out = plugin_test(&dir.join(format!("{name}.wasm")), &["--hook", "connect"]);
                assert_eq!(
                    out.status.code(),
                    Some(2),
                    "{name}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let out = plugin_test(&dir.join(format!("{name}.wasm")), &["--hook", "connect"]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("(compiled form from the cache)"), "{text}");
        }
    });
}

/// A plugin directory with plugins in the three languages (two in Rust)
/// and their configurations.
fn three_languages() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files: [(&str, &[u8], &str); 4] = [
        (
            "block",
            wasm("weir-plugin-block-recipients"),
            "block = [\"rust-blocked@example.org\"]\n",
        ),
        (
            "sender-policy",
            python(),
            "block = [\"@blocked.example\"]\nmax_messages = 2\nwindow_secs = 3600\n",
        ),
        (
            "content-inspector",
            javascript(),
            "blocked_extensions = [\"exe\"]\nsubject_keywords = [\"invoice\"]\nkeyword_score = 2.5\n",
        ),
        (
            "filter",
            wasm("weir-plugin-example-filter"),
            "header = \"X-Rust: was here\"\n",
        ),
    ];
    for (name, bytes, toml) in files {
        std::fs::write(dir.path().join(format!("{name}.wasm")), bytes).unwrap();
        std::fs::write(dir.path().join(format!("{name}.toml")), toml).unwrap();
    }
    compiled_once(dir.path());
    dir
}

const INVOICE: &str = "From: <a@sender.test>\r\nSubject: Invoice 42 for March\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nThe invoice is attached.\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"invoice-42.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1--\r\n";

const PROGRAM: &str = "From: <a@sender.test>\r\nSubject: have a look\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nRun this.\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"Setup.EXE.\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b1--\r\n";

/// Sends one message's DATA on a session that has its recipients.
fn data(c: &mut Client, body: &str) -> crate::harness::Reply {
    c.expect("DATA", 354);
    c.send(body.as_bytes());
    c.send(b".\r\n");
    c.read_reply()
}

#[test]
fn python_javascript_and_rust_plugins_decide_and_change_mail_in_one_chain() {
    let plugins = three_languages();
    let gw = Gateway::start(&format!(
        "{}[plugins.settings.sender-policy]\ngrants = [\"state\", \"modify\"]\ninstances = 0\n\
         [plugins.settings.content-inspector]\ngrants = [\"modify\"]\n\
         [plugins.settings.filter]\ngrants = [\"modify\"]\n{}",
        plugins_table(plugins.path(), "watch = false"),
        listener(
            "in",
            "chains = { rcpt = [\"block\", \"sender-policy\"], data = [\"sender-policy\", \"content-inspector\", \"filter\"] }"
        )
    ));

    // RCPT: Rust's block list, then Python's.
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<a@sender.test>", 250);
    let r = c.expect("RCPT TO:<rust-blocked@example.org>", 550);
    assert!(
        r.text()
            .contains("<rust-blocked@example.org>: recipient refused by policy"),
        "{r:?}"
    );
    let r = c.expect("RCPT TO:<boss@Blocked.Example>", 550);
    assert_eq!(r.enhanced(), "5.7.1", "{r:?}");
    assert!(
        r.text()
            .contains("<boss@Blocked.Example>: mail to this recipient is blocked"),
        "{r:?}"
    );
    c.expect("RCPT TO:<b@example.org>", 250);

    // DATA: each language's change is in the spooled message, in chain
    // order (each adds at the top, so the last plugin's header is first).
    let r = data(&mut c, INVOICE);
    assert_eq!(r.code, 250, "{r:?}");
    let spooled = gw.spooled();
    assert_eq!(spooled.len(), 1);
    let (envelope, message) = &spooled[0];
    assert_eq!(
        envelope.recipients.len(),
        1,
        "the refused recipients are not queued"
    );
    let text = String::from_utf8_lossy(message);
    assert!(
        text.starts_with(
            "X-Rust: was here\r\n\
             X-Content-Inspected: attachments=1; keywords=invoice\r\n\
             X-Sender-Count: 1 in 3600s\r\n\
             Received: "
        ),
        "{text}"
    );
    // The JavaScript plugin's tag and score reach the gateway's log.
    let log = gw.wait_for_log("tags=[\"subject-keyword\"]", 1);
    assert!(log.contains("score=2.5"), "{log}");

    // DATA: JavaScript refuses an executable attachment; nothing is queued.
    c.expect("MAIL FROM:<a@sender.test>", 250);
    c.expect("RCPT TO:<b@example.org>", 250);
    let r = data(&mut c, PROGRAM);
    assert_eq!(r.code, 550, "{r:?}");
    assert_eq!(r.enhanced(), "5.7.1", "{r:?}");
    assert!(r.text().contains(".exe are not accepted"), "{r:?}");
    assert_eq!(gw.spooled().len(), 1);

    // DATA: Python counted both messages in `state` (every call has an
    // instance of its own here: `instances = 0`), across connections; the
    // third from this sender within the hour is deferred.
    let mut c = Client::connect(gw.addr("in"));
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<A@sender.test>", 250);
    c.expect("RCPT TO:<b@example.org>", 250);
    let r = data(&mut c, INVOICE);
    assert_eq!(r.code, 451, "{r:?}");
    assert_eq!(r.enhanced(), "4.7.1", "{r:?}");
    assert!(
        r.text().contains("Too many messages from a@sender.test"),
        "{r:?}"
    );
    // Another sender is not limited, and bounces (the null sender) are
    // not counted.
    c.expect("MAIL FROM:<other@sender.test>", 250);
    c.expect("RCPT TO:<b@example.org>", 250);
    assert_eq!(data(&mut c, INVOICE).code, 250);
    c.expect("MAIL FROM:<>", 250);
    c.expect("RCPT TO:<b@example.org>", 250);
    assert_eq!(data(&mut c, INVOICE).code, 250);
    let mut spooled = gw.spooled();
    spooled.sort_by_key(|(e, _)| e.sender.clone());
    assert_eq!(spooled.len(), 3);
    let bounce = String::from_utf8_lossy(&spooled[0].1);
    assert!(!bounce.contains("X-Sender-Count"), "{bounce}");
    assert!(
        String::from_utf8_lossy(&spooled[2].1).contains("X-Sender-Count: 1 in 3600s\r\n"),
        "a counter per sender"
    );
}

#[test]
fn weir_plugin_test_runs_the_python_and_javascript_plugins() {
    let plugins = three_languages();
    let eml = plugins.path().join("invoice.eml");
    std::fs::write(&eml, INVOICE).unwrap();
    let eml = eml.to_str().unwrap();

    // Python at RCPT: the verdict, and the costs it reports.
    let text = plugin_test_ok(
        &plugins.path().join("sender-policy.wasm"),
        &[
            "--hook",
            "rcpt",
            "--rcpt",
            "x@blocked.example",
            "--repeat",
            "20",
        ],
    );
    assert!(text.contains("hooks: rcpt, data"), "{text}");
    assert!(
        text.contains(
            "verdict: reject 550 5.7.1 <x@blocked.example>: mail to this recipient is blocked"
        ),
        "{text}"
    );
    assert!(text.contains("new instance: "), "{text}");
    assert!(text.contains("repeat: 20 calls"), "{text}");

    // Python at DATA: its header.
    let text = plugin_test_ok(
        &plugins.path().join("sender-policy.wasm"),
        &["--hook", "data", "--eml", eml],
    );
    assert!(text.contains("verdict: continue"), "{text}");
    assert!(
        text.contains("add-header X-Sender-Count: 1 in 3600s"),
        "{text}"
    );

    // JavaScript at DATA: header, tag and score, and the message they
    // leave.
    let text = plugin_test_ok(
        &plugins.path().join("content-inspector.wasm"),
        &["--hook", "data", "--eml", eml, "--show-message"],
    );
    assert!(text.contains("hooks: data"), "{text}");
    assert!(
        text.contains("add-header X-Content-Inspected: attachments=1; keywords=invoice"),
        "{text}"
    );
    assert!(text.contains("tag subject-keyword"), "{text}");
    assert!(text.contains("add-score 2.5"), "{text}");
    assert!(
        text.contains(
            "X-Content-Inspected: attachments=1; keywords=invoice\r\nFrom: <a@sender.test>"
        ),
        "{text}"
    );

    // A hook the plugin does not implement is said so (exit 2).
    let out = plugin_test(
        &plugins.path().join("content-inspector.wasm"),
        &["--hook", "rcpt"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_python_or_javascript_plugin_refuses_a_bad_configuration_in_its_own_words() {
    let plugins = three_languages();
    let bad = plugins.path().join("bad.toml");
    for (file, config, said) in [
        (
            "sender-policy.wasm",
            "max_mesages = 3\n",
            "sender-policy: unknown keys: max_mesages",
        ),
        (
            "sender-policy.wasm",
            "block = \"x@example.org\"\n",
            "sender-policy: block must be a list of addresses or @domains",
        ),
        (
            "sender-policy.wasm",
            "window_secs = 5000000000\n",
            "sender-policy: window_secs must be a whole number from 1 to 4294967295",
        ),
        (
            "sender-policy.wasm",
            "count_header = \"X-Count: 1\"\n",
            "sender-policy: count_header must be a header field name",
        ),
        (
            "content-inspector.wasm",
            "header = \"Bad Name\"\n",
            "content-inspector: header must be a header field name",
        ),
        (
            "content-inspector.wasm",
            "subject_keyword = [\"x\"]\n",
            "content-inspector: unknown keys: subject_keyword",
        ),
        (
            "content-inspector.wasm",
            "keyword_score = \"high\"\n",
            "content-inspector: keyword_score must be a number",
        ),
    ] {
        std::fs::write(&bad, config).unwrap();
        let out = plugin_test(
            &plugins.path().join(file),
            &["--hook", "data", "--config", bad.to_str().unwrap()],
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{file} with {config:?}: {all}");
        assert!(all.contains(said), "{file} with {config:?}: {all}");
    }
}
