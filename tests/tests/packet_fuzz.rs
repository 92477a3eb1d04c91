//! Structure-aware packet fuzzing of the real program (BPF_PROG_TEST_RUN)
//! against a userspace reference: frames built from valid headers (VLAN
//! tags, IPv4 with options and fragments, IPv6 with extension chains, TCP,
//! UDP, ICMP, ICMPv6, other protocols), then mutated (truncated at any
//! offset, bytes overwritten, header lengths and sizes set to anything,
//! tags stacked too deep, extension chains too long). For every frame the
//! program's verdict and drop reason must be the reference's, and never
//! XDP_ABORTED. A bounded run with a fixed seed; `NVA_FUZZ_FRAMES` and
//! `NVA_FUZZ_SEED` run longer or elsewhere, and `cargo xtask fuzz` runs
//! random seeds for a given time, keeping any failing frame in
//! `tests/fuzz-cases/` (replayed by every run).
//!
//! The reference follows the parser's documented rules (README, "Data
//! path"): at most two VLAN tags; the whole IP datagram present; at most 8
//! IPv6 extension headers and the L4 header within the first 1024 bytes;
//! later fragments follow `policy.fragments`; then management, then the
//! linear first match over the rules.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nva::classifier::compiler::{compile, linear_first_match, PacketView};
use nva::classifier::rulegen::Rng;
use nva::datapath::DataPath;
use nva::policy::model::{Action, Cidr, ManagementPort, PolicySettings, PortRange, Proto, Rule};
use nva_common::{PacketReason as R, TCP_ACK, TCP_PSH, TCP_SYN};
use nva_tests::frames::*;
use nva_tests::test_run::run;
use nva_tests::{in_private_netns, require_root};

const MAX_IPV6_EXT_HEADERS: usize = 8;
const MAX_L4_OFFSET: usize = 1024;
const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr::new(a.parse().unwrap(), l.parse().unwrap())
}

fn rules() -> Vec<Rule> {
    let mut web = Rule::any("web", Action::Allow);
    web.proto = Proto::Tcp;
    web.dst = vec![cidr("10.0.0.0/8"), cidr("fd00::/8")];
    web.dport = vec![PortRange { lo: 80, hi: 80 }];
    let mut dns = Rule::any("dns", Action::Drop);
    dns.proto = Proto::Udp;
    dns.sport = vec![PortRange { lo: 53, hi: 53 }];
    let mut ping = Rule::any("ping", Action::Allow);
    ping.proto = Proto::Icmp;
    ping.icmp_type = vec![8];
    let mut v6 = Rule::any("icmpv6", Action::Allow);
    v6.proto = Proto::Icmpv6;
    let mut blocked = Rule::any("blocked", Action::Drop);
    blocked.src = vec![cidr("2001:db8::/32"), cidr("198.51.100.0/24")];
    let mut inside = Rule::any("inside", Action::Allow);
    inside.dst = vec![cidr("192.168.0.0/16")];
    vec![web, dns, ping, v6, blocked, inside]
}

fn policy(fragments_allow: bool) -> PolicySettings {
    PolicySettings {
        fragments_allow,
        management: vec![ManagementPort {
            proto: Proto::Tcp,
            port: 22,
        }],
        ..PolicySettings::with_default(Action::Drop)
    }
}

