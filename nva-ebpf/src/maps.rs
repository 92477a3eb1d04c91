//! The program's maps.
//!
//! Rule tables exist twice, in slots 0 and 1: a reload writes the inactive
//! slot and then flips `ACTIVE` with one write, so a packet sees either the
//! old or the new rule set, never a mix. The join tables (the larger hash
//! tables) are maps of maps: the agent creates each slot's table at the
//! size its rule set needs and swaps it in with the slot, so memory follows
//! the rule set, not the largest one allowed. Other hash tables are not
//! preallocated: their `max_entries` is a capacity, memory follows what is
//! stored.

use aya_ebpf::{
    bindings::{BPF_F_INNER_MAP, BPF_F_NO_PREALLOC},
    btf_maps::{Array as InnerArray, ArrayOfMaps, HashMap as JoinTable},
    macros::{btf_map, map},
    maps::{
        lpm_trie::LpmTrie, Array, DevMapHash, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray,
        RingBuf,
    },
};
use nva_common::{
    AddrClass, ClassMatch, ConntrackEntry, ConntrackKey, ConntrackScratch, DataPathConfig, L4Key,
    LogBudget, ManagementKey, NatBinding, NatCounters, NatMatch, PairKey, PairMatch, PrefixKey,
    RuleAction, RuleCheck, RuleCounters, VerdictKey, VerdictMatch, CAPACITY_PREFIXES, CT_STATS,
    FORWARD_PATHS, ICMP_CLASS_ENTRIES, LOG_BUDGET_SLOTS, MAX_EGRESS, MAX_NAT_ATOMS, MAX_NAT_RULES,
    PACKET_REASONS, PORT_CLASS_ENTRIES,
};

/// Index (0 or 1) of the slot the program uses.
#[map]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);
/// Settings of each slot's rule set.
#[map]
pub static CONFIG: Array<DataPathConfig> = Array::with_max_entries(2, 0);
#[map]
pub static PACKET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PACKET_REASONS, 0);
/// The NVA's own addresses (IPv4 as v4-mapped IPv6): management traffic
/// must be addressed to one of them. Kept current by the agent.
#[map]
pub static LOCAL_ADDRS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);
/// Sampled packet events for the agent's log.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// Per-CPU rate limit of events, by rule counter (and one slot for default
/// drops). LRU and small rather than an array of every possible rule: a
/// slot exists only for rules that log, and an evicted one (a rule that has
/// not logged for a while) only starts a fresh window.
#[map]
pub static LOG_BUDGET: LruPerCpuHashMap<u32, LogBudget> =
    LruPerCpuHashMap::with_max_entries(LOG_BUDGET_SLOTS, 0);
/// Tracked flows that their responder has answered, shared by both slots (a
/// rule change re-checks a flow by its generation). The agent sizes it from
/// `policy.conntrack_max`; LRU, so a full table evicts the least recently
/// used flow instead of refusing.
#[map]
pub static CONNTRACK: LruHashMap<ConntrackKey, ConntrackEntry> =
    LruHashMap::with_max_entries(65_536, 0);
/// Tracked flows not answered yet (a SYN, a first datagram, an echo
/// request), apart so that a flood of new flows (spoofed sources, SYN or UDP
/// floods) evicts only its own kind, never an answered connection, however
/// idle. A flow moves to `CONNTRACK` once answered (`ConntrackEntry::answered`:
/// a TCP connection when past its handshake). The agent sizes it from
/// `policy.conntrack_max` (a quarter, at least 1,024).
#[map]
pub static CONNTRACK_UNREPLIED: LruHashMap<ConntrackKey, ConntrackEntry> =
    LruHashMap::with_max_entries(16_384, 0);
/// `CT_STAT_*` counters.
#[map]
pub static CONNTRACK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CT_STATS, 0);
/// What the conntrack lookup found, for after classification (see
/// `ConntrackScratch` for why it is not on the stack).
#[map]
pub static CONNTRACK_SCRATCH: PerCpuArray<ConntrackScratch> = PerCpuArray::with_max_entries(1, 0);
/// Bindings of translated flows: a forward one under the flow's conntrack
/// key, a reverse one under its translated tuple. Not preallocated (memory
/// follows the translated flows); the agent sizes it at twice
/// `policy.conntrack_max` and sweeps the bindings of flows that are gone.
#[map]
pub static NAT_BINDINGS: HashMap<ConntrackKey, NatBinding> =
    HashMap::with_max_entries(131_072, BPF_F_NO_PREALLOC);
