//! The rule compiler: turns an ordered rule list into the flat-cost tables of
//! the XDP classifier (see nva-common for their layout).
//!
//! Each field is split into equivalence classes (the set of rules matching a
//! value decides its class). Classes are joined in two phases:
//! (src class, dst class) -> pair class and (iface, proto, port/type classes)
//! -> L4 class; then (pair class, L4 class) -> first matching rule. Only
//! combinations some rule matches are stored. Rules that are wildcards on a
//! whole half (any address, or any protocol/port/interface) are kept out of
//! the cross product: they are stored once per class of the other half as
//! `wildcard_rule`, and the program takes the smallest rule id it finds.

use std::collections::BTreeSet;

// Fx: the keys are small integers and prefixes of our own making, hashed
// millions of times per large rule set (SipHash was an eighth of the time).
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::net::IpAddr;

use nva_common::{
    first_passing_check, l4_pattern, pair_proto_slot, prefix_table_index, AddrClass, CheckedFields,
    ClassMatch, DataPathConfig, L4Key, ManagementKey, PairKey, PairMatch, PrefixKey, RuleAction,
    RuleCheck, VerdictKey, VerdictMatch, ACTION_ALLOW, ACTION_DROP, ANY_CLASS, CAPACITY_PREFIXES,
    CLASS_ID_MASK, CLASS_IN_PAIRS, CLASS_IN_SINGLE, CLASS_LANE_BITS, FRAGMENTS_ALLOW,
    FRAGMENTS_DROP, ICMP_CLASS_ENTRIES, ICMP_SLOTS, ICMP_SLOT_V4, ICMP_SLOT_V6, MAX_RULES,
    NO_PREFIX_LEN, NO_RULE, PAIR_TABLE_BOTH, PAIR_TABLE_DST_ONLY, PAIR_TABLE_SRC_ONLY,
    PORT_CLASS_ENTRIES, PORT_SLOTS, PORT_SLOT_TCP_DPORT, PORT_SLOT_TCP_SPORT, PORT_SLOT_UDP_DPORT,
    PORT_SLOT_UDP_SPORT, PREFIX_HASH_LENS, PREFIX_RULES_DST, PREFIX_RULES_HASHED, PREFIX_RULES_SRC,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_OTHER, PROTO_TCP, PROTO_UDP, RULE_CHECKS_MAX, RULE_CHECK_ADDR,
    RULE_CHECK_COUNT_BITS, RULE_CHECK_DST, RULE_CHECK_V6, RULE_GROUPS, V4_RANGES_DST,
    V4_RANGES_SRC,
};

use crate::classifier::v4_ranges::{V4Ranges, RANGES_FROM_PREFIXES};
use crate::policy::model::{Action, Cidr, PolicySettings, PortRange, Proto, Rule};

/// Memory budget for the rule tables of one rule set.
pub const TABLE_BUDGET_BYTES: u64 = 64 << 20;
/// Bound on the work of one compilation (class combinations visited), so a
/// pathological rule set fails fast with a clear error instead of exhausting
/// memory.
const VISIT_BUDGET: u64 = 40_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("too many rules: {0} (at most {MAX_RULES})")]
    TooManyRules(usize),
    #[error(
        "rule set of {rules} rules too large for the flat classifier: {phase} needs more than \
         {limit} (wildcard rules crossed with many specific ones); split or merge rules"
    )]
    OverBudget {
        rules: usize,
        phase: &'static str,
        limit: String,
    },
    #[error("rule set of {rules} rules too large: {table} needs {needed} prefixes, more than its capacity of {capacity}")]
    OverCapacity {
        rules: usize,
        table: &'static str,
        needed: usize,
        capacity: u32,
    },
}

/// One LPM entry: prefix (address bytes, length) -> its class in each rule
/// group (on the short path: its first rule, in group 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixClass<const N: usize> {
    pub addr: [u8; N],
    pub len: u8,
    pub class: AddrClass,
}

/// Sizes of the produced tables, as reported by `nva check` and the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TableSizes {
    pub rules: usize,
    /// The short path: every rule matches address prefixes of one side only,
    /// and the prefix tables map straight to rules.
    pub prefix_rules: bool,
    /// On the short path, the prefixes are hashed by length (few lengths)
    /// rather than in tries.
    pub prefixes_hashed: bool,
    pub src_prefixes: usize,
    pub dst_prefixes: usize,
    pub src_classes: usize,
    pub dst_classes: usize,
    pub port_classes: usize,
    pub icmp_classes: usize,
    pub pairs: usize,
    pub dst_only: usize,
    pub src_only: usize,
    pub pair_classes: usize,
    pub l4_entries: usize,
    pub l4_classes: usize,
    pub verdicts: usize,
    /// Rule groups of the general path (1 unless the rule set is large).
    pub rule_groups: usize,
    /// IPv4 prefixes looked up through range arrays instead of tries
    /// (counted in `src_prefixes` and `dst_prefixes` too), and the arrays'
    /// bytes.
    pub ranged_prefixes: usize,
    pub v4_range_bytes: u64,
    /// Rules that left fields out of the join, and their checks.
    pub checked_rules: usize,
    pub rule_checks: usize,
    /// Estimate of kernel memory for these tables.
    pub bytes: u64,
}

impl std::fmt::Display for TableSizes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix_rules {
            return write!(
                f,
                "address prefixes only ({}): prefixes src {} dst {}, ~{:.1} MiB",
                if self.prefixes_hashed {
                    "one hash lookup per prefix length in use"
                } else {
                    "one trie lookup per side"
                },
                self.src_prefixes,
                self.dst_prefixes,
                self.bytes as f64 / (1 << 20) as f64
            );
        }
        write!(
            f,
            "rule groups {}, prefixes src {} dst {}{}, pairs {} (+{} dst-only, {} src-only), l4 {}, verdicts {}{}, classes src {} dst {} port {} icmp {} pair {} l4 {}, ~{:.1} MiB",
            self.rule_groups,
            self.src_prefixes,
            self.dst_prefixes,
            if self.ranged_prefixes > 0 {
                format!(" ({} IPv4 as ranges)", self.ranged_prefixes)
            } else {
                String::new()
            },
            self.pairs,
            self.dst_only,
            self.src_only,
            self.l4_entries,
            self.verdicts,
            if self.checked_rules > 0 {
                format!(
                    " ({} rules checked in part: {} checks)",
                    self.checked_rules, self.rule_checks
                )
            } else {
                String::new()
            },
            self.src_classes,
            self.dst_classes,
            self.port_classes,
            self.icmp_classes,
            self.pair_classes,
            self.l4_classes,
            self.bytes as f64 / (1 << 20) as f64
        )
    }
}

/// Everything the data path needs for one rule set.
#[derive(Clone, Debug, Default)]
pub struct CompiledRuleSet {
    pub src_v4: Vec<PrefixClass<4>>,
    pub src_v6: Vec<PrefixClass<16>>,
    pub dst_v4: Vec<PrefixClass<4>>,
    pub dst_v6: Vec<PrefixClass<16>>,
    /// The IPv4 range arrays of each side (general path, large rule sets:
    /// `v4_ranges` says which sides; their IPv4 tries are then empty).
    pub src_v4_ranges: V4Ranges,
    pub dst_v4_ranges: V4Ranges,
    /// `V4_RANGES_*` bits.
    pub v4_ranges: u8,
    /// Indexed as in nva-common (`slot * 65536 + port`).
    pub port_class: Vec<u32>,
    /// Indexed as in nva-common (`slot * 256 + type`).
    pub icmp_class: Vec<u32>,
    /// Interface name -> class; interfaces not listed are class 0.
    pub iface_class: Vec<(String, u32)>,
    pub pairs: HashMap<PairKey, PairMatch>,
    /// Rules with `src` any, by destination class.
    pub dst_only: HashMap<u32, PairMatch>,
    /// Rules with `dst` any, by source class.
    pub src_only: HashMap<u32, PairMatch>,
    pub l4: HashMap<L4Key, ClassMatch>,
    pub verdicts: HashMap<VerdictKey, VerdictMatch>,
    /// The checks of rules that left fields out of the join, as the
    /// verdicts' `checks` point into them.
    pub rule_checks: Vec<RuleCheck>,
    /// Per rule group, `PAIR_TABLE_*` bits of the address tables holding
    /// its entries (0: group not in use).
    pub pair_tables: [u8; RULE_GROUPS],
    pub rule_actions: Vec<RuleAction>,
    /// `PREFIX_RULES_*` bits when the rule set takes the short path (the
    /// prefix tables then hold rule ids, not classes), else 0.
    pub prefix_rules: u8,
    /// The hashed short path's prefixes (`PREFIX_RULES_HASHED`), and the
    /// lengths in use per table, longest first.
    pub prefix_hash: Vec<(PrefixKey, u32)>,
    pub prefix_lens: [u8; 16],
    pub catch_all_rule: u32,
    pub proto_catch_all: [u32; 4],
    pub default_action: u8,
    pub fragments_allow: bool,
    pub log_drops: bool,
    pub stateful: bool,
    pub loose_tcp: bool,
    /// Conntrack idle timeouts (seconds) by `ConntrackState`.
    pub timeouts_s: [u32; nva_common::CT_STATES],
    pub management: Vec<ManagementKey>,
    pub sizes: TableSizes,
}

/// A packet as the classifier sees it (userspace model and tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketView {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number as on the wire.
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub iface: Option<String>,
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
        Proto::Icmp => PROTO_ICMP,
        Proto::Icmpv6 => PROTO_ICMPV6,
        Proto::Any => PROTO_OTHER,
    }
}

/// The plain first-match reference semantics of a rule list (linear scan).
pub fn rule_matches(rule: &Rule, pkt: &PacketView) -> bool {
    let proto = nva_common::classifier_proto(pkt.proto);
    if rule.proto != Proto::Any && proto_number(rule.proto) != proto {
        return false;
    }
    let addr_ok =
        |list: &[Cidr], ip: IpAddr| list.is_empty() || list.iter().any(|c| c.contains(ip));
    if !addr_ok(&rule.src, pkt.src) || !addr_ok(&rule.dst, pkt.dst) {
        return false;
    }
    if let Some(iface) = &rule.in_iface {
        if pkt.iface.as_deref() != Some(iface.as_str()) {
            return false;
        }
    }
    let port_ok = |list: &[crate::policy::model::PortRange], p: u16| {
        list.is_empty() || list.iter().any(|r| r.contains(p))
    };
    if (proto == PROTO_TCP || proto == PROTO_UDP)
        && (!port_ok(&rule.sport, pkt.sport) || !port_ok(&rule.dport, pkt.dport))
    {
        return false;
    }
    if (proto == PROTO_ICMP || proto == PROTO_ICMPV6)
        && !rule.icmp_type.is_empty()
        && !rule.icmp_type.contains(&pkt.icmp_type)
    {
        return false;
    }
    true
}

/// Linear first-match: the reference the compiled tables must agree with.
pub fn linear_first_match(rules: &[Rule], pkt: &PacketView) -> Option<usize> {
    rules.iter().position(|r| rule_matches(r, pkt))
}

/// A field's address list, normalised: `None` means any address of both
/// families.
fn addr_field(list: &[Cidr]) -> Option<&[Cidr]> {
    let has_v4_all = list.iter().any(|c| c.is_v4() && c.len == 0);
    let has_v6_all = list.iter().any(|c| !c.is_v4() && c.len == 0);
    if list.is_empty() || (has_v4_all && has_v6_all) {
        None
    } else {
        Some(list)
    }
}

fn is_pair_wild(rule: &Rule) -> bool {
    addr_field(&rule.src).is_none() && addr_field(&rule.dst).is_none()
}

fn is_l4_wild(rule: &Rule) -> bool {
    rule.proto == Proto::Any && rule.in_iface.is_none()
}

/// The protocol slot of a rule that names only a protocol (see PairMatch).
fn proto_only_slot(rule: &Rule) -> Option<usize> {
    let names_only_proto = rule.proto != Proto::Any
        && rule.in_iface.is_none()
        && rule.sport.is_empty()
        && rule.dport.is_empty()
        && rule.icmp_type.is_empty();
    if names_only_proto {
        pair_proto_slot(proto_number(rule.proto))
    } else {
        None
    }
}

