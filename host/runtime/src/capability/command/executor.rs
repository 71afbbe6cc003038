//! Where a command runs. One [`Launch`] per task, chosen from its params and the grant; each
//! executor turns a [`Spec`] into a started process ([`Spawned`]) that the hub supervises.
//!
//! - `sandbox` (default on Linux): bubblewrap, see [`sandbox_command`].
//! - `docker`: Digdag's `docker: {image:, pull_always:}` through the `docker` CLI.
//! - `local`: the host's own processes, no isolation; only where the grant allows it.
//!
//! Limits every executor applies: wall time and output are watched by the hub; for
//! `sandbox` and `local`, memory (address space), CPU time, processes and file size are
//! rlimits set in the child before it executes (cgroups are not used: they are not
//! delegated on every machine); `docker` passes them to the daemon.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use spade_api::Object;

use super::{CommandGrant, CommandLimits, safe_fs};

/// An executor a grant may allow and a task may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExecutorKind {
    Sandbox,
    Docker,
    Local,
}

impl ExecutorKind {
    pub fn parse(name: &str) -> Option<ExecutorKind> {
        match name {
            "sandbox" => Some(ExecutorKind::Sandbox),
            "docker" => Some(ExecutorKind::Docker),
            "local" | "simple" => Some(ExecutorKind::Local),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ExecutorKind::Sandbox => "sandbox",
            ExecutorKind::Docker => "docker",
            ExecutorKind::Local => "local",
        }
    }
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The executor of one task, resolved.
#[derive(Clone, Debug)]
pub(crate) enum Launch {
    Sandbox,
    Local,
    Docker { image: String, pull_always: bool },
}

/// Reads `executor:` and `docker:` from the task's params and checks them against `grant`.
pub(crate) fn choose(grant: &CommandGrant, params: &Object) -> Result<Launch, String> {
    let allowed = |kind: ExecutorKind| -> Result<(), String> {
        if grant.executors.contains(&kind) {
            Ok(())
        } else {
            Err(format!(
                "the task asks for the `{kind}` executor, which this plugin is not granted (it may use {}); \
                 grant it in spade.yml, e.g. `grants: {{<plugin>: {{command: {{executors: [{kind}]}}}}}}`",
                grant.executors.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ))
        }
    };
    if let Some(docker) = params.get("docker").filter(|v| !v.is_null()) {
        let Value::Object(d) = docker else {
            return Err("docker: must be a map with at least `image:`".into());
        };
        let image = match d.get("image") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => return Err("docker: needs `image:` (the image to run the command in)".into()),
        };
        if d.contains_key("build") {
            return Err(
                "docker: `build:` is not supported by spade; build the image beforehand and name it in `image:`".into(),
            );
        }
        let pull_always = matches!(d.get("pull_always"), Some(Value::Bool(true)));
        allowed(ExecutorKind::Docker)?;
        return Ok(Launch::Docker { image, pull_always });
    }
    let kind = match params.get("executor") {
        None | Some(Value::Null) => grant.executors.first().copied().unwrap_or(ExecutorKind::Sandbox),
        Some(Value::String(name)) => ExecutorKind::parse(name).ok_or_else(|| {
            format!("executor: {name:?} is not an executor; use `sandbox`, `local`, or `docker:` with an image")
        })?,
        Some(other) => return Err(format!("executor: must be a name (`sandbox`, `local`), not {other}")),
    };
    allowed(kind)?;
    match kind {
        ExecutorKind::Sandbox => Ok(Launch::Sandbox),
        ExecutorKind::Local => Ok(Launch::Local),
        ExecutorKind::Docker => Err("executor: docker needs `docker: {image: ...}` to say which image".into()),
    }
}

/// What to start, checked by the capability.
pub(crate) struct Spec {
    pub argv: Vec<String>,
    /// Relative to the workspace, already checked to be a directory inside it.
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: Option<File>,
    pub workspace: PathBuf,
    pub attempt_id: i64,
    /// The largest file a process may write (what is left of the attempt's disk quota).
    pub file_size_limit: u64,
}

/// A started command.
pub(crate) struct Spawned {
    pub child: Child,
    /// How to stop it with everything it started.
    pub kill: Kill,
}

pub(crate) enum Kill {
    /// SIGKILL the sandbox's first process (which ends its PID namespace), then bubblewrap.
    Sandbox,
    /// SIGKILL the process group the command leads.
    Group,
    /// `docker kill` the container, then the client.
    Container(String),
}

