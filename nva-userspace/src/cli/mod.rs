//! One module per subcommand of `nva` (main.rs only parses the command
//! line), and what several of them share.

pub(crate) mod agent;
pub(crate) mod check;
pub(crate) mod conntrack;
pub(crate) mod detach;
pub(crate) mod failover;
pub(crate) mod reload;
pub(crate) mod rules;
pub(crate) mod status;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nva::policy::config::load_config;

/// Loads a config, printing every problem; None when it is invalid.
pub(crate) fn load_or_report(path: &Path) -> Option<nva::policy::model::Config> {
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

/// `agent.bpffs` of a config file, read leniently: `nva reload` must reach
/// the agent even when the new config is invalid, so that the agent itself
/// refuses it (and logs and counts the refusal).
pub(crate) fn bpffs_of(path: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: toml::Value =
        toml::from_str(&text).unwrap_or(toml::Value::Table(Default::default()));
    Ok(value
        .get("agent")
        .and_then(|a| a.get("bpffs"))
        .and_then(|b| b.as_str())
        .unwrap_or(nva::policy::config::DEFAULT_BPFFS)
        .into())
}
