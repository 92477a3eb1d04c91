//! Rule sets shaped like ClassBench's (Taylor and Turner, "ClassBench: a
//! packet classification benchmark", 2005): the standard benchmark of
//! packet classifiers, whose filter sets come in three kinds, acl (access
//! control lists), fw (firewalls) and ipc (IP chains). This generator
//! follows the distributions of the seed parameter files `acl1_seed`,
//! `fw1_seed` and `ipc1_seed` (as published in jafingerhut/classbench),
//! summarized into the tables below:
//!
//! - the protocol of each rule, and per protocol the port-pair class:
//!   wildcard (WC), ephemeral 1024-65535 (HI), an arbitrary range (AR) or an
//!   exact port (EM), for source and destination (the well-known range,
//!   LO, is in none of the three seeds);
//! - the ranges and exact ports, drawn from the seed's lists;
//! - the (source, destination) prefix lengths, the 24 most frequent pairs.
//!
//! Left out, as nva does not match them: protocols other than TCP, UDP and
//! ICMP (GRE, ESP, AH: a few percent of fw and ipc rules), and the TCP flags.
//! Addresses are IPv4, as in ClassBench. Where ClassBench grows binary
//! trees from the seed's nesting and skew statistics, this generator draws
//! addresses from a skewed pool of /16 networks (a few hold most rules, and
//! half of the networks share a /8 with another), which gives the nesting
//! the classifier must handle: short prefixes holding many longer ones.

use std::net::{IpAddr, Ipv4Addr};

use super::Rng;
use crate::policy::model::{Action, Cidr, PortRange, Proto, Rule};

/// A ClassBench filter-set kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Acl,
    Fw,
    Ipc,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Acl, Shape::Fw, Shape::Ipc];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Acl => "acl",
            Shape::Fw => "fw",
            Shape::Ipc => "ipc",
        }
    }

    fn params(self) -> &'static Params {
        match self {
            Shape::Acl => &ACL1,
            Shape::Fw => &FW1,
            Shape::Ipc => &IPC1,
        }
    }
}

/// One port of a port-pair class.
#[derive(Clone, Copy)]
enum Port {
    Wc,
    Hi,
    Ar,
    Em,
}

/// (source, destination) port classes, in the seed files' names.
type PortPair = (Port, Port);
const WC_WC: PortPair = (Port::Wc, Port::Wc);
const WC_HI: PortPair = (Port::Wc, Port::Hi);
const HI_WC: PortPair = (Port::Hi, Port::Wc);
const HI_HI: PortPair = (Port::Hi, Port::Hi);
const WC_AR: PortPair = (Port::Wc, Port::Ar);
const AR_WC: PortPair = (Port::Ar, Port::Wc);
const HI_AR: PortPair = (Port::Hi, Port::Ar);
const AR_HI: PortPair = (Port::Ar, Port::Hi);
const WC_EM: PortPair = (Port::Wc, Port::Em);
const EM_WC: PortPair = (Port::Em, Port::Wc);
const HI_EM: PortPair = (Port::Hi, Port::Em);
const EM_HI: PortPair = (Port::Em, Port::Hi);
const EM_AR: PortPair = (Port::Em, Port::Ar);
const EM_EM: PortPair = (Port::Em, Port::Em);

/// Port-pair classes of one protocol, with their weights.
type PortPairs = &'static [(PortPair, f64)];

/// A seed file's distributions. Weights need not sum to 1.
struct Params {
    /// (protocol, weight, port-pair classes with their weights)
    protos: &'static [(Proto, f64, PortPairs)],
    /// (weight, lo, hi) of source and destination ranges and exact ports.
    sp_ar: &'static [(f64, u16, u16)],
    sp_em: &'static [(f64, u16, u16)],
    dp_ar: &'static [(f64, u16, u16)],
    dp_em: &'static [(f64, u16, u16)],
    /// (source length, destination length, weight); length 0 is "any".
    lens: &'static [(u8, u8, f64)],
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T], weight: impl Fn(&T) -> f64) -> &'a T {
    let total: f64 = items.iter().map(&weight).sum();
    let mut x = (rng.below(1 << 30) as f64 / (1u64 << 30) as f64) * total;
    for item in items {
        x -= weight(item);
        if x < 0.0 {
            return item;
        }
    }
    items.last().expect("tables are not empty")
}

/// Networks of one address side: /16 bases, drawn with a skew.
struct Pool(Vec<u32>);

