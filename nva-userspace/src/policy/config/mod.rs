//! The agent's config file: TOML in, a validated [`model::Config`] out.
//!
//! Read with the shared toolkit ([`crate::configfile`]): serde reads the
//! text into `Raw*` structs that keep the span of every value we validate;
//! a syntax error, an unknown key or a value of the wrong type stops there
//! with a single error. Validation then checks the meaning of every value
//! and collects *all* problems at `FILE:LINE:COL`. One file per table:
//! [`agent`] (`[agent]`), [`policy`] (`[policy]`), [`rules`] (`[[rules]]`),
//! [`nat`] (`[[nat]]`), [`sync`] (`[sync]`).
//!
//! [`model::Config`]: crate::policy::model::Config

mod agent;
mod nat;
mod policy;
mod rules;
mod sync;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::configfile::{self, Checker, ConfigError, Names};
use crate::policy::model::{Action, Config};
use rules::MatchTable;

pub use agent::{
    DEFAULT_BPFFS, DEFAULT_HEALTH_INTERVAL_MS, DEFAULT_HEALTH_LISTEN, MAX_IFACE_NAME_LEN,
};
pub use policy::MAX_CONNTRACK_TIMEOUT_S;
pub use rules::MAX_RULE_NAME_LEN;
pub use sync::DEFAULT_SYNC_INTERVAL_MS;

/// Reads and validates the config file at `path`.
pub fn load_config(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = configfile::read(path)?;
    parse_config(&path.display().to_string(), &text)
}

/// Validates config `text`; `file_name` is only used in error messages.
pub fn parse_config(file_name: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
    parse(file_name, text)
}

fn parse(file_name: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
    let raw: RawFile = configfile::parse(file_name, text)?;
    let mut cx = Ctx {
        c: Checker::new(file_name, text),
    };
    let config = cx.config(raw);
    cx.c.finish()?;
    // `config` is only `None` when an error was recorded.
    config.ok_or_else(Vec::new)
}

/// The file, mirroring DESIGN.md "Config file (TOML)" key by key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    agent: Option<Spanned<agent::RawAgent>>,
    policy: Option<Spanned<policy::RawPolicy>>,
    #[serde(default)]
    rules: Vec<Spanned<rules::RawRule>>,
    #[serde(default)]
    nat: Vec<Spanned<nat::RawNat>>,
    sync: Option<Spanned<sync::RawSync>>,
}

/// The validation of one file.
struct Ctx<'a> {
    c: Checker<'a>,
}

impl Ctx<'_> {
    fn config(&mut self, raw: RawFile) -> Option<Config> {
        let agent = match raw.agent {
            Some(a) => self.agent(a),
            None => {
                self.c
                    .err(0..0, "missing [agent] table (agent.interfaces is required)");
                None
            }
        };
        let policy = match raw.policy {
            Some(p) => self.policy(p, agent.as_ref()),
            None => {
                self.c
                    .err(0..0, "missing [policy] table (policy.default is required)");
                None
            }
        };
        let ifaces: &[String] = agent.as_ref().map_or(&[], |a| &a.interfaces);
        let mut names = Names::default();
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut rules_ok = true;
        for r in raw.rules {
            match self.rule(r, ifaces, agent.is_some(), &mut names, MatchTable::Rules) {
                Some(rule) => rules.push(rule),
                None => rules_ok = false,
            }
        }
        let nat = self.nat_entries(raw.nat, ifaces, agent.is_some(), policy.as_ref());
        let sync = match raw.sync {
            None => Some(None),
            Some(s) => self.sync(s).map(Some),
        };
        match (agent, policy, rules_ok, nat, sync) {
            (Some(agent), Some(policy), true, Some(nat), Some(sync)) => Some(Config {
                agent,
                policy,
                rules,
                nat,
                sync,
            }),
            _ => None,
        }
    }

    /// `policy.default` and a rule's `action`.
    fn action(&mut self, key: &str, v: &Spanned<String>) -> Option<Action> {
        self.c
            .one_of(key, v, &[("allow", Action::Allow), ("drop", Action::Drop)])
    }
}
