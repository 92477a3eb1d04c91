//! `nva agent`: load (or adopt) the data path, install rule sets, reload.
//!
//! Everything the data path needs is pinned under `agent.bpffs`, so killing
//! the agent, even with SIGKILL, leaves the last rule set enforcing; a new
//! agent adopts the pinned maps and links without detaching. Rule counters
//! are indexed by a stable per-name counter index (kept in the state file),
//! so they continue across reloads and restarts.

pub mod health;
pub mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::agent::health::{HealthInputs, HealthProbe, HealthReport};
use crate::classifier::compiler::{compile, CompiledRuleSet};
use crate::datapath::pin::{ensure_bpffs, state_dir, PinLayout};
use crate::datapath::{ifindex_by_name, Attachment, DataPath};
use crate::nat::CompiledNat;
use crate::policy::config::load_config;
use crate::policy::model::Config;

/// What outlives the agent besides the pins: rule names and their counter
/// indexes, the generation, and the last reload's outcome.
#[derive(Serialize, Deserialize, Default, Clone)]
pub struct AgentState {
    pub generation: u64,
    /// Hash of the rule set text that produced `generation`.
    pub ruleset_hash: String,
    /// Shared: the state is copied into every published snapshot.
    pub rules: std::sync::Arc<Vec<RuleState>>,
    /// `[[nat]]` entries and their NAT counter indexes (`action` is the kind).
    #[serde(default)]
    pub nat: std::sync::Arc<Vec<RuleState>>,
    pub pid: u32,
    pub started_unix: u64,
    pub reloads_ok: u64,
    pub reloads_error: u64,
    /// Increases with every reload attempt; `nva reload` waits for it.
    pub reload_seq: u64,
    pub last_reload_error: Option<String>,
    /// The config file the agent reads (absolute): `nva reload` refuses
    /// another file.
    #[serde(default)]
    pub config_path: Option<PathBuf>,
    /// Network namespace of the agent (`net:[INODE]`): pinned links name
    /// interfaces by ifindex, which means something only there.
    #[serde(default)]
    pub netns: Option<String>,
    /// What the last reload re-attached, and where re-attaching failed.
    #[serde(default)]
    pub repaired: Vec<String>,
    #[serde(default)]
    pub repair_errors: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct RuleState {
    pub name: String,
    pub action: String,
    pub counter: u32,
}

/// Fails when another live agent uses `bpffs`: two agents would fight over
/// the same maps and links.
pub fn refuse_if_agent_running(bpffs: &Path) -> anyhow::Result<()> {
    if let Ok(other) = read_state(bpffs) {
        let pid = nix::unistd::Pid::from_raw(other.pid as i32);
        if other.pid != std::process::id() && nix::sys::signal::kill(pid, None).is_ok() {
            bail!(
                "another agent (pid {}) runs with agent.bpffs = {}",
                other.pid,
                bpffs.display()
            );
        }
    }
    Ok(())
}

/// The network namespace of this process, as `net:[INODE]`.
fn current_netns() -> Option<String> {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Refuses pins left by an agent of another network namespace while one of
/// their links is still bound to an interface there: ifindexes name other
/// interfaces here, so adopting could filter that namespace's traffic while
/// reporting healthy, and dropping would detach it. Links of a namespace
/// that is gone (rebuilt) are severed and are repaired as usual.
fn refuse_other_netns(bpffs: &Path, layout: &PinLayout) -> anyhow::Result<()> {
    let Ok(previous) = read_state(bpffs) else {
        return Ok(());
    };
    let (Some(theirs), Some(ours)) = (&previous.netns, current_netns()) else {
        return Ok(());
    };
    if *theirs == ours {
        return Ok(());
    }
    let links = std::fs::read_dir(layout.root.join("links"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_else(|_| Vec::new());
    for link in links {
        if matches!(crate::datapath::pinned_link_target(&link), Ok((ifindex, _)) if ifindex != 0) {
            bail!(
                "agent.bpffs = {} holds the live data path of an agent of network namespace {theirs} ({} is attached there); this agent runs in {ours}: give each namespace's agent its own agent.bpffs",
                bpffs.display(),
                link.display()
            );
        }
    }
    Ok(())
}

pub fn state_file(bpffs: &Path) -> PathBuf {
    state_dir(bpffs).join("state.json")
}

pub fn read_state(bpffs: &Path) -> anyhow::Result<AgentState> {
    read_state_as(bpffs)
}

/// What `nva reload` waits on: the state without its per-rule lists, which
/// at 100k rules are megabytes to parse.
#[derive(Deserialize, Default)]
pub struct ReloadProgress {
    pub generation: u64,
    pub pid: u32,
    pub reload_seq: u64,
    pub last_reload_error: Option<String>,
    #[serde(default)]
    pub config_path: Option<PathBuf>,
    #[serde(default)]
    pub repaired: Vec<String>,
    #[serde(default)]
    pub repair_errors: Vec<String>,
}

pub fn read_reload_progress(bpffs: &Path) -> anyhow::Result<ReloadProgress> {
    read_state_as(bpffs)
}

fn read_state_as<T: serde::de::DeserializeOwned>(bpffs: &Path) -> anyhow::Result<T> {
    let path = state_file(bpffs);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "no agent state for agent.bpffs = {} ({} missing)",
            bpffs.display(),
            path.display()
        )
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn write_state(bpffs: &Path, state: &AgentState) -> anyhow::Result<()> {
    let path = state_file(bpffs);
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    let tmp = path.with_extension("json.tmp");
    // Compact: at 100k rules the pretty form is twice the bytes to write
    // and for `nva reload` and `nva rules` to read.
    std::fs::write(&tmp, serde_json::to_vec(state)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Writes the latest status and health for `nva status` (works across
/// network namespaces and while the agent is down).
pub fn write_status(
    bpffs: &Path,
    status: &serde_json::Value,
    health: &HealthReport,
) -> anyhow::Result<()> {
    let path = state_dir(bpffs).join("status.json");
    let tmp = path.with_extension("json.tmp");
    let doc = serde_json::json!({"status": status, "health": health});
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

pub fn read_status(bpffs: &Path) -> anyhow::Result<serde_json::Value> {
    let path = state_dir(bpffs).join("status.json");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("no agent status ({} missing)", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn ruleset_hash(config: &Config) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}{:?}{:?}", config.rules, config.policy, config.nat).hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Assigns counter indexes: a name keeps its index; new names take indexes
/// no rule of the previous set used, so a counter freed by this reload is
/// reused only by a later one (after it was zeroed). Returns (indexes per
/// rule, indexes freed, indexes newly taken).
fn assign_counters<'a>(
    previous: &[RuleState],
    names: impl Iterator<Item = &'a str>,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let old: HashMap<&str, u32> = previous
        .iter()
        .map(|r| (r.name.as_str(), r.counter))
        .collect();
    let mut used: std::collections::HashSet<u32> = previous.iter().map(|r| r.counter).collect();
    let mut next_free = 0u32;
    let mut taken = Vec::new();
    let counters: Vec<u32> = names
        .map(|name| match old.get(name) {
            Some(&c) => c,
            None => {
                while used.contains(&next_free) {
                    next_free += 1;
                }
                used.insert(next_free);
                taken.push(next_free);
                next_free
            }
        })
        .collect();
    let kept: std::collections::HashSet<u32> = counters.iter().copied().collect();
    let freed = previous
        .iter()
        .map(|r| r.counter)
        .filter(|c| !kept.contains(c))
        .collect();
    (counters, freed, taken)
}

pub struct Agent {
    pub config_path: PathBuf,
    pub config: Config,
    pub datapath: DataPath,
    pub compiled: CompiledRuleSet,
    pub state: AgentState,
    pub layout: PinLayout,
    pub started: Instant,
    /// Interfaces and how the program got there.
    pub attachments: Vec<(String, Attachment)>,
    /// The health check's synthetic packet for the loaded rule set.
    pub health_probe: HealthProbe,
    /// The sync service's counters, when `[sync]` is configured.
    pub sync_stats: Option<std::sync::Arc<crate::sync::service::SyncStats>>,
}

impl Agent {
    /// Loads or adopts the data path, installs the configured rules and
    /// attaches. A failure before the switch leaves any running rules as
    /// they were.
    pub fn start(config_path: &Path, config: Config) -> anyhow::Result<Agent> {
        let started = Instant::now();
        let compiled = compile(&config.rules, &config.policy)?;
        tracing::info!(rules = config.rules.len(), sizes = %compiled.sizes, elapsed = ?started.elapsed(), "compiled rule set");
        for iface in &config.agent.interfaces {
            if ifindex_by_name(iface).is_none() {
                bail!("interface {iface} (agent.interfaces) does not exist");
            }
            if config.agent.forward == crate::policy::model::ForwardMode::Xdp {
                crate::datapath::egress::check_redirect_target(iface)?;
            }
        }
        let bpffs = config.agent.bpffs.clone();
        refuse_if_agent_running(&bpffs)?;
        ensure_bpffs(&bpffs)?;
        crate::datapath::pin::refuse_other_versions(&bpffs)?;
        let layout = PinLayout::new(&bpffs);
        let adopting = layout.maps().exists();
        if adopting {
            refuse_other_netns(&bpffs, &layout)?;
        }
        layout.create_dirs()?;
        let mut datapath = DataPath::open(Some(&layout), config.policy.conntrack_max)?;
        let previous = if adopting {
            read_state(&bpffs).unwrap_or_default()
        } else {
            AgentState::default()
        };
        let (_, active_cfg) = datapath.active()?;
        let generation = previous.generation.max(active_cfg.generation) + 1;
        let (counters, freed, taken) = assign_counters(&previous.rules, rule_names(&config));
        let (nat_counters, _, nat_taken) = assign_counters(&previous.nat, nat_names(&config));
        datapath.set_local_addrs(&crate::datapath::local_addrs())?;
        set_forwarding(&mut datapath, &config)?;
        // New rules start from zero (their index may have served a rule
        // removed by an earlier reload).
        datapath.reset_counters(&taken)?;
        datapath.reset_nat_counters(&nat_taken)?;
        let nat = CompiledNat::compile(&config.nat).tables(&nat_counters, &ifindex_by_name);
        datapath.install(&compiled, &nat, generation, &counters, &ifindex_by_name)?;
        if let Err(e) = datapath.reset_counters(&freed) {
            tracing::warn!(error = %e, "zeroing counters of removed rules");
        }
        let mut attachments = Vec::new();
        for iface in &config.agent.interfaces {
            let how = datapath.attach(iface, config.agent.xdp_mode, Some(&layout))?;
            if let Attachment::Reattached(mode) = how {
                tracing::warn!(iface, ?mode, "repaired: the pinned link was severed or defunct; attached afresh with the rule set kept");
            } else {
                tracing::info!(iface, ?how, "XDP program in place");
            }
            attachments.push((iface.clone(), how));
        }
        if !config.nat.is_empty() {
            accept_local_sources(&config.agent.interfaces);
        }
        guard_nat(&config.nat);
        let state = AgentState {
            generation,
            ruleset_hash: ruleset_hash(&config),
            rules: std::sync::Arc::new(rule_states(&config, &counters)),
            nat: std::sync::Arc::new(nat_states(&config, &nat_counters)),
            pid: std::process::id(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            reloads_ok: previous.reloads_ok,
            reloads_error: previous.reloads_error,
            reload_seq: previous.reload_seq,
            last_reload_error: None,
            // Absolute, symlinks kept: the agent re-reads this path, so a
            // flipped symlink is what it reads next.
            netns: current_netns(),
            repaired: Vec::new(),
            repair_errors: Vec::new(),
            config_path: Some(
                std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_path_buf()),
            ),
        };
        write_state(&bpffs, &state)?;
        tracing::info!(generation, adopted = adopting, "rule set active");
        Ok(Agent {
            config_path: config_path.to_path_buf(),
            config,
            datapath,
            health_probe: HealthProbe::for_rules(&compiled),
            compiled,
            state,
            sync_stats: None,
            layout,
            started: Instant::now(),
            attachments,
        })
    }

    /// Re-reads the config file and swaps the rule set atomically. On any
    /// error the running rule set stays in force and the error is returned
    /// (and recorded for `nva reload` and the metrics).
    pub fn reload(&mut self) -> anyhow::Result<u64> {
        let result = self.try_reload();
        // Whatever became of the new rules, a reload repairs attachments
        // (the running rule set, old or new, must be enforced everywhere).
        let (repaired, repair_errors) = self.repair_attachments();
        self.state.repaired = repaired;
        self.state.repair_errors = repair_errors;
        self.state.reload_seq += 1;
        match &result {
            Ok(generation) => {
                self.state.reloads_ok += 1;
                self.state.last_reload_error = None;
                tracing::info!(generation, "reload: new rule set active");
            }
            Err(e) => {
                self.state.reloads_error += 1;
                self.state.last_reload_error = Some(format!("{e:#}"));
                tracing::error!(error = %format!("{e:#}"), generation = self.state.generation, "reload refused; the running rule set stays in force");
            }
        }
        write_state(&self.config.agent.bpffs, &self.state)?;
        result
    }

    fn try_reload(&mut self) -> anyhow::Result<u64> {
        let reading = Instant::now();
        let config = load_config(&self.config_path).map_err(|errors| {
            anyhow::anyhow!(errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        if config.agent != self.config.agent {
            bail!("[agent] settings changed: they take effect on restart, not on reload");
        }
        if config.sync != self.config.sync {
            bail!("[sync] settings changed: they take effect on restart, not on reload");
        }
        let config_read = reading.elapsed();
        let started = Instant::now();
        let compiled = compile(&config.rules, &config.policy)?;
        let compile_time = started.elapsed();
        let generation = self.state.generation + 1;
        let (counters, freed, taken) = assign_counters(&self.state.rules, rule_names(&config));
        let (nat_counters, _, nat_taken) = assign_counters(&self.state.nat, nat_names(&config));
        self.datapath.reset_counters(&taken)?;
        self.datapath.reset_nat_counters(&nat_taken)?;
        let nat = CompiledNat::compile(&config.nat).tables(&nat_counters, &ifindex_by_name);
        let cleanup =
            self.datapath
                .install(&compiled, &nat, generation, &counters, &ifindex_by_name)?;
        // Live since the switch; freeing the old slot came after it.
        let live_after = started.elapsed().saturating_sub(cleanup);
        // Live from here: record it before anything else can fail.
        self.state.generation = generation;
        self.state.ruleset_hash = ruleset_hash(&config);
        self.state.rules = std::sync::Arc::new(rule_states(&config, &counters));
        self.state.nat = std::sync::Arc::new(nat_states(&config, &nat_counters));
        if !config.nat.is_empty() {
            accept_local_sources(&config.agent.interfaces);
        }
        guard_nat(&config.nat);
        if let Err(e) = self.datapath.reset_counters(&freed) {
            tracing::warn!(error = %e, "zeroing counters of removed rules");
        }
        tracing::info!(rules = config.rules.len(), sizes = %compiled.sizes, elapsed = ?live_after, compile = ?compile_time, old_slot_freed = ?cleanup, config_read = ?config_read, "compiled and swapped rule set");
        self.health_probe = HealthProbe::for_rules(&compiled);
        self.compiled = compiled;
        self.config = config;
        Ok(generation)
    }

    /// Re-attaches the program where its link was detached behind the
    /// agent's back or its interface recreated (done on reload; the health
    /// check reports it meanwhile). Returns what was repaired and what could
    /// not be.
    pub fn repair_attachments(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut repaired, mut failed) = (Vec::new(), Vec::new());
        for iface in self.config.agent.interfaces.clone() {
            if crate::agent::health::link_attached(&self.layout, &iface) {
                continue;
            }
            match self
                .datapath
                .attach(&iface, self.config.agent.xdp_mode, Some(&self.layout))
            {
                Ok(how) => {
                    tracing::warn!(iface, ?how, "repaired: re-attached the XDP program");
                    repaired.push(format!("{iface}: re-attached ({how:?})"));
                    match self.attachments.iter_mut().find(|(i, _)| *i == iface) {
                        Some(entry) => entry.1 = how,
                        None => self.attachments.push((iface, how)),
                    }
                }
                Err(e) => {
                    tracing::error!(iface, error = %e, "cannot re-attach XDP program");
                    failed.push(format!("{iface}: {e}"));
                }
            }
        }
        (repaired, failed)
    }

    /// Runs the health checks against the live data path.
    pub fn health(&self) -> HealthReport {
        crate::agent::health::check(&HealthInputs {
            datapath: &self.datapath,
            layout: &self.layout,
            interfaces: &self.config.agent.interfaces,
            generation: self.state.generation,
            probe: &self.health_probe,
        })
    }

    /// Status for /status and `nva status`.
    pub fn status(&self) -> serde_json::Value {
        let (slot, cfg) = self
            .datapath
            .active()
            .map_or((0, Default::default()), |x| x);
        serde_json::json!({
            "pid": std::process::id(),
            "interfaces": self.attachments.iter().map(|(i, how)| serde_json::json!({
                "name": i,
                "attached": format!("{how:?}"),
                "xdp_mode": format!("{:?}", self.config.agent.xdp_mode).to_lowercase(),
            })).collect::<Vec<_>>(),
            "program_id": self.datapath.program_id().ok(),
            "generation": self.state.generation,
            "ruleset_hash": self.state.ruleset_hash,
            "active_slot": slot,
            "active_generation": cfg.generation,
            "rules": self.config.rules.len(),
            "tables": self.compiled.sizes,
            "conntrack_entries": 0,
            "uptime_s": self.started.elapsed().as_secs(),
            "reloads": {"ok": self.state.reloads_ok, "error": self.state.reloads_error},
            "last_reload_error": self.state.last_reload_error,
        })
    }

    /// Stops. With `detach`, the program is detached and every pin and the
    /// state are removed (clean uninstall); otherwise the data path keeps
    /// enforcing the last rule set for the next agent to adopt.
    pub fn stop(mut self, detach: bool) {
        let bpffs = self.config.agent.bpffs.clone();
        if detach {
            self.datapath.detach_all();
            drop(self.datapath);
            self.layout.remove_all(&bpffs);
            let _ = std::fs::remove_dir_all(state_dir(&bpffs));
            tracing::info!("detached and removed pinned state");
        } else {
            tracing::info!("exiting; the data path keeps enforcing the last rule set");
        }
    }
}

/// NAT hands the kernel packets whose source is one of the NVA's own
/// addresses (an SNAT'd packet, the reply of a DNAT'd flow) to forward;
/// Linux drops those as martians unless the interface they arrive on has
/// `accept_local`. Set on the agent's interfaces while NAT is configured.
fn accept_local_sources(interfaces: &[String]) {
    for iface in interfaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
        match std::fs::write(&path, "1") {
            Ok(()) => tracing::info!(iface, "net.ipv4.conf.{iface}.accept_local = 1 (NAT forwards packets from the NVA's own addresses)"),
            Err(e) => tracing::warn!(iface, error = %e, "cannot set accept_local: translated packets from the NVA's own addresses may be dropped by the kernel"),
        }
    }
}

/// `agent.forward`: the mode the slots get, and the interfaces a routed
/// packet may leave by (all of the agent's, written from its namespace).
fn set_forwarding(datapath: &mut DataPath, config: &Config) -> anyhow::Result<()> {
    let egress: Vec<u32> = config
        .agent
        .interfaces
        .iter()
        .filter_map(|i| ifindex_by_name(i))
        .collect();
    let mode = match config.agent.forward {
        crate::policy::model::ForwardMode::Kernel => nva_common::FORWARD_KERNEL,
        crate::policy::model::ForwardMode::Xdp => nva_common::FORWARD_XDP,
    };
    datapath.set_forwarding(mode, &egress)?;
    Ok(())
}

/// Keeps the kernel from resetting translated flows while a program is
/// detached (see [`crate::nat::guard`]); without it a failover still
/// works, but translated connections may be reset on the way.
fn guard_nat(nat: &[crate::policy::model::Nat]) {
    match crate::nat::guard::apply(nat) {
        Ok(()) if nat.is_empty() => {}
        Ok(()) => tracing::info!(
            table = crate::nat::guard::TABLE,
            "nftables guard in place: the kernel does not reset translated flows while a program is detached"
        ),
        // Without NAT there is nothing to guard (only an old table to remove).
        Err(e) if nat.is_empty() => tracing::debug!(error = %e, "removing the NAT guard's table"),
        Err(e) => tracing::warn!(error = %e, "no NAT guard: translated connections may be reset by this host's kernel if a program is detached before a failover"),
    }
}

impl Agent {
    /// What the sync service needs to translate between the table and
    /// records, for `f`: the running config, counter indexes by name.
    pub fn with_sync_context<T>(&self, f: impl FnOnce(&crate::sync::flows::Context) -> T) -> T {
        let pairs = |v: &[RuleState]| -> Vec<(String, u32)> {
            v.iter().map(|r| (r.name.clone(), r.counter)).collect()
        };
        let (rules, nat) = (pairs(&self.state.rules), pairs(&self.state.nat));
        let timeouts = self.config.policy.timeouts.by_state();
        let cx = crate::sync::flows::Context {
            config: &self.config,
            rules: &rules,
            nat: &nat,
            generation: self.state.generation,
            timeouts_s: &timeouts,
            ifindex_of: &ifindex_by_name,
        };
        f(&cx)
    }
}

fn rule_names(config: &Config) -> impl Iterator<Item = &str> {
    config.rules.iter().map(|r| r.name.as_str())
}

fn nat_names(config: &Config) -> impl Iterator<Item = &str> {
    config.nat.iter().map(|n| n.name.as_str())
}

fn nat_states(config: &Config, counters: &[u32]) -> Vec<RuleState> {
    config
        .nat
        .iter()
        .zip(counters)
        .map(|(n, &counter)| RuleState {
            name: n.name.clone(),
            action: format!("{:?}", n.kind).to_lowercase(),
            counter,
        })
        .collect()
}

fn rule_states(config: &Config, counters: &[u32]) -> Vec<RuleState> {
    config
        .rules
        .iter()
        .zip(counters)
        .map(|(r, &counter)| RuleState {
            name: r.name.clone(),
            action: format!("{:?}", r.action).to_lowercase(),
            counter,
        })
        .collect()
}