/// A rule handled entirely in the pair phase or as a protocol catch-all
/// (no L4 entries needed), unless it left fields to checks.
fn pair_phase_only(rule: &Rule) -> bool {
    is_l4_wild(rule) || proto_only_slot(rule).is_some()
}

/// Pair-table entry being built: general rules in order, then the shortcut
/// rules; rules after a shortcut are shadowed for that pair.
struct PairAcc {
    /// Most entries hold one or two rules: inline, no allocation.
    rules: smallvec::SmallVec<[u32; 2]>,
    wildcard: u32,
    proto_rule: [u32; 4],
}

impl PairAcc {
    fn new() -> PairAcc {
        PairAcc {
            rules: smallvec::SmallVec::new(),
            wildcard: NO_RULE,
            proto_rule: [NO_RULE; 4],
        }
    }

    /// Adds rule `i` (rules arrive in file order). A rule with fields
    /// left to a check (`checked`) is never a shortcut: it may not match.
    fn add(&mut self, i: usize, r: &Rule, checked: bool) {
        // Everything after a wildcard-L4 rule is shadowed here.
        if self.wildcard != NO_RULE {
            return;
        }
        let shadowed = pair_proto_slot(proto_number(r.proto))
            .is_some_and(|slot| self.proto_rule[slot] != NO_RULE);
        if is_l4_wild(r) && !checked {
            self.wildcard = i as u32;
        } else if shadowed {
            // An earlier protocol-only rule wins for this entry.
        } else if let Some(slot) = proto_only_slot(r).filter(|_| !checked) {
            self.proto_rule[slot] = i as u32;
        } else {
            self.rules.push(i as u32);
        }
    }
}

/// Dedupes rule sets into dense class ids.
struct Classes {
    /// (rules ++ the 5 shortcut rules) -> class id. One vector per class:
    /// looking up an existing class allocates nothing.
    ids: HashMap<Vec<u32>, u32>,
    /// rule -> classes whose rule list contains it.
    containing: Vec<Vec<u32>>,
    /// Reused key buffer.
    key: Vec<u32>,
}

impl Classes {
    fn new(n_rules: usize) -> Classes {
        Classes {
            ids: HashMap::default(),
            containing: vec![Vec::new(); n_rules],
            key: Vec::new(),
        }
    }

