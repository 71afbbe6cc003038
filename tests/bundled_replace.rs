//! A project's plugin of the same name as a bundled one replaces it for that project:
//! pinned in spade.lock, shown by `spade plugin list`, linked only with the grants the
//! project gives it (the bundled plugin's defaults do not carry over).

use std::path::Path;
use std::process::Output;

mod support;
use support::*;

/// `spade ARGS` with its download and compile caches inside the test's directory.
fn spade_cached(dir: &Path, args: &[&str]) -> Output {
    let cache = dir.join("cache");
    spade_env(dir, args, &[("SPADE_CACHE_DIR", cache.as_os_str())])
}

/// stdout and stderr together.
fn said(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    format!("{stdout}{stderr}")
}

#[test]
fn a_registry_plugin_replaces_the_bundled_one_of_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Publish a build of spade-param-eval to a directory registry (here: the bundled
    // build itself; a user would publish a pinned or fixed version).
    let wasm = root.join("param_eval.wasm");
    std::fs::write(&wasm, spade_bundled::plugin("spade-plugin-param-eval").expect("bundled")).unwrap();
    let registry = root.join("registry");
    let out =
        spade_cached(root, &["plugin", "publish", wasm.to_str().unwrap(), "--registry", registry.to_str().unwrap()]);
    assert!(out.status.success(), "{}", said(&out));

    let project = root.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("wf.dig"),
        "_export:\n  n: 1\n  card:\n    label: value ${n+1}\n\
         +eval:\n  param_eval>: card.label\n\
         +show:\n  echo>: ${card.label}\n",
    )
    .unwrap();
    // Without grants the replacement cannot link `expressions`, which the bundled plugin
    // gets by default: the run refuses to start, saying so.
    std::fs::write(
        project.join("spade.yml"),
        format!("registry: {}\nplugins:\n  - name: spade-param-eval\n    version: \"*\"\n", registry.display()),
    )
    .unwrap();
    let out = spade_cached(&project, &["run", "wf.dig", "--session", "2024-01-01"]);
    let msg = said(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("spade-param-eval") && msg.contains("expressions"), "{msg}");
    assert!(msg.contains("not granted"), "{msg}");

    // Granted, it runs, is pinned in spade.lock and is the active plugin.
    std::fs::write(
        project.join("spade.yml"),
        format!(
            "registry: {}\nplugins:\n  - name: spade-param-eval\n    version: \"*\"\n    grants: {{expressions: true}}\n",
            registry.display()
        ),
    )
    .unwrap();
    let out = spade_cached(&project, &["run", "wf.dig", "--session", "2024-01-02"]);
    let msg = said(&out);
    assert!(out.status.success(), "{msg}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "value 2\n", "{msg}");
    let lock = std::fs::read_to_string(project.join("spade.lock")).unwrap();
    assert!(lock.contains("spade-param-eval"), "{lock}");
    let list = spade_cached(&project, &["plugin", "list", "--project", project.to_str().unwrap()]);
    let listed = said(&list);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains("bundled spade-param-eval") && listed.contains("is replaced"), "{listed}");
    let active: Vec<&str> = listed.lines().filter(|l| l.starts_with("spade-param-eval ")).collect();
    assert_eq!(active.len(), 1, "{listed}");
    assert!(!active[0].trim_end().ends_with("bundled"), "the active one is the registry's: {listed}");
}
