//! What one plugin call costs through the runtime: the no-op plugin's rcpt
//! hook on a pooled instance (the path every envelope hook takes), the data
//! hook with the message resource, and a call that needs a fresh instance
//! (instantiation and `init` included).
//!
//! Run: `cargo bench -p weir --bench plugin_call`. It builds the no-op
//! plugin for wasm32-wasip2 first (a target directory of its own).
//! Each iteration includes a `block_on` of a current-thread runtime
//! (about 0.1 µs), as a session's await would not.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use weir::config::{ChainEntry, ListenerConfig, PluginSettings, PluginsConfig};
use weir::plugins::{Context, HookArgs, MessageView, Plugin, Runtime, Services};

fn noop_dir() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/wasm-bench");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "-p",
            "weir-plugin-noop",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the no-op plugin");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        target.join("wasm32-wasip2/plugin/weir_plugin_noop.wasm"),
        dir.path().join("noop.wasm"),
    )
    .unwrap();
    dir
}

fn load(rt: &tokio::runtime::Runtime, dir: &Path, instances: usize) -> (Runtime, Arc<Plugin>) {
    let mut config = PluginsConfig {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    config.settings.insert(
        "noop".into(),
        PluginSettings {
            instances,
            ..Default::default()
        },
    );
    let mut listener = ListenerConfig::default();
    listener.chains.rcpt = vec![ChainEntry::Name("noop".into())];
    let runtime = Runtime::new(
        &config,
        Services {
            resolver: None,
            state: Default::default(),
            authserv_id: "bench.test".into(),
        },
        None,
    )
    .unwrap();
    let generation = rt.block_on(runtime.load(&config, &[listener])).unwrap();
    let plugin = generation.plugins["noop"].clone();
    (runtime, plugin)
}

/// A transaction at its second RCPT, as the plugins would be told it.
fn context() -> Arc<Context> {
    Arc::new(Context {
        helo: Some("client.example.org".into()),
        queue_id: Some("1".into()),
        sender: Some("a@example.org".into()),
        recipients: vec!["b@example.net".into()],
        ..Context::new("192.0.2.1:40000".parse().unwrap(), "default")
    })
}

fn bench(c: &mut Criterion) {
    let dir = noop_dir();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_pooled_runtime, pooled) = load(&rt, dir.path(), 16);
    // What the harness itself costs, to subtract.
    c.bench_function("baseline: block_on of a ready future", |b| {
        b.iter(|| rt.block_on(async { std::hint::black_box(1) }))
    });
    let context = context();
    let rcpt = HookArgs::Rcpt("c@example.net");
    c.bench_function("rcpt hook, pooled instance", |b| {
        b.iter(|| rt.block_on(pooled.call(&context, &rcpt)).unwrap())
    });
    let message = Arc::new(MessageView::new(Arc::new(
        b"From: a@example.org\r\nSubject: s\r\n\r\nbody\r\n".to_vec(),
    )));
    let data = HookArgs::Data(message);
    c.bench_function(
        "data hook with the message resource, pooled instance",
        |b| b.iter(|| rt.block_on(pooled.call(&context, &data)).unwrap()),
    );
    // instances = 0: nothing is kept, so every call instantiates and inits.
    let (_fresh_runtime, fresh) = load(&rt, dir.path(), 0);
    c.bench_function(
        "rcpt hook, fresh instance (instantiate + init + call)",
        |b| b.iter(|| rt.block_on(fresh.call(&context, &rcpt)).unwrap()),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