    fn intern(&mut self, rules: &[u32], shortcuts: [u32; 5]) -> u32 {
        self.key.clear();
        self.key.extend_from_slice(rules);
        self.key.extend_from_slice(&shortcuts);
        if let Some(&id) = self.ids.get(self.key.as_slice()) {
            return id;
        }
        let id = self.ids.len() as u32;
        for &r in rules {
            self.containing[r as usize].push(id);
        }
        self.ids.insert(self.key.clone(), id);
        id
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Rule lists built by appending rules in file order, hash-consed: a list
/// is a node (its list without the last rule, the last rule), so equal
/// lists are one node. A table entry holds a node id while the compiler
/// visits the rules, and costs no allocation: the L4 table of 10,000 random
/// rules has 467,000 entries whose lists were vectors of up to thousands of
/// rules, copied as they grew and hashed whole to find the classes.
struct RuleLists {
    /// Node -> (its list without the last rule, the last rule).
    nodes: Vec<(u32, u32)>,
    ids: HashMap<(u32, u32), u32>,
}

impl Default for RuleLists {
    fn default() -> RuleLists {
        RuleLists {
            nodes: vec![(RuleLists::EMPTY, NO_RULE)],
            ids: HashMap::default(),
        }
    }
}

impl RuleLists {
    /// The empty list.
    const EMPTY: u32 = 0;

    /// The list `list` followed by `rule`.
    fn append(&mut self, list: u32, rule: u32) -> u32 {
        let next = self.nodes.len() as u32;
        let id = *self.ids.entry((list, rule)).or_insert(next);
        if id == next {
            self.nodes.push((list, rule));
        }
        id
    }

    /// The rules of `list`, in order.
    fn rules(&self, mut list: u32) -> Vec<u32> {
        let mut out = Vec::new();
        while list != RuleLists::EMPTY {
            let (rest, rule) = self.nodes[list as usize];
            out.push(rule);
            list = rest;
        }
        out.reverse();
        out
    }
}

/// Address classes of one field (src or dst) and family.
struct AddrClasses {
    /// prefix -> class
    entries: Vec<(Cidr, u32)>,
    /// rule -> classes containing it (only rules with specific prefixes)
    per_rule: Vec<Vec<u32>>,
}

/// Splits one address field of one family into classes. Class ids are
/// allocated from `next_id` so that v4 and v6 classes never collide.
///
/// A prefix's class is the set of rules naming it or a prefix containing
/// it. The prefixes are walked in address order (a containing prefix
/// first) with a stack of those enclosing the current one, so each set is
/// its parent's merged with the prefix's own rules: one hash lookup per
/// prefix, not one per ancestor length.
fn addr_classes(
    rules: &[Rule],
    in_group: &dyn Fn(usize) -> bool,
    field: impl Fn(&Rule) -> &[Cidr],
    v4: bool,
    next_id: &mut u32,
) -> AddrClasses {
    let zero = Cidr::new(
        if v4 {
            IpAddr::V4(0.into())
        } else {
            IpAddr::V6(0u128.into())
        },
        0,
    );
    // (prefix, rule) in address order; a prefix's rules in file order.
    let mut named: Vec<(u128, u8, u32)> = vec![(0, 0, NO_RULE)];
    for (i, r) in rules.iter().enumerate().filter(|(i, _)| in_group(*i)) {
        if let Some(list) = addr_field(field(r)) {
            for c in list.iter().filter(|c| c.is_v4() == v4) {
                named.push((prefix_bits(c), c.len, i as u32));
            }
        }
    }
    named.sort_unstable();
    named.dedup();
    let cidr = |bits: u128, len: u8| {
        let addr = if v4 {
            IpAddr::V4(((bits >> 96) as u32).into())
        } else {
            IpAddr::V6(bits.into())
        };
        Cidr { addr, len }
    };
    let mut ids: HashMap<Vec<u32>, u32> = HashMap::default();
    // Class id - first id of this call -> its rules.
    let mut sets: Vec<Vec<u32>> = Vec::new();
    let first_id = *next_id;
    let mut entries = Vec::new();
    let mut per_rule = vec![Vec::new(); rules.len()];
    // Enclosing prefixes of the current one: (bits, len, class id).
    let mut stack: Vec<(u128, u8, u32)> = Vec::new();
    let mut at = 0;
    while at < named.len() {
        let (bits, len, _) = named[at];
        let own_end = at + named[at..].partition_point(|e| (e.0, e.1) == (bits, len));
        let own = named[at..own_end]
            .iter()
            .map(|e| e.2)
            .filter(|r| *r != NO_RULE);
        at = own_end;
        while stack
            .last()
            .is_some_and(|&(b, l, _)| l > len || bits & prefix_mask(l) != b)
        {
            stack.pop();
        }
        let parent: &[u32] = stack
            .last()
            .map_or(&[], |&(_, _, id)| &sets[(id - first_id) as usize]);
        let mut set: Vec<u32> = parent.iter().copied().chain(own).collect();
        set.sort_unstable();
        set.dedup();
        let id = match ids.get(&set) {
            Some(&id) => id,
            None => {
                let id = *next_id;
                *next_id += 1;
                for &r in &set {
                    per_rule[r as usize].push(id);
                }
                ids.insert(set.clone(), id);
                sets.push(set);
                id
            }
        };
        stack.push((bits, len, id));
        entries.push((cidr(bits, len), id));
    }
    debug_assert_eq!(entries.first().map(|e| e.0), Some(zero));
    entries.sort_by_key(|(c, _)| *c);
    AddrClasses { entries, per_rule }
}

/// Port classes of one slot: fills `out` (65,536 entries) and returns
/// rule -> classes containing it, and the number of classes.
fn port_classes(
    rules: &[Rule],
    proto: Proto,
    field: impl Fn(&Rule) -> &[crate::policy::model::PortRange],
    out: &mut [u32],
) -> (Vec<Vec<u32>>, u32) {
    // Sweep over range boundaries: each elementary interval has one set.
    let mut starts: HashMap<u32, Vec<u32>> = HashMap::default();
    let mut ends: HashMap<u32, Vec<u32>> = HashMap::default();
    let mut points: BTreeSet<u32> = [0u32, 65_536].into();
    for (i, r) in rules.iter().enumerate() {
        if r.proto != proto {
            continue;
        }
        for range in field(r) {
            starts.entry(range.lo as u32).or_default().push(i as u32);
            ends.entry(range.hi as u32 + 1).or_default().push(i as u32);
            points.insert(range.lo as u32);
            points.insert(range.hi as u32 + 1);
        }
    }
    let points: Vec<u32> = points.into_iter().collect();
    let mut active: HashMap<u32, u32> = HashMap::default(); // rule -> overlapping ranges
    let mut ids: HashMap<Vec<u32>, u32> = HashMap::default();
    let mut per_rule = vec![Vec::new(); rules.len()];
    for w in points.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        for r in ends.get(&lo).into_iter().flatten() {
            let n = active.get_mut(r).expect("range ends after it starts");
            *n -= 1;
            if *n == 0 {
                active.remove(r);
            }
        }
        for r in starts.get(&lo).into_iter().flatten() {
            *active.entry(*r).or_default() += 1;
        }
        let mut set: Vec<u32> = active.keys().copied().collect();
        set.sort_unstable();
        let next = ids.len() as u32;
        let id = *ids.entry(set.clone()).or_insert_with(|| {
            for &r in &set {
                per_rule[r as usize].push(next);
            }
            next
        });
        out[lo as usize..hi as usize].fill(id);
    }
    (per_rule, ids.len() as u32)
}

fn icmp_classes(rules: &[Rule], proto: Proto, out: &mut [u32]) -> (Vec<Vec<u32>>, u32) {
    // One pass over the rules (not one per type: 256 passes over 100,000
    // rules took a tenth of a large rule set's compile time).
    let mut by_type: Vec<Vec<u32>> = vec![Vec::new(); 256];
    for (i, r) in rules.iter().enumerate().filter(|(_, r)| r.proto == proto) {
        for &t in &r.icmp_type {
            by_type[t as usize].push(i as u32);
        }
    }
    let mut ids: HashMap<Vec<u32>, u32> = HashMap::default();
    let mut per_rule = vec![Vec::new(); rules.len()];
    for t in 0..=255u8 {
        let mut set = std::mem::take(&mut by_type[t as usize]);
        set.dedup();
        let next = ids.len() as u32;
        let id = *ids.entry(set.clone()).or_insert_with(|| {
            for &r in &set {
                per_rule[r as usize].push(next);
            }
            next
        });
        out[t as usize] = id;
    }
    (per_rule, ids.len() as u32)
}

struct Budget {
    visits: u64,
    /// Rules in the rule set, for the error.
    rules: usize,
}

impl Budget {
    fn spend(&mut self, n: u64, phase: &'static str) -> Result<(), CompileError> {
        self.visits += n;
        if self.visits > VISIT_BUDGET {
            return Err(CompileError::OverBudget {
                rules: self.rules,
                phase,
                limit: format!("{VISIT_BUDGET} class combinations"),
            });
        }
        Ok(())
    }
}

/// Compiles `rules` (in file order) under `policy`.
pub fn compile(rules: &[Rule], policy: &PolicySettings) -> Result<CompiledRuleSet, CompileError> {
    compile_grouping_past(
        rules,
        policy,
        GROUP_WHEN_PAIRS_OVER,
        RANGES_FROM_PREFIXES,
        CHECKS,
    )
}

/// Like [`compile`], with rule groups whatever the rule set's size (tests
/// and benchmarks: the groups of small rule sets, and their cost).
pub fn compile_in_groups(
    rules: &[Rule],
    policy: &PolicySettings,
) -> Result<CompiledRuleSet, CompileError> {
    compile_grouping_past(rules, policy, 0, RANGES_FROM_PREFIXES, CHECKS)
}

/// Like [`compile`], with IPv4 range arrays instead of tries on both sides
/// of the general path whatever the number of prefixes (tests: the range
/// search of small rule sets, whose edges are easy to reach).
pub fn compile_with_v4_ranges(
    rules: &[Rule],
    policy: &PolicySettings,
) -> Result<CompiledRuleSet, CompileError> {
    compile_grouping_past(rules, policy, GROUP_WHEN_PAIRS_OVER, 0, CHECKS)
}

/// Like [`compile`], with no field left to checks (tests: what a rule set
/// costs joined whole, and the refusals of the budget).
pub fn compile_without_checks(
    rules: &[Rule],
    policy: &PolicySettings,
) -> Result<CompiledRuleSet, CompileError> {
    compile_checking_past(rules, policy, u64::MAX)
}

/// Like [`compile`], with every rule specific in both addresses leaving
/// its wider side to checks, and every rule naming port ranges that cross
/// anything leaving them to checks (destination ports only for rules with
/// an address; tests: the checks of small rule sets).
pub fn compile_with_checks(
    rules: &[Rule],
    policy: &PolicySettings,
) -> Result<CompiledRuleSet, CompileError> {
    compile_checking_past(rules, policy, 0)
}

/// [`compile`] with all three check thresholds at `past`.
fn compile_checking_past(
    rules: &[Rule],
    policy: &PolicySettings,
    past: u64,
) -> Result<CompiledRuleSet, CompileError> {
    let checks = ChecksPast {
        pairs_over: past,
        ports_over: past,
        dports_over: past,
    };
    compile_grouping_past(
        rules,
        policy,
        GROUP_WHEN_PAIRS_OVER,
        RANGES_FROM_PREFIXES,
        checks,
    )
}

/// Marks in each pair entry the L4 patterns through which some verdict
/// entry of its pair class can be reached (`PairMatch::verdict_patterns`):
/// the program looks up a verdict only for those.
fn mark_verdict_patterns(out: &mut CompiledRuleSet) {
    let mut patterns_of_l4: HashMap<u32, u32> = HashMap::default();
    for (key, m) in &out.l4 {
        *patterns_of_l4.entry(m.class).or_default() |= 1 << l4_pattern(key);
    }
    let mut patterns_of_pair: HashMap<u32, u32> = HashMap::default();
    for key in out.verdicts.keys() {
        *patterns_of_pair.entry(key.pair_class).or_default() |=
            patterns_of_l4.get(&key.l4_class).copied().unwrap_or(0);
    }
    let mark = |m: &mut PairMatch| {
        m.verdict_patterns = patterns_of_pair.get(&m.class).copied().unwrap_or(0)
    };
    out.pairs.values_mut().for_each(mark);
    out.dst_only.values_mut().for_each(mark);
    out.src_only.values_mut().for_each(mark);
}

/// When rules leave fields to checks (see [`checked_fields`]).
#[derive(Clone, Copy)]
struct ChecksPast {
    pairs_over: u64,
    ports_over: u64,
    dports_over: u64,
}

const CHECKS: ChecksPast = ChecksPast {
    pairs_over: CHECK_PAIRS_OVER,
    ports_over: CHECK_PORTS_OVER,
    dports_over: CHECK_DPORTS_OVER,
};

fn compile_grouping_past(
    rules: &[Rule],
    policy: &PolicySettings,
    group_when_pairs_over: u64,
    ranges_from_prefixes: usize,
    checks: ChecksPast,
) -> Result<CompiledRuleSet, CompileError> {
    if rules.len() > MAX_RULES as usize {
        return Err(CompileError::TooManyRules(rules.len()));
    }
    let started = std::time::Instant::now();
    let out = rule_set_settings(rules, policy);
    // Rules after the first catch-all can never match: leave them out.
    let live = &rules[..rules.len().min(out.catch_all_rule as usize)];
    if let Some(sides) = prefix_rule_sides(live) {
        return compile_prefix_rules(live, sides, out, rules.len(), started);
    }
    // Fields that would cross too many classes are left to checks. A
    // verdict entry that would hold too many checks (many rules left to
    // checks over the same classes) gives one checked field of each of its
    // rules back to the join (all of them in the last round), and the rule
    // set is compiled again.
    let (mut checked, pairs_of) = checked_fields(live, checks);
    for round in 1..=CHECK_ROUNDS {
        let pairs_estimate = live
            .iter()
            .zip(&checked)
            .zip(&pairs_of)
            .filter(|((_, c), _)| **c & (CHECK_SRC | CHECK_DST) == 0)
            .map(|(_, pairs)| pairs)
            .sum();
        let settings = out.clone();
        let setup = Setup {
            rules: rules.len(),
            group_when_pairs_over,
            ranges_from_prefixes,
            started,
        };
        match compile_joined(live, &checked, pairs_estimate, settings, setup)? {
            Ok(compiled) => return Ok(compiled),
            Err(crowded) => {
                tracing::debug!(rules = crowded.len(), "rules given back to the join");
                // One field per round, addresses first, source ports last:
                // joining a rule's source and destination ports together
                // is what explodes the L4 table.
                for r in crowded {
                    let c = &mut checked[r as usize];
                    if round + 1 == CHECK_ROUNDS {
                        *c = 0;
                    }
                    for field in [CHECK_SRC | CHECK_DST, CHECK_DPORT, CHECK_SPORT] {
                        if *c & field != 0 {
                            *c &= !field;
                            break;
                        }
                    }
                }
            }
        }
    }
    Err(CompileError::OverBudget {
        rules: rules.len(),
        phase: "the rule checks of one verdict entry",
        limit: format!("{CHECKS_PER_VERDICT} checks after {CHECK_ROUNDS} rounds"),
    })
}

/// Rounds of giving rules back to the join, at most (see
/// [`CHECKS_PER_VERDICT`]).
const CHECK_ROUNDS: usize = 4;

/// Checks one verdict entry may hold: the program tests them one by one.
/// Past it, the entry's rules give fields back to the join. Random 100,000-rule sets
/// have a few entries of 20 to 30 checks (and most of 0 to 3): at 16 they
/// took three rounds (1.3 s), at 32 one.
const CHECKS_PER_VERDICT: u32 = 32;
const _: () = assert!(CHECKS_PER_VERDICT <= RULE_CHECKS_MAX);

/// What the general path's compile needs besides the rules.
struct Setup {
    rules: usize,
    group_when_pairs_over: u64,
    ranges_from_prefixes: usize,
    started: std::time::Instant,
}

/// The general path, with the fields `checked` left to checks: the
/// compiled rule set, or the rules of verdict entries that would hold more
/// than [`CHECKS_PER_VERDICT`] checks.
fn compile_joined(
    live: &[Rule],
    checked: &[u8],
    pairs_estimate: u64,
    mut out: CompiledRuleSet,
    setup: Setup,
) -> Result<Result<CompiledRuleSet, Vec<u32>>, CompileError> {
    let Setup {
        rules: rule_count,
        group_when_pairs_over,
        ranges_from_prefixes,
        started,
    } = setup;
    let n = live.len();
    let mut budget = Budget {
        visits: 0,
        rules: rule_count,
    };
    let checked_rules = checked.iter().filter(|c| **c != 0).count();
    let joined: std::borrow::Cow<[Rule]> = if checked_rules == 0 {
        std::borrow::Cow::Borrowed(live)
    } else {
        live.iter()
            .zip(checked)
            .map(|(r, &c)| joined_rule(r, c))
            .collect()
    };
    let original = live;
    let live: &[Rule] = &joined;

    // Address classes, per rule group: one group unless its pairs would be
    // many (see `rule_group`).
    let mut group_of = vec![0u8; n];
    if pairs_estimate > group_when_pairs_over {
        for (i, r) in live.iter().enumerate() {
            group_of[i] = rule_group(r);
        }
    }
    let count = group_of.iter().max().map_or(1, |g| *g as usize + 1);
    let groups = group_classes(live, &group_of, count);
    let (next_src, next_dst) = groups.last().map_or((0, 0), |g| g.next_ids);

    // The L4 half does not depend on the addresses: it is built on a
    // second thread while the pair phase runs (one thread), into tables of
    // its own that join `out` after.
    let mut l4_out = CompiledRuleSet::default();
    let mut l4_budget = Budget {
        visits: 0,
        rules: rule_count,
    };
    let (pairs, l4) = std::thread::scope(|scope| {
        let l4 = scope.spawn(|| {
            let fields = l4_field_classes(live, &mut l4_out);
            l4_phase(
                live,
                original,
                checked,
                &fields,
                &mut l4_out,
                &mut l4_budget,
            )
            .map(|(classes, crowded)| (fields, classes, crowded))
        });
        let pairs = pair_phase(live, checked, &groups, &group_of, &mut out, &mut budget);
        (pairs, l4.join().expect("the L4 phase"))
    });
    let pair_classes = pairs?;
    let (fields, l4_classes, mut crowded) = l4?;
    budget.spend(l4_budget.visits, "the L4 table")?;
    out.port_class = l4_out.port_class;
    out.icmp_class = l4_out.icmp_class;
    out.iface_class = l4_out.iface_class;
    out.l4 = l4_out.l4;
    // The L4 wildcards' checks come first; the verdicts' follow them.
    out.rule_checks = l4_out.rule_checks;
    let pc_of_rule = &pair_classes.containing;
    let lc_of_rule = &l4_classes.containing;
    crowded.extend(verdict_phase(
        original,
        checked,
        pc_of_rule,
        lc_of_rule,
        &mut out,
        &mut budget,
    )?);
    crowded.sort_unstable();
    crowded.dedup();
    if !crowded.is_empty() {
        return Ok(Err(crowded));
    }
    mark_verdict_patterns(&mut out);

    let flags = ClassFlags::of(&out);
    // The two sides' tries on two threads.
    let ((src_v4, src_v6), (dst_v4, dst_v6)) = std::thread::scope(|scope| {
        let src = scope.spawn(|| {
            (
                prefix_table(&flags.src(merge_groups(&groups, |g| &g.src4))),
                prefix_table(&flags.src(merge_groups(&groups, |g| &g.src6))),
            )
        });
        let dst = (
            prefix_table(&flags.dst(merge_groups(&groups, |g| &g.dst4))),
            prefix_table(&flags.dst(merge_groups(&groups, |g| &g.dst6))),
        );
        (src.join().expect("source prefix tables"), dst)
    });
    (out.src_v4, out.src_v6, out.dst_v4, out.dst_v6) = (src_v4, src_v6, dst_v4, dst_v6);
    let src_prefixes = out.src_v4.len() + out.src_v6.len();
    let dst_prefixes = out.dst_v4.len() + out.dst_v6.len();
    let ranged_prefixes = ranges_for_large_sides(&mut out, ranges_from_prefixes);

    let sizes = TableSizes {
        rules: rule_count,
        prefix_rules: false,
        prefixes_hashed: false,
        src_prefixes,
        dst_prefixes,
        src_classes: next_src as usize,
        dst_classes: next_dst as usize,
        port_classes: fields.port_classes as usize,
        icmp_classes: fields.icmp_classes as usize,
        pairs: out.pairs.len(),
        dst_only: out.dst_only.len(),
        src_only: out.src_only.len(),
        pair_classes: pair_classes.len(),
        l4_entries: out.l4.len(),
        l4_classes: l4_classes.len(),
        verdicts: out.verdicts.len(),
        rule_groups: out.pair_tables.iter().filter(|t| **t != 0).count().max(1),
        ranged_prefixes,
        v4_range_bytes: out.src_v4_ranges.bytes() + out.dst_v4_ranges.bytes(),
        checked_rules,
        rule_checks: out.rule_checks.len(),
        bytes: 0,
    };
    // Freeing the working sets (hundreds of thousands of small vectors for
    // a large rule set) took a seventh of the compile time: done off the
    // caller's path.
    let joined = match joined {
        std::borrow::Cow::Owned(rules) => rules,
        std::borrow::Cow::Borrowed(_) => Vec::new(),
    };
    std::thread::spawn(move || drop((groups, pair_classes, l4_classes, fields, flags, joined)));
    within_budget(out, sizes, started).map(Ok)
}

/// Moves each side's IPv4 prefixes from its trie to range arrays when
/// there are at least `from_prefixes` (see `v4_ranges`), the two sides on
/// two threads; returns the prefixes moved.
fn ranges_for_large_sides(out: &mut CompiledRuleSet, from_prefixes: usize) -> usize {
    let build =
        |table: &[PrefixClass<4>]| (table.len() >= from_prefixes).then(|| V4Ranges::build(table));
    let (src, dst) = std::thread::scope(|scope| {
        let src = scope.spawn(|| build(&out.src_v4));
        let dst = build(&out.dst_v4);
        (src.join().expect("source ranges"), dst)
    });
    let mut moved = 0;
    if let Some(ranges) = src {
        moved += std::mem::take(&mut out.src_v4).len();
        out.src_v4_ranges = ranges;
        out.v4_ranges |= V4_RANGES_SRC;
    }
    if let Some(ranges) = dst {
        moved += std::mem::take(&mut out.dst_v4).len();
        out.dst_v4_ranges = ranges;
        out.v4_ranges |= V4_RANGES_DST;
    }
    moved
}

/// The address classes of one rule group.
struct GroupClasses {
    src4: AddrClasses,
    src6: AddrClasses,
    dst4: AddrClasses,
    dst6: AddrClasses,
    /// Next free (source, destination) class ids after this group: ids are
    /// unique over all groups, so the groups share the join tables.
    next_ids: (u32, u32),
}

/// Address classes of each of `count` rule groups (`group_of`: rule -> group).
/// Sources and destinations are numbered apart, so the two sides are built
/// on two threads (most of a large rule set's compile time).
fn group_classes(live: &[Rule], group_of: &[u8], count: usize) -> Vec<GroupClasses> {
    // Per group: the side's IPv4 and IPv6 classes, and the next free id.
    let side = |field: fn(&Rule) -> &[Cidr]| -> Vec<(AddrClasses, AddrClasses, u32)> {
        let mut next = 0;
        (0..count as u8)
            .map(|g| {
                let in_group = |i: usize| group_of[i] == g;
                let v4 = addr_classes(live, &in_group, field, true, &mut next);
                let v6 = addr_classes(live, &in_group, field, false, &mut next);
                (v4, v6, next)
            })
            .collect()
    };
    let (src, dst) = std::thread::scope(|scope| {
        let src = scope.spawn(|| side(|r| &r.src));
        let dst = side(|r| &r.dst);
        (src.join().expect("source address classes"), dst)
    });
    src.into_iter()
        .zip(dst)
        .map(
            |((src4, src6, next_src), (dst4, dst6, next_dst))| GroupClasses {
                src4,
                src6,
                dst4,
                dst6,
                next_ids: (next_src, next_dst),
            },
        )
        .collect()
}

/// Pair-table entries to visit: for each rule specific in both addresses,
/// (source classes containing it) x (destination classes containing it).
fn pair_combinations(live: &[Rule], groups: &[GroupClasses], group_of: &[u8]) -> u64 {
    live.iter()
        .enumerate()
        .filter(|(_, r)| addr_field(&r.src).is_some() && addr_field(&r.dst).is_some())
        .map(|(i, _)| {
            let g = &groups[group_of[i] as usize];
            let s = g.src4.per_rule[i].len() + g.src6.per_rule[i].len();
            let d = g.dst4.per_rule[i].len() + g.dst6.per_rule[i].len();
            (s * d) as u64
        })
        .sum()
}

/// Per rule specific in both addresses, the prefixes named under its
/// source prefixes and those under its destination prefixes, counted by
/// binary search in the sorted prefixes of each side ((0, 0) for the other
/// rules): their product estimates the pair-table entries the rule needs
/// in one group, without building the classes (which, for the sets that
/// need groups, takes seconds).
fn nested_prefix_counts(live: &[Rule]) -> Vec<(u64, u64)> {
    // Per family: the sorted network addresses of the prefixes named.
    let sorted = |field: fn(&Rule) -> &[Cidr], v4: bool| {
        let mut starts: Vec<u128> = live
            .iter()
            .filter_map(|r| addr_field(field(r)))
            .flatten()
            .filter(|c| c.is_v4() == v4)
            .map(prefix_bits)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    };
    // Per rule: (source prefixes, destination prefixes), both empty unless
    // the rule is specific in both addresses.
    let both: Vec<[&[Cidr]; 2]> = live
        .iter()
        .map(|r| match (addr_field(&r.src), addr_field(&r.dst)) {
            (Some(src), Some(dst)) => [src, dst],
            _ => [&[][..], &[][..]],
        })
        .collect();
    // Per such rule, the prefixes named under its prefixes of one side.
    let under = |field: fn(&Rule) -> &[Cidr], side: usize| {
        let starts = [sorted(field, true), sorted(field, false)];
        both.iter()
            .map(|r| {
                r[side]
                    .iter()
                    .map(|c| {
                        let starts = &starts[!c.is_v4() as usize];
                        let lo = prefix_bits(c);
                        let hi = lo | !prefix_mask(c.len);
                        let from = starts.partition_point(|s| *s < lo);
                        let to = starts.partition_point(|s| *s <= hi);
                        (to - from) as u64
                    })
                    .sum::<u64>()
            })
            .collect::<Vec<u64>>()
    };
    // The two sides on two threads.
    let (src, dst) = std::thread::scope(|scope| {
        let src = scope.spawn(|| under(|r| &r.src, 0));
        let dst = under(|r| &r.dst, 1);
        (src.join().expect("source prefix counts"), dst)
    });
    src.into_iter().zip(dst).collect()
}

/// Fields a rule leaves out of the join, to be checked where the join finds
/// it ([`RuleCheck`]): its source or its destination prefixes, its source
/// ports, its destination ports.
const CHECK_SRC: u8 = 1;
const CHECK_DST: u8 = 2;
const CHECK_SPORT: u8 = 4;
const CHECK_DPORT: u8 = 8;

/// A rule whose prefixes would need more pair entries than this on their
/// own (the prefixes named under its source times those under its
/// destination) leaves its wider side to checks: a random 100,000-rule set
/// has thousands of rules with a /8 or /16 on both sides, each crossing
/// hundreds of classes of one side with hundreds of the other.
const CHECK_PAIRS_OVER: u64 = 16;
/// A rule whose source-port ranges and destination-port ranges cross more
/// classes than this together (the classes each crosses, multiplied)
/// leaves its source ports to checks (a random
/// 100,000-rule set's 1,200 rules naming both port ranges needed 139
/// million L4 entries).
const CHECK_PORTS_OVER: u64 = 64;

/// A rule with an address whose destination-port ranges cross more
/// classes than this leaves them to checks: its verdict entries grow with its L4
/// classes (1,500 rules of a random 100,000-rule set with wide port ranges
/// in the busy low ports needed 250,000 verdict entries).
const CHECK_DPORTS_OVER: u64 = 32;

/// Which fields each rule leaves to checks (`CHECK_*` bits), and the
/// pair-table entries each rule would need in one group with its addresses
/// joined (estimated as in [`nested_prefix_counts`]).
fn checked_fields(live: &[Rule], past: ChecksPast) -> (Vec<u8>, Vec<u64>) {
    let ChecksPast {
        pairs_over,
        ports_over,
        dports_over,
    } = past;
    let counts = nested_prefix_counts(live);
    // Per protocol and port side, the sorted boundaries of the ranges named.
    let boundaries = |proto: Proto, field: fn(&Rule) -> &[PortRange]| {
        let mut points: Vec<u32> = live
            .iter()
            .filter(|r| r.proto == proto)
            .flat_map(|r| field(r).iter())
            .flat_map(|p| [p.lo as u32, p.hi as u32 + 1])
            .collect();
        points.sort_unstable();
        points.dedup();
        points
    };
    let tcp = [
        boundaries(Proto::Tcp, |r| &r.sport),
        boundaries(Proto::Tcp, |r| &r.dport),
    ];
    let udp = [
        boundaries(Proto::Udp, |r| &r.sport),
        boundaries(Proto::Udp, |r| &r.dport),
    ];
    // Port classes a list of ranges crosses: the boundaries inside each range,
    // plus one.
    let crossed = |points: &[u32], ranges: &[PortRange]| -> u64 {
        ranges
            .iter()
            .map(|p| {
                let from = points.partition_point(|x| *x <= p.lo as u32);
                let to = points.partition_point(|x| *x <= p.hi as u32);
                (to - from) as u64 + 1
            })
            .sum()
    };
    let checked = live
        .iter()
        .zip(&counts)
        .map(|(r, &(s, d))| {
            let mut checked = 0;
            if s * d > pairs_over {
                // The wider side (more prefixes under it) is checked; the
                // rule is joined on the other side alone.
                checked |= if s >= d { CHECK_SRC } else { CHECK_DST };
            }
            let points = match r.proto {
                Proto::Tcp => Some(&tcp),
                Proto::Udp => Some(&udp),
                _ => None,
            };
            // A rule of any address is an L4 entry's wildcard, never in a
            // verdict: its destination ports cross nothing.
            let wild = is_pair_wild(r);
            if let Some([sport, dport]) = points {
                let dports = crossed(dport, &r.dport);
                if !r.sport.is_empty()
                    && !r.dport.is_empty()
                    && crossed(sport, &r.sport) * dports > ports_over
                {
                    checked |= CHECK_SPORT;
                }
                if dports > dports_over && !wild {
                    checked |= CHECK_DPORT;
                }
            }
            checked
        })
        .collect();
    (checked, counts.iter().map(|(s, d)| s * d).collect())
}

/// `r` without the fields it leaves to checks (`checked`): the rule the
/// join sees.
fn joined_rule(r: &Rule, checked: u8) -> Rule {
    // The join never reads a rule's name: not copied (100,000 strings).
    let keep = |bit: u8, list: &Vec<Cidr>| {
        if checked & bit != 0 {
            Vec::new()
        } else {
            list.clone()
        }
    };
    let keep_ports = |bit: u8, list: &Vec<PortRange>| {
        if checked & bit != 0 {
            Vec::new()
        } else {
            list.clone()
        }
    };
    Rule {
        name: String::new(),
        action: r.action,
        proto: r.proto,
        src: keep(CHECK_SRC, &r.src),
        dst: keep(CHECK_DST, &r.dst),
        sport: keep_ports(CHECK_SPORT, &r.sport),
        dport: keep_ports(CHECK_DPORT, &r.dport),
        icmp_type: r.icmp_type.clone(),
        in_iface: r.in_iface.clone(),
        log: r.log,
    }
}

/// Past this many pair-table entries (estimated, rules whose addresses are
/// left to checks apart), rules are split into rule groups. Below it, one
/// group costs fewer lookups per packet. With rule checks, 100,000
/// ClassBench acl and ipc rules need about 110,000 (one group); random
/// 100,000-rule sets about 185,000, which four groups cut to 84,000 and
/// their single-address entries from 150,000 to 81,000 (52 to 36 MiB
/// estimated).
const GROUP_WHEN_PAIRS_OVER: u64 = 150_000;

/// Prefixes shorter than these are wide: a wide prefix holds many others,
/// and crossing the classes under a wide source with those under a wide
/// destination is what makes the pair table grow with the product. Rules
/// whose prefixes are all long cross few classes.
const WIDE_V4: u8 = 20;
const WIDE_V6: u8 = 48;

/// The rule group of a rule: bit 0 a wide source prefix, bit 1 a wide
/// destination prefix. Within a group, the prefixes under a rule's wide
/// prefix are the group's wide prefixes only, which are few.
fn rule_group(rule: &Rule) -> u8 {
    let wide = |list: &[Cidr]| {
        addr_field(list).is_some_and(|list| {
            list.iter()
                .any(|c| c.len < if c.is_v4() { WIDE_V4 } else { WIDE_V6 })
        })
    };
    wide(&rule.src) as u8 | (wide(&rule.dst) as u8) << 1
}

/// Which classes of each side are in a key of the pair table, and which
/// have an entry in their side's single-address table: the trie values say
/// so ([`CLASS_IN_PAIRS`], [`CLASS_IN_SINGLE`]), and the program skips the
/// lookups that could find nothing (most of them, in large rule sets).
struct ClassFlags {
    src_pairs: HashSet<u32>,
    dst_pairs: HashSet<u32>,
    src_single: HashSet<u32>,
    dst_single: HashSet<u32>,
}

impl ClassFlags {
    fn of(out: &CompiledRuleSet) -> ClassFlags {
        ClassFlags {
            src_pairs: out.pairs.keys().map(|k| k.src_class).collect(),
            dst_pairs: out.pairs.keys().map(|k| k.dst_class).collect(),
            src_single: out.src_only.keys().copied().collect(),
            dst_single: out.dst_only.keys().copied().collect(),
        }
    }

