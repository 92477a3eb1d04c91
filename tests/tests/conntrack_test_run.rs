//! Connection tracking in the real program, driven by BPF_PROG_TEST_RUN
//! packet sequences: TCP states, replies of tracked flows only, timeouts,
//! related ICMP errors, re-checks after a rule change, table pressure.
//!
//! The backend network 10.1.0.0/16 (fd01::/64) may open connections out;
//! nothing may come in unsolicited (`default = "drop"`).

use std::net::{Ipv4Addr, Ipv6Addr};

use nva::classifier::compiler::compile;
use nva::datapath::DataPath;
use nva::policy::model::{Action, Cidr, ConntrackTimeouts, PolicySettings, PortRange, Proto, Rule};
use nva_common::{ConntrackEntry, ConntrackKey, ConntrackState, PacketReason as R};
use nva_tests::frames::*;
use nva_tests::test_run::run;
use nva_tests::{in_private_netns, require_root};

use nva_common::{TCP_ACK as ACK, TCP_FIN as FIN, TCP_PSH as PSH, TCP_RST as RST, TCP_SYN as SYN};

const BACKEND: &str = "10.1.0.5";
const CLIENT: &str = "192.0.2.7";
const BACKEND6: &str = "fd01::5";
const CLIENT6: &str = "2001:db8::7";

fn v4(a: &str) -> Ipv4Addr {
    a.parse().unwrap()
}
fn v6(a: &str) -> Ipv6Addr {
    a.parse().unwrap()
}

fn policy(loose_tcp: bool, timeouts: ConntrackTimeouts) -> PolicySettings {
    PolicySettings {
        stateful: true,
        loose_tcp,
        timeouts,
        ..PolicySettings::with_default(Action::Drop)
    }
}

fn out_rule(name: &str, proto: Proto, dport: Option<u16>, icmp_type: Option<u8>) -> Rule {
    let mut r = Rule::any(name, Action::Allow);
    r.proto = proto;
    r.src = vec![
        Cidr::new(v4("10.1.0.0").into(), 16),
        Cidr::new(v6("fd01::").into(), 64),
    ];
    r.dport = dport
        .map(|p| vec![PortRange { lo: p, hi: p }])
        .unwrap_or_default();
    r.icmp_type = icmp_type.map(|t| vec![t]).unwrap_or_default();
    r
}

/// Backend -> anywhere: tcp/80, udp/53, ping, ping6.
fn outbound_rules(with_web: bool) -> Vec<Rule> {
    let mut rules = vec![
        out_rule("dns-out", Proto::Udp, Some(53), None),
        out_rule("ping-out", Proto::Icmp, None, Some(8)),
        out_rule("ping6-out", Proto::Icmpv6, None, Some(128)),
    ];
    if with_web {
        rules.insert(0, out_rule("web-out", Proto::Tcp, Some(80), None));
    }
    rules
}

fn load(loose_tcp: bool, timeouts: ConntrackTimeouts) -> DataPath {
    let compiled = compile(&outbound_rules(true), &policy(loose_tcp, timeouts)).unwrap();
    DataPath::load(&compiled, 1, &|_| None).unwrap()
}

/// The outbound rules, stateful and strict, with a conntrack table of
/// `table` answered flows.
fn load_with_table(table: u32) -> DataPath {
    let compiled = compile(&outbound_rules(true), &policy(false, Default::default())).unwrap();
    let mut dp = DataPath::open(None, table).unwrap();
    let counters: Vec<u32> = (0..compiled.rule_actions.len() as u32).collect();
    dp.install(&compiled, &Default::default(), 1, &counters, &|_| None)
        .unwrap();
    dp
}

fn tcp4(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4(v4(src), v4(dst), 6, &[], 0, &tcp(sport, dport, flags)),
    )
}

fn tcp6(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(src), v6(dst), 6, &tcp(sport, dport, flags)),
    )
}

