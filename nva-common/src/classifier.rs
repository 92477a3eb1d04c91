//! The classifier's tables: keys and values of the rule maps, their
//! capacities and the constants the program and the compiler share.

use crate::wire::{PROTO_ICMP, PROTO_ICMPV6, PROTO_OTHER, PROTO_TCP, PROTO_UDP};

/// Rule id meaning "no rule matched" (also: a class lookup found nothing).
pub const NO_RULE: u32 = u32::MAX;

/// Largest number of rules one rule set may hold (size of per-rule arrays).
pub const MAX_RULES: u32 = 131_072;

/// Capacity of each prefix table of one slot (tries are not preallocated,
/// so this bounds memory rather than reserves it). The join tables have no
/// fixed capacity: each rule set's are created at the size it needs.
pub const CAPACITY_PREFIXES: u32 = 1 << 20;

/// The class arrays (ports, ICMP types) hold one `u64` per port or type:
/// its class in each slot, 16 bits per slot (slot `k` in bits `16k..16k+16`).
/// An array map stores values in 8-byte units, so four 16-bit classes cost
/// what one `u32` would. A slot has at most one class per port (65,536), so
/// class ids fit.
pub const CLASS_LANE_BITS: u32 = 16;

/// The class of slot `slot` in a class-array entry.
#[inline(always)]
pub const fn class_lane(entry: u64, slot: u32) -> u32 {
    ((entry >> (slot * CLASS_LANE_BITS)) & 0xffff) as u32
}

/// Port-class slots (lanes of a port's entry): (protocol, direction).
pub const PORT_SLOT_TCP_SPORT: u32 = 0;
pub const PORT_SLOT_TCP_DPORT: u32 = 1;
pub const PORT_SLOT_UDP_SPORT: u32 = 2;
pub const PORT_SLOT_UDP_DPORT: u32 = 3;
pub const PORT_SLOTS: u32 = 4;
/// Entries of the port-class array: one per port.
pub const PORT_CLASS_ENTRIES: u32 = 65_536;

/// ICMP-type-class slots (lanes of a type's entry): ICMP, ICMPv6.
pub const ICMP_SLOT_V4: u32 = 0;
pub const ICMP_SLOT_V6: u32 = 1;
pub const ICMP_SLOTS: u32 = 2;
/// Entries of the ICMP-type-class array: one per type.
pub const ICMP_CLASS_ENTRIES: u32 = 256;

/// Fold an IP protocol number into the classifier's protocol space.
#[inline(always)]
pub const fn classifier_proto(proto: u8) -> u8 {
    match proto {
        PROTO_ICMP | PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => proto,
        _ => PROTO_OTHER,
    }
}

/// Action of a rule or of the default policy.
pub const ACTION_DROP: u8 = 0;
pub const ACTION_ALLOW: u8 = 1;

/// `policy.fragments` in the data path.
pub const FRAGMENTS_DROP: u8 = 0;
pub const FRAGMENTS_ALLOW: u8 = 1;

shared_type! {
    /// Key of the pair map: (source class, destination class).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PairKey {
        pub src_class: u32,
        pub dst_class: u32,
    }
    size = 8, align = 4;
}

/// Class id in an L4 key meaning "the rules stored here do not constrain this
/// dimension". Rules are stored under the pattern of the dimensions they
/// name, so that a wildcard never spreads over every class of a dimension;
/// the program looks up each pattern.
pub const ANY_CLASS: u32 = u32::MAX;

shared_type! {
    /// Key of the L4 map: (ingress-interface class or ANY, protocol, classes).
    /// For TCP/UDP `a_class` is the source port class (or ANY) and `b_class` the
    /// destination port class; for ICMP/ICMPv6 `a_class` is ANY and `b_class` the
    /// type class; for other protocols `a_class` is ANY and `b_class` 0.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct L4Key {
        pub iface_class: u32,
        pub a_class: u32,
        pub b_class: u32,
        pub proto: u8,
        // Padding as u8 + u16, not [u8; 3]: odd-sized zeroing becomes a byte
        // loop (a memset call) in the data path.
        pub _pad8: u8,
        pub _pad16: u16,
    }
    size = 16, align = 4;
}

