//! Kernel memory of the maps (`memlock` in each map's fdinfo): the rule
//! tables of compiled rule sets, and the conntrack table per entry.

use anyhow::Result;
use nva::classifier::compiler::compile;
use nva::classifier::rulegen::{Rng, RuleGen};
use nva::datapath::DataPath;
use nva::policy::model::{Action, PolicySettings};
use serde_json::json;

use crate::report::{Section, Verdict};

/// Maps that exist once per slot end in `_0` / `_1`.
fn is_slot_map(name: &str) -> bool {
    name.ends_with("_0") || name.ends_with("_1")
}

pub fn run(rule_counts: &[usize], conntrack_sizes: &[u32]) -> Result<(Section, Vec<Verdict>)> {
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut verdicts = Vec::new();
    for &n in rule_counts {
        eprintln!("bench: memory, {n} rules");
        let mut rng = Rng::new(0x5eed ^ n as u64);
        let gen = RuleGen::new(&mut rng, n);
        let rules = gen.rules(&mut rng, n);
        let compiled = match compile(&rules, &PolicySettings::with_default(Action::Drop)) {
            Ok(c) => c,
            Err(e) => {
                rows.push(vec![
                    format!("{n} rules"),
                    format!("does not compile: {e}"),
                    "–".into(),
                ]);
                data.push(json!({"rules": n, "error": e.to_string()}));
                if n == 100_000 {
                    verdicts.push(Verdict {
                        target: "map memory for 100k rules ≤ 64 MiB".into(),
                        measured: format!("the rule set does not compile: {e}"),
                        met: Some(false),
                    });
                }
                continue;
            }
        };
        let dp = DataPath::load(&compiled, 1, &|_| None)?;
        let maps = dp.map_memory();
        // The active slot's tables (the other slot is empty between reloads).
        let tables: u64 = maps
            .iter()
            .filter(|(name, _)| is_slot_map(name))
            .map(|(_, b)| b)
            .sum();
        let mib = tables as f64 / (1 << 20) as f64;
        let empty: u64 = maps
            .iter()
            .filter(|(name, _)| name.ends_with("_0"))
            .map(|(_, b)| b)
            .sum();
        rows.push(vec![
            format!("{n} rules"),
            format!("{mib:.1} MiB in the rule tables of both slots"),
            format!(
                "the empty slot alone takes {:.1} MiB: hash buckets sized by the tables' capacity, not by their entries (compiler estimate of the entries: {:.1} MiB)",
                empty as f64 / (1 << 20) as f64,
                compiled.sizes.bytes as f64 / (1 << 20) as f64
            ),
        ]);
        data.push(json!({"rules": n, "table_bytes": tables, "maps": maps}));
        if n == 100_000 {
            verdicts.push(Verdict {
                target: "map memory for 100k rules ≤ 64 MiB".into(),
                measured: format!("{mib:.1} MiB"),
                met: Some(mib <= 64.0),
            });
        }
    }
    for &entries in conntrack_sizes {
        eprintln!("bench: memory, conntrack table of {entries} entries");
        let dp = DataPath::open(None, entries)?;
        let bytes = dp
            .map_memory()
            .into_iter()
            .filter(|(name, _)| {
                name == nva_common::map_names::CONNTRACK
                    || name == nva_common::map_names::CONNTRACK_UNREPLIED
            })
            .map(|(_, b)| b)
            .sum::<u64>();
        // Both tables: `entries` answered flows and the unreplied table
        // beside them; per entry held.
        let unreplied = nva::datapath::unreplied_capacity(entries);
        let per_entry = bytes as f64 / (entries + unreplied) as f64;
        rows.push(vec![
            format!("conntrack, {entries} answered + {unreplied} unreplied entries"),
            format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64),
            format!("{per_entry:.0} bytes per entry"),
        ]);
        data.push(json!({
            "conntrack_entries": entries,
            "unreplied_entries": unreplied,
            "bytes": bytes,
            "bytes_per_entry": per_entry
        }));
        if entries == 1 << 20 {
            verdicts.push(Verdict {
                target: "conntrack ≤ 192 bytes per entry".into(),
                measured: format!("{per_entry:.0} bytes per entry at {entries} entries"),
                met: Some(per_entry <= 192.0),
            });
        }
    }
    let section = Section {
        title: "Memory".into(),
        intro: "Kernel memory of the maps as the kernel accounts it (`memlock` in each map's fdinfo). Rule tables are hash maps without preallocation, so they use what their entries need; the conntrack tables (answered flows, and a quarter of that for flows not answered yet) are LRU hashes, preallocated at their full size.".into(),
        columns: ["what", "kernel memory", "note"].map(String::from).to_vec(),
        rows,
        notes: vec![],
        figure: None,
        data: json!(data),
    };
    Ok((section, verdicts))
}
