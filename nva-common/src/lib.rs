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
    // Padding as u8 + u16, not [u8; 3]: odd-sized zeroing becomes a byte
    // loop (a memset call) in the data path.
    pub _pad8: u8,
    pub _pad16: u16,
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
    /// `policy.stateful`: track connections; replies of tracked flows pass.
    pub stateful: u8,
    /// `policy.loose_tcp`: a mid-stream TCP packet a rule allows starts a
    /// tracked flow (after a failover without state sync).
    pub loose_tcp: u8,
    pub _pad: [u8; 4],
    /// Idle timeout in seconds by [`ConntrackState`] (index 0 unused).
    pub timeouts_s: [u32; CT_STATES],
}
const _: () = assert!(core::mem::size_of::<DataPathConfig>() == 88);

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
    pub _pad8: u8,
    pub _pad32: u32,
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
    /// A packet of a tracked flow.
    PassEstablished = 15,
    /// An ICMP error quoting a tracked flow.
    PassRelated = 16,
    /// TCP flags no packet may carry (SYN+FIN, SYN+RST, none, FIN alone).
    DropTcpFlags = 17,
    /// A TCP packet other than SYN without a tracked connection.
    DropTcpNotTracked = 18,
    /// TCP flags that make no sense in the connection's state.
    DropTcpState = 19,
    /// A flow an earlier rule set admitted that the current one refuses.
    DropRevoked = 20,
}

pub const PACKET_REASONS: u32 = 21;

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
        Self::PassEstablished,
        Self::PassRelated,
        Self::DropTcpFlags,
        Self::DropTcpNotTracked,
        Self::DropTcpState,
        Self::DropRevoked,
    ];

    /// True for reasons whose verdict is XDP_PASS.
    #[inline(always)]
    pub const fn is_pass(self) -> bool {
        let n = self as u32;
        n < Self::DropRule as u32
            || n == Self::PassEstablished as u32
            || n == Self::PassRelated as u32
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
            Self::PassEstablished => "established",
            Self::PassRelated => "related",
            Self::DropTcpFlags => "tcp_invalid_flags",
            Self::DropTcpNotTracked => "tcp_not_tracked",
            Self::DropTcpState => "tcp_invalid_state",
            Self::DropRevoked => "revoked",
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
    pub const CONNTRACK: &str = "CONNTRACK";
    pub const CONNTRACK_STATS: &str = "CONNTRACK_STATS";
    pub const CONNTRACK_SCRATCH: &str = "CONNTRACK_SCRATCH";
}

/// Connection tracking: the state of a tracked flow. Each state has its own
/// idle timeout ([`DataPathConfig::timeouts_s`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConntrackState {
    /// SYN seen from the originator.
    TcpSynSent = 1,
    /// SYN-ACK seen from the responder.
    TcpSynRecv = 2,
    /// The originator acknowledged the SYN-ACK.
    TcpEstablished = 3,
    /// The originator sent FIN; the responder may still send.
    TcpFinWait = 4,
    /// The responder sent FIN; the originator may still send.
    TcpCloseWait = 5,
    /// Both sides sent FIN.
    TcpClosing = 6,
    /// A side sent RST.
    TcpClosed = 7,
    /// UDP (or another protocol without ports) with no reply yet.
    UdpUnreplied = 8,
    /// UDP (or another protocol) with packets seen both ways.
    UdpReplied = 9,
    /// An ICMP or ICMPv6 echo exchange (keyed by the echo identifier).
    IcmpEcho = 10,
}

/// Size of the per-state timeout table (state values are 1..CT_STATES).
pub const CT_STATES: usize = 11;

impl ConntrackState {
    pub const ALL: [ConntrackState; CT_STATES - 1] = [
        Self::TcpSynSent,
        Self::TcpSynRecv,
        Self::TcpEstablished,
        Self::TcpFinWait,
        Self::TcpCloseWait,
        Self::TcpClosing,
        Self::TcpClosed,
        Self::UdpUnreplied,
        Self::UdpReplied,
        Self::IcmpEcho,
    ];