shared_type! {
    /// Value of the L4 map.
    ///
    /// `class` joins with the other half in the verdict map. `wildcard_rule` is
    /// the first rule that matches on this half alone because it is a wildcard in
    /// the other half (a rule of any address, as seen from the L4 map);
    /// storing it here keeps such rules out of the cross product.
    /// `wildcard_checks` (layout v13): the wildcard rules before
    /// `wildcard_rule` that left their source ports to checks, as
    /// [`VerdictMatch::checks`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ClassMatch {
        pub class: u32,
        pub wildcard_rule: u32,
        pub wildcard_checks: u32,
    }
    size = 12, align = 4;
}

shared_type! {
    /// Value of the pair map: like [`ClassMatch`], plus the first rule matching
    /// this pair that names only a protocol (no ports, ICMP types or interface),
    /// per protocol slot ([`pair_proto_slot`]). Such rules are common ("tcp from
    /// A to B") and would otherwise cross with every port class.
    ///
    /// `verdict_patterns`: bit p is set when some verdict entry joins this pair
    /// class with an L4 class found through L4 pattern p (see
    /// [`l4_pattern`]); the program skips the verdict lookups of the other
    /// patterns, which could find nothing (layout v11).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PairMatch {
        pub class: u32,
        pub wildcard_rule: u32,
        pub proto_rule: [u32; 4],
        pub verdict_patterns: u32,
    }
    size = 28, align = 4;
}

/// Slot of [`PairMatch::proto_rule`] for a classifier protocol.
#[inline(always)]
pub const fn pair_proto_slot(proto: u8) -> Option<usize> {
    match proto {
        PROTO_TCP => Some(0),
        PROTO_UDP => Some(1),
        PROTO_ICMP => Some(2),
        PROTO_ICMPV6 => Some(3),
        _ => None,
    }
}

shared_type! {
    /// Key of the verdict map: (pair class, L4 class); the value is a
    /// [`VerdictMatch`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VerdictKey {
        pub pair_class: u32,
        pub l4_class: u32,
    }
    size = 8, align = 4;
}

shared_type! {
    /// Value of the verdict map (layout v13). `rule`: the first rule, in file
    /// order, that matches both classes outright ([`NO_RULE`] if none).
    /// `checks`: the rules before it that match both classes but left some
    /// fields out of the join, each with the check of those fields (see
    /// [`RuleCheck`]): `first << RULE_CHECK_COUNT_BITS | count` in the slot's
    /// check array, in file order; 0 when there are none.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct VerdictMatch {
        pub rule: u32,
        pub checks: u32,
    }
    size = 8, align = 4;
}

/// Bits of [`VerdictMatch::checks`] holding the count.
pub const RULE_CHECK_COUNT_BITS: u32 = 6;
/// Checks one verdict entry may hold, at most (the program's loop bound).
pub const RULE_CHECKS_MAX: u32 = (1 << RULE_CHECK_COUNT_BITS) - 1;

/// [`RuleCheck::flags`]: the address checked is the destination (else the
/// source).
pub const RULE_CHECK_DST: u8 = 1;
/// [`RuleCheck::flags`]: an address is checked, and with it the family.
pub const RULE_CHECK_ADDR: u8 = 2;
/// [`RuleCheck::flags`]: the address checked is IPv6.
pub const RULE_CHECK_V6: u8 = 4;

shared_type! {
    /// A rule that the join matches only in part (layout v13). A rule whose
    /// prefixes would cross many classes of the other side (a wide source
    /// with a wide destination), whose source ports would cross many
    /// destination-port classes, or whose destination ports cross many
    /// classes, leaves that field out of the join (it is joined as if it
    /// matched any source, say) and is checked on it where the join finds
    /// it: one check per prefix or port range of each field left out (their
    /// product when several are). The program tests the checks of a verdict
    /// entry (or of an L4 entry's wildcards) in order; the first that passes
    /// is the rule.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct RuleCheck {
        /// The address prefix checked: network and mask as two big-endian
        /// words each (IPv4 in the top half of the first); zero when no
        /// address is checked.
        pub addr: [u64; 2],
        pub mask: [u64; 2],
        pub rule: u32,
        /// Source and destination port ranges (`0..=65535` when the port
        /// is not checked).
        pub sport_lo: u16,
        pub sport_hi: u16,
        pub dport_lo: u16,
        pub dport_hi: u16,
        /// `RULE_CHECK_*` bits.
        pub flags: u8,
        pub _pad: [u8; 3],
    }
    size = 48, align = 8;
}

