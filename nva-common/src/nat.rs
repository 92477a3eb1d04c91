//! Stateful NAT: the `[[nat]]` entries as the program matches them, the
//! bindings that translate a tracked flow's packets, and NAT's counters.
//!
//! A translated flow is tracked under its original tuple (the conntrack key
//! of the packet that opened it) and has two bindings in the NAT map: a
//! forward one under the same key, which rewrites the originator's packets,
//! and a reverse one under the key of the translated tuple, which rewrites
//! the replies and points back at the flow's conntrack key.

use crate::conntrack::ConntrackKey;

/// `[[nat]]` atoms per kind (DNAT, SNAT) in one rule set. An entry with
/// lists of prefixes or port ranges takes one atom per combination; the
/// program scans the atoms of a kind in order, on a flow's first packet only.
pub const MAX_NAT_ATOMS: u32 = 64;

/// Largest number of `[[nat]]` entries (size of the NAT counter array).
pub const MAX_NAT_RULES: u32 = 1024;

/// [`NatMatch::kind`].
pub const NAT_KIND_DNAT: u8 = 1;
pub const NAT_KIND_SNAT: u8 = 2;

/// [`NatMatch::icmp_type`] meaning any type.
pub const NAT_ANY_ICMP_TYPE: u16 = 0x100;

/// SNAT ports (or ICMP echo identifiers) tried per new flow before it is
/// dropped as `nat_ports_exhausted`: bounded work per packet.
pub const NAT_PORT_TRIES: u32 = 8;

shared_type! {
    /// One match of a `[[nat]]` entry: a single source and destination
    /// prefix and port range (an entry with lists is several of these, in
    /// order). Addresses are IPv6 or v4-mapped, compared under the masks.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct NatMatch {
        pub src_addr: [u64; 2],
        pub src_mask: [u64; 2],
        pub dst_addr: [u64; 2],
        pub dst_mask: [u64; 2],
        /// Translation target: the new destination (DNAT) or source (SNAT)
        /// address; IPv4 uses the first 4 bytes.
        pub to_addr: [u8; 16],
        /// Inclusive port ranges the packet's ports must lie in.
        pub sport_lo: u16,
        pub sport_hi: u16,
        pub dport_lo: u16,
        pub dport_hi: u16,
        /// DNAT: the new destination port (0: keep). SNAT: the range new
        /// source ports are allocated from.
        pub to_port: u16,
        pub to_ports_lo: u16,
        pub to_ports_hi: u16,
        /// ICMP type to match, or [`NAT_ANY_ICMP_TYPE`].
        pub icmp_type: u16,
        /// Ingress interface (0: any).
        pub ifindex: u32,
        /// Index into the NAT counters, stable for the entry's name.
        pub counter: u32,
        /// IP protocol (0: any).
        pub proto: u8,
        /// 4 or 6.
        pub family: u8,
        /// `NAT_KIND_*`.
        pub kind: u8,
        pub _pad8: u8,
        pub _pad32: u32,
    }
    size = 112, align = 8;
}

/// [`NatBinding::flags`]: rewrite the source, the destination; the binding
/// is a reverse one (it rewrites replies and `flow` names the flow).
pub const NAT_REWRITE_SRC: u8 = 1;
pub const NAT_REWRITE_DST: u8 = 2;
pub const NAT_REVERSE: u8 = 4;

shared_type! {
    /// Value of the NAT map: how packets of one direction of a translated
    /// flow are rewritten.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct NatBinding {
        /// New source and destination (IPv4 in the first 4 bytes), as the
        /// flags say. For ICMP echo the ports are the echo identifier.
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub sport: u16,
        pub dport: u16,
        /// `NAT_REWRITE_*`, `NAT_REVERSE`.
        pub flags: u8,
        /// 1: the binding applies to packets whose source is the key's `lo`
        /// endpoint; 0: the `hi` endpoint's.
        pub from_lo: u8,
        pub _pad16: u16,
        /// NAT counter indexes of the DNAT and SNAT entries that made the
        /// translation ([`NO_RULE`](crate::NO_RULE): none).
        pub dnat_counter: u32,
        pub snat_counter: u32,
        /// The conntrack key of the flow (its original tuple).
        pub flow: ConntrackKey,
    }
    size = 92, align = 4;
}

shared_type! {
    /// Per-NAT-entry counters (a per-CPU array by counter index).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct NatCounters {
        /// Flows translated.
        pub translations: u64,
        /// New flows dropped because no source port was free.
        pub ports_exhausted: u64,
    }
    size = 16, align = 8;
}
