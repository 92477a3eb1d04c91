//! Kernel memory of the maps (`memlock` in each map's fdinfo): the rule
//! tables of compiled rule sets, and the conntrack table per entry.

use anyhow::Result;
use nva::classifier::compiler::compile;
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{Rng, RuleGen};
use nva::datapath::DataPath;
use nva::policy::model::{Action, Cidr, PolicySettings, Rule};
use serde_json::json;
use std::net::IpAddr;
use std::time::Instant;

use crate::report::{Section, Verdict};

/// Maps that exist once per slot end in `_0` / `_1`.
fn is_slot_map(name: &str) -> bool {
    name.ends_with("_0") || name.ends_with("_1")
}

/// Prefixes per rule of the block lists: a million prefixes stay within
/// the rule limit.
const PREFIXES_PER_RULE: usize = 100;

/// A block list of `n` random destination prefixes (/24 and /32, drop),
/// `PREFIXES_PER_RULE` to a rule, then a rule allowing the rest.
fn blocklist(n: usize) -> Vec<Rule> {
    let mut rng = Rng::new(0x00b1_0c11 ^ n as u64);
    let mut rules: Vec<Rule> = (0..n.div_ceil(PREFIXES_PER_RULE))
        .map(|i| Rule {
            dst: (0..PREFIXES_PER_RULE.min(n - i * PREFIXES_PER_RULE))
                .map(|_| {
                    let len = if rng.chance(50) { 24 } else { 32 };
                    Cidr::new(IpAddr::V4((rng.next_u64() as u32).into()), len)
                })
                .collect(),
            ..Rule::any(&format!("block-{i}"), Action::Drop)
        })
        .collect();
    rules.push(Rule::any("allow-the-rest", Action::Allow));
    rules
}

/// Block lists (the short path): compile and load time, and the kernel
/// memory of the slot tables holding them.
fn blocklist_rows(
    sizes: &[usize],
    rows: &mut Vec<Vec<String>>,
    data: &mut Vec<serde_json::Value>,
    verdicts: &mut Vec<Verdict>,
) -> Result<()> {
    for &n in sizes {
        eprintln!("bench: memory, block list of {n} prefixes");
        let rules = blocklist(n);
        let started = Instant::now();
        let compiled = compile(&rules, &PolicySettings::with_default(Action::Drop))?;
        let compile_s = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let dp = DataPath::load(&compiled, 1, &|_| None)?;
        let load_s = started.elapsed().as_secs_f64();
        let tables: u64 = dp
            .map_memory()
            .iter()
            .filter(|(name, _)| is_slot_map(name))
            .map(|(_, b)| b)
            .sum();
        let mib = tables as f64 / (1 << 20) as f64;
        rows.push(vec![
            format!("block list, {n} prefixes in {} rules", rules.len()),
            format!("{mib:.1} MiB in the rule tables of both slots"),
            format!(
                "the short path ({}); compiled in {compile_s:.2} s, tables written in {load_s:.2} s",
                compiled.sizes
            ),
        ]);
        data.push(json!({
            "blocklist_prefixes": n, "table_bytes": tables,
            "compile_s": compile_s, "load_s": load_s,
        }));
        if n == 1_000_000 {
            verdicts.push(Verdict {
                target: "block list of 1,000,000 prefixes within 128 MiB".into(),
                measured: format!(
                    "{mib:.1} MiB (compiled in {compile_s:.2} s, written in {load_s:.2} s)"
                ),
                met: Some(mib <= 128.0),
            });
        }
    }
    Ok(())
}