/// A packet's fields as the rule checks test them.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckedFields {
    /// Addresses as two big-endian words (IPv4 in the top half of the
    /// first word).
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub is_v6: bool,
    pub sport: u16,
    pub dport: u16,
}

impl CheckedFields {
    /// From 16-byte addresses (IPv4 in the first 4 bytes).
    #[inline(always)]
    pub fn new(
        src: &[u8; 16],
        dst: &[u8; 16],
        is_v6: bool,
        sport: u16,
        dport: u16,
    ) -> CheckedFields {
        let words = |a: &[u8; 16]| {
            [
                u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
                u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
            ]
        };
        CheckedFields {
            src: words(src),
            dst: words(dst),
            is_v6,
            sport,
            dport,
        }
    }
}

/// The rule of the first check of `checks` (a [`VerdictMatch::checks`])
/// that `pkt` passes, reading the check array through `entry`; [`NO_RULE`]
/// if none passes or an entry is missing. The program and the userspace
/// model both use this function, so the differential tests check the
/// program's checks.
#[inline(always)]
pub fn first_passing_check(
    checks: u32,
    pkt: &CheckedFields,
    entry: impl Fn(u32) -> Option<RuleCheck>,
) -> u32 {
    let first = checks >> RULE_CHECK_COUNT_BITS;
    let count = checks & RULE_CHECKS_MAX;
    for i in 0..RULE_CHECKS_MAX {
        if i >= count {
            break;
        }
        let Some(check) = entry(first.wrapping_add(i)) else {
            return NO_RULE;
        };
        // Without a branch but the last (through `black_box`, so that LLVM
        // does not make branches of it): a branch that joins again doubles
        // the verifier's paths at every check.
        let flags = core::hint::black_box(check.flags as u64);
        let dst = (flags & RULE_CHECK_DST as u64).wrapping_neg();
        let word = |i: usize| (pkt.dst[i] & dst) | (pkt.src[i] & !dst);
        let addr_miss = ((word(0) & check.mask[0]) ^ check.addr[0])
            | ((word(1) & check.mask[1]) ^ check.addr[1]);
        let family_miss = (flags >> 1) & ((flags >> 2) ^ pkt.is_v6 as u64) & 1;
        // A borrow (bit 63) when a port is outside its range.
        let sport = core::hint::black_box(pkt.sport as u64);
        let dport = core::hint::black_box(pkt.dport as u64);
        let ports_miss = (sport.wrapping_sub(check.sport_lo as u64)
            | (check.sport_hi as u64).wrapping_sub(sport)
            | dport.wrapping_sub(check.dport_lo as u64)
            | (check.dport_hi as u64).wrapping_sub(dport))
            >> 63;
        let miss = core::hint::black_box(addr_miss | family_miss | ports_miss);
        if miss == 0 {
            return check.rule;
        }
    }
    NO_RULE
}

shared_type! {
    /// Per-rule data the program needs once a rule id is known.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct RuleAction {
        pub action: u8,
        pub log: u8,
        pub _pad: [u8; 2],
        /// Index into the rule counters: stable for a rule name across reloads
        /// and agent restarts, so counters continue.
        pub counter: u32,
    }
    size = 8, align = 4;
}

shared_type! {
    /// Per-rule counters (a per-CPU array indexed by rule id).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct RuleCounters {
        pub packets: u64,
        pub bytes: u64,
    }
    size = 16, align = 8;
}

shared_type! {
    /// Key of the management (failsafe) map: traffic to this destination port and
    /// protocol passes before any rule.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ManagementKey {
        pub port: u16,
        pub proto: u8,
        pub _pad: u8,
    }
    size = 4, align = 2;
}

/// Rule groups of the general path, at most. A large rule set is split into
/// groups by how wide its address prefixes are, each group with its own
/// address classes, so that the wide prefixes of one group never cross the
/// narrow ones of another (the pair table would grow with the product). The
/// address tries give an address's class in every group at once; the
/// program then joins each group's classes as a rule set of its own.
pub const RULE_GROUPS: usize = 4;

/// Flag of a class in the address tries (general path): the class is in
/// some key of the pair table. Without it on both sides, the program skips
/// the pair lookup, which could find nothing.
pub const CLASS_IN_PAIRS: u32 = 1 << 31;
/// Flag of a class in the address tries: the class has an entry in its
/// side's single-address table (`DST_ONLY` or `SRC_ONLY`).
pub const CLASS_IN_SINGLE: u32 = 1 << 30;
/// The class id under the flags (ids stay below 2^30).
pub const CLASS_ID_MASK: u32 = CLASS_IN_SINGLE - 1;