/// Where the workspace appears inside sandboxes and containers.
pub const WORKSPACE_MOUNT: &str = "/workspace";
const HOME_DIR: &str = "/tmp/home";
/// util-linux's `setpriv` and coreutils' `timeout`, inside the sandbox's read-only `/usr`.
const SETPRIV: &str = "/usr/bin/setpriv";
const TIMEOUT: &str = "/usr/bin/timeout";

pub(crate) fn spawn(launch: &Launch, grant: &CommandGrant, spec: &Spec) -> Result<Spawned, String> {
    // Digdag puts the workspace last on PATH (a project's own `bin/tool` or `embulk`).
    let in_workspace = !spec.argv[0].contains('/') && executable(&spec.workspace.join(&spec.argv[0]));
    if !matches!(launch, Launch::Docker { .. }) && which(&spec.argv[0]).is_none() && !in_workspace {
        return Err(format!(
            "command not found: {} (not on the PATH of spade's host; install it, or give its full path)",
            spec.argv[0]
        ));
    }
    let (mut cmd, kill) = match launch {
        Launch::Sandbox => (sandbox_command(grant, spec)?, Kill::Sandbox),
        Launch::Local => (local_command(spec), Kill::Group),
        Launch::Docker { image, pull_always } => {
            let name = format!("spade-{}-{}", spec.attempt_id, random_suffix());
            (docker_command(grant, spec, image, *pull_always, &name)?, Kill::Container(name))
        }
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    match &spec.stdin {
        Some(f) => {
            let f = f.try_clone().map_err(|e| format!("cannot pass the stdin file: {e}"))?;
            cmd.stdin(Stdio::from(f));
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    if !matches!(launch, Launch::Docker { .. }) {
        let limits = grant.limits;
        let fsize = spec.file_size_limit;
        // SAFETY: only async-signal-safe calls (setrlimit, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // If spade dies, its commands' bubblewrap (or local process) dies too.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                set_rlimits(&limits, fsize)
            });
        }
    }
    let child = spawn_from_lasting_thread(cmd).map_err(|e| match (launch, e.kind()) {
        (Launch::Sandbox, std::io::ErrorKind::NotFound) => {
            "the sandbox executor needs bubblewrap (`bwrap`), which is not installed; install it \
             (Debian/Ubuntu: apt-get install bubblewrap; `scripts/setup.sh` does) or grant the `local` executor"
                .to_string()
        }
        (Launch::Docker { .. }, std::io::ErrorKind::NotFound) => {
            "the docker executor needs the `docker` command, which is not installed".to_string()
        }
        (_, std::io::ErrorKind::NotFound) => format!("command not found: {}", spec.argv[0]),
        _ => format!("cannot start {}: {e}", spec.argv[0]),
    })?;
    Ok(Spawned { child, kill })
}

/// Spawns `cmd` from a thread that lives as long as the process. `PR_SET_PDEATHSIG` fires
/// when the thread that forked the child exits, not the process: a command outlives the
/// operator call that started it (a polling `sh>`), and the thread of that call may end
/// (an agent runs each call on a thread of its own), which must not kill the command.
fn spawn_from_lasting_thread(cmd: std::process::Command) -> std::io::Result<std::process::Child> {
    use std::sync::Mutex;
    use std::sync::mpsc::{Sender, channel};
    type Job = (std::process::Command, Sender<std::io::Result<std::process::Child>>);
    static SPAWNER: std::sync::OnceLock<Mutex<Sender<Job>>> = std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("command-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("the command spawner thread starts");
        Mutex::new(tx)
    });
    let (reply, answer) = channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the command spawner thread is gone"))?;
    answer.recv().map_err(|_| std::io::Error::other("the command spawner thread is gone"))?
}

fn set_rlimits(limits: &CommandLimits, file_size: u64) -> std::io::Result<()> {
    let set = |resource, value: u64| -> std::io::Result<()> {
        let lim = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
        // SAFETY: setrlimit with a valid pointer.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    };
    set(libc::RLIMIT_AS, limits.memory_bytes)?;
    // The soft limit sends SIGXCPU (named in the task's error), the hard one a second later SIGKILL.
    let cpu = limits.cpu_time.as_secs().max(1);
    let lim = libc::rlimit { rlim_cur: cpu as libc::rlim_t, rlim_max: (cpu + 1) as libc::rlim_t };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_CPU, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    set(libc::RLIMIT_NPROC, u64::from(limits.processes))?;
    set(libc::RLIMIT_FSIZE, file_size)?;
    set(libc::RLIMIT_CORE, 0)?;
    Ok(())
}

pub(crate) fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom into a valid buffer; a short read only makes the name less random.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    hex::encode(bytes)
}

