//! `spade bench`: prints the figures the project's speed targets are stated in.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench: not wired yet")
}