    pub const fn from_u8(v: u8) -> Option<ConntrackState> {
        match v {
            1 => Some(Self::TcpSynSent),
            2 => Some(Self::TcpSynRecv),
            3 => Some(Self::TcpEstablished),
            4 => Some(Self::TcpFinWait),
            5 => Some(Self::TcpCloseWait),
            6 => Some(Self::TcpClosing),
            7 => Some(Self::TcpClosed),
            8 => Some(Self::UdpUnreplied),
            9 => Some(Self::UdpReplied),
            10 => Some(Self::IcmpEcho),
            _ => None,
        }
    }

    /// Shown by `nva conntrack list`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::TcpSynSent => "SYN_SENT",
            Self::TcpSynRecv => "SYN_RECV",
            Self::TcpEstablished => "ESTABLISHED",
            Self::TcpFinWait => "FIN_WAIT",
            Self::TcpCloseWait => "CLOSE_WAIT",
            Self::TcpClosing => "CLOSING",
            Self::TcpClosed => "CLOSED",
            Self::UdpUnreplied => "UNREPLIED",
            Self::UdpReplied => "REPLIED",
            Self::IcmpEcho => "ECHO",
        }
    }
}

/// Key of the conntrack table: the 5-tuple with its two endpoints in a fixed
/// order (the smaller (address, port) first), so both directions of a flow
/// find the same entry. ICMP echo uses the echo identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConntrackKey {
    /// Addresses; IPv4 uses the first 4 bytes.
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    /// VLAN ids, outer then inner (0: no tag).
    pub vlan: [u16; 2],
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ConntrackKey>() == 44);

/// True when endpoint a sorts before endpoint b (addresses as big-endian
/// numbers, then ports).
#[inline(always)]
fn endpoint_lt(a: &[u8; 16], a_port: u16, b: &[u8; 16], b_port: u16) -> bool {
    let a_hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let b_hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if a_hi != b_hi {
        return a_hi < b_hi;
    }
    let a_lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b_lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    if a_lo != b_lo {
        return a_lo < b_lo;
    }
    a_port < b_port
}

impl ConntrackKey {
    /// Fills in the key of the flow a packet from (src, sport) to
    /// (dst, dport) belongs to; returns whether the source is the key's
    /// `lo` endpoint. Written in place: the data path has little stack.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn set_from_packet(
        &mut self,
        is_v6: bool,
        proto: u8,
        vlan: [u16; 2],
        src: &[u8; 16],
        sport: u16,
        dst: &[u8; 16],
        dport: u16,
    ) -> bool {
        let src_is_lo = endpoint_lt(src, sport, dst, dport);
        if src_is_lo {
            self.addr_lo = *src;
            self.port_lo = sport;
            self.addr_hi = *dst;
            self.port_hi = dport;
        } else {
            self.addr_lo = *dst;
            self.port_lo = dport;
            self.addr_hi = *src;
            self.port_hi = sport;
        }
        self.vlan = vlan;
        self.proto = proto;
        self.family = if is_v6 { 6 } else { 4 };
        self._pad = 0;
        src_is_lo
    }

    /// Completes a key whose `lo` fields hold the source endpoint and `hi`
    /// fields the destination, ordering the endpoints in place.
    #[inline(always)]
    pub fn normalize(&mut self, is_v6: bool, proto: u8, vlan: [u16; 2]) {
        if !endpoint_lt(&self.addr_lo, self.port_lo, &self.addr_hi, self.port_hi) {
            core::mem::swap(&mut self.addr_lo, &mut self.addr_hi);
            core::mem::swap(&mut self.port_lo, &mut self.port_hi);
        }
        self.vlan = vlan;
        self.proto = proto;
        self.family = if is_v6 { 6 } else { 4 };
        self._pad = 0;
    }
}

