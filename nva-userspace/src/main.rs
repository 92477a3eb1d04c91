//! The `nva` command line: agent, check, reload, status, rules, conntrack,
//! detach.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nva::agent::{read_state, Agent};
use nva::compiler::compile;
use nva::config::load_config;
use nva::pin::PinLayout;

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
    /// enforce the rules; SIGHUP reloads the config. On exit (SIGINT,
    /// SIGTERM, even SIGKILL) the data path keeps enforcing the last rule
    /// set, pinned under agent.bpffs, until a new agent adopts it.
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
enum FailoverCommand {
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
enum ConntrackCommand {
    /// One line per tracked flow: protocol, originator -> responder, state,
    /// age, time to expiry, admitting rule, packets/bytes each way.
    /// Expired flows not yet swept are left out.
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
        Command::Check { config } => return check(&config),
        Command::Agent {
            config,
            detach_on_exit,
        } => run_agent(&config, detach_on_exit),
        Command::Reload { config } => reload(&config),
        Command::Status { config, json } => status(&config, json),
        Command::Detach { config } => detach(&config),
        Command::Rules { config, json } => rules(&config, json),
        Command::Conntrack { action } => conntrack(action),
        Command::Failover { config, action } => failover(&config, action),
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

fn run_agent(path: &Path, detach_on_exit: bool) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex, RwLock};
    let config = load_or_report(path).context("invalid config, not starting")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let settings = config.agent.clone();
    nva::agent::refuse_if_agent_running(&settings.bpffs)?;
    // Bind first: a health port in use is a start-up error, not a silent gap.
    let http_listener = std::net::TcpListener::bind(settings.health_listen)
        .with_context(|| format!("agent.health_listen = {}", settings.health_listen))?;
    http_listener.set_nonblocking(true)?;
    // Signal handlers first: the state file written by start() already names
    // this pid, and an early SIGHUP must queue a reload, not kill the agent.
    let (mut term, mut hup) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _rt = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::hangup())?,
        )
    };
    let agent = Arc::new(Mutex::new(Agent::start(path, config)?));
    let shared: nva::http::Shared = Arc::new(RwLock::new(Default::default()));
    refresh(&agent, &shared);
    let interval = std::time::Duration::from_millis(settings.health_interval_ms as u64);
    tracing::info!("agent running; SIGHUP reloads, SIGINT/SIGTERM stops");
    runtime.block_on(async {
        let layout = agent.lock().expect("agent lock").layout.clone();
        let http_listener = tokio::net::TcpListener::from_std(http_listener)?;
        tokio::spawn(nva::http::serve(
            http_listener,
            shared.clone(),
            layout.clone(),
        ));
        if let Some(events) = agent.lock().expect("agent lock").datapath.take_events() {
            tokio::spawn(log_events(events, shared.clone()));
        }
        tokio::spawn(sweep_conntrack(layout.clone(), shared.clone()));
        if let Some(addr) = settings.tcp_probe_listen {
            tokio::spawn(nva::http::tcp_probe(addr, shared.clone(), interval));
        }
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let (a, s) = (agent.clone(), shared.clone());
                    tokio::task::spawn_blocking(move || {
                        // Errors are logged and recorded by reload().
                        let _ = a.lock().expect("agent lock").reload();
                        refresh(&a, &s);
                    }).await?;
                }
                _ = tick.tick() => {
                    let (a, s) = (agent.clone(), shared.clone());
                    tokio::task::spawn_blocking(move || refresh(&a, &s)).await?;
                }
            }
        }
        anyhow::Ok(())
    })?;
    tracing::info!("stopping");
    let agent = Arc::try_unwrap(agent)
        .map_err(|_| anyhow::anyhow!("agent still in use"))?
        .into_inner()
        .expect("agent lock");
    agent.stop(detach_on_exit);
    runtime.shutdown_background();
    Ok(())
}