fn udp4(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4(v4(src), v4(dst), 17, &[], 0, &udp(sport, dport, b"query")),
    )
}

fn icmp4(src: &str, dst: &str, icmp_type: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IP,
        &ipv4(v4(src), v4(dst), 1, &[], 0, &icmp(icmp_type, 0)),
    )
}

fn icmp6(src: &str, dst: &str, icmp_type: u8) -> Vec<u8> {
    ethernet(
        &[],
        ETH_P_IPV6,
        &ipv6(v6(src), v6(dst), 58, &icmp(icmp_type, 0)),
    )
}

/// An ICMP destination unreachable (port unreachable) from `router` to
/// `to`, quoting the IPv4 packet `quoted` (its header and 8 bytes of L4).
fn icmp4_unreachable(router: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    let mut body = vec![3, 3, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&quoted[..28.min(quoted.len())]);
    ethernet(&[], ETH_P_IP, &ipv4(v4(router), v4(to), 1, &[], 0, &body))
}

/// An ICMPv6 packet too big from `router` to `to`, quoting `quoted`.
fn icmp6_too_big(router: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    let mut body = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
    body.extend_from_slice(&quoted[..48.min(quoted.len())]);
    ethernet(&[], ETH_P_IPV6, &ipv6(v6(router), v6(to), 58, &body))
}

/// Every tracked flow of the program.
fn flows(dp: &DataPath) -> Vec<(ConntrackKey, ConntrackEntry)> {
    nva::conntrack::Table::of(dp).unwrap().entries().unwrap()
}

/// The one flow between two IPv4 endpoints.
fn flow4(dp: &DataPath, a: &str, b: &str) -> Option<ConntrackEntry> {
    let (a, b) = (v4(a).octets(), v4(b).octets());
    flows(dp)
        .into_iter()
        .find(|(k, _)| {
            let lo = &k.addr_lo[..4];
            let hi = &k.addr_hi[..4];
            (lo == a && hi == b) || (lo == b && hi == a)
        })
        .map(|(_, e)| e)
}

fn state(dp: &DataPath, a: &str, b: &str) -> ConntrackState {
    let e = flow4(dp, a, b).expect("flow tracked");
    ConntrackState::from_u8(e.state).expect("known state")
}

