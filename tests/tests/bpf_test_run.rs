//! The real XDP program, loaded into the kernel, fed crafted frames through
//! BPF_PROG_TEST_RUN: verdicts, drop reasons and counters.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use nva::classifier::compiler::{
    compile, compile_in_groups, compile_with_checks, compile_with_v4_ranges, linear_first_match,
};
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{Rng, RuleGen};
use nva::datapath::DataPath;
use nva::policy::model::{Action, ManagementPort, PolicySettings, PortRange, Proto, Rule};
use nva_common::{PacketReason, NO_RULE, PROTO_TCP, V4_RANGE_BLOCKS, V4_RANGE_SUBDIR};
use nva_tests::frames::*;
use nva_tests::test_run::{run, XDP_DROP, XDP_PASS};
use nva_tests::{in_private_netns, require_root};

fn policy(default: Action, fragments_allow: bool) -> PolicySettings {
    PolicySettings {
        fragments_allow,
        management: vec![ManagementPort {
            proto: Proto::Tcp,
            port: 22,
        }],
        ..PolicySettings::with_default(default)
    }
}

fn tcp_rule(name: &str, dst: &[&str], dport: u16) -> Rule {
    let mut r = Rule::any(name, Action::Allow);
    r.proto = Proto::Tcp;
    r.dst = dst
        .iter()
        .map(|c| {
            let (a, l) = c.split_once('/').unwrap();
            nva::policy::model::Cidr::new(a.parse().unwrap(), l.parse().unwrap())
        })
        .collect();
    r.dport = vec![PortRange {
        lo: dport,
        hi: dport,
    }];
    r
}

fn fixed_rules() -> Vec<Rule> {
    let web = tcp_rule("web", &["10.0.0.0/8", "fd00::/8"], 80);
    let mut dns = Rule::any("dns", Action::Allow);
    dns.proto = Proto::Udp;
    dns.dport = vec![PortRange { lo: 53, hi: 53 }];
    let mut ping = Rule::any("ping", Action::Allow);
    ping.proto = Proto::Icmp;
    ping.icmp_type = vec![8];
    let mut ping6 = Rule::any("ping6", Action::Allow);
    ping6.proto = Proto::Icmpv6;
    ping6.icmp_type = vec![128];
    let mut block = tcp_rule("block-8080", &[], 8080);
    block.action = Action::Drop;
    vec![web, dns, ping, ping6, block]
}

fn v4(a: &str) -> Ipv4Addr {
    a.parse().unwrap()
}
fn v6(a: &str) -> Ipv6Addr {
    a.parse().unwrap()
}

fn v4_tcp(dport: u16) -> Vec<u8> {
    ipv4(
        v4("192.0.2.1"),
        v4("10.1.2.3"),
        6,
        &[],
        0,
        &tcp(40000, dport, nva_common::TCP_SYN),
    )
}

fn v6_tcp_with_exts(dport: u16) -> Vec<u8> {
    // hop-by-hop -> routing -> destination options -> TCP
    let l4 = tcp(40000, dport, nva_common::TCP_SYN);
    let exts = ipv6_opts_ext(
        0,
        &ipv6_opts_ext(43, &ipv6_opts_ext(60, &ipv6_opts_ext(6, &l4))),
    );
    // The outer header's next header is hop-by-hop (0); the first ext names 43.
    let exts = exts[8..].to_vec();
    ipv6(v6("2001:db8::1"), v6("fd00::80"), 0, &exts)
}

