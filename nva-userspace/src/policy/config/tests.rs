use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use super::*;
use crate::policy::model::{
    Action, AgentSettings, Cidr, Config, ConntrackTimeouts, ForwardMode, ManagementPort,
    PolicySettings, PortRange, Proto, Rule, XdpModeSetting, DEFAULT_CONNTRACK_MAX,
};

const DESIGN_EXAMPLE: &str = r#"[agent]
interfaces = ["eth0", "eth1"]     # XDP is attached to each
xdp_mode = "auto"                 # auto | driver | skb
forward = "kernel"                # kernel | xdp
health_listen = "0.0.0.0:9090"    # HTTP: /health /status /metrics (read-only)
bpffs = "/sys/fs/bpf/nva"          # per agent: bpffs is shared by all network namespaces

[policy]
default = "drop"                  # verdict for a new flow that no rule matches
stateful = true                   # replies of allowed flows pass
loose_tcp = false                 # true: pick up mid-stream TCP (after a failover without state sync)
fragments = "drop"                # drop | allow (non-first fragments)
management = ["tcp/22"]           # always allowed; the health port is added

[[rules]]
name = "web-in"                   # unique; shown in counters and metrics
action = "allow"                  # allow | drop
proto = "tcp"                     # tcp | udp | icmp | icmpv6 | any   (default any)
src = ["0.0.0.0/0", "::/0"]       # CIDRs, v4 and/or v6                 (default any)
dst = ["10.1.0.0/24"]
sport = ["1024-65535"]            # ports and ranges                    (default any)
dport = ["80", "443", "8000-8100"]
icmp_type = [8]                   # only with proto icmp/icmpv6
in_iface = "eth0"                 # optional: only packets arriving here
log = false                       # emit sampled events for matches
"#;

const HEAD: &str = "[agent]\ninterfaces = [\"eth0\"]\n\n[policy]\ndefault = \"drop\"\n";

fn cidr(s: &str) -> Cidr {
    Cidr::parse(s).unwrap()
}

fn errs(text: &str) -> Vec<String> {
    parse_config("f.toml", text)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect()
}

/// The single error of `HEAD` + `rest`.
fn one_err(rest: &str) -> String {
    let e = errs(&format!("{HEAD}{rest}"));
    assert_eq!(e.len(), 1, "{e:#?}");
    e[0].clone()
}

fn ok(text: &str) -> Config {
    match parse_config("f.toml", text) {
        Ok(c) => c,
        Err(e) => panic!("{e:#?}"),
    }
}

#[test]
fn design_example_has_icmp_type_with_tcp() {
    // The DESIGN.md example lists every key, including icmp_type next to
    // proto = "tcp", which is contradictory; it is reported.
    let e: Vec<String> = parse_config("f.toml", DESIGN_EXAMPLE)
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        e,
        ["f.toml:23:13: icmp_type needs proto = \"icmp\" or \"icmpv6\""]
    );
}

#[test]
fn design_example_parses() {
    let text = DESIGN_EXAMPLE.replace("icmp_type = [8]", "");
    let c = parse_config("f.toml", &text).unwrap();
    let expected = Config {
        agent: AgentSettings {
            interfaces: vec!["eth0".into(), "eth1".into()],
            xdp_mode: XdpModeSetting::Auto,
            forward: ForwardMode::Kernel,
            health_listen: "0.0.0.0:9090".parse().unwrap(),
            tcp_probe_listen: None,
            health_interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            bpffs: PathBuf::from("/sys/fs/bpf/nva"),
        },
        policy: PolicySettings {
            default: Action::Drop,
            stateful: true,
            loose_tcp: false,
            fragments_allow: false,
            log_drops: false,
            management: vec![
                ManagementPort {
                    proto: Proto::Tcp,
                    port: 22,
                },
                ManagementPort {
                    proto: Proto::Tcp,
                    port: 9090,
                },
            ],
            conntrack_max: DEFAULT_CONNTRACK_MAX,
            timeouts: ConntrackTimeouts::default(),
        },
        rules: vec![Rule {
            name: "web-in".into(),
            action: Action::Allow,
            proto: Proto::Tcp,
            src: vec![
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    len: 0,
                },
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    len: 0,
                },
            ],
            dst: vec![Cidr {
                addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 0)),
                len: 24,
            }],
            sport: vec![PortRange {
                lo: 1024,
                hi: 65535,
            }],
            dport: vec![
                PortRange { lo: 80, hi: 80 },
                PortRange { lo: 443, hi: 443 },
                PortRange { lo: 8000, hi: 8100 },
            ],
            icmp_type: vec![],
            in_iface: Some("eth0".into()),
            log: false,
        }],
        nat: Vec::new(),
        sync: None,
    };
    assert_eq!(c, expected);
}