#[test]
fn tcp_handshake_data_and_close_walk_the_states() {
    require_root();
    in_private_netns(&[], |_| {
        let dp = load(false, Default::default());
        let (b, c) = (BACKEND, CLIENT);
        let steps: [(&str, Vec<u8>, R, ConntrackState); 10] = [
            (
                "SYN out",
                tcp4(b, 40000, c, 80, SYN),
                R::PassRule,
                ConntrackState::TcpSynSent,
            ),
            (
                "SYN retransmitted",
                tcp4(b, 40000, c, 80, SYN),
                R::PassEstablished,
                ConntrackState::TcpSynSent,
            ),
            (
                "SYN-ACK back",
                tcp4(c, 80, b, 40000, SYN | ACK),
                R::PassEstablished,
                ConntrackState::TcpSynRecv,
            ),
            (
                "ACK out",
                tcp4(b, 40000, c, 80, ACK),
                R::PassEstablished,
                ConntrackState::TcpEstablished,
            ),
            (
                "data out",
                tcp4(b, 40000, c, 80, PSH | ACK),
                R::PassEstablished,
                ConntrackState::TcpEstablished,
            ),
            (
                "data back",
                tcp4(c, 80, b, 40000, PSH | ACK),
                R::PassEstablished,
                ConntrackState::TcpEstablished,
            ),
            (
                "FIN out",
                tcp4(b, 40000, c, 80, FIN | ACK),
                R::PassEstablished,
                ConntrackState::TcpFinWait,
            ),
            (
                "data back while half closed",
                tcp4(c, 80, b, 40000, PSH | ACK),
                R::PassEstablished,
                ConntrackState::TcpFinWait,
            ),
            (
                "FIN back",
                tcp4(c, 80, b, 40000, FIN | ACK),
                R::PassEstablished,
                ConntrackState::TcpClosing,
            ),
            (
                "last ACK out",
                tcp4(b, 40000, c, 80, ACK),
                R::PassEstablished,
                ConntrackState::TcpClosing,
            ),
        ];
        for (what, frame, reason, next) in steps {
            assert_eq!(run(&dp, &frame, 0).1, reason, "{what}");
            assert_eq!(state(&dp, b, c), next, "{what}");
        }
        let e = flow4(&dp, b, c).unwrap();
        assert_eq!(e.packets, [6, 4], "packets from the originator and back");
        assert!(
            e.bytes[0] >= 6 * 54 && e.bytes[1] >= 4 * 54,
            "{:?}",
            e.bytes
        );
        assert_eq!(flows(&dp).len(), 1, "both directions share one entry");

        // A new SYN on the closed connection's ports starts over.
        assert_eq!(run(&dp, &tcp4(b, 40000, c, 80, SYN), 0).1, R::PassRule);
        assert_eq!(state(&dp, b, c), ConntrackState::TcpSynSent);
        // RST closes it.
        assert_eq!(
            run(&dp, &tcp4(c, 80, b, 40000, RST | ACK), 0).1,
            R::PassEstablished
        );
        assert_eq!(state(&dp, b, c), ConntrackState::TcpClosed);

        // IPv6, the same walk in short.
        let (b6, c6) = (BACKEND6, CLIENT6);
        assert_eq!(run(&dp, &tcp6(b6, 41000, c6, 80, SYN), 0).1, R::PassRule);
        assert_eq!(
            run(&dp, &tcp6(c6, 80, b6, 41000, SYN | ACK), 0).1,
            R::PassEstablished
        );
        assert_eq!(
            run(&dp, &tcp6(b6, 41000, c6, 80, ACK), 0).1,
            R::PassEstablished
        );
        assert_eq!(
            run(&dp, &tcp6(c6, 80, b6, 41000, PSH | ACK), 0).1,
            R::PassEstablished
        );
        let six: Vec<_> = flows(&dp)
            .into_iter()
            .filter(|(k, _)| k.family == 6)
            .collect();
        assert_eq!(six.len(), 1);
        assert_eq!(six[0].1.state, ConntrackState::TcpEstablished as u8);
    });
}

