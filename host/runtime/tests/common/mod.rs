//! Shared fixtures of the runtime tests: the built test plugins, recording services, and a
//! sandbox layout (workspace + files around it) with a snapshot to prove nothing outside
//! the workspace changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};
use spade_api::{
    AttemptRef, AttemptState, CancelToken, Invocation, InvokeError, Limits, LogLevel, Object, OperatorHost, Outcome,
    StartRequest, TaskRequest, TaskServices,
};
use spade_runtime::Runtime;

pub const SECRET: &str = "TOP SECRET: outside the workspace";

pub fn test_plugin(name: &str) -> Vec<u8> {
    let path = spade_bundled::test_plugin_path(name).unwrap_or_else(|| panic!("test plugin {name} is not built"));
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

#[derive(Default)]
pub struct Recorder {
    pub logs: Mutex<Vec<(LogLevel, String)>>,
    pub prints: Mutex<Vec<String>>,
    pub secrets_asked: Mutex<Vec<String>>,
    pub started: Mutex<Vec<StartRequest>>,
}

impl Recorder {
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.logs.lock().unwrap().clone()
    }
    pub fn prints(&self) -> Vec<String> {
        self.prints.lock().unwrap().clone()
    }
}

impl TaskServices for Recorder {
    fn print(&self, line: &str) {
        self.prints.lock().unwrap().push(line.to_string());
    }
    fn log(&self, level: LogLevel, message: &str) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }
    fn secret(&self, key: &str) -> Option<String> {
        self.secrets_asked.lock().unwrap().push(key.to_string());
        Some(format!("value-of-{key}"))
    }
    fn load_workflow(&self, path: &str) -> Result<Object, String> {
        if path == "missing" {
            return Err("missing.dig: no such file".into());
        }
        let mut m = Object::new();
        m.insert("+step".into(), json!({"echo>": format!("from {path}")}));
        Ok(m)
    }
    fn render_template(&self, template: &str, scope: &Object) -> Result<String, String> {
        let name = scope.get("name").and_then(Value::as_str).ok_or("name is not defined")?;
        Ok(template.replace("${name}", name))
    }
    fn start_or_find(&self, req: &StartRequest) -> Result<AttemptRef, String> {
        self.started.lock().unwrap().push(req.clone());
        Ok(AttemptRef { attempt_id: 7, session_id: 3, state: AttemptState::Running })
    }
    fn attempt_status(&self, attempt_id: i64) -> Result<AttemptRef, String> {
        Ok(AttemptRef { attempt_id, session_id: 3, state: AttemptState::Success })
    }
}

/// `<root>/secret.txt`, `<root>/outside/{secret.txt,other.txt}`, and the workspace
/// `<root>/ws` holding `input.txt` plus symlinks pointing outside.
pub struct Sandbox {
    pub _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub ws: PathBuf,
    pub outside: PathBuf,
    /// The attempt's disk quota the calls share (unlimited unless a test sets one).
    pub disk: spade_api::DiskQuota,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let ws = root.join("ws");
        let outside = root.join("outside");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("secret.txt"), SECRET).unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(outside.join("other.txt"), "other").unwrap();
        std::fs::write(ws.join("input.txt"), "hello from the host\n").unwrap();
        symlink("../secret.txt", ws.join("link_rel")).unwrap();
        symlink(outside.join("secret.txt"), ws.join("link_abs")).unwrap();
        symlink("../new_rel.txt", ws.join("link_rel_new")).unwrap();
        symlink(outside.join("new_abs.txt"), ws.join("link_abs_new")).unwrap();
        symlink("../outside", ws.join("link_dir")).unwrap();
        Sandbox { disk: spade_api::DiskQuota::unlimited(), _dir: dir, root, ws, outside }
    }

    /// Every path under the root except the workspace, with its type, mode, size, content
    /// or link target: any change outside the workspace shows up as a difference.
    pub fn outside_snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snapshot(&self.root, &self.ws, &mut out);
        let meta = std::fs::symlink_metadata(&self.root).unwrap();
        out.insert(self.root.clone(), format!("root mode {:o} nlink {}", meta.mode(), meta.nlink()));
        out
    }

    pub fn ws_names(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(&self.ws)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.join(",")
    }
}

fn snapshot(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p == skip {
            continue;
        }
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let desc = if meta.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(&p).unwrap().display())
        } else if meta.is_dir() {
            snapshot(&p, skip, out);
            format!("dir {:o}", meta.mode())
        } else {
            format!("file {:o} nlink {} {:?}", meta.mode(), meta.nlink(), std::fs::read(&p).unwrap())
        };
        out.insert(p, desc);
    }
}

pub fn request(operator: &str, command: Value, params: Value) -> TaskRequest {
    TaskRequest {
        operator: operator.into(),
        task_name: "+test+task".into(),
        project_name: "proj".into(),
        workflow_name: "wf".into(),
        attempt_id: 11,
        session_id: 12,
        session_uuid: "6ba7b810-9dad-11d1-80b4-00c04fd430c8".into(),
        session_time: "2024-02-29T13:14:15+00:00".into(),
        timezone: "UTC".into(),
        retry_attempt_name: None,
        command,
        params: params.as_object().cloned().unwrap_or_default(),
        local_params: Object::new(),
        raw: Object::new(),
        state: None,
        retry_count: 0,
    }
}

pub fn invoke(
    rt: &Runtime,
    sb: &Sandbox,
    services: &Recorder,
    req: &TaskRequest,
    limits: Limits,
    cancel: &CancelToken,
) -> Result<Outcome, InvokeError> {
    rt.invoke(Invocation { request: req, workspace: &sb.ws, disk: &sb.disk, limits, services, cancel })
}

/// `store_params` of a `Done` outcome.
pub fn done_store(out: Outcome) -> Object {
    match out {
        Outcome::Done(d) => d.store_params,
        other => panic!("expected done, got {other:?}"),
    }
}
