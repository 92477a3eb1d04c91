//! Random rule sets and packets for differential tests and benchmarks.
//! Deterministic for a seed; prefixes and ports come from small pools so that
//! rules overlap, nest and shadow each other as in real rule sets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::classifier::compiler::PacketView;
use crate::policy::model::{Action, Cidr, PortRange, Proto, Rule};

pub mod classbench;

/// xorshift64*: small, fast, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Interfaces rules may name with `in_iface`.
pub const IFACES: [&str; 2] = ["eth0", "eth1"];

pub struct RuleGen {
    /// Percentage of TCP/UDP rules that name source ports (default 5).
    pub source_port_percent: u64,
    v4_bases: Vec<u32>,
    v6_bases: Vec<u128>,
    port_points: Vec<u16>,
}

impl RuleGen {
    /// `spread` controls how many distinct networks and ports appear (more
    /// for larger rule sets).
    pub fn new(rng: &mut Rng, spread: usize) -> RuleGen {
        let spread = spread.max(4);
        // Networks spread over the address space, half of them next to an
        // earlier one (same /16 or /48) so that prefixes nest and overlap.
        let mut v4_bases: Vec<u32> = Vec::with_capacity(spread);
        let mut v6_bases: Vec<u128> = Vec::with_capacity(spread);
        for _ in 0..spread {
            let near = !v4_bases.is_empty() && rng.chance(50);
            v4_bases.push(if near {
                v4_bases[rng.below(v4_bases.len() as u64) as usize]
                    ^ (rng.next_u64() as u32 & 0xFFFF)
            } else {
                rng.next_u64() as u32
            });
            v6_bases.push(if near {
                v6_bases[rng.below(v6_bases.len() as u64) as usize]
                    ^ ((rng.next_u64() as u128) << 16)
            } else {
                (0x2000u128 << 112)
                    | ((rng.next_u64() as u128) << 60)
                    | ((rng.next_u64() as u128) << 16)
            });
        }
        RuleGen {
            source_port_percent: 5,
            v4_bases,
            v6_bases,
            port_points: (0..spread * 2)
                .map(|_| {
                    if rng.chance(50) {
                        rng.below(1024) as u16
                    } else {
                        rng.below(65_536) as u16
                    }
                })
                .collect(),
        }
    }

    fn cidr(&self, rng: &mut Rng, v4: bool) -> Cidr {
        if v4 {
            let base = self.v4_bases[rng.below(self.v4_bases.len() as u64) as usize];
            let len = [8, 16, 20, 24, 24, 28, 32][rng.below(7) as usize];
            Cidr::new(IpAddr::V4(Ipv4Addr::from(base)), len)
        } else {
            let base = self.v6_bases[rng.below(self.v6_bases.len() as u64) as usize];
            let len = [16, 32, 48, 56, 64, 64, 128][rng.below(7) as usize];
            Cidr::new(IpAddr::V6(Ipv6Addr::from(base)), len)
        }
    }

    fn ports(&self, rng: &mut Rng) -> Vec<PortRange> {
        (0..1 + rng.below(3))
            .map(|_| {
                let a = self.port_points[rng.below(self.port_points.len() as u64) as usize];
                if rng.chance(70) {
                    PortRange { lo: a, hi: a }
                } else {
                    PortRange {
                        lo: a,
                        hi: a.saturating_add(rng.below(2_000) as u16),
                    }
                }
            })
            .collect()
    }

