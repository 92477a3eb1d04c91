//! The program's maps. Sizes here are placeholders: userspace sets the real
//! `max_entries` of the rule tables from the compiler's output before load.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, PerCpuArray},
};
use nva_common::{
    ClassMatch, DataPathConfig, L4Key, ManagementKey, PairKey, PairMatch, RuleAction, RuleCounters,
    VerdictKey, ICMP_CLASS_ENTRIES, MAX_RULES, PACKET_REASONS, PORT_CLASS_ENTRIES,
};

/// Source and destination prefix -> address class.
#[map]
pub static SRC_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static SRC_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static DST_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1024, 0);
#[map]
pub static DST_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1024, 0);

/// (protocol, direction, port) -> port class; ranges are spread over entries.
#[map]
pub static PORT_CLASS: Array<u32> = Array::with_max_entries(PORT_CLASS_ENTRIES, 0);
/// (ICMP or ICMPv6, type) -> type class.
#[map]
pub static ICMP_CLASS: Array<u32> = Array::with_max_entries(ICMP_CLASS_ENTRIES, 0);
/// Ingress ifindex -> interface class; absent means class 0.
#[map]
pub static IFACE_CLASS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// Joins: (src class, dst class) -> pair class; L4 tuple -> L4 class;
/// (pair class, L4 class) -> first matching rule id.
#[map]
pub static PAIRS: HashMap<PairKey, PairMatch> = HashMap::with_max_entries(1024, 0);
/// Rules with one address "any", keyed by the other address's class.
#[map]
pub static DST_ONLY: HashMap<u32, PairMatch> = HashMap::with_max_entries(1024, 0);
#[map]
pub static SRC_ONLY: HashMap<u32, PairMatch> = HashMap::with_max_entries(1024, 0);
#[map]
pub static L4: HashMap<L4Key, ClassMatch> = HashMap::with_max_entries(1024, 0);
#[map]
pub static VERDICTS: HashMap<VerdictKey, u32> = HashMap::with_max_entries(1024, 0);

#[map]
pub static RULE_ACTIONS: Array<RuleAction> = Array::with_max_entries(MAX_RULES, 0);
#[map]
pub static RULE_COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);
#[map]
pub static PACKET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PACKET_REASONS, 0);
#[map]
pub static MANAGEMENT: HashMap<ManagementKey, u8> = HashMap::with_max_entries(64, 0);
#[map]
pub static CONFIG: Array<DataPathConfig> = Array::with_max_entries(1, 0);
