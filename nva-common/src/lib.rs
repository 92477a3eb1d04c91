//! Types shared by the XDP program (`nva-ebpf`) and userspace (`nva-userspace`).
//!
//! Every BPF map key and value is defined here exactly once, `#[repr(C)]` with
//! explicit padding and a size assertion, so both halves agree byte for byte.
//! The `user` feature adds `aya::Pod` so userspace can read and write them.
#![cfg_attr(not(feature = "user"), no_std)]

/// Rule id meaning "no rule matched" (also: a class lookup found nothing).
pub const NO_RULE: u32 = u32::MAX;

/// Largest number of rules one rule set may hold (size of per-rule arrays).
pub const MAX_RULES: u32 = 131_072;

/// Capacities of the rule tables of one slot (hash tables are not
/// preallocated, so these bound memory rather than reserve it).
pub const CAPACITY_PREFIXES: u32 = 1 << 20;
pub const CAPACITY_ADDR_TABLE: u32 = 1 << 20;
pub const CAPACITY_JOIN_TABLE: u32 = 1 << 22;

/// Port-class array layout: one 65,536-entry slice per (protocol, direction).
pub const PORT_SLOT_TCP_SPORT: u32 = 0;
pub const PORT_SLOT_TCP_DPORT: u32 = 1;
pub const PORT_SLOT_UDP_SPORT: u32 = 2;
pub const PORT_SLOT_UDP_DPORT: u32 = 3;
pub const PORT_SLOTS: u32 = 4;
pub const PORT_CLASS_ENTRIES: u32 = PORT_SLOTS * 65_536;

/// ICMP-type-class array layout: 256 types for ICMP, then 256 for ICMPv6.
pub const ICMP_SLOT_V4: u32 = 0;
pub const ICMP_SLOT_V6: u32 = 1;
pub const ICMP_CLASS_ENTRIES: u32 = 2 * 256;

/// IP protocol numbers the classifier distinguishes. Every other protocol is
/// folded into [`PROTO_OTHER`], since rules can only say `any` for them.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_OTHER: u8 = 255;

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

/// Key of the pair map: (source class, destination class).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PairKey {
    pub src_class: u32,
    pub dst_class: u32,
}
const _: () = assert!(core::mem::size_of::<PairKey>() == 8);

/// Class id in an L4 key meaning "the rules stored here do not constrain this
/// dimension". Rules are stored under the pattern of the dimensions they
/// name, so that a wildcard never spreads over every class of a dimension;
/// the program looks up each pattern.
pub const ANY_CLASS: u32 = u32::MAX;

/// Key of the L4 map: (ingress-interface class or ANY, protocol, classes).
/// For TCP/UDP `a_class` is the source port class (or ANY) and `b_class` the
/// destination port class; for ICMP/ICMPv6 `a_class` is ANY and `b_class` the
/// type class; for other protocols `a_class` is ANY and `b_class` 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct L4Key {
    pub iface_class: u32,
    pub a_class: u32,
    pub b_class: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<L4Key>() == 16);

/// Value of the pair and L4 maps.
///
/// `class` joins with the other half in the verdict map. `wildcard_rule` is
/// the first rule that matches on this half alone because it is a wildcard in
/// the other half (e.g. `proto = any` with no ports, as seen from the pair
/// map); storing it here keeps such rules out of the cross product.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClassMatch {
    pub class: u32,
    pub wildcard_rule: u32,
}
const _: () = assert!(core::mem::size_of::<ClassMatch>() == 8);

/// Value of the pair map: like [`ClassMatch`], plus the first rule matching
/// this pair that names only a protocol (no ports, ICMP types or interface),
/// per protocol slot ([`pair_proto_slot`]). Such rules are common ("tcp from
/// A to B") and would otherwise cross with every port class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PairMatch {
    pub class: u32,
    pub wildcard_rule: u32,
    pub proto_rule: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<PairMatch>() == 24);

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

/// Key of the verdict map: (pair class, L4 class). The value is the id of the
/// first rule, in file order, that matches both (a `u32`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VerdictKey {
    pub pair_class: u32,
    pub l4_class: u32,
}
const _: () = assert!(core::mem::size_of::<VerdictKey>() == 8);

