//! `spade bench`: prints the figures the project's speed targets are stated in.
//!
//! * runtime: warm invocation of `echo>` (new Store + instantiate + call + decode) and the
//!   load of a plugin from the precompiled cache;
//! * engine: wall time of `spade run` (a new process, so start-up is included) of a
//!   project whose single task is a `for_each>` over N items with an `echo>` body, with the
//!   state database on disk and in memory;
//! * `--plugin FILE.wasm`: the warm call and cache load of any plugin component.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Item counts of the for_each> workload.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000usize, 10_000, 100_000])]
    pub items: Vec<usize>,
    /// Runs per workload (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the runtime micro-benchmarks.
    #[arg(long)]
    pub skip_runtime: bool,
    /// Skip the 1,000-waiting-tasks measurement.
    #[arg(long)]
    pub skip_waiting: bool,
    /// Skip the scripting measurements (sh> and py> in the default sandbox).
    #[arg(long)]
    pub skip_scripts: bool,
    /// Only the scripting measurements.
    #[arg(long)]
    pub only_scripts: bool,
    /// Only the server-mode figures (a server and two agents on PostgreSQL).
    #[arg(long)]
    pub server: bool,
    /// The PostgreSQL of --server (the bench works in a schema of its own, dropped after).
    #[arg(long, value_name = "URL", default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres: String,
    /// Also time the for_each workload on this state database, e.g. a PostgreSQL URL
    /// (it gains a bench project with one session).
    #[arg(long, value_name = "FILE|URL")]
    pub state: Option<String>,
    /// Measure this plugin component instead (warm call and cache load only): the figure a
    /// plugin author compares across languages, e.g. `--plugin hello_c.wasm --operator
    /// hello_c --command '"input.txt"' --workspace dir/`.
    #[arg(long, value_name = "FILE.wasm")]
    pub plugin: Option<std::path::PathBuf>,
    /// The operator of --plugin to call [default: its first].
    #[arg(long, requires = "plugin")]
    pub operator: Option<String>,
    /// The operator's argument, as JSON (`"text"`, `{"k": 1}`) [default: "noop"].
    #[arg(long, requires = "plugin")]
    pub command: Option<String>,
    /// Params of the call, as a JSON object.
    #[arg(long, requires = "plugin")]
    pub params: Option<String>,
    /// The workspace directory the calls see [default: an empty temporary one].
    #[arg(long, requires = "plugin")]
    pub workspace: Option<std::path::PathBuf>,
}