shared_type! {
    /// Value of the address tries. General path: the address's class in
    /// each rule group ([`NO_RULE`] in groups not in use), with the flags
    /// [`CLASS_IN_PAIRS`] and [`CLASS_IN_SINGLE`] (`NO_RULE` has every bit
    /// set: test for it first). Short path: the first rule of the prefix in
    /// `class[0]`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct AddrClass {
        pub class: [u32; RULE_GROUPS],
    }
    size = 16, align = 4;
}

impl AddrClass {
    /// One class (or rule) in group 0, none in the others.
    pub const fn single(class: u32) -> AddrClass {
        let mut all = [NO_RULE; RULE_GROUPS];
        all[0] = class;
        AddrClass { class: all }
    }
}

/// IPv4 address ranges, the general path's address lookup for large rule
/// sets (layout v12; see `DataPathConfig::v4_ranges`): the prefixes of a
/// side cut the address space into ranges, each with the class of the
/// longest prefix holding it (the trie's answer for every address in it).
/// One array of `u64` per side and slot (`SRC_V4_RANGES`, `DST_V4_RANGES`),
/// each entry two `u32`s ([`v4_range_pair`]):
/// - entries `0..V4_RANGE_BLOCKS`, a directory of /16 blocks: entry `b`
///   holds the first and last index of the ranges holding addresses of
///   block `b`; or, for a block with many ranges, the index of its
///   sub-directory and [`V4_RANGE_SUBDIR`]` + bits`, where the sub-directory
///   has `2^bits` entries like the directory's, one per slice of the block
///   (the next `bits` bits of the address);
/// - after them, the sub-directories; then the ranges in address order,
///   each its first address and the index of its class in the side's class
///   array (`SRC_V4_RANGE_CLASSES`, `DST_V4_RANGE_CLASSES`).
///
/// A lookup reads the block's entry (and its slice's), binary-searches the
/// few ranges left (at most [`V4_RANGE_STEPS`] probes), and reads the
/// class: array reads, where a trie of 100,000 prefixes walks about 20
/// nodes.
pub const V4_RANGE_BLOCKS: u32 = 1 << 16;
/// A directory entry whose second half is this plus `bits` points at a
/// sub-directory of `2^bits` entries (range indexes never come near; the
/// compiler uses 2 to 8 bits).
pub const V4_RANGE_SUBDIR: u32 = 0xffff_ff00;
/// Probes of the binary search, at most: enough for the most candidates a
/// block can have without a sub-directory (65,536: every address of the
/// block starts a range), whatever sub-directories the compiler makes.
pub const V4_RANGE_STEPS: u32 = 17;
/// [`DataPathConfig::v4_ranges`](crate::DataPathConfig) bits: the source
/// (destination) IPv4 addresses are looked up in the range arrays instead
/// of the trie.
pub const V4_RANGES_SRC: u8 = 1;
pub const V4_RANGES_DST: u8 = 2;

/// An entry of the range arrays: `low` in the low 32 bits, `high` above
/// (directory: first and last range index; range: first address and class
/// index).
#[inline(always)]
pub const fn v4_range_pair(low: u32, high: u32) -> u64 {
    low as u64 | (high as u64) << 32
}