/// Value of the conntrack table: one tracked flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConntrackEntry {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) at creation and
    /// at the last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Generation of the rule set that admitted (or last re-checked) it.
    pub generation: u64,
    /// Packets and bytes from the originator ([0]) and the responder ([1]).
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Counter index of the admitting rule ([`NO_RULE`]: the default policy).
    pub rule_counter: u32,
    /// Ingress interface of the originator's first packet: a re-check after
    /// a rule change classifies the originator's tuple as it arrived.
    pub origin_ifindex: u32,
    /// [`ConntrackState`] as u8.
    pub state: u8,
    /// 1 when the originator is the key's `lo` endpoint.
    pub origin_is_lo: u8,
    pub _pad16: u16,
    pub _pad32: u32,
}
const _: () = assert!(core::mem::size_of::<ConntrackEntry>() == 72);

/// Per-CPU scratch of the data path: what the conntrack lookup found, for
/// the steps after classification. In a map rather than on the stack: the
/// verifier does not track map memory, so the many conntrack outcomes do not
/// multiply the paths it explores through the classifier. Userspace never
/// reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConntrackScratch {
    pub key: ConntrackKey,
    /// Ingress interface of the flow's originator (re-checks).
    pub origin_ifindex: u32,
    /// Clock of this packet (CLOCK_MONOTONIC_COARSE).
    pub now: u64,
    /// `CT_FLOW_*`.
    pub kind: u8,
    /// New flow: the state to track it in (0: do not track). Re-check: the
    /// state after this packet.
    pub state: u8,
    /// New flow: the packet's source is the key's `lo` endpoint. Re-check:
    /// the packet comes from the originator.
    pub src_is_lo: u8,
    /// New flow: it replaces an expired or closed entry with the same key.
    pub replaced: u8,
    /// Re-check of an ICMP echo flow: the type the originator sent.
    pub origin_icmp_type: u8,
    /// `CT_PENDING_*`: a drop decided before the management failsafe had
    /// its say (the conntrack lookup comes first, so that a tracked flow's
    /// packet costs one lookup).
    pub pending_drop: u8,
    pub _pad: [u8; 2],
    /// The entry of a new flow is built here, not on the stack.
    pub new_entry: ConntrackEntry,
}
const _: () = assert!(core::mem::size_of::<ConntrackScratch>() == 136);

/// [`ConntrackScratch::kind`]: classify; on allow, track the new flow.
pub const CT_FLOW_NEW: u8 = 1;
/// A flow admitted by an earlier rule set: classify the originator's tuple;
/// allow keeps it, drop revokes it.
pub const CT_FLOW_RECHECK: u8 = 2;

/// [`ConntrackScratch::pending_drop`] values.
pub const CT_PENDING_NONE: u8 = 0;
pub const CT_PENDING_TCP_FLAGS: u8 = 1;
pub const CT_PENDING_TCP_NOT_TRACKED: u8 = 2;

/// Conntrack statistics (per-CPU array indices). Evictions are not reported
/// by the kernel; userspace derives them: created - replaced - removed -
/// entries present.
pub const CT_STAT_CREATED: u32 = 0;
/// A new flow replaced an expired or closed entry with the same key.
pub const CT_STAT_REPLACED: u32 = 1;
/// Entries the program removed (flows revoked by a rule change).
pub const CT_STAT_REVOKED: u32 = 2;
/// Entries userspace removed (expiry sweeps, flush); written to CPU 0.
pub const CT_STAT_USER_REMOVED: u32 = 3;
pub const CT_STATS: u32 = 4;

/// Name of the XDP program in the object file.
pub const XDP_PROGRAM: &str = "nva_xdp";
/// The benchmark baseline in the same object: parses, then passes.
pub const XDP_PARSE_PASS_PROGRAM: &str = "nva_parse_pass";
/// The benchmark floor on a real interface: parses, then drops IP packets.
pub const XDP_PARSE_DROP_PROGRAM: &str = "nva_parse_drop";

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
    unsafe impl aya::Pod for super::ConntrackKey {}
    unsafe impl aya::Pod for super::ConntrackEntry {}
    unsafe impl aya::Pod for super::ConntrackScratch {}
}