#[test]
fn crafted_frames_get_expected_verdicts_and_reasons() {
    require_root();
    in_private_netns(&[], |_| {
        let rules = fixed_rules();
        let compiled = compile(&rules, &policy(Action::Drop, false)).unwrap();
        let mut dp = DataPath::load(&compiled, 1, &|_| None).unwrap();
        // The NVA's own address: management traffic must be addressed to it.
        dp.set_local_addrs(&["192.0.2.2".parse().unwrap()]).unwrap();
        let cases: Vec<(&str, Vec<u8>, u32, PacketReason)> = vec![
            (
                "v4 tcp/80",
                ethernet(&[], ETH_P_IP, &v4_tcp(80)),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "v4 tcp/81",
                ethernet(&[], ETH_P_IP, &v4_tcp(81)),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "v4 tcp/8080 drop rule",
                ethernet(&[], ETH_P_IP, &v4_tcp(8080)),
                XDP_DROP,
                PacketReason::DropRule,
            ),
            (
                "vlan",
                ethernet(&[(ETH_P_8021Q, 10)], ETH_P_IP, &v4_tcp(80)),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "qinq",
                ethernet(
                    &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
                    ETH_P_IP,
                    &v4_tcp(80),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "qinq default",
                ethernet(
                    &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
                    ETH_P_IP,
                    &v4_tcp(81),
                ),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "three tags",
                ethernet(
                    &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2), (ETH_P_8021Q, 3)],
                    ETH_P_IP,
                    &v4_tcp(80),
                ),
                XDP_DROP,
                PacketReason::DropVlanTooDeep,
            ),
            (
                "v4 options",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        v4("192.0.2.1"),
                        v4("10.1.2.3"),
                        6,
                        &[1, 1, 1, 0, 7, 3, 4, 0, 1, 1, 1, 0],
                        0,
                        &tcp(1, 80, 2),
                    ),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "v4 options default",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        v4("192.0.2.1"),
                        v4("10.1.2.3"),
                        6,
                        &[1, 1, 1, 0],
                        0,
                        &tcp(1, 81, 2),
                    ),
                ),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "v4 first fragment",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        v4("192.0.2.1"),
                        v4("10.1.2.3"),
                        6,
                        &[],
                        0x2000,
                        &tcp(1, 80, 2),
                    ),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "v4 later fragment",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(v4("192.0.2.1"), v4("10.1.2.3"), 6, &[], 0x0010, &[0u8; 24]),
                ),
                XDP_DROP,
                PacketReason::DropFragment,
            ),
            (
                "v4 tiny first fragment",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(v4("192.0.2.1"), v4("10.1.2.3"), 6, &[], 0x2000, &[0u8; 8]),
                ),
                XDP_DROP,
                PacketReason::DropMalformedL4,
            ),
            (
                "v6 ext headers",
                ethernet(&[], ETH_P_IPV6, &v6_tcp_with_exts(80)),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "v6 ext headers default",
                ethernet(&[], ETH_P_IPV6, &v6_tcp_with_exts(81)),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "v6 first fragment",
                ethernet(
                    &[],
                    ETH_P_IPV6,
                    &ipv6(
                        v6("2001:db8::1"),
                        v6("fd00::80"),
                        44,
                        &ipv6_fragment_ext(6, 0, true, &tcp(1, 80, 2)),
                    ),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "v6 later fragment",
                ethernet(
                    &[],
                    ETH_P_IPV6,
                    &ipv6(
                        v6("2001:db8::1"),
                        v6("fd00::80"),
                        44,
                        &ipv6_fragment_ext(6, 100, false, &[0u8; 16]),
                    ),
                ),
                XDP_DROP,
                PacketReason::DropFragment,
            ),
            (
                "v6 ext chain too long",
                ethernet(
                    &[],
                    ETH_P_IPV6,
                    &ipv6(
                        v6("2001:db8::1"),
                        v6("fd00::80"),
                        60,
                        &(0..9).fold(tcp(1, 80, 2), |rest, _| ipv6_opts_ext(60, &rest)),
                    ),
                ),
                XDP_DROP,
                PacketReason::DropIpv6ExtTooDeep,
            ),
            (
                "udp/53",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        v4("192.0.2.1"),
                        v4("192.0.2.2"),
                        17,
                        &[],
                        0,
                        &udp(5353, 53, b"q"),
                    ),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "udp/54",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        v4("192.0.2.1"),
                        v4("192.0.2.2"),
                        17,
                        &[],
                        0,
                        &udp(5353, 54, b"q"),
                    ),
                ),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "icmp echo",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(v4("192.0.2.1"), v4("192.0.2.2"), 1, &[], 0, &icmp(8, 0)),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "icmp timestamp",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(v4("192.0.2.1"), v4("192.0.2.2"), 1, &[], 0, &icmp(13, 0)),
                ),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "icmpv6 echo",
                ethernet(
                    &[],
                    ETH_P_IPV6,
                    &ipv6(v6("2001:db8::1"), v6("2001:db8::2"), 58, &icmp(128, 0)),
                ),
                XDP_PASS,
                PacketReason::PassRule,
            ),
            (
                "icmpv6 echo reply",
                ethernet(
                    &[],
                    ETH_P_IPV6,
                    &ipv6(v6("2001:db8::1"), v6("2001:db8::2"), 58, &icmp(129, 0)),
                ),
                XDP_DROP,
                PacketReason::DropDefault,
            ),
            (
                "management tcp/22",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(
                        v4("192.0.2.1"),
                        v4("192.0.2.2"),
                        6,
                        &[],
                        0,
                        &tcp(40000, 22, 2),
                    ),
                ),
                XDP_PASS,
                PacketReason::PassManagement,
            ),
            (
                "arp",
                ethernet(&[], ETH_P_ARP, &[0u8; 28]),
                XDP_PASS,
                PacketReason::PassNonIp,
            ),
            (
                "tcp data offset < 5",
                ethernet(
                    &[],
                    ETH_P_IP,
                    &ipv4(v4("192.0.2.1"), v4("10.1.2.3"), 6, &[], 0, &{
                        let mut t = tcp(1, 80, 2);
                        t[12] = 4 << 4;
                        t
                    }),
                ),
                XDP_DROP,
                PacketReason::DropMalformedL4,
            ),
            (
                "ihl < 5",
                ethernet(&[], ETH_P_IP, &{
                    let mut p = v4_tcp(80);
                    p[0] = 0x44;
                    p
                }),
                XDP_DROP,
                PacketReason::DropMalformedIpv4,
            ),
            (
                "ipv4 version 6 in 0x0800",
                ethernet(&[], ETH_P_IP, &{
                    let mut p = v4_tcp(80);
                    p[0] = 0x65;
                    p
                }),
                XDP_DROP,
                PacketReason::DropMalformedIpv4,
            ),
        ];
        for (name, frame, action, reason) in cases {
            let got = run(&dp, &frame, 0);
            assert_eq!(got, (action, reason), "case {name}");
        }
        // Rule counters: web matched v4 tcp/80 (plain, vlan, qinq, options,
        // first fragment) and v6 (exts, first fragment) = 7 packets.
        let counters = dp.rule_counters(rules.len()).unwrap();
        assert_eq!(counters[0].packets, 7, "web rule packets");
        assert_eq!(counters[4].packets, 1, "block-8080 packets");
        assert!(counters[0].bytes > 7 * 54);
    });
}