/// Whether the host process runs as root (then sandboxes run as an unprivileged user).
fn host_is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The unprivileged user a root host runs a workspace's sandboxed commands as: one per
/// workspace (so a project's processes do not count against another's process limit, and
/// the concurrent attempts of one project, which share its workspace as in Digdag, share
/// its owner too), in a range no distribution allocates.
fn sandbox_uid(workspace: &Path) -> u32 {
    // FNV-1a of the path: stable across runs and processes.
    let mut hash: u32 = 0x811c_9dc5;
    for b in workspace.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    200_000 + hash % 100_000
}

/// Directories of the host's system mounted read-only in every sandbox (when they exist).
const SYSTEM_DIRS: &[&str] = &["/usr", "/etc", "/opt", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// `program` found on the host's PATH (or as given, when it has a slash).
fn executable(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
}

fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| executable(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| executable(p))
}

fn under_system_dirs(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| p.starts_with(d))
}

/// The directory to mount so that `program` (outside the system directories) works in the
/// sandbox: for a program under the home directory, the top directory of its install
/// (`~/.pyenv` for a pyenv shim or version); elsewhere, its installation prefix (the parent
/// of its `bin`).
fn install_root(program: &Path) -> Option<PathBuf> {
    if under_system_dirs(program) {
        return None;
    }
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from)
        && home != Path::new("/")
        && let Ok(rest) = program.strip_prefix(&home)
    {
        return rest.iter().next().map(|first| home.join(first));
    }
    let dir = program.parent()?;
    Some(if dir.file_name().is_some_and(|n| n == "bin") { dir.parent()?.to_path_buf() } else { dir.to_path_buf() })
}

/// PATH inside the sandbox: the directories of the resolved program, the system's, then
/// the workspace (Digdag appends the workspace, so `bin/cmd` runs without `./`).
fn sandbox_path(extra: &[PathBuf]) -> String {
    let mut parts: Vec<String> = extra.iter().map(|p| p.display().to_string()).collect();
    for d in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        parts.push(d.to_string());
    }
    parts.push(WORKSPACE_MOUNT.to_string());
    parts.join(":")
}

