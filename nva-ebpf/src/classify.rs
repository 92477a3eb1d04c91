//! Flat-cost classification: each field is looked up once into its class,
//! then the classes are joined by hash lookups. The cost does not depend on
//! the number of rules; it is bounded by the number of key patterns in use
//! (see `DataPathConfig::l4_patterns`). First-match order was resolved by the
//! compiler: the answer is the smallest rule id found. Large rule sets are
//! split into up to four rule groups, each joined on its own classes. Rule sets of
//! address prefixes only (block lists) take a short path: one
//! longest-prefix match per address side, through a trie or, with few
//! prefix lengths, one hash lookup per length.

use aya_ebpf::maps::lpm_trie::Key;
use nva_common::{
    class_lane, first_passing_check, prefix_table_index, v4_range_find, AddrClass, CheckedFields,
    DataPathConfig, L4Key, PairKey, PairMatch, PrefixKey, VerdictKey, ANY_CLASS, CLASS_ID_MASK,
    CLASS_IN_PAIRS, CLASS_IN_SINGLE, ICMP_SLOT_V4, ICMP_SLOT_V6, NO_PREFIX_LEN, NO_RULE,
    PAIR_TABLE_BOTH, PAIR_TABLE_DST_ONLY, PAIR_TABLE_SRC_ONLY, PORT_SLOT_TCP_DPORT,
    PORT_SLOT_TCP_SPORT, PORT_SLOT_UDP_DPORT, PORT_SLOT_UDP_SPORT, PREFIX_HASH_LENS,
    PREFIX_RULES_DST, PREFIX_RULES_HASHED, PREFIX_RULES_SRC, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP, RULE_GROUPS, V4_RANGES_DST, V4_RANGES_SRC,
};

use crate::maps::{Tables, PACKET};
use crate::parse::Packet;

#[inline(always)]
fn port_class<T: Tables>(slot: u32, port: u16) -> u32 {
    T::port_class()
        .get(port as u32)
        .map_or(0, |entry| class_lane(*entry, slot))
}

#[inline(always)]
fn icmp_class<T: Tables>(slot: u32, icmp_type: u8) -> u32 {
    T::icmp_class()
        .get(icmp_type as u32)
        .map_or(0, |entry| class_lane(*entry, slot))
}

/// Address classes of the packet in every rule group: (source, destination),
/// [`NO_RULE`] where the address tables hold no prefix of the address. Not
/// `Option`s: LLVM packs a pair of them into shifted registers, which the
/// verifier refuses or explores path by path.
#[inline(always)]
fn addr_classes<T: Tables>(pkt: &Packet, v4_ranges: u8) -> (AddrClass, AddrClass) {
    if pkt.is_v6 {
        (
            T::src_v6()
                .get(Key::new(128, pkt.src))
                .copied()
                .unwrap_or(NONE),
            T::dst_v6()
                .get(Key::new(128, pkt.dst))
                .copied()
                .unwrap_or(NONE),
        )
    } else {
        let src4 = u32::from_be_bytes([pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]]);
        let dst4 = u32::from_be_bytes([pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]]);
        let src = if v4_ranges & V4_RANGES_SRC != 0 {
            T::v4_range_class::<false>(v4_range_index::<T, false>(src4))
        } else {
            T::src_v4().get(Key::new(32, src4.to_be_bytes()))
        };
        let dst = if v4_ranges & V4_RANGES_DST != 0 {
            T::v4_range_class::<true>(v4_range_index::<T, true>(dst4))
        } else {
            T::dst_v4().get(Key::new(32, dst4.to_be_bytes()))
        };
        (src.copied().unwrap_or(NONE), dst.copied().unwrap_or(NONE))
    }
}

/// No prefix holds the address.
const NONE: AddrClass = AddrClass {
    class: [NO_RULE; RULE_GROUPS],
};

