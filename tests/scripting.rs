//! Scripting operators end to end (`sh>`, `py>`, `rb>`), in the default executor (the
//! bubblewrap sandbox), with workflows in the spirit of Digdag's examples: params reach
//! scripts as environment variables and arguments, stores, exports and generated subtasks
//! come back exactly as in Digdag, failures name their cause, `_check` and `_error` run
//! scripts, `spade kill` stops a running script, and `spade tasks` shows what each task used.
//!
//! Needs bubblewrap, Python 3 and Ruby on the machine; `scripts/test.sh` installs them, and
//! every test here fails (never skips) when one is missing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::*;

fn require_tools() {
    for (tool, package) in [("bwrap", "bubblewrap"), ("python3", "python3"), ("ruby", "ruby")] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is not installed: install {package} (scripts/test.sh does) to run the scripting tests");
    }
}

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

fn run(dir: &Path, dig: &str) -> (bool, String, String) {
    let out = spade(dir, &["run", dig]);
    let (o, e) = text(&out);
    (out.status.success(), o, e)
}

#[test]
fn basic_sh_params_become_environment_variables() {
    let dir = project(&[(
        "shell_envvar.dig",
        "timezone: UTC\n_export:\n  my_name: spade\n  my_list: [1, 2]\n  my_map: {a: b}\n\
         +env:\n  sh>: echo \"name=$my_name list=$my_list map=$my_map\" > env.txt\n\
         +read:\n  sh>: test \"$(cat env.txt)\" = 'name=spade list=[1,2] map={\"a\":\"b\"}'\n\
         +shell:\n  sh>: echo \"bash $BASH_VERSION\" > shell.txt\n  shell: [/bin/bash]\n\
         +print:\n  echo>: done\n",
    )]);
    let (ok, out, err) = run(dir.path(), "shell_envvar.dig");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "done", "only echo> writes to stdout");
    let ws = dir.path().join(".spade/workspace");
    assert!(std::fs::read_to_string(ws.join("shell.txt")).unwrap().starts_with("bash 5"));
}

#[test]
fn sh_output_goes_to_the_task_log_and_stderr_and_failures_name_the_code() {
    let dir = project(&[(
        "fail.dig",
        "timezone: UTC\n+talk:\n  sh>: echo to-stdout; echo to-stderr >&2\n+fail:\n  sh>: echo about to fail; exit 3\n",
    )]);
    let (ok, out, err) = run(dir.path(), "fail.dig");
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("+fail+talk: to-stdout") && err.contains("+fail+talk: to-stderr"), "{err}");
    assert!(err.contains("Command failed with code 3") && err.contains("about to fail"), "{err}");
    let log = stderr(&spade(dir.path(), &["log", "1", "+fail+talk"]));
    let log = log + &String::from_utf8_lossy(&spade(dir.path(), &["log", "1", "+fail+talk"]).stdout);
    assert!(log.contains("to-stdout") && log.contains("to-stderr"), "{log}");
}

