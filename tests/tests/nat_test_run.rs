//! NAT in the real program, driven by BPF_PROG_TEST_RUN: each protocol and
//! family translated both ways, every checksum recomputed from scratch by
//! the test (as a receiver would) after the program's incremental updates,
//! ICMP errors quoting translated flows, SNAT port allocation and its
//! exhaustion.
//!
//! The NVA's public address is 198.51.100.1 (2001:db8:100::1), workloads
//! live in 10.1.0.0/16 (fd01::/64), clients and servers outside.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nva::classifier::compiler::compile;
use nva::datapath::DataPath;
use nva::nat::CompiledNat;
use nva::policy::config::parse_config;
use nva_common::PacketReason as R;
use nva_tests::frames::*;
use nva_tests::test_run::{XDP_ABORTED, XDP_DROP, XDP_PASS};
use nva_tests::{in_private_netns, require_root};

use nva_common::{TCP_ACK as ACK, TCP_SYN as SYN};

const PUBLIC: &str = "198.51.100.1";
const PUBLIC6: &str = "2001:db8:100::1";
const WORKLOAD: &str = "10.1.0.10";
const WORKLOAD6: &str = "fd01::10";
const CLIENT: &str = "192.0.2.7";
const CLIENT6: &str = "2001:db8:7::7";
const SERVER: &str = "203.0.113.9";
const SERVER6: &str = "2001:db8:9::9";

/// The program with the rules and NAT entries of `body` (TOML after
/// `[policy]`), and the NAT entries' names in counter order.
fn load(body: &str) -> (DataPath, Vec<String>) {
    let text = format!(
        "[agent]\ninterfaces = [\"eth0\"]\n[policy]\ndefault = \"drop\"\nstateful = true\n{body}"
    );
    let config = parse_config("nat.toml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    let compiled = compile(&config.rules, &config.policy).unwrap();
    let counters: Vec<u32> = (0..config.nat.len() as u32).collect();
    let nat = CompiledNat::compile(&config.nat).tables(&counters, &|_| None);
    let dp = DataPath::load_with_nat(&compiled, &nat, 1, &|_| None).unwrap();
    (dp, config.nat.iter().map(|n| n.name.clone()).collect())
}

const DNAT: &str = r#"
[[rules]]
name = "web"
action = "allow"
proto = "tcp"
dst = ["10.1.0.10/32", "fd01::10/128"]
dport = ["8443"]

[[rules]]
name = "dns"
action = "allow"
proto = "udp"
dst = ["10.1.0.10/32"]
dport = ["53"]

[[nat]]
name = "web-in"
kind = "dnat"
proto = "tcp"
dst = ["198.51.100.1/32"]
dport = ["443"]
to = "10.1.0.10:8443"

[[nat]]
name = "web-in6"
kind = "dnat"
proto = "tcp"
dst = ["2001:db8:100::1/128"]
dport = ["443"]
to = "[fd01::10]:8443"

[[nat]]
name = "dns-in"
kind = "dnat"
proto = "udp"
dst = ["198.51.100.1/32"]
dport = ["53"]
to = "10.1.0.10"

[[nat]]
name = "closed-in"
kind = "dnat"
proto = "tcp"
dst = ["198.51.100.1/32"]
dport = ["8080"]
to = "10.1.0.10:9999"
"#;

fn snat(ports: &str) -> String {
    format!(
        r#"
[[rules]]
name = "out"
action = "allow"
src = ["10.1.0.0/16", "fd01::/64"]

[[nat]]
name = "egress"
kind = "snat"
src = ["10.1.0.0/16"]
to = "198.51.100.1"
to_ports = "{ports}"

[[nat]]
name = "egress6"
kind = "snat"
src = ["fd01::/64"]
to = "2001:db8:100::1"
to_ports = "{ports}"
"#
    )
}

fn ip(a: &str) -> IpAddr {
    a.parse().unwrap()
}

/// A frame from (src, sport) to (dst, dport) of `proto` with valid checksums.
fn frame(proto: u8, src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    let l4 = match proto {
        6 => tcp(sport, dport, flags),
        17 => udp(sport, dport, b"nva nat test payload"),
        // Echo: type, code, checksum, identifier (sport), sequence.
        1 | 58 => {
            let t = if flags == 0 {
                if proto == 1 {
                    8
                } else {
                    128
                }
            } else if proto == 1 {
                0
            } else {
                129
            };
            let mut e = vec![t, 0, 0, 0];
            e.extend_from_slice(&sport.to_be_bytes());
            e.extend_from_slice(&[0, 7]);
            e.extend_from_slice(b"ping data");
            e
        }
        _ => unreachable!(),
    };
    with_checksums(ip_frame(proto, src, dst, &l4))
}

fn ip_frame(proto: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ethernet(&[], ETH_P_IP, &ipv4(s, d, proto, &[], 0, l4)),
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(&[], ETH_P_IPV6, &ipv6(s, d, proto, l4)),
        _ => panic!("mixed families"),
    }
}