#[test]
fn fragment_policy_allow_passes_later_fragments() {
    require_root();
    in_private_netns(&[], |_| {
        let compiled = compile(&fixed_rules(), &policy(Action::Drop, true)).unwrap();
        let dp = DataPath::load(&compiled, 1, &|_| None).unwrap();
        let later = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(v4("192.0.2.1"), v4("10.1.2.3"), 6, &[], 0x0010, &[0u8; 24]),
        );
        assert_eq!(run(&dp, &later, 0), (XDP_PASS, PacketReason::PassFragment));
    });
}

#[test]
fn truncated_frames_are_dropped_at_every_offset() {
    require_root();
    in_private_netns(&[], |_| {
        let compiled = compile(&fixed_rules(), &policy(Action::Allow, false)).unwrap();
        let dp = DataPath::load(&compiled, 1, &|_| None).unwrap();
        let frames = [
            ethernet(
                &[(ETH_P_8021AD, 1), (ETH_P_8021Q, 2)],
                ETH_P_IP,
                &ipv4(
                    v4("192.0.2.1"),
                    v4("10.1.2.3"),
                    6,
                    &[1, 1, 1, 0],
                    0,
                    &tcp(1, 80, 2),
                ),
            ),
            ethernet(&[], ETH_P_IPV6, &v6_tcp_with_exts(80)),
            ethernet(
                &[],
                ETH_P_IP,
                &ipv4(
                    v4("192.0.2.1"),
                    v4("192.0.2.2"),
                    17,
                    &[],
                    0,
                    &udp(1, 53, b""),
                ),
            ),
            ethernet(
                &[],
                ETH_P_IPV6,
                &ipv6(v6("2001:db8::1"), v6("2001:db8::2"), 58, &icmp(128, 0)),
            ),
        ];
        for frame in frames {
            // The full frame passes; every cut (the kernel needs >= 14 bytes)
            // is dropped with a malformed-* reason, never aborted.
            assert_eq!(run(&dp, &frame, 0).0, XDP_PASS);
            for cut in 14..frame.len() {
                let (action, reason) = run(&dp, &frame[..cut], 0);
                assert_eq!(action, XDP_DROP, "cut at {cut} of {}", frame.len());
                assert!(
                    reason.name().starts_with("malformed"),
                    "cut at {cut}: {reason:?}"
                );
            }
        }
    });
}

