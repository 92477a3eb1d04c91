//! `nva-bench`: the benchmark suite behind `cargo xtask bench`. Writes
//! `report.md`, `report.json` and SVG plots. Every headline figure is a
//! ratio against a baseline measured in the same run; machines here are
//! shared and noisy, so each figure is min/median/max over repeats.

mod classify;
mod failover;
mod memory;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::report::{Machine, Report, Verdict};

#[derive(Parser)]
#[command(name = "nva-bench", about = "nva benchmarks (run as root)")]
struct Cli {
    /// Small sizes and few repeats: checks the harness, not the figures.
    #[arg(long)]
    quick: bool,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nva-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("benchmarks load XDP programs and need root");
    }
    std::fs::create_dir_all(&cli.out)?;
    let started = std::time::Instant::now();
    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut sections = Vec::new();

    let settings = classify::Settings::new(cli.quick);
    let c = classify::run(&settings, &cli.out)?;
    verdicts.extend(c.verdicts);
    sections.push(c.section);
    sections.push(c.conntrack);

    let (rule_counts, conntrack_sizes): (&[usize], &[u32]) = if cli.quick {
        (&[1000], &[65_536])
    } else {
        (&[10_000, 100_000], &[65_536, 1 << 20])
    };
    let (section, v) = memory::run(rule_counts, conntrack_sizes)?;
    verdicts.extend(v);
    sections.push(section);

    let (section, v) = failover::run(if cli.quick { 1 } else { 5 })?;
    verdicts.extend(v);
    sections.push(section);

    for target in [
        "drop throughput at 10k rules ≥ 20 × iptables, ≥ 10 × nftables rule list, ≥ 1.5 × best nftables sets/maps; at 10 rules ≥ 2 × nftables",
        "100k-rule compile-and-swap < 1 s, zero loss during swaps",
    ] {
        verdicts.push(Verdict {
            target: target.into(),
            measured: "not implemented in the harness yet".into(),
            met: None,
        });
    }
    let report = Report {
        quick: cli.quick,
        machine: Machine::describe(),
        verdicts,
        sections,
    };
    report.write(&cli.out)?;
    eprintln!(
        "nva-bench: report written to {} in {:.0} s",
        cli.out.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