#[test]
fn icmp_rule() {
    let c = ok(&format!(
        "{HEAD}[[rules]]\nname = \"ping\"\naction = \"allow\"\nproto = \"icmp\"\nicmp_type = [8, 0, 8]\n\
         [[rules]]\nname = \"ping6\"\naction = \"allow\"\nproto = \"icmpv6\"\nicmp_type = [128]\nsrc = \"any\"\n"
    ));
    assert_eq!(c.rules[0].icmp_type, vec![8, 0]);
    assert_eq!(c.rules[1].icmp_type, vec![128]);
    assert!(c.rules[1].src.is_empty());
}

#[test]
fn defaults_and_health_port() {
    let c = ok(HEAD);
    assert_eq!(c.agent.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(c.agent.forward, ForwardMode::Kernel);
    assert_eq!(c.agent.health_listen, "0.0.0.0:9090".parse().unwrap());
    assert_eq!(c.agent.bpffs, PathBuf::from(DEFAULT_BPFFS));
    assert!(!c.policy.stateful && !c.policy.loose_tcp && !c.policy.fragments_allow);
    assert_eq!(
        c.policy.management,
        vec![ManagementPort {
            proto: Proto::Tcp,
            port: 9090
        }]
    );
    assert!(c.rules.is_empty());
}

#[test]
fn management_dedup_and_probe_port() {
    let c = ok("[agent]\ninterfaces = [\"eth0\"]\nhealth_listen = \"[::]:8080\"\n\
         tcp_probe_listen = \"10.0.0.1:9091\"\nxdp_mode = \"skb\"\n\
         [policy]\ndefault = \"allow\"\nmanagement = [\"tcp/8080\", \"udp/53\", \"tcp/22\", \"udp/53\"]\n\
         fragments = \"allow\"\nlog_drops = true\nconntrack_max = 1000\n\
         [policy.timeouts]\ntcp_established = 3600\nudp = 30\n");
    assert_eq!(c.agent.xdp_mode, XdpModeSetting::Skb);
    assert_eq!(
        c.agent.tcp_probe_listen,
        Some("10.0.0.1:9091".parse().unwrap())
    );
    assert!(c.policy.fragments_allow);
    assert_eq!(c.policy.default, Action::Allow);
    assert_eq!(c.policy.conntrack_max, 1000);
    assert_eq!(
        c.policy.timeouts,
        ConntrackTimeouts {
            tcp_established: 3600,
            ..ConntrackTimeouts::default()
        }
    );
    let m = |proto, port| ManagementPort { proto, port };
    assert_eq!(
        c.policy.management,
        vec![
            m(Proto::Tcp, 8080),
            m(Proto::Udp, 53),
            m(Proto::Tcp, 22),
            m(Proto::Tcp, 9091)
        ]
    );
}

#[test]
fn addresses() {
    let c = ok(&format!(
        "{HEAD}[[rules]]\nname = \"a\"\naction = \"drop\"\nsrc = [\"10.0.0.1\", \"2001:db8::1\", \"10.0.0.1/32\"]\ndst = [\"any\"]\n"
    ));
    assert_eq!(
        c.rules[0].src,
        vec![cidr("10.0.0.1/32"), cidr("2001:db8::1/128")]
    );
    assert!(c.rules[0].dst.is_empty());
    assert_eq!(c.rules[0].proto, Proto::Any);
}

#[test]
fn ports_as_integers_too() {
    let c = ok(&format!(
        "{HEAD}[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"udp\"\ndport = [53, \"67-68\"]\n"
    ));
    assert_eq!(
        c.rules[0].dport,
        vec![PortRange { lo: 53, hi: 53 }, PortRange { lo: 67, hi: 68 }]
    );
}

#[test]
fn port_errors() {
    let rule = "[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"tcp\"\n";
    assert_eq!(
        one_err(&format!("{rule}dport = [\"80\", \"8100-8000\"]\n")),
        "f.toml:10:16: port range 8100-8000 is out of order"
    );
    assert_eq!(
        one_err(&format!("{rule}sport = [\"70000\"]\n")),
        "f.toml:10:10: port 70000 is out of range (0 to 65535)"
    );
    assert_eq!(
        one_err(&format!("{rule}sport = [70000]\n")),
        "f.toml:10:10: port 70000 is out of range (0 to 65535)"
    );
    assert_eq!(
        one_err(&format!("{rule}dport = [\"http\"]\n")),
        "f.toml:10:10: \"http\" is not a port number"
    );
    assert_eq!(
        one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\ndport = [\"80\"]\n"),
        "f.toml:9:9: sport/dport need proto = \"tcp\" or \"udp\""
    );
    assert!(one_err(
        "[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"icmp\"\nsport = [\"80\"]\n"
    )
    .ends_with("sport/dport need proto = \"tcp\" or \"udp\""));
}

#[test]
fn icmp_type_errors() {
    assert_eq!(
        one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"tcp\"\nicmp_type = [8]\n"),
        "f.toml:10:13: icmp_type needs proto = \"icmp\" or \"icmpv6\""
    );
    assert!(
        one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\nicmp_type = [8]\n")
            .ends_with("icmp_type needs proto = \"icmp\" or \"icmpv6\"")
    );
    assert_eq!(
        one_err(
            "[[rules]]\nname = \"a\"\naction = \"allow\"\nproto = \"icmp\"\nicmp_type = [8, 256]\n"
        ),
        "f.toml:10:17: icmp_type 256 is not an integer from 0 to 255"
    );
}