/// What the reference expects for `frame`.
fn reference(frame: &[u8], rules: &[Rule], fragments_allow: bool) -> R {
    let len = frame.len();
    let be16 = |o: usize| -> Option<u16> {
        (o + 2 <= len).then(|| u16::from_be_bytes([frame[o], frame[o + 1]]))
    };
    // Ethernet and at most two tags.
    let Some(mut ethertype) = be16(12) else {
        return R::DropMalformedEthernet;
    };
    let mut off = 14;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        if be16(off).is_none() {
            return R::DropMalformedEthernet;
        }
        let Some(next) = be16(off + 2) else {
            return R::DropMalformedEthernet;
        };
        ethertype = next;
        off += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return R::DropVlanTooDeep;
    }
    let (src, dst, proto, l4, later_fragment);
    match ethertype {
        ETH_P_IP => {
            if off + 20 > len {
                return R::DropMalformedIpv4;
            }
            let h = &frame[off..];
            let ihl = (h[0] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([h[2], h[3]]) as usize;
            if h[0] >> 4 != 4 || ihl < 20 || total < ihl || off + total > len {
                return R::DropMalformedIpv4;
            }
            later_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
            proto = h[9];
            src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
            dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
            l4 = off + ihl;
        }
        ETH_P_IPV6 => {
            if off + 40 > len {
                return R::DropMalformedIpv6;
            }
            let h = &frame[off..];
            let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
            if h[0] >> 4 != 6 || off + 40 + payload > len {
                return R::DropMalformedIpv6;
            }
            src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap()));
            dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap()));
            let mut next = h[6];
            let mut at = off + 40;
            let mut found = None;
            for _ in 0..=MAX_IPV6_EXT_HEADERS {
                if at > MAX_L4_OFFSET {
                    return R::DropIpv6ExtTooDeep;
                }
                match next {
                    0 | 43 | 60 => {
                        if at + 2 > len {
                            return R::DropMalformedIpv6;
                        }
                        next = frame[at];
                        at += (frame[at + 1] as usize + 1) * 8;
                    }
                    44 => {
                        if at + 8 > len {
                            return R::DropMalformedIpv6;
                        }
                        let offset = u16::from_be_bytes([frame[at + 2], frame[at + 3]]) >> 3;
                        next = frame[at];
                        at += 8;
                        if offset != 0 {
                            found = Some((next, at, true));
                            break;
                        }
                    }
                    51 => {
                        if at + 2 > len {
                            return R::DropMalformedIpv6;
                        }
                        next = frame[at];
                        at += (frame[at + 1] as usize + 2) * 4;
                    }
                    upper => {
                        found = Some((upper, at, false));
                        break;
                    }
                }
            }
            let Some((p, at, later)) = found else {
                return R::DropIpv6ExtTooDeep;
            };
            proto = p;
            l4 = at;
            later_fragment = later;
        }
        _ => return R::PassNonIp,
    }
    let (mut sport, mut dport, mut icmp_type) = (0u16, 0u16, 0u8);
    if !later_fragment {
        if l4 > MAX_L4_OFFSET {
            return R::DropMalformedL4;
        }
        match proto {
            6 => {
                if l4 + 20 > len {
                    return R::DropMalformedL4;
                }
                let doff = (frame[l4 + 12] >> 4) as usize * 4;
                if doff < 20 || l4 + doff > len {
                    return R::DropMalformedL4;
                }
                sport = be16(l4).unwrap();
                dport = be16(l4 + 2).unwrap();
            }
            17 => {
                if l4 + 8 > len {
                    return R::DropMalformedL4;
                }
                sport = be16(l4).unwrap();
                dport = be16(l4 + 2).unwrap();
            }
            1 | 58 => {
                if l4 + 4 > len {
                    return R::DropMalformedL4;
                }
                icmp_type = frame[l4];
            }
            _ => {}
        }
    } else {
        return if fragments_allow {
            R::PassFragment
        } else {
            R::DropFragment
        };
    }
    if proto == 6 && dport == 22 && dst == IpAddr::V4(LOCAL) {
        return R::PassManagement;
    }
    let view = PacketView {
        src,
        dst,
        proto,
        sport,
        dport,
        icmp_type,
        iface: None,
    };
    match linear_first_match(rules, &view) {
        Some(i) if rules[i].action == Action::Allow => R::PassRule,
        Some(_) => R::DropRule,
        None => R::DropDefault,
    }
}

