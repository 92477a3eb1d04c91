//! Rule-set swap under traffic: `nva agent` on the client ── nva ── server
//! topology holds a large rule set (random, or a block list); `nva reload`
//! swaps it for another of the same size and shape, again and again, while
//! a steady UDP flow (one datagram per millisecond, allowed by both sets) is
//! counted at both ends.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nva::classifier::compiler::compile;
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{rules_toml, Rng, RuleGen};
use nva::policy::model::{Action, Cidr, PolicySettings, Rule};
use nva_tests::agent::RunningAgent;
use nva_tests::traffic::SteadyFlow;
use nva_tests::{Topology, NVA_IN_IF, NVA_OUT_IF};
use serde_json::json;
use std::net::IpAddr;

use crate::report::{Section, Spread, Verdict};

const TOPOLOGY_ID: u8 = 235;
const STEADY_PORT: u16 = 7000;

pub struct Settings {
    pub sizes: Vec<usize>,
    /// Sizes of the block lists (drop rules of destination prefixes, then
    /// allow the rest: the short path).
    pub blocklists: Vec<usize>,
    /// Sizes of the ClassBench acl-shaped sets (the general path; large ones
    /// in rule groups).
    pub classbench: Vec<usize>,
    pub swaps: usize,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                sizes: vec![1000],
                blocklists: vec![1000],
                classbench: vec![1000],
                swaps: 3,
            }
        } else {
            Settings {
                sizes: vec![10_000, 100_000],
                blocklists: vec![100_000],
                classbench: vec![100_000],
                swaps: 20,
            }
        }
    }
}

/// Random rules of set `which` (0 or 1), free of interface matches.
fn random_rules(n: usize, which: u64) -> Vec<Rule> {
    let mut rng = Rng::new(0x5a5a ^ (n as u64) << 1 ^ which);
    let gen = RuleGen::new(&mut rng, n);
    let mut rules = gen.rules(&mut rng, n);
    for r in &mut rules {
        r.in_iface = None;
    }
    rules
}

/// ClassBench acl-shaped rules of set `which` (0 or 1).
fn acl_rules(n: usize, which: u64) -> Vec<Rule> {
    let mut rng = Rng::new(0xac1 ^ (n as u64) << 1 ^ which);
    ClassBench::new(Shape::Acl, &mut rng, n).rules(&mut rng, n)
}

/// The shapes swapped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Random,
    BlockList,
    ClassBenchAcl,
}

/// Block list `which` (0 or 1): `n` drop rules of random /24 and /32
/// destination prefixes outside the topology's networks, then a rule
/// allowing the rest (the steady flow among it).
fn block_list(n: usize, which: u64) -> Vec<Rule> {
    let mut rng = Rng::new(0xb10c ^ (n as u64) << 1 ^ which);
    let ours = Cidr::new(format!("10.{TOPOLOGY_ID}.0.0").parse().expect("prefix"), 16);
    let mut rules = Vec::with_capacity(n + 1);
    while rules.len() < n {
        let len = if rng.chance(50) { 24 } else { 32 };
        let c = Cidr::new(IpAddr::V4((rng.next_u64() as u32).into()), len);
        if !ours.contains(c.addr) && !c.contains(ours.addr) {
            rules.push(Rule {
                dst: vec![c],
                ..Rule::any(&format!("block-{}", rules.len()), Action::Drop)
            });
        }
    }
    rules.push(Rule::any("allow-the-rest", Action::Allow));
    rules
}

/// The agent's config: a random rule set after the rule allowing the
/// steady flow; a block list alone (its last rule allows the flow, and a
/// rule naming a port would take it off the short path).
fn config(rules: &[Rule], blocklist: bool) -> String {
    if blocklist {
        return format!(
            "[agent]\ninterfaces = [\"{NVA_IN_IF}\", \"{NVA_OUT_IF}\"]\nhealth_listen = \"127.0.0.1:9090\"\nbpffs = \"{{bpffs}}\"\n\n[policy]\ndefault = \"drop\"\n\n{}",
            rules_toml(rules)
        );
    }
    format!(
        r#"[agent]
interfaces = ["{NVA_IN_IF}", "{NVA_OUT_IF}"]
health_listen = "127.0.0.1:9090"
bpffs = "{{bpffs}}"

[policy]
default = "drop"

[[rules]]
name = "steady"
action = "allow"
proto = "udp"
dport = ["{STEADY_PORT}"]

{}"#,
        rules_toml(rules)
    )
}

/// A `Debug`-printed duration ("812.3ms", "1.2s", "950µs") in seconds.
fn parse_debug_duration(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "s" => v,
        "ms" => v / 1e3,
        "µs" | "us" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    })
}

/// One reload as the agent logged it, in seconds.
struct LoggedSwap {
    /// From the start of compiling to the switch: the new rules are live.
    live: f64,
    compile: f64,
    /// Freeing the old slot's tables, after the switch.
    freed: f64,
}

/// The agent's own figures of its swaps (config read excluded), from its
/// "compiled and swapped rule set" log lines.
fn logged_swaps(log: &str) -> Vec<LoggedSwap> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "compiled and swapped rule set")
        .filter_map(|v| {
            let f = |k: &str| v["fields"][k].as_str().and_then(parse_debug_duration);
            Some(LoggedSwap {
                live: f("elapsed")?,
                compile: f("compile")?,
                freed: f("old_slot_freed")?,
            })
        })
        .collect()
}

