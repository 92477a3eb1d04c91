use super::*;
use crate::classifier::rulegen::{Rng, RuleGen};
use crate::policy::model::{Cidr, ManagementPort, PortRange};
use proptest::prelude::*;

fn policy() -> PolicySettings {
    PolicySettings {
        management: vec![ManagementPort {
            proto: Proto::Tcp,
            port: 22,
        }],
        ..PolicySettings::with_default(Action::Drop)
    }
}

fn check_agreement(seed: u64, n_rules: usize, n_packets: usize) {
    let mut rng = Rng::new(seed);
    let gen = RuleGen::new(&mut rng, n_rules);
    let rules = gen.rules(&mut rng, n_rules);
    let compiled = compile(&rules, &policy()).expect("compiles");
    let model = compiled.model();
    let mut matched = 0;
    for _ in 0..n_packets {
        let pkt = gen.packet(&mut rng, &rules);
        let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
        let got = model.lookup(&pkt);
        assert_eq!(
            got, want,
            "seed {seed}: packet {pkt:?}: compiled says {got}, linear says {want}"
        );
        matched += (want != NO_RULE) as usize;
    }
    // The generator must exercise rules, not only the default.
    assert!(
        matched * 4 > n_packets,
        "seed {seed}: only {matched} of {n_packets} packets matched a rule"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn compiled_tables_agree_with_linear_first_match(seed in any::<u64>(), n in 50usize..400) {
        check_agreement(seed, n, 600);
    }
}

#[test]
fn empty_rule_set_has_no_match() {
    let c = compile(&[], &policy()).unwrap();
    let pkt = PacketView {
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        proto: 6,
        sport: 1,
        dport: 2,
        icmp_type: 0,
        iface: None,
    };
    assert_eq!(c.model().lookup(&pkt), NO_RULE);
}

#[test]
fn catch_all_shadows_later_rules() {
    let mut web = Rule::any("web", Action::Allow);
    web.proto = Proto::Tcp;
    web.dport = vec![PortRange { lo: 80, hi: 80 }];
    let rules = vec![Rule::any("all", Action::Drop), web];
    let c = compile(&rules, &policy()).unwrap();
    assert_eq!(c.catch_all_rule, 0);
    assert!(c.verdicts.is_empty() && c.pairs.is_empty() && c.l4.is_empty());
}

#[test]
fn port_ranges_cost_one_entry_each() {
    let mut r = Rule::any("range", Action::Allow);
    r.proto = Proto::Tcp;
    r.dport = vec![PortRange {
        lo: 1000,
        hi: 60000,
    }];
    let c = compile(&[r], &policy()).unwrap();
    // Two classes for the dport slot: inside and outside the range.
    assert_eq!(c.sizes.port_classes, 4 + 1);
    assert_eq!(
        c.port_class[(PORT_SLOT_TCP_DPORT * 65_536 + 999) as usize],
        c.port_class[(PORT_SLOT_TCP_DPORT * 65_536 + 60001) as usize]
    );
    assert_ne!(
        c.port_class[(PORT_SLOT_TCP_DPORT * 65_536 + 1000) as usize],
        c.port_class[(PORT_SLOT_TCP_DPORT * 65_536 + 999) as usize]
    );
}

/// Sizes and compile time for 1k random rules (printed for the record; run
/// with --nocapture), and agreement on a sample.
#[test]
fn thousand_random_rules_compile() {
    let mut rng = Rng::new(1_000);
    let gen = RuleGen::new(&mut rng, 1_000);
    let rules = gen.rules(&mut rng, 1_000);
    let started = std::time::Instant::now();
    let c = compile(&rules, &policy()).expect("1k rules compile");
    eprintln!(
        "1k random rules: compiled in {:?}: {}",
        started.elapsed(),
        c.sizes
    );
    let model = c.model();
    for _ in 0..2_000 {
        let pkt = gen.packet(&mut rng, &rules);
        let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
        assert_eq!(model.lookup(&pkt), want);
    }
}

/// Sizes and compile time for 10k random rules (printed for the record; run
/// with --nocapture), and agreement on a sample.
#[test]
fn ten_thousand_random_rules_compile() {
    let mut rng = Rng::new(10_000);
    let gen = RuleGen::new(&mut rng, 10_000);
    let rules = gen.rules(&mut rng, 10_000);
    let started = std::time::Instant::now();
    let c = compile(&rules, &policy()).expect("10k rules compile");
    eprintln!(
        "10k random rules: compiled in {:?}: {}",
        started.elapsed(),
        c.sizes
    );
    assert!(c.sizes.bytes <= TABLE_BUDGET_BYTES);
    let model = c.model();
    for _ in 0..2_000 {
        let pkt = gen.packet(&mut rng, &rules);
        let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
        assert_eq!(model.lookup(&pkt), want);
    }
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr::new(a.parse().unwrap(), l.parse().unwrap())
}

/// A rule specific in both addresses, followed by thousands of host pairs
/// nested inside it: joined whole, it would cross every source class with
/// every destination class (16.8 million pairs; rule groups do not help,
/// a /20 is not wide).
fn broad_rule_over_host_pairs() -> Vec<Rule> {
    let mut broad = Rule::any("broad", Action::Drop);
    broad.src = vec![cidr("10.1.0.0/20")];
    broad.dst = vec![cidr("10.2.0.0/20")];
    let mut rules = vec![broad];
    for i in 0..4_096u32 {
        let mut r = Rule::any(&format!("host-pair-{i}"), Action::Allow);
        r.src = vec![cidr(&format!("10.1.{}.{}/32", i / 256, i % 256))];
        r.dst = vec![cidr(&format!("10.2.{}.{}/32", i / 256, i % 256))];
        rules.push(r);
    }
    rules
}

/// The broad rule leaves its source to a check and is joined on its
/// destination alone: a few thousand entries instead of 16.8 million, and
/// first match as the linear reference (the broad rule first, for host
/// pairs too, and for addresses inside it that no host pair names).
#[test]
fn a_broad_rule_over_host_pairs_is_checked_not_crossed() {
    let rules = broad_rule_over_host_pairs();
    let c = compile(&rules, &policy()).expect("compiles");
    assert_eq!(c.sizes.checked_rules, 1, "{}", c.sizes);
    assert!(c.pairs.len() <= 4_096, "{}", c.sizes);
    let model = c.model();
    let mut rng = Rng::new(5);
    for _ in 0..3_000 {
        let host = |net: u32, rng: &mut Rng| {
            IpAddr::V4(std::net::Ipv4Addr::from(net | rng.below(1 << 13) as u32))
        };
        let pkt = PacketView {
            src: host(0x0a01_0000, &mut rng),
            dst: host(0x0a02_0000, &mut rng),
            proto: [6, 17, 1][rng.below(3) as usize],
            sport: 1_000,
            dport: 80,
            icmp_type: 8,
            iface: None,
        };
        let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
        assert_eq!(model.lookup(&pkt), want, "{pkt:?}");
    }
}

/// Past the budget the compiler refuses clearly, quickly (before building
/// the pairs) and with the rule count, instead of exhausting memory: the
/// same rule set with no field left to checks.
#[test]
fn over_budget_rule_set_is_refused_with_a_clear_error() {
    let rules = broad_rule_over_host_pairs();
    let started = std::time::Instant::now();
    let err = compile_without_checks(&rules, &policy()).expect_err("over budget");
    assert!(matches!(err, CompileError::OverBudget { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("rule set of 4097 rules too large"), "{text}");
    assert!(
        text.contains("the address pair table needs more than 64 MiB"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

/// Every rule specific in both addresses leaving its wider side to checks,
/// and every rule naming ports leaving them to checks when they cross
/// anything: random rule sets agree with linear first match.
#[test]
fn rule_checks_agree_with_linear_first_match() {
    for seed in 1..=16u64 {
        let mut rng = Rng::new(seed * 41);
        let n = 50 + rng.below(700) as usize;
        let gen = RuleGen::new(&mut rng, n);
        let rules = gen.rules(&mut rng, n);
        let compiled = compile_with_checks(&rules, &policy()).expect("compiles");
        assert!(compiled.sizes.checked_rules > n / 4, "{}", compiled.sizes);
        assert!(compiled.verdicts.values().any(|v| v.checks != 0));
        let matched = agree_on_probes(&rules, &compiled, seed, 1_500);
        assert!(matched * 4 > 1_500, "seed {seed}: {matched} matched");
    }
}

/// Branch networks to one data centre: 40 rules over the same destination
/// /8, each from a branch /16 under which 20 host rules lie. Each branch
/// rule would leave its source to checks, and all 40 would crowd the
/// checks of one verdict entry: they are given back to the join (40 x 21
/// pairs), which agrees with linear first match.
#[test]
fn crowded_checks_are_given_back_to_the_join() {
    let mut rules = Vec::new();
    for k in 0..40u32 {
        let mut r = Rule::any(&format!("branch-{k}"), Action::Allow);
        r.src = vec![cidr(&format!("10.{k}.0.0/16"))];
        r.dst = vec![cidr("20.0.0.0/8")];
        r.proto = Proto::Tcp;
        r.dport = vec![PortRange { lo: 443, hi: 443 }];
        rules.push(r);
    }
    for k in 0..40u32 {
        for j in 0..20u32 {
            let mut r = Rule::any(&format!("host-{k}-{j}"), Action::Drop);
            r.src = vec![cidr(&format!("10.{k}.0.{j}/32"))];
            r.dst = vec![cidr(&format!("30.0.{k}.{j}/32"))];
            rules.push(r);
        }
    }
    let c = compile(&rules, &policy()).expect("compiles");
    let most = c
        .verdicts
        .values()
        .map(|v| v.checks & RULE_CHECKS_MAX)
        .max()
        .unwrap_or(0);
    assert!(most <= CHECKS_PER_VERDICT, "{most} checks in one entry");
    let model = c.model();
    let mut rng = Rng::new(9);
    for _ in 0..2_000 {
        let k = rng.below(42) as u32;
        let pkt = PacketView {
            src: IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a00_0000 | k << 16 | rng.below(24) as u32,
            )),
            dst: IpAddr::V4(std::net::Ipv4Addr::from(
                [0x1400_0000, 0x1e00_0000][rng.below(2) as usize] | k << 8 | rng.below(24) as u32,
            )),
            proto: 6,
            sport: 1_000,
            dport: [443, 80][rng.below(2) as usize],
            icmp_type: 0,
            iface: None,
        };
        let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
        assert_eq!(model.lookup(&pkt), want, "{pkt:?}");
    }
}

/// Rule sets of address prefixes only (block and allow lists, either side,
/// both actions, nested prefixes, sometimes a catch-all at the end) take the
/// short path, and it agrees with linear first match.
#[test]
fn prefix_only_rule_sets_take_the_short_path_and_agree_with_linear_first_match() {
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed * 104_729);
        let n = 1 + rng.below(300) as usize;
        let gen = RuleGen::new(&mut rng, n);
        // Odd seeds: three lengths per family, which the hash table holds.
        let few_lengths = seed % 2 == 1;
        let mut rules = if few_lengths {
            gen.prefix_rules_of_few_lengths(&mut rng, n)
        } else {
            gen.prefix_rules(&mut rng, n)
        };
        if seed % 4 == 0 {
            rules.push(Rule::any("all", Action::Allow));
            rules.extend(gen.prefix_rules(&mut rng, 5));
        }
        let c = compile(&rules, &policy()).expect("compiles");
        assert_ne!(c.prefix_rules, 0, "seed {seed}: short path");
        assert!(c.sizes.prefix_rules);
        if few_lengths {
            assert!(c.sizes.prefixes_hashed, "seed {seed}: hashed");
        }
        assert!(c.pairs.is_empty() && c.l4.is_empty() && c.verdicts.is_empty());
        let model = c.model();
        let mut matched = 0;
        for _ in 0..1_000 {
            let pkt = gen.packet(&mut rng, &rules);
            let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
            assert_eq!(model.lookup(&pkt), want, "seed {seed}: {pkt:?}");
            matched += (want != NO_RULE) as usize;
        }
        assert!(matched > 250, "seed {seed}: only {matched} matched");
    }
}

#[test]
fn a_rule_naming_more_than_one_address_side_keeps_the_general_path() {
    let cidr = |s: &str| Cidr::parse(s).unwrap();
    let mut block = Rule::any("block", Action::Drop);
    block.dst = vec![cidr("192.0.2.0/24")];
    let mut web = Rule::any("web", Action::Allow);
    web.proto = Proto::Tcp;
    web.dst = vec![cidr("198.51.100.0/24")];
    let mut pair = Rule::any("pair", Action::Allow);
    pair.src = vec![cidr("10.0.0.0/8")];
    pair.dst = vec![cidr("10.0.0.0/8")];
    assert_ne!(
        compile(&[block.clone()], &policy()).unwrap().prefix_rules,
        0
    );
    for other in [web, pair] {
        let c = compile(&[block.clone(), other], &policy()).unwrap();
        assert_eq!(c.prefix_rules, 0);
    }
}

/// A prefix inside one that already maps to the same first rule adds no
/// entry; one whose own rule comes first does.
#[test]
fn short_path_tables_keep_only_prefixes_that_change_the_first_rule() {
    let cidr = |s: &str| Cidr::parse(s).unwrap();
    let rule = |name: &str, action, prefixes: &[&str]| {
        let mut r = Rule::any(name, action);
        r.dst = prefixes.iter().map(|p| cidr(p)).collect();
        r
    };
    let rules = vec![
        rule("wide", Action::Drop, &["10.0.0.0/8"]),
        rule("inside", Action::Allow, &["10.1.0.0/16", "192.0.2.0/24"]),
        rule("early", Action::Drop, &["192.0.2.128/25"]),
    ];
    let c = compile(&rules, &policy()).unwrap();
    assert_eq!(c.prefix_rules, PREFIX_RULES_DST | PREFIX_RULES_HASHED);
    let mut entries: Vec<(String, u32)> = c
        .prefix_hash
        .iter()
        .map(|(key, rule)| {
            let addr = std::net::Ipv4Addr::from((key.addr[0] >> 32) as u32);
            (format!("{addr}/{}", key.len), *rule)
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec![
            ("10.0.0.0/8".to_string(), 0),
            ("192.0.2.0/24".to_string(), 1)
        ],
        "10.1.0.0/16 and 192.0.2.128/25 add nothing: their first rule is the enclosing one's"
    );
    assert_eq!(
        &c.prefix_lens[..4],
        &[NO_PREFIX_LEN; 4],
        "no source prefixes"
    );
    assert_eq!(
        &c.prefix_lens[prefix_table_index(true, false) * PREFIX_HASH_LENS..][..3],
        &[24, 8, NO_PREFIX_LEN],
        "destination lengths in use, longest first"
    );
}

/// More prefix lengths than the hash table takes: the tries.
#[test]
fn many_prefix_lengths_keep_the_tries() {
    let rules: Vec<Rule> = [8u8, 12, 16, 20, 24]
        .iter()
        .map(|&len| Rule {
            // Disjoint prefixes (a nested one could be left out).
            dst: vec![Cidr::new(format!("{len}.0.0.0").parse().unwrap(), len)],
            ..Rule::any(&format!("len-{len}"), Action::Drop)
        })
        .collect();
    let c = compile(&rules, &policy()).unwrap();
    assert_eq!(c.prefix_rules, PREFIX_RULES_DST);
    assert!(c.prefix_hash.is_empty());
    assert_eq!(c.dst_v4.len(), 5);
}

/// More prefixes than a prefix table holds: refused up front with the rule
/// count and the capacity, not half-written into the kernel.
#[test]
fn a_block_list_beyond_the_prefix_capacity_is_refused_with_its_figures() {
    let n = CAPACITY_PREFIXES as usize + 1;
    let block = Rule {
        // Five lengths, so the tries (the hash table has no fixed capacity).
        dst: (0..n as u32)
            .map(|i| Cidr::new(std::net::IpAddr::V4((i << 8).into()), 24 + (i % 5) as u8))
            .collect(),
        ..Rule::any("block", Action::Drop)
    };
    let err = compile(&[block], &policy()).expect_err("over capacity");
    assert_eq!(
        err.to_string(),
        format!(
            "rule set of 1 rules too large: the IPv4 destination prefix table needs {n} prefixes, more than its capacity of {CAPACITY_PREFIXES}"
        )
    );
}

/// Past `HASHED_PREFIXES_MAX` prefixes the tries hold them, whatever the
/// lengths: a trie node takes about a third of a hash element's memory.
#[test]
fn large_block_lists_keep_the_tries() {
    let n = HASHED_PREFIXES_MAX as u32 + 1;
    let block = Rule {
        dst: (0..n)
            .map(|i| Cidr::new(std::net::IpAddr::V4((i << 8).into()), 24))
            .collect(),
        ..Rule::any("block", Action::Drop)
    };
    let c = compile(&[block], &policy()).unwrap();
    assert_eq!(c.prefix_rules, PREFIX_RULES_DST);
    assert_eq!(c.dst_v4.len(), n as usize);
    let c = compile(
        &[Rule {
            dst: (0..n - 1)
                .map(|i| Cidr::new(std::net::IpAddr::V4((i << 8).into()), 24))
                .collect(),
            ..Rule::any("block", Action::Drop)
        }],
        &policy(),
    )
    .unwrap();
    assert_eq!(c.prefix_rules, PREFIX_RULES_DST | PREFIX_RULES_HASHED);
}

/// Agreement with linear first match on `probes` packets aimed at the rules
/// (and some at nothing); returns how many matched a rule.
fn agree_on_probes(rules: &[Rule], compiled: &CompiledRuleSet, seed: u64, probes: usize) -> usize {
    let mut rng = Rng::new(seed);
    let packets = RuleGen::new(&mut rng, 1_000);
    let model = compiled.model();
    let mut matched = 0;
    for _ in 0..probes {
        let pkt = packets.packet(&mut rng, rules);
        let want = linear_first_match(rules, &pkt).map_or(NO_RULE, |i| i as u32);
        assert_eq!(model.lookup(&pkt), want, "seed {seed}: packet {pkt:?}");
        matched += (want != NO_RULE) as usize;
    }
    matched
}

/// ClassBench-shaped rule sets (acl, fw, ipc) of 1,000 and 10,000 rules
/// compile and agree with linear first match.
#[test]
fn classbench_shapes_agree_with_linear_first_match() {
    use crate::classifier::rulegen::classbench::{ClassBench, Shape};
    for shape in Shape::ALL {
        for (n, probes) in [(1_000usize, 3_000usize), (10_000, 600)] {
            let seed = n as u64 + shape as u64;
            let mut rng = Rng::new(seed);
            let rules = ClassBench::new(shape, &mut rng, n).rules(&mut rng, n);
            let compiled =
                compile(&rules, &policy()).unwrap_or_else(|e| panic!("{} {n}: {e}", shape.name()));
            assert_eq!(compiled.prefix_rules, 0, "the general path");
            let matched = agree_on_probes(&rules, &compiled, seed, probes);
            assert!(
                matched * 2 > probes,
                "{} {n}: {matched} of {probes} matched",
                shape.name()
            );
        }
    }
}

/// 100,000 rules of each ClassBench shape compile within the budgets
/// (joined whole, acl's and ipc's pairs would take 1.9 GiB and 104 MiB:
/// their rules with wide prefixes on both sides leave one to checks);
/// sampled probes agree with linear first match.
#[test]
fn classbench_shapes_of_100k_rules_compile_and_agree() {
    use crate::classifier::rulegen::classbench::{ClassBench, Shape};
    let n = 100_000;
    for shape in Shape::ALL {
        let mut rng = Rng::new(n as u64);
        let rules = ClassBench::new(shape, &mut rng, n).rules(&mut rng, n);
        let compiled =
            compile(&rules, &policy()).unwrap_or_else(|e| panic!("{}: {e}", shape.name()));
        assert!(compiled.sizes.bytes <= TABLE_BUDGET_BYTES);
        if shape != Shape::Fw {
            assert!(
                compiled.sizes.checked_rules > 0,
                "{}: {}",
                shape.name(),
                compiled.sizes
            );
        }
        let matched = agree_on_probes(&rules, &compiled, n as u64, 300);
        assert!(matched > 150, "{}: {matched} of 300 matched", shape.name());
    }
}

/// Rule groups keep first-match order across groups: random rule sets
/// forced into groups agree with linear first match.
#[test]
fn rule_groups_agree_with_linear_first_match() {
    for seed in 1..=12u64 {
        let mut rng = Rng::new(seed * 31);
        let n = 200 + rng.below(600) as usize;
        let gen = RuleGen::new(&mut rng, n);
        let rules = gen.rules(&mut rng, n);
        let compiled = compile_in_groups(&rules, &policy()).expect("compiles");
        assert!(compiled.sizes.rule_groups > 1, "seed {seed}");
        let matched = agree_on_probes(&rules, &compiled, seed, 1_500);
        assert!(matched * 4 > 1_500, "seed {seed}: {matched} matched");
    }
}

/// IPv4 range arrays in place of the tries keep first-match order: random
/// rule sets forced onto ranges on both sides agree with linear first
/// match (prefixes from /8 to /32, nested and overlapping).
#[test]
fn v4_ranges_agree_with_linear_first_match() {
    for seed in 1..=12u64 {
        let mut rng = Rng::new(seed * 37);
        let n = 100 + rng.below(700) as usize;
        let gen = RuleGen::new(&mut rng, n);
        let rules = gen.rules(&mut rng, n);
        let compiled = compile_with_v4_ranges(&rules, &policy()).expect("compiles");
        assert_eq!(compiled.v4_ranges, V4_RANGES_SRC | V4_RANGES_DST);
        assert!(compiled.src_v4.is_empty() && compiled.dst_v4.is_empty());
        let matched = agree_on_probes(&rules, &compiled, seed, 1_500);
        assert!(matched * 4 > 1_500, "seed {seed}: {matched} matched");
    }
}

/// A side takes the range arrays from `RANGES_FROM_PREFIXES` IPv4 prefixes
/// on, and keeps its trie below. Its table holds the rules' prefixes and
/// 0.0.0.0/0 (the class of addresses no rule names).
#[test]
fn ipv4_sides_take_ranges_from_their_threshold() {
    for (prefixes, expected) in [
        (RANGES_FROM_PREFIXES - 1, 0),
        (RANGES_FROM_PREFIXES, V4_RANGES_SRC),
    ] {
        let rules: Vec<Rule> = (0..prefixes as u32 - 1)
            .map(|i| Rule {
                proto: Proto::Tcp,
                src: vec![Cidr::new(
                    IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 4)),
                    30,
                )],
                dport: vec![PortRange { lo: 80, hi: 80 }],
                ..Rule::any(&format!("r{i}"), Action::Allow)
            })
            .collect();
        let compiled = compile(&rules, &policy()).expect("compiles");
        assert_eq!(
            compiled.v4_ranges, expected,
            "{prefixes} prefixes: {}",
            compiled.sizes
        );
        let on_ranges = if expected == 0 { 0 } else { prefixes };
        assert_eq!(compiled.sizes.ranged_prefixes, on_ranges);
        assert_eq!(compiled.src_v4.len(), prefixes - on_ranges);
    }
}

/// 100,000 random rules compile within the memory budget (rules whose
/// prefixes or ports would cross many classes leave them to checks:
/// refused before), and sampled probes agree with linear first match.
#[test]
fn random_100k_rules_compile_and_agree() {
    let n = 100_000;
    let mut rng = Rng::new(n as u64);
    let gen = RuleGen::new(&mut rng, n);
    let rules = gen.rules(&mut rng, n);
    let compiled = compile(&rules, &policy()).unwrap_or_else(|e| panic!("{e}"));
    assert!(compiled.sizes.bytes <= TABLE_BUDGET_BYTES);
    assert!(compiled.sizes.checked_rules > 0, "{}", compiled.sizes);
    let matched = agree_on_probes(&rules, &compiled, n as u64, 600);
    assert!(matched > 200, "{matched} of 600 matched");
}

/// The class arrays pack each slot's class of a port (or ICMP type) into
/// one entry, and the program's `class_lane` reads each back.
#[test]
fn class_lanes_hold_each_slots_class() {
    let mut rng = Rng::new(7);
    let slices: Vec<u32> = (0..4 * 1000).map(|_| rng.below(65_536) as u32).collect();
    let packed = super::class_lanes(&slices, 1000);
    assert_eq!(packed.len(), 1000);
    for (e, entry) in packed.iter().enumerate() {
        for slot in 0..4 {
            assert_eq!(
                nva_common::class_lane(*entry, slot),
                slices[slot as usize * 1000 + e],
                "entry {e} slot {slot}"
            );
        }
    }
}