/// Per-`[[nat]]`-entry counters, by the entry's stable counter index.
#[map]
pub static NAT_COUNTERS: PerCpuArray<NatCounters> = PerCpuArray::with_max_entries(MAX_NAT_RULES, 0);
/// The interfaces a routed packet may leave by (the agent's own), by
/// ifindex: the redirect target of `forward = "xdp"`.
#[map]
pub static EGRESS: DevMapHash = DevMapHash::with_max_entries(MAX_EGRESS, 0);
/// Allowed packets by `ForwardPath` (per CPU).
#[map]
pub static FORWARD_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(FORWARD_PATHS, 0);
/// The parsed packet, in map memory rather than on the small stack; the
/// classifier's rewrites of it (see `verdict::decide_with`) are then
/// invisible to the verifier. Not pinned: only a run's scratch.
#[map]
pub static PACKET: PerCpuArray<crate::parse::Packet> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU time of the last diagnostic log record (aya-log): at most one
/// a second, so diagnostics never cost every packet. Not pinned: each
/// loaded program has its own, like aya-log's buffers.
#[map]
pub static DIAG_LAST_NS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A join table of one slot: created by the agent for each rule set, at
/// exactly the size it needs (the 1 here is only the template's), and
/// preallocated: the table is full once written and never grows, and
/// preallocated elements are written (and freed) about twice as fast as
/// elements allocated one by one (layout v10; v9 did not preallocate).
type Join<K, V> = JoinTable<K, V, 1, 0>;

/// Slot -> (src class, dst class) -> pair.
#[btf_map]
pub static PAIRS: ArrayOfMaps<Join<PairKey, PairMatch>, 2> = ArrayOfMaps::new();
/// Slot -> dst class -> pair (rules with any source).
#[btf_map]
pub static DST_ONLY: ArrayOfMaps<Join<u32, PairMatch>, 2> = ArrayOfMaps::new();
/// Slot -> src class -> pair (rules with any destination).
#[btf_map]
pub static SRC_ONLY: ArrayOfMaps<Join<u32, PairMatch>, 2> = ArrayOfMaps::new();
/// Slot -> L4 key (per pattern) -> L4 class.
#[btf_map]
pub static L4: ArrayOfMaps<Join<L4Key, ClassMatch>, 2> = ArrayOfMaps::new();
/// Slot -> (pair class, L4 class) -> first matching rule id, and the
/// checks of the rules before it that left fields out of the join.
#[btf_map]
pub static VERDICTS: ArrayOfMaps<Join<VerdictKey, VerdictMatch>, 2> = ArrayOfMaps::new();

/// Slot -> prefix (hashed short path) -> first rule.
#[btf_map]
pub static PREFIXES: ArrayOfMaps<Join<PrefixKey, u32>, 2> = ArrayOfMaps::new();

/// An array of one slot, created by the agent for each rule set at the
/// length it needs (BPF_F_INNER_MAP: arrays of any length may stand in the
/// slot; the 1 is only the template's).
pub type SlotArray<V> = InnerArray<V, 1, { BPF_F_INNER_MAP as usize }>;

/// Slot -> rule id -> action and counter index.
#[btf_map]
pub static RULE_ACTIONS: ArrayOfMaps<SlotArray<RuleAction>, 2> = ArrayOfMaps::new();
/// Slot -> (CPU, counter index) -> counters, each CPU's counters one after
/// the other (`DataPathConfig::counter_stride` apart): a per-CPU array by
/// hand, because per-CPU arrays cannot vary in length inside a map of maps.
/// Each CPU writes only its own part. A rule's count is the sum over CPUs
/// and both slots: a new slot's array starts as a copy of the one it
/// replaces (not counted into since the switch before), so no count is
/// lost or counted twice, and each array is as long as its rule set needs.
#[btf_map]
pub static RULE_COUNTERS: ArrayOfMaps<SlotArray<RuleCounters>, 2> = ArrayOfMaps::new();

/// Slot -> the rule checks the verdicts point into (see
/// `nva_common::RuleCheck`).
#[btf_map]
pub static RULE_CHECKS: ArrayOfMaps<SlotArray<RuleCheck>, 2> = ArrayOfMaps::new();

/// Slot -> IPv4 range arrays of each side (directory of /16 blocks, then
/// the ranges; see `nva_common::V4_RANGE_BLOCKS`), for large rule sets.
#[btf_map]
pub static SRC_V4_RANGES: ArrayOfMaps<SlotArray<u64>, 2> = ArrayOfMaps::new();
#[btf_map]
pub static DST_V4_RANGES: ArrayOfMaps<SlotArray<u64>, 2> = ArrayOfMaps::new();
/// Slot -> class index of a range -> the address class in each rule group.
#[btf_map]
pub static SRC_V4_RANGE_CLASSES: ArrayOfMaps<SlotArray<AddrClass>, 2> = ArrayOfMaps::new();
#[btf_map]
pub static DST_V4_RANGE_CLASSES: ArrayOfMaps<SlotArray<AddrClass>, 2> = ArrayOfMaps::new();