/// A valid frame of a random shape.
fn valid_frame(rng: &mut Rng) -> Vec<u8> {
    let pick = |rng: &mut Rng, n: u64| (rng.next_u64() % n) as usize;
    let v4s = [
        "10.1.2.3",
        "192.168.4.5",
        "198.51.100.7",
        "192.0.2.2",
        "203.0.113.9",
    ];
    let v6s = ["fd00::80", "2001:db8::1", "2001:db9::2", "fe80::1"];
    let ports = [22u16, 53, 80, 443, 8080, 40000];
    let flags = [0x02u8, 0x12, 0x10, 0x11, 0x04, 0x03, 0x00, 0xff];
    let proto = [6u8, 17, 1, 58, 47, 132][pick(rng, 6)];
    let sport = ports[pick(rng, ports.len() as u64)];
    let dport = ports[pick(rng, ports.len() as u64)];
    let l4 = match proto {
        6 => {
            let mut t = tcp(sport, dport, flags[pick(rng, flags.len() as u64)]);
            if rng.chance(20) {
                // Options: a larger data offset, with the bytes there.
                let words = 1 + pick(rng, 10);
                t[12] = ((5 + words) as u8) << 4;
                t.extend(std::iter::repeat_n(1u8, words * 4));
            }
            t
        }
        17 => udp(sport, dport, b"fuzz"),
        1 | 58 => {
            let types = [0u8, 3, 8, 11, 128, 129, 135, 1, 2, 255];
            let mut m = icmp(types[pick(rng, types.len() as u64)], 0);
            m.extend_from_slice(&[0, 7, 0, 1]);
            m
        }
        _ => vec![0u8; 12],
    };
    let v6 = rng.chance(45);
    let ip = if v6 {
        let mut chain = l4;
        let mut next = proto;
        for _ in 0..pick(rng, 5) {
            let kind = [0u8, 43, 60, 44, 51][pick(rng, 5)];
            chain = match kind {
                44 => {
                    let later = rng.chance(30);
                    ipv6_fragment_ext(
                        next,
                        if later { 1 + pick(rng, 100) as u16 } else { 0 },
                        rng.chance(50),
                        &chain,
                    )
                }
                51 => {
                    let mut ah = vec![next, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                    ah.extend_from_slice(&chain);
                    ah
                }
                _ => ipv6_opts_ext(next, &chain),
            };
            next = kind;
        }
        let s: Ipv6Addr = v6s[pick(rng, v6s.len() as u64)].parse().unwrap();
        let d: Ipv6Addr = v6s[pick(rng, v6s.len() as u64)].parse().unwrap();
        ipv6(s, d, next, &chain)
    } else {
        let s: Ipv4Addr = v4s[pick(rng, v4s.len() as u64)].parse().unwrap();
        let d: Ipv4Addr = v4s[pick(rng, v4s.len() as u64)].parse().unwrap();
        let options = if rng.chance(15) {
            vec![1u8; 4 * (1 + pick(rng, 9))]
        } else {
            vec![]
        };
        let frag = if rng.chance(15) {
            (pick(rng, 200) as u16) | if rng.chance(50) { 0x2000 } else { 0 }
        } else {
            0
        };
        ipv4(s, d, proto, &options, frag, &l4)
    };
    let tags: Vec<(u16, u16)> = (0..[0usize, 0, 0, 1, 2, 3][pick(rng, 6)])
        .map(|k| {
            (
                if k == 0 && rng.chance(50) {
                    ETH_P_8021AD
                } else {
                    ETH_P_8021Q
                },
                7,
            )
        })
        .collect();
    let ethertype = if rng.chance(3) {
        0x0806
    } else if v6 {
        ETH_P_IPV6
    } else {
        ETH_P_IP
    };
    // Checksums are not the parser's business: left as built.
    ethernet(&tags, ethertype, &ip)
}

/// The frame, mutated 0 to 3 times.
fn mutate(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    let pick = |rng: &mut Rng, n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    for _ in 0..pick(rng, 4) {
        let len = f.len();
        match pick(rng, 6) {
            // Cut short anywhere past the Ethernet header (BPF_PROG_TEST_RUN
            // refuses shorter frames, as no interface delivers them).
            0 if len > 14 => f.truncate(14 + pick(rng, len - 14 + 1)),
            // A byte to anything.
            1 if len > 0 => {
                let at = pick(rng, len);
                f[at] = rng.next_u64() as u8;
            }
            // A header byte (the first 80: Ethernet, tags, IP, the start of
            // L4) to anything: lengths, versions, protocols, offsets.
            2 if len > 0 => {
                let at = pick(rng, len.min(80));
                f[at] = rng.next_u64() as u8;
            }
            // A 16-bit field (total length, payload length, fragment
            // offset) to an extreme.
            3 if len > 20 => {
                let at = 14 + pick(rng, len.min(60) - 14);
                let v = [0u16, 1, 20, 40, 0xffff, len as u16, (len - 14) as u16][pick(rng, 7)];
                f[at..at + 2.min(len - at)].copy_from_slice(&v.to_be_bytes()[..2.min(len - at)]);
            }
            // Grow: trailing bytes (padding) or more.
            4 => f.extend(std::iter::repeat_n(0u8, pick(rng, 64))),
            _ => {}
        }
    }
    f
}

/// Where failing frames are kept as test cases (replayed by every run).
fn cases_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-cases")
}