/// Differential: random rule sets, random packets through the real program;
/// the verdict and the counted rule must be those of linear first match.
/// Seeds 7 to 10 are rule sets of address prefixes only (block and allow
/// lists), which take the short path: through the tries (7, 9) and, with
/// few prefix lengths, through the hash table (8, 10). Seeds 11 to 13 are
/// ClassBench-shaped sets of 1,000 rules (acl, fw, ipc). Seeds 14 and 15
/// are random rule sets compiled into rule groups (which large rule sets
/// take), so that the program's walk over the groups is checked too.
/// Seeds 17 to 19 leave every field they can to rule checks (verdict
/// entries' and L4 wildcards' checks, which the program tests in order);
/// seed 20 is 10,000 random rules, compiled as any (some left to checks).
#[test]
fn real_program_agrees_with_linear_first_match() {
    require_root();
    in_private_netns(&["eth0", "eth1"], |ifindex| {
        let local = nva::datapath::local_addrs();
        for seed in 1..=20u64 {
            let mut rng = Rng::new(seed * 7919);
            let classbench = match seed {
                11 => Some(Shape::Acl),
                12 => Some(Shape::Fw),
                13 | 16 => Some(Shape::Ipc),
                _ => None,
            };
            let n = if seed == 16 || seed == 20 {
                10_000
            } else if classbench.is_some() {
                1_000
            } else {
                100 + rng.below(300) as usize
            };
            let gen = RuleGen::new(&mut rng, n);
            let prefixes_only = (7..=10).contains(&seed);
            let hashed = prefixes_only && seed % 2 == 0;
            let rules = if let Some(shape) = classbench {
                ClassBench::new(shape, &mut rng, n).rules(&mut rng, n)
            } else if hashed {
                gen.prefix_rules_of_few_lengths(&mut rng, n)
            } else if prefixes_only {
                gen.prefix_rules(&mut rng, n)
            } else {
                gen.rules(&mut rng, n)
            };
            let pol = policy(
                if seed % 2 == 0 {
                    Action::Allow
                } else {
                    Action::Drop
                },
                false,
            );
            let in_groups = (14..=16).contains(&seed);
            // Rule checks: forced on every rule they could serve.
            let checks = (17..=19).contains(&seed);
            // IPv4 range arrays instead of tries: forced on small random
            // sets (prefixes from /8 to /32, nested, the search's edges),
            // and on their own for 10,000 ipc rules (sub-directories) and
            // 10,000 random rules.
            let ranges = (4..=6).contains(&seed) || seed == 16 || seed == 20;
            let compiled = if checks {
                compile_with_checks(&rules, &pol).unwrap()
            } else if in_groups {
                compile_in_groups(&rules, &pol).unwrap()
            } else if (4..=6).contains(&seed) {
                compile_with_v4_ranges(&rules, &pol).unwrap()
            } else {
                compile(&rules, &pol).unwrap()
            };
            assert_eq!(compiled.v4_ranges != 0, ranges, "seed {seed}");
            if seed == 16 {
                let subdirs = compiled.src_v4_ranges.entries[..V4_RANGE_BLOCKS as usize]
                    .iter()
                    .filter(|e| (**e >> 32) as u32 >= V4_RANGE_SUBDIR)
                    .count();
                assert!(subdirs > 0, "seed {seed}: blocks with sub-directories");
            }
            assert_eq!(compiled.sizes.rule_groups > 1, in_groups, "seed {seed}");
            if seed == 20 {
                assert!(compiled.sizes.checked_rules > 0, "{}", compiled.sizes);
            }
            if checks {
                assert!(
                    compiled.verdicts.values().any(|v| v.checks != 0)
                        && compiled.l4.values().any(|m| m.wildcard_checks != 0),
                    "seed {seed}: checks in verdicts and L4 wildcards: {}",
                    compiled.sizes
                );
            }
            assert_eq!(compiled.prefix_rules != 0, prefixes_only, "seed {seed}");
            assert_eq!(compiled.sizes.prefixes_hashed, hashed, "seed {seed}");
            let table: HashMap<String, u32> = ifindex.clone();
            let dp = DataPath::load(&compiled, 1, &move |name| table.get(name).copied()).unwrap();
            let mut expected_counts = vec![0u64; rules.len()];
            for _ in 0..300 {
                let pkt = gen.packet(&mut rng, &rules);
                let idx = ifindex[pkt
                    .iface
                    .as_deref()
                    .filter(|n| ifindex.contains_key(*n))
                    .unwrap_or("lo")];
                let management =
                    pkt.proto == PROTO_TCP && pkt.dport == 22 && local.contains(&pkt.dst);
                let want = linear_first_match(&rules, &pkt).map_or(NO_RULE, |i| i as u32);
                let (action, reason) = run(&dp, &frame_for(&pkt), idx);
                let want_reason = if management {
                    PacketReason::PassManagement
                } else if want == NO_RULE {
                    if pol.default == Action::Allow {
                        PacketReason::PassDefault
                    } else {
                        PacketReason::DropDefault
                    }
                } else {
                    expected_counts[want as usize] += 1;
                    if rules[want as usize].action == Action::Allow {
                        PacketReason::PassRule
                    } else {
                        PacketReason::DropRule
                    }
                };
                assert_eq!(reason, want_reason, "seed {seed}: {pkt:?} (rule {want})");
                let _ = action;
            }
            let counts: Vec<u64> = dp
                .rule_counters(rules.len())
                .unwrap()
                .iter()
                .map(|c| c.packets)
                .collect();
            assert_eq!(counts, expected_counts, "seed {seed}: per-rule counters");
        }
    });
}

