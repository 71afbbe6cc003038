//! The commands that are running, shared by every call of the runtime: a command outlives
//! the call that started it, and a later call of the same task waits on it again.
//!
//! Per command: a thread reaping it (`wait4`, which also gives its CPU time and peak memory)
//! and one thread per output pipe, splitting lines into a bounded buffer that the next
//! `wait` copies to the task log. One watchdog thread for all commands kills those past
//! their wall time, over their output limit, or whose attempt was killed.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use spade_api::{CancelToken, Usage};

use super::executor::{Kill, Spawned, docker_kill};
use super::{CommandLimits, TAIL_BYTES};

/// The task a command belongs to: only its calls may wait on it or cancel it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Owner {
    pub attempt_id: i64,
    pub task_name: String,
}

/// Output lines buffered for the next `wait` at most; older ones are dropped (counted).
const PENDING_BYTES: usize = 1 << 20;
/// Longest line kept whole; longer ones are cut.
const MAX_LINE: usize = 16 << 10;
/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(50);
/// After the command exited, how long its output pipes may stay open (a background process
/// of a `local` command holding them) before they are given up.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// How a command ended, as `wait` reports it.
pub(crate) struct Finished {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
    pub tail: String,
    pub usage: Usage,
}

#[derive(Default)]
struct Output {
    lines: VecDeque<(bool, String)>,
    pending_bytes: usize,
    dropped_lines: u64,
    total_bytes: u64,
    tail: VecDeque<String>,
    tail_bytes: usize,
    open_pipes: u8,
}

struct Exit {
    status: libc::c_int,
    rusage: libc::rusage,
    at: Instant,
}

#[derive(Default)]
struct State {
    out: Output,
    exit: Option<Exit>,
    /// Why the host killed it (first reason wins).
    killed: Option<String>,
}