    fn src(&self, entries: Vec<(Cidr, AddrClass)>) -> Vec<(Cidr, AddrClass)> {
        flagged(entries, &self.src_pairs, &self.src_single)
    }

    fn dst(&self, entries: Vec<(Cidr, AddrClass)>) -> Vec<(Cidr, AddrClass)> {
        flagged(entries, &self.dst_pairs, &self.dst_single)
    }
}

fn flagged(
    mut entries: Vec<(Cidr, AddrClass)>,
    pairs: &HashSet<u32>,
    single: &HashSet<u32>,
) -> Vec<(Cidr, AddrClass)> {
    for class in entries.iter_mut().flat_map(|(_, c)| c.class.iter_mut()) {
        if *class == NO_RULE {
            continue;
        }
        let id = *class;
        debug_assert!(id <= CLASS_ID_MASK, "class ids stay below 2^30");
        if pairs.contains(&id) {
            *class |= CLASS_IN_PAIRS;
        }
        if single.contains(&id) {
            *class |= CLASS_IN_SINGLE;
        }
    }
    entries
}

/// One address side's trie entries over all groups: every prefix any group
/// names, with its class in each group (the class of that group's longest
/// prefix containing it; every group has the zero-length prefix).
fn merge_groups(
    groups: &[GroupClasses],
    side: impl Fn(&GroupClasses) -> &AddrClasses,
) -> Vec<(Cidr, AddrClass)> {
    if let [only] = groups {
        return side(only)
            .entries
            .iter()
            .map(|(c, class)| (*c, AddrClass::single(*class)))
            .collect();
    }
    let by_prefix: Vec<HashMap<Cidr, u32>> = groups
        .iter()
        .map(|g| side(g).entries.iter().copied().collect())
        .collect();
    let mut prefixes: Vec<Cidr> = by_prefix.iter().flat_map(|m| m.keys().copied()).collect();
    // By address, a containing prefix before what it contains.
    prefixes.sort_unstable();
    prefixes.dedup();
    // Per group, the chain of its prefixes containing the current one.
    let mut enclosing: Vec<Vec<(Cidr, u32)>> = vec![Vec::new(); groups.len()];
    prefixes
        .into_iter()
        .map(|p| {
            let mut class = AddrClass::single(NO_RULE);
            for (g, index) in by_prefix.iter().enumerate() {
                let chain = &mut enclosing[g];
                while chain
                    .last()
                    .is_some_and(|(outer, _)| outer.len > p.len || !outer.contains(p.addr))
                {
                    chain.pop();
                }
                class.class[g] = match index.get(&p) {
                    Some(&own) => {
                        chain.push((p, own));
                        own
                    }
                    None => chain.last().map_or(NO_RULE, |e| e.1),
                };
            }
            (p, class)
        })
        .collect()
}

/// Records the tables' sizes and memory estimate in `out`, refusing a rule
/// set whose tables exceed the memory budget.
fn within_budget(
    mut out: CompiledRuleSet,
    sizes: TableSizes,
    started: std::time::Instant,
) -> Result<CompiledRuleSet, CompileError> {
    out.sizes = TableSizes {
        bytes: estimate_bytes(&sizes),
        ..sizes
    };
    // The tries' capacity; a side on IPv4 ranges has an empty IPv4 trie,
    // and its arrays are created at the length they need (bounded by the
    // memory budget below).
    let prefix_tables = [
        ("the IPv4 source prefix table", out.src_v4.len()),
        ("the IPv6 source prefix table", out.src_v6.len()),
        ("the IPv4 destination prefix table", out.dst_v4.len()),
        ("the IPv6 destination prefix table", out.dst_v6.len()),
    ];
    for (table, needed) in prefix_tables {
        if needed > CAPACITY_PREFIXES as usize {
            return Err(CompileError::OverCapacity {
                rules: out.sizes.rules,
                table,
                needed,
                capacity: CAPACITY_PREFIXES,
            });
        }
    }
    if out.sizes.bytes > TABLE_BUDGET_BYTES {
        return Err(CompileError::OverBudget {
            rules: out.sizes.rules,
            phase: "the compiled tables",
            limit: format!("{} MiB ({})", TABLE_BUDGET_BYTES >> 20, out.sizes),
        });
    }
    tracing::debug!(elapsed = ?started.elapsed(), sizes = %out.sizes, "compiled rule set");
    Ok(out)
}

/// `Some(PREFIX_RULES_* bits)` when every rule matches address prefixes of
/// one side (source or destination) and nothing else: a block list, or an
/// allow list of networks. Such a rule set takes the short path.
fn prefix_rule_sides(live: &[Rule]) -> Option<u8> {
    let mut sides = 0;
    for r in live {
        let names_l4 = r.proto != Proto::Any
            || r.in_iface.is_some()
            || !r.sport.is_empty()
            || !r.dport.is_empty()
            || !r.icmp_type.is_empty();
        if names_l4 {
            return None;
        }
        sides |= match (addr_field(&r.src).is_some(), addr_field(&r.dst).is_some()) {
            (true, false) => PREFIX_RULES_SRC,
            (false, true) => PREFIX_RULES_DST,
            _ => return None,
        };
    }
    (sides != 0).then_some(sides)
}

/// A prefix as a left-aligned 128-bit number (IPv4 in the top 32 bits), so
/// that both families nest and sort alike.
fn prefix_bits(c: &Cidr) -> u128 {
    match c.addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn prefix_mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// The short path's table of one address side and family: each prefix the
/// rules name, mapped to the first rule that matches every address under it
/// (its own rules and those of the prefixes containing it), so that the
/// longest-prefix match of an address gives its first matching rule. A
/// prefix that would map to the same rule as the prefix containing it adds
/// nothing and is left out.
fn prefix_rule_table<const N: usize>(
    live: &[Rule],
    field: impl Fn(&Rule) -> &[Cidr],
    v4: bool,
) -> Vec<PrefixClass<N>> {
    let mut first: HashMap<(u128, u8), u32> = HashMap::default();
    for (i, r) in live.iter().enumerate() {
        for c in addr_field(field(r))
            .unwrap_or(&[])
            .iter()
            .filter(|c| c.is_v4() == v4)
        {
            // Rules come in order: the first insertion is the first rule.
            first
                .entry((prefix_bits(c) & prefix_mask(c.len), c.len))
                .or_insert(i as u32);
        }
    }
    let mut prefixes: Vec<((u128, u8), u32)> = first.into_iter().collect();
    // By address, a containing prefix before what it contains.
    prefixes.sort_unstable_by_key(|(key, _)| *key);
    // The chain of prefixes containing the current one, with their rules.
    let mut enclosing: Vec<(u128, u8, u32)> = Vec::new();
    let mut out = Vec::new();
    for ((bits, len), rule) in prefixes {
        while let Some(&(outer, outer_len, _)) = enclosing.last() {
            if bits & prefix_mask(outer_len) == outer {
                break;
            }
            enclosing.pop();
        }
        let inherited = enclosing.last().map_or(NO_RULE, |e| e.2);
        let rule = rule.min(inherited);
        if rule == inherited {
            continue;
        }
        enclosing.push((bits, len, rule));
        let bytes = bits.to_be_bytes();
        let mut addr = [0u8; N];
        addr.copy_from_slice(&bytes[..N]);
        out.push(PrefixClass {
            addr,
            len,
            class: AddrClass::single(rule),
        });
    }
    out
}

/// The lengths in use in a prefix table, longest first.
fn lengths<const N: usize>(table: &[PrefixClass<N>]) -> Vec<u8> {
    let mut lens: Vec<u8> = table.iter().map(|e| e.len).collect();
    lens.sort_unstable_by(|a, b| b.cmp(a));
    lens.dedup();
    lens
}

/// Most prefixes the short path hashes: a hash element takes about 100
/// bytes of kernel memory against about 37 for a trie node (measured: a
/// million prefixes take 104.8 MiB hashed, 36.2 MiB in a trie), so past
/// this, memory wins over the ~70 ns per packet that hashing saves.
const HASHED_PREFIXES_MAX: usize = 1 << 18;

/// Moves the short path's prefixes from the tries to the hash table when
/// no table uses more than [`PREFIX_HASH_LENS`] prefix lengths: one hash
/// lookup per length, longest first, costs less than a trie walk (up to
/// [`HASHED_PREFIXES_MAX`] prefixes). The first
/// hit is the longest matching prefix stored, as the trie would find.
fn hash_if_few_lengths(out: &mut CompiledRuleSet) {
    let prefixes = out.src_v4.len() + out.src_v6.len() + out.dst_v4.len() + out.dst_v6.len();
    if prefixes > HASHED_PREFIXES_MAX {
        return;
    }
    let lens = [
        (prefix_table_index(false, false), lengths(&out.src_v4)),
        (prefix_table_index(false, true), lengths(&out.src_v6)),
        (prefix_table_index(true, false), lengths(&out.dst_v4)),
        (prefix_table_index(true, true), lengths(&out.dst_v6)),
    ];
    if lens.iter().any(|(_, l)| l.len() > PREFIX_HASH_LENS) {
        return;
    }
    out.prefix_lens = [NO_PREFIX_LEN; 16];
    for (table, l) in &lens {
        out.prefix_lens[table * PREFIX_HASH_LENS..][..l.len()].copy_from_slice(l);
    }
    fn keys<const N: usize>(
        entries: &[PrefixClass<N>],
        table: usize,
    ) -> impl Iterator<Item = (PrefixKey, u32)> + '_ {
        entries.iter().map(move |e| {
            let mut addr = [0u8; 16];
            addr[..N].copy_from_slice(&e.addr);
            (
                PrefixKey::masked(&addr, N == 16, e.len, table as u8),
                e.class.class[0],
            )
        })
    }
    out.prefix_hash = keys(&out.src_v4, prefix_table_index(false, false))
        .chain(keys(&out.src_v6, prefix_table_index(false, true)))
        .chain(keys(&out.dst_v4, prefix_table_index(true, false)))
        .chain(keys(&out.dst_v6, prefix_table_index(true, true)))
        .collect();
    out.src_v4.clear();
    out.src_v6.clear();
    out.dst_v4.clear();
    out.dst_v6.clear();
    out.prefix_rules |= PREFIX_RULES_HASHED;
}

/// The short path (see [`prefix_rule_sides`]): prefix tables of rule ids,
/// nothing else.
fn compile_prefix_rules(
    live: &[Rule],
    sides: u8,
    mut out: CompiledRuleSet,
    n_rules: usize,
    started: std::time::Instant,
) -> Result<CompiledRuleSet, CompileError> {
    out.prefix_rules = sides;
    out.src_v4 = prefix_rule_table(live, |r| &r.src, true);
    out.src_v6 = prefix_rule_table(live, |r| &r.src, false);
    out.dst_v4 = prefix_rule_table(live, |r| &r.dst, true);
    out.dst_v6 = prefix_rule_table(live, |r| &r.dst, false);
    let sizes_before_hashing = (
        out.src_v4.len() + out.src_v6.len(),
        out.dst_v4.len() + out.dst_v6.len(),
    );
    hash_if_few_lengths(&mut out);
    // Not read on the short path; written as zeroes so that no slot keeps
    // an older rule set's classes.
    out.port_class = vec![0; PORT_CLASS_SLOTS_LEN];
    out.icmp_class = vec![0; ICMP_CLASS_SLOTS_LEN];
    let sizes = TableSizes {
        rules: n_rules,
        prefix_rules: true,
        prefixes_hashed: out.prefix_rules & PREFIX_RULES_HASHED != 0,
        src_prefixes: sizes_before_hashing.0,
        dst_prefixes: sizes_before_hashing.1,
        ..Default::default()
    };
    within_budget(out, sizes, started)
}

/// The rule set's settings and per-rule data: actions, management ports,
/// the first catch-all rule and the first catch-all per protocol.
fn rule_set_settings(rules: &[Rule], policy: &PolicySettings) -> CompiledRuleSet {
    let mut out = CompiledRuleSet {
        default_action: match policy.default {
            Action::Allow => ACTION_ALLOW,
            Action::Drop => ACTION_DROP,
        },
        fragments_allow: policy.fragments_allow,
        log_drops: policy.log_drops,
        stateful: policy.stateful,
        loose_tcp: policy.loose_tcp,
        timeouts_s: policy.timeouts.by_state(),
        ..Default::default()
    };
    out.rule_actions = rules
        .iter()
        .map(|r| RuleAction {
            action: if r.action == Action::Allow {
                ACTION_ALLOW
            } else {
                ACTION_DROP
            },
            log: r.log as u8,
            _pad: [0; 2],
            // Assigned at install time (stable per rule name).
            counter: 0,
        })
        .collect();
    out.management = policy
        .management
        .iter()
        .map(|m| ManagementKey {
            port: m.port,
            proto: proto_number(m.proto),
            _pad: 0,
        })
        .collect();
    out.catch_all_rule = rules
        .iter()
        .position(|r| is_pair_wild(r) && is_l4_wild(r))
        .map_or(NO_RULE, |i| i as u32);
    let live = &rules[..rules.len().min(out.catch_all_rule as usize)];
    out.proto_catch_all = [NO_RULE; 4];
    for (i, r) in live.iter().enumerate() {
        if let Some(slot) = proto_only_slot(r).filter(|_| is_pair_wild(r)) {
            if out.proto_catch_all[slot] == NO_RULE {
                out.proto_catch_all[slot] = i as u32;
            }
        }
    }
    out
}

/// Phase 1: address classes -> pair class. Rules specific in both addresses
/// are keyed by (src class, dst class); rules with one address "any" are
/// keyed by the other class alone, so they never cross with the classes of
/// the field they ignore. Fills the pair tables; returns the pair classes
/// (one class space for all three: a class is a rule list, whichever table
/// points at it).
fn pair_phase(
    live: &[Rule],
    checked: &[u8],
    groups: &[GroupClasses],
    group_of: &[u8],
    out: &mut CompiledRuleSet,
    budget: &mut Budget,
) -> Result<Classes, CompileError> {
    // Count the address pairs before building any: a rule set far over the
    // memory budget is refused at once, not after a minute of work (24
    // million pairs of a 100,000-rule ClassBench acl set took 37 s to build
    // and then be refused). Rules share few pairs, so the count is close to
    // the entries; the factor leaves room for those they share.
    let combinations = pair_combinations(live, groups, group_of);
    let far_over = 4 * TABLE_BUDGET_BYTES / PAIR_ENTRY_BYTES;
    if combinations > far_over {
        return Err(CompileError::OverBudget {
            rules: budget.rules,
            phase: "the address pair table",
            limit: format!(
                "{} MiB ({combinations} address class pairs, {far_over} at most)",
                TABLE_BUDGET_BYTES >> 20
            ),
        });
    }
    budget.spend(combinations, "the address pair table")?;
    let mut pair_acc: HashMap<PairKey, PairAcc> = HashMap::default();
    // Rules share few pairs: the count is close to the entries.
    pair_acc.reserve(combinations.min(1 << 22) as usize);
    let mut dst_only_acc: HashMap<u32, PairAcc> = HashMap::default();
    let mut src_only_acc: HashMap<u32, PairAcc> = HashMap::default();
    let families = groups.iter().enumerate().flat_map(|(g, classes)| {
        [
            (g, &classes.src4, &classes.dst4),
            (g, &classes.src6, &classes.dst6),
        ]
    });
    for (g, src, dst) in families {
        for (i, r) in live.iter().enumerate() {
            if group_of[i] as usize != g {
                continue;
            }
            let (src_any, dst_any) = (addr_field(&r.src).is_none(), addr_field(&r.dst).is_none());
            out.pair_tables[g] |= match (src_any, dst_any) {
                (true, true) => 0,
                (true, false) => PAIR_TABLE_DST_ONLY,
                (false, true) => PAIR_TABLE_SRC_ONLY,
                (false, false) => PAIR_TABLE_BOTH,
            };
            match (src_any, dst_any) {
                (true, true) => {}
                (true, false) => {
                    for &d in &dst.per_rule[i] {
                        dst_only_acc.entry(d).or_insert_with(PairAcc::new).add(
                            i,
                            r,
                            checked[i] != 0,
                        );
                    }
                }
                (false, true) => {
                    for &s in &src.per_rule[i] {
                        src_only_acc.entry(s).or_insert_with(PairAcc::new).add(
                            i,
                            r,
                            checked[i] != 0,
                        );
                    }
                }
                (false, false) => {
                    let (s_list, d_list) = (&src.per_rule[i], &dst.per_rule[i]);
                    for &s in s_list {
                        for &d in d_list {
                            let key = PairKey {
                                src_class: s,
                                dst_class: d,
                            };
                            pair_acc.entry(key).or_insert_with(PairAcc::new).add(
                                i,
                                r,
                                checked[i] != 0,
                            );
                        }
                    }
                }
            }
        }
    }
    let mut pair_classes = Classes::new(live.len());
    let mut intern = |acc: PairAcc| {
        let [a, b, c, d] = acc.proto_rule;
        PairMatch {
            class: pair_classes.intern(&acc.rules, [acc.wildcard, a, b, c, d]),
            wildcard_rule: acc.wildcard,
            proto_rule: acc.proto_rule,
            // Set once the verdicts are known (`mark_verdict_patterns`).
            verdict_patterns: 0,
        }
    };
    out.pairs = pair_acc
        .into_iter()
        .map(|(k, acc)| (k, intern(acc)))
        .collect();
    out.dst_only = dst_only_acc
        .into_iter()
        .map(|(k, acc)| (k, intern(acc)))
        .collect();
    out.src_only = src_only_acc
        .into_iter()
        .map(|(k, acc)| (k, intern(acc)))
        .collect();
    Ok(pair_classes)
}

/// The classes of each L4 field, per rule, and their counts.
struct L4Fields {
    tcp_s: Vec<Vec<u32>>,
    tcp_d: Vec<Vec<u32>>,
    udp_s: Vec<Vec<u32>>,
    udp_d: Vec<Vec<u32>>,
    icmp4: Vec<Vec<u32>>,
    icmp6: Vec<Vec<u32>>,
    /// Interface names the rules use, sorted; class = index + 1.
    iface_names: Vec<String>,
    port_classes: u32,
    icmp_classes: u32,
}

/// L4 field classes: fills the port and ICMP-type arrays and the interface
/// classes of `out`.
fn l4_field_classes(live: &[Rule], out: &mut CompiledRuleSet) -> L4Fields {
    out.port_class = vec![0; PORT_CLASS_SLOTS_LEN];
    let slot = |s: u32| (s as usize * 65_536)..((s as usize + 1) * 65_536);
    let (tcp_s, n_tcp_s) = port_classes(
        live,
        Proto::Tcp,
        |r| &r.sport,
        &mut out.port_class[slot(PORT_SLOT_TCP_SPORT)],
    );
    let (tcp_d, n_tcp_d) = port_classes(
        live,
        Proto::Tcp,
        |r| &r.dport,
        &mut out.port_class[slot(PORT_SLOT_TCP_DPORT)],
    );
    let (udp_s, n_udp_s) = port_classes(
        live,
        Proto::Udp,
        |r| &r.sport,
        &mut out.port_class[slot(PORT_SLOT_UDP_SPORT)],
    );
    let (udp_d, n_udp_d) = port_classes(
        live,
        Proto::Udp,
        |r| &r.dport,
        &mut out.port_class[slot(PORT_SLOT_UDP_DPORT)],
    );
    out.icmp_class = vec![0; ICMP_CLASS_SLOTS_LEN];
    let (icmp4, n_icmp4) = icmp_classes(
        live,
        Proto::Icmp,
        &mut out.icmp_class[(ICMP_SLOT_V4 as usize * 256)..(ICMP_SLOT_V4 as usize + 1) * 256],
    );
    let (icmp6, n_icmp6) = icmp_classes(
        live,
        Proto::Icmpv6,
        &mut out.icmp_class[(ICMP_SLOT_V6 as usize * 256)..(ICMP_SLOT_V6 as usize + 1) * 256],
    );
    let mut iface_names: Vec<String> = live.iter().filter_map(|r| r.in_iface.clone()).collect();
    iface_names.sort();
    iface_names.dedup();
    out.iface_class = iface_names
        .iter()
        .enumerate()
        .map(|(i, name)| (name.clone(), i as u32 + 1))
        .collect();
    L4Fields {
        tcp_s,
        tcp_d,
        udp_s,
        udp_d,
        icmp4,
        icmp6,
        iface_names,
        port_classes: n_tcp_s + n_tcp_d + n_udp_s + n_udp_d,
        icmp_classes: n_icmp4 + n_icmp6,
    }
}

/// Phase 2: (iface, proto, a, b) -> L4 class. Fills the L4 table; returns
/// the L4 classes, and the rules of L4 entries whose wildcard checks are
/// too many.
fn l4_phase(
    live: &[Rule],
    original: &[Rule],
    checked: &[u8],
    fields: &L4Fields,
    out: &mut CompiledRuleSet,
    budget: &mut Budget,
) -> Result<(Classes, Vec<u32>), CompileError> {
    // Counted before building, like the pairs: a rule set over the budget
    // is refused at once, not after half a minute of work.
    let port_count = |list_empty: bool, per_rule: &[Vec<u32>], i: usize| {
        if list_empty {
            1
        } else {
            per_rule[i].len() as u64
        }
    };
    let combinations: u64 = live
        .iter()
        .enumerate()
        .filter(|(i, r)| checked[*i] != 0 || !pair_phase_only(r))
        .map(|(i, r)| match r.proto {
            Proto::Tcp => {
                port_count(r.sport.is_empty(), &fields.tcp_s, i)
                    * port_count(r.dport.is_empty(), &fields.tcp_d, i)
            }
            Proto::Udp => {
                port_count(r.sport.is_empty(), &fields.udp_s, i)
                    * port_count(r.dport.is_empty(), &fields.udp_d, i)
            }
            // ICMP types, or any protocol (one entry per protocol).
            _ => 5,
        })
        .sum();
    budget.spend(combinations, "the L4 table")?;
    // Per key: its rule list (a node of `lists`), its first rule wildcard
    // in addresses, and the list of the rules wildcard in addresses before
    // that one that left fields to checks.
    let mut l4_acc: HashMap<L4Key, (u32, u32, u32)> = HashMap::default();
    let mut lists = RuleLists::default();
    for (i, r) in live.iter().enumerate() {
        // A rule left to checks is joined on every L4 field, even when
        // it names none: its verdicts carry its checks.
        if checked[i] == 0 && pair_phase_only(r) {
            continue;
        }
        // A dimension the rule does not constrain is keyed as ANY_CLASS,
        // not spread over every class: the program looks up each pattern.
        let ifaces: Vec<u32> = match &r.in_iface {
            Some(name) => {
                vec![
                    fields
                        .iface_names
                        .binary_search(name)
                        .expect("collected above") as u32
                        + 1,
                ]
            }
            None => vec![ANY_CLASS],
        };
        let protos: &[u8] = match r.proto {
            Proto::Any => &[PROTO_TCP, PROTO_UDP, PROTO_ICMP, PROTO_ICMPV6, PROTO_OTHER],
            p => &[match p {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
                Proto::Icmp => PROTO_ICMP,
                _ => PROTO_ICMPV6,
            }],
        };
        let pair_wild = is_pair_wild(r);
        for &proto in protos {
            let sports = |per_rule: &Vec<Vec<u32>>| {
                if r.sport.is_empty() {
                    vec![ANY_CLASS]
                } else {
                    per_rule[i].clone()
                }
            };
            let specific = |list_empty: bool, per_rule: &Vec<Vec<u32>>| {
                if list_empty {
                    vec![ANY_CLASS]
                } else {
                    per_rule[i].clone()
                }
            };
            let (a_list, b_list) = match proto {
                PROTO_TCP => (
                    sports(&fields.tcp_s),
                    specific(r.dport.is_empty(), &fields.tcp_d),
                ),
                PROTO_UDP => (
                    sports(&fields.udp_s),
                    specific(r.dport.is_empty(), &fields.udp_d),
                ),
                PROTO_ICMP => (
                    vec![ANY_CLASS],
                    specific(r.icmp_type.is_empty(), &fields.icmp4),
                ),
                PROTO_ICMPV6 => (
                    vec![ANY_CLASS],
                    specific(r.icmp_type.is_empty(), &fields.icmp6),
                ),
                _ => (vec![ANY_CLASS], vec![ANY_CLASS]),
            };
            for &iface_class in &ifaces {
                for &a in &a_list {
                    for &b in &b_list {
                        let key = L4Key {
                            iface_class,
                            a_class: a,
                            b_class: b,
                            proto,
                            _pad8: 0,
                            _pad16: 0,
                        };
                        let e = l4_acc.entry(key).or_insert((
                            RuleLists::EMPTY,
                            NO_RULE,
                            RuleLists::EMPTY,
                        ));
                        if e.1 != NO_RULE {
                            continue;
                        }
                        if pair_wild && checked[i] != 0 {
                            e.2 = lists.append(e.2, i as u32);
                        } else if pair_wild {
                            e.1 = i as u32;
                        } else {
                            e.0 = lists.append(e.0, i as u32);
                        }
                    }
                }
            }
        }
    }
    let mut l4_classes = Classes::new(live.len());
    let mut class_of: HashMap<(u32, u32), u32> = HashMap::default();
    let mut checks = RuleChecks::new(original, checked);
    for (key, (list, wild, wild_list)) in l4_acc {
        let class = *class_of
            .entry((list, wild))
            .or_insert_with(|| l4_classes.intern(&lists.rules(list), [wild, 0, 0, 0, 0]));
        let wildcard_checks = checks.of(wild_list, &lists, out, budget)?;
        out.l4.insert(
            key,
            ClassMatch {
                class,
                wildcard_rule: wild,
                wildcard_checks,
            },
        );
    }
    Ok((l4_classes, checks.crowded))
}

/// Phase 3: (pair class, L4 class) -> first rule matching both, and the
/// rules with checks before it (see [`RuleCheck`]). Rules are visited in
/// order, so the first one stored is the first match.
fn verdict_phase(
    live: &[Rule],
    checked: &[u8],
    pc_of_rule: &[Vec<u32>],
    lc_of_rule: &[Vec<u32>],
    out: &mut CompiledRuleSet,
    budget: &mut Budget,
) -> Result<Vec<u32>, CompileError> {
    // Per key: the list (a node of `lists`) of checked rules, and the
    // first rule matching outright.
    let mut verdicts: HashMap<VerdictKey, (u32, u32)> = HashMap::default();
    let mut lists = RuleLists::default();
    for (i, (pcs, lcs)) in pc_of_rule.iter().zip(lc_of_rule).enumerate() {
        budget.spend((pcs.len() * lcs.len()) as u64, "the verdict table")?;
        for &pc in pcs {
            for &lc in lcs {
                let key = VerdictKey {
                    pair_class: pc,
                    l4_class: lc,
                };
                let e = verdicts.entry(key).or_insert((RuleLists::EMPTY, NO_RULE));
                if e.1 != NO_RULE {
                    continue;
                }
                if checked[i] != 0 {
                    e.0 = lists.append(e.0, i as u32);
                } else {
                    e.1 = i as u32;
                }
            }
        }
    }
    let mut checks = RuleChecks::new(live, checked);
    out.verdicts = HashMap::default();
    out.verdicts.reserve(verdicts.len());
    for (key, (list, rule)) in verdicts {
        let checks = checks.of(list, &lists, out, budget)?;
        out.verdicts.insert(key, VerdictMatch { rule, checks });
    }
    Ok(checks.crowded)
}

/// Writes the checks of lists of checked rules into the check array, each
/// distinct list once, and collects the rules of lists with more than
/// [`CHECKS_PER_VERDICT`] checks.
struct RuleChecks<'a> {
    rules: &'a [Rule],
    checked: &'a [u8],
    /// List node -> `checks` value.
    written: HashMap<u32, u32>,
    crowded: Vec<u32>,
}