#[test]
fn env_map_reads_only_granted_secrets() {
    let dir = project(&[
        (
            "secret.dig",
            "timezone: UTC\n+use:\n  sh>: test \"$PASSWORD\" = hunter2 && test \"${secret:db.user}\" = admin\n  \
             _env:\n    PASSWORD: ${secret:db.password}\n",
        ),
        ("denied.dig", "timezone: UTC\n+use:\n  sh>: echo ${secret:other.key}\n"),
        ("secrets.yml", "db.password: hunter2\ndb.user: admin\nother.key: nope\n"),
        ("spade.yml", "grants:\n  spade-sh:\n    secrets: [db.*]\n"),
    ]);
    let env = [("SPADE_SECRETS", dir.path().join("secrets.yml").into_os_string())];
    let env: Vec<(&str, &std::ffi::OsStr)> = env.iter().map(|(k, v)| (*k, v.as_os_str())).collect();
    let out = spade_env(dir.path(), &["run", "secret.dig"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = spade_env(dir.path(), &["run", "denied.dig"], &env);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("secret other.key is not set, or not granted"), "{}", stderr(&out));
}

const PY_TASKS: &str = r#"
import digdag

def args(required1, required2, optional1="default"):
    digdag.env.store({"args": "%s %s %s" % (required1, required2, optional1)})

def kwargs(**params):
    digdag.env.store({"kw_count": len([k for k in params if k.startswith("arg_")])})

class Klass(object):
    def __init__(self, arg_a):
        self.a = arg_a

    def method(self, arg_b):
        digdag.env.store({"from_method": self.a + arg_b})

class Runner(object):
    def run(self):
        digdag.env.store({"ran": True})

def generate(count):
    for i in range(count):
        digdag.env.add_subtask(step, index=i)
    digdag.env.add_subtask({"echo>": "dict subtask ${exported}"})
    digdag.env.export({"exported": "from parent"})

def step(index, exported):
    print("step %d %s" % (index, exported))
    digdag.env.store({"last_index": index})

def fail():
    raise RuntimeError("the python task failed on purpose")
"#;

#[test]
fn python_args_stores_exports_and_generated_subtasks() {
    let dir = project(&[
        ("tasks.py", PY_TASKS),
        (
            "py.dig",
            "timezone: UTC\n_export:\n  arg_a: 'x'\n  arg_b: 'y'\n\
             +args:\n  py>: tasks.args\n  required1: r1\n  required2: 2\n\
             +kwargs:\n  py>: tasks.kwargs\n\
             +method:\n  py>: tasks.Klass.method\n\
             +class:\n  py>: tasks.Runner\n\
             +gen:\n  py>: tasks.generate\n  count: 2\n\
             +show:\n  echo>: ${args} / ${kw_count} / ${from_method} / ${ran} / ${last_index}\n",
        ),
    ]);
    let (ok, out, err) = run(dir.path(), "py.dig");
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["dict subtask from parent", "r1 2 default / 2 / xy / true / 1"], "{err}");
    assert!(err.contains("step 0 from parent") && err.contains("step 1 from parent"), "{err}");
    let tasks = String::from_utf8_lossy(&spade(dir.path(), &["tasks", "1"]).stdout).into_owned();
    assert!(tasks.contains("+py+gen^sub+subtask0") && tasks.contains("+py+gen^sub+subtask2"), "{tasks}");
}

#[test]
fn python_errors_name_the_exception_and_missing_things() {
    let dir = project(&[
        ("tasks.py", PY_TASKS),
        ("raise.dig", "timezone: UTC\n+t:\n  py>: tasks.fail\n"),
        ("missing_arg.dig", "timezone: UTC\n+t:\n  py>: tasks.args\n  required1: only\n"),
        ("missing_fn.dig", "timezone: UTC\n+t:\n  py>: tasks.nope\n"),
        ("missing_mod.dig", "timezone: UTC\n+t:\n  py>: nomodule.fn\n"),
        ("bad_python.dig", "timezone: UTC\n+t:\n  py>: tasks.fail\n  python: /no/such/python\n"),
    ]);
    for (dig, expected) in [
        ("raise.dig", "the python task failed on purpose (RuntimeError)"),
        ("missing_arg.dig", "requires parameter 'required2' but not set (TypeError)"),
        ("missing_fn.dig", "Module 'tasks' has no attribute 'nope' (AttributeError)"),
        ("missing_mod.dig", "No module named 'nomodule' (ModuleNotFoundError)"),
        ("bad_python.dig", "command not found: /no/such/python"),
    ] {
        let (ok, _, err) = run(dir.path(), dig);
        assert!(!ok, "{dig}");
        assert!(err.contains(expected), "{dig}: {err}");
    }
}

#[test]
fn ruby_args_and_generated_subtasks() {
    let dir = project(&[
        (
            "tasks.rb",
            r##"
class Tasks
  def args(required1:, optional1: "default")
    Digdag.env.store(args: "#{required1} #{optional1}")
  end

  def self.generate(count)
    count.times { |i| Digdag.env.add_subtask(Tasks, :step, index: i) }
    Digdag.env.export(exported: "from ruby")
  end

  def step(index, exported)
    puts "ruby step #{index} #{exported}"
    Digdag.env.store(last: index)
  end
end

def top_level(name)
  Digdag.env.store(top: "hello #{name}")
end
"##,
        ),
        (
            "rb.dig",
            "timezone: UTC\n_export:\n  rb:\n    require: tasks\n\
             +args:\n  rb>: Tasks.args\n  required1: r1\n\
             +gen:\n  rb>: Tasks.generate\n  count: 2\n\
             +top:\n  rb>: top_level\n  name: world\n\
             +fail:\n  rb>: Tasks.nothing\n",
        ),
    ]);
    let (ok, _, err) = run(dir.path(), "rb.dig");
    assert!(!ok, "+fail must fail");
    assert!(err.contains("ruby step 0 from ruby") && err.contains("ruby step 1 from ruby"), "{err}");
    assert!(err.contains("Ruby command failed with code 1") && err.contains("NameError"), "{err}");
    let stores = String::from_utf8_lossy(&spade(dir.path(), &["tasks", "1"]).stdout).into_owned();
    assert!(stores.contains("+rb+top") && stores.contains("success"), "{stores}");
    let dir2 = project(&[]);
    std::fs::copy(dir.path().join("tasks.rb"), dir2.path().join("tasks.rb")).unwrap();
    std::fs::write(
        dir2.path().join("show.dig"),
        "timezone: UTC\n_export:\n  rb:\n    require: tasks\n+args:\n  rb>: Tasks.args\n  required1: r1\n\
         +top:\n  rb>: top_level\n  name: world\n+gen:\n  rb>: Tasks.generate\n  count: 1\n\
         +show:\n  echo>: ${args} / ${top} / ${last}\n",
    )
    .unwrap();
    let (ok, out, err) = run(dir2.path(), "show.dig");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "r1 default / hello world / 0");
}

