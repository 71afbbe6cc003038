//! `spade check`: load and validate every workflow of the project and print its task tree,
//! like `digdag check`. Nothing runs.

use std::path::PathBuf;
use std::process::ExitCode;

use spade_dig::TaskNode;

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Only show this workflow (file or name); all are still validated.
    pub workflow: Option<String>,
    /// Project directory (default: the current directory).
    #[arg(long)]
    pub project: Option<PathBuf>,
}

fn print_node(node: &TaskNode, prefix: &str, depth: usize) {
    let name = format!("{prefix}{}", node.name);
    let what = match &node.operator {
        Some(op) => format!("{op}>"),
        None if node.children.is_empty() => "(empty group)".into(),
        None => String::new(),
    };
    println!("{}{name}  {what}", "  ".repeat(depth));
    for c in &node.children {
        print_node(c, &name, depth + 1);
    }
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let root = crate::project_dir(&args.project)?;
    let project = match spade_dig::load_project(&root) {
        Ok(p) => p,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let wanted = args.workflow.as_deref().map(|w| w.strip_suffix(".dig").unwrap_or(w));
    for wf in &project.workflows {
        if wanted.is_some_and(|w| w != wf.name) {
            continue;
        }
        println!("workflow {} ({}), timezone {}", wf.name, wf.file.display(), wf.timezone.name());
        if let Some(s) = &wf.schedule {
            let spec = wf.config.get("schedule").map(|v| v.to_string()).unwrap_or_default();
            println!("  schedule: {spec}");
            match s.first_schedule_time(chrono::Utc::now()) {
                Some(first) => println!(
                    "  first session time: {}, first run time: {}",
                    first.session_time.format("%Y-%m-%d %H:%M:%S %:z"),
                    first.run_time.format("%Y-%m-%d %H:%M:%S %:z")
                ),
                None => println!("  no future run (the schedule's end date has passed)"),
            }
        }
        if let Some(sla) = wf.config.get("sla").and_then(|v| spade_dig::Sla::parse(v).ok()) {
            let deadline = match sla.deadline {
                spade_dig::SlaDeadline::Time { .. } => format!("{} ({})", sla.describe(), wf.timezone.name()),
                spade_dig::SlaDeadline::Duration { .. } => format!("{} after the attempt starts", sla.describe()),
            };
            let mut then: Vec<&str> = Vec::new();
            if sla.alert {
                then.push("alert");
            }
            if sla.fail {
                then.push("fail the attempt");
            }
            if sla.has_tasks() {
                then.push("run ^sla tasks");
            }
            let then = if then.is_empty() { "nothing (alert: false)".to_string() } else { then.join(", ") };
            println!("  sla: {deadline}; when missed: {then}");
            if sla.has_tasks()
                && let Ok(node) = spade_dig::compile_under(&format!("+{}", wf.name), "^sla", &sla.tasks)
            {
                print_node(&node, &format!("+{}", wf.name), 2);
            }
        }
        match spade_dig::compile(&format!("+{}", wf.name), &wf.config) {
            Ok(node) => print_node(&node, "", 1),
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    eprintln!("{} workflow(s) OK", project.workflows.len());
    Ok(ExitCode::SUCCESS)
}