    pub fn rule(&self, rng: &mut Rng, index: usize) -> Rule {
        let proto = match rng.below(10) {
            0 | 1 => Proto::Any,
            2..=4 => Proto::Tcp,
            5..=7 => Proto::Udp,
            8 => Proto::Icmp,
            _ => Proto::Icmpv6,
        };
        // Family of specific addresses; ICMP kinds keep to their family.
        let v4 = match proto {
            Proto::Icmp => true,
            Proto::Icmpv6 => false,
            _ => rng.chance(60),
        };
        let addrs = |rng: &mut Rng| -> Vec<Cidr> {
            if rng.chance(25) {
                vec![]
            } else {
                (0..1 + rng.below(2)).map(|_| self.cidr(rng, v4)).collect()
            }
        };
        let src = addrs(rng);
        let mut dst = addrs(rng);
        // A rule matching everything would shadow all that follow it.
        if proto == Proto::Any && src.is_empty() && dst.is_empty() {
            dst = vec![self.cidr(rng, v4)];
        }
        if !src.is_empty() && dst.is_empty() && rng.chance(50) {
            dst = vec![self.cidr(rng, v4)];
        }
        let (sport, dport) = if matches!(proto, Proto::Tcp | Proto::Udp) {
            (
                if rng.chance(5) {
                    self.ports(rng)
                } else {
                    vec![]
                },
                if rng.chance(75) {
                    self.ports(rng)
                } else {
                    vec![]
                },
            )
        } else {
            (vec![], vec![])
        };
        let icmp_type = if matches!(proto, Proto::Icmp | Proto::Icmpv6) && rng.chance(60) {
            (0..1 + rng.below(3))
                .map(|_| rng.below(256) as u8)
                .collect()
        } else {
            vec![]
        };
        Rule {
            name: format!("r{index}"),
            action: if rng.chance(50) {
                Action::Allow
            } else {
                Action::Drop
            },
            proto,
            src,
            dst,
            sport,
            dport,
            icmp_type,
            in_iface: if rng.chance(5) {
                Some(IFACES[rng.below(2) as usize].to_string())
            } else {
                None
            },
            log: false,
        }
    }

    pub fn rules(&self, rng: &mut Rng, n: usize) -> Vec<Rule> {
        (0..n).map(|i| self.rule(rng, i)).collect()
    }

    /// A rule of address prefixes only, as block and allow lists are: one
    /// side (source or destination), one to four nested or overlapping
    /// prefixes, mostly of one family, either action.
    pub fn prefix_rule(&self, rng: &mut Rng, index: usize) -> Rule {
        let v4 = rng.chance(60);
        let list: Vec<Cidr> = (0..1 + rng.below(4))
            .map(|_| {
                let family = if rng.chance(10) { !v4 } else { v4 };
                self.cidr(rng, family)
            })
            .collect();
        let (src, dst) = if rng.chance(50) {
            (list, vec![])
        } else {
            (vec![], list)
        };
        Rule {
            src,
            dst,
            ..Rule::any(
                &format!("r{index}"),
                if rng.chance(50) {
                    Action::Allow
                } else {
                    Action::Drop
                },
            )
        }
    }

    pub fn prefix_rules(&self, rng: &mut Rng, n: usize) -> Vec<Rule> {
        (0..n).map(|i| self.prefix_rule(rng, i)).collect()
    }

    /// Like [`prefix_rules`](Self::prefix_rules), with prefixes of three
    /// lengths per family (/16, /24, /32; /32, /48, /64), as block lists
    /// usually have.
    pub fn prefix_rules_of_few_lengths(&self, rng: &mut Rng, n: usize) -> Vec<Rule> {
        let shorten = |list: &mut Vec<Cidr>, rng: &mut Rng| {
            for c in list.iter_mut() {
                let lens: [u8; 3] = if c.is_v4() {
                    [16, 24, 32]
                } else {
                    [32, 48, 64]
                };
                *c = Cidr::new(c.addr, lens[rng.below(3) as usize]);
            }
        };
        (0..n)
            .map(|i| {
                let mut r = self.prefix_rule(rng, i);
                shorten(&mut r.src, rng);
                shorten(&mut r.dst, rng);
                r
            })
            .collect()
    }