impl<'a> RuleChecks<'a> {
    fn new(rules: &'a [Rule], checked: &'a [u8]) -> RuleChecks<'a> {
        RuleChecks {
            rules,
            checked,
            written: HashMap::default(),
            crowded: Vec::new(),
        }
    }

    /// The `checks` value (see [`VerdictMatch::checks`]) of `list`.
    fn of(
        &mut self,
        list: u32,
        lists: &RuleLists,
        out: &mut CompiledRuleSet,
        budget: &Budget,
    ) -> Result<u32, CompileError> {
        if list == RuleLists::EMPTY {
            return Ok(0);
        }
        if let Some(&checks) = self.written.get(&list) {
            return Ok(checks);
        }
        let first = out.rule_checks.len() as u32;
        let rules = lists.rules(list);
        for &r in &rules {
            let (rule, checked) = (&self.rules[r as usize], self.checked[r as usize]);
            out.rule_checks.extend(rule_checks(rule, r, checked));
        }
        let count = out.rule_checks.len() as u32 - first;
        if count > CHECKS_PER_VERDICT {
            self.crowded.extend(rules);
        }
        if first >= 1 << (32 - RULE_CHECK_COUNT_BITS) {
            return Err(CompileError::OverBudget {
                rules: budget.rules,
                phase: "the rule checks",
                limit: format!("{} checks", 1u32 << (32 - RULE_CHECK_COUNT_BITS)),
            });
        }
        let checks = first << RULE_CHECK_COUNT_BITS | count.min(RULE_CHECKS_MAX);
        self.written.insert(list, checks);
        Ok(checks)
    }
}