/// The class index of the IPv4 address `addr` in a side's range arrays
/// (see `nva_common::V4_RANGE_BLOCKS`): that of the last range of its
/// block (or slice) starting at or before it, by binary search;
/// [`NO_RULE`] if an entry is missing.
#[inline(always)]
fn v4_range_index<T: Tables, const DST: bool>(addr: u32) -> u32 {
    match (T::SLOT, DST) {
        (0, false) => nva_v4_range_index_src_0(addr),
        (0, true) => nva_v4_range_index_dst_0(addr),
        (_, false) => nva_v4_range_index_src_1(addr),
        (_, true) => nva_v4_range_index_dst_1(addr),
    }
}

// The search of each slot and side as a global function (external
// linkage): the verifier checks a global function once, on its own, and
// takes its result as any number at every call, where it would walk the
// search again for each of the (hundreds of) paths reaching a call.
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_v4_range_index_src_0(addr: u32) -> u32 {
    v4_range_search::<crate::maps::slot0::Slot, false>(addr)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_v4_range_index_dst_0(addr: u32) -> u32 {
    v4_range_search::<crate::maps::slot0::Slot, true>(addr)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_v4_range_index_src_1(addr: u32) -> u32 {
    v4_range_search::<crate::maps::slot1::Slot, false>(addr)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_v4_range_index_dst_1(addr: u32) -> u32 {
    v4_range_search::<crate::maps::slot1::Slot, true>(addr)
}

#[inline(always)]
fn v4_range_search<T: Tables, const DST: bool>(addr: u32) -> u32 {
    let Some(ranges) = T::v4_ranges::<DST>() else {
        return NO_RULE;
    };
    v4_range_find(addr, |index| ranges.get(index).copied())
        .map_or(NO_RULE, |range| (range >> 32) as u32)
}

/// The verdict of (pair class, L4 class): its first rule, or that of its
/// first passing check; [`NO_RULE`] if there is none.
#[inline(always)]
fn verdict<T: Tables>(pair_class: u32, l4_class: u32) -> u32 {
    match T::SLOT {
        0 => nva_verdict_0(pair_class, l4_class),
        _ => nva_verdict_1(pair_class, l4_class),
    }
}

// A global function per slot, like the range search: the verifier checks
// the lookup and the loop over its checks once, not at each of the
// (dozens of) verdict lookups on each of hundreds of paths.
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_verdict_0(pair_class: u32, l4_class: u32) -> u32 {
    verdict_with_checks::<crate::maps::slot0::Slot>(pair_class, l4_class)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_verdict_1(pair_class: u32, l4_class: u32) -> u32 {
    verdict_with_checks::<crate::maps::slot1::Slot>(pair_class, l4_class)
}

#[inline(always)]
fn verdict_with_checks<T: Tables>(pair_class: u32, l4_class: u32) -> u32 {
    let key = VerdictKey {
        pair_class,
        l4_class,
    };
    let Some(found) = T::verdict(&key) else {
        return NO_RULE;
    };
    let (rule, checks) = (found.rule, found.checks);
    if checks == 0 {
        return rule;
    }
    min(rule, first_passing_check_of::<T>(checks))
}

/// The rule of the first check of `checks` the packet passes (see
/// `nva_common::first_passing_check`), or [`NO_RULE`].
#[inline(always)]
fn rule_checks<T: Tables>(checks: u32) -> u32 {
    match T::SLOT {
        0 => nva_rule_checks_0(checks),
        _ => nva_rule_checks_1(checks),
    }
}

#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_rule_checks_0(checks: u32) -> u32 {
    first_passing_check_of::<crate::maps::slot0::Slot>(checks)
}
#[no_mangle]
#[inline(never)]
pub extern "C" fn nva_rule_checks_1(checks: u32) -> u32 {
    first_passing_check_of::<crate::maps::slot1::Slot>(checks)
}

#[inline(always)]
fn first_passing_check_of<T: Tables>(checks: u32) -> u32 {
    let (Some(pkt), Some(table)) = (PACKET.get(0), T::rule_checks()) else {
        return NO_RULE;
    };
    let fields = CheckedFields::new(&pkt.src, &pkt.dst, pkt.is_v6, pkt.sport, pkt.dport);
    first_passing_check(checks, &fields, |i| table.get(i).copied())
}

/// L4 classes found, one per key pattern (interface, source port class,
/// destination port or ICMP type class; each either a class or ANY).
struct L4Matches {
    /// `none` where the pattern was not found.
    classes: [u32; 8],
    /// ANY_CLASS, from the configuration (`DataPathConfig::no_class`).
    none: u32,
}

/// Looks up every L4 key pattern in use into `out`; returns the smallest
/// wildcard rule among them.
#[inline(always)]
fn l4_matches<T: Tables>(pkt: &Packet, ifindex: u32, patterns: u8, out: &mut L4Matches) -> u32 {
    let proto = nva_common::classifier_proto(pkt.proto);
    let mut best = NO_RULE;
    let (a, b) = match proto {
        PROTO_TCP => (
            port_class::<T>(PORT_SLOT_TCP_SPORT, pkt.sport),
            port_class::<T>(PORT_SLOT_TCP_DPORT, pkt.dport),
        ),
        PROTO_UDP => (
            port_class::<T>(PORT_SLOT_UDP_SPORT, pkt.sport),
            port_class::<T>(PORT_SLOT_UDP_DPORT, pkt.dport),
        ),
        PROTO_ICMP => (ANY_CLASS, icmp_class::<T>(ICMP_SLOT_V4, pkt.icmp_type)),
        PROTO_ICMPV6 => (ANY_CLASS, icmp_class::<T>(ICMP_SLOT_V6, pkt.icmp_type)),
        _ => (ANY_CLASS, ANY_CLASS),
    };
    // SAFETY: the reference is used only during this run, under RCU, so the element stays
    // allocated; the active slot's tables are not written while it is active (a reload writes the
    // other slot, then switches).
    let iface = unsafe { T::iface_class().get(&ifindex) }
        .copied()
        .unwrap_or(ANY_CLASS);
    // Unrolled by hand (constant p): straight-line code verifies cheaply.
    macro_rules! pattern {
        ($p:expr) => {{
            let (use_iface, use_a, use_b) = ($p & 4 != 0, $p & 2 != 0, $p & 1 != 0);
            let wanted = patterns & (1 << $p) != 0
                && !(use_iface && iface == ANY_CLASS)
                && !(use_a && a == ANY_CLASS)
                && !(use_b && b == ANY_CLASS);
            if wanted {
                let key = L4Key {
                    iface_class: if use_iface { iface } else { ANY_CLASS },
                    a_class: if use_a { a } else { ANY_CLASS },
                    b_class: if use_b { b } else { ANY_CLASS },
                    proto,
                    _pad8: 0,
                    _pad16: 0,
                };
                if let Some(m) = T::l4(&key) {
                    out.classes[$p] = m.class;
                    best = min(best, m.wildcard_rule);
                    if m.wildcard_checks != 0 {
                        best = min(best, rule_checks::<T>(m.wildcard_checks));
                    }
                }
            }
        }};
    }
    pattern!(0);
    pattern!(1);
    pattern!(2);
    pattern!(3);
    pattern!(4);
    pattern!(5);
    pattern!(6);
    pattern!(7);
    best
}

/// Folds one address-table match into `best`: its shortcut rules, and the
/// verdicts of its class joined with each L4 class.
#[inline(always)]
fn fold_pair<T: Tables>(best: u32, m: Option<&PairMatch>, l4: &L4Matches, proto: u8) -> u32 {
    let Some(m) = m else {
        return best;
    };
    let mut best = min(best, m.wildcard_rule);
    if let Some(slot) = nva_common::pair_proto_slot(proto) {
        best = min(best, m.proto_rule[slot]);
    }
    // Slots not found hold `none`, which no verdict key uses. Unrolled by
    // hand (constant i): as a loop, the verifier walks it once per path into
    // it, which with several rule groups exceeds its limit.
    // Only the patterns through which this pair class has verdicts.
    macro_rules! verdict {
        ($i:expr) => {{
            let class = l4.classes[$i];
            if class != l4.none && m.verdict_patterns & (1 << $i) != 0 {
                best = min(best, verdict::<T>(m.class, class));
            }
        }};
    }
    verdict!(0);
    verdict!(1);
    verdict!(2);
    verdict!(3);
    verdict!(4);
    verdict!(5);
    verdict!(6);
    verdict!(7);
    best
}

/// The short path of rule sets whose every rule matches one address side
/// and nothing else (block lists): the address tables hold, for each
/// prefix, the first rule matching every address under it, so the first
/// match is the smaller of the (at most two) lookups.
#[inline(always)]
fn first_prefix_rule<T: Tables>(pkt: &Packet, config: &DataPathConfig) -> u32 {
    let sides = config.prefix_rules;
    if sides & PREFIX_RULES_HASHED != 0 {
        // Constant table indexes in each branch: the verifier sees `is_v6`
        // as a byte read from map memory, not as 0 or 1.
        const SRC_V4: usize = prefix_table_index(false, false);
        const SRC_V6: usize = prefix_table_index(false, true);
        const DST_V4: usize = prefix_table_index(true, false);
        const DST_V6: usize = prefix_table_index(true, true);
        let mut best = NO_RULE;
        if pkt.is_v6 {
            if sides & PREFIX_RULES_SRC != 0 {
                best = hashed_prefix_rule::<T, SRC_V6>(&pkt.src, config);
            }
            if sides & PREFIX_RULES_DST != 0 {
                best = min(best, hashed_prefix_rule::<T, DST_V6>(&pkt.dst, config));
            }
        } else {
            if sides & PREFIX_RULES_SRC != 0 {
                best = hashed_prefix_rule::<T, SRC_V4>(&pkt.src, config);
            }
            if sides & PREFIX_RULES_DST != 0 {
                best = min(best, hashed_prefix_rule::<T, DST_V4>(&pkt.dst, config));
            }
        }
        return best;
    }
    // Not `addr_classes`: combining its two `Option`s here, LLVM packs them
    // into shifted registers that the verifier refuses (pointer arithmetic).
    let mut best = NO_RULE;
    if pkt.is_v6 {
        if sides & PREFIX_RULES_SRC != 0 {
            if let Some(rule) = T::src_v6().get(Key::new(128, pkt.src)) {
                best = rule.class[0];
            }
        }
        if sides & PREFIX_RULES_DST != 0 {
            if let Some(rule) = T::dst_v6().get(Key::new(128, pkt.dst)) {
                best = min(best, rule.class[0]);
            }
        }
    } else {
        if sides & PREFIX_RULES_SRC != 0 {
            let src4 = [pkt.src[0], pkt.src[1], pkt.src[2], pkt.src[3]];
            if let Some(rule) = T::src_v4().get(Key::new(32, src4)) {
                best = rule.class[0];
            }
        }
        if sides & PREFIX_RULES_DST != 0 {
            let dst4 = [pkt.dst[0], pkt.dst[1], pkt.dst[2], pkt.dst[3]];
            if let Some(rule) = T::dst_v4().get(Key::new(32, dst4)) {
                best = min(best, rule.class[0]);
            }
        }
    }
    best
}

/// The hashed short path's lookup of one address: one hash lookup per
/// prefix length in use, longest first; the first found is the longest
/// matching prefix, whose entry carries the first rule.
#[inline(always)]
fn hashed_prefix_rule<T: Tables, const TABLE: usize>(
    addr: &[u8; 16],
    config: &DataPathConfig,
) -> u32 {
    let is_v6 = TABLE & 1 != 0;
    // Unrolled by hand (constant i): straight-line code verifies cheaply.
    macro_rules! length {
        ($i:expr) => {{
            let len = config.prefix_lens[TABLE * PREFIX_HASH_LENS + $i];
            if len == NO_PREFIX_LEN {
                return NO_RULE;
            }
            let key = PrefixKey::masked(addr, is_v6, len, TABLE as u8);
            if let Some(rule) = T::prefix(&key) {
                return *rule;
            }
        }};
    }
    length!(0);
    length!(1);
    length!(2);
    length!(3);
    NO_RULE
}

/// The id of the first rule (in file order) matching the packet, or NO_RULE.
#[inline(always)]
pub fn first_match<T: Tables>(pkt: &Packet, ifindex: u32, config: &DataPathConfig) -> u32 {
    if config.prefix_rules != 0 {
        // A catch-all may close the list: it takes what no prefix does.
        return min(config.catch_all_rule, first_prefix_rule::<T>(pkt, config));
    }
    let proto = nva_common::classifier_proto(pkt.proto);
    let mut best = config.catch_all_rule;
    if let Some(slot) = nva_common::pair_proto_slot(proto) {
        best = min(best, config.proto_catch_all[slot]);
    }
    let mut l4s = L4Matches {
        classes: [config.no_class; 8],
        none: config.no_class,
    };
    best = min(
        best,
        l4_matches::<T>(pkt, ifindex, config.l4_patterns, &mut l4s),
    );
    let (src, dst) = addr_classes::<T>(pkt, config.v4_ranges);
    // Each rule group in use joins its own classes, as a rule set of its
    // own; the smallest rule id over all groups is the first match.
    // Unrolled by hand (constant g): straight-line code verifies cheaply.
    macro_rules! group {
        ($g:expr) => {{
            let tables = config.pair_tables[$g];
            if tables != 0 {
                best = fold_group::<T>(best, tables, src.class[$g], dst.class[$g], &l4s, proto);
            }
        }};
    }
    group!(0);
    group!(1);
    group!(2);
    group!(3);
    best
}

/// Folds one rule group's address-table matches into `best` (`src`, `dst`:
/// the group's classes, or NO_RULE).
#[inline(always)]
fn fold_group<T: Tables>(
    mut best: u32,
    tables: u8,
    src: u32,
    dst: u32,
    l4s: &L4Matches,
    proto: u8,
) -> u32 {
    // The classes' flags say which lookups could find something.
    if src != NO_RULE
        && dst != NO_RULE
        && tables & PAIR_TABLE_BOTH != 0
        && src & dst & CLASS_IN_PAIRS != 0
    {
        let key = PairKey {
            src_class: src & CLASS_ID_MASK,
            dst_class: dst & CLASS_ID_MASK,
        };
        best = fold_pair::<T>(best, T::pair(&key), l4s, proto);
    }
    if dst != NO_RULE && tables & PAIR_TABLE_DST_ONLY != 0 && dst & CLASS_IN_SINGLE != 0 {
        best = fold_pair::<T>(best, T::dst_only(dst & CLASS_ID_MASK), l4s, proto);
    }
    if src != NO_RULE && tables & PAIR_TABLE_SRC_ONLY != 0 && src & CLASS_IN_SINGLE != 0 {
        best = fold_pair::<T>(best, T::src_only(src & CLASS_ID_MASK), l4s, proto);
    }
    best
}

/// Without a branch, so that taking the smaller rule id adds no path to the
/// verifier's walk (with four rule groups the program verifies in about
/// 827,000 of the 1,000,000 instructions the verifier allows).
#[inline(always)]
fn min(a: u32, b: u32) -> u32 {
    // All ones when a < b (the subtraction borrows into bit 63).
    let a_smaller = 0u64.wrapping_sub((a as u64).wrapping_sub(b as u64) >> 63) as u32;
    (a & a_smaller) | (b & !a_smaller)
}