    fn addr_in(&self, rng: &mut Rng, list: &[Cidr], v4: bool) -> IpAddr {
        let c = if !list.is_empty() && rng.chance(85) {
            list[rng.below(list.len() as u64) as usize]
        } else {
            self.cidr(rng, v4)
        };
        if c.is_v4() != v4 {
            return self.addr_in(rng, &[], v4);
        }
        match c.addr {
            IpAddr::V4(a) => {
                let host = if c.len == 32 {
                    0
                } else {
                    rng.next_u64() as u32 & (u32::MAX >> c.len)
                };
                IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
            }
            IpAddr::V6(a) => {
                let host = if c.len == 128 {
                    0
                } else {
                    (rng.next_u64() as u128) & (u128::MAX >> c.len)
                };
                IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
            }
        }
    }

    /// A packet that often (not always) hits `rules[..]`.
    pub fn packet(&self, rng: &mut Rng, rules: &[Rule]) -> PacketView {
        let empty = Rule::any("-", Action::Allow);
        let r = if rules.is_empty() || rng.chance(10) {
            &empty
        } else {
            &rules[rng.below(rules.len() as u64) as usize]
        };
        let proto = match r.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmpv6 => 58,
            Proto::Any => [6, 17, 1, 58, 47][rng.below(5) as usize],
        };
        let v4 = match (r.src.first(), r.dst.first()) {
            (Some(c), _) | (None, Some(c)) => c.is_v4(),
            _ => proto != 58 && rng.chance(60),
        };
        let port = |rng: &mut Rng, list: &[PortRange]| -> u16 {
            if !list.is_empty() && rng.chance(85) {
                let pr = list[rng.below(list.len() as u64) as usize];
                pr.lo + rng.below((pr.hi - pr.lo) as u64 + 1) as u16
            } else {
                self.port_points[rng.below(self.port_points.len() as u64) as usize]
                    .wrapping_add(rng.below(2) as u16)
            }
        };
        PacketView {
            src: self.addr_in(rng, &r.src, v4),
            dst: self.addr_in(rng, &r.dst, v4),
            proto,
            sport: port(rng, &r.sport),
            dport: port(rng, &r.dport),
            icmp_type: if !r.icmp_type.is_empty() && rng.chance(85) {
                r.icmp_type[rng.below(r.icmp_type.len() as u64) as usize]
            } else {
                rng.below(256) as u8
            },
            iface: if rng.chance(80) {
                Some(IFACES[rng.below(2) as usize].to_string())
            } else {
                Some("eth9".to_string())
            },
        }
    }
}

/// Renders rules as `[[rules]]` tables of a config file.
pub fn rules_toml(rules: &[Rule]) -> String {
    use std::fmt::Write as _;
    fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
        let parts: Vec<String> = items.iter().map(|i| format!("\"{}\"", f(i))).collect();
        format!("[{}]", parts.join(", "))
    }
    let ports = |p: &PortRange| {
        if p.lo == p.hi {
            p.lo.to_string()
        } else {
            format!("{}-{}", p.lo, p.hi)
        }
    };
    let mut out = String::new();
    for r in rules {
        let proto = match r.proto {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        };
        let action = if r.action == Action::Allow {
            "allow"
        } else {
            "drop"
        };
        let _ = writeln!(
            out,
            "[[rules]]\nname = \"{}\"\naction = \"{action}\"\nproto = \"{proto}\"",
            r.name
        );
        if !r.src.is_empty() {
            let _ = writeln!(out, "src = {}", list(&r.src, |c| c.to_string()));
        }
        if !r.dst.is_empty() {
            let _ = writeln!(out, "dst = {}", list(&r.dst, |c| c.to_string()));
        }
        if !r.sport.is_empty() {
            let _ = writeln!(out, "sport = {}", list(&r.sport, ports));
        }
        if !r.dport.is_empty() {
            let _ = writeln!(out, "dport = {}", list(&r.dport, ports));
        }
        if !r.icmp_type.is_empty() {
            let types: Vec<String> = r.icmp_type.iter().map(|t| t.to_string()).collect();
            let _ = writeln!(out, "icmp_type = [{}]", types.join(", "));
        }
        if let Some(iface) = &r.in_iface {
            let _ = writeln!(out, "in_iface = \"{iface}\"");
        }
        if r.log {
            let _ = writeln!(out, "log = true");
        }
        out.push('\n');
    }
    out
}