/// The checks of rule `rule` (`r`), whose fields `checked` (`CHECK_*`
/// bits) the join left out: one per prefix or port range of those fields
/// (their product when several are).
fn rule_checks(r: &Rule, rule: u32, checked: u8) -> Vec<RuleCheck> {
    let addrs: &[Cidr] = if checked & CHECK_SRC != 0 {
        &r.src
    } else if checked & CHECK_DST != 0 {
        &r.dst
    } else {
        &[]
    };
    let addr_checks: Vec<(u8, [u64; 2], [u64; 2])> = if addrs.is_empty() {
        vec![(0, [0; 2], [0; 2])]
    } else {
        addrs
            .iter()
            .map(|c| {
                // IPv4 in the top bits, as `CheckedFields` reads it.
                let mask = prefix_mask(c.len);
                let bits = prefix_bits(c) & mask;
                let words = |v: u128| [(v >> 64) as u64, v as u64];
                let mut flags = RULE_CHECK_ADDR;
                if checked & CHECK_DST != 0 {
                    flags |= RULE_CHECK_DST;
                }
                if !c.is_v4() {
                    flags |= RULE_CHECK_V6;
                }
                (flags, words(bits), words(mask))
            })
            .collect()
    };
    let ports = |bit: u8, list: &[PortRange]| -> Vec<(u16, u16)> {
        if checked & bit != 0 {
            list.iter().map(|p| (p.lo, p.hi)).collect()
        } else {
            vec![(0, u16::MAX)]
        }
    };
    let (sports, dports) = (ports(CHECK_SPORT, &r.sport), ports(CHECK_DPORT, &r.dport));
    let mut checks = Vec::new();
    for &(flags, addr, mask) in &addr_checks {
        for &(sport_lo, sport_hi) in &sports {
            for &(dport_lo, dport_hi) in &dports {
                checks.push(RuleCheck {
                    addr,
                    mask,
                    rule,
                    sport_lo,
                    sport_hi,
                    dport_lo,
                    dport_hi,
                    flags,
                    _pad: [0; 3],
                });
            }
        }
    }
    checks
}