/// Looks `key` up in `slot`'s table of `outer`.
#[inline(always)]
fn join_get<K, V>(
    outer: &'static ArrayOfMaps<Join<K, V>, 2>,
    slot: u32,
    key: &K,
) -> Option<&'static V> {
    let value = outer.get_value_ptr_mut(slot, key)?;
    // SAFETY: the pointer comes from a successful lookup in a hash table
    // without preallocation, whose elements are freed only after an RCU
    // grace period, so it stays valid for this run; the table of the active
    // slot is not written while it is active (a reload builds a new table
    // for the other slot, then switches).
    Some(unsafe { &*value })
}

/// The rule tables of one slot.
pub trait Tables {
    /// The slot (0 or 1).
    const SLOT: u32;
    /// Source and destination prefix -> address class in each rule group
    /// (or, on the short path, the prefix's first rule).
    fn src_v4() -> &'static LpmTrie<[u8; 4], AddrClass>;
    fn src_v6() -> &'static LpmTrie<[u8; 16], AddrClass>;
    fn dst_v4() -> &'static LpmTrie<[u8; 4], AddrClass>;
    fn dst_v6() -> &'static LpmTrie<[u8; 16], AddrClass>;
    /// The IPv4 range array of the source (`DST` false) or destination
    /// side (looked up once, then read entry by entry), and class index ->
    /// class.
    fn v4_ranges<const DST: bool>() -> Option<&'static SlotArray<u64>>;
    fn v4_range_class<const DST: bool>(index: u32) -> Option<&'static AddrClass>;
    /// (protocol, direction, port) -> port class; ranges are spread out.
    fn port_class() -> &'static Array<u64>;
    /// (ICMP or ICMPv6, type) -> type class.
    fn icmp_class() -> &'static Array<u64>;
    /// Ingress ifindex -> interface class.
    fn iface_class() -> &'static HashMap<u32, u32>;
    /// (src class, dst class), dst class alone, src class alone -> pair.
    fn pair(key: &PairKey) -> Option<&'static PairMatch>;
    fn dst_only(dst_class: u32) -> Option<&'static PairMatch>;
    fn src_only(src_class: u32) -> Option<&'static PairMatch>;
    /// L4 key (per pattern) -> L4 class.
    fn l4(key: &L4Key) -> Option<&'static ClassMatch>;
    /// (pair class, L4 class) -> first matching rule id and checks.
    fn verdict(key: &VerdictKey) -> Option<&'static VerdictMatch>;
    /// The rule checks (looked up once, then read entry by entry).
    fn rule_checks() -> Option<&'static SlotArray<RuleCheck>>;
    /// Prefix -> first rule (the hashed short path).
    fn prefix(key: &PrefixKey) -> Option<&'static u32>;
    /// Rule id -> action and counter index.
    fn rule_action(rule: u32) -> Option<&'static RuleAction>;
    /// Index (CPU and counter, see `RULE_COUNTERS`) -> counters.
    fn rule_counters(index: u32) -> Option<*mut RuleCounters>;
    /// Management (failsafe) ports.
    fn management() -> &'static HashMap<ManagementKey, u8>;
    /// DNAT and SNAT atoms, in order (counts in the slot's config).
    fn nat_dnat() -> &'static Array<NatMatch>;
    fn nat_snat() -> &'static Array<NatMatch>;
}