/// The range holding `addr` in a side's IPv4 range array, read entry by
/// entry through `entry` (see [`V4_RANGE_BLOCKS`]): its entry (first
/// address, class index), or `None` if an entry is missing. The program
/// and the userspace model both search with this function, so that the
/// differential tests check the search the program runs.
#[inline(always)]
pub fn v4_range_find(addr: u32, entry: impl Fn(u32) -> Option<u64>) -> Option<u64> {
    let mut block = entry(addr >> 16)?;
    let high = (block >> 32) as u32;
    if high >= V4_RANGE_SUBDIR {
        // A block of many ranges: its slice's entry, in its sub-directory.
        let bits = high - V4_RANGE_SUBDIR;
        let slice = (addr & 0xffff) >> ((16 - bits) & 15);
        block = entry((block as u32).wrapping_add(slice))?;
    }
    // Candidates: the range holding the block's (or slice's) first address,
    // which starts at or before `addr`, up to the last one starting in it.
    let mut first = block as u32;
    let mut count = ((block >> 32) as u32).wrapping_sub(first).wrapping_add(1);
    for _ in 0..V4_RANGE_STEPS {
        if count <= 1 {
            break;
        }
        let half = count >> 1;
        // A missing entry (never, once the agent wrote the array) ends the
        // search: in the program, a path that ends adds nothing to the
        // verifier's walk.
        let range = entry(first.wrapping_add(half))?;
        // All ones when the probed range starts at or before `addr` (no
        // borrow out of the subtraction), without a branch: in the program,
        // a branch that joins again would double the verifier's paths at
        // every probe. Through `black_box`, so that LLVM sees neither that
        // the operands fit in 32 bits nor that the borrow is 0 or 1: it
        // would turn this back into a compare and a branch.
        let difference = core::hint::black_box(addr as u64).wrapping_sub(range as u32 as u64);
        let borrow = core::hint::black_box(difference >> 63);
        first = first.wrapping_add(half & (borrow as u32).wrapping_sub(1));
        count -= half;
    }
    entry(first)
}

/// Pattern of an L4 key: bit 2 interface named, bit 1 source port class,
/// bit 0 destination port / ICMP type class (else ANY).
#[inline(always)]
pub const fn l4_pattern(key: &L4Key) -> u8 {
    ((key.iface_class != ANY_CLASS) as u8) << 2
        | ((key.a_class != ANY_CLASS) as u8) << 1
        | (key.b_class != ANY_CLASS) as u8
}

/// [`DataPathConfig::pair_tables`](crate::DataPathConfig) bits: which
/// address tables hold entries of a rule group.
pub const PAIR_TABLE_BOTH: u8 = 1;
pub const PAIR_TABLE_DST_ONLY: u8 = 2;
pub const PAIR_TABLE_SRC_ONLY: u8 = 4;

/// [`DataPathConfig::prefix_rules`](crate::DataPathConfig) bits: the source
/// (destination) address tables hold rule ids.
pub const PREFIX_RULES_SRC: u8 = 1;
pub const PREFIX_RULES_DST: u8 = 2;
/// With the short path: the prefixes are in the hash table (`PREFIXES`),
/// looked up once per prefix length in use, longest first, instead of the
/// tries; block lists use few lengths, and a hash lookup costs less than a
/// trie walk.
pub const PREFIX_RULES_HASHED: u8 = 4;

/// Prefix lengths per table on the hashed short path (longest first).
pub const PREFIX_HASH_LENS: usize = 4;
// `DataPathConfig::prefix_lens` holds them for the 4 tables.
const _: () = assert!(4 * PREFIX_HASH_LENS == 16);
/// An unused entry of `DataPathConfig::prefix_lens`.
pub const NO_PREFIX_LEN: u8 = 0xff;
/// Index of a (side, family) table in `DataPathConfig::prefix_lens`.
#[inline(always)]
pub const fn prefix_table_index(dst: bool, is_v6: bool) -> usize {
    (dst as usize) * 2 + is_v6 as usize
}

shared_type! {
    /// A prefix of the hashed short path: the address as two big-endian
    /// words (IPv4 in the top 32 bits of the first), host bits cleared.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct PrefixKey {
        pub addr: [u64; 2],
        pub len: u8,
        /// [`prefix_table_index`] of the prefix's side and family.
        pub table: u8,
        pub _pad: [u8; 6],
    }
    size = 24, align = 8;
}

impl PrefixKey {
    /// The key of `addr` (16 bytes; an IPv4 address in the first 4) cut to
    /// its first `len` bits.
    #[inline(always)]
    pub fn masked(addr: &[u8; 16], is_v6: bool, len: u8, table: u8) -> PrefixKey {
        let hi = u64::from_be_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]);
        let lo = u64::from_be_bytes([
            addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
        ]);
        let (hi, lo) = if is_v6 {
            (hi, lo)
        } else {
            (hi & 0xffff_ffff_0000_0000, 0)
        };
        let keep = |bits: u8| -> u64 {
            if bits == 0 {
                0
            } else if bits >= 64 {
                u64::MAX
            } else {
                u64::MAX << (64 - bits)
            }
        };
        PrefixKey {
            addr: [hi & keep(len.min(64)), lo & keep(len.saturating_sub(64))],
            len,
            table,
            _pad: [0; 6],
        }
    }
}