/// An LPM table of one family (`N` address bytes) from (prefix, classes).
fn prefix_table<const N: usize>(entries: &[(Cidr, AddrClass)]) -> Vec<PrefixClass<N>> {
    entries
        .iter()
        .map(|(c, class)| {
            let mut addr = [0u8; N];
            match c.addr {
                IpAddr::V4(a) if N == 4 => addr.copy_from_slice(&a.octets()),
                IpAddr::V6(a) if N == 16 => addr.copy_from_slice(&a.octets()),
                _ => unreachable!("a table holds one family"),
            }
            PrefixClass {
                addr,
                len: c.len,
                class: *class,
            }
        })
        .collect()
}

/// Rough kernel memory of the tables: preallocated hash elements carry about
/// 48 bytes of overhead besides key and value; LPM nodes about 40.
/// Memory of one pair-table entry: hash element overhead, key and value.
const PAIR_ENTRY_BYTES: u64 = 48 + 32;

fn estimate_bytes(s: &TableSizes) -> u64 {
    let hash = |n: usize, kv: u64| n as u64 * (48 + kv);
    // Node overhead, key, value (a class per rule group).
    let lpm4 = 40 + 4 + 16;
    let lpm6 = 40 + 16 + 16;
    (s.pairs + s.dst_only + s.src_only) as u64 * PAIR_ENTRY_BYTES
        + hash(s.l4_entries, 28)
        + hash(s.verdicts, 16)
        + s.rule_checks as u64 * std::mem::size_of::<RuleCheck>() as u64
        + s.v4_range_bytes
        + (s.src_prefixes + s.dst_prefixes - s.ranged_prefixes) as u64
            * if s.prefixes_hashed {
                // A hash element: overhead, 24-byte key, value.
                48 + 24 + 8
            } else {
                (lpm4 + lpm6) / 2
            }
        + PORT_CLASS_ENTRIES as u64 * 8
        + ICMP_CLASS_ENTRIES as u64 * 8
        + s.rules as u64 * 4
}

/// Length of [`CompiledRuleSet::port_class`]: one 65,536-entry slice per
/// port slot, as the compiler sees them (the map packs them per port).
const PORT_CLASS_SLOTS_LEN: usize = (PORT_SLOTS * 65_536) as usize;
/// Length of [`CompiledRuleSet::icmp_class`]: 256 types per ICMP slot.
const ICMP_CLASS_SLOTS_LEN: usize = (ICMP_SLOTS * 256) as usize;

/// The class-array entries of per-slot classes (`slices` one after the
/// other, `entries` each): entry `e` holds the class of `e` in each slice,
/// 16 bits per slice (see [`nva_common::CLASS_LANE_BITS`]).
fn class_lanes(slices: &[u32], entries: u32) -> Vec<u64> {
    let entries = entries as usize;
    (0..entries)
        .map(|e| {
            slices.iter().skip(e).step_by(entries).enumerate().fold(
                0u64,
                |packed, (slot, class)| {
                    debug_assert!(*class <= 0xffff, "a slot has at most 65,536 classes");
                    packed | (*class as u64) << (slot as u32 * CLASS_LANE_BITS)
                },
            )
        })
        .collect()
}

/// Userspace model of the program's lookup, with hash indexes standing in
/// for the LPM tries. Agrees with the XDP program entry for entry.
pub struct LookupModel<'a> {
    set: &'a CompiledRuleSet,
    hashed: HashMap<PrefixKey, u32>,
    src4: HashMap<(u8, [u8; 4]), AddrClass>,
    dst4: HashMap<(u8, [u8; 4]), AddrClass>,
    src6: HashMap<(u8, [u8; 16]), AddrClass>,
    dst6: HashMap<(u8, [u8; 16]), AddrClass>,
}

fn lpm_index<const N: usize>(table: &[PrefixClass<N>]) -> HashMap<(u8, [u8; N]), AddrClass> {
    table.iter().map(|e| ((e.len, e.addr), e.class)).collect()
}

fn lpm_lookup<const N: usize>(
    index: &HashMap<(u8, [u8; N]), AddrClass>,
    addr: [u8; N],
) -> Option<AddrClass> {
    (0..=(N * 8) as u8).rev().find_map(|len| {
        let mut masked = addr;
        for (i, byte) in masked.iter_mut().enumerate() {
            let bits = (len as usize).saturating_sub(i * 8).min(8);
            *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        }
        index.get(&(len, masked)).copied()
    })
}