/// Per-rule data the program needs once a rule id is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleAction {
    pub action: u8,
    pub log: u8,
    pub _pad: [u8; 2],
    /// Index into the rule counters: stable for a rule name across reloads
    /// and agent restarts, so counters continue.
    pub counter: u32,
}
const _: () = assert!(core::mem::size_of::<RuleAction>() == 8);

/// Per-rule counters (a per-CPU array indexed by rule id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 16);

/// IPv4 address as a v4-mapped IPv6 address (::ffff:a.b.c.d), the key form
/// of the local-address map.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// Key of the management (failsafe) map: traffic to this destination port and
/// protocol passes before any rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ManagementKey {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ManagementKey>() == 4);

/// Global settings of the loaded rule set (array of one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataPathConfig {
    pub generation: u64,
    /// First rule that matches every packet (all fields wildcard), or
    /// [`NO_RULE`]. Kept here rather than in the class tables, where it would
    /// touch every class combination.
    pub catch_all_rule: u32,
    /// Per protocol slot ([`pair_proto_slot`]): the first rule that matches
    /// every packet of that protocol (any address, port, type, interface).
    pub proto_catch_all: [u32; 4],
    pub default_action: u8,
    pub fragments: u8,
    /// 0 until userspace has written a complete rule set: until then the
    /// program passes everything rather than dropping on empty tables.
    pub ready: u8,
    /// Bit p set: the L4 map holds keys of pattern p ([`l4_pattern`]); the
    /// program skips lookups of patterns no rule uses.
    pub l4_patterns: u8,
    /// `PAIR_GROUP_*` bits: which address tables hold entries.
    pub pair_groups: u8,
    /// `policy.log_drops`: emit sampled events for rule and default drops.
    pub log_drops: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<DataPathConfig>() == 40);

/// Pattern of an L4 key: bit 2 interface named, bit 1 source port class,
/// bit 0 destination port / ICMP type class (else ANY).
#[inline(always)]
pub const fn l4_pattern(key: &L4Key) -> u8 {
    ((key.iface_class != ANY_CLASS) as u8) << 2
        | ((key.a_class != ANY_CLASS) as u8) << 1
        | (key.b_class != ANY_CLASS) as u8
}

pub const PAIR_GROUP_BOTH: u8 = 1;
pub const PAIR_GROUP_DST_ONLY: u8 = 2;
pub const PAIR_GROUP_SRC_ONLY: u8 = 4;

/// Sampled events per second, per rule (and for default drops), per CPU.
pub const LOG_EVENTS_PER_SECOND: u32 = 10;
/// Budget slot of default drops (rules use their counter index).
pub const LOG_SLOT_DEFAULT_DROP: u32 = MAX_RULES;

/// Rate-limit state of one log budget slot (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogBudget {
    pub window_start_ns: u64,
    pub sent: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LogBudget>() == 16);

/// A sampled packet event (ring buffer): a logged rule's match, or a drop
/// under `policy.log_drops`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PacketEvent {
    pub ts_ns: u64,
    /// Addresses; IPv4 uses the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Counter index of the rule ([`NO_RULE`] for the default policy).
    pub counter: u32,
    pub ifindex: u32,
    pub bytes: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub is_v6: u8,
    /// [`PacketReason`] as u8.
    pub reason: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<PacketEvent>() == 64);

/// Why the program returned its verdict; index into the per-CPU packet
/// counter array. Append only: the numbers are part of the pinned layout.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketReason {
    PassNonIp = 0,
    PassManagement = 1,
    PassRule = 2,
    PassDefault = 3,
    PassFragment = 4,
    PassNotReady = 5,
    DropRule = 6,
    DropDefault = 7,
    DropFragment = 8,
    DropMalformedEthernet = 9,
    DropVlanTooDeep = 10,
    DropMalformedIpv4 = 11,
    DropMalformedIpv6 = 12,
    DropIpv6ExtTooDeep = 13,
    DropMalformedL4 = 14,
}