impl Pool {
    fn new(rng: &mut Rng, n_rules: usize) -> Pool {
        let count = (n_rules / 32).max(8);
        let mut bases: Vec<u32> = Vec::with_capacity(count);
        for _ in 0..count {
            let base = if !bases.is_empty() && rng.chance(50) {
                // Same /8 as an earlier network.
                (bases[rng.below(bases.len() as u64) as usize] & 0xFF00_0000)
                    | (rng.next_u64() as u32 & 0x00FF_0000)
            } else {
                rng.next_u64() as u32 & 0xFFFF_0000
            };
            bases.push(base);
        }
        Pool(bases)
    }

    /// A prefix of `len` bits; `None` for length 0 (any address).
    fn prefix(&self, rng: &mut Rng, len: u8) -> Option<Cidr> {
        if len == 0 {
            return None;
        }
        // Skewed: the square of a uniform draw favours the first networks.
        let u = rng.below(1 << 16);
        let index = ((((u * u) >> 16) as usize) * self.0.len()) >> 16;
        let addr = self.0[index.min(self.0.len() - 1)] | (rng.next_u64() as u32 & 0xFFFF);
        Some(Cidr::new(IpAddr::V4(Ipv4Addr::from(addr)), len))
    }
}

/// Generator of ClassBench-shaped rule sets.
pub struct ClassBench {
    shape: Shape,
    src: Pool,
    dst: Pool,
}

impl ClassBench {
    pub fn new(shape: Shape, rng: &mut Rng, n_rules: usize) -> ClassBench {
        ClassBench {
            shape,
            src: Pool::new(rng, n_rules),
            dst: Pool::new(rng, n_rules),
        }
    }

    fn port(
        rng: &mut Rng,
        class: Port,
        ar: &[(f64, u16, u16)],
        em: &[(f64, u16, u16)],
    ) -> Vec<PortRange> {
        let from = |rng: &mut Rng, list: &[(f64, u16, u16)]| {
            let (_, lo, hi) = *pick(rng, list, |e| e.0);
            vec![PortRange { lo, hi }]
        };
        match class {
            Port::Wc => vec![],
            Port::Hi => vec![PortRange {
                lo: 1024,
                hi: 65_535,
            }],
            // A seed without ranges (or exact ports) for this side: an
            // exact port (or a range) instead.
            Port::Ar if ar.is_empty() => from(rng, em),
            Port::Ar => from(rng, ar),
            Port::Em if em.is_empty() => from(rng, ar),
            Port::Em => from(rng, em),
        }
    }

    pub fn rule(&self, rng: &mut Rng, index: usize) -> Rule {
        let p = self.shape.params();
        let (proto, _, pairs) = *pick(rng, p.protos, |e| e.1);
        let (sport, dport) = if matches!(proto, Proto::Tcp | Proto::Udp) {
            let (s, d) = pick(rng, pairs, |e| e.1).0;
            (
                Self::port(rng, s, p.sp_ar, p.sp_em),
                Self::port(rng, d, p.dp_ar, p.dp_em),
            )
        } else {
            (vec![], vec![])
        };
        // A rule matching every packet would shadow all that follow it
        // (ClassBench's own sets rarely have one): draw the lengths again.
        let mut lens = *pick(rng, p.lens, |e| e.2);
        for _ in 0..8 {
            let everything = proto == Proto::Any && lens.0 == 0 && lens.1 == 0;
            if !everything {
                break;
            }
            lens = *pick(rng, p.lens, |e| e.2);
        }
        if proto == Proto::Any && lens.0 == 0 && lens.1 == 0 {
            lens.1 = 32;
        }
        Rule {
            name: format!("{}{index}", self.shape.name()),
            action: if rng.chance(50) {
                Action::Allow
            } else {
                Action::Drop
            },
            proto,
            src: self.src.prefix(rng, lens.0).into_iter().collect(),
            dst: self.dst.prefix(rng, lens.1).into_iter().collect(),
            sport,
            dport,
            icmp_type: vec![],
            in_iface: None,
            log: false,
        }
    }

    pub fn rules(&self, rng: &mut Rng, n: usize) -> Vec<Rule> {
        (0..n).map(|i| self.rule(rng, i)).collect()
    }
}