/// `spade bench --plugin`: one component's warm call and cache load.
fn bench_plugin(args: &BenchArgs, path: &std::path::Path) -> anyhow::Result<ExitCode> {
    use spade_runtime::bench::{BenchOptions, measure, sample_request};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let operator = match &args.operator {
        Some(op) => op.clone(),
        None => {
            let runtime = crate::host::new_runtime()?;
            let report = runtime
                .install("bench", &bytes, spade_runtime::Grants::all())
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            report.info.operators.first().cloned().context("the plugin serves no operator")?
        }
    };
    let mut request = sample_request(&operator);
    if let Some(command) = &args.command {
        request.command =
            serde_json::from_str(command).with_context(|| format!("--command {command:?} is not JSON"))?;
    }
    if let Some(params) = &args.params {
        request.params =
            serde_json::from_str(params).with_context(|| format!("--params {params:?} is not a JSON object"))?;
        request.local_params = request.params.clone();
    }
    let opts = BenchOptions { workspace: args.workspace.clone(), ..BenchOptions::default() };
    let report =
        measure(&bytes, &operator, Some(&request), &opts).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    println!(
        "== plugin {}: {operator}> (every capability granted; secrets, engine and workflows answer nothing)",
        path.display()
    );
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn write_for_each_project(dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let dig = format!("+loop:\n  for_each>:\n    item: [{}]\n  _do:\n    echo>: item ${{item}}\n", items.join(","));
    std::fs::write(dir.join("bench.dig"), dig)?;
    Ok(())
}

/// Where a timed run keeps its state.
#[derive(Clone, Copy)]
enum BenchState<'a> {
    OnDisk,
    InMemory,
    At(&'a str),
}

/// One finished run: wall time, peak RSS (KiB) and what it printed.
struct Measured {
    wall: Duration,
    peak_kib: u64,
    success: bool,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Run `cmd` to its end and measure it: the peak RSS comes from the kernel's accounting of
/// the child (wait4), so it is the whole process's high-water mark, not a sample.
fn measure_run(cmd: &mut Command) -> anyhow::Result<Measured> {
    use std::io::Read;
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let mut stdout = Vec::new();
    out.read_to_end(&mut stdout)?;
    let stderr = err_reader.join().unwrap_or_default();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills; the child is ours and not yet reaped.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if reaped != pid {
        bail!("waiting for the bench run: {}", std::io::Error::last_os_error());
    }
    let wall = t.elapsed();
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok(Measured { wall, peak_kib: usage.ru_maxrss as u64, success, stdout, stderr })
}

fn time_run(dir: &std::path::Path, n: usize, state: BenchState<'_>) -> anyhow::Result<(Duration, u64)> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "bench.dig", "--session", "2024-01-01", "--rerun", "--max-tasks"])
        .arg((n * 2 + 10).to_string())
        .current_dir(dir);
    match state {
        BenchState::OnDisk => {}
        BenchState::InMemory => {
            cmd.arg("--no-save");
        }
        BenchState::At(location) => {
            cmd.env("SPADE_STATE", location);
        }
    }
    let out = measure_run(&mut cmd)?;
    if !out.success {
        bail!("bench run of {n} items failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    if lines != n {
        bail!("bench run of {n} items printed {lines} lines");
    }
    Ok((out.wall, out.peak_kib))
}

/// `spade run` of a project with one `echo>` task: the floor every run pays.
fn one_task_run(runs: usize) -> anyhow::Result<(Duration, u64)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("one.dig"), "+hello:\n  echo>: hello\n")?;
    let exe = std::env::current_exe()?;
    let mut results = Vec::new();
    for _ in 0..runs.max(1) {
        let mut cmd = Command::new(&exe);
        cmd.args(["run", "one.dig", "--session", "2024-01-01", "--rerun"]).current_dir(dir.path());
        let out = measure_run(&mut cmd)?;
        if !out.success || out.stdout != b"hello\n" {
            bail!("the one-task bench run failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        results.push((out.wall, out.peak_kib));
    }
    results.sort();
    Ok(results[results.len() / 2])
}

/// Peak RSS (VmHWM, KiB) and thread count of a running process, from /proc.
fn proc_status(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("Threads:")?))
}

/// 1,000 tasks waiting at once (`wait>` under `_parallel`): peak memory and threads.
fn waiting_tasks(n: usize) -> anyhow::Result<(u64, u64, Duration)> {
    let dir = tempfile::tempdir()?;
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let dig = format!(
        "+wait_all:\n  for_each>:\n    item: [{}]\n  _parallel: true\n  _do:\n    wait>: 3s\n",
        items.join(",")
    );
    std::fs::write(dir.path().join("wait.dig"), dig)?;
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let mut child = Command::new(exe)
        .args(["run", "wait.dig", "--session", "2024-01-01", "--max-tasks"])
        .arg((n * 2 + 10).to_string())
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let (mut peak_kib, mut peak_threads) = (0, 0);
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the waiting-tasks run failed");
            }
            break;
        }
        if let Some((kib, threads)) = proc_status(child.id()) {
            peak_kib = peak_kib.max(kib);
            peak_threads = peak_threads.max(threads);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((peak_kib, peak_threads, t.elapsed()))
}

/// `spade run` of `dig` (the file name in `dir`), checked to succeed; its wall time.
fn run_workflow(dir: &std::path::Path, dig: &str, max_tasks: usize) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", dig, "--session", "2024-01-01", "--rerun", "--max-tasks"])
        .arg(max_tasks.to_string())
        .current_dir(dir);
    let out = measure_run(&mut cmd)?;
    if !out.success {
        bail!("the bench run of {dig} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.wall)
}

/// The median of `runs` runs of `dig`.
fn median_run(dir: &std::path::Path, dig: &str, max_tasks: usize, runs: usize) -> anyhow::Result<Duration> {
    let mut walls = (0..runs.max(1)).map(|_| run_workflow(dir, dig, max_tasks)).collect::<anyhow::Result<Vec<_>>>()?;
    walls.sort();
    Ok(walls[walls.len() / 2])
}

/// A for_each> over `n` items running `body` (YAML of one task's keys) for each, with
/// `parallel` as its `_parallel` (none: one after another).
fn for_each_dig(n: usize, body: &str, parallel: Option<&str>) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let parallel = parallel.map(|p| format!("  _parallel: {p}\n")).unwrap_or_default();
    format!("timezone: UTC\n+each:\n  for_each>:\n    item: [{}]\n{parallel}  _do:\n    {body}\n", items.join(","))
}