/// Writes the data path's sampled packet events as log lines.
async fn log_events(events: aya::maps::RingBuf<aya::maps::MapData>, shared: nva::http::Shared) {
    use nva_common::{PacketEvent, PacketReason};
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd
    // holds it, and as_raw_fd() always returns that same fd.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "packet events unavailable");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<PacketEvent>() {
                continue;
            }
            // SAFETY: the program writes whole PacketEvents (repr(C), Pod).
            let ev: PacketEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let rule = if ev.counter == nva_common::NO_RULE {
                "(default)".to_string()
            } else {
                let snap = shared.read().expect("snapshot lock");
                snap.state
                    .rules
                    .iter()
                    .find(|r| r.counter == ev.counter)
                    .map_or_else(|| format!("counter {}", ev.counter), |r| r.name.clone())
            };
            let addr = |b: [u8; 16]| -> std::net::IpAddr {
                if ev.is_v6 != 0 {
                    std::net::Ipv6Addr::from(b).into()
                } else {
                    std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
                }
            };
            let reason = PacketReason::ALL
                .iter()
                .find(|r| **r as u8 == ev.reason)
                .copied()
                .unwrap_or(PacketReason::DropRule);
            tracing::info!(
                target: "nva::event",
                rule,
                verdict = reason.verdict(),
                reason = reason.name(),
                proto = ev.proto,
                src = %addr(ev.src),
                dst = %addr(ev.dst),
                sport = ev.sport,
                dport = ev.dport,
                ifindex = ev.ifindex,
                bytes = ev.bytes,
                "packet"
            );
        }
        guard.clear_ready();
    }
}

/// Runs the health checks and publishes a fresh snapshot.
fn refresh(agent: &std::sync::Mutex<Agent>, shared: &nva::http::Shared) {
    let mut agent = agent.lock().expect("agent lock");
    // Addresses come and go (DHCP, operators): management follows them.
    if let Err(e) = agent
        .datapath
        .set_local_addrs(&nva::datapath::local_addrs())
    {
        tracing::warn!(error = %e, "updating local addresses");
    }
    let health = nva::health::check(&agent);
    let previous = nva::http::agent::current(shared);
    if previous.health.healthy != health.healthy {
        if health.healthy {
            tracing::info!("data path healthy");
        } else {
            let failing: Vec<String> = health
                .failing()
                .iter()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect();
            tracing::error!(failing = ?failing, "data path unhealthy");
        }
    }
    let mut status = agent.status();
    let conntrack = previous.conntrack;
    status["conntrack_entries"] = conntrack.entries.into();
    let _ = nva::agent::write_status(&agent.config.agent.bpffs, &status, &health);
    // The state (up to 131k rules) changes only in a reload, and every
    // reload attempt bumps reload_seq: between reloads, keep sharing it.
    let (was, now) = (&previous.state, &agent.state);
    let state = if (was.pid, was.started_unix, was.reload_seq, was.generation)
        == (now.pid, now.started_unix, now.reload_seq, now.generation)
    {
        previous.state.clone()
    } else {
        std::sync::Arc::new(now.clone())
    };
    *shared.write().expect("snapshot lock") = std::sync::Arc::new(nva::http::Snapshot {
        health,
        state,
        status,
        conntrack,
    });
}

/// Sweeps expired conntrack entries in the background, on its own map
/// handles: neither the data path nor the agent waits for it.
async fn sweep_conntrack(layout: PinLayout, shared: nva::http::Shared) {
    let mut summary = nva::conntrack::Summary::default();
    loop {
        let l = layout.clone();
        let prev = summary;
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || nva::conntrack::sweep_once(&l, &prev)).await {
            Ok(Ok(next)) => {
                if next.expired_removed > summary.expired_removed {
                    tracing::debug!(removed = next.expired_removed - summary.expired_removed, entries = next.entries, elapsed = ?started.elapsed(), "conntrack sweep");
                }
                summary = next;
                // Copy-on-write: requests keep the snapshot they took.
                std::sync::Arc::make_mut(&mut shared.write().expect("snapshot lock")).conntrack =
                    summary;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "conntrack sweep"),
            Err(e) => tracing::warn!(error = %e, "conntrack sweep task"),
        }
        let timeouts = nva::conntrack::active_timeouts(&layout).unwrap_or_default();
        tokio::time::sleep(nva::conntrack::sweep_interval(&timeouts)).await;
    }
}

