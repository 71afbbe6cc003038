//! A project's plugin of the same name as a bundled one replaces it for that project:
//! pinned in spade.lock, shown by `spade plugin list`, linked only with the grants the
//! project gives it (the bundled plugin's defaults do not carry over).

use std::path::Path;
use std::process::{Command, Output};

fn spade(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(args)
        .current_dir(dir)
        .env("TZ", "Asia/Kathmandu")
        .env("SPADE_CACHE_DIR", dir.join("cache"))
        .env("SPADE_SECRETS", dir.join("no-secrets.yml"))
        .output()
        .expect("spade starts")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
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
    let out = spade(root, &["plugin", "publish", wasm.to_str().unwrap(), "--registry", registry.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));

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
    let out = spade(&project, &["run", "wf.dig", "--session", "2024-01-01"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("spade-param-eval") && said.contains("expressions"), "{said}");
    assert!(said.contains("not granted"), "{said}");

    // Granted, it runs, is pinned in spade.lock and is the active plugin.
    std::fs::write(
        project.join("spade.yml"),
        format!(
            "registry: {}\nplugins:\n  - name: spade-param-eval\n    version: \"*\"\n    grants: {{expressions: true}}\n",
            registry.display()
        ),
    )
    .unwrap();
    let out = spade(&project, &["run", "wf.dig", "--session", "2024-01-02"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "value 2\n", "{said}");
    let lock = std::fs::read_to_string(project.join("spade.lock")).unwrap();
    assert!(lock.contains("spade-param-eval"), "{lock}");
    let list = spade(&project, &["plugin", "list", "--project", project.to_str().unwrap()]);
    let listed = text(&list);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains("bundled spade-param-eval") && listed.contains("is replaced"), "{listed}");
    let active: Vec<&str> = listed.lines().filter(|l| l.starts_with("spade-param-eval ")).collect();
    assert_eq!(active.len(), 1, "{listed}");
    assert!(!active[0].trim_end().ends_with("bundled"), "the active one is the registry's: {listed}");
}