#[test]
fn only_replies_of_tracked_flows_come_in() {
    require_root();
    in_private_netns(&[], |_| {
        let dp = load(false, Default::default());
        let (b, c) = (BACKEND, CLIENT);
        let cases: [(&str, Vec<u8>, R); 9] = [
            ("SYN in", tcp4(c, 50000, b, 80, SYN), R::DropDefault),
            (
                "unsolicited SYN-ACK in",
                tcp4(c, 80, b, 40001, SYN | ACK),
                R::DropTcpNotTracked,
            ),
            (
                "unsolicited ACK in",
                tcp4(c, 80, b, 40001, ACK),
                R::DropTcpNotTracked,
            ),
            (
                "unsolicited RST in",
                tcp4(c, 80, b, 40001, RST),
                R::DropTcpNotTracked,
            ),
            (
                "mid-stream ACK out (no loose_tcp)",
                tcp4(b, 40001, c, 80, ACK),
                R::DropTcpNotTracked,
            ),
            ("SYN+FIN", tcp4(b, 40002, c, 80, SYN | FIN), R::DropTcpFlags),
            ("no flags", tcp4(b, 40002, c, 80, 0), R::DropTcpFlags),
            (
                "FIN alone",
                tcp4(b, 40002, c, 80, FIN | PSH),
                R::DropTcpFlags,
            ),
            ("SYN+RST", tcp4(b, 40002, c, 80, SYN | RST), R::DropTcpFlags),
        ];
        for (what, frame, reason) in cases {
            assert_eq!(run(&dp, &frame, 0).1, reason, "{what}");
        }
        assert!(flows(&dp).is_empty(), "nothing was tracked");

        // A SYN out, then an ACK from the other side without SYN-ACK.
        assert_eq!(run(&dp, &tcp4(b, 40003, c, 80, SYN), 0).1, R::PassRule);
        assert_eq!(run(&dp, &tcp4(c, 80, b, 40003, ACK), 0).1, R::DropTcpState);
        // A SYN from the responder's side once established is refused.
        assert_eq!(
            run(&dp, &tcp4(c, 80, b, 40003, SYN | ACK), 0).1,
            R::PassEstablished
        );
        assert_eq!(
            run(&dp, &tcp4(b, 40003, c, 80, ACK), 0).1,
            R::PassEstablished
        );
        assert_eq!(run(&dp, &tcp4(c, 80, b, 40003, SYN), 0).1, R::DropTcpState);

        // UDP: the reply passes only after the query.
        assert_eq!(run(&dp, &udp4(c, 53, b, 5353), 0).1, R::DropDefault);
        assert_eq!(run(&dp, &udp4(b, 5353, c, 53), 0).1, R::PassRule);
        assert_eq!(run(&dp, &udp4(c, 53, b, 5353), 0).1, R::PassEstablished);
        assert_eq!(
            run(&dp, &udp4(c, 53, b, 5354), 0).1,
            R::DropDefault,
            "other port"
        );
        let udp = flows(&dp)
            .into_iter()
            .find(|(k, _)| k.proto == 17)
            .unwrap()
            .1;
        assert_eq!(udp.state, ConntrackState::UdpReplied as u8);

        // ICMP echo: the reply passes only after the request (same id).
        assert_eq!(run(&dp, &icmp4(c, b, 0), 0).1, R::DropDefault);
        assert_eq!(run(&dp, &icmp4(b, c, 8), 0).1, R::PassRule);
        assert_eq!(run(&dp, &icmp4(c, b, 0), 0).1, R::PassEstablished);
        assert_eq!(
            run(&dp, &icmp6(CLIENT6, BACKEND6, 129), 0).1,
            R::DropDefault
        );
        assert_eq!(run(&dp, &icmp6(BACKEND6, CLIENT6, 128), 0).1, R::PassRule);
        assert_eq!(
            run(&dp, &icmp6(CLIENT6, BACKEND6, 129), 0).1,
            R::PassEstablished
        );
        // An echo request from outside is not a reply.
        assert_eq!(run(&dp, &icmp4(c, b, 8), 0).1, R::DropDefault);
    });
}

#[test]
fn loose_tcp_picks_up_allowed_mid_stream_connections() {
    require_root();
    in_private_netns(&[], |_| {
        let dp = load(true, Default::default());
        let (b, c) = (BACKEND, CLIENT);
        // Mid-stream data out on an allowed port: tracked as established.
        assert_eq!(
            run(&dp, &tcp4(b, 40010, c, 80, PSH | ACK), 0).1,
            R::PassRule
        );
        assert_eq!(state(&dp, b, c), ConntrackState::TcpEstablished);
        assert_eq!(
            run(&dp, &tcp4(c, 80, b, 40010, ACK), 0).1,
            R::PassEstablished
        );
        // Mid-stream from outside: no rule allows it.
        assert_eq!(run(&dp, &tcp4(c, 50000, b, 22, ACK), 0).1, R::DropDefault);
        // Invalid flags stay invalid.
        assert_eq!(run(&dp, &tcp4(b, 40011, c, 80, 0), 0).1, R::DropTcpFlags);
    });
}