/// `agent.bpffs` of a config file, read leniently: `nva reload` must reach
/// the agent even when the new config is invalid, so that the agent itself
/// refuses it (and logs and counts the refusal).
fn bpffs_of(path: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: toml::Value =
        toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    Ok(value
        .get("agent")
        .and_then(|a| a.get("bpffs"))
        .and_then(|b| b.as_str())
        .unwrap_or(nva::config::DEFAULT_BPFFS)
        .into())
}

fn reload(path: &Path) -> anyhow::Result<()> {
    let bpffs = &bpffs_of(path)?;
    let before = read_state(bpffs)?;
    // The agent re-reads the file it was started with: reloading "another
    // file" would report success and keep the old rules.
    if let Some(own) = &before.config_path {
        // Both resolved now: the file the agent will read is whatever its
        // path (symlinks included) names at this moment.
        let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if resolve(path) != resolve(own) {
            anyhow::bail!(
                "the agent (pid {}) reads {}, not {}: a reload re-reads the agent's own config file; write the new rules to {} (or restart the agent with --config {})",
                before.pid,
                own.display(),
                path.display(),
                own.display(),
                path.display()
            );
        }
    }
    let pid = nix::unistd::Pid::from_raw(before.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP)
        .with_context(|| format!("signalling the agent (pid {})", before.pid))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let Ok(now) = read_state(bpffs) else { continue };
        if now.reload_seq > before.reload_seq {
            for r in &now.repaired {
                println!("repaired: {r}");
            }
            for e in &now.repair_errors {
                eprintln!("not re-attached: {e}");
            }
            return match now.last_reload_error {
                None if !now.repair_errors.is_empty() => Err(anyhow::anyhow!(
                    "generation {} is active, but the program is not attached everywhere (the data path is unhealthy)",
                    now.generation
                )),
                None => {
                    println!("reloaded: generation {} active", now.generation);
                    Ok(())
                }
                Some(e) => Err(anyhow::anyhow!(
                    "reload refused, generation {} stays in force:\n{e}",
                    now.generation
                )),
            };
        }
    }
    anyhow::bail!("the agent did not report the reload within 120 s")
}

fn detach(path: &Path) -> anyhow::Result<()> {
    let bpffs = bpffs_of(path)?;
    // From a private mount namespace the pins are out of sight, not gone:
    // say so before anything else, and remove nothing.
    let pins = nva::pin::require_pins(&bpffs);
    if nva::pin::in_private_mount_ns() {
        pins.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    }
    nva::agent::refuse_if_agent_running(&bpffs)
        .context("stop the agent first (it holds the links)")?;
    // Pins of other layout versions (an older nva) go too.
    let mut removed: Vec<PathBuf> = nva::pin::other_versions(&bpffs)
        .iter()
        .map(|v| bpffs.join(v))
        .collect();
    if let Ok(layout) = &pins {
        removed.insert(0, layout.root.clone());
    }
    let layout = PinLayout::new(&bpffs);
    if removed.is_empty() {
        println!("nothing pinned under {}", layout.root.display());
    } else {
        layout.remove_all(&bpffs);
        for path in &removed {
            println!("detached: removed {}", path.display());
        }
    }
    let _ = std::fs::remove_dir_all(nva::pin::state_dir(&bpffs));
    Ok(())
}

