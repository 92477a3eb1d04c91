//! 100,000 rules through `nva agent` with real packets: sampled probes
//! agree with the linear first-match reference, swaps between two
//! 100,000-rule sets lose nothing of a steady flow, and the maps take the
//! memory the rule set needs. Two shapes: block lists (100,000 drop rules
//! for destination prefixes, then allow the rest: the short path),
//! ClassBench-shaped acl sets and random sets (the general path; random
//! sets with thousands of rules left to checks, in rule groups).

use std::net::IpAddr;
use std::path::Path;

use nva::classifier::compiler::{linear_first_match, PacketView};
use nva::classifier::rulegen::classbench::{ClassBench, Shape};
use nva::classifier::rulegen::{rules_toml, Rng, RuleGen};
use nva::datapath::{pin::PinLayout, DataPath};
use nva::policy::model::{Action, Cidr, Rule};
use nva_tests::agent::RunningAgent;
use nva_tests::traffic::{udp_delivered, SteadyFlow};
use nva_tests::{require_root, Topology, NVA_IN_IF, NVA_OUT_IF, SERVER_IF};

const RULES: usize = 100_000;
const STEADY_PORT: u16 = 7000;
const PROBE_PORT: u16 = 7001;
/// Addresses the server owns besides its own; each set blocks half of them.
const PROBES: u8 = 8;

fn probe(t: &Topology, i: u8) -> String {
    format!("10.{}.2.{}", t.id, 100 + i)
}

/// Block list `set` (0 or 1): `RULES` drop rules of random /24 and /32
/// destination prefixes outside the topology's networks, among them the
/// probes of parity `set` as /32s, then a rule allowing the rest.
fn block_list(t: &Topology, set: u64) -> Vec<Rule> {
    let mut rng = Rng::new(0x5ca1e + set);
    let ours = Cidr::new(format!("10.{}.0.0", t.id).parse().unwrap(), 16);
    let mut rules = Vec::with_capacity(RULES + 1);
    while rules.len() < RULES {
        let i = rules.len();
        let dst = if i % (RULES / PROBES as usize) == 0
            && (i / (RULES / PROBES as usize)) as u64 % 2 == set
        {
            Cidr::new(
                probe(t, (i / (RULES / PROBES as usize)) as u8)
                    .parse()
                    .unwrap(),
                32,
            )
        } else {
            let len = if rng.chance(50) { 24 } else { 32 };
            let c = Cidr::new(IpAddr::V4((rng.next_u64() as u32).into()), len);
            if ours.contains(c.addr) || c.contains(ours.addr) {
                continue;
            }
            c
        };
        rules.push(Rule {
            dst: vec![dst],
            ..Rule::any(&format!("block-{i}"), Action::Drop)
        });
    }
    rules.push(Rule::any("allow-the-rest", Action::Allow));
    rules
}

/// ClassBench acl set `set` (0 or 1): a rule allowing the steady flow,
/// `RULES` acl-shaped rules, then one rule per probe, allowing the probes of
/// parity `set` and dropping the others (unless an acl rule decides first:
/// the reference says).
fn acl_set(t: &Topology, set: u64) -> Vec<Rule> {
    let mut rng = Rng::new(0xac1 + set);
    let shaped = ClassBench::new(Shape::Acl, &mut rng, RULES).rules(&mut rng, RULES);
    general_set(t, set, shaped)
}

/// Random set `set` (0 or 1), built like [`acl_set`] around `RULES`
/// random rules.
fn random_set(t: &Topology, set: u64) -> Vec<Rule> {
    let mut rng = Rng::new(0x7a4d + set);
    let gen = RuleGen::new(&mut rng, RULES);
    let mut random = gen.rules(&mut rng, RULES);
    // The generator's interface names are not the topology's.
    for r in &mut random {
        r.in_iface = None;
    }
    general_set(t, set, random)
}

/// The steady flow's rule, `middle`, then the probes' rules of parity `set`.
fn general_set(t: &Topology, set: u64, middle: Vec<Rule>) -> Vec<Rule> {
    let mut rules = vec![Rule {
        proto: nva::policy::model::Proto::Udp,
        dport: vec![nva::policy::model::PortRange {
            lo: STEADY_PORT,
            hi: STEADY_PORT,
        }],
        ..Rule::any("steady-flow", Action::Allow)
    }];
    rules.extend(middle);
    for i in 0..PROBES {
        let allow = i as u64 % 2 == set;
        rules.push(Rule {
            dst: vec![Cidr::new(probe(t, i).parse().unwrap(), 32)],
            ..Rule::any(
                &format!("probe-{i}"),
                if allow { Action::Allow } else { Action::Drop },
            )
        });
    }
    rules
}