/// (src, sport, dst, dport) of a frame (ICMP echo: the identifier as both ports).
fn tuple(f: &[u8]) -> (IpAddr, u16, IpAddr, u16) {
    let v6 = u16::from_be_bytes([f[12], f[13]]) == ETH_P_IPV6;
    let (src, dst, proto, l4) = if v6 {
        let s: [u8; 16] = f[22..38].try_into().unwrap();
        let d: [u8; 16] = f[38..54].try_into().unwrap();
        (
            IpAddr::V6(Ipv6Addr::from(s)),
            IpAddr::V6(Ipv6Addr::from(d)),
            f[20],
            54,
        )
    } else {
        let s: [u8; 4] = f[26..30].try_into().unwrap();
        let d: [u8; 4] = f[30..34].try_into().unwrap();
        let ihl = ((f[14] & 0x0f) as usize) * 4;
        (
            IpAddr::V4(Ipv4Addr::from(s)),
            IpAddr::V4(Ipv4Addr::from(d)),
            f[23],
            14 + ihl,
        )
    };
    let be = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    match proto {
        1 | 58 => (src, be(l4 + 4), dst, be(l4 + 4)),
        _ => (src, be(l4), dst, be(l4 + 2)),
    }
}

/// Runs a frame; asserts the verdict's reason and, for a pass, that every
/// checksum of the frame that leaves is right. Returns the frame.
fn pass(dp: &DataPath, f: &[u8], reason: R) -> Vec<u8> {
    let before = dp.packet_counters().unwrap();
    let (action, out) = dp.test_run_out(f, 0).unwrap();
    assert_ne!(action, XDP_ABORTED);
    let after = dp.packet_counters().unwrap();
    let moved: Vec<R> = R::ALL
        .iter()
        .copied()
        .filter(|r| after[*r as usize] != before[*r as usize])
        .collect();
    assert_eq!(moved, vec![reason], "reason of {:?}", tuple(f));
    assert_eq!(action, if reason.is_pass() { XDP_PASS } else { XDP_DROP });
    if reason.is_pass() {
        check_checksums(&out).unwrap_or_else(|e| panic!("{e} wrong after {reason:?}: {out:02x?}"));
    }
    out
}

fn tcp_dnat_both_ways(client: &str, public: &str, workload: &str) {
    let (dp, _) = load(DNAT);
    let syn = frame(6, client, 40000, public, 443, SYN);
    let out = pass(&dp, &syn, R::PassRule);
    assert_eq!(
        tuple(&out),
        (ip(client), 40000, ip(workload), 8443),
        "SYN to the workload"
    );
    let synack = frame(6, workload, 8443, client, 40000, SYN | ACK);
    let out = pass(&dp, &synack, R::PassEstablished);
    assert_eq!(
        tuple(&out),
        (ip(public), 443, ip(client), 40000),
        "the reply comes from the address the client used"
    );
    let ack = frame(6, client, 40000, public, 443, ACK);
    let out = pass(&dp, &ack, R::PassEstablished);
    assert_eq!(tuple(&out), (ip(client), 40000, ip(workload), 8443));
    // The workload's address is not reachable directly: no rule allows
    // 10.1.0.10:8443 from the client without the translation... it is
    // (the rule names the workload), but the flow above does not cover it.
    let direct = frame(6, client, 40001, workload, 8443, ACK);
    pass(&dp, &direct, R::DropTcpNotTracked);
    // A direct connection on the translated tuple (the client picked the
    // same source port for the workload's own address) would reach the
    // workload as the translated connection: refused while that flow
    // lives; on another port it is a flow of its own.
    let clash = frame(6, client, 40000, workload, 8443, SYN);
    pass(&dp, &clash, R::DropNatClash);
    let own = frame(6, client, 40002, workload, 8443, SYN);
    let out = pass(&dp, &own, R::PassRule);
    assert_eq!(tuple(&out), (ip(client), 40002, ip(workload), 8443));
    // The translated flow is untouched.
    let out = pass(&dp, &ack, R::PassEstablished);
    assert_eq!(tuple(&out), (ip(client), 40000, ip(workload), 8443));
}