#[test]
fn check_and_error_tasks_run_scripts() {
    let dir = project(&[(
        "handlers.dig",
        "timezone: UTC\n+checked:\n  sh>: echo ok > checked.txt\n  _check:\n    sh>: grep -q ok checked.txt && echo checked > check-ran.txt\n\
         +failing:\n  sh>: exit 1\n  _error:\n    sh>: echo \"handled\" > error-ran.txt\n",
    )]);
    let (ok, _, err) = run(dir.path(), "handlers.dig");
    assert!(!ok);
    let ws = dir.path().join(".spade/workspace");
    assert_eq!(std::fs::read_to_string(ws.join("check-ran.txt")).unwrap().trim(), "checked", "{err}");
    assert_eq!(std::fs::read_to_string(ws.join("error-ran.txt")).unwrap().trim(), "handled", "{err}");
}

#[test]
fn a_long_script_polls_and_kill_stops_it_within_two_seconds() {
    let dir = project(&[(
        "long.dig",
        "timezone: UTC\n+long:\n  sh>: echo started > started.txt; sleep 60; echo never > never.txt\n",
    )]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_spade"))
        .args(["run", "long.dig"])
        .current_dir(dir.path())
        .env("SPADE_SECRETS", dir.path().join("none.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = dir.path().join(".spade/workspace/started.txt");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the script never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Past the first call's wait: the task is polling, no call is running.
    std::thread::sleep(Duration::from_millis(2500));
    let sleeping = || {
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        String::from_utf8_lossy(&ps.stdout).lines().any(|l| l.trim() == "sleep 60")
    };
    assert!(sleeping(), "the script runs while its task polls");
    let killed_at = Instant::now();
    let out = spade(dir.path(), &["kill", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    while sleeping() {
        assert!(killed_at.elapsed() < Duration::from_secs(2), "the script still runs 2 s after spade kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!dir.path().join(".spade/workspace/never.txt").exists());
}

#[test]
fn tasks_show_cpu_and_memory_of_scripts() {
    let dir = project(&[
        ("usage.dig", "timezone: UTC\n+burn:\n  py>: burn.run\n+sh:\n  sh>: \"true\"\n"),
        (
            "burn.py",
            "def run():\n    data = bytearray(64 << 20)\n    total = 0\n    for i in range(3000000):\n        total += i\n",
        ),
    ]);
    let (ok, _, err) = run(dir.path(), "usage.dig");
    assert!(ok, "{err}");
    let out = spade(dir.path(), &["tasks", "1"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = table.lines().find(|l| l.starts_with("TASK")).unwrap();
    assert!(header.contains("CPU") && header.contains("MEMORY"), "{table}");
    let burn = table.lines().find(|l| l.starts_with("+usage+burn")).unwrap();
    let cols: Vec<&str> = burn.split_whitespace().collect();
    // ... OP-TIME CPU MEMORY at the end (no error column).
    let (cpu, mem) = (cols[cols.len() - 2], cols[cols.len() - 1]);
    let cpu: f64 = cpu.trim_end_matches('s').parse().unwrap();
    assert!(cpu > 0.05, "a CPU-bound Python task used {cpu} s of CPU? {table}");
    assert!(mem.ends_with('M') && mem.trim_end_matches('M').parse::<f64>().unwrap() >= 64.0, "{table}");
}

#[test]
fn embulk_renders_its_config_and_runs_the_embulk_command() {
    // A stand-in for Embulk (not installed here): the project's own `embulk` script, found
    // because the workspace is on the sandbox's PATH as in Digdag. It prints its arguments
    // and the config it was given.
    let dir = project(&[
        ("embulk", "#!/bin/sh\necho \"embulk $1\"\ncat \"$2\"\n"),
        ("load.yml.liquid", "in: {type: file, path_prefix: \"${prefix}\"}\nout: {type: stdout}\n"),
        ("load.dig", "timezone: UTC\n+load:\n  embulk>: load.yml.liquid\n  prefix: data/${session_date}/\n"),
        ("missing.dig", "timezone: UTC\n+load:\n  embulk>: nope.yml\n"),
    ]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("embulk"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, _, err) = run(dir.path(), "load.dig");
    assert!(ok, "{err}");
    assert!(err.contains("+load+load: embulk run"), "{err}");
    assert!(err.contains("path_prefix: \"data/2026-12-07/\"") || err.contains("path_prefix: \"data/"), "{err}");
    let (ok, _, err) = run(dir.path(), "missing.dig");
    assert!(!ok);
    assert!(err.contains("nope.yml") && err.contains("does not exist"), "{err}");
}

#[test]
fn the_local_executor_needs_a_grant() {
    let dir =
        project(&[("local.dig", "timezone: UTC\n+local:\n  sh>: id -u > uid.txt; pwd > pwd.txt\n  executor: local\n")]);
    let (ok, _, err) = run(dir.path(), "local.dig");
    assert!(!ok);
    assert!(err.contains("`local` executor, which this plugin is not granted"), "{err}");
    std::fs::write(dir.path().join("spade.yml"), "grants:\n  spade-sh:\n    command: {executors: [local]}\n").unwrap();
    let (ok, _, err) = run(dir.path(), "local.dig");
    assert!(ok, "{err}");
    let ws = dir.path().join(".spade/workspace");
    let uid = std::fs::read_to_string(ws.join("uid.txt")).unwrap();
    let me = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout).unwrap();
    assert_eq!(uid.trim(), me.trim(), "local runs as spade's own user");
    assert_eq!(Path::new(std::fs::read_to_string(ws.join("pwd.txt")).unwrap().trim()), ws.canonicalize().unwrap());
}

#[test]
fn docker_tasks_need_a_daemon() {
    let dir = project(&[(
        "docker.dig",
        "timezone: UTC\n+in_docker:\n  sh>: cat /etc/os-release\n  docker:\n    image: debian:bookworm-slim\n",
    )]);
    let daemon = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    let (ok, _, err) = run(dir.path(), "docker.dig");
    if daemon {
        // A daemon answers: the task ran in the image (or failed to pull it, offline).
        assert!(ok || err.contains("docker"), "{err}");
        eprintln!("docker: a daemon answers; the task ran with it (ok = {ok})");
    } else {
        assert!(!ok);
        assert!(err.contains("needs a docker daemon, and none answers"), "{err}");
        eprintln!(
            "docker: no daemon answers here; running a task in a container was skipped (only the error was checked)"
        );
    }
}

#[test]
fn py_falls_back_to_python3_where_there_is_no_python() {
    let dir = project(&[
        ("t.py", "import sys, digdag\ndef run():\n    digdag.env.store({'major': sys.version_info[0]})\n"),
        ("py3.dig", "timezone: UTC\n+t:\n  py>: t.run\n+show:\n  echo>: python ${major}\n"),
    ]);
    // spade's PATH holds python3 and bubblewrap, and no `python` (as on Debian).
    let bin = tempfile::tempdir().unwrap();
    for tool in ["python3", "bwrap"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
        let found = String::from_utf8(found.stdout).unwrap();
        std::os::unix::fs::symlink(found.trim(), bin.path().join(tool)).unwrap();
    }
    let path = bin.path().as_os_str().to_owned();
    let out = spade_env(dir.path(), &["run", "py3.dig"], &[("PATH", path.as_os_str())]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout_lines(&out), ["python 3"]);
}

#[test]
fn scripts_run_in_required_workflows_too() {
    let dir = project(&[
        ("child.dig", "timezone: UTC\n+write:\n  sh>: echo \"from the child $session_date\" > child.txt\n"),
        ("parent.dig", "timezone: UTC\n+need:\n  require>: child\n+read:\n  sh>: grep -q 'from the child' child.txt\n"),
    ]);
    let (ok, _, err) = run(dir.path(), "parent.dig");
    assert!(ok, "{err}");
    let child = std::fs::read_to_string(dir.path().join(".spade/workspace/child.txt")).unwrap();
    assert!(child.starts_with("from the child "), "{child}");
}