macro_rules! slot_tables {
    ($slot:ident, $index:literal, $src_v4:literal, $src_v6:literal, $dst_v4:literal, $dst_v6:literal, $port_class:literal, $icmp_class:literal, $iface_class:literal, $management:literal, $nat_dnat:literal, $nat_snat:literal) => {
        pub mod $slot {
            use super::*;

            #[map(name = $src_v4)]
            static SRC_V4: LpmTrie<[u8; 4], AddrClass> =
                LpmTrie::with_max_entries(CAPACITY_PREFIXES, 0);
            #[map(name = $src_v6)]
            static SRC_V6: LpmTrie<[u8; 16], AddrClass> =
                LpmTrie::with_max_entries(CAPACITY_PREFIXES, 0);
            #[map(name = $dst_v4)]
            static DST_V4: LpmTrie<[u8; 4], AddrClass> =
                LpmTrie::with_max_entries(CAPACITY_PREFIXES, 0);
            #[map(name = $dst_v6)]
            static DST_V6: LpmTrie<[u8; 16], AddrClass> =
                LpmTrie::with_max_entries(CAPACITY_PREFIXES, 0);
            #[map(name = $port_class)]
            static PORT_CLASS: Array<u64> = Array::with_max_entries(PORT_CLASS_ENTRIES, 0);
            #[map(name = $icmp_class)]
            static ICMP_CLASS: Array<u64> = Array::with_max_entries(ICMP_CLASS_ENTRIES, 0);
            #[map(name = $iface_class)]
            static IFACE_CLASS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);
            #[map(name = $management)]
            static MANAGEMENT: HashMap<ManagementKey, u8> = HashMap::with_max_entries(64, 0);
            #[map(name = $nat_dnat)]
            static NAT_DNAT: Array<NatMatch> = Array::with_max_entries(MAX_NAT_ATOMS, 0);
            #[map(name = $nat_snat)]
            static NAT_SNAT: Array<NatMatch> = Array::with_max_entries(MAX_NAT_ATOMS, 0);

            pub struct Slot;

            impl Tables for Slot {
                const SLOT: u32 = $index;
                #[inline(always)]
                fn src_v4() -> &'static LpmTrie<[u8; 4], AddrClass> {
                    &SRC_V4
                }
                #[inline(always)]
                fn src_v6() -> &'static LpmTrie<[u8; 16], AddrClass> {
                    &SRC_V6
                }
                #[inline(always)]
                fn dst_v4() -> &'static LpmTrie<[u8; 4], AddrClass> {
                    &DST_V4
                }
                #[inline(always)]
                fn dst_v6() -> &'static LpmTrie<[u8; 16], AddrClass> {
                    &DST_V6
                }
                #[inline(always)]
                fn v4_ranges<const DST: bool>() -> Option<&'static SlotArray<u64>> {
                    if DST {
                        DST_V4_RANGES.get($index)
                    } else {
                        SRC_V4_RANGES.get($index)
                    }
                }
                #[inline(always)]
                fn v4_range_class<const DST: bool>(index: u32) -> Option<&'static AddrClass> {
                    if DST {
                        DST_V4_RANGE_CLASSES.get_value($index, &index)
                    } else {
                        SRC_V4_RANGE_CLASSES.get_value($index, &index)
                    }
                }
                #[inline(always)]
                fn port_class() -> &'static Array<u64> {
                    &PORT_CLASS
                }
                #[inline(always)]
                fn icmp_class() -> &'static Array<u64> {
                    &ICMP_CLASS
                }
                #[inline(always)]
                fn iface_class() -> &'static HashMap<u32, u32> {
                    &IFACE_CLASS
                }
                #[inline(always)]
                fn pair(key: &PairKey) -> Option<&'static PairMatch> {
                    join_get(&PAIRS, $index, key)
                }
                #[inline(always)]
                fn dst_only(dst_class: u32) -> Option<&'static PairMatch> {
                    join_get(&DST_ONLY, $index, &dst_class)
                }
                #[inline(always)]
                fn src_only(src_class: u32) -> Option<&'static PairMatch> {
                    join_get(&SRC_ONLY, $index, &src_class)
                }
                #[inline(always)]
                fn l4(key: &L4Key) -> Option<&'static ClassMatch> {
                    join_get(&L4, $index, key)
                }
                #[inline(always)]
                fn verdict(key: &VerdictKey) -> Option<&'static VerdictMatch> {
                    join_get(&VERDICTS, $index, key)
                }
                #[inline(always)]
                fn rule_checks() -> Option<&'static SlotArray<RuleCheck>> {
                    RULE_CHECKS.get($index)
                }
                #[inline(always)]
                fn prefix(key: &PrefixKey) -> Option<&'static u32> {
                    join_get(&PREFIXES, $index, key)
                }
                #[inline(always)]
                fn rule_action(rule: u32) -> Option<&'static RuleAction> {
                    RULE_ACTIONS.get_value($index, &rule)
                }
                #[inline(always)]
                fn rule_counters(index: u32) -> Option<*mut RuleCounters> {
                    RULE_COUNTERS.get_value_ptr_mut($index, &index)
                }
                #[inline(always)]
                fn management() -> &'static HashMap<ManagementKey, u8> {
                    &MANAGEMENT
                }
                #[inline(always)]
                fn nat_dnat() -> &'static Array<NatMatch> {
                    &NAT_DNAT
                }
                #[inline(always)]
                fn nat_snat() -> &'static Array<NatMatch> {
                    &NAT_SNAT
                }
            }
        }
    };
}

slot_tables!(
    slot0,
    0,
    "SRC_V4_0",
    "SRC_V6_0",
    "DST_V4_0",
    "DST_V6_0",
    "PORT_CLASS_0",
    "ICMP_CLASS_0",
    "IFACE_CLASS_0",
    "MANAGEMENT_0",
    "NAT_DNAT_0",
    "NAT_SNAT_0"
);
slot_tables!(
    slot1,
    1,
    "SRC_V4_1",
    "SRC_V6_1",
    "DST_V4_1",
    "DST_V6_1",
    "PORT_CLASS_1",
    "ICMP_CLASS_1",
    "IFACE_CLASS_1",
    "MANAGEMENT_1",
    "NAT_DNAT_1",
    "NAT_SNAT_1"
);
