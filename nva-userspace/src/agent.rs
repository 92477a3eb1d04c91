//! `nva agent`: load, attach, pin counters, run until told to stop.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::compiler::{compile, CompiledRuleSet};
use crate::datapath::{ifindex_by_name, DataPath};
use crate::model::Config;

/// Version of the pinned layout under `agent.bpffs`.
pub const PIN_LAYOUT: &str = "v1";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// What `nva rules` needs besides the pinned counters: rule names in id order.
#[derive(Serialize, Deserialize)]
pub struct RuleSetState {
    pub generation: u64,
    pub rules: Vec<RuleState>,
}

#[derive(Serialize, Deserialize)]
pub struct RuleState {
    pub name: String,
    pub action: String,
}

/// Where the pinned maps of the agent using `bpffs` live.
pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(PIN_LAYOUT)
}

/// Where the agent using `bpffs` keeps its state file (bpffs holds only BPF
/// objects).
pub fn state_file(bpffs: &Path) -> PathBuf {
    let key: String = bpffs
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from("/run/nva").join(key).join("rules.json")
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs at /sys/fs/bpf when `bpffs` is below it and it is not
/// mounted yet; other locations must already be on a bpffs.
pub fn ensure_bpffs(bpffs: &Path) -> anyhow::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if bpffs.starts_with(root) && !is_bpffs(root) {
        let none: Option<&str> = None;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            none,
        )
        .context("mounting bpffs at /sys/fs/bpf")?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    std::fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
    if !is_bpffs(bpffs) {
        bail!(
            "agent.bpffs = {} is not on a bpf filesystem",
            bpffs.display()
        );
    }
    Ok(())
}

pub struct Agent {
    config: Config,
    datapath: DataPath,
    pub compiled: CompiledRuleSet,
}

impl Agent {
    /// Compiles, loads and attaches; on any failure nothing stays attached.
    pub fn start(config: Config) -> anyhow::Result<Agent> {
        let started = std::time::Instant::now();
        let compiled = compile(&config.rules, &config.policy)?;
        tracing::info!(rules = config.rules.len(), sizes = %compiled.sizes, elapsed = ?started.elapsed(), "compiled rule set");
        for iface in &config.agent.interfaces {
            if ifindex_by_name(iface).is_none() {
                bail!("interface {iface} (agent.interfaces) does not exist");
            }
        }
        let mut datapath = DataPath::load(&compiled, 1, &ifindex_by_name)?;
        for iface in &config.agent.interfaces {
            let mode = datapath.attach(iface, config.agent.xdp_mode)?;
            tracing::info!(iface, ?mode, "attached XDP program");
        }
        let agent = Agent {
            config,
            datapath,
            compiled,
        };
        agent.publish_state()?;
        Ok(agent)
    }

    fn publish_state(&self) -> anyhow::Result<()> {
        let bpffs = &self.config.agent.bpffs;
        ensure_bpffs(bpffs)?;
        self.datapath.pin_counters(&pin_dir(bpffs))?;
        let state = RuleSetState {
            generation: 1,
            rules: self
                .config
                .rules
                .iter()
                .map(|r| RuleState {
                    name: r.name.clone(),
                    action: format!("{:?}", r.action).to_lowercase(),
                })
                .collect(),
        };
        let path = state_file(bpffs);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Detaches (by dropping the links) and removes pins and state.
    pub fn stop(self) {
        let bpffs = self.config.agent.bpffs.clone();
        drop(self.datapath);
        let _ = std::fs::remove_dir_all(pin_dir(&bpffs));
        // Only if empty: the directory may hold an operator's other pins.
        let _ = std::fs::remove_dir(&bpffs);
        let _ = std::fs::remove_file(state_file(&bpffs));
        tracing::info!("detached and removed pinned state");
    }
}