/// All maps of the program except the conntrack tables (measured apart),
/// with 10 random rules, and with 100,000 random rules and 100,000
/// ClassBench-shaped rules of each shape loaded.
fn all_maps_rows(
    rows: &mut Vec<Vec<String>>,
    data: &mut Vec<serde_json::Value>,
    verdicts: &mut Vec<Verdict>,
) -> Result<()> {
    let mut rng = Rng::new(10);
    let gen = RuleGen::new(&mut rng, 10);
    let mut sets = vec![("10 random rules".to_string(), gen.rules(&mut rng, 10))];
    let mut rng = Rng::new(100_000);
    let gen = RuleGen::new(&mut rng, 100_000);
    sets.push((
        "100000 random rules".to_string(),
        gen.rules(&mut rng, 100_000),
    ));
    for shape in Shape::ALL {
        let mut rng = Rng::new(0xc1a55 ^ 100_000);
        let rules = ClassBench::new(shape, &mut rng, 100_000).rules(&mut rng, 100_000);
        sets.push((format!("100000 ClassBench {} rules", shape.name()), rules));
    }
    let mut worst_100k = 0f64;
    for (label, rules) in sets {
        eprintln!("bench: memory, all maps with {label}");
        let compiled = compile(&rules, &PolicySettings::with_default(Action::Drop))?;
        let dp = DataPath::load(&compiled, 1, &|_| None)?;
        let maps = dp.map_memory();
        // Connection state is sized by `policy.conntrack_max`, not by the
        // rules: the conntrack tables, and the NAT bindings (two per
        // translated flow, at most twice conntrack_max, not preallocated).
        let conntrack = |name: &str| {
            name == nva_common::map_names::CONNTRACK
                || name == nva_common::map_names::CONNTRACK_UNREPLIED
                || name == nva_common::map_names::NAT_BINDINGS
        };
        let state: u64 = maps
            .iter()
            .filter(|(name, _)| conntrack(name))
            .map(|(_, b)| b)
            .sum();
        let all: u64 = maps
            .iter()
            .filter(|(name, _)| !conntrack(name))
            .map(|(_, b)| b)
            .sum();
        let tables: u64 = maps
            .iter()
            .filter(|(name, _)| is_slot_map(name))
            .map(|(_, b)| b)
            .sum();
        let mut largest: Vec<&(String, u64)> =
            maps.iter().filter(|(name, _)| !conntrack(name)).collect();
        largest.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        rows.push(vec![
            format!("all maps but connection state, {label}"),
            format!(
                "{:.1} MiB ({:.1} MiB of it the rule tables of both slots)",
                mib(all),
                mib(tables)
            ),
            format!(
                "{}; connection state apart ({:.1} MiB: conntrack tables of {} entries, NAT bindings); largest: {}",
                compiled.sizes,
                mib(state),
                nva::datapath::UNPINNED_CONNTRACK_MAX,
                largest
                    .iter()
                    .take(4)
                    .map(|(n, b)| format!("{n} {:.1} MiB", mib(*b)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ]);
        data.push(json!({"all_maps": label, "bytes": all, "rule_table_bytes": tables}));
        if label.starts_with("10 ") {
            verdicts.push(Verdict {
                target: "all maps ≤ 4 MiB at 10 rules (connection state apart)".into(),
                measured: format!("{:.1} MiB", mib(all)),
                met: Some(mib(all) <= 4.0),
            });
        } else {
            worst_100k = worst_100k.max(mib(all));
        }
    }
    verdicts.push(Verdict {
        target:
            "all maps ≤ 64 MiB at 100k rules (random and ClassBench shapes, connection state apart)"
                .into(),
        measured: format!("{worst_100k:.1} MiB (the largest set)"),
        met: Some(worst_100k <= 64.0),
    });
    Ok(())
}

pub fn run(
    rule_counts: &[usize],
    blocklists: &[usize],
    conntrack_sizes: &[u32],
) -> Result<(Section, Vec<Verdict>)> {
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
                "the slot not in use takes {:.1} MiB (its port and ICMP class arrays, and a one-entry table or array in each map of maps); compiler estimate of the entries: {:.1} MiB",
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
    blocklist_rows(blocklists, &mut rows, &mut data, &mut verdicts)?;
    if rule_counts.contains(&100_000) {
        all_maps_rows(&mut rows, &mut data, &mut verdicts)?;
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
        intro: "Kernel memory of the maps as the kernel accounts it (`memlock` in each map's fdinfo). The join tables, the rule actions and the rule counters are created for each rule set at the size it needs (maps of maps, swapped with the slot); the other rule tables are arrays of fixed size (port and ICMP-type classes, packed 16 bits per slot) or hash maps and tries without preallocation; the log budgets are a small LRU hash; the conntrack tables (answered flows, and a quarter of that for flows not answered yet) are LRU hashes, preallocated at their full size.".into(),
        columns: ["what", "kernel memory", "note"].map(String::from).to_vec(),
        rows,
        notes: vec![],
        figure: None,
        data: json!(data),
    };
    Ok((section, verdicts))
}