/// sh> and py> in the default executor (the bubblewrap sandbox).
fn bench_scripts(runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    const N: usize = 40;
    std::fs::write(dir.path().join("echo.dig"), for_each_dig(N, "echo>: x", None))?;
    std::fs::write(dir.path().join("sh.dig"), for_each_dig(N, "sh>: \"true\"", None))?;
    std::fs::write(dir.path().join("py.dig"), for_each_dig(N, "py>: trivial.run", None))?;
    std::fs::write(dir.path().join("trivial.py"), "def run():\n    pass\n")?;
    std::fs::write(dir.path().join("sh1000.dig"), for_each_dig(1000, "sh>: \"true\"", Some("{limit: 8}")))?;
    let echo = median_run(dir.path(), "echo.dig", N * 2 + 10, runs)?;
    let sh = median_run(dir.path(), "sh.dig", N * 2 + 10, runs)?;
    let py = median_run(dir.path(), "py.dig", N * 2 + 10, runs)?;
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / N as f64;
    println!(
        "== scripts: sh> and py> in the default sandbox (targets: sh> \"true\" overhead <= 15 ms per task; py> <= 60 ms per task; 1,000 sh> under _parallel limit 8 <= 10 s)"
    );
    println!(
        "sh> \"true\": {:.1} ms per task, {:.1} ms over echo> ({N} tasks one after another, median of {runs} runs)",
        per(sh),
        per(sh) - per(echo)
    );
    println!("py> trivial function: {:.1} ms per task (the default interpreter, `python`)", per(py));
    // The interpreter's own start-up is most of a py> task: show the distribution's too.
    if std::path::Path::new("/usr/bin/python3").is_file() {
        let dig = for_each_dig(N, "py>: trivial.run\n    python: /usr/bin/python3", None);
        std::fs::write(dir.path().join("py_system.dig"), dig)?;
        let system = median_run(dir.path(), "py_system.dig", N * 2 + 10, runs)?;
        println!("py> trivial function: {:.1} ms per task with /usr/bin/python3", per(system));
    }
    let thousand = median_run(dir.path(), "sh1000.dig", 2100, 1)?;
    println!("1,000 sh> tasks, _parallel limit 8: {:.2} s", thousand.as_secs_f64());
    Ok(())
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.plugin {
        return bench_plugin(&args, path);
    }
    if args.only_scripts {
        bench_scripts(args.runs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.server {
        crate::bench_server::bench_server(&args.postgres)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.skip_runtime {
        let echo = spade_bundled::plugin("spade-plugin-echo").context("the echo plugin is not bundled")?;
        let report = spade_runtime::bench::measure(echo, "echo", None, &spade_runtime::bench::BenchOptions::default())?;
        println!("== runtime: echo> (target: warm call median <= 40 us, cache load <= 2 ms)");
        println!("{report}");
    }
    if !args.skip_waiting {
        let (kib, threads, took) = waiting_tasks(1000)?;
        println!(
            "== engine: 1,000 tasks waiting at once (wait>: 3s under _parallel) (target: <= 100 MB RSS, no thread per task)"
        );
        println!("peak RSS {:.1} MB, peak threads {threads}, wall {:.2} s", kib as f64 / 1024.0, took.as_secs_f64());
    }
    if !args.skip_scripts {
        bench_scripts(args.runs)?;
    }
    let (wall, kib) = one_task_run(args.runs)?;
    println!("== engine: spade run of one echo> task, state on disk (target: <= 0.05 s, <= 40 MiB peak RSS)");
    println!("one task: median {:.3} s, peak RSS {:.1} MiB", wall.as_secs_f64(), kib as f64 / 1024.0);
    println!(
        "== engine: spade run of one for_each> over N items with an echo> body \
         (targets: 10,000 in <= 0.5 s and <= 64 MiB; 100,000 in <= 3 s and <= 128 MiB peak RSS)"
    );
    for &n in &args.items {
        let dir = tempfile::tempdir()?;
        write_for_each_project(dir.path(), n)?;
        let mut states =
            vec![("on disk".to_string(), BenchState::OnDisk), ("in memory".to_string(), BenchState::InMemory)];
        if let Some(location) = &args.state {
            let shown = spade_store::StoreLocation::parse(location).to_string();
            states.push((shown, BenchState::At(location)));
        }
        for (label, state) in states {
            let mut runs = Vec::new();
            for _ in 0..args.runs.max(1) {
                runs.push(time_run(dir.path(), n, state)?);
            }
            runs.sort();
            let (median, _) = runs[runs.len() / 2];
            let peak = runs.iter().map(|&(_, kib)| kib).max().unwrap_or(0);
            println!(
                "for_each {n:>7} items, state {:<9}: median {:>8.3} s over {} runs ({:.1} us/task), peak RSS {:.1} MiB",
                label,
                median.as_secs_f64(),
                runs.len(),
                median.as_secs_f64() * 1e6 / n as f64,
                peak as f64 / 1024.0
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