#[test]
fn idle_flows_expire() {
    require_root();
    in_private_netns(&[], |_| {
        let timeouts = ConntrackTimeouts {
            tcp_syn: 1,
            udp: 1,
            icmp: 1,
            ..Default::default()
        };
        let dp = load(false, timeouts);
        let (b, c) = (BACKEND, CLIENT);
        assert_eq!(run(&dp, &udp4(b, 5353, c, 53), 0).1, R::PassRule);
        assert_eq!(run(&dp, &tcp4(b, 40020, c, 80, SYN), 0).1, R::PassRule);
        assert_eq!(run(&dp, &icmp4(b, c, 8), 0).1, R::PassRule);
        // Within the timeout the replies pass (and refresh nothing else).
        assert_eq!(run(&dp, &udp4(c, 53, b, 5353), 0).1, R::PassEstablished);
        // The UDP flow was replied to: its timeout is udp_replied (180 s).
        // The others stay idle past their 1 s.
        std::thread::sleep(std::time::Duration::from_millis(2300));
        assert_eq!(
            run(&dp, &tcp4(c, 80, b, 40020, SYN | ACK), 0).1,
            R::DropTcpNotTracked,
            "SYN-ACK after the SYN expired"
        );
        assert_eq!(
            run(&dp, &icmp4(c, b, 0), 0).1,
            R::DropDefault,
            "late echo reply"
        );
        assert_eq!(
            run(&dp, &udp4(c, 53, b, 5353), 0).1,
            R::PassEstablished,
            "replied UDP lives longer"
        );

        // The sweep removes exactly the expired entries.
        let mut table = nva::conntrack::Table::of(&dp).unwrap();
        assert_eq!(table.count().unwrap(), 3);
        let (left, removed) = table.sweep(&timeouts.by_state()).unwrap();
        assert_eq!((left, removed), (1, 2));
        assert_eq!(table.count().unwrap(), 1);
        // An expired flow starts over as a new one.
        assert_eq!(run(&dp, &tcp4(b, 40020, c, 80, SYN), 0).1, R::PassRule);
    });
}

#[test]
fn icmp_errors_pass_only_for_tracked_flows() {
    require_root();
    in_private_netns(&[], |_| {
        let dp = load(false, Default::default());
        let (b, c, router) = (BACKEND, CLIENT, "198.51.100.1");
        let query = ipv4(v4(b), v4(c), 17, &[], 0, &udp(5353, 53, b"query"));
        let other = ipv4(v4(b), v4(c), 17, &[], 0, &udp(5399, 53, b"query"));
        // Before the flow exists, the error follows the rules (none allows).
        assert_eq!(
            run(&dp, &icmp4_unreachable(router, b, &query), 0).1,
            R::DropDefault
        );
        assert_eq!(run(&dp, &udp4(b, 5353, c, 53), 0).1, R::PassRule);
        assert_eq!(
            run(&dp, &icmp4_unreachable(router, b, &query), 0).1,
            R::PassRelated
        );
        assert_eq!(
            run(&dp, &icmp4_unreachable(c, b, &query), 0).1,
            R::PassRelated
        );
        assert_eq!(
            run(&dp, &icmp4_unreachable(router, b, &other), 0).1,
            R::DropDefault
        );
        // A quote cut short is not related to anything.
        let mut short = icmp4_unreachable(router, b, &query);
        short.truncate(short.len() - 4);
        let fix = short.len() - 14;
        short[16..18].copy_from_slice(&(fix as u16).to_be_bytes());
        assert_eq!(run(&dp, &short, 0).1, R::DropDefault);

        // IPv6: packet too big quoting a tracked TCP flow.
        let (b6, c6) = (BACKEND6, CLIENT6);
        assert_eq!(run(&dp, &tcp6(b6, 41000, c6, 80, SYN), 0).1, R::PassRule);
        let seg = ipv6(v6(b6), v6(c6), 6, &tcp(41000, 80, ACK));
        let unknown = ipv6(v6(b6), v6(c6), 6, &tcp(41001, 80, ACK));
        assert_eq!(
            run(&dp, &icmp6_too_big("2001:db8::1", b6, &seg), 0).1,
            R::PassRelated
        );
        assert_eq!(
            run(&dp, &icmp6_too_big("2001:db8::1", b6, &unknown), 0).1,
            R::DropDefault
        );
        // Related errors are not tracked themselves.
        assert_eq!(flows(&dp).len(), 2);
    });
}

