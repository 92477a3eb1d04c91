//! The `nva` command line: parses it and hands each subcommand to its
//! module under `cli/`.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: a reload of 100k rules allocates and
/// frees millions of small objects, and glibc spent about 30% of it in
/// malloc/free on a heap fragmented by the previous rule set.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nva",
    version,
    about = "nva: a highly available layer-4 network virtual appliance (XDP firewall)"
)]
struct Cli {
    /// Log format on stderr: text or json (one JSON object per line).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

const DEFAULT_CONFIG: &str = "/etc/nva/nva.toml";
const DEFAULT_FAILOVER_CONFIG: &str = "/etc/nva/failover.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load (or adopt) the XDP program on agent.interfaces and
    /// enforce the rules and [[nat]] entries; SIGHUP reloads the config
    /// ([agent] and [sync] changes need a restart). With [sync] it also
    /// exchanges its flows with the peer NVA. On exit (SIGINT, SIGTERM, even
    /// SIGKILL) the data path keeps enforcing the last rule set, pinned under
    /// agent.bpffs, until a new agent adopts it.
    Agent {
        /// Config file (TOML).
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// On SIGINT/SIGTERM, detach the program and remove every pin and
        /// state file (clean uninstall) instead of leaving the data path.
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Remove nva from the data path after the agent was stopped: unpins the
    /// XDP links (detaching the program) and maps, and removes the state.
    Detach {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the agent's status and health as a summary (from the state the
    /// agent publishes every health interval).
    Status {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tell the running agent to reload its config (SIGHUP) and wait for the
    /// outcome: exit 0 when the new rule set is active, 1 when it was
    /// refused (the running rules stay in force). The agent re-reads the
    /// file it was started with; naming another file is refused. A reload
    /// also re-attaches the program where it was detached.
    Reload {
        /// The running agent's config file: edit it, then reload.
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a config file without touching the kernel. Exit 0 with a
    /// summary; exit 1 with FILE:LINE:COL: message for each problem.
    Check {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The failover daemon: probes the NVAs named in its config, elects a
    /// leader among the daemons through ZooKeeper (standalone without it),
    /// and moves traffic to the standby when the active NVA fails (linux:
    /// routes and VIPs; azure: user-defined routes and the public IP). With
    /// a subcommand, a client of the running daemons instead.
    Failover {
        /// Failover config file (TOML).
        #[arg(long, global = true, default_value = DEFAULT_FAILOVER_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<FailoverCommand>,
    },
    /// Inspect or clear the connection-tracking table (policy.stateful),
    /// read from the maps pinned under agent.bpffs: works while the agent
    /// is down too.
    Conntrack {
        #[command(subcommand)]
        action: ConntrackCommand,
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

#[derive(Subcommand)]
pub(crate) enum FailoverCommand {
    /// The leader, the active NVA and each NVA's health (from ZooKeeper and
    /// the daemons' /status).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the leader to make NAME the active NVA (refused if it is down).
    Promote { name: String },
    /// Ask the leader to stop switching until `unfreeze`.
    Freeze,
    /// Ask the leader to resume switching.
    Unfreeze,
}

#[derive(Subcommand)]
pub(crate) enum ConntrackCommand {
    /// One line per tracked flow: protocol, originator -> responder, state,
    /// age, time to expiry, admitting rule, packets/bytes each way; under a
    /// translated flow a second line with the tuple its packets leave with
    /// and its NAT entries. Expired flows not yet swept are left out.
    List {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON (an array of flows).
        #[arg(long)]
        json: bool,
    },
    /// Print the number of live (unexpired) flows.
    Count {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove every tracked flow. Established TCP connections are then
    /// dropped unless policy.loose_tcp is set (or they start over).
    Flush {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = match cli.command {
        Command::Check { config } => return cli::check::check(&config),
        Command::Agent {
            config,
            detach_on_exit,
        } => cli::agent::run_agent(&config, detach_on_exit),
        Command::Reload { config } => cli::reload::reload(&config),
        Command::Status { config, json } => cli::status::status(&config, json),
        Command::Detach { config } => cli::detach::detach(&config),
        Command::Rules { config, json } => cli::rules::rules(&config, json),
        Command::Conntrack { action } => cli::conntrack::conntrack(action),
        Command::Failover { config, action } => cli::failover::failover(&config, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
