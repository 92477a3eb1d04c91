//! Sampled packet events and the packet counters' reasons.

use crate::classifier::MAX_RULES;

/// Sampled events per second, per rule (and for default drops), per CPU.
pub const LOG_EVENTS_PER_SECOND: u32 = 10;
/// Budget slot of default drops (rules use their counter index).
pub const LOG_SLOT_DEFAULT_DROP: u32 = MAX_RULES;
/// Budget slots kept at once (LRU): rules logging within the same second
/// beyond this many may send a few more events than their budget.
pub const LOG_BUDGET_SLOTS: u32 = 4096;

shared_type! {
    /// Rate-limit state of one log budget slot (per CPU).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct LogBudget {
        pub window_start_ns: u64,
        pub sent: u32,
        pub _pad: u32,
    }
    size = 16, align = 8;
}

shared_type! {
    /// A sampled packet event (ring buffer): a logged rule's match, or a drop
    /// under `policy.log_drops`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct PacketEvent {
        pub ts_ns: u64,
        /// Addresses; IPv4 uses the first 4 bytes.
        pub src: [u8; 16],
        pub dst: [u8; 16],
        /// Counter index of the rule ([`NO_RULE`](crate::NO_RULE) for the default policy).
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
    size = 64, align = 8;
}

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
    /// A new flow to SNAT found no free source port in `to_ports`.
    DropNatPortsExhausted = 21,
    /// A new flow whose tuple would be another live flow's on the wire: a
    /// DNAT whose translated tuple is a live flow, or an untranslated flow
    /// on the translated tuple of a live translated one.
    DropNatClash = 22,
    /// A packet of a translated flow whose NAT binding is gone (evicted).
    DropNatBindingLost = 23,
}

pub const PACKET_REASONS: u32 = 24;

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
        Self::DropNatPortsExhausted,
        Self::DropNatClash,
        Self::DropNatBindingLost,
    ];

    /// True for reasons whose verdict is XDP_PASS.
    #[inline(always)]
    pub const fn is_pass(self) -> bool {
        Self::code_is_pass(self as u32)
    }

    /// [`is_pass`](Self::is_pass) of a reason's number.
    #[inline(always)]
    pub const fn code_is_pass(n: u32) -> bool {
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
            Self::DropNatPortsExhausted => "nat_ports_exhausted",
            Self::DropNatClash => "nat_clash",
            Self::DropNatBindingLost => "nat_binding_lost",
        }
    }
}