/// The bubblewrap command line for `spec`:
///
/// - new PID, IPC, UTS, cgroup and network namespaces, and a user namespace when spade does
///   not run as root (`--unshare-all`; the network is shared only when the grant says so),
///   a new session (no terminal injection), and the sandbox dies with the host;
/// - read-only: the system directories, the interpreter's own install when it lives
///   elsewhere (a pyenv under the home directory), and the grant's `read_only` paths;
/// - read-write: the workspace only, at `/workspace`; `/tmp` and `HOME` are private tmpfs;
/// - a fresh `/proc` (only the sandbox's processes) and a minimal `/dev`;
/// - the environment cleared, then PATH, HOME, LANG, TMPDIR and the task's variables;
/// - when the host runs as root, the command drops to an unprivileged user (see
///   [`sandbox_uid`]) that owns the workspace, with `setpriv` (util-linux), and no new
///   privileges (setuid programs do not elevate), so it is never the real root.
pub(crate) fn sandbox_command(grant: &CommandGrant, spec: &Spec) -> Result<Command, String> {
    let bwrap = bwrap_path().ok_or_else(|| {
        "the sandbox executor needs bubblewrap (`bwrap`), which is not installed; install it \
         (Debian/Ubuntu: apt-get install bubblewrap; `scripts/setup.sh` does) or grant the `local` executor"
            .to_string()
    })?;
    let root = host_is_root();
    let mut cmd = Command::new(bwrap);
    cmd.env_clear();
    if root {
        // No user namespace: bubblewrap mounts as root (it may read an interpreter under
        // /root), and the command drops to the sandbox user inside (see below).
        cmd.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]);
        if !grant.network {
            cmd.arg("--unshare-net");
        }
    } else {
        cmd.arg("--unshare-all");
        if grant.network {
            cmd.arg("--share-net");
        }
    }
    // `--as-pid-1`: no bubblewrap init inside. Bubblewrap then reaps the sandbox's first
    // process itself (its own init would exit without being reaped, and the command's CPU
    // time and memory would never reach our `wait4`); when that process exits, the kernel
    // ends everything else in the sandbox.
    cmd.args(["--die-with-parent", "--new-session", "--as-pid-1"]);
    for dir in SYSTEM_DIRS {
        let p = Path::new(dir);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    cmd.arg("--symlink").arg(target).arg(p);
                }
            }
            Ok(m) if m.is_dir() => {
                cmd.arg("--ro-bind").arg(p).arg(p);
            }
            _ => {}
        }
    }
    let mut path_extra = Vec::new();
    let mut mounts: Vec<PathBuf> = grant.read_only.clone();
    let mut argv = spec.argv.clone();
    if let Some(program) = which(&spec.argv[0]) {
        let program = match resolve_shim(&program, &spec.workspace) {
            Some(real) => {
                argv[0] = real.display().to_string();
                real
            }
            None => program,
        };
        for candidate in [Some(program.clone()), std::fs::canonicalize(&program).ok()].into_iter().flatten() {
            if let Some(root) = install_root(&candidate)
                && !mounts.iter().any(|m| candidate.starts_with(m))
            {
                mounts.push(root);
            }
        }
        if let Some(dir) = program.parent()
            && !under_system_dirs(dir)
        {
            path_extra.push(dir.to_path_buf());
        }
    }
    for m in &mounts {
        if m.starts_with(&spec.workspace) || spec.workspace.starts_with(m) {
            return Err(format!(
                "cannot mount {} read-only into the sandbox: it contains or is inside the workspace",
                m.display()
            ));
        }
        // bubblewrap creates missing parents with the host's modes (`/root` is 0700, which
        // would hide the mount from the sandbox user): create them traversable first.
        let mut parents: Vec<&Path> = m.ancestors().skip(1).filter(|a| *a != Path::new("/")).collect();
        parents.reverse();
        for p in parents {
            if !SYSTEM_DIRS.iter().any(|d| p.starts_with(d)) {
                cmd.args(["--perms", "0755", "--dir"]).arg(p);
            }
        }
        cmd.arg("--ro-bind-try").arg(m).arg(m);
    }
    cmd.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--dir", HOME_DIR]);
    cmd.arg("--bind").arg(&spec.workspace).arg(WORKSPACE_MOUNT);
    cmd.arg("--chdir").arg(in_workspace(&spec.cwd));
    cmd.arg("--clearenv");
    let mut env = vec![
        ("PATH".to_string(), sandbox_path(&path_extra)),
        ("HOME".to_string(), HOME_DIR.to_string()),
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("TMPDIR".to_string(), "/tmp".to_string()),
    ];
    env.extend(spec.env.iter().cloned());
    for (k, v) in &env {
        cmd.arg("--setenv").arg(k).arg(v);
    }
    cmd.arg("--");
    if root {
        // The command runs as an unprivileged user of the host (not a user namespace
        // mapping of root, under which root's files would look like the command's own):
        // files of root stay closed to it, and the process limit counts its processes.
        // The sandbox's first process stays root and only starts the command (through
        // `setpriv`) and waits for it: coreutils' `timeout 0` (no time limit; a few ms
        // cheaper than a shell). Being root it keeps bubblewrap's parent-death signal (a
        // change of user would clear it), so the sandbox dies with spade; reaping the
        // command, it passes the command's CPU time and memory on to our `wait4`; and it
        // exits with the command's status (128 + signal when a signal ended it).
        let uid = sandbox_uid(&spec.workspace);
        safe_fs::chown_tree(&spec.workspace, uid, uid)?;
        cmd.args([TIMEOUT, "0", SETPRIV]).arg(format!("--reuid={uid}")).arg(format!("--regid={uid}"));
        cmd.args(["--clear-groups", "--no-new-privs", "--"]);
    }
    cmd.args(&argv);
    Ok(cmd)
}

/// The interpreter a pyenv or rbenv shim stands for, as `pyenv which` says for the
/// workspace (its `.python-version` counts), asked once per shim and workspace. A shim is
/// a shell script that runs the version manager on every call (about 80 ms each for
/// pyenv): a `py>` task pays that on every call, so the sandbox runs the interpreter itself.
fn resolve_shim(program: &Path, workspace: &Path) -> Option<PathBuf> {
    type Cache = std::sync::Mutex<std::collections::HashMap<(PathBuf, PathBuf), Option<PathBuf>>>;
    static RESOLVED: OnceLock<Cache> = OnceLock::new();
    let shims = program.parent()?;
    if shims.file_name()? != "shims" {
        return None;
    }
    let root = shims.parent()?;
    let key = (program.to_path_buf(), workspace.to_path_buf());
    let cache = RESOLVED.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return hit.clone();
    }
    let resolved = ["pyenv", "rbenv"].iter().find_map(|tool| {
        let manager = root.join("libexec").join(tool);
        if !manager.is_file() {
            return None;
        }
        let out = Command::new(&manager)
            .arg("which")
            .arg(program.file_name()?)
            .env(format!("{}_ROOT", tool.to_uppercase()), root)
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && path.is_absolute() && path.is_file()).then_some(path)
    });
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, resolved.clone());
    resolved
}