#[test]
fn cidr_errors() {
    let rule = "[[rules]]\nname = \"a\"\naction = \"allow\"\n";
    assert_eq!(
        one_err(&format!("{rule}src = [\"10.0.0.1/24\"]\n")),
        "f.toml:9:8: 10.0.0.1/24 has host bits set; did you mean 10.0.0.0/24?"
    );
    assert_eq!(
        one_err(&format!("{rule}dst = [\"10.0.0.0/33\"]\n")),
        "f.toml:9:8: prefix length /33 in \"10.0.0.0/33\" is out of range for IPv4 (0 to 32)"
    );
    assert!(one_err(&format!("{rule}dst = [\"::/129\"]\n")).contains("out of range for IPv6"));
    assert!(one_err(&format!("{rule}dst = [\"10.0.0.300\"]\n")).contains("is not an IP address"));
    assert!(one_err(&format!("{rule}dst = []\n")).contains("matches nothing"));
    assert_eq!(
        one_err(&format!(
            "{rule}src = [\"10.0.0.0/8\"]\ndst = [\"2001:db8::/32\"]\n"
        )),
        "f.toml:10:7: rule \"a\" can never match: src is IPv4 only and dst is IPv6 only"
    );
    assert!(one_err(&format!(
        "{rule}proto = \"icmp\"\nsrc = [\"2001:db8::/32\"]\n"
    ))
    .contains("can never match"));
    assert!(
        one_err(&format!("{rule}proto = \"icmpv6\"\ndst = \"10.0.0.0/8\"\n"))
            .contains("can never match")
    );
    // Mixed families on one side are fine when the other side has one.
    ok(&format!(
        "{HEAD}{rule}src = [\"10.0.0.0/8\", \"2001:db8::/32\"]\ndst = [\"2001:db8::/32\"]\n"
    ));
}