#[test]
fn dnat_tcp_v4_and_v6_both_ways() {
    require_root();
    in_private_netns(&[], |_| {
        tcp_dnat_both_ways(CLIENT, PUBLIC, WORKLOAD);
        tcp_dnat_both_ways(CLIENT6, PUBLIC6, WORKLOAD6);
    });
}

#[test]
fn rules_see_the_translated_destination() {
    require_root();
    in_private_netns(&[], |_| {
        let (dp, names) = load(DNAT);
        // DNAT to 10.1.0.10:9999, which no rule allows: dropped, untranslated.
        let syn = frame(6, CLIENT, 40000, PUBLIC, 8080, SYN);
        pass(&dp, &syn, R::DropDefault);
        // UDP DNAT keeping the port; the reply comes from the public address.
        let q = frame(17, CLIENT, 5555, PUBLIC, 53, 0);
        let out = pass(&dp, &q, R::PassRule);
        assert_eq!(tuple(&out), (ip(CLIENT), 5555, ip(WORKLOAD), 53));
        let a = frame(17, WORKLOAD, 53, CLIENT, 5555, 0);
        let out = pass(&dp, &a, R::PassEstablished);
        assert_eq!(tuple(&out), (ip(PUBLIC), 53, ip(CLIENT), 5555));
        // Counted per entry: one flow each for web? none; dns-in one.
        let counters = dp.nat_counters(&[0, 1, 2, 3]).unwrap();
        let by_name: Vec<(&str, u64)> = names
            .iter()
            .map(String::as_str)
            .zip(counters.iter().map(|c| c.translations))
            .collect();
        assert_eq!(
            by_name,
            vec![
                ("web-in", 0),
                ("web-in6", 0),
                ("dns-in", 1),
                ("closed-in", 0)
            ]
        );
    });
}

fn snat_both_ways(proto: u8, workload: &str, server: &str, public: &str, lo: u16, hi: u16) {
    let (dp, _) = load(&snat(&format!("{lo}-{hi}")));
    let (sport, dport) = if proto == 1 || proto == 58 {
        (77, 77)
    } else {
        (5353, 53)
    };
    let out_frame = frame(
        proto,
        workload,
        sport,
        server,
        dport,
        if proto == 6 { SYN } else { 0 },
    );
    let out = pass(&dp, &out_frame, R::PassRule);
    let (src, port, dst, dp_) = tuple(&out);
    assert_eq!(
        (src, dst),
        (ip(public), ip(server)),
        "the peer sees the NVA's address"
    );
    assert!((lo..=hi).contains(&port), "port {port} from to_ports");
    if proto != 1 && proto != 58 {
        assert_eq!(dp_, dport);
    }
    let reply = frame(
        proto,
        server,
        if proto == 1 || proto == 58 {
            port
        } else {
            dport
        },
        public,
        port,
        if proto == 6 { SYN | ACK } else { 1 },
    );
    let back = pass(&dp, &reply, R::PassEstablished);
    let (src, sp, dst, dpt) = tuple(&back);
    assert_eq!(
        (src, dst, dpt),
        (ip(server), ip(workload), sport),
        "the reply reaches the workload"
    );
    if proto != 1 && proto != 58 {
        assert_eq!(sp, dport);
    }
}

#[test]
fn snat_tcp_udp_and_echo_v4_and_v6() {
    require_root();
    in_private_netns(&[], |_| {
        for proto in [6, 17, 1] {
            snat_both_ways(proto, WORKLOAD, SERVER, PUBLIC, 20000, 20099);
        }
        for proto in [6, 17, 58] {
            snat_both_ways(proto, WORKLOAD6, SERVER6, PUBLIC6, 20000, 20099);
        }
    });
}