/// `cwd` (relative to the workspace) inside the sandbox or container.
fn in_workspace(cwd: &Path) -> PathBuf {
    if cwd.as_os_str().is_empty() { PathBuf::from(WORKSPACE_MOUNT) } else { Path::new(WORKSPACE_MOUNT).join(cwd) }
}

fn bwrap_path() -> Option<&'static Path> {
    static BWRAP: OnceLock<Option<PathBuf>> = OnceLock::new();
    BWRAP.get_or_init(|| which("bwrap")).as_deref()
}

/// The host's processes, in the workspace, with only the task's environment (plus PATH and
/// HOME of the host, which a local script expects). Leads its own process group so that
/// kill reaches everything it started.
fn local_command(spec: &Spec) -> Command {
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]);
    cmd.env_clear();
    for key in ["PATH", "HOME", "LANG", "USER", "PYENV_ROOT"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    let mut path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    path.push(':');
    path.push_str(&spec.workspace.display().to_string());
    cmd.env("PATH", path);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.current_dir(spec.workspace.join(&spec.cwd));
    cmd.process_group(0);
    cmd
}

/// `docker run` of `spec` in `image`: the workspace mounted at `/workspace`, no network
/// unless granted, the grant's memory, CPU and process limits passed to the daemon.
fn docker_command(
    grant: &CommandGrant,
    spec: &Spec,
    image: &str,
    pull_always: bool,
    name: &str,
) -> Result<Command, String> {
    docker_available()?;
    let mut cmd = Command::new("docker");
    cmd.env_clear();
    for key in ["PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.args(["run", "--rm", "-i", "--name", name]);
    if pull_always {
        cmd.args(["--pull", "always"]);
    }
    if !grant.network {
        cmd.args(["--network", "none"]);
    }
    let l = &grant.limits;
    cmd.arg(format!("--memory={}", l.memory_bytes));
    cmd.arg(format!("--pids-limit={}", l.processes));
    cmd.arg(format!("--ulimit=cpu={}", l.cpu_time.as_secs().max(1)));
    cmd.arg("-v").arg(format!("{}:{WORKSPACE_MOUNT}", spec.workspace.display()));
    cmd.arg("-w").arg(in_workspace(&spec.cwd));
    for (k, v) in &spec.env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(image).args(&spec.argv);
    Ok(cmd)
}

/// Whether a docker daemon answers (asked once per process).
fn docker_available() -> Result<(), String> {
    static ANSWER: OnceLock<Result<(), String>> = OnceLock::new();
    ANSWER
        .get_or_init(|| {
            let out = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("the docker executor needs the `docker` command: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "the docker executor needs a docker daemon, and none answers: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
        .clone()
}

/// Stops a container by name (best effort: it may have exited already).
pub(crate) fn docker_kill(name: &str) {
    let _ = Command::new("docker")
        .args(["kill", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Object {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn executor_comes_from_params_within_the_grant() {
        let g = CommandGrant::default();
        assert!(matches!(choose(&g, &params("{}")), Ok(Launch::Sandbox)));
        assert!(matches!(
            choose(&g, &params(r#"{"docker": {"image": "python:3", "pull_always": true}}"#)),
            Ok(Launch::Docker { pull_always: true, .. })
        ));
        let err = choose(&g, &params(r#"{"executor": "local"}"#)).unwrap_err();
        assert!(err.contains("`local` executor") && err.contains("not granted"), "{err}");
        assert!(choose(&g, &params(r#"{"executor": "vm"}"#)).unwrap_err().contains("not an executor"));
        assert!(choose(&g, &params(r#"{"docker": {"pull_always": true}}"#)).unwrap_err().contains("image"));
        let local = CommandGrant { executors: vec![ExecutorKind::Local], ..CommandGrant::default() };
        assert!(matches!(choose(&local, &params("{}")), Ok(Launch::Local)));
        assert!(choose(&local, &params(r#"{"executor": "sandbox"}"#)).is_err());
    }

    #[test]
    fn install_roots() {
        assert_eq!(install_root(Path::new("/usr/bin/python3")), None);
        assert_eq!(install_root(Path::new("/srv/py/bin/python")), Some(PathBuf::from("/srv/py")));
        assert_eq!(install_root(Path::new("/srv/tool")), Some(PathBuf::from("/srv")));
    }
}
