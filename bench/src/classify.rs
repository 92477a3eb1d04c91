//! Per-packet cost of the real program with real compiled tables, through
//! BPF_PROG_TEST_RUN, against the parse-and-pass baseline measured in the
//! same rounds: classification against rule count, established flows, new
//! flows (refused, and admitted with their conntrack insert).

use std::net::IpAddr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use nva::classifier::compiler::{compile, linear_first_match, CompiledRuleSet, PacketView};
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{Rng, RuleGen};
use nva::datapath::{Baseline, DataPath};
use nva::policy::model::{Action, PolicySettings, Rule};
use nva_tests::frames::{ethernet, frame_for, ipv4, ipv6, tcp, ETH_P_IP, ETH_P_IPV6};
use serde_json::json;

use crate::report::{line_plot_log_x, Section, Spread, Verdict};

use nva_common::{TCP_ACK as ACK, TCP_SYN as SYN, XDP_DROP, XDP_PASS};

pub struct Settings {
    pub sizes: Vec<usize>,
    /// BPF_PROG_TEST_RUN repeat count of one measurement.
    pub repeat: u32,
    /// Measurements per figure (min/median/max).
    pub rounds: usize,
    /// Distinct new flows timed one by one.
    pub new_flows: usize,
    /// Sizes of the ClassBench-shaped rule sets.
    pub classbench_sizes: Vec<usize>,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                sizes: vec![10, 100, 1000],
                repeat: 20_000,
                rounds: 3,
                new_flows: 200,
                classbench_sizes: vec![1000],
            }
        } else {
            Settings {
                sizes: vec![10, 100, 1000, 10_000, 100_000],
                repeat: 1_000_000,
                rounds: 5,
                new_flows: 3000,
                classbench_sizes: vec![1000, 10_000, 100_000],
            }
        }
    }
}

fn policy() -> PolicySettings {
    PolicySettings::with_default(Action::Drop)
}

/// A TCP frame for `pkt` with `flags`, or its reply (addresses and ports
/// swapped).
fn tcp_frame(pkt: &PacketView, flags: u8, reply: bool) -> Vec<u8> {
    let (src, dst, sport, dport) = if reply {
        (pkt.dst, pkt.src, pkt.dport, pkt.sport)
    } else {
        (pkt.src, pkt.dst, pkt.sport, pkt.dport)
    };
    let l4 = tcp(sport, dport, flags);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet(&[], ETH_P_IP, &ipv4(s, d, 6, &[], 0, &l4)),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(&[], ETH_P_IPV6, &ipv6(s, d, 6, &l4)),
        _ => unreachable!("one family per packet"),
    }
}

/// Packets arriving on an interface no rule names.
fn on_unnamed_iface(mut p: PacketView) -> PacketView {
    p.iface = None;
    p
}

/// A packet whose first match is the last rule (or, if the last rule is
/// shadowed everywhere we look, the latest rule found), one that matches
/// nothing (if any exists), and a TCP SYN the rules refuse.
struct Probes {
    hit: PacketView,
    hit_index: usize,
    nothing: Option<PacketView>,
    refused_tcp: Option<PacketView>,
}

fn probe_packets(gen: &RuleGen, rng: &mut Rng, rules: &[Rule]) -> Probes {
    let last = rules.len() - 1;
    let mut best: Option<(PacketView, usize)> = None;
    for i in 0..20_000 {
        let target = if i % 2 == 0 { &rules[last..] } else { rules };
        let p = on_unnamed_iface(gen.packet(rng, target));
        if let Some(m) = linear_first_match(rules, &p) {
            if best.as_ref().is_none_or(|(_, b)| m > *b) {
                best = Some((p, m));
                if m == last {
                    break;
                }
            }
        }
    }
    let (mut nothing, mut refused_tcp) = (None, None);
    for i in 0..200_000 {
        let p = on_unnamed_iface(gen.packet(rng, if i % 2 == 0 { &[] } else { rules }));
        let m = linear_first_match(rules, &p);
        if m.is_none() && nothing.is_none() {
            nothing = Some(p.clone());
        }
        if p.proto == 6
            && refused_tcp.is_none()
            && m.is_none_or(|m| rules[m].action == Action::Drop)
        {
            refused_tcp = Some(p);
        }
        if nothing.is_some() && refused_tcp.is_some() {
            break;
        }
    }
    let (hit, hit_index) = best.expect("some packet matches some rule");
    Probes {
        hit,
        hit_index,
        nothing,
        refused_tcp,
    }
}