pub fn run(s: &Settings) -> Result<(Section, Vec<Verdict>)> {
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut verdict_parts = Vec::new();
    let mut met = true;
    let runs = s
        .sizes
        .iter()
        .map(|&n| (n, Kind::Random))
        .chain(s.blocklists.iter().map(|&n| (n, Kind::BlockList)))
        .chain(s.classbench.iter().map(|&n| (n, Kind::ClassBenchAcl)));
    for (n, kind) in runs {
        let blocklist = kind == Kind::BlockList;
        let label = match kind {
            Kind::Random => n.to_string(),
            Kind::BlockList => format!("{n} (block list)"),
            Kind::ClassBenchAcl => format!("{n} (ClassBench acl)"),
        };
        eprintln!("bench: rule-set swap, {label} rules");
        let sets = match kind {
            Kind::Random => [random_rules(n, 0), random_rules(n, 1)],
            Kind::BlockList => [block_list(n, 0), block_list(n, 1)],
            Kind::ClassBenchAcl => [acl_rules(n, 0), acl_rules(n, 1)],
        };
        let policy = PolicySettings::with_default(Action::Drop);
        if let Some(e) = sets.iter().find_map(|set| compile(set, &policy).err()) {
            rows.push(vec![
                label.clone(),
                format!("does not compile: {e}"),
                "–".into(),
                "–".into(),
                "–".into(),
                "–".into(),
            ]);
            data.push(json!({"rules": n, "shape": label, "error": e.to_string()}));
            verdict_parts.push(format!("{label} rules do not compile"));
            met = false;
            continue;
        }
        let t = Topology::new(TOPOLOGY_ID);
        let agent = RunningAgent::start(&t, &config(&sets[0], blocklist), true);
        let flow = SteadyFlow::client_to_server(&t, STEADY_PORT, 10_000_000);
        std::thread::sleep(Duration::from_millis(300));
        let mut walls = Vec::new();
        for i in 0..s.swaps {
            agent.write_config(&config(&sets[(i + 1) % 2], blocklist));
            let started = Instant::now();
            let out = agent.nva(&["reload"]);
            walls.push(started.elapsed().as_secs_f64());
            if !out.status.success() {
                bail!(
                    "reload {i} of {n} rules failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let (sent, received) = flow.finish();
        let swaps = logged_swaps(&agent.log());
        if swaps.len() != s.swaps {
            bail!(
                "the agent logged {} swaps of {n} rules, expected {}",
                swaps.len(),
                s.swaps
            );
        }
        drop(agent);
        let ms = |f: fn(&LoggedSwap) -> f64| {
            Spread::of(&swaps.iter().map(|x| f(x) * 1e3).collect::<Vec<_>>())
        };
        let (swap, compiling, freed) = (ms(|x| x.live), ms(|x| x.compile), ms(|x| x.freed));
        let wall = Spread::of(&walls.iter().map(|x| x * 1e3).collect::<Vec<_>>());
        let lost = sent.saturating_sub(received);
        rows.push(vec![
            label.clone(),
            compiling.show(0),
            swap.show(0),
            freed.show(0),
            wall.show(0),
            format!("{lost} of {sent}"),
        ]);
        data.push(json!({
            "rules": n, "shape": label, "swaps": s.swaps, "compile_ms": compiling, "compile_and_swap_ms": swap, "old_slot_freed_ms": freed,
            "nva_reload_wall_ms": wall, "steady_sent": sent, "steady_received": received,
        }));
        met &= lost == 0 && (n != 100_000 || swap.max < 1000.0);
        verdict_parts.push(format!(
            "{label} rules: compile-and-swap {:.0} ms median, {:.0} ms worst; {lost} of {sent} lost",
            swap.median, swap.max
        ));
    }
    let verdict = Verdict {
        target: "100k-rule compile-and-swap < 1 s, zero loss during swaps".into(),
        measured: verdict_parts.join("; "),
        met: s.sizes.contains(&100_000).then_some(met),
    };
    let section = Section {
        title: "Rule-set swap under traffic".into(),
        intro: format!(
            "`nva agent` (default drop, stateless as by default) with random rules or ClassBench acl-shaped rules (after a rule allowing the flow below) or a block list (drop rules of random /24 and /32 destination prefixes, then allow the rest: the short path), swapped {} times by `nva reload` for another random set of the same size, while a UDP flow allowed by the first rule of both sets sends one datagram per millisecond through the NVA. The agent's own figures for each reload (the config file read excluded): compile; compile and swap, from the start of compiling to the switch that makes the new rules live (compile, write the standby slot, one write to switch); then freeing the old slot's tables, after the switch. `nva reload`: the command's wall time, until the agent has freed the old slot and written its state (it polls every 50 ms). Milliseconds, median (min–max).",
            s.swaps
        ),
        columns: ["rules", "compile ms", "compile and swap ms", "old slot freed ms", "`nva reload` ms", "steady flow lost"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec![],
        figure: None,
        data: json!(data),
    };
    Ok((section, vec![verdict]))
}

#[cfg(test)]
mod tests {
    use super::parse_debug_duration;

    #[test]
    fn debug_durations_parse() {
        assert_eq!(parse_debug_duration("1.5s"), Some(1.5));
        assert_eq!(parse_debug_duration("250ms"), Some(0.25));
        assert_eq!(parse_debug_duration("12µs"), Some(12e-6));
        assert_eq!(parse_debug_duration("abc"), None);
    }
}