/// Modeled on ClassBench's `acl1_seed` parameter file.
const ACL1: Params = Params {
    protos: &[
        (Proto::Any, 0.08458, &[(WC_WC, 1.0)]),
        (Proto::Icmp, 0.03138, &[(WC_WC, 1.0)]),
        (
            Proto::Tcp,
            0.8731,
            &[(WC_WC, 0.216), (WC_AR, 0.131), (WC_EM, 0.653)],
        ),
        (Proto::Udp, 0.01091, &[(WC_AR, 0.125), (WC_EM, 0.875)]),
    ],
    sp_ar: &[],
    sp_em: &[],
    dp_ar: &[
        (0.0824, 1600, 1649),
        (0.0706, 1300, 1349),
        (0.0706, 1300, 1350),
        (0.0471, 7500, 7599),
        (0.0471, 2200, 2210),
        (0.0353, 1025, 65535),
        (0.0353, 1700, 1750),
        (0.0353, 5001, 65535),
        (0.0353, 32200, 32207),
        (0.0353, 8000, 8100),
        (0.0235, 61700, 61709),
        (0.0235, 61500, 61509),
        (0.0235, 61600, 61609),
        (0.0235, 61900, 61909),
        (0.0235, 62000, 62009),
        (0.0235, 61800, 61809),
    ],
    dp_em: &[
        (0.188, 1521, 1521),
        (0.0541, 1526, 1526),
        (0.0424, 1221, 1221),
        (0.0353, 1433, 1433),
        (0.0282, 1525, 1525),
        (0.0282, 135, 135),
        (0.0282, 14753, 14753),
        (0.0235, 1712, 1712),
        (0.0235, 1711, 1711),
        (0.0235, 1704, 1704),
        (0.0235, 1708, 1708),
        (0.0212, 5555, 5555),
        (0.0212, 1705, 1705),
        (0.0212, 6000, 6000),
        (0.0212, 20, 20),
        (0.0212, 21, 21),
    ],
    lens: &[
        (32, 32, 0.75),
        (32, 22, 0.0491),
        (23, 32, 0.0477),
        (32, 24, 0.0341),
        (31, 32, 0.0273),
        (23, 16, 0.0164),
        (30, 22, 0.0136),
        (32, 31, 0.0109),
        (32, 30, 0.00682),
        (31, 22, 0.00682),
        (30, 32, 0.00546),
        (23, 31, 0.00409),
        (23, 28, 0.00273),
        (0, 0, 0.00136),
        (0, 13, 0.00136),
        (23, 0, 0.00136),
        (23, 1, 0.00136),
        (23, 2, 0.00136),
        (23, 3, 0.00136),
        (23, 4, 0.00136),
        (23, 5, 0.00136),
        (23, 6, 0.00136),
        (23, 7, 0.00136),
        (23, 8, 0.00136),
    ],
};

/// Modeled on ClassBench's `fw1_seed` parameter file.
const FW1: Params = Params {
    protos: &[
        (Proto::Any, 0.0106, &[(WC_WC, 1.0)]),
        (Proto::Icmp, 0.03887, &[(WC_WC, 1.0)]),
        (
            Proto::Tcp,
            0.5724,
            &[(WC_WC, 0.185), (HI_HI, 0.0679), (WC_EM, 0.747)],
        ),
        (
            Proto::Udp,
            0.3216,
            &[
                (HI_HI, 0.0659),
                (HI_AR, 0.011),
                (AR_HI, 0.011),
                (WC_EM, 0.429),
                (EM_WC, 0.308),
                (HI_EM, 0.0549),
                (EM_HI, 0.0549),
                (EM_EM, 0.0659),
            ],
        ),
    ],
    sp_ar: &[(1.0, 33434, 33600)],
    sp_em: &[
        (0.231, 123, 123),
        (0.205, 53, 53),
        (0.128, 750, 750),
        (0.103, 161, 161),
        (0.0769, 88, 88),
        (0.0769, 69, 69),
        (0.0513, 24032, 24032),
        (0.0513, 67, 67),
        (0.0513, 7648, 7648),
        (0.0256, 162, 162),
    ],
    dp_ar: &[(1.0, 33434, 33600)],
    dp_em: &[
        (0.17, 22, 22),
        (0.105, 80, 80),
        (0.0994, 25, 25),
        (0.0994, 53, 53),
        (0.0702, 123, 123),
        (0.0292, 2105, 2105),
        (0.0292, 21, 21),
        (0.0292, 544, 544),
        (0.0292, 750, 750),
        (0.0234, 443, 443),
        (0.0234, 23, 23),
        (0.0234, 161, 161),
        (0.0175, 67, 67),
        (0.0175, 119, 119),
        (0.0175, 88, 88),
        (0.0175, 69, 69),
    ],
    lens: &[
        (0, 32, 0.548),
        (32, 0, 0.145),
        (0, 0, 0.0742),
        (32, 32, 0.0565),
        (30, 0, 0.0177),
        (32, 21, 0.0177),
        (21, 0, 0.0141),
        (23, 0, 0.0141),
        (27, 0, 0.0141),
        (28, 32, 0.0141),
        (32, 28, 0.0141),
        (30, 32, 0.0141),
        (32, 30, 0.0141),
        (28, 0, 0.00707),
        (29, 0, 0.00707),
        (28, 28, 0.00707),
        (8, 0, 0.00353),
        (12, 0, 0.00353),
        (16, 0, 0.00353),
        (26, 0, 0.00353),
        (0, 27, 0.00353),
        (26, 21, 0.00353),
    ],
};

