//! The `nva` command line: agent, check, rules.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nva::agent::{pin_dir, state_file, Agent, RuleSetState};
use nva::compiler::compile;
use nva::config::load_config;

#[derive(Parser)]
#[command(
    name = "nva",
    version,
    about = "nva: a highly available layer-4 network virtual appliance (XDP firewall)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "/etc/nva/nva.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the XDP program, attach it to agent.interfaces,
    /// enforce the rules until SIGINT/SIGTERM, then detach.
    Agent {
        /// Config file (TOML).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file without touching the kernel. Exit 0 with a
    /// summary; exit 1 with FILE:LINE:COL: message for each problem.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print each rule of the running data path with its packet and byte
    /// counters (read from the maps pinned under agent.bpffs).
    Rules {
        /// Config of the running agent (used to find its agent.bpffs).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Agent { config } => run_agent(&config),
        Command::Rules { config, json } => rules(&config, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads a config, printing every problem; None when it is invalid.
fn load_or_report(path: &Path) -> Option<nva::model::Config> {
    match load_config(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let Some(config) = load_or_report(path) else {
        return ExitCode::FAILURE;
    };
    let started = std::time::Instant::now();
    match compile(&config.rules, &config.policy) {
        Ok(compiled) => {
            println!(
                "{}: ok: {} rules, {} interfaces; tables: {}; compiled in {:.1} ms",
                path.display(),
                config.rules.len(),
                config.agent.interfaces.len(),
                compiled.sizes,
                started.elapsed().as_secs_f64() * 1e3
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn run_agent(path: &Path) -> anyhow::Result<()> {
    let config = load_or_report(path).context("invalid config, not starting")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agent = Agent::start(config)?;
    tracing::info!("agent running; SIGINT or SIGTERM stops it");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    agent.stop();
    Ok(())
}

fn rules(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = load_or_report(path).context("invalid config")?;
    let bpffs = &config.agent.bpffs;
    let state_path = state_file(bpffs);
    let state: RuleSetState =
        serde_json::from_slice(&std::fs::read(&state_path).with_context(|| {
            format!(
                "no running agent for agent.bpffs = {} ({} missing)",
                bpffs.display(),
                state_path.display()
            )
        })?)?;
    let map_path = pin_dir(bpffs).join(nva_common::map_names::RULE_COUNTERS);
    let map = aya::maps::MapData::from_pin(&map_path)
        .with_context(|| format!("opening {}", map_path.display()))?;
    let map = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))?;
    let counters = nva::datapath::read_rule_counters(map, state.rules.len())?;
    if json {
        let rows: Vec<_> = state
            .rules
            .iter()
            .zip(&counters)
            .map(|(r, c)| serde_json::json!({"name": r.name, "action": r.action, "packets": c.packets, "bytes": c.bytes}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<32} {:<6} {:>14} {:>16}",
            "RULE", "ACTION", "PACKETS", "BYTES"
        );
        for (r, c) in state.rules.iter().zip(&counters) {
            println!(
                "{:<32} {:<6} {:>14} {:>16}",
                r.name, r.action, c.packets, c.bytes
            );
        }
    }
    Ok(())
}