#[test]
fn rule_name_errors() {
    let dup =
        "[[rules]]\nname = \"a\"\naction = \"allow\"\n[[rules]]\nname = \"a\"\naction = \"drop\"\n";
    assert_eq!(
        one_err(dup),
        "f.toml:10:8: duplicate rule name \"a\" (first used on line 7)"
    );
    let long = "x".repeat(64);
    assert!(one_err(&format!(
        "[[rules]]\nname = \"{long}\"\naction = \"allow\"\n"
    ))
    .contains("must be 1 to 63 bytes long"));
    ok(&format!(
        "{HEAD}[[rules]]\nname = \"{}\"\naction = \"allow\"\n",
        "x".repeat(63)
    ));
    assert!(one_err("[[rules]]\naction = \"allow\"\n").contains("needs a unique name"));
    assert!(one_err("[[rules]]\nname = \"a\"\n").contains("has no action"));
    assert_eq!(
        one_err("[[rules]]\nname = \"a\"\naction = \"reject\"\n"),
        "f.toml:8:10: action = \"reject\" is not valid; expected \"allow\" or \"drop\""
    );
}

#[test]
fn in_iface_must_be_an_agent_interface() {
    assert_eq!(
        one_err("[[rules]]\nname = \"a\"\naction = \"allow\"\nin_iface = \"eth9\"\n"),
        "f.toml:9:12: in_iface = \"eth9\" is not one of agent.interfaces (eth0)"
    );
}

#[test]
fn agent_errors() {
    let pol = "[policy]\ndefault = \"drop\"\n";
    let e = errs(&format!(
        "[agent]\ninterfaces = [\"eth0\", \"a/b\", \"this-name-is-too-long\", \"eth0\", \"\"]\n{pol}"
    ));
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(e[0].starts_with("f.toml:2:23: ") && e[0].contains("not a valid interface name"));
    assert!(e[1].starts_with("f.toml:2:30: ") && e[1].contains("1 to 15 bytes"));
    assert_eq!(e[2], "f.toml:2:55: interface \"eth0\" is listed twice");
    assert!(e[3].starts_with("f.toml:2:63: "));

    assert!(errs(&format!("[agent]\ninterfaces = []\n{pol}"))[0]
        .starts_with("f.toml:2:14: agent.interfaces must name at least one interface"));
    assert!(errs(&format!("[agent]\nxdp_mode = \"auto\"\n{pol}"))[0]
        .contains("agent.interfaces is required"));
    assert_eq!(
        errs(&format!("[agent]\ninterfaces = [\"eth0\"]\nxdp_mode = \"native\"\n{pol}")),
        ["f.toml:3:12: agent.xdp_mode = \"native\" is not valid; expected \"auto\", \"driver\" or \"skb\""]
    );
    let c = parse_config(
        "f.toml",
        &format!("[agent]\ninterfaces = [\"eth0\"]\nforward = \"xdp\"\n{pol}"),
    )
    .unwrap();
    assert_eq!(c.agent.forward, ForwardMode::Xdp);
    assert_eq!(
        errs(&format!(
            "[agent]\ninterfaces = [\"eth0\"]\nbpffs = \"nva\"\n{pol}"
        )),
        ["f.toml:3:9: agent.bpffs must be an absolute path, got \"nva\""]
    );
    assert!(errs(&format!(
        "[agent]\ninterfaces = [\"eth0\"]\nhealth_listen = \"9090\"\n{pol}"
    ))[0]
        .starts_with("f.toml:3:17: agent.health_listen = \"9090\" is not an address with a port"));
    assert!(errs(&format!(
        "[agent]\ninterfaces = [\"eth0\"]\ntcp_probe_listen = \"127.0.0.1:9090\"\n{pol}"
    ))[0]
        .contains("would share a port"));
}

