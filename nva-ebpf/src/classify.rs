//! Flat-cost classification: each field is looked up once into its class,
//! then the class tuple is joined in two phases. The cost is the same for 10
//! or 100,000 rules; first-match order was resolved by the compiler.

use aya_ebpf::maps::lpm_trie::Key;
use nva_common::{
    ClassMatch, L4Key, PairKey, PairMatch, VerdictKey, ICMP_SLOT_V4, ICMP_SLOT_V6,
    PORT_SLOT_TCP_DPORT, PORT_SLOT_TCP_SPORT, PORT_SLOT_UDP_DPORT, PORT_SLOT_UDP_SPORT, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::maps::{
    DST_ONLY, DST_V4, DST_V6, ICMP_CLASS, IFACE_CLASS, L4, PAIRS, PORT_CLASS, SRC_ONLY, SRC_V4,
    SRC_V6, VERDICTS,
};
use crate::parse::Packet;

#[inline(always)]
fn port_class(slot: u32, port: u16) -> u32 {
    PORT_CLASS
        .get(slot * 65_536 + port as u32)
        .copied()
        .unwrap_or(0)
}

#[inline(always)]
fn icmp_class(slot: u32, icmp_type: u8) -> u32 {
    ICMP_CLASS
        .get(slot * 256 + icmp_type as u32)
        .copied()
        .unwrap_or(0)
}

/// Address classes of the packet: (source, destination).
#[inline(always)]
fn addr_classes(pkt: &Packet) -> (Option<u32>, Option<u32>) {
    if pkt.is_v6 {
        (
            SRC_V6.get(Key::new(128, pkt.src)).copied(),
            DST_V6.get(Key::new(128, pkt.dst)).copied(),
        )
    } else {
        let src4 = [pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]];
        let dst4 = [pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]];
        (
            SRC_V4.get(Key::new(32, src4)).copied(),
            DST_V4.get(Key::new(32, dst4)).copied(),
        )
    }
}

/// Folds one pair-table match into `best`: its shortcut rules, and the
/// verdict of its class joined with the L4 class.
#[inline(always)]
fn fold_pair(best: u32, m: Option<PairMatch>, l4: Option<ClassMatch>, proto: u8) -> u32 {
    let Some(m) = m else {
        return best;
    };
    let mut best = min(best, m.wildcard_rule);
    if let Some(slot) = nva_common::pair_proto_slot(proto) {
        best = min(best, m.proto_rule[slot]);
    }
    if let Some(l) = l4 {
        let key = VerdictKey {
            pair_class: m.class,
            l4_class: l.class,
        };
        if let Some(rule) = unsafe { VERDICTS.get(&key) } {
            best = min(best, *rule);
        }
    }
    best
}

#[inline(always)]
fn l4_match(pkt: &Packet, ifindex: u32) -> Option<ClassMatch> {
    let proto = nva_common::classifier_proto(pkt.proto);
    let (a_class, b_class) = match proto {
        PROTO_TCP => (
            port_class(PORT_SLOT_TCP_SPORT, pkt.sport),
            port_class(PORT_SLOT_TCP_DPORT, pkt.dport),
        ),
        PROTO_UDP => (
            port_class(PORT_SLOT_UDP_SPORT, pkt.sport),
            port_class(PORT_SLOT_UDP_DPORT, pkt.dport),
        ),
        PROTO_ICMP => (icmp_class(ICMP_SLOT_V4, pkt.icmp_type), 0),
        PROTO_ICMPV6 => (icmp_class(ICMP_SLOT_V6, pkt.icmp_type), 0),
        _ => (0, 0),
    };
    let iface_class = unsafe { IFACE_CLASS.get(&ifindex) }.copied().unwrap_or(0);
    let key = L4Key {
        iface_class,
        a_class,
        b_class,
        proto,
        _pad: [0; 3],
    };
    unsafe { L4.get(&key) }.copied()
}

/// The id of the first rule (in file order) matching the packet, or NO_RULE.
#[inline(always)]
pub fn first_match(pkt: &Packet, ifindex: u32, catch_all_rule: u32) -> u32 {
    let proto = nva_common::classifier_proto(pkt.proto);
    let l4 = l4_match(pkt, ifindex);
    let mut best = catch_all_rule;
    if let Some(l) = l4 {
        best = min(best, l.wildcard_rule);
    }
    let (src, dst) = addr_classes(pkt);
    if let (Some(s), Some(d)) = (src, dst) {
        let key = PairKey {
            src_class: s,
            dst_class: d,
        };
        best = fold_pair(best, unsafe { PAIRS.get(&key) }.copied(), l4, proto);
    }
    if let Some(d) = dst {
        best = fold_pair(best, unsafe { DST_ONLY.get(&d) }.copied(), l4, proto);
    }
    if let Some(s) = src {
        best = fold_pair(best, unsafe { SRC_ONLY.get(&s) }.copied(), l4, proto);
    }
    best
}

#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}
