//! Builds every guest crate (plugins/*, tests/plugins/*) to a wasm32-wasip2 component with a
//! nested `cargo build`, then generates `bundled.rs` that embeds plugins/* and records where
//! the test-only plugins are.
//!
//! A crate's `spade-plugin.toml` (its manifest: what it asks of the host) is embedded in
//! its component as the `spade-manifest` custom section, as `spade plugin build` does for
//! third-party plugins; the host validates it at install.
//!
//! The nested build uses its own target dir (target/guest) so it never waits on the lock the
//! outer cargo holds, and shares the outer jobserver through CARGO_MAKEFLAGS, so the two
//! builds together stay within the cores cargo was given.
use std::path::{Path, PathBuf};
use std::process::Command;

fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && line.starts_with("name") {
            let value = line.split_once('=')?.1.trim().trim_matches('"');
            return Some(value.to_string());
        }
    }
    None
}

fn guest_crates(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if let Some(name) = package_name(&manifest) {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    out
}

/// Appends `value` as unsigned LEB128 (the encoding of wasm section sizes).
fn leb128(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The component `wasm`, with the crate's manifest embedded when it has one: the path to
/// use (the built file itself, or a copy in OUT_DIR).
fn with_manifest(name: &str, crate_dir: &Path, wasm: &Path, out_dir: &Path) -> PathBuf {
    let manifest = crate_dir.join("spade-plugin.toml");
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        return wasm.to_path_buf();
    };
    let mut bytes = std::fs::read(wasm).unwrap_or_else(|e| panic!("spade-bundled: reading {}: {e}", wasm.display()));
    const SECTION: &str = "spade-manifest";
    let mut body = Vec::new();
    leb128(&mut body, SECTION.len());
    body.extend_from_slice(SECTION.as_bytes());
    body.extend_from_slice(text.as_bytes());
    bytes.push(0); // custom section id
    leb128(&mut bytes, body.len());
    bytes.extend_from_slice(&body);
    let out = out_dir.join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::write(&out, bytes).unwrap_or_else(|e| panic!("spade-bundled: writing {}: {e}", out.display()));
    out
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().parent().unwrap().to_path_buf();
    let plugins = guest_crates(&root.join("plugins"));
    let test_plugins = guest_crates(&root.join("tests/plugins"));

    for dir in ["plugins", "tests/plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=SPADE_GUEST_PROFILE");

    let target_dir = root.join("target/guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg("wasm32-wasip2")
        .arg("--target-dir")
        .arg(&target_dir);
    for (name, _) in plugins.iter().chain(test_plugins.iter()) {
        cmd.arg("-p").arg(name);
    }
    // Cargo passes build-script settings through the environment; the nested build must
    // not inherit them (they describe the host build), except the jobserver.
    for (key, _) in std::env::vars() {
        let keep = key == "CARGO_HOME" || key == "CARGO_MAKEFLAGS" || key == "RUSTUP_HOME" || key == "RUSTUP_TOOLCHAIN";
        let cargo_set = key.starts_with("CARGO_")
            || key.starts_with("RUST")
            || matches!(key.as_str(), "TARGET" | "HOST" | "PROFILE" | "OPT_LEVEL" | "DEBUG" | "NUM_JOBS" | "OUT_DIR");
        if cargo_set && !keep {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("spade-bundled: cannot run cargo: {e}"));
    if !status.success() {
        panic!(
            "spade-bundled: building the plugin components failed (see above). \
             Is the wasm target installed? Run `rustup target add wasm32-wasip2`."
        );
    }

    let wasm_dir = target_dir.join("wasm32-wasip2/release");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut src = String::new();
    src.push_str("/// Bundled plugins: (crate name, component bytes).\n");
    src.push_str("pub static PLUGINS: &[(&str, &[u8])] = &[\n");
    let mut digests = String::new();
    for (name, dir) in &plugins {
        let file = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.exists(), "spade-bundled: {} was not produced", file.display());
        let file = with_manifest(name, dir, &file, &out_dir);
        src.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", file.display().to_string()));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("spade-bundled: reading {}: {e}", file.display()));
        use sha2::Digest;
        digests.push_str(&format!("    ({name:?}, {:?}),\n", hex::encode(sha2::Sha256::digest(&bytes))));
    }
    src.push_str("];\n");
    src.push_str("/// sha256 (hex) of each bundled plugin's bytes, as in PLUGINS.\n");
    src.push_str("pub static PLUGIN_DIGESTS: &[(&str, &str)] = &[\n");
    src.push_str(&digests);
    src.push_str("];\n");
    src.push_str("/// Test-only plugins: (crate name, path of the built component).\n");
    src.push_str("pub static TEST_PLUGINS: &[(&str, &str)] = &[\n");
    for (name, dir) in &test_plugins {
        let file = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        let file = with_manifest(name, dir, &file, &out_dir);
        src.push_str(&format!("    ({name:?}, {:?}),\n", file.display().to_string()));
    }
    src.push_str("];\n");
    let out = out_dir.join("bundled.rs");
    std::fs::write(out, src).unwrap();
}