/// Collects the program's aya-log records.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn a_slot_without_rules_passes_and_says_so_at_most_once_a_second() {
    require_root();
    in_private_netns(&[], |_| {
        // Loaded, nothing installed: the active slot is not ready.
        let mut dp = DataPath::open(None, 1024).unwrap();
        let capture = Capture::default();
        let mut diagnostics = dp
            .take_diagnostics(capture.clone())
            .expect("the program has aya-log diagnostics");
        let frame = ethernet(&[], ETH_P_IP, &v4_tcp(80));
        for _ in 0..50 {
            assert_eq!(run(&dp, &frame, 0).1, PacketReason::PassNotReady);
        }
        diagnostics.flush();
        let records = capture.0.lock().unwrap().clone();
        // One per CPU that ran the frames, within the same second.
        assert!(
            !records.is_empty() && records.len() <= 2,
            "diagnostics for 50 frames: {records:?}"
        );
        assert!(
            records[0].starts_with("WARN")
                && records[0].contains("slot 0 holds no complete rule set"),
            "{records:?}"
        );
    });
}

/// A reload between a block list (the short path) and a general rule set,
/// either way, changes the verdicts at once and completely: the slot's
/// configuration says which tables its lookups read.
#[test]
fn reloads_switch_between_the_short_path_and_the_general_path() {
    require_root();
    in_private_netns(&[], |_| {
        let general = vec![tcp_rule("web", &["10.1.0.0/16"], 80)];
        let mut block = Rule::any("block", Action::Drop);
        block.dst = vec![nva::policy::model::Cidr::new(
            "10.1.2.0".parse().unwrap(),
            24,
        )];
        let blocklist = vec![block, Rule::any("allow-the-rest", Action::Allow)];
        let pol = policy(Action::Drop, false);
        let general = compile(&general, &pol).unwrap();
        let blocklist = compile(&blocklist, &pol).unwrap();
        assert_eq!(general.prefix_rules, 0);
        assert_ne!(blocklist.prefix_rules, 0);
        let web = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(v4("192.0.2.1"), v4("10.1.2.3"), 6, &[], 0, &tcp(1, 80, 2)),
        );
        let other = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(
                v4("192.0.2.1"),
                v4("10.9.9.9"),
                17,
                &[],
                0,
                &udp(1, 53, b""),
            ),
        );
        let mut dp = DataPath::load(&general, 1, &|_| None).unwrap();
        let counters = [0u32, 1];
        for generation in 2..=5u64 {
            let (set, web_reason, other_reason) = if generation % 2 == 0 {
                (&blocklist, PacketReason::DropRule, PacketReason::PassRule)
            } else {
                (&general, PacketReason::PassRule, PacketReason::DropDefault)
            };
            dp.install(set, &Default::default(), generation, &counters, &|_| None)
                .unwrap();
            assert_eq!(run(&dp, &web, 0).1, web_reason, "generation {generation}");
            assert_eq!(
                run(&dp, &other, 0).1,
                other_reason,
                "generation {generation}"
            );
        }
    });
}

