//! Compiled components on disk, so that a component is compiled once per
//! content, wasmtime version and engine settings: a Rust plugin compiles in
//! tens of milliseconds but a Python or JavaScript one in about ten
//! seconds, and loading the compiled artifact takes a few milliseconds.
//!
//! An artifact is named by the SHA-256 of the component and wasmtime's
//! compatibility hash of the engine (its version and settings), written to
//! a temporary file and renamed into place, and loaded with
//! `deserialize_file` (mapped, not read). One that fails to load is
//! compiled again and replaced.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// A component ready to instantiate, and the digest of its bytes.
pub struct Compiled {
    /// The component.
    pub component: Component,
    /// Hex SHA-256 of the `.wasm` file.
    pub digest: String,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Loads `wasm`, from `cache` when it holds the compiled form, else by
/// compiling it (and storing the result).
pub fn load(engine: &Engine, wasm: &Path, cache: Option<&Path>) -> Result<Compiled, String> {
    let bytes = std::fs::read(wasm).map_err(|e| format!("cannot read {}: {e}", wasm.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    let Some(dir) = cache else {
        let component = Component::new(engine, &bytes).map_err(|e| format!("{e:#}"))?;
        return Ok(Compiled {
            component,
            digest,
            cached: false,
        });
    };
    let path = artifact_path(engine, dir, &digest);
    if path.exists() {
        // SAFETY: the file was written by `precompile_component` of an
        // engine with the same compatibility hash (its name says so), in a
        // directory only this gateway writes; wasmtime checks the header
        // and refuses an artifact of another version or configuration.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => {
                return Ok(Compiled {
                    component,
                    digest,
                    cached: true,
                });
            }
            Err(e) => {
                tracing::warn!(artifact = %path.display(), error = %e, "cached plugin artifact unusable; compiling again");
            }
        }
    }
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| format!("{e:#}"))?;
    if let Err(e) = store(dir, &path, &artifact) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot cache a compiled plugin");
    }
    // SAFETY: `artifact` was just produced by this engine.
    let component =
        unsafe { Component::deserialize(engine, &artifact) }.map_err(|e| format!("{e:#}"))?;
    Ok(Compiled {
        component,
        digest,
        cached: false,
    })
}

fn artifact_path(engine: &Engine, dir: &Path, digest: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{digest}-{:016x}.cwasm", h.finish()))
}

fn store(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, artifact)?;
    std::fs::rename(&tmp, path)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
