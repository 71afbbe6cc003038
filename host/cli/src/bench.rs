//! `spade bench`: prints the figures the project's speed targets are stated in.
//!
//! * runtime: warm invocation of `echo>` (new Store + instantiate + call + decode) and the
//!   load of a plugin from the precompiled cache;
//! * engine: wall time of `spade run` (a new process, so start-up is included) of a
//!   project whose single task is a `for_each>` over N items with an `echo>` body, with the
//!   state database on disk and in memory.

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
}

fn write_for_each_project(dir: &std::path::Path, n: usize) -> anyhow::Result<()> {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    let dig = format!("+loop:\n  for_each>:\n    item: [{}]\n  _do:\n    echo>: item ${{item}}\n", items.join(","));
    std::fs::write(dir.join("bench.dig"), dig)?;
    Ok(())
}

fn time_run(dir: &std::path::Path, n: usize, persist: bool) -> anyhow::Result<Duration> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "bench.dig", "--session", "2024-01-01", "--rerun", "--max-tasks"])
        .arg((n * 2 + 10).to_string())
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !persist {
        cmd.arg("--no-save");
    }
    let t = Instant::now();
    let out = cmd.output()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        bail!("bench run of {n} items failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    if lines != n {
        bail!("bench run of {n} items printed {lines} lines");
    }
    Ok(elapsed)
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if !args.skip_runtime {
        let echo = spade_bundled::plugin("spade-plugin-echo").context("the echo plugin is not bundled")?;
        let report = spade_runtime::bench::measure(echo, "echo", None, &spade_runtime::bench::BenchOptions::default())?;
        println!("== runtime: echo> (target: warm call median <= 40 us, cache load <= 2 ms)");
        println!("{report}");
    }
    println!("== engine: spade run of one for_each> over N items with an echo> body (target: 10,000 in <= 1.0 s)");
    for &n in &args.items {
        let dir = tempfile::tempdir()?;
        write_for_each_project(dir.path(), n)?;
        for persist in [true, false] {
            let mut times = Vec::new();
            for _ in 0..args.runs.max(1) {
                times.push(time_run(dir.path(), n, persist)?);
            }
            times.sort();
            let median = times[times.len() / 2];
            println!(
                "for_each {n:>7} items, state {:<9}: median {:>8.3} s over {} runs ({:.1} us/task)",
                if persist { "on disk" } else { "in memory" },
                median.as_secs_f64(),
                times.len(),
                median.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