/// After every switch the old slot's tries hold nothing, also when a
/// previous process (an agent before its restart) wrote them: a stale
/// prefix would carry a class id of another rule set into the next one.
/// The verdicts of the last set agree with linear first match.
#[test]
fn the_old_slots_tries_are_emptied_after_each_switch_and_after_a_restart() {
    require_root();
    in_private_netns(&[], |_| {
        use aya::maps::lpm_trie::{Key, LpmTrie};
        use nva::datapath::pin::{ensure_bpffs, PinLayout};
        use nva_common::{map_names as names, AddrClass};
        let bpffs =
            std::path::PathBuf::from(format!("/sys/fs/bpf/nva-test-tries-{}", std::process::id()));
        ensure_bpffs(&bpffs).unwrap();
        let pins = PinLayout::new(&bpffs);
        pins.create_dirs().unwrap();
        let pol = policy(Action::Drop, false);
        let sets: Vec<Vec<Rule>> = (0..3u64)
            .map(|seed| {
                let mut rng = Rng::new(7_000 + seed);
                let gen = RuleGen::new(&mut rng, 300);
                gen.rules(&mut rng, 300)
            })
            .collect();
        // The second set on IPv4 ranges: the slots switch between tries
        // and ranges, and the restarted process's last set is on ranges.
        let compiled: Vec<_> = sets
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if i == 1 {
                    compile_with_v4_ranges(r, &pol).unwrap()
                } else {
                    compile(r, &pol).unwrap()
                }
            })
            .collect();
        assert_ne!(compiled[1].v4_ranges, 0);
        let counters: Vec<u32> = (0..300).collect();
        // Prefixes in a slot's four tries.
        let prefixes = |slot: u32| -> usize {
            let mut n = 0;
            for base in [names::SRC_V4, names::DST_V4] {
                let map = nva::datapath::open_pinned(&pins, &format!("{base}_{slot}")).unwrap();
                let trie: LpmTrie<_, [u8; 4], AddrClass> =
                    LpmTrie::try_from(aya::maps::Map::LpmTrie(map)).unwrap();
                n += trie
                    .keys()
                    .collect::<Result<Vec<Key<[u8; 4]>>, _>>()
                    .unwrap()
                    .len();
            }
            for base in [names::SRC_V6, names::DST_V6] {
                let map = nva::datapath::open_pinned(&pins, &format!("{base}_{slot}")).unwrap();
                let trie: LpmTrie<_, [u8; 16], AddrClass> =
                    LpmTrie::try_from(aya::maps::Map::LpmTrie(map)).unwrap();
                n += trie
                    .keys()
                    .collect::<Result<Vec<Key<[u8; 16]>>, _>>()
                    .unwrap()
                    .len();
            }
            n
        };
        let check = |dp: &DataPath, what: &str| {
            let (active, _) = dp.active().unwrap();
            assert!(
                prefixes(active) > 0,
                "{what}: the live slot has its prefixes"
            );
            assert_eq!(
                prefixes(1 - active),
                0,
                "{what}: the old slot's tries are empty"
            );
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            {
                let mut dp = DataPath::open(Some(&pins), 1024).unwrap();
                for (generation, set) in [(1u64, &compiled[0]), (2, &compiled[1])] {
                    dp.install(set, &Default::default(), generation, &counters, &|_| None)
                        .unwrap();
                    check(&dp, &format!("generation {generation}"));
                }
                // Within one process, every prefix is deleted by the key
                // it was written under: the walk finds nothing.
                assert_eq!(
                    dp.prefixes_walked(),
                    0,
                    "the prefixes this process wrote are deleted by key"
                );
            }
            // A new process: the live slot's prefixes were written by the
            // one before, and are cleared after the next switch.
            let mut dp = DataPath::open(Some(&pins), 1024).unwrap();
            for (generation, set) in [(3u64, &compiled[2]), (4, &compiled[0])] {
                dp.install(set, &Default::default(), generation, &counters, &|_| None)
                    .unwrap();
                check(&dp, &format!("generation {generation}, after the restart"));
            }
            // The live slot of the process before was found by walking, once:
            // the second switch clears what this process wrote.
            let walked = dp.prefixes_walked();
            assert!(walked > 0, "the previous process's prefixes were walked");
            dp.install(&compiled[1], &Default::default(), 5, &counters, &|_| None)
                .unwrap();
            check(&dp, "generation 5, after the restart");
            assert_eq!(
                dp.prefixes_walked(),
                walked,
                "after the restart, the prefixes this process wrote are deleted by key"
            );
            // Deleting keys that are mostly missing (what a clear after a
            // failed write meets) deletes those that exist, in one pass.
            {
                use std::os::fd::AsFd;
                let (active, _) = dp.active().unwrap();
                let name = format!("{}_{}", names::DST_V4, 1 - active);
                let map = nva::datapath::open_pinned(&pins, &name).unwrap();
                let fd = map.fd().as_fd();
                let key = |i: u32| Key::new(32, i.to_be_bytes());
                let present: Vec<(Key<[u8; 4]>, AddrClass)> = (0..3u32)
                    .map(|i| (key(0x0a00_0000 + i * 25_000), AddrClass::single(1)))
                    .collect();
                nva::datapath::batch::update(fd, &present).unwrap();
                let keys: Vec<Key<[u8; 4]>> =
                    (0..60_000u32).map(|i| key(0x0a00_0000 + i)).collect();
                assert_eq!(nva::datapath::batch::delete(fd, &keys).unwrap(), 3);
                assert_eq!(prefixes(1 - active), 0, "the three prefixes are gone");
            }
            // Packets of no interface (the interface classes are not
            // installed here), none to a management port.
            let mut rng = Rng::new(7_100);
            let gen = RuleGen::new(&mut rng, 300);
            let rules = &sets[1];
            for _ in 0..300 {
                let mut pkt = gen.packet(&mut rng, rules);
                pkt.iface = None;
                if pkt.proto == PROTO_TCP && pkt.dport == 22 {
                    continue;
                }
                let want = linear_first_match(rules, &pkt);
                let want_reason = match want {
                    None => PacketReason::DropDefault,
                    Some(i) if rules[i].action == Action::Allow => PacketReason::PassRule,
                    Some(_) => PacketReason::DropRule,
                };
                assert_eq!(
                    run(&dp, &frame_for(&pkt), 0).1,
                    want_reason,
                    "{pkt:?} (rule {want:?})"
                );
            }
        }));
        pins.remove_all(&bpffs);
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    });
}