#[test]
fn policy_errors() {
    let agent = "[agent]\ninterfaces = [\"eth0\"]\n";
    assert_eq!(
        errs(&format!("{agent}[policy]\nstateful = false\n")),
        ["f.toml:3:1: policy.default is required (\"allow\" or \"drop\"): the verdict for traffic no rule matches"]
    );
    assert!(errs(agent)[0].contains("missing [policy] table"));
    assert_eq!(
        errs(&format!("{agent}[policy]\ndefault = \"drop\"\nmanagement = [\"ssh\", \"tcp/70000\", \"udp/0\"]\nfragments = \"reassemble\"\n")),
        [
            "f.toml:5:15: management entry \"ssh\" must look like \"tcp/22\" or \"udp/53\"",
            "f.toml:5:22: port 70000 is out of range (0 to 65535)",
            "f.toml:5:35: management entry \"udp/0\": port 0 is not a service port",
            "f.toml:6:13: policy.fragments = \"reassemble\" is not valid; expected \"drop\" or \"allow\"",
        ]
    );
    assert_eq!(
        errs(&format!("{agent}[policy]\ndefault = \"drop\"\nconntrack_max = 0\n[policy.timeouts]\ntcp_syn = -1\n")),
        [
            "f.toml:5:17: policy.conntrack_max = 0 is out of range (1 to 4294967295)",
            "f.toml:7:11: policy.timeouts.tcp_syn = -1 is out of range (1 to 4294967295)",
        ]
    );
    assert_eq!(
        errs(&format!(
            "{agent}[policy]\ndefault = \"drop\"\n[policy.timeouts]\nudp = 86401\n"
        )),
        ["f.toml:6:7: policy.timeouts.udp = 86401 is out of range (1 to 86400 seconds)"]
    );
}

#[test]
fn serde_errors_have_positions() {
    // Unknown key: points at the key.
    let e = errs(&format!("{HEAD}colour = \"blue\"\n"));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("f.toml:6:1: unknown field `colour`"),
        "{e:?}"
    );
    // Wrong type.
    let e = errs(&format!("{HEAD}stateful = \"yes\"\n"));
    assert!(e[0].starts_with("f.toml:6:12: "), "{e:?}");
    // Syntax error.
    let e = errs("[agent\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("f.toml:1:7: unclosed table"), "{e:?}");
    assert!(!e[0].contains('\n'), "{e:?}");
    // Duplicate key.
    let e = errs(&format!("{HEAD}default = \"allow\"\n"));
    assert!(
        e[0].starts_with("f.toml:6:1: duplicate key `default`"),
        "{e:?}"
    );
    // Unknown key in a rule.
    let e = errs(&format!(
        "{HEAD}[[rules]]\nname = \"a\"\naction = \"allow\"\nport = [\"80\"]\n"
    ));
    assert!(
        e[0].starts_with("f.toml:9:1: unknown field `port`"),
        "{e:?}"
    );
}

#[test]
fn all_semantic_errors_are_collected_in_order() {
    let text = "[agent]\ninterfaces = [\"eth0\"]\nforward = \"fast\"\n\
                [policy]\ndefault = \"drop\"\nstateful = true\n\
                [[rules]]\nname = \"a\"\naction = \"allow\"\ndport = [\"80\"]\n\
                [[rules]]\nname = \"b\"\naction = \"allow\"\nsrc = [\"10.0.0.1/8\"]\n";
    let e = errs(text);
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].starts_with("f.toml:3:11: agent.forward = \"fast\" is not valid"));
    assert!(e[1].starts_with("f.toml:10:9: sport/dport"));
    assert!(e[2].starts_with("f.toml:14:8: 10.0.0.1/8 has host bits set"));
}

#[test]
fn io_error_display() {
    let e = load_config(Path::new("/nonexistent/nva.toml")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].line, e[0].col), (0, 0));
    assert!(e[0]
        .to_string()
        .starts_with("/nonexistent/nva.toml: cannot read: "));
}