fn config_of(rules: &[Rule]) -> String {
    format!(
        "[agent]\ninterfaces = [\"{NVA_IN_IF}\", \"{NVA_OUT_IF}\"]\nhealth_listen = \"127.0.0.1:9090\"\nbpffs = \"{{bpffs}}\"\n\n[policy]\ndefault = \"drop\"\n\n{}",
        rules_toml(rules)
    )
}

/// Each probe's datagrams arrive exactly when linear first match allows
/// them.
fn probes_agree_with_the_reference(t: &Topology, rules: &[Rule], what: &str) {
    for i in 0..PROBES {
        let dst = probe(t, i);
        let pkt = PacketView {
            src: t.client_v4().parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 17,
            sport: 40_000,
            dport: PROBE_PORT,
            icmp_type: 0,
            iface: Some(NVA_IN_IF.into()),
        };
        let allowed =
            linear_first_match(rules, &pkt).is_some_and(|r| rules[r].action == Action::Allow);
        let got = udp_delivered(&t.client, &t.server, &dst, PROBE_PORT, 3);
        assert_eq!(
            got,
            if allowed { 3 } else { 0 },
            "{what}: probe {dst} (allowed by the reference: {allowed})"
        );
    }
}

/// Kernel memory of the agent's rule tables (both slots), from its pins.
fn rule_table_bytes(agent: &RunningAgent) -> u64 {
    let pins = PinLayout::new(Path::new(&agent.bpffs));
    let dp = DataPath::open(Some(&pins), 1024).expect("open the pinned data path");
    dp.map_memory()
        .iter()
        .filter(|(name, _)| name.ends_with("_0") || name.ends_with("_1"))
        .map(|(_, bytes)| bytes)
        .sum()
}

/// Loads set 0, checks the probes, swaps 1, 0, 1 under a steady flow
/// (probes checked after each swap, nothing of the flow lost), then
/// returns the rule tables' memory.
fn load_swap_and_measure(t: &Topology, sets: &[Vec<Rule>; 2]) -> u64 {
    for i in 0..PROBES {
        t.server.ip(&[
            "addr",
            "add",
            &format!("{}/32", probe(t, i)),
            "dev",
            SERVER_IF,
        ]);
    }
    let agent = RunningAgent::start(t, &config_of(&sets[0]), true);
    probes_agree_with_the_reference(t, &sets[0], "set 0");

    let flow = SteadyFlow::client_to_server(t, STEADY_PORT, 1_000_000);
    for (swap, set) in [1u64, 0, 1].into_iter().enumerate() {
        agent.write_config(&config_of(&sets[set as usize]));
        let started = std::time::Instant::now();
        let out = agent.nva(&["reload"]);
        eprintln!("swap {swap}: reloaded in {:?}", started.elapsed());
        assert!(
            out.status.success(),
            "swap {swap}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        probes_agree_with_the_reference(t, &sets[set as usize], &format!("swap {swap}"));
    }
    let (sent, received) = flow.finish();
    assert!(sent > 1000, "the steady flow ran ({sent} sent)");
    assert_eq!(
        received, sent,
        "no datagram of the steady flow lost in 3 swaps"
    );
    let bytes = rule_table_bytes(&agent);
    eprintln!("rule tables of both slots: {bytes} bytes");
    drop(agent);
    bytes
}

#[test]
fn a_hundred_thousand_rules_load_swap_without_loss_and_take_what_they_need() {
    require_root();
    let t = Topology::new(242);
    let sets = [block_list(&t, 0), block_list(&t, 1)];
    let bytes = load_swap_and_measure(&t, &sets);
    // 100,000 prefixes in the rule tables of both slots (the old slot is
    // emptied after each swap): a few MiB, nowhere near the 64 MiB budget.
    assert!(
        bytes < 32 << 20,
        "rule tables of 100,000 rules take {bytes} bytes"
    );
}

/// The general path at 100,000 rules: ClassBench acl sets (joined whole,
/// their address pairs would need 1.9 GiB; rules left to checks keep them
/// in one group).
#[test]
fn a_hundred_thousand_classbench_acl_rules_load_swap_without_loss_within_64_mib() {
    require_root();
    let t = Topology::new(243);
    let sets = [acl_set(&t, 0), acl_set(&t, 1)];
    let bytes = load_swap_and_measure(&t, &sets);
    assert!(
        bytes < 64 << 20,
        "rule tables of 100,000 acl rules take {bytes} bytes"
    );
}

/// The general path at 100,000 random rules, refused before the rule
/// checks (157 million L4 combinations): thousands of rules leave prefixes
/// or ports to checks, in four rule groups.
#[test]
fn a_hundred_thousand_random_rules_load_swap_without_loss_within_64_mib() {
    require_root();
    let t = Topology::new(244);
    let sets = [random_set(&t, 0), random_set(&t, 1)];
    let bytes = load_swap_and_measure(&t, &sets);
    assert!(
        bytes < 64 << 20,
        "rule tables of 100,000 random rules take {bytes} bytes"
    );
}