#[test]
fn rule_change_revokes_flows_the_new_rules_refuse() {
    require_root();
    in_private_netns(&[], |_| {
        let mut dp = load(false, Default::default());
        let (b, c) = (BACKEND, CLIENT);
        for (frame, reason) in [
            (tcp4(b, 40030, c, 80, SYN), R::PassRule),
            (tcp4(c, 80, b, 40030, SYN | ACK), R::PassEstablished),
            (tcp4(b, 40030, c, 80, ACK), R::PassEstablished),
            (udp4(b, 5353, c, 53), R::PassRule),
        ] {
            assert_eq!(run(&dp, &frame, 0).1, reason);
        }
        // Generation 2 no longer allows tcp/80.
        let compiled = compile(&outbound_rules(false), &policy(false, Default::default())).unwrap();
        let counters: Vec<u32> = (0..compiled.rule_actions.len() as u32).collect();
        dp.install(&compiled, &Default::default(), 2, &counters, &|_| None)
            .unwrap();
        // The next packet of the web flow, from either side, is dropped and
        // the flow forgotten.
        assert_eq!(
            run(&dp, &tcp4(c, 80, b, 40030, PSH | ACK), 0).1,
            R::DropRevoked
        );
        assert!(
            flows(&dp).iter().all(|(k, _)| k.proto != 6),
            "TCP entry removed"
        );
        assert_eq!(
            run(&dp, &tcp4(b, 40030, c, 80, PSH | ACK), 0).1,
            R::DropTcpNotTracked
        );
        assert_eq!(
            run(&dp, &tcp4(b, 40031, c, 80, SYN), 0).1,
            R::DropDefault,
            "new ones refused"
        );
        // The DNS flow is still allowed: re-checked (as the backend's query,
        // although the reply is the packet that triggers it) and kept.
        assert_eq!(run(&dp, &udp4(c, 53, b, 5353), 0).1, R::PassEstablished);
        let dns = flow4(&dp, b, c).unwrap();
        assert_eq!(dns.generation, 2);
        assert_eq!(dns.packets, [1, 1]);
        let stats = nva::conntrack::Table::of(&dp).unwrap().stats().unwrap();
        assert_eq!(stats[nva_common::CT_STAT_REVOKED as usize], 1);
    });
}

#[test]
fn full_table_evicts_least_recent_flows_and_keeps_admitting() {
    require_root();
    in_private_netns(&[], |_| {
        // The kernel's LRU keeps a free list per CPU: runs that hop between
        // CPUs evict in an order only roughly by age. One CPU makes "least
        // recent first" exact, which is what this test checks.
        let mut one_cpu = nix::sched::CpuSet::new();
        one_cpu.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one_cpu).unwrap();
        const TABLE: u32 = 1024;
        const FLOWS: u16 = 5000;
        let dp = load_with_table(TABLE);
        let (b, c) = (BACKEND, CLIENT);
        for sport in 0..FLOWS {
            assert_eq!(run(&dp, &udp4(b, 10_000 + sport, c, 53), 0).1, R::PassRule);
        }
        // The newest flow is admitted and tracked: its reply passes.
        assert_eq!(run(&dp, &udp4(b, 9_999, c, 53), 0).1, R::PassRule);
        assert_eq!(run(&dp, &udp4(c, 53, b, 9_999), 0).1, R::PassEstablished);
        let table = nva::conntrack::Table::of(&dp).unwrap();
        let present = table.count().unwrap();
        assert!(
            present <= TABLE as usize,
            "{present} entries in a {TABLE}-entry table"
        );
        let stats = table.stats().unwrap();
        assert_eq!(
            stats[nva_common::CT_STAT_CREATED as usize],
            FLOWS as u64 + 1
        );
        let evictions = table.evictions(present).unwrap();
        assert_eq!(evictions, FLOWS as u64 + 1 - present as u64);
        assert!(evictions >= (FLOWS as u64) - TABLE as u64, "{evictions}");
        // The oldest flows were the ones evicted: their replies are dropped.
        assert_eq!(run(&dp, &udp4(c, 53, b, 10_000), 0).1, R::DropDefault);
    });
}