/// The rule tables take the memory their rule set needs: the join tables
/// are created for each rule set, and a reload to a smaller set gives the
/// memory back.
#[test]
fn rule_tables_take_the_memory_their_rule_set_needs() {
    require_root();
    in_private_netns(&[], |_| {
        let pol = policy(Action::Drop, false);
        let small = compile(&fixed_rules(), &pol).unwrap();
        let mut rng = Rng::new(2_000);
        let gen = RuleGen::new(&mut rng, 2_000);
        let big = compile(&gen.rules(&mut rng, 2_000), &pol).unwrap();
        let tables = |dp: &DataPath| -> u64 {
            dp.map_memory()
                .iter()
                .filter(|(name, _)| name.ends_with("_0") || name.ends_with("_1"))
                .map(|(_, bytes)| bytes)
                .sum()
        };
        const MIB: u64 = 1 << 20;
        let mut dp = DataPath::load(&small, 1, &|_| None).unwrap();
        let at_small = tables(&dp);
        assert!(
            at_small <= 8 * MIB,
            "{at_small} bytes for {} rules",
            fixed_rules().len()
        );
        let counters: Vec<u32> = (0..2_000).collect();
        dp.install(&big, &Default::default(), 2, &counters, &|_| None)
            .unwrap();
        let at_big = tables(&dp);
        assert!(
            at_big > at_small + MIB,
            "2,000 rules take more: {at_big} against {at_small} bytes"
        );
        dp.install(&small, &Default::default(), 3, &counters, &|_| None)
            .unwrap();
        let back = tables(&dp);
        assert!(
            back <= at_small + MIB / 4,
            "the larger rule set's tables are freed: {back} against {at_small} bytes"
        );
    });
}