/// With `NVA_FUZZ_SAVE` set (`cargo xtask fuzz`), keeps a failing frame
/// as a case file; returns a note for the failure message.
fn save_case(frame: &[u8], fragments_allow: bool, seed: u64, n: usize) -> String {
    if std::env::var_os("NVA_FUZZ_SAVE").is_none() {
        return String::new();
    }
    let dir = cases_dir();
    let path = dir.join(format!("seed-{seed:x}-frame-{n}.hex"));
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!("fragments_allow = {fragments_allow}\n{hex}\n");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        Ok(()) => format!(" (saved as {})", path.display()),
        Err(e) => format!(" (not saved: {e})"),
    }
}

/// The saved cases: (file, fragments_allow, frame).
fn saved_cases() -> Vec<(String, bool, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(cases_dir()) else {
        return Vec::new();
    };
    let mut cases: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "hex"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            let mut lines = text.lines();
            let allow = lines.next().unwrap_or_default().ends_with("true");
            let hex = lines.next().unwrap_or_default().trim();
            let frame = (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            (e.path().display().to_string(), allow, frame)
        })
        .collect();
    cases.sort();
    cases
}

#[test]
fn fuzzed_frames_get_the_reference_verdict_and_reason() {
    require_root();
    let frames: usize = std::env::var("NVA_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("NVA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f022);
    in_private_netns(&[], move |_| {
        let rules = rules();
        let mut by_reason = std::collections::BTreeMap::new();
        for fragments_allow in [false, true] {
            let compiled = compile(&rules, &policy(fragments_allow)).unwrap();
            let mut dp = DataPath::load(&compiled, 1, &|_| None).unwrap();
            dp.set_local_addrs(&[IpAddr::V4(LOCAL)]).unwrap();
            // The saved cases first.
            for (file, allow, frame) in saved_cases() {
                if allow == fragments_allow {
                    let (_, got) = run(&dp, &frame, 0);
                    assert_eq!(got, reference(&frame, &rules, allow), "saved case {file}");
                }
            }
            let mut rng = Rng::new(seed ^ fragments_allow as u64);
            for n in 0..frames / 2 {
                let valid = valid_frame(&mut rng);
                let frame = mutate(&mut rng, valid);
                let expected = reference(&frame, &rules, fragments_allow);
                // `run` also refuses XDP_ABORTED and checks that exactly one
                // reason counter moved, agreeing with the action.
                let (_, got) = run(&dp, &frame, 0);
                if got != expected {
                    let saved = save_case(&frame, fragments_allow, seed, n);
                    panic!(
                        "frame {n} (seed {seed:#x}, fragments_allow {fragments_allow}): program {got:?}, reference {expected:?}{saved}: {frame:02x?}"
                    );
                }
                *by_reason.entry(format!("{got:?}")).or_insert(0u64) += 1;
            }
        }
        eprintln!("packet fuzzing: {frames} frames, by reason: {by_reason:?}");
        // The mutations reach every parser outcome.
        for reason in [
            "DropMalformedEthernet",
            "DropVlanTooDeep",
            "DropMalformedIpv4",
            "DropMalformedIpv6",
            "DropIpv6ExtTooDeep",
            "DropMalformedL4",
            "PassNonIp",
            "PassFragment",
            "DropFragment",
            "PassRule",
            "DropRule",
            "DropDefault",
            "PassManagement",
        ] {
            assert!(
                by_reason.contains_key(reason),
                "no frame ended as {reason}: {by_reason:?}"
            );
        }
    });
}