#[test]
fn load_config_reads_file() {
    let path = std::env::temp_dir().join(format!("nva-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, HEAD).unwrap();
    let c = load_config(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(c.unwrap().agent.interfaces, vec!["eth0".to_string()]);
}

const STATEFUL: &str =
    "[agent]\ninterfaces = [\"eth0\"]\n\n[policy]\ndefault = \"drop\"\nstateful = true\n";

#[test]
fn nat_entries_parse() {
    let c = ok(&format!(
        "{STATEFUL}[[nat]]\nname = \"in\"\nkind = \"dnat\"\nproto = \"tcp\"\ndst = [\"10.0.1.4/32\"]\ndport = [\"443\"]\nto = \"10.0.2.10:8443\"\n\n[[nat]]\nname = \"in6\"\nkind = \"dnat\"\nproto = \"tcp\"\ndst = [\"2001:db8::4/128\"]\nto = \"[fd00::10]:8443\"\n\n[[nat]]\nname = \"out\"\nkind = \"snat\"\nsrc = [\"10.0.2.0/24\"]\nto = \"10.0.1.4\"\n"
    ));
    assert_eq!(c.nat.len(), 3);
    assert_eq!(c.nat[0].to_port, Some(8443));
    assert_eq!(c.nat[1].to.to_string(), "fd00::10");
    assert_eq!(c.nat[2].to_ports, crate::policy::model::DEFAULT_SNAT_PORTS);
}

#[test]
fn nat_refusals_name_file_line_col() {
    // NAT without stateful tracking.
    let e = one_err(
        "[[nat]]\nname = \"x\"\nkind = \"snat\"\nsrc = [\"10.0.0.0/8\"]\nto = \"192.0.2.1\"\n",
    );
    assert!(
        e.starts_with("f.toml:6:1: [[nat]] needs policy.stateful = true"),
        "{e}"
    );
    let one = |rest: &str| {
        let e = errs(&format!("{STATEFUL}{rest}"));
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    };
    // An SNAT address of the other family.
    let e = one(
        "[[nat]]\nname = \"x\"\nkind = \"snat\"\nsrc = [\"10.0.0.0/8\"]\nto = \"2001:db8::1\"\n",
    );
    assert!(e.starts_with("f.toml:11:6: nat entry \"x\": to = 2001:db8::1 is IPv6 but the entry matches IPv4 only"), "{e}");
    // An empty port range.
    let e = one(
        "[[nat]]\nname = \"x\"\nkind = \"snat\"\nto = \"192.0.2.1\"\nto_ports = \"3000-2000\"\n",
    );
    assert!(
        e.starts_with("f.toml:11:12: to_ports = \"3000-2000\" is an empty range"),
        "{e}"
    );
    // Duplicate names.
    let e = one("[[nat]]\nname = \"x\"\nkind = \"snat\"\nto = \"192.0.2.1\"\n\n[[nat]]\nname = \"x\"\nkind = \"snat\"\nto = \"192.0.2.2\"\n");
    assert!(
        e.starts_with("f.toml:13:8: duplicate nat entry name \"x\" (first used on line 8)"),
        "{e}"
    );
    // A kind that does not exist, and no target.
    let e = errs(&format!(
        "{STATEFUL}[[nat]]\nname = \"x\"\nkind = \"masquerade\"\n"
    ));
    assert!(
        e.iter().any(|e| e.contains("kind = \"masquerade\"")),
        "{e:#?}"
    );
    assert!(e.iter().any(|e| e.contains("has no `to`")), "{e:#?}");
}

#[test]
fn sync_table_parses_and_refusals_name_file_line_col() {
    let c = ok(&format!(
        "{HEAD}\n[sync]\nlisten = \"10.99.1.11:7800\"\npeer = \"10.99.1.12:7800\"\nkey_file = \"/etc/nva/sync.key\"\n"
    ));
    let s = c.sync.expect("[sync]");
    assert_eq!(s.peer.to_string(), "10.99.1.12:7800");
    assert_eq!(s.interval_ms, super::DEFAULT_SYNC_INTERVAL_MS);
    let e = errs(&format!(
        "{HEAD}\n[sync]\nlisten = \"10.99.1.11\"\npeer = \"10.99.1.12:7800\"\nkey_file = \"k\"\ninterval_ms = 5\n"
    ));
    // Both problems are reported, sorted by position.
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with("f.toml:8:10: sync.listen = \"10.99.1.11\" is not an address with a port"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("f.toml:11:15: sync.interval_ms = 5 is out of range (10 to 10000)"),
        "{e:#?}"
    );
    let e = errs(&format!("{HEAD}\n[sync]\nlisten = \"10.99.1.11:7800\"\n"));
    assert!(
        e.iter().any(|e| e.contains("sync.peer is required")),
        "{e:#?}"
    );
    assert!(
        e.iter().any(|e| e.contains("sync.key_file is required")),
        "{e:#?}"
    );
}