/// Issue "Hardening" §3: a flood of new flows larger than the table (one
/// packet each, two packets each, a SYN flood answered with SYN-ACKs by a
/// listening port) evicts no answered connection, however idle: answered
/// flows live apart from unreplied ones. With `loose_tcp = false`, an
/// evicted connection's next segment would be dropped as `tcp_not_tracked`.
#[test]
fn flood_of_new_flows_evicts_no_answered_connection() {
    require_root();
    in_private_netns(&[], |_| {
        const TABLE: u32 = 4096;
        const CONNECTIONS: u16 = 8;
        const FLOOD: u32 = 100_000;
        let dp = load_with_table(TABLE);
        let (b, c) = (BACKEND, CLIENT);
        for i in 0..CONNECTIONS {
            let sport = 40_000 + i;
            assert_eq!(run(&dp, &tcp4(b, sport, c, 80, SYN), 0).1, R::PassRule);
            assert_eq!(
                run(&dp, &tcp4(c, 80, b, sport, SYN | ACK), 0).1,
                R::PassEstablished
            );
            assert_eq!(
                run(&dp, &tcp4(b, sport, c, 80, ACK), 0).1,
                R::PassEstablished
            );
        }
        // Sources spread over the allowed backend network, so every flood
        // flow is admitted and tracked.
        let source = |n: u32| format!("10.1.{}.{}", (n >> 8) & 0xff, n & 0xff);
        let pass = |frame: &[u8]| {
            let action = dp.test_run(frame, 0).expect("test run");
            assert_eq!(action, nva_tests::test_run::XDP_PASS);
        };
        let floods: [(&str, u32); 3] = [
            ("udp, one packet per flow", 1),
            ("udp, two packets per flow", 2),
            ("syn flood answered with syn-ack", 0),
        ];
        for (name, per_flow) in floods {
            for n in 0..FLOOD {
                let (src, sport) = (source(n), 1024 + (n >> 16) as u16 + 7 * per_flow as u16);
                if per_flow == 0 {
                    pass(&tcp4(&src, sport, c, 80, SYN));
                    pass(&tcp4(c, 80, &src, sport, SYN | ACK));
                } else {
                    let frame = udp4(&src, sport, c, 53);
                    for _ in 0..per_flow {
                        pass(&frame);
                    }
                }
            }
            let table = nva::conntrack::Table::of(&dp).unwrap();
            let (answered, unreplied) = table.counts().unwrap();
            eprintln!("after {FLOOD} flows ({name}): {answered} answered, {unreplied} unreplied");
            assert!(
                unreplied <= nva::datapath::unreplied_capacity(TABLE) as usize,
                "{unreplied} unreplied flows"
            );
            for i in 0..CONNECTIONS {
                let sport = 40_000 + i;
                assert_eq!(
                    run(&dp, &tcp4(c, 80, b, sport, PSH | ACK), 0).1,
                    R::PassEstablished,
                    "connection {i} after the flood ({name})"
                );
                assert_eq!(
                    run(&dp, &tcp4(b, sport, c, 80, PSH | ACK), 0).1,
                    R::PassEstablished,
                    "connection {i} after the flood ({name})"
                );
            }
            assert_eq!(answered, CONNECTIONS as usize, "after {name}");
        }
        let stats = nva::conntrack::Table::of(&dp).unwrap().stats().unwrap();
        assert_eq!(
            stats[nva_common::CT_STAT_PROMOTED as usize],
            CONNECTIONS as u64
        );
    });
}