pub const PACKET_REASONS: u32 = 15;

impl PacketReason {
    pub const ALL: [PacketReason; PACKET_REASONS as usize] = [
        Self::PassNonIp,
        Self::PassManagement,
        Self::PassRule,
        Self::PassDefault,
        Self::PassFragment,
        Self::PassNotReady,
        Self::DropRule,
        Self::DropDefault,
        Self::DropFragment,
        Self::DropMalformedEthernet,
        Self::DropVlanTooDeep,
        Self::DropMalformedIpv4,
        Self::DropMalformedIpv6,
        Self::DropIpv6ExtTooDeep,
        Self::DropMalformedL4,
    ];

    /// True for reasons whose verdict is XDP_PASS.
    #[inline(always)]
    pub const fn is_pass(self) -> bool {
        (self as u32) < Self::DropRule as u32
    }

    /// `pass` or `drop`, the `verdict` label of `nva_packets_total`.
    pub const fn verdict(self) -> &'static str {
        if self.is_pass() {
            "pass"
        } else {
            "drop"
        }
    }

    /// The `reason` label of `nva_packets_total`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::PassNonIp => "non_ip",
            Self::PassManagement => "management",
            Self::PassRule | Self::DropRule => "rule",
            Self::PassDefault | Self::DropDefault => "default",
            Self::PassFragment | Self::DropFragment => "fragment",
            Self::PassNotReady => "not_ready",
            Self::DropMalformedEthernet => "malformed_ethernet",
            Self::DropVlanTooDeep => "vlan_too_deep",
            Self::DropMalformedIpv4 => "malformed_ipv4",
            Self::DropMalformedIpv6 => "malformed_ipv6",
            Self::DropIpv6ExtTooDeep => "ipv6_ext_too_deep",
            Self::DropMalformedL4 => "malformed_l4",
        }
    }
}

/// Map names, shared so userspace finds what the program declares. Rule
/// tables exist once per slot, named `{NAME}_{slot}` (slot 0 or 1).
pub mod map_names {
    pub const ACTIVE: &str = "ACTIVE";
    pub const SRC_V4: &str = "SRC_V4";
    pub const SRC_V6: &str = "SRC_V6";
    pub const DST_V4: &str = "DST_V4";
    pub const DST_V6: &str = "DST_V6";
    pub const PORT_CLASS: &str = "PORT_CLASS";
    pub const ICMP_CLASS: &str = "ICMP_CLASS";
    pub const IFACE_CLASS: &str = "IFACE_CLASS";
    pub const PAIRS: &str = "PAIRS";
    pub const DST_ONLY: &str = "DST_ONLY";
    pub const SRC_ONLY: &str = "SRC_ONLY";
    pub const L4: &str = "L4";
    pub const VERDICTS: &str = "VERDICTS";
    pub const RULE_ACTIONS: &str = "RULE_ACTIONS";
    pub const RULE_COUNTERS: &str = "RULE_COUNTERS";
    pub const PACKET_COUNTERS: &str = "PACKET_COUNTERS";
    pub const MANAGEMENT: &str = "MANAGEMENT";
    pub const CONFIG: &str = "CONFIG";
    pub const EVENTS: &str = "EVENTS";
    pub const LOCAL_ADDRS: &str = "LOCAL_ADDRS";
    pub const LOG_BUDGET: &str = "LOG_BUDGET";
}

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "nva_xdp";

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding.
    unsafe impl aya::Pod for super::PairKey {}
    unsafe impl aya::Pod for super::L4Key {}
    unsafe impl aya::Pod for super::ClassMatch {}
    unsafe impl aya::Pod for super::PairMatch {}
    unsafe impl aya::Pod for super::VerdictKey {}
    unsafe impl aya::Pod for super::RuleAction {}
    unsafe impl aya::Pod for super::RuleCounters {}
    unsafe impl aya::Pod for super::ManagementKey {}
    unsafe impl aya::Pod for super::DataPathConfig {}
    unsafe impl aya::Pod for super::LogBudget {}
    unsafe impl aya::Pod for super::PacketEvent {}
}