/// A rule's counters carry across reloads while it stays (each slot has its
/// own counter array; a rule's count is the sum of both), a rule that
/// leaves gives its counter back, and a new rule that reuses the counter
/// starts from zero, through enough reloads that each slot's array is
/// replaced twice. The calls are those the agent makes around a reload.
#[test]
fn rule_counters_carry_across_reloads_and_restart_for_new_rules() {
    require_root();
    in_private_netns(&[], |_| {
        let pol = policy(Action::Drop, false);
        let rule = |name: &str, port: u16| tcp_rule(name, &["10.0.0.0/8"], port);
        let frame = |port: u16| {
            ethernet(
                &[],
                ETH_P_IP,
                &ipv4(v4("192.0.2.1"), v4("10.1.2.3"), 6, &[], 0, &tcp(1, port, 2)),
            )
        };
        let send = |dp: &DataPath, port: u16, n: usize| {
            for _ in 0..n {
                assert_eq!(run(dp, &frame(port), 0).1, PacketReason::PassRule);
            }
        };
        let packets = |dp: &DataPath, counter: u32| dp.counters_at(&[counter]).unwrap()[0].packets;
        // Generation 1: web (counter 0) and old (counter 1).
        let first = compile(&[rule("web", 80), rule("old", 81)], &pol).unwrap();
        let mut dp = DataPath::load(&first, 1, &|_| None).unwrap();
        send(&dp, 80, 3);
        send(&dp, 81, 2);
        let mut expected_web = 3;
        // Each reload: rules, their counters, counters taken by new rules,
        // counters freed; then packets to web and to the other rule.
        type Counters = Vec<u32>;
        let reloads: [(Vec<Rule>, Counters, Counters, Counters); 5] = [
            (
                vec![rule("web", 80), rule("x", 82)],
                vec![0, 2],
                vec![2],
                vec![1],
            ),
            (vec![rule("web", 80)], vec![0], vec![], vec![2]),
            // "new" reuses counter 1, which "old" counted into.
            (
                vec![rule("web", 80), rule("new", 81)],
                vec![0, 1],
                vec![1],
                vec![],
            ),
            (
                vec![rule("new", 81), rule("web", 80)],
                vec![1, 0],
                vec![],
                vec![],
            ),
            (vec![rule("web", 80)], vec![0], vec![], vec![1]),
        ];
        let mut expected_new = 0;
        for (k, (rules, counters, taken, freed)) in reloads.into_iter().enumerate() {
            let generation = k as u64 + 2;
            let compiled = compile(&rules, &pol).unwrap();
            dp.reset_counters(&taken).unwrap();
            dp.install(
                &compiled,
                &Default::default(),
                generation,
                &counters,
                &|_| None,
            )
            .unwrap();
            dp.reset_counters(&freed).unwrap();
            assert_eq!(
                packets(&dp, 0),
                expected_web,
                "generation {generation}: web keeps its count"
            );
            for &t in &taken {
                assert_eq!(
                    packets(&dp, t),
                    0,
                    "generation {generation}: a new rule's counter {t} starts at 0"
                );
            }
            send(&dp, 80, k + 1);
            expected_web += k as u64 + 1;
            if rules.iter().any(|r| r.name == "new") {
                send(&dp, 81, 1);
                expected_new += 1;
                assert_eq!(
                    packets(&dp, 1),
                    expected_new,
                    "generation {generation}: new"
                );
            }
            assert_eq!(packets(&dp, 0), expected_web, "generation {generation}");
        }
    });
}
