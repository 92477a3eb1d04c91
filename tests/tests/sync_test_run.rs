//! Connection-state sync through the real program (BPF_PROG_TEST_RUN): flows
//! tracked on one NVA, exported as sync records, imported into the other,
//! whose public address differs (mapped by NAT entry name). The standby
//! then carries the connections on: a mid-stream TCP segment passes with
//! `loose_tcp = false`, translated flows are translated as on the origin
//! (to the standby's own public address), and a flow the standby's rules
//! refuse is not imported.

use std::net::IpAddr;

use nva::classifier::compiler::compile;
use nva::conntrack::{now_ns, Table};
use nva::datapath::DataPath;
use nva::nat::CompiledNat;
use nva::policy::config::parse_config;
use nva::policy::model::Config;
use nva::sync::codec::{decode_flows, encode_flows};
use nva::sync::flows::{export, import, Context, Imported};
use nva_common::PacketReason as R;
use nva_tests::frames::*;
use nva_tests::test_run::XDP_ABORTED;
use nva_tests::{in_private_netns, require_root};

use nva_common::{TCP_ACK as ACK, TCP_PSH as PSH, TCP_SYN as SYN};

const PUBLIC_A: &str = "198.51.100.1";
const PUBLIC_B: &str = "198.51.100.2";
const WORKLOAD: &str = "10.1.0.10";
const CLIENT: &str = "192.0.2.7";
const SERVER: &str = "203.0.113.9";

fn config(public: &str, extra_rule: &str) -> Config {
    let text = format!(
        r#"
[agent]
interfaces = ["eth0"]
[policy]
default = "drop"
stateful = true
loose_tcp = false

[[rules]]
name = "web"
action = "allow"
proto = "tcp"
dst = ["10.1.0.10/32"]
dport = ["8443"]

[[rules]]
name = "out"
action = "allow"
src = ["10.1.0.0/16"]
{extra_rule}
[[nat]]
name = "web-in"
kind = "dnat"
proto = "tcp"
dst = ["{public}/32"]
dport = ["443"]
to = "10.1.0.10:8443"

[[nat]]
name = "egress"
kind = "snat"
src = ["10.1.0.0/16"]
to = "{public}"
to_ports = "20000-29999"
"#
    );
    parse_config("sync.toml", &text).unwrap_or_else(|e| panic!("{e:?}"))
}

fn states(names: impl Iterator<Item = String>) -> Vec<(String, u32)> {
    names
        .enumerate()
        .map(|(i, name)| (name, i as u32))
        .collect()
}

struct Side {
    dp: DataPath,
    config: Config,
    rules: Vec<(String, u32)>,
    nat: Vec<(String, u32)>,
}

impl Side {
    fn new(config: Config) -> Side {
        let compiled = compile(&config.rules, &config.policy).unwrap();
        let nat_counters: Vec<u32> = (0..config.nat.len() as u32).collect();
        let nat = CompiledNat::compile(&config.nat).tables(&nat_counters, &|_| None);
        let dp = DataPath::load_with_nat(&compiled, &nat, 1, &|_| None).unwrap();
        Side {
            dp,
            rules: states(config.rules.iter().map(|r| r.name.clone())),
            nat: states(config.nat.iter().map(|n| n.name.clone())),
            config,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Context) -> T) -> T {
        let timeouts = self.config.policy.timeouts.by_state();
        let cx = Context {
            config: &self.config,
            rules: &self.rules,
            nat: &self.nat,
            generation: 1,
            timeouts_s: &timeouts,
            ifindex_of: &|_| None,
        };
        f(&cx)
    }

    /// Runs a frame; asserts the reason; returns the frame as it leaves.
    fn run(&self, f: &[u8], reason: R) -> Vec<u8> {
        let before = self.dp.packet_counters().unwrap();
        let (action, out) = self.dp.test_run_out(f, 0).unwrap();
        assert_ne!(action, XDP_ABORTED);
        let after = self.dp.packet_counters().unwrap();
        let moved: Vec<R> = R::ALL
            .iter()
            .copied()
            .filter(|r| after[*r as usize] != before[*r as usize])
            .collect();
        assert_eq!(moved, vec![reason]);
        if reason.is_pass() {
            check_checksums(&out).unwrap();
        }
        out
    }
}

fn tcp4(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let (IpAddr::V4(s), IpAddr::V4(d)) = (s, d) else {
        unreachable!()
    };
    with_checksums(ethernet(
        &[],
        ETH_P_IP,
        &ipv4(s, d, 6, &[], 0, &tcp(sport, dport, flags)),
    ))
}

fn addrs(f: &[u8]) -> (String, u16, String, u16) {
    let be = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    (
        std::net::Ipv4Addr::new(f[26], f[27], f[28], f[29]).to_string(),
        be(34),
        std::net::Ipv4Addr::new(f[30], f[31], f[32], f[33]).to_string(),
        be(36),
    )
}