/// A TCP packet whose first match is an allow rule, plus more packets of
/// the same rule with other source ports (new flows).
fn allowed_tcp_flows(gen: &RuleGen, rng: &mut Rng, rules: &[Rule], n: usize) -> Vec<PacketView> {
    for _ in 0..200_000 {
        let p = on_unnamed_iface(gen.packet(rng, rules));
        if p.proto != 6 {
            continue;
        }
        let Some(m) = linear_first_match(rules, &p) else {
            continue;
        };
        if rules[m].action != Action::Allow {
            continue;
        }
        let mut flows = vec![p.clone()];
        for sport in 1024..=u16::MAX {
            if flows.len() == n {
                break;
            }
            let q = PacketView { sport, ..p.clone() };
            if q.sport != p.sport && linear_first_match(rules, &q) == Some(m) {
                flows.push(q);
            }
        }
        if flows.len() == n {
            return flows;
        }
    }
    Vec::new()
}

/// ns/packet of `frame` through `dp` and the baseline, `rounds` times,
/// interleaved so that both see the same machine noise.
fn measure(
    dp: &DataPath,
    base: &Baseline,
    frame: &[u8],
    s: &Settings,
    expect: u32,
) -> Result<(Spread, Spread, Spread)> {
    let (mut ours, mut theirs, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.rounds {
        let (action, t) = dp.time_run(frame, s.repeat)?;
        if action != expect {
            bail!("the measured packet got action {action}, expected {expect}");
        }
        let (_, b) = base.time_run(frame, s.repeat)?;
        let (t, b) = (t.as_nanos() as f64, b.as_nanos().max(1) as f64);
        ours.push(t);
        theirs.push(b);
        ratio.push(t / b);
    }
    Ok((Spread::of(&ours), Spread::of(&theirs), Spread::of(&ratio)))
}

/// `nva-bench --hold SHAPE:RULES:SECONDS`: the classify part's rule set of
/// that shape and size, and its deepest-matching probe, run again and again
/// for SECONDS; prints the best and median ns per packet (repeat 100,000).
pub fn hold(spec: &str) -> Result<()> {
    let usage = || {
        anyhow::anyhow!(
            "--hold takes SHAPE:RULES:SECONDS (for example ipc:100000:20), not {spec:?}"
        )
    };
    let mut parts = spec.split(':');
    let (Some(shape), Some(n), Some(secs), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(usage());
    };
    let n: usize = n.parse().map_err(|_| usage())?;
    let secs: u64 = secs.parse().map_err(|_| usage())?;
    // The same seeds as `run` and `classbench_section`.
    let (rules, packets, mut rng) = if shape == "random" {
        let mut rng = Rng::new(0x5eed ^ n as u64);
        let gen = RuleGen::new(&mut rng, n);
        (gen.rules(&mut rng, n), gen, rng)
    } else {
        let shape = Shape::ALL
            .into_iter()
            .find(|s| s.name() == shape)
            .ok_or_else(|| anyhow::anyhow!("unknown shape {shape:?}: acl, fw, ipc or random"))?;
        let mut rng = Rng::new(0xc1a55 ^ n as u64);
        let rules = ClassBench::new(shape, &mut rng, n).rules(&mut rng, n);
        let packets = RuleGen::new(&mut rng, 1000);
        (rules, packets, rng)
    };
    let compiled = compile(&rules, &policy())?;
    let probes = probe_packets(&packets, &mut rng, &rules);
    let expect = if rules[probes.hit_index].action == Action::Allow {
        XDP_PASS
    } else {
        XDP_DROP
    };
    eprintln!(
        "{shape} {n}: {}; the packet {:?} matches rule #{}",
        compiled.sizes,
        probes.hit,
        probes.hit_index + 1
    );
    let dp = DataPath::load(&compiled, 1, &|_| None)?;
    if let Some(insns) = dp.verified_insns()? {
        eprintln!("the verifier processed {insns} instructions (limit 1,000,000)");
    }
    let frame = frame_for(&probes.hit);
    let started = Instant::now();
    let mut times = Vec::new();
    while started.elapsed().as_secs() < secs {
        let (action, t) = dp.time_run(&frame, 100_000)?;
        if action != expect {
            bail!("the packet got action {action}, expected {expect}");
        }
        times.push(t.as_nanos() as f64);
    }
    let spread = Spread::of(&times);
    println!(
        "{shape} {n}: {:.0} ns per packet at best, {:.0} median, over {} runs",
        spread.min,
        spread.median,
        times.len()
    );
    Ok(())
}

pub struct Outcome {
    pub section: Section,
    pub classbench: Section,
    pub conntrack: Section,
    pub verdicts: Vec<Verdict>,
}

pub fn run(s: &Settings, out_dir: &std::path::Path) -> Result<Outcome> {
    let base = Baseline::parse_pass().context("loading the parse-and-pass baseline")?;
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut ct_rows = Vec::new();
    let mut ct_data = Vec::new();
    let mut plot_last = Vec::new();
    let mut plot_none = Vec::new();
    let mut plot_base = Vec::new();
    let mut plot_est = Vec::new();
    let mut first_last: Option<f64> = None;
    let mut largest: Option<(usize, f64)> = None;
    let mut est_ratio: Option<(usize, Spread)> = None;
    let mut new_ratio: Option<(usize, Spread)> = None;
    let mut missing = Vec::new();
    let mut verified = None;
    for &n in &s.sizes {
        eprintln!("bench: classification, {n} rules");
        let mut rng = Rng::new(0x5eed ^ n as u64);
        let gen = RuleGen::new(&mut rng, n);
        let rules = gen.rules(&mut rng, n);
        let started = Instant::now();
        let compiled: CompiledRuleSet = match compile(&rules, &policy()) {
            Ok(c) => c,
            Err(e) => {
                rows.push(vec![
                    n.to_string(),
                    format!("does not compile: {e}"),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                    "–".into(),
                ]);
                data.push(json!({"rules": n, "error": e.to_string()}));
                missing.push(n);
                continue;
            }
        };
        let compile_s = started.elapsed().as_secs_f64();
        let Probes {
            hit,
            hit_index,
            nothing,
            refused_tcp,
        } = probe_packets(&gen, &mut rng, &rules);
        let hit_action = if rules[hit_index].action == Action::Allow {
            XDP_PASS
        } else {
            XDP_DROP
        };
        let dp = DataPath::load(&compiled, 1, &|_| None)?;
        if verified.is_none() {
            verified = dp.verified_insns()?;
        }
        let (last_ns, base_ns, last_ratio) = measure(&dp, &base, &frame_for(&hit), s, hit_action)?;
        let none = match &nothing {
            Some(p) => Some(measure(&dp, &base, &frame_for(p), s, XDP_DROP)?),
            None => None,
        };
        drop(dp);

        // Stateful: established flow, refused new flow, admitted new flows.
        let mut stateful = compiled.clone();
        stateful.stateful = true;
        let dp = DataPath::load(&stateful, 1, &|_| None)?;
        let refused = match &refused_tcp {
            Some(p) => Some(measure(&dp, &base, &tcp_frame(p, SYN, false), s, XDP_DROP)?),
            None => None,
        };
        let flows = allowed_tcp_flows(&gen, &mut rng, &rules, s.new_flows + 1);
        let mut est = None;
        let mut admitted = None;
        if let Some((first, others)) = flows.split_first() {
            for (flags, reply) in [(SYN, false), (SYN | ACK, true), (ACK, false)] {
                dp.time_run(&tcp_frame(first, flags, reply), 1)?;
            }
            est = Some(measure(
                &dp,
                &base,
                &tcp_frame(first, ACK, false),
                s,
                XDP_PASS,
            )?);
            // One run each: every SYN is a new flow, classified and inserted.
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for p in others {
                let frame = tcp_frame(p, SYN, false);
                let (action, t) = dp.time_run(&frame, 1)?;
                if action != XDP_PASS {
                    bail!("an allowed new flow got action {action}");
                }
                let (_, b) = base.time_run(&frame, 1)?;
                ours.push(t.as_nanos() as f64);
                theirs.push(b.as_nanos().max(1) as f64);
            }
            let (o, t) = (Spread::of(&ours), Spread::of(&theirs));
            admitted = Some((o, t, o.median / t.median));
        }
        drop(dp);

        let x = n as f64;
        plot_last.push((x, last_ns.median));
        if let Some((none_ns, _, _)) = none {
            plot_none.push((x, none_ns.median));
        }
        plot_base.push((x, base_ns.median));
        first_last.get_or_insert(last_ns.median);
        largest = Some((n, last_ns.median));
        rows.push(vec![
            n.to_string(),
            format!(
                "{:.2} s, {:.1} MiB",
                compile_s,
                compiled.sizes.bytes as f64 / (1 << 20) as f64
            ),
            base_ns.show(1),
            format!(
                "{} (rule #{}{})",
                last_ns.show(1),
                hit_index + 1,
                if hit_index + 1 == n { ", the last" } else { "" }
            ),
            none.map_or("every packet matches a rule".into(), |(t, _, _)| t.show(1)),
            format!(
                "{} / {}",
                last_ratio.show(2),
                none.map_or("–".into(), |(_, _, r)| r.show(2))
            ),
        ]);
        data.push(json!({
            "rules": n, "compile_s": compile_s, "table_bytes": compiled.sizes.bytes,
            "baseline_ns": base_ns, "last_rule_ns": last_ns, "last_rule_index": hit_index,
            "no_match_ns": none.map(|n| n.0), "last_rule_ratio": last_ratio, "no_match_ratio": none.map(|n| n.2),
        }));
        let est_cell = est.map_or("no allowed TCP flow found".into(), |(e, _, r)| {
            plot_est.push((x, e.median));
            est_ratio = Some((n, r));
            format!("{} = {}×", e.show(1), r.show(2))
        });
        let adm_cell = admitted.map_or("–".into(), |(o, t, r)| {
            format!("{:.0} vs {:.0} = {:.2}×", o.median, t.median, r)
        });
        if let Some((_, _, r)) = refused {
            new_ratio = Some((n, r));
        }
        ct_rows.push(vec![
            n.to_string(),
            est_cell,
            refused.map_or("no refused TCP packet found".into(), |(t, _, r)| {
                format!("{} = {}×", t.show(1), r.show(2))
            }),
            adm_cell,
        ]);
        ct_data.push(json!({
            "rules": n,
            "established": est.map(|(e, b, r)| json!({"ns": e, "baseline_ns": b, "ratio": r})),
            "new_refused": refused.map(|(t, b, r)| json!({"ns": t, "baseline_ns": b, "ratio": r})),
            "new_admitted": admitted.map(|(o, t, r)| json!({"ns": o, "baseline_ns": t, "ratio_of_medians": r})),
        }));
    }

    let figure = "classification.svg";
    std::fs::write(
        out_dir.join(figure),
        line_plot_log_x(
            "ns per packet against rule count (BPF_PROG_TEST_RUN)",
            "rules (log scale)",
            "ns / packet",
            &[
                ("matches last rule".into(), plot_last),
                ("matches nothing".into(), plot_none),
                ("established flow".into(), plot_est),
                ("parse + pass baseline".into(), plot_base),
            ],
        ),
    )?;

    let mut verdicts = Vec::new();
    match (first_last, largest) {
        (Some(small), Some((n, big))) => {
            let r = big / small;
            verdicts.push(Verdict {
                target: "flat classification: ns/packet at 100k rules ≤ 1.15 × at 10 rules".into(),
                measured: if missing.contains(&100_000) || n != 100_000 {
                    format!(
                        "{r:.2}× at {n} rules (the largest size measured; {} did not compile)",
                        missing
                            .iter()
                            .map(|m| m.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                } else {
                    format!("{r:.2}×")
                },
                met: (n == 100_000).then_some(r <= 1.15),
            });
        }
        _ => verdicts.push(Verdict {
            target: "flat classification".into(),
            measured: "no rule set compiled".into(),
            met: None,
        }),
    }
    if let Some((n, r)) = est_ratio {
        verdicts.push(Verdict {
            target: "established-flow packet ≤ 1.5 × parse-and-pass".into(),
            measured: format!("{:.2}× (median, at {n} rules)", r.median),
            met: Some(r.median <= 1.5),
        });
        verdicts.push(Verdict {
            target: "established-flow packet ≤ 3 × parse-and-pass (the lean path)".into(),
            measured: format!("{:.2}× (median, at {n} rules)", r.median),
            met: Some(r.median <= 3.0),
        });
    }
    if let Some((n, r)) = new_ratio {
        verdicts.push(Verdict {
            target: "new-flow packet at 100k rules ≤ 3 × parse-and-pass".into(),
            measured: format!(
                "{:.2}× (median, refused new flow at {n} rules{})",
                r.median,
                if n == 100_000 {
                    ""
                } else {
                    "; 100k not measured"
                }
            ),
            met: (n == 100_000).then_some(r.median <= 3.0),
        });
    }

    let section = Section {
        title: "Classification cost against rule count".into(),
        intro: format!(
            "The real program with real compiled tables (random rules: overlapping v4 and v6 CIDRs, port ranges, protocols; `policy.stateful = false`), BPF_PROG_TEST_RUN with repeat {} and {} rounds, against a program that parses the same headers and returns XDP_PASS, measured in the same rounds. ns per packet, median (min–max).",
            s.repeat, s.rounds
        ),
        columns: ["rules", "compile, tables", "baseline ns", "match last rule ns", "match nothing ns", "ratio to baseline (last / nothing)"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec![
            format!(
                "The verifier processed {} instructions to accept the program (limit 1,000,000).",
                verified.map_or("an unknown number of".into(), |v: u32| v.to_string())
            ),
            "The cost is a fixed number of lookups (prefix tries, port arrays, the L4 key patterns the rule set uses, the verdict hash); larger tables cost more cache misses, not more steps.".into(),
        ],
        figure: Some(figure.into()),
        data: json!(data),
    };
    let conntrack = Section {
        title: "Connection tracking: established and new flows".into(),
        intro: format!(
            "`policy.stateful = true`, same rule sets and baseline. Established: the originator's ACK of a tracked TCP connection (repeat {}). New flow, refused: a SYN no rule allows (conntrack miss, classification, drop; repeat {}). New flow, admitted: {} distinct SYNs of an allowed rule, one run each (classification and conntrack insert), median against the baseline run the same way.",
            s.repeat, s.repeat, s.new_flows
        ),
        columns: ["rules", "established ns = × baseline", "new flow refused ns = × baseline", "new flow admitted (ns vs baseline ns)"]
            .map(String::from)
            .to_vec(),
        rows: ct_rows,
        notes: vec![],
        figure: None,
        data: json!(ct_data),
    };
    let classbench = classbench_section(s, &base, first_last, &mut verdicts)?;
    Ok(Outcome {
        section,
        classbench,
        conntrack,
        verdicts,
    })
}

/// ClassBench-shaped rule sets (acl, fw, ipc): compile time, rule groups,
/// memory estimate, ns per packet of a new flow's packet matching a rule
/// (the latest-matching probe found) and matching nothing, against the
/// random 10-rule set's cost measured above (`small_ns`).
fn classbench_section(
    s: &Settings,
    base: &Baseline,
    small_ns: Option<f64>,
    verdicts: &mut Vec<Verdict>,
) -> Result<Section> {
    let mut rows = Vec::new();
    let mut data = Vec::new();
    let mut worst_at_100k: Option<(f64, &str)> = None;
    for &n in &s.classbench_sizes {
        for shape in Shape::ALL {
            eprintln!("bench: classification, ClassBench {} {n}", shape.name());
            let mut rng = Rng::new(0xc1a55 ^ n as u64);
            let rules = ClassBench::new(shape, &mut rng, n).rules(&mut rng, n);
            let started = Instant::now();
            let compiled = match compile(&rules, &policy()) {
                Ok(c) => c,
                Err(e) => {
                    rows.push(vec![
                        shape.name().into(),
                        n.to_string(),
                        format!("does not compile: {e}"),
                        "–".into(),
                        "–".into(),
                        "–".into(),
                    ]);
                    data.push(json!({"shape": shape.name(), "rules": n, "error": e.to_string()}));
                    continue;
                }
            };
            let compile_s = started.elapsed().as_secs_f64();
            let packets = RuleGen::new(&mut rng, 1000);
            let Probes {
                hit,
                hit_index,
                nothing,
                ..
            } = probe_packets(&packets, &mut rng, &rules);
            let hit_action = if rules[hit_index].action == Action::Allow {
                XDP_PASS
            } else {
                XDP_DROP
            };
            let dp = DataPath::load(&compiled, 1, &|_| None)?;
            let (hit_ns, _, hit_ratio) = measure(&dp, base, &frame_for(&hit), s, hit_action)?;
            let none = match &nothing {
                Some(p) => Some(measure(&dp, base, &frame_for(p), s, XDP_DROP)?),
                None => None,
            };
            drop(dp);
            let to_small = small_ns.map(|small| hit_ns.median / small);
            if n == 100_000 {
                if let Some(r) = to_small {
                    if worst_at_100k.is_none_or(|(w, _)| r > w) {
                        worst_at_100k = Some((r, shape.name()));
                    }
                }
            }
            rows.push(vec![
                shape.name().into(),
                n.to_string(),
                format!(
                    "{compile_s:.2} s, {} group{}, {:.1} MiB",
                    compiled.sizes.rule_groups,
                    if compiled.sizes.rule_groups == 1 {
                        ""
                    } else {
                        "s"
                    },
                    compiled.sizes.bytes as f64 / (1 << 20) as f64
                ),
                format!("{} (rule #{})", hit_ns.show(1), hit_index + 1),
                none.map_or("every packet matches a rule".into(), |(t, _, _)| t.show(1)),
                format!(
                    "{} / {}",
                    hit_ratio.show(2),
                    to_small.map_or("–".into(), |r| format!("{r:.2}×"))
                ),
            ]);
            data.push(json!({
                "shape": shape.name(), "rules": n, "compile_s": compile_s,
                "rule_groups": compiled.sizes.rule_groups, "table_bytes": compiled.sizes.bytes,
                "match_ns": hit_ns, "match_index": hit_index, "no_match_ns": none.map(|n| n.0),
                "to_baseline": hit_ratio, "to_10_rules": to_small,
            }));
        }
    }
    if s.classbench_sizes.contains(&100_000) {
        verdicts.push(Verdict {
            target: "new-flow packet at 100,000 rules ≤ 1.5 × at 10 rules (ClassBench shapes, BPF_PROG_TEST_RUN)".into(),
            measured: worst_at_100k.map_or("not measured (did not compile)".into(), |(r, shape)| {
                format!("{r:.2}× (the worst shape, {shape})")
            }),
            met: worst_at_100k.map(|(r, _)| r <= 1.5),
        });
    }
    Ok(Section {
        title: "Classification cost of ClassBench-shaped rule sets".into(),
        intro: format!(
            "Rule sets shaped like ClassBench's acl1, fw1 and ipc1 seeds (`nva::classifier::rulegen::classbench`: protocols, port-pair classes, ranges and exact ports, prefix-length pairs from the seed files), compiled and measured like the random sets above (BPF_PROG_TEST_RUN, repeat {}, {} rounds). ns per packet of a new flow's packet (`policy.stateful = false`), median (min–max); the last column divides by the parse-and-pass baseline and by the random 10-rule set's last-rule cost.",
            s.repeat, s.rounds
        ),
        columns: ["shape", "rules", "compile, rule groups, tables", "match a rule ns", "match nothing ns", "ratio to baseline / to 10 rules"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec!["Large sets whose address pairs would cross wide with narrow prefixes are split into rule groups (up to 4), each joined on its own classes: a packet pays one more pair and verdict lookup chain per group in use.".into()],
        figure: None,
        data: json!(data),
    })
}