/// Modeled on ClassBench's `ipc1_seed` parameter file.
const IPC1: Params = Params {
    protos: &[
        (Proto::Any, 0.3449, &[(WC_WC, 1.0)]),
        (Proto::Icmp, 0.01116, &[(WC_WC, 1.0)]),
        (
            Proto::Tcp,
            0.2615,
            &[
                (WC_WC, 0.0854),
                (WC_AR, 0.0697),
                (AR_WC, 0.0652),
                (WC_EM, 0.503),
                (EM_WC, 0.274),
                (EM_AR, 0.00225),
            ],
        ),
        (
            Proto::Udp,
            0.3772,
            &[
                (WC_WC, 0.00779),
                (WC_HI, 0.173),
                (HI_WC, 0.00935),
                (WC_AR, 0.0171),
                (AR_WC, 0.00779),
                (WC_EM, 0.584),
                (EM_WC, 0.193),
                (EM_EM, 0.00779),
            ],
        ),
    ],
    sp_ar: &[
        (0.294, 20, 23),
        (0.294, 109, 110),
        (0.235, 20, 21),
        (0.147, 1645, 1646),
        (0.0294, 5000, 5001),
    ],
    sp_em: &[
        (0.246, 161, 161),
        (0.135, 53, 53),
        (0.0873, 80, 80),
        (0.0833, 25, 25),
        (0.0754, 1433, 1433),
        (0.0437, 22, 22),
        (0.0397, 5540, 5540),
        (0.0397, 143, 143),
        (0.0317, 5550, 5550),
        (0.0238, 5520, 5520),
        (0.0238, 5500, 5500),
        (0.0238, 5632, 5632),
        (0.0238, 5510, 5510),
        (0.0238, 5530, 5530),
        (0.0159, 500, 500),
        (0.0159, 5631, 5631),
    ],
    dp_ar: &[
        (0.256, 20, 23),
        (0.256, 109, 110),
        (0.186, 20, 21),
        (0.186, 1645, 1646),
        (0.0698, 1812, 1813),
        (0.0233, 20, 2511),
        (0.0233, 5000, 5001),
    ],
    dp_em: &[
        (0.184, 69, 69),
        (0.182, 514, 514),
        (0.109, 80, 80),
        (0.0828, 9003, 9003),
        (0.0778, 53, 53),
        (0.048, 25, 25),
        (0.0315, 1433, 1433),
        (0.0248, 137, 137),
        (0.0182, 22, 22),
        (0.0182, 143, 143),
        (0.0182, 162, 162),
        (0.0166, 113, 113),
        (0.0149, 139, 139),
        (0.0132, 119, 119),
        (0.0132, 161, 161),
        (0.00993, 5540, 5540),
    ],
    lens: &[
        (32, 32, 0.24),
        (24, 24, 0.0958),
        (24, 32, 0.0875),
        (32, 24, 0.0529),
        (0, 32, 0.0394),
        (23, 24, 0.0388),
        (23, 32, 0.0311),
        (24, 16, 0.0294),
        (24, 0, 0.0253),
        (32, 26, 0.0241),
        (0, 24, 0.0206),
        (24, 26, 0.02),
        (26, 24, 0.0194),
        (16, 24, 0.0188),
        (32, 0, 0.0153),
        (16, 32, 0.0147),
        (32, 16, 0.0112),
        (26, 32, 0.0106),
        (24, 28, 0.0094),
        (22, 24, 0.0094),
        (17, 24, 0.00764),
        (32, 25, 0.00764),
        (23, 16, 0.00764),
        (28, 16, 0.00705),
    ],
};
