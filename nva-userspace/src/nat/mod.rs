//! NAT entries as the data path matches them: each `[[nat]]` entry becomes
//! one atom ([`NatMatch`]) per combination of its prefixes, port ranges and
//! ICMP types, in file order, DNAT and SNAT apart. Few entries are the
//! norm, so the program scans the atoms (on a flow's first packet only)
//! rather than classifying them like the rules.

pub mod guard;

use std::net::IpAddr;

use nva_common::{
    NatMatch, MAX_NAT_ATOMS, NAT_ANY_ICMP_TYPE, NAT_KIND_DNAT, NAT_KIND_SNAT, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::policy::model::{Cidr, Nat, NatKind, PortRange, Proto};

/// The atoms of one rule set, ready for the slot's NAT maps except for
/// the interface indexes and counter indexes, set at install time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledNat {
    pub dnat: Vec<NatAtom>,
    pub snat: Vec<NatAtom>,
}

/// What a slot's NAT maps hold: the atoms of each kind, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatTables {
    pub dnat: Vec<NatMatch>,
    pub snat: Vec<NatMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatAtom {
    pub m: NatMatch,
    /// Index of the entry in the config's `[[nat]]` list.
    pub entry: usize,
    pub in_iface: Option<String>,
}

/// An address in the data path's 16-byte form (IPv4 in the first 4 bytes).
pub fn addr_bytes(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn words(b: [u8; 16]) -> [u64; 2] {
    let (a, c) = b.split_at(8);
    [
        u64::from_ne_bytes(a.try_into().expect("8 bytes")),
        u64::from_ne_bytes(c.try_into().expect("8 bytes")),
    ]
}

/// (network, mask) as the program compares them; None: any address.
fn prefix(c: Option<&Cidr>) -> ([u64; 2], [u64; 2]) {
    let Some(c) = c else {
        return ([0, 0], [0, 0]);
    };
    let mut mask = [0u8; 16];
    for bit in 0..c.len as usize {
        mask[bit / 8] |= 0x80 >> (bit % 8);
    }
    (words(addr_bytes(c.addr)), words(mask))
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Any => 0,
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Icmp => PROTO_ICMP,
        Proto::Icmpv6 => PROTO_ICMPV6,
    }
}

/// Items of a list, or one `None` for an empty list (any).
fn or_any<T>(list: &[T]) -> Vec<Option<&T>> {
    if list.is_empty() {
        vec![None]
    } else {
        list.iter().map(Some).collect()
    }
}

impl CompiledNat {
    /// The atoms of `entries` (validated: at most `MAX_NAT_ATOMS` per kind).
    pub fn compile(entries: &[Nat]) -> CompiledNat {
        let mut out = CompiledNat::default();
        for (entry, n) in entries.iter().enumerate() {
            let m = &n.matches;
            let v4 = n.family_v4();
            let of_family = |l: &[Cidr]| -> Vec<Cidr> {
                l.iter().filter(|c| c.is_v4() == v4).copied().collect()
            };
            let (src, dst) = (of_family(&m.src), of_family(&m.dst));
            let list = match n.kind {
                NatKind::Dnat => &mut out.dnat,
                NatKind::Snat => &mut out.snat,
            };
            for s in or_any(&src) {
                for d in or_any(&dst) {
                    for sp in or_any(&m.sport) {
                        for dp in or_any(&m.dport) {
                            for t in or_any(&m.icmp_type) {
                                let (src_addr, src_mask) = prefix(s);
                                let (dst_addr, dst_mask) = prefix(d);
                                let sp = sp.copied().unwrap_or(PortRange::ANY);
                                let dp = dp.copied().unwrap_or(PortRange::ANY);
                                list.push(NatAtom {
                                    m: NatMatch {
                                        src_addr,
                                        src_mask,
                                        dst_addr,
                                        dst_mask,
                                        to_addr: addr_bytes(n.to),
                                        sport_lo: sp.lo,
                                        sport_hi: sp.hi,
                                        dport_lo: dp.lo,
                                        dport_hi: dp.hi,
                                        to_port: n.to_port.unwrap_or(0),
                                        to_ports_lo: n.to_ports.lo,
                                        to_ports_hi: n.to_ports.hi,
                                        icmp_type: t.map_or(NAT_ANY_ICMP_TYPE, |&t| t as u16),
                                        ifindex: 0,
                                        counter: 0,
                                        proto: proto_number(m.proto),
                                        family: if v4 { 4 } else { 6 },
                                        kind: match n.kind {
                                            NatKind::Dnat => NAT_KIND_DNAT,
                                            NatKind::Snat => NAT_KIND_SNAT,
                                        },
                                        _pad8: 0,
                                        _pad32: 0,
                                    },
                                    entry,
                                    in_iface: m.in_iface.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        debug_assert!(out.dnat.len() <= MAX_NAT_ATOMS as usize);
        debug_assert!(out.snat.len() <= MAX_NAT_ATOMS as usize);
        out
    }

    /// The maps' contents: counter indexes by entry (`counters[entry]`)
    /// and interface indexes filled in. An atom of an interface that does
    /// not exist (now) matches nothing: it is left out.
    pub fn tables(&self, counters: &[u32], ifindex_of: &dyn Fn(&str) -> Option<u32>) -> NatTables {
        let fill = |atoms: &[NatAtom]| {
            atoms
                .iter()
                .filter_map(|a| {
                    let ifindex = match &a.in_iface {
                        None => 0,
                        Some(name) => ifindex_of(name)?,
                    };
                    Some(NatMatch {
                        ifindex,
                        counter: counters.get(a.entry).copied().unwrap_or(0),
                        ..a.m
                    })
                })
                .collect()
        };
        NatTables {
            dnat: fill(&self.dnat),
            snat: fill(&self.snat),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.dnat.is_empty() && self.snat.is_empty()
    }
}
