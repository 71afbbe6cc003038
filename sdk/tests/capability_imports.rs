//! Components import only the capability interfaces they call.
//!
//! Builds the bundled plugins to wasm32-wasip2 (the same nested build `host/bundled` runs,
//! into the same target dir, so nothing is built twice) and reads each component's imports.
//! The host refuses a plugin that imports a capability it was not granted, so an extra
//! import here (say `echo` importing `engine`) would make the plugin unusable.

use std::path::{Path, PathBuf};
use std::process::Command;

use wasmparser::{Parser, Payload};

/// Every bundled plugin crate and the capabilities it may import (`spade:operator`
/// interfaces, `http` for `wasi:http` and `tcp` for `wasi:sockets`).
const EXPECTED: &[(&str, &[&str])] = &[
    ("spade-plugin-call", &["workflows"]),
    ("spade-plugin-echo", &["output"]),
    ("spade-plugin-embulk", &["command", "expressions", "log", "secrets"]),
    ("spade-plugin-fail", &[]),
    ("spade-plugin-for-each", &[]),
    ("spade-plugin-for-range", &[]),
    ("spade-plugin-http", &["http", "log", "secrets"]),
    ("spade-plugin-if", &[]),
    ("spade-plugin-loop", &[]),
    ("spade-plugin-mail", &["expressions", "log", "secrets", "tcp"]),
    ("spade-plugin-param-eval", &["expressions"]),
    ("spade-plugin-param-reset", &[]),
    ("spade-plugin-param-server", &["params"]),
    ("spade-plugin-param-store", &[]),
    ("spade-plugin-pg", &["expressions", "log", "secrets", "tcp"]),
    ("spade-plugin-py", &["command", "log", "secrets"]),
    ("spade-plugin-rb", &["command", "log", "secrets"]),
    ("spade-plugin-require", &["engine"]),
    ("spade-plugin-sh", &["command", "log", "secrets"]),
    ("spade-plugin-td", &["expressions", "http", "log", "secrets"]),
    ("spade-plugin-wait", &[]),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Package names of the crates under plugins/.
fn plugin_crates() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root().join("plugins")).unwrap().flatten() {
        let Ok(manifest) = std::fs::read_to_string(entry.path().join("Cargo.toml")) else { continue };
        let name = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("name = ").map(|v| v.trim_matches('"').to_string()))
            .unwrap_or_else(|| panic!("{}: no package name", entry.path().display()));
        names.push(name);
    }
    names.sort();
    names
}

/// The `spade:operator/<interface>` imports of a component, versions stripped.
fn capability_imports(wasm: &[u8]) -> Vec<String> {
    let mut depth = 0;
    let mut found = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.expect("a valid component") {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth -= 1,
            Payload::ComponentImportSection(reader) if depth == 1 => {
                for import in reader {
                    let name = import.expect("a valid import").name.name;
                    // `wasi:http/*` is the `http` capability (granted like the others).
                    if name.starts_with("wasi:http/") && !found.iter().any(|f| f == "http") {
                        found.push("http".to_string());
                    }
                    // `wasi:sockets/*` is linked for everyone with every use refused; a
                    // tcp grant opens it. Only plugins that open connections import it.
                    if name.starts_with("wasi:sockets/") && !found.iter().any(|f| f == "tcp") {
                        found.push("tcp".to_string());
                    }
                    if let Some(rest) = name.strip_prefix("spade:operator/") {
                        let iface = rest.split('@').next().unwrap().to_string();
                        if iface != "types" {
                            found.push(iface);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    found.sort();
    found
}

#[test]
fn every_plugin_is_listed() {
    let listed: Vec<String> = EXPECTED.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(plugin_crates(), listed, "update EXPECTED in {}", file!());
}

#[test]
fn plugins_import_only_the_capabilities_they_use() {
    let root = root();
    let target = root.join("target/guest");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR");
    for (name, _) in EXPECTED {
        cmd.args(["-p", name]);
    }
    let status = cmd.status().expect("cannot run cargo");
    assert!(status.success(), "building the plugins failed; is the wasm32-wasip2 target installed?");

    for (name, expected) in EXPECTED {
        let file = target.join("wasm32-wasip2/release").join(format!("{}.wasm", name.replace('-', "_")));
        let wasm = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(wasm.len() < 1 << 20, "{name} is {} bytes; a bundled plugin should stay small", wasm.len());
        assert_eq!(capability_imports(&wasm), *expected, "capability imports of {name}");
    }
}