impl CompiledRuleSet {
    /// Writes the tables into a slot through `sink`: rule i counts into
    /// `counters[i]`; interface names resolve through `ifindex_of` (an
    /// interface that does not exist cannot receive packets: left out).
    pub fn write_tables<S: super::TableSink>(
        &self,
        sink: &mut S,
        counters: &[u32],
        ifindex_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), S::Error> {
        use nva_common::map_names as names;
        sink.prefixes_v4(names::SRC_V4, &self.src_v4)?;
        sink.prefixes_v6(names::SRC_V6, &self.src_v6)?;
        sink.prefixes_v4(names::DST_V4, &self.dst_v4)?;
        sink.prefixes_v6(names::DST_V6, &self.dst_v6)?;
        // Arrays, written as (index, value).
        fn indexed<V: Copy>(values: &[V]) -> Vec<(u32, V)> {
            (0..).zip(values.iter().copied()).collect()
        }
        for (table, ranges) in [
            (names::SRC_V4_RANGES, &self.src_v4_ranges),
            (names::DST_V4_RANGES, &self.dst_v4_ranges),
        ] {
            sink.hash(table, &indexed(&ranges.entries))?;
        }
        for (table, ranges) in [
            (names::SRC_V4_RANGE_CLASSES, &self.src_v4_ranges),
            (names::DST_V4_RANGE_CLASSES, &self.dst_v4_ranges),
        ] {
            sink.hash(table, &indexed(&ranges.classes))?;
        }
        fn entries<K: Copy, V: Copy>(m: &HashMap<K, V>) -> Vec<(K, V)> {
            m.iter().map(|(k, v)| (*k, *v)).collect()
        }
        sink.hash::<PairKey, PairMatch>(names::PAIRS, &entries(&self.pairs))?;
        sink.hash::<u32, PairMatch>(names::DST_ONLY, &entries(&self.dst_only))?;
        sink.hash::<u32, PairMatch>(names::SRC_ONLY, &entries(&self.src_only))?;
        sink.hash::<L4Key, ClassMatch>(names::L4, &entries(&self.l4))?;
        sink.hash::<VerdictKey, VerdictMatch>(names::VERDICTS, &entries(&self.verdicts))?;
        sink.hash(names::RULE_CHECKS, &indexed(&self.rule_checks))?;
        sink.hash::<PrefixKey, u32>(names::PREFIXES, &self.prefix_hash)?;
        let ifaces: Vec<(u32, u32)> = self
            .iface_class
            .iter()
            .filter_map(|(name, class)| ifindex_of(name).map(|i| (i, *class)))
            .collect();
        sink.hash(names::IFACE_CLASS, &ifaces)?;
        let management: Vec<(ManagementKey, u8)> =
            self.management.iter().map(|k| (*k, 1u8)).collect();
        sink.hash(names::MANAGEMENT, &management)?;
        sink.array(
            names::PORT_CLASS,
            &class_lanes(&self.port_class, PORT_CLASS_ENTRIES),
        )?;
        sink.array(
            names::ICMP_CLASS,
            &class_lanes(&self.icmp_class, ICMP_CLASS_ENTRIES),
        )?;
        let actions: Vec<(u32, RuleAction)> = self
            .rule_actions
            .iter()
            .zip(counters)
            .enumerate()
            .map(|(i, (a, &counter))| (i as u32, RuleAction { counter, ..*a }))
            .collect();
        sink.hash(names::RULE_ACTIONS, &actions)
    }

    /// The slot's settings for `generation`, marked ready: written last,
    /// once the tables are complete.
    pub fn slot_config(&self, generation: u64) -> DataPathConfig {
        DataPathConfig {
            generation,
            catch_all_rule: self.catch_all_rule,
            proto_catch_all: self.proto_catch_all,
            default_action: self.default_action,
            fragments: if self.fragments_allow {
                FRAGMENTS_ALLOW
            } else {
                FRAGMENTS_DROP
            },
            ready: 1,
            l4_patterns: self.l4.keys().fold(0, |m, k| m | 1 << l4_pattern(k)),
            pair_tables: self.pair_tables,
            log_drops: self.log_drops as u8,
            stateful: self.stateful as u8,
            loose_tcp: self.loose_tcp as u8,
            // NAT's and forwarding's fields are the installer's (see
            // `datapath::install`).
            nat_dnat: 0,
            nat_snat: 0,
            nat_bindings: 0,
            forward: nva_common::FORWARD_KERNEL,
            prefix_rules: self.prefix_rules,
            _pad: Default::default(),
            no_class: ANY_CLASS,
            // Set by the installer, which sizes the counter array.
            counter_stride: 0,
            v4_ranges: self.v4_ranges,
            _pad_end: Default::default(),
            timeouts_s: self.timeouts_s,
            prefix_lens: if self.prefix_rules & PREFIX_RULES_HASHED != 0 {
                self.prefix_lens
            } else {
                [NO_PREFIX_LEN; 16]
            },
        }
    }

    pub fn model(&self) -> LookupModel<'_> {
        LookupModel {
            set: self,
            hashed: self.prefix_hash.iter().copied().collect(),
            src4: lpm_index(&self.src_v4),
            dst4: lpm_index(&self.dst_v4),
            src6: lpm_index(&self.src_v6),
            dst6: lpm_index(&self.dst_v6),
        }
    }
}

impl LookupModel<'_> {
    /// The rule id the program would find for `pkt` (or NO_RULE).
    pub fn lookup(&self, pkt: &PacketView) -> u32 {
        let set = self.set;
        let (s, d) = match (pkt.src, pkt.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (
                if set.v4_ranges & V4_RANGES_SRC != 0 {
                    Some(set.src_v4_ranges.lookup(s.into()))
                } else {
                    lpm_lookup(&self.src4, s.octets())
                },
                if set.v4_ranges & V4_RANGES_DST != 0 {
                    Some(set.dst_v4_ranges.lookup(d.into()))
                } else {
                    lpm_lookup(&self.dst4, d.octets())
                },
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => (
                lpm_lookup(&self.src6, s.octets()),
                lpm_lookup(&self.dst6, d.octets()),
            ),
            _ => (None, None),
        };
        if set.prefix_rules & PREFIX_RULES_HASHED != 0 {
            let hashed = |ip: IpAddr, dst: bool| -> u32 {
                let (addr, is_v6) = match ip {
                    IpAddr::V4(a) => {
                        let mut bytes = [0u8; 16];
                        bytes[..4].copy_from_slice(&a.octets());
                        (bytes, false)
                    }
                    IpAddr::V6(a) => (a.octets(), true),
                };
                let table = prefix_table_index(dst, is_v6);
                set.prefix_lens[table * PREFIX_HASH_LENS..][..PREFIX_HASH_LENS]
                    .iter()
                    .take_while(|len| **len != NO_PREFIX_LEN)
                    .find_map(|&len| {
                        self.hashed
                            .get(&PrefixKey::masked(&addr, is_v6, len, table as u8))
                            .copied()
                    })
                    .unwrap_or(NO_RULE)
            };
            let mut best = set.catch_all_rule;
            if set.prefix_rules & PREFIX_RULES_SRC != 0 {
                best = best.min(hashed(pkt.src, false));
            }
            if set.prefix_rules & PREFIX_RULES_DST != 0 {
                best = best.min(hashed(pkt.dst, true));
            }
            return best;
        }
        if set.prefix_rules != 0 {
            let side = |bit: u8, found: Option<AddrClass>| {
                found
                    .filter(|_| set.prefix_rules & bit != 0)
                    .map_or(NO_RULE, |c| c.class[0])
            };
            return set
                .catch_all_rule
                .min(side(PREFIX_RULES_SRC, s))
                .min(side(PREFIX_RULES_DST, d));
        }
        let proto = nva_common::classifier_proto(pkt.proto);
        let port = |slot: u32, p: u16| set.port_class[(slot * 65_536 + p as u32) as usize];
        let icmp = |slot: u32, t: u8| set.icmp_class[(slot * 256 + t as u32) as usize];
        let (a, b) = match proto {
            PROTO_TCP => (
                port(PORT_SLOT_TCP_SPORT, pkt.sport),
                port(PORT_SLOT_TCP_DPORT, pkt.dport),
            ),
            PROTO_UDP => (
                port(PORT_SLOT_UDP_SPORT, pkt.sport),
                port(PORT_SLOT_UDP_DPORT, pkt.dport),
            ),
            PROTO_ICMP => (ANY_CLASS, icmp(ICMP_SLOT_V4, pkt.icmp_type)),
            PROTO_ICMPV6 => (ANY_CLASS, icmp(ICMP_SLOT_V6, pkt.icmp_type)),
            _ => (ANY_CLASS, ANY_CLASS),
        };
        let iface_class = pkt
            .iface
            .as_ref()
            .and_then(|name| set.iface_class.iter().find(|(n, _)| n == name))
            .map(|(_, c)| *c);
        // Every key pattern, as the program looks them up.
        let iface_class = iface_class.unwrap_or(ANY_CLASS);
        let l4s: Vec<Option<ClassMatch>> = (0..8)
            .map(|p| {
                let (use_iface, use_a, use_b) = (p & 4 != 0, p & 2 != 0, p & 1 != 0);
                if (use_iface && iface_class == ANY_CLASS)
                    || (use_a && a == ANY_CLASS)
                    || (use_b && b == ANY_CLASS)
                {
                    return None;
                }
                set.l4
                    .get(&L4Key {
                        iface_class: if use_iface { iface_class } else { ANY_CLASS },
                        a_class: if use_a { a } else { ANY_CLASS },
                        b_class: if use_b { b } else { ANY_CLASS },
                        proto,
                        _pad8: 0,
                        _pad16: 0,
                    })
                    .copied()
            })
            .collect();
        let bytes = |ip: IpAddr| match ip {
            IpAddr::V4(a) => {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&a.octets());
                bytes
            }
            IpAddr::V6(a) => a.octets(),
        };
        let checked = CheckedFields::new(
            &bytes(pkt.src),
            &bytes(pkt.dst),
            pkt.src.is_ipv6(),
            pkt.sport,
            pkt.dport,
        );
        let mut best = set.catch_all_rule;
        if let Some(slot) = pair_proto_slot(proto) {
            best = best.min(set.proto_catch_all[slot]);
        }
        let first_check = |checks: u32| {
            if checks == 0 {
                return NO_RULE;
            }
            first_passing_check(checks, &checked, |i| {
                set.rule_checks.get(i as usize).copied()
            })
        };
        for l in l4s.iter().flatten() {
            best = best.min(l.wildcard_rule);
            best = best.min(first_check(l.wildcard_checks));
        }
        // Each rule group in use, with its own classes.
        let mut matches: Vec<&PairMatch> = Vec::new();
        for (g, &tables) in set.pair_tables.iter().enumerate() {
            if tables == 0 {
                continue;
            }
            // As the program: only the lookups the classes' flags allow.
            let class =
                |found: Option<AddrClass>| found.map(|c| c.class[g]).filter(|c| *c != NO_RULE);
            let (s, d) = (class(s), class(d));
            let with =
                |c: Option<u32>, flag: u32| c.filter(|c| c & flag != 0).map(|c| c & CLASS_ID_MASK);
            if let (Some(s), Some(d)) = (with(s, CLASS_IN_PAIRS), with(d, CLASS_IN_PAIRS)) {
                let key = PairKey {
                    src_class: s,
                    dst_class: d,
                };
                matches.extend(
                    set.pairs
                        .get(&key)
                        .filter(|_| tables & PAIR_TABLE_BOTH != 0),
                );
            }
            let dst_only = with(d, CLASS_IN_SINGLE).and_then(|d| set.dst_only.get(&d));
            matches.extend(dst_only.filter(|_| tables & PAIR_TABLE_DST_ONLY != 0));
            let src_only = with(s, CLASS_IN_SINGLE).and_then(|s| set.src_only.get(&s));
            matches.extend(src_only.filter(|_| tables & PAIR_TABLE_SRC_ONLY != 0));
        }
        for m in matches {
            best = best.min(m.wildcard_rule);
            if let Some(slot) = pair_proto_slot(proto) {
                best = best.min(m.proto_rule[slot]);
            }
            // As the program: only the patterns with a verdict for this pair.
            let reachable = l4s
                .iter()
                .enumerate()
                .filter(|(p, _)| m.verdict_patterns & (1 << p) != 0);
            for l in reachable.filter_map(|(_, l)| l.as_ref()) {
                if let Some(v) = set.verdicts.get(&VerdictKey {
                    pair_class: m.class,
                    l4_class: l.class,
                }) {
                    best = best.min(v.rule).min(first_check(v.checks));
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests;