fn status(path: &Path, json: bool) -> anyhow::Result<()> {
    let bpffs = bpffs_of(path)?;
    let doc = nva::agent::read_status(&bpffs).map_err(|e| {
        anyhow::anyhow!(
            "no agent found: {e:#} (is an agent running, or did one run, with agent.bpffs = {}?)",
            bpffs.display()
        )
    })?;
    let pid = doc["status"]["pid"].as_i64().unwrap_or(0) as i32;
    let running = pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    if json {
        let mut doc = doc;
        doc["agent_running"] = running.into();
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let st = &doc["status"];
    let healthy = doc["health"]["healthy"].as_bool().unwrap_or(false);
    println!(
        "agent:       {} (pid {pid})",
        if running {
            "running"
        } else {
            "NOT running (data path left enforcing)"
        }
    );
    println!(
        "health:      {}",
        if healthy { "healthy" } else { "UNHEALTHY" }
    );
    for c in doc["health"]["checks"].as_array().into_iter().flatten() {
        if c["ok"] != true {
            println!(
                "  failing:   {}: {}",
                c["name"].as_str().unwrap_or(""),
                c["detail"].as_str().unwrap_or("")
            );
        }
    }
    println!(
        "generation:  {} (hash {})",
        st["generation"],
        st["ruleset_hash"].as_str().unwrap_or("")
    );
    println!("rules:       {}", st["rules"]);
    println!("program id:  {}", st["program_id"]);
    for i in st["interfaces"].as_array().into_iter().flatten() {
        println!(
            "interface:   {} ({}, mode {})",
            i["name"].as_str().unwrap_or(""),
            i["attached"].as_str().unwrap_or(""),
            i["xdp_mode"].as_str().unwrap_or("")
        );
    }
    println!(
        "reloads:     {} ok, {} refused",
        st["reloads"]["ok"], st["reloads"]["error"]
    );
    if let Some(e) = st["last_reload_error"].as_str() {
        println!("last error:  {e}");
    }
    println!("uptime:      {} s", st["uptime_s"]);
    Ok(())
}

fn rules(path: &Path, json: bool) -> anyhow::Result<()> {
    let bpffs = &bpffs_of(path)?;
    let layout = nva::pin::require_pins(bpffs)?;
    let state = read_state(bpffs)?;
    let map = nva::datapath::open_pinned(&layout, nva_common::map_names::RULE_COUNTERS)?;
    let map = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map))?;
    let indices: Vec<u32> = state.rules.iter().map(|r| r.counter).collect();
    let counters = nva::datapath::read_counters(&map, &indices)?;
    if json {
        let rows: Vec<_> = state
            .rules
            .iter()
            .zip(&counters)
            .map(|(r, c)| serde_json::json!({"name": r.name, "action": r.action, "packets": c.packets, "bytes": c.bytes}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("generation {}", state.generation);
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

fn conntrack(action: ConntrackCommand) -> anyhow::Result<()> {
    use nva::conntrack::{active_timeouts, now_ns, remaining_ns, view, Table};
    let path = match &action {
        ConntrackCommand::List { config, .. }
        | ConntrackCommand::Count { config }
        | ConntrackCommand::Flush { config } => config,
    };
    let bpffs = bpffs_of(path)?;
    let layout = nva::pin::require_pins(&bpffs)?;
    let mut table = Table::open(&layout).with_context(|| {
        format!(
            "no data path pinned under {} (is the agent configured with agent.bpffs = {:?}?)",
            layout.root.display(),
            bpffs.display().to_string()
        )
    })?;
    let timeouts = active_timeouts(&layout)?;
    match action {
        ConntrackCommand::Flush { .. } => {
            let n = table.flush()?;
            println!("flushed {n} flows");
        }
        ConntrackCommand::Count { .. } => {
            let now = now_ns();
            let live = table
                .entries()?
                .iter()
                .filter(|(_, e)| remaining_ns(e, &timeouts, now) > 0)
                .count();
            println!("{live}");
        }
        ConntrackCommand::List { json, .. } => {
            let state = read_state(&bpffs).unwrap_or_default();
            let name = |counter: u32| {
                state
                    .rules
                    .iter()
                    .find(|r| r.counter == counter)
                    .map(|r| r.name.clone())
            };
            let now = now_ns();
            let mut flows: Vec<_> = table
                .entries()?
                .iter()
                .filter(|(_, e)| remaining_ns(e, &timeouts, now) > 0)
                .map(|(k, e)| view(k, e, &timeouts, now, &name))
                .collect();
            flows.sort_by(|a, b| a.age_s.total_cmp(&b.age_s).reverse());
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            println!(
                "{:<12} {:<45} {:<45} {:<11} {:>9} {:>9} {:<20} {:>21} {:>21}",
                "PROTO",
                "ORIGINATOR",
                "RESPONDER",
                "STATE",
                "AGE",
                "EXPIRES",
                "RULE",
                "PACKETS/BYTES ORIG",
                "PACKETS/BYTES REPLY"
            );
            for f in &flows {
                println!(
                    "{:<12} {:<45} {:<45} {:<11} {:>8.1}s {:>8.1}s {:<20} {:>21} {:>21}",
                    f.proto,
                    f.src,
                    f.dst,
                    f.state,
                    f.age_s,
                    f.expires_in_s,
                    f.rule,
                    format!("{}/{}", f.packets_orig, f.bytes_orig),
                    format!("{}/{}", f.packets_reply, f.bytes_reply)
                );
            }
            eprintln!("{} flows", flows.len());
        }
    }
    Ok(())
}

fn failover(path: &Path, action: Option<FailoverCommand>) -> anyhow::Result<()> {
    use nva::failover::coord::{Request, ZkClient};
    let config = match nva::failover::config::load_failover_config(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!("invalid failover config");
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let request = match action {
            None => return run_failover(config).await,
            Some(FailoverCommand::Status { json }) => return failover_status(&config, json).await,
            Some(FailoverCommand::Promote { name }) => {
                if !config.nvas.iter().any(|n| n.name == name) {
                    anyhow::bail!("no NVA named {name:?} in {}", path.display());
                }
                Request::Promote(name)
            }
            Some(FailoverCommand::Freeze) => Request::Freeze,
            Some(FailoverCommand::Unfreeze) => Request::Unfreeze,
        };
        let zk = config
            .daemon
            .zookeeper
            .as_deref()
            .context("promote, freeze and unfreeze go through ZooKeeper (daemon.zookeeper); a standalone daemon takes no requests")?;
        let client = ZkClient::connect(zk, &config.daemon.election_path).await?;
        client.request(&request).await?;
        println!("requested {request:?}; the leader carries it out");
        Ok(())
    })
}

async fn run_failover(config: nva::failover::config::FailoverConfig) -> anyhow::Result<()> {
    use nva::failover::daemon::{serve, Daemon};
    let listener = tokio::net::TcpListener::bind(config.daemon.metrics_listen)
        .await
        .with_context(|| format!("daemon.metrics_listen = {}", config.daemon.metrics_listen))?;
    let status = std::sync::Arc::new(std::sync::RwLock::new(Default::default()));
    tracing::info!(
        id = %config.daemon.id,
        mode = if config.daemon.zookeeper.is_some() { "zookeeper" } else { "standalone" },
        nvas = config.nvas.len(),
        "failover daemon starting"
    );
    let daemon = Daemon::new(config, status.clone()).await?;
    tokio::spawn(serve(listener, status));
    tokio::select! {
        r = daemon.run() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn failover_status(
    config: &nva::failover::config::FailoverConfig,
    json: bool,
) -> anyhow::Result<()> {
    // This daemon's own view, then the ensemble's.
    let own = http_status(config.daemon.metrics_listen).await.ok();
    let (state, daemons) = match &config.daemon.zookeeper {
        Some(zk) => {
            let c =
                nva::failover::coord::ZkClient::connect(zk, &config.daemon.election_path).await?;
            (Some(c.state().await?), c.daemons().await?)
        }
        None => (None, Vec::new()),
    };
    let doc = serde_json::json!({
        "leader": daemons.first(),
        "daemons": daemons,
        "active": state.as_ref().map(|s| s.active.clone()).or_else(|| own.as_ref().map(|o| o["active"].as_str().map(String::from))),
        "frozen": state.as_ref().map(|s| s.frozen),
        "daemon": own,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "leader:  {}",
        doc["leader"]
            .as_str()
            .unwrap_or(if config.daemon.zookeeper.is_none() {
                "(standalone)"
            } else {
                "(none)"
            })
    );
    println!("active:  {}", doc["active"].as_str().unwrap_or("(none)"));
    if doc["frozen"] == true {
        println!("frozen:  yes (switching stopped by an operator)");
    }
    match &own {
        Some(o) => {
            for n in o["nvas"].as_array().into_iter().flatten() {
                println!(
                    "nva:     {} {}",
                    n["name"].as_str().unwrap_or(""),
                    n["health"].as_str().unwrap_or("")
                );
            }
        }
        None => println!("daemon:  not reachable at {}", config.daemon.metrics_listen),
    }
    Ok(())
}

async fn http_status(addr: std::net::SocketAddr) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    )
    .await??;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: nva\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        s.read_to_string(&mut body),
    )
    .await??;
    let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(serde_json::from_str(json)?)
}
