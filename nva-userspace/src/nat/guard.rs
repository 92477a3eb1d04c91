//! The NAT guard: an nftables table that keeps the kernel from answering
//! translated flows' packets with a reset while no XDP program translates
//! them (an interface's program detached, before the failover moves the
//! traffic away). Those packets are addressed to the NVA itself (the public
//! address of a DNAT, the `to` of an SNAT), have no socket, and Linux would
//! send a TCP reset (or an ICMP port unreachable) that kills the connection
//! the peer NVA is about to carry on. With the guard the answer is dropped,
//! the sender retransmits, and the retransmission reaches the peer.
//!
//! The guard matches only what the kernel sends from those addresses and
//! ports, so it costs nothing while the program translates; it lives in its
//! own table, replaced in one nftables transaction with every rule set.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::policy::model::{Cidr, Nat, NatKind, PortRange, Proto};

/// The nftables table the agent owns (family `inet`).
pub const TABLE: &str = "nva_nat_guard";

fn ports(list: &[PortRange]) -> Option<String> {
    let one = |p: &PortRange| {
        if p.lo == p.hi {
            p.lo.to_string()
        } else {
            format!("{}-{}", p.lo, p.hi)
        }
    };
    match list {
        [] => None,
        [p] if *p == PortRange::ANY => None,
        _ => Some(format!(
            "{{ {} }}",
            list.iter().map(one).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// The statements that drop the kernel's answers from `addrs` (None: any
/// local address of `v4`'s family) and source `ports` for `proto`.
fn answers(
    name: &str,
    proto: Proto,
    v4: bool,
    addrs: Option<&[Cidr]>,
    ports: Option<&str>,
) -> Vec<String> {
    let fam = if v4 { "ip" } else { "ip6" };
    let saddr = match addrs {
        Some(list) if !list.is_empty() => format!(
            "{fam} saddr {{ {} }} ",
            list.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // Any address of the family: the family alone.
        _ => format!("meta nfproto {} ", if v4 { "ipv4" } else { "ipv6" }),
    };
    let mut out = Vec::new();
    if matches!(proto, Proto::Tcp | Proto::Any) {
        let sport = ports.map_or(String::new(), |p| format!("tcp sport {p} "));
        out.push(format!(
            "{saddr}{sport}tcp flags & rst == rst counter drop comment \"{name}: TCP reset\""
        ));
    }
    if matches!(proto, Proto::Udp | Proto::Any) {
        // The quoted port is out of nftables' reach: every port
        // unreachable from the address goes.
        let unreachable = if v4 {
            "icmp type destination-unreachable icmp code port-unreachable"
        } else {
            "icmpv6 type destination-unreachable icmpv6 code port-unreachable"
        };
        out.push(format!(
            "{saddr}{unreachable} counter drop comment \"{name}: port unreachable\""
        ));
    }
    out
}

/// An entry's name as an nftables comment can hold it: names are free
/// text in the config (quotes, backslashes, newlines, any length), nft
/// comments are one quoted line of at most 128 bytes. Only for the reader
/// of `nft list`: the statements do not depend on it.
fn comment_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:/ ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// The nftables script that replaces the guard table with the one `nat`
/// needs (and only removes it when `nat` is empty).
pub fn script(nat: &[Nat]) -> String {
    let mut s = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if nat.is_empty() {
        return s;
    }
    let mut statements = Vec::new();
    for n in nat {
        let v4 = n.family_v4();
        let name = comment_name(&n.name);
        match n.kind {
            NatKind::Dnat => {
                // The flow's packets arrive at the original destination.
                let dst: Vec<Cidr> = n
                    .matches
                    .dst
                    .iter()
                    .filter(|c| c.is_v4() == v4)
                    .copied()
                    .collect();
                let addrs = (!dst.is_empty()).then_some(dst.as_slice());
                let dport = ports(&n.matches.dport);
                statements.extend(answers(&name, n.matches.proto, v4, addrs, dport.as_deref()));
            }
            NatKind::Snat => {
                // The replies arrive at `to`, on a port of `to_ports`.
                let to = [Cidr {
                    addr: n.to,
                    len: if n.to.is_ipv4() { 32 } else { 128 },
                }];
                let p = ports(&[n.to_ports]);
                statements.extend(answers(&name, n.matches.proto, v4, Some(&to), p.as_deref()));
            }
        }
    }
    s.push_str(&format!(
        "table inet {TABLE} {{\n  chain answers {{\n    type filter hook output priority filter; policy accept;\n"
    ));
    for st in statements {
        s.push_str("    ");
        s.push_str(&st);
        s.push('\n');
    }
    s.push_str("  }\n}\n");
    s
}

/// Where `nft` is: root's tools live in sbin, which a service's PATH may
/// lack.
fn nft_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// Installs the guard for `nat` (or removes it when `nat` is empty) in the
/// current network namespace, in one nftables transaction.
pub fn apply(nat: &[Nat]) -> Result<(), String> {
    let Some(nft) = nft_binary() else {
        return if nat.is_empty() {
            Ok(())
        } else {
            Err("nft (nftables) is not installed".into())
        };
    };
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    let text = script(nat);
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Rule;

    fn nat(
        name: &str,
        kind: NatKind,
        proto: Proto,
        dst: &str,
        dport: &[PortRange],
        to: &str,
    ) -> Nat {
        let mut matches = Rule::any(name, crate::policy::model::Action::Allow);
        matches.proto = proto;
        if !dst.is_empty() {
            let (a, l) = dst.split_once('/').unwrap();
            matches.dst = vec![Cidr {
                addr: a.parse().unwrap(),
                len: l.parse().unwrap(),
            }];
        }
        matches.dport = dport.to_vec();
        Nat {
            name: name.into(),
            kind,
            matches,
            to: to.parse().unwrap(),
            to_port: None,
            to_ports: PortRange {
                lo: 20000,
                hi: 29999,
            },
        }
    }

    #[test]
    fn the_guard_drops_only_answers_from_translated_addresses_and_ports() {
        let web = PortRange { lo: 80, hi: 80 };
        let text = script(&[
            nat(
                "public-in",
                NatKind::Dnat,
                Proto::Tcp,
                "10.0.0.100/32",
                &[web],
                "10.1.0.2",
            ),
            nat(
                "dns-in",
                NatKind::Dnat,
                Proto::Udp,
                "10.0.0.100/32",
                &[],
                "10.1.0.2",
            ),
            nat("out6", NatKind::Snat, Proto::Any, "", &[], "fd00::1"),
        ]);
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table inet nva_nat_guard");
        assert_eq!(lines[1], "delete table inet nva_nat_guard");
        assert!(lines.contains(&"ip saddr { 10.0.0.100/32 } tcp sport { 80 } tcp flags & rst == rst counter drop comment \"public-in: TCP reset\""), "{text}");
        assert!(lines.contains(&"ip saddr { 10.0.0.100/32 } icmp type destination-unreachable icmp code port-unreachable counter drop comment \"dns-in: port unreachable\""), "{text}");
        assert!(lines.contains(&"ip6 saddr { fd00::1/128 } tcp sport { 20000-29999 } tcp flags & rst == rst counter drop comment \"out6: TCP reset\""), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("ip6 saddr { fd00::1/128 } icmpv6 type")),
            "{text}"
        );
        assert!(!text.contains("dns-in: TCP reset"), "{text}");
        // Any name makes a valid comment: one line, no quote, bounded.
        let odd = "a \"quoted\"\nname\\".to_string() + &"x".repeat(300);
        let text = script(&[nat(&odd, NatKind::Snat, Proto::Tcp, "", &[], "10.0.1.4")]);
        let comment = text
            .lines()
            .find_map(|l| l.split_once("comment \"").map(|(_, c)| c))
            .expect("a comment");
        assert!(comment.len() <= 100, "{comment}");
        assert!(comment.starts_with("a _quoted__name_xx"), "{comment}");
        assert_eq!(comment.matches('"').count(), 1, "{comment}");
        // No NAT: the table goes.
        assert_eq!(
            script(&[]),
            "table inet nva_nat_guard\ndelete table inet nva_nat_guard\n"
        );
    }
}
