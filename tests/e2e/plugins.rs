//! The bundled plugins build, with the SDK, into WebAssembly components
//! (the gateway's plugin runtime that loads them is still being built).

use std::path::Path;
use std::process::Command;

/// Builds a plugin crate for wasm32-wasip2 and returns the `.wasm` bytes.
/// A target directory of its own keeps the nested cargo off the lock of
/// the build that runs this test.
fn build(package: &str, file: &str) -> Vec<u8> {
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