/// Stateful, with tracked connections: the lean path of established flows
/// reads headers straight from the frame, so mutated frames of a tracked
/// connection (IPv4 and IPv6) must still get the parser's reason whenever
/// the reference parser refuses them; the rest pass or fall to the state
/// machine and the rules, never `XDP_ABORTED`.
#[test]
fn mutated_frames_of_tracked_connections_get_the_parsers_reason() {
    require_root();
    let seed: u64 = std::env::var("NVA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f023);
    in_private_netns(&[], move |_| {
        let rules = rules();
        let policy = PolicySettings {
            stateful: true,
            ..policy(false)
        };
        let compiled = compile(&rules, &policy).unwrap();
        let dp = DataPath::load(&compiled, 1, &|_| None).unwrap();
        let v4 = |a: &str| IpAddr::V4(a.parse().unwrap());
        let v6 = |a: &str| IpAddr::V6(a.parse().unwrap());
        let segment = |src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8| {
            let l4 = tcp(sport, dport, flags);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    ethernet(&[], ETH_P_IP, &ipv4(s, d, 6, &[], 0, &l4))
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(&[], ETH_P_IPV6, &ipv6(s, d, 6, &l4)),
                _ => unreachable!(),
            }
        };
        let mut acks = Vec::new();
        for (client, server) in [
            (v4("172.16.0.9"), v4("10.0.0.80")),
            (v6("fd01::9"), v6("fd00::80")),
        ] {
            for (flags, from_client) in
                [(TCP_SYN, true), (TCP_SYN | TCP_ACK, false), (TCP_ACK, true)]
            {
                let frame = if from_client {
                    segment(client, 40000, server, 80, flags)
                } else {
                    segment(server, 80, client, 40000, flags)
                };
                assert!(run(&dp, &frame, 0).1.is_pass(), "handshake {flags:#x}");
            }
            let ack = segment(client, 40000, server, 80, TCP_ACK | TCP_PSH);
            assert_eq!(run(&dp, &ack, 0).1, R::PassEstablished);
            acks.push(ack);
            acks.push(segment(server, 80, client, 40000, TCP_ACK));
        }
        let parser_outcomes = [
            R::DropMalformedEthernet,
            R::DropVlanTooDeep,
            R::DropMalformedIpv4,
            R::DropMalformedIpv6,
            R::DropIpv6ExtTooDeep,
            R::DropMalformedL4,
            R::PassNonIp,
            R::DropFragment,
        ];
        let mut rng = Rng::new(seed);
        let mut by_reason = std::collections::BTreeMap::new();
        for n in 0..20_000usize {
            let base = acks[n % acks.len()].clone();
            let frame = mutate(&mut rng, base);
            let expected = reference(&frame, &rules, false);
            let (_, got) = run(&dp, &frame, 0);
            if parser_outcomes.contains(&expected) {
                assert_eq!(
                    got, expected,
                    "frame {n} (seed {seed:#x}) of a tracked connection: {frame:02x?}"
                );
            }
            *by_reason.entry(format!("{got:?}")).or_insert(0u64) += 1;
        }
        eprintln!("mutated frames of tracked connections, by reason: {by_reason:?}");
        for reason in [
            "PassEstablished",
            "DropMalformedIpv4",
            "DropMalformedIpv6",
            "DropMalformedL4",
        ] {
            assert!(
                by_reason.contains_key(reason),
                "no frame ended as {reason}: {by_reason:?}"
            );
        }
    });
}