#[test]
fn zero_udp_checksum_of_ipv4_stays_zero() {
    require_root();
    in_private_netns(&[], |_| {
        let (dp, _) = load(&snat("20000-20099"));
        let mut f = frame(17, WORKLOAD, 5353, SERVER, 53, 0);
        f[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
        let out = pass(&dp, &f, R::PassRule);
        assert_eq!(out[14 + 20 + 6..14 + 20 + 8], [0, 0]);
    });
}

#[test]
fn snat_ports_are_distinct_and_exhaustion_is_counted() {
    require_root();
    in_private_netns(&[], |_| {
        let (dp, _) = load(&snat("20000-20002"));
        let mut ports = Vec::new();
        // Three workloads, the same source port, the same destination.
        for w in ["10.1.0.11", "10.1.0.12", "10.1.0.13"] {
            let out = pass(&dp, &frame(17, w, 5000, SERVER, 53, 0), R::PassRule);
            ports.push(tuple(&out).1);
        }
        ports.sort();
        assert_eq!(ports, vec![20000, 20001, 20002], "each flow its own port");
        // A fourth finds none free.
        pass(
            &dp,
            &frame(17, "10.1.0.14", 5000, SERVER, 53, 0),
            R::DropNatPortsExhausted,
        );
        let c = dp.nat_counters(&[0]).unwrap()[0];
        assert_eq!((c.translations, c.ports_exhausted), (3, 1));
        // The tracked flows keep their ports: a later packet reuses them.
        let out = pass(
            &dp,
            &frame(17, "10.1.0.12", 5000, SERVER, 53, 0),
            R::PassEstablished,
        );
        assert!((20000..=20002).contains(&tuple(&out).1));
    });
}

/// An ICMP error from `router` to `to` quoting `quoted` (a whole packet).
fn icmp_error(v6: bool, router: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    let (t, code) = if v6 { (1, 4) } else { (3, 3) };
    let mut l4 = vec![t, code, 0, 0, 0, 0, 0, 0];
    l4.extend_from_slice(&quoted[14..]);
    with_checksums(ip_frame(if v6 { 58 } else { 1 }, router, to, &l4))
}

fn error_through_snat(v6: bool) {
    let (workload, server, public, router) = if v6 {
        (WORKLOAD6, SERVER6, PUBLIC6, "2001:db8:9::1")
    } else {
        (WORKLOAD, SERVER, PUBLIC, "203.0.113.1")
    };
    let (dp, _) = load(&snat("20000-20099"));
    let out = pass(&dp, &frame(17, workload, 5353, server, 53, 0), R::PassRule);
    let port = tuple(&out).1;
    // The server's side answers "port unreachable" about the translated packet.
    let err = icmp_error(v6, router, public, &out);
    let back = pass(&dp, &err, R::PassRelated);
    let (src, _, dst, _) = tuple(&back);
    assert_eq!(
        (src, dst),
        (ip(router), ip(workload)),
        "the error goes to the workload"
    );
    check_quoted_checksums(&back).unwrap();
    // The quote is the workload's own packet again.
    let quote = [&back[..14], &back[if v6 { 54 } else { 34 } + 8..]].concat();
    assert_eq!(tuple(&quote), (ip(workload), 5353, ip(server), 53));
    let _ = port;
}

#[test]
fn icmp_errors_quoting_translated_flows_are_translated() {
    require_root();
    in_private_netns(&[], |_| {
        error_through_snat(false);
        error_through_snat(true);
    });
}

#[test]
fn reload_keeps_translations_unless_the_rules_revoke_them() {
    require_root();
    in_private_netns(&[], |_| {
        let (mut dp, _) = load(DNAT);
        let syn = frame(6, CLIENT, 40000, PUBLIC, 443, SYN);
        pass(&dp, &syn, R::PassRule);
        pass(
            &dp,
            &frame(6, WORKLOAD, 8443, CLIENT, 40000, SYN | ACK),
            R::PassEstablished,
        );
        // A new generation with the same rules and no NAT entries at all:
        // the flow is re-checked as the rules saw it (after DNAT) and keeps
        // its translation, as in netfilter.
        let reinstall = |dp: &mut DataPath, body: &str, generation: u64| {
            let text = format!(
                "[agent]\ninterfaces = [\"eth0\"]\n[policy]\ndefault = \"drop\"\nstateful = true\n{body}"
            );
            let config = parse_config("nat.toml", &text).unwrap();
            let compiled = compile(&config.rules, &config.policy).unwrap();
            let counters: Vec<u32> = (0..compiled.rule_actions.len() as u32).collect();
            dp.install(
                &compiled,
                &Default::default(),
                generation,
                &counters,
                &|_| None,
            )
            .unwrap();
        };
        let web_only = DNAT
            .split("[[rules]]\nname = \"dns\"")
            .next()
            .unwrap()
            .to_string();
        reinstall(&mut dp, &web_only, 2);
        let out = pass(
            &dp,
            &frame(6, CLIENT, 40000, PUBLIC, 443, ACK),
            R::PassEstablished,
        );
        assert_eq!(tuple(&out), (ip(CLIENT), 40000, ip(WORKLOAD), 8443));
        let out = pass(
            &dp,
            &frame(6, WORKLOAD, 8443, CLIENT, 40000, ACK),
            R::PassEstablished,
        );
        assert_eq!(tuple(&out), (ip(PUBLIC), 443, ip(CLIENT), 40000));
        // Rules that no longer allow the workload's port revoke the flow.
        reinstall(&mut dp, "", 3);
        pass(
            &dp,
            &frame(6, CLIENT, 40000, PUBLIC, 443, ACK),
            R::DropRevoked,
        );
    });
}