/// A full handshake of `client:sport -> dst:dport` through `side`, with
/// the responder at `resp` answering; returns the port the responder saw
/// the originator use.
fn handshake(
    side: &Side,
    client: &str,
    sport: u16,
    dst: &str,
    dport: u16,
) -> (String, u16, String, u16) {
    let out = side.run(&tcp4(client, sport, dst, dport, SYN), R::PassRule);
    let (s, sp, d, dp) = addrs(&out);
    side.run(&tcp4(&d, dp, &s, sp, SYN | ACK), R::PassEstablished);
    side.run(&tcp4(client, sport, dst, dport, ACK), R::PassEstablished);
    (s, sp, d, dp)
}

#[test]
fn imported_flows_carry_on_at_the_standby() {
    require_root();
    in_private_netns(&[], |_| {
        let a = Side::new(config(PUBLIC_A, ""));
        let b = Side::new(config(PUBLIC_B, ""));

        // On the active NVA: a plain connection, one through DNAT (to the
        // active's public address), one through SNAT.
        handshake(&a, CLIENT, 40000, WORKLOAD, 8443);
        let dnat = handshake(&a, CLIENT, 40001, PUBLIC_A, 443);
        assert_eq!((dnat.2.as_str(), dnat.3), (WORKLOAD, 8443));
        let snat = handshake(&a, WORKLOAD, 5000, SERVER, 80);
        assert_eq!(snat.0, PUBLIC_A);
        let snat_port = snat.1;

        // Before the import the standby refuses a mid-stream segment.
        b.run(
            &tcp4(CLIENT, 40000, WORKLOAD, 8443, ACK | PSH),
            R::DropTcpNotTracked,
        );

        // Export, through the wire format, import.
        let records = a
            .with(|cx| export(&Table::of(&a.dp).unwrap(), cx, now_ns()))
            .unwrap();
        assert_eq!(records.len(), 3, "{records:#?}");
        let records = decode_flows(&encode_flows(&records)).unwrap();
        let mut table = Table::of(&b.dp).unwrap();
        let stats = b
            .with(|cx| import(&mut table, cx, &records, now_ns()))
            .unwrap();
        assert_eq!(
            stats,
            Imported {
                imported: 3,
                ended: 0,
                refused: 0,
                kept: 0
            }
        );

        // The plain connection carries on (loose_tcp = false).
        b.run(
            &tcp4(CLIENT, 40000, WORKLOAD, 8443, ACK | PSH),
            R::PassEstablished,
        );
        b.run(
            &tcp4(WORKLOAD, 8443, CLIENT, 40000, ACK),
            R::PassEstablished,
        );
        // The DNAT flow arrives at the standby's public address (the public
        // IP moved) and is translated as on the origin; replies leave from
        // the standby's public address.
        let out = b.run(
            &tcp4(CLIENT, 40001, PUBLIC_B, 443, ACK | PSH),
            R::PassEstablished,
        );
        assert_eq!(addrs(&out), (CLIENT.into(), 40001, WORKLOAD.into(), 8443));
        let out = b.run(
            &tcp4(WORKLOAD, 8443, CLIENT, 40001, ACK),
            R::PassEstablished,
        );
        assert_eq!(addrs(&out), (PUBLIC_B.into(), 443, CLIENT.into(), 40001));
        // The SNAT flow keeps its port on the standby's address.
        let out = b.run(
            &tcp4(WORKLOAD, 5000, SERVER, 80, ACK | PSH),
            R::PassEstablished,
        );
        assert_eq!(addrs(&out), (PUBLIC_B.into(), snat_port, SERVER.into(), 80));
        let out = b.run(
            &tcp4(SERVER, 80, PUBLIC_B, snat_port, ACK),
            R::PassEstablished,
        );
        assert_eq!(addrs(&out), (SERVER.into(), 80, WORKLOAD.into(), 5000));
    });
}

#[test]
fn flows_the_standby_refuses_are_not_imported() {
    require_root();
    in_private_netns(&[], |_| {
        // The active allows tcp/22 to the workload; the standby does not.
        let ssh =
            "\n[[rules]]\nname = \"ssh\"\naction = \"allow\"\nproto = \"tcp\"\ndport = [\"22\"]\n";
        let a = Side::new(config(PUBLIC_A, ssh));
        let b = Side::new(config(PUBLIC_B, ""));
        handshake(&a, CLIENT, 40000, WORKLOAD, 22);
        handshake(&a, CLIENT, 40001, WORKLOAD, 8443);
        let records = a
            .with(|cx| export(&Table::of(&a.dp).unwrap(), cx, now_ns()))
            .unwrap();
        let mut table = Table::of(&b.dp).unwrap();
        let stats = b
            .with(|cx| import(&mut table, cx, &records, now_ns()))
            .unwrap();
        assert_eq!(
            stats,
            Imported {
                imported: 1,
                ended: 0,
                refused: 1,
                kept: 0
            }
        );
        b.run(
            &tcp4(CLIENT, 40000, WORKLOAD, 22, ACK),
            R::DropTcpNotTracked,
        );
        b.run(
            &tcp4(CLIENT, 40001, WORKLOAD, 8443, ACK),
            R::PassEstablished,
        );
    });
}
