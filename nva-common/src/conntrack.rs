//! Connection tracking: the flow table's key and value, states, scratch and
//! statistics.

/// Connection tracking: the state of a tracked flow. Each state has its own
/// idle timeout ([`DataPathConfig::timeouts_s`](crate::DataPathConfig::timeouts_s)).
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

shared_type! {
    /// Key of the conntrack table: the 5-tuple with its two endpoints in a fixed
    /// order (the smaller (address, port) first), so both directions of a flow
    /// find the same entry. ICMP echo uses the echo identifier as both ports.
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
    size = 44, align = 2;
}

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
    /// fields the destination, ordering the endpoints in place; returns
    /// whether the source is (still) the `lo` endpoint.
    #[inline(always)]
    pub fn normalize(&mut self, is_v6: bool, proto: u8, vlan: [u16; 2]) -> bool {
        let src_is_lo = endpoint_lt(&self.addr_lo, self.port_lo, &self.addr_hi, self.port_hi);
        if !src_is_lo {
            core::mem::swap(&mut self.addr_lo, &mut self.addr_hi);
            core::mem::swap(&mut self.port_lo, &mut self.port_hi);
        }
        self.vlan = vlan;
        self.proto = proto;
        self.family = if is_v6 { 6 } else { 4 };
        self._pad = 0;
        src_is_lo
    }
}

shared_type! {
    /// Value of the conntrack table: one tracked flow.
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
        /// Counter index of the admitting rule ([`NO_RULE`](crate::NO_RULE): the default policy).
        pub rule_counter: u32,
        /// Ingress interface of the originator's first packet: a re-check after
        /// a rule change classifies the originator's tuple as it arrived.
        pub origin_ifindex: u32,
        /// [`ConntrackState`] as u8.
        pub state: u8,
        /// 1 when the originator is the key's `lo` endpoint.
        pub origin_is_lo: u8,
        /// 1 when the flow is translated: its bindings are in the NAT map.
        pub nat: u8,
        /// `CT_FLAG_*`.
        pub flags: u8,
        pub _pad32: u32,
    }
    size = 72, align = 8;
}

impl ConntrackEntry {
    /// Whether the flow is answered, as Linux conntrack's "assured": its
    /// responder has sent, and a TCP connection is past its handshake (a
    /// SYN flood to a listening port gets SYN-ACKs, never the final ACK).
    /// The data path keeps answered flows in a table that new flows cannot
    /// evict; an imported flow counts by its state.
    #[inline(always)]
    pub fn answered(&self) -> bool {
        let responder_sent = self.packets[1] > 0 || self.flags & CT_FLAG_IMPORTED != 0;
        match ConntrackState::from_u8(self.state) {
            Some(
                ConntrackState::TcpEstablished
                | ConntrackState::TcpFinWait
                | ConntrackState::TcpCloseWait
                | ConntrackState::TcpClosing
                | ConntrackState::IcmpEcho,
            ) => responder_sent,
            Some(ConntrackState::UdpReplied) => true,
            _ => false,
        }
    }
}

shared_type! {
    /// Per-CPU scratch of the data path: what the conntrack lookup found, for
    /// the steps after classification. In a map rather than on the stack: the
    /// verifier does not track map memory, so the many conntrack outcomes do not
    /// multiply the paths it explores through the classifier. Userspace never
    /// reads it.
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
        /// `CT_NAT_*`: what NAT does with this packet.
        pub nat: u8,
        /// Tracked flow: its entry is in the unreplied table.
        pub unreplied: u8,
        /// The entry of a new flow is built here, not on the stack.
        pub new_entry: ConntrackEntry,
        /// New flow: NAT counter indexes of the deciding DNAT and SNAT atoms.
        pub dnat_counter: u32,
        pub snat_counter: u32,
        /// New flow to SNAT: the new source address and the port range.
        pub snat_to: [u8; 16],
        pub snat_ports_lo: u16,
        pub snat_ports_hi: u16,
        /// New translated flow: the key of its translated tuple, and the
        /// binding being built.
        pub reverse_key: ConntrackKey,
        pub binding: crate::nat::NatBinding,
        /// The packet's verdict (a [`PacketReason`](crate::PacketReason)
        /// number), passed through map memory so that the steps after it see
        /// one value rather than one verifier state per reason.
        pub verdict: u32,
    }
    size = 304, align = 8;
}

/// [`ConntrackEntry::flags`]: imported from the peer NVA (sync) and not
/// yet seen here; the first local packet clears it. Such flows are not
/// exported back to the peer.
pub const CT_FLAG_IMPORTED: u8 = 1;

/// [`ConntrackScratch::kind`]: classify; on allow, track the new flow.
pub const CT_FLOW_NEW: u8 = 1;
/// A flow admitted by an earlier rule set: classify the originator's tuple;
/// allow keeps it, drop revokes it.
pub const CT_FLOW_RECHECK: u8 = 2;

/// [`ConntrackScratch::nat`] bits. New flow: the translations decided for
/// it (`DNAT`, `SNAT`). Tracked flow: where the binding that rewrites this
/// packet is (`FWD`: under `key`; `REV`: under `reverse_key`, the packet's
/// own tuple). ICMP error: the binding under `key` (the quote's tuple) may
/// rewrite it (`ERR`; `src_is_lo` then tells the error's direction).
pub const CT_NAT_DNAT: u8 = 1;
pub const CT_NAT_SNAT: u8 = 2;
pub const CT_NAT_FWD: u8 = 4;
pub const CT_NAT_REV: u8 = 8;
pub const CT_NAT_ERR: u8 = 16;

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
/// Flows moved from the unreplied table to the answered one once answered
/// (a move, not a new entry).
pub const CT_STAT_PROMOTED: u32 = 4;
pub const CT_STATS: u32 = 5;
