//! `nva-bench`: the benchmark suite behind `cargo xtask bench`. Writes
//! `report.md`, `report.json` and SVG plots. Every headline figure is a
//! ratio against a baseline measured in the same run; machines here are
//! shared and noisy, so each figure is min/median/max over repeats.

mod baselines;
mod classify;
mod endtoend;
mod failover;
mod forward;
mod generator;
mod memory;
mod nat;
mod report;
mod swap;
mod sync;

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
    /// Run only these parts (repeatable); all of them by default.
    #[arg(long, value_enum)]
    only: Vec<Part>,
    /// Instead of the suite: run one rule set's deepest-matching packet
    /// through BPF_PROG_TEST_RUN for SECONDS, print its cost, and exit (to
    /// profile the program, with `perf record -a` beside it). SHAPE is acl,
    /// fw, ipc (ClassBench) or random; the rule set and packet are those of
    /// the classify part.
    #[arg(long, value_name = "SHAPE:RULES:SECONDS")]
    hold: Option<String>,
}

/// The parts of the suite, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Per-packet cost against rule count, and conntrack (BPF_PROG_TEST_RUN).
    Classify,
    /// Kernel memory of the rule tables and the conntrack table.
    Memory,
    /// Real traffic through nva, nftables and iptables.
    Endtoend,
    /// Rule-set swaps under a steady flow.
    Swap,
    /// Failover outage in the lab.
    Failover,
    /// What NAT costs, in the kernel and end to end against nftables NAT.
    Nat,
    /// Connection-state sync's throughput and CPU per synced flow.
    Sync,
    /// Forwarding in XDP against the kernel's, end to end.
    Forward,
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
    if let Some(spec) = &cli.hold {
        return classify::hold(spec);
    }
    std::fs::create_dir_all(&cli.out)?;
    let started = std::time::Instant::now();
    let mut verdicts: Vec<Verdict> = Vec::new();
    let mut sections = Vec::new();

    let wanted = |p: Part| cli.only.is_empty() || cli.only.contains(&p);

    if wanted(Part::Classify) {
        let c = classify::run(&classify::Settings::new(cli.quick), &cli.out)?;
        verdicts.extend(c.verdicts);
        sections.push(c.section);
        sections.push(c.classbench);
        sections.push(c.conntrack);
    }
    if wanted(Part::Memory) {
        let (rule_counts, blocklists, conntrack_sizes): (&[usize], &[usize], &[u32]) = if cli.quick
        {
            (&[1000], &[10_000], &[65_536])
        } else {
            (&[10_000, 100_000], &[10_000, 1_000_000], &[65_536, 1 << 20])
        };
        let (section, v) = memory::run(rule_counts, blocklists, conntrack_sizes)?;
        verdicts.extend(v);
        sections.push(section);
    }
    if wanted(Part::Endtoend) {
        let (section, v) = endtoend::run(&endtoend::Settings::new(cli.quick), &cli.out)?;
        verdicts.extend(v);
        sections.push(section);
    }
    if wanted(Part::Swap) {
        let (section, v) = swap::run(&swap::Settings::new(cli.quick))?;
        verdicts.extend(v);
        sections.push(section);
    }
    if wanted(Part::Nat) {
        let (section, v) = nat::run(&nat::Settings::new(cli.quick))?;
        verdicts.extend(v);
        sections.push(section);
    }
    if wanted(Part::Sync) {
        let (section, v) = sync::run(cli.quick)?;
        verdicts.extend(v);
        sections.push(section);
        sections.push(sync::lag(cli.quick)?);
    }
    if wanted(Part::Forward) {
        let (section, v) = forward::run(&forward::Settings::new(cli.quick), &cli.out)?;
        verdicts.extend(v);
        sections.push(section);
    }
    if wanted(Part::Failover) {
        let (section, v) = failover::run(if cli.quick { 1 } else { 5 })?;
        verdicts.extend(v);
        sections.push(section);
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