pub(crate) struct Running {
    owner: Owner,
    pid: libc::pid_t,
    kill: Kill,
    started: Instant,
    limits: CommandLimits,
    cancel: CancelToken,
    state: Mutex<State>,
    changed: Condvar,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Kills the command and everything it started; `why` becomes its `reason`.
    pub fn kill(&self, why: &str) {
        let mut st = self.lock();
        if st.exit.is_some() {
            return;
        }
        st.killed.get_or_insert_with(|| why.to_string());
        if matches!(self.kill, Kill::Sandbox) {
            // The sandbox's first process (bubblewrap's child) runs as another user, whose
            // parent-death signal the change of user cleared: kill it first, which ends
            // every process of the sandbox's PID namespace. It is our child's child, so it
            // stays a zombie of our child, not reusable, until our child reaps it.
            for pid in children_of(self.pid) {
                // SAFETY: kill(2) of a process of the sandbox (see above).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let target = if matches!(self.kill, Kill::Group) { -self.pid } else { self.pid };
        // SAFETY: kill(2) of our own child (or the group it leads), not reaped: the reaper
        // reaps only while holding this lock and sets `exit` in the same step, and `exit`
        // is unset. A zombie's pid cannot be reused.
        unsafe { libc::kill(target, libc::SIGKILL) };
        drop(st);
        if let Kill::Container(name) = &self.kill {
            docker_kill(name);
        }
    }

    /// New output lines since the last call, and how it ended once it has.
    pub fn take_output(&self) -> (Vec<(bool, String)>, Option<Finished>) {
        let mut st = self.lock();
        let mut lines: Vec<(bool, String)> = st.out.lines.drain(..).collect();
        st.out.pending_bytes = 0;
        if st.out.dropped_lines > 0 {
            lines.push((
                true,
                format!("spade: {} lines of output were dropped while nobody read them", st.out.dropped_lines),
            ));
            st.out.dropped_lines = 0;
        }
        let drained = st.out.open_pipes == 0 || st.exit.as_ref().is_some_and(|e| e.at.elapsed() >= DRAIN_GRACE);
        let finished = match &st.exit {
            Some(exit) if drained => Some(self.finished(&st, exit)),
            _ => None,
        };
        (lines, finished)
    }

    fn finished(&self, st: &State, exit: &Exit) -> Finished {
        let (code, signal) = if libc::WIFEXITED(exit.status) {
            (Some(libc::WEXITSTATUS(exit.status)), None)
        } else if libc::WIFSIGNALED(exit.status) {
            (None, Some(libc::WTERMSIG(exit.status)))
        } else {
            (None, None)
        };
        let ru = &exit.rusage;
        let cpu = Duration::from_secs((ru.ru_utime.tv_sec + ru.ru_stime.tv_sec).max(0) as u64)
            + Duration::from_micros((ru.ru_utime.tv_usec + ru.ru_stime.tv_usec).max(0) as u64);
        // ru_maxrss is in KiB on Linux.
        let peak = (ru.ru_maxrss.max(0) as u64) * 1024;
        let tail: Vec<&str> = st.out.tail.iter().map(String::as_str).collect();
        let tail = tail.join("\n");
        let mut reason = st.killed.clone().unwrap_or_default();
        // RLIMIT_CPU sends SIGXCPU at the limit and SIGKILL a second later (the first is
        // ignored by a sandbox's first process); bubblewrap or a shell running the killed
        // process report a signal as exit status 128 + signal.
        let killed_by = signal.or(code.filter(|c| *c > 128 && *c < 160).map(|c| c - 128));
        let xcpu =
            killed_by == Some(libc::SIGXCPU) || (killed_by == Some(libc::SIGKILL) && cpu >= self.limits.cpu_time);
        if reason.is_empty() && xcpu {
            reason = format!("exceeded its CPU time limit of {} s (cpu_seconds)", self.limits.cpu_time.as_secs());
        }
        if reason.is_empty() && killed_by == Some(libc::SIGXFSZ) {
            reason = "a file it wrote reached what is left of the attempt's disk quota (disk_quota)".to_string();
        }
        // An address-space limit shows as failed allocations, which programs report.
        let oom = ["MemoryError", "Cannot allocate memory", "out of memory", "failed to allocate", "NoMemoryError"]
            .iter()
            .any(|m| tail.contains(m));
        if reason.is_empty() && code != Some(0) && (oom || peak >= self.limits.memory_bytes / 10 * 9) {
            reason = format!(
                "ran out of memory: it reached its memory limit of {} MiB (memory_mb)",
                self.limits.memory_bytes >> 20
            );
        }
        Finished {
            code,
            signal,
            reason,
            tail,
            usage: Usage { wall: exit.at.duration_since(self.started), cpu, peak_memory_bytes: peak },
        }
    }

    /// Blocks until something changes (output, exit) or `until`.
    pub fn wait_change(&self, until: Instant) {
        let st = self.lock();
        let now = Instant::now();
        if until > now && st.out.lines.is_empty() {
            let _ = self.changed.wait_timeout(st, until - now);
        }
    }

    fn push_line(&self, stderr: bool, mut line: String) {
        let mut st = self.lock();
        let len = line.len() as u64 + 1;
        st.out.total_bytes += len;
        if st.out.total_bytes > self.limits.output_bytes {
            let limit = self.limits.output_bytes >> 20;
            drop(st);
            self.kill(&format!("wrote more than {limit} MiB of output (output_mb)"));
            return;
        }
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …(line cut)");
        }
        st.out.tail_bytes += line.len() + 1;
        st.out.tail.push_back(line.clone());
        while st.out.tail_bytes > TAIL_BYTES && st.out.tail.len() > 1 {
            let gone = st.out.tail.pop_front().map_or(0, |l| l.len() + 1);
            st.out.tail_bytes -= gone;
        }
        st.out.pending_bytes += line.len();
        st.out.lines.push_back((stderr, line));
        while st.out.pending_bytes > PENDING_BYTES {
            let Some((_, gone)) = st.out.lines.pop_front() else { break };
            st.out.pending_bytes -= gone.len();
            st.out.dropped_lines += 1;
        }
        drop(st);
        self.changed.notify_all();
    }
}

/// Every running command of the runtime.
#[derive(Default)]
pub(crate) struct Hub {
    commands: Mutex<HashMap<String, Arc<Running>>>,
    watchdog: std::sync::OnceLock<()>,
    /// Per workspace and attempt (each attempt has its own quota): the workspace's size and
    /// the attempt's quota use when last looked at (see [`Hub::workspace_growth`]).
    ledgers: Mutex<HashMap<(std::path::PathBuf, i64), Ledger>>,
}

#[derive(Clone, Copy)]
struct Ledger {
    size: u64,
    charged: u64,
}

impl Hub {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Running>>> {
        self.commands.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes over a started command; returns its handle.
    pub fn add(self: &Arc<Self>, owner: Owner, spawned: Spawned, limits: CommandLimits, cancel: CancelToken) -> String {
        let Spawned { mut child, kill } = spawned;
        let pid = child.id() as libc::pid_t;
        let running = Arc::new(Running {
            owner,
            pid,
            kill,
            started: Instant::now(),
            limits,
            cancel,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let pipes: Vec<(bool, Box<dyn Read + Send>)> = [
            child.stdout.take().map(|p| (false, Box::new(p) as Box<dyn Read + Send>)),
            child.stderr.take().map(|p| (true, Box::new(p) as Box<dyn Read + Send>)),
        ]
        .into_iter()
        .flatten()
        .collect();
        running.lock().out.open_pipes = pipes.len() as u8;
        for (stderr, pipe) in pipes {
            let r = running.clone();
            let spawned =
                std::thread::Builder::new().name("spade-cmd-out".into()).spawn(move || read_lines(&r, stderr, pipe));
            if spawned.is_err() {
                running.lock().out.open_pipes -= 1;
            }
        }
        // `child` is never waited through std: the reaper below owns the pid.
        drop(child);
        let r = running.clone();
        let reaper = std::thread::Builder::new().name("spade-cmd-wait".into()).spawn(move || reap(&r));
        if reaper.is_err() {
            running.kill("spade could not start a thread to watch it");
        }
        let handle = format!("cmd-{}-{}", running.owner.attempt_id, super::executor::random_suffix());
        self.map().insert(handle.clone(), running);
        self.start_watchdog();
        handle
    }

    /// Notes the workspace's size before a command starts in it (once per workspace: later
    /// commands are measured from where the last one left it).
    pub fn note_workspace(&self, workspace: &std::path::Path, attempt_id: i64, charged: u64) -> Result<(), String> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        let key = (workspace.to_path_buf(), attempt_id);
        if !ledgers.contains_key(&key) {
            // A workspace's earlier attempts are done with it (or run beside this one with
            // ledgers of their own): keep at most a few.
            if ledgers.len() > 1024 {
                ledgers.clear();
            }
            let size = super::safe_fs::tree_size(workspace)?;
            ledgers.insert(key, Ledger { size, charged });
        }
        Ok(())
    }

    /// What commands added to the workspace since it was last looked at: its growth in
    /// size, less what the attempt's wasm calls added meanwhile (those are charged to the
    /// quota as they write; `charged` is the quota's use now). Negative when files went.
    pub fn workspace_growth(&self, workspace: &std::path::Path, attempt_id: i64, charged: u64) -> Result<i128, String> {
        let size = super::safe_fs::tree_size(workspace)?;
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        let key = (workspace.to_path_buf(), attempt_id);
        let before = ledgers.get(&key).copied().unwrap_or(Ledger { size, charged });
        ledgers.insert(key, Ledger { size, charged });
        Ok(i128::from(size) - i128::from(before.size) - (i128::from(charged) - i128::from(before.charged)))
    }

    /// The command `handle`, if `owner` started it.
    pub fn get(&self, handle: &str, owner: &Owner) -> Option<Arc<Running>> {
        self.map().get(handle).filter(|r| r.owner == *owner).cloned()
    }

    pub fn remove(&self, handle: &str) {
        self.map().remove(handle);
    }

    /// Commands `owner` has not collected yet.
    pub fn running_of(&self, owner: &Owner) -> usize {
        self.map().values().filter(|r| r.owner == *owner).count()
    }

    /// Kills and forgets every command of `owner`.
    pub fn cancel_all_of(&self, owner: &Owner) {
        let mut map = self.map();
        map.retain(|_, r| {
            if r.owner == *owner {
                r.kill("its task ended while it was still running");
                false
            } else {
                true
            }
        });
    }

    fn start_watchdog(self: &Arc<Self>) {
        self.watchdog.get_or_init(|| {
            let weak: Weak<Hub> = Arc::downgrade(self);
            let _ = std::thread::Builder::new().name("spade-cmd-watch".into()).spawn(move || {
                loop {
                    std::thread::sleep(WATCH_EVERY);
                    let Some(hub) = weak.upgrade() else { return };
                    hub.watch();
                }
            });
        });
    }

    /// One round of the watchdog: kill what must stop, forget what was killed and reaped
    /// with nobody left to collect it.
    fn watch(&self) {
        let now = Instant::now();
        let mut map = self.map();
        map.retain(|_, r| {
            let exited_at = r.lock().exit.as_ref().map(|e| e.at);
            if let Some(at) = exited_at {
                // Kept for its task's next call; a task that never comes back (its
                // attempt was killed) leaves it here for an hour at most.
                return !(r.cancel.is_cancelled() || now.duration_since(at) > Duration::from_secs(3600));
            }
            if r.cancel.is_cancelled() {
                r.kill("the attempt was killed");
            } else if now.duration_since(r.started) > r.limits.wall_time {
                r.kill(&format!(
                    "ran longer than its time limit of {} s (timeout_seconds) and was stopped",
                    r.limits.wall_time.as_secs()
                ));
            }
            true
        });
    }
}

/// The children of process `pid` (Linux `/proc/PID/task/PID/children`).
fn children_of(pid: libc::pid_t) -> Vec<libc::pid_t> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn read_lines(r: &Running, stderr: bool, pipe: Box<dyn Read + Send>) {
    let mut reader = BufReader::with_capacity(64 << 10, pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bounded read of one line: a line without a newline cannot grow without limit.
        match (&mut reader).take(MAX_LINE as u64 * 4).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                r.push_line(stderr, String::from_utf8_lossy(&buf).into_owned());
            }
        }
    }
    let mut st = r.lock();
    st.out.open_pipes = st.out.open_pipes.saturating_sub(1);
    drop(st);
    r.changed.notify_all();
}

fn reap(r: &Running) {
    // First wait without reaping: while the child is a zombie its pid (and process group)
    // cannot be reused, so `Running::kill` stays safe until `exit` is set below.
    loop {
        // SAFETY: waitid of our own child with a valid out-pointer.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let got = unsafe { libc::waitid(libc::P_PID, r.pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if got == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    if matches!(r.kill, Kill::Group) {
        // What the command left running in its group goes with it.
        // SAFETY: kill(2) of the group our zombie child still leads.
        unsafe { libc::kill(-r.pid, libc::SIGKILL) };
    }
    let mut st = r.lock();
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 of our own child with valid out-pointers.
        let got = unsafe { libc::wait4(r.pid, &mut status, 0, &mut rusage) };
        if got == r.pid {
            break;
        }
        if got < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // Not our child any more (cannot happen: nobody else waits for it); treat as killed.
            status = libc::SIGKILL;
            break;
        }
    }
    st.exit = Some(Exit { status, rusage, at: Instant::now() });
    drop(st);
    r.changed.notify_all();
}