/// The lean path of established flows reads headers straight from the
/// frame: a malformed frame of a tracked connection must still get the
/// parser's drop reason, and shapes the lean path leaves to the full path
/// (IPv4 options) must pass all the same, IPv6 takes it too; the flow's
/// counters count every passed packet whichever path took it.
#[test]
fn established_packets_take_the_lean_path_only_when_well_formed() {
    require_root();
    in_private_netns(&[], |_| {
        let dp = load(false, Default::default());
        let (b, c) = (BACKEND, CLIENT);
        for (flags, from_backend) in [(SYN, true), (SYN | ACK, false), (ACK, true)] {
            let frame = if from_backend {
                tcp4(b, 40000, c, 80, flags)
            } else {
                tcp4(c, 80, b, 40000, flags)
            };
            assert!(run(&dp, &frame, 0).1.is_pass());
        }
        let ack = tcp4(b, 40000, c, 80, ACK);
        assert_eq!(run(&dp, &ack, 0).1, R::PassEstablished);
        // IPv4 total length beyond the frame.
        let mut long = ack.clone();
        long[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(run(&dp, &long, 0).1, R::DropMalformedIpv4);
        // TCP data offset under 5 words, and past the frame.
        let mut short_doff = ack.clone();
        short_doff[14 + 20 + 12] = 4 << 4;
        assert_eq!(run(&dp, &short_doff, 0).1, R::DropMalformedL4);
        let mut long_doff = ack.clone();
        long_doff[14 + 20 + 12] = 15 << 4;
        assert_eq!(run(&dp, &long_doff, 0).1, R::DropMalformedL4);
        // A TCP header cut short (IP length adjusted to the frame).
        let mut cut = ack[..14 + 20 + 10].to_vec();
        cut[16..18].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(run(&dp, &cut, 0).1, R::DropMalformedL4);
        // IP version 5.
        let mut version = ack.clone();
        version[14] = 0x55;
        assert_eq!(run(&dp, &version, 0).1, R::DropMalformedIpv4);
        // A shape for the full path: IPv4 options.
        let with_options = ethernet(
            &[],
            ETH_P_IP,
            &ipv4(v4(b), v4(c), 6, &[1, 1, 1, 1], 0, &tcp(40000, 80, ACK)),
        );
        assert_eq!(run(&dp, &with_options, 0).1, R::PassEstablished);
        // A reply with PSH, and a FIN: the state machine's business.
        assert_eq!(
            run(&dp, &tcp4(c, 80, b, 40000, PSH | ACK), 0).1,
            R::PassEstablished
        );
        let e = flow4(&dp, b, c).unwrap();
        assert_eq!(e.packets, [4, 2], "every passed packet counted");
        assert_eq!(
            run(&dp, &tcp4(b, 40000, c, 80, FIN | ACK), 0).1,
            R::PassEstablished
        );
        assert_eq!(state(&dp, b, c), ConntrackState::TcpFinWait);
        // A segment with SYN on the established connection is still refused.
        assert_eq!(run(&dp, &tcp4(b, 40000, c, 80, SYN), 0).1, R::DropTcpState);
        // IPv6: the same through the lean path.
        for (flags, from_backend) in [(SYN, true), (SYN | ACK, false), (ACK, true)] {
            let frame = if from_backend {
                tcp6(BACKEND6, 40001, CLIENT6, 80, flags)
            } else {
                tcp6(CLIENT6, 80, BACKEND6, 40001, flags)
            };
            assert!(run(&dp, &frame, 0).1.is_pass());
        }
        let ack6 = tcp6(BACKEND6, 40001, CLIENT6, 80, ACK);
        assert_eq!(run(&dp, &ack6, 0).1, R::PassEstablished);
        let mut long6 = ack6.clone();
        long6[18..20].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(run(&dp, &long6, 0).1, R::DropMalformedIpv6);
    });
}
