//! Connection tracking: two LRU hashes of flows keyed so that both directions
//! find the same entry, one for answered flows and one for flows not
//! answered yet, so that a flood of new flows cannot evict an answered
//! connection. A packet of an answered flow costs one lookup; a new flow is
//! classified and, if allowed, tracked as unreplied until it is answered (a
//! TCP connection: past its handshake), which moves it. Entries remember the rule-set generation that
//! admitted them, so a rule change re-checks each flow on its next packet.

use aya_ebpf::programs::XdpContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use network_types::tcp::TcpHdr;
use network_types::udp::UdpHdr;
use nva_common::{
    ConntrackEntry, ConntrackKey, ConntrackScratch, ConntrackState, DataPathConfig, PacketReason,
    CT_FLOW_NEW, CT_FLOW_RECHECK, CT_NAT_FWD, CT_NAT_REV, CT_PENDING_NONE, CT_PENDING_TCP_FLAGS,
    CT_PENDING_TCP_NOT_TRACKED, CT_STAT_CREATED, CT_STAT_PROMOTED, CT_STAT_REPLACED,
    CT_STAT_REVOKED, ETH_P_IP, ETH_P_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::maps::{
    CONNTRACK, CONNTRACK_SCRATCH, CONNTRACK_STATS, CONNTRACK_UNREPLIED, NAT_BINDINGS,
};
use crate::nat;

/// What [`track`] returns when the packet must be classified (it is never
/// one of its verdicts); the details are in the scratch.
pub const CLASSIFY: PacketReason = PacketReason::PassRule;
use crate::parse::{self, Packet};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Results of the TCP state machine besides a next state.
const TCP_INVALID: u8 = 0xff;
/// A SYN on the tuple of a closed connection: a new connection.
const TCP_REOPEN: u8 = 0xfe;
/// "Do not track": classify the packet, pass or drop, remember nothing.
const UNTRACKED: u8 = 0;

const SYN_SENT: u8 = ConntrackState::TcpSynSent as u8;
const SYN_RECV: u8 = ConntrackState::TcpSynRecv as u8;
const ESTABLISHED: u8 = ConntrackState::TcpEstablished as u8;
const FIN_WAIT: u8 = ConntrackState::TcpFinWait as u8;
const CLOSE_WAIT: u8 = ConntrackState::TcpCloseWait as u8;
const CLOSING: u8 = ConntrackState::TcpClosing as u8;
const CLOSED: u8 = ConntrackState::TcpClosed as u8;
const UDP_UNREPLIED: u8 = ConntrackState::UdpUnreplied as u8;
const UDP_REPLIED: u8 = ConntrackState::UdpReplied as u8;
const ICMP_ECHO: u8 = ConntrackState::IcmpEcho as u8;

/// Flag combinations no TCP segment may carry.
#[inline(always)]
fn tcp_flags_valid(flags: u8) -> bool {
    let syn = flags & TCP_SYN != 0;
    if syn && flags & (TCP_FIN | TCP_RST) != 0 {
        return false;
    }
    if flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK) == 0 {
        return false;
    }
    // FIN is always sent with ACK; FIN alone (or with PSH/URG) is a scan.
    !(flags & TCP_FIN != 0 && flags & TCP_ACK == 0)
}

/// The TCP state after a segment with `flags` from the originator (or the
/// responder), or TCP_INVALID / TCP_REOPEN.
#[inline(always)]
fn tcp_next(state: u8, from_origin: bool, flags: u8) -> u8 {
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let fin = flags & TCP_FIN != 0;
    if flags & TCP_RST != 0 {
        return CLOSED;
    }
    let half_closed = if from_origin { FIN_WAIT } else { CLOSE_WAIT };
    match state {
        SYN_SENT => {
            if syn && !ack {
                // Retransmission, or a simultaneous open from the responder.
                if from_origin {
                    SYN_SENT
                } else {
                    SYN_RECV
                }
            } else if syn && !from_origin {
                SYN_RECV
            } else {
                // Nothing but SYN-ACK can answer a SYN.
                TCP_INVALID
            }
        }
        SYN_RECV => {
            if syn {
                SYN_RECV
            } else if fin {
                half_closed
            } else if from_origin {
                ESTABLISHED
            } else {
                SYN_RECV
            }
        }
        ESTABLISHED => {
            if syn {
                // A retransmitted SYN-ACK (our ACK was lost) is harmless.
                if ack && !from_origin {
                    ESTABLISHED
                } else {
                    TCP_INVALID
                }
            } else if fin {
                half_closed
            } else {
                ESTABLISHED
            }
        }
        FIN_WAIT => {
            if syn {
                TCP_INVALID
            } else if fin && !from_origin {
                CLOSING
            } else {
                FIN_WAIT
            }
        }
        CLOSE_WAIT => {
            if syn {
                TCP_INVALID
            } else if fin && from_origin {
                CLOSING
            } else {
                CLOSE_WAIT
            }
        }
        CLOSING | CLOSED => {
            if syn && !ack {
                TCP_REOPEN
            } else if syn {
                TCP_INVALID
            } else {
                state
            }
        }
        _ => TCP_INVALID,
    }
}

// ---------------------------------------------------------------- the tables

/// The entry under `key` for writing, answered flows first, and whether it
/// is in the unreplied table.
#[inline(always)]
pub fn lookup(key: &ConntrackKey) -> Option<(*mut ConntrackEntry, bool)> {
    if let Some(e) = CONNTRACK.get_ptr_mut(key) {
        return Some((e, false));
    }
    CONNTRACK_UNREPLIED.get_ptr_mut(key).map(|e| (e, true))
}

/// The entry under `key`, for reading during this run.
#[inline(always)]
pub fn get(key: &ConntrackKey) -> Option<&'static ConntrackEntry> {
    // SAFETY: read only, during this run: RCU keeps an element allocated until the run ends, even
    // if it is evicted or removed meanwhile; a concurrent update can only make a reader see newer
    // counters or timestamps.
    unsafe { CONNTRACK.get(key).or_else(|| CONNTRACK_UNREPLIED.get(key)) }
}

/// Moves a flow that is now answered ([`ConntrackEntry::answered`]) to the
/// answered table. If the copy cannot be stored the flow stays where it is.
#[inline(always)]
fn promote(key: &ConntrackKey, entry: *const ConntrackEntry) {
    // SAFETY: `entry` comes from a successful lookup in this run, so RCU keeps it valid; the map
    // update copies it whole.
    let e = unsafe { &*entry };
    if CONNTRACK.insert(key, e, 0).is_ok() {
        let _ = CONNTRACK_UNREPLIED.remove(key);
        count(CT_STAT_PROMOTED);
    }
}

/// Forgets a flow, wherever it is; true if there was one.
#[inline(always)]
fn remove(key: &ConntrackKey) -> bool {
    let replied = CONNTRACK.remove(key).is_ok();
    CONNTRACK_UNREPLIED.remove(key).is_ok() || replied
}

/// True when the entry has been idle longer than its state's timeout.
#[inline(always)]
pub fn expired(entry: &ConntrackEntry, config: &DataPathConfig, now: u64) -> bool {
    let timeout_s = config
        .timeouts_s
        .get(entry.state as usize)
        .copied()
        .unwrap_or(0) as u64;
    // Another CPU may have stored a later time than our `now`.
    now.saturating_sub(entry.last_seen_ns) > timeout_s * 1_000_000_000
}

/// Looks the packet's flow up and runs its state machine. Returns the
/// verdict of a tracked flow, or [`CLASSIFY`] with the details in the
/// per-CPU scratch (including a drop that waits for the management check). A
/// function of its own: its stack frame is not live while the classifier
/// runs.
#[inline(never)]
pub fn track(ctx: &XdpContext, pkt: &Packet, config: &DataPathConfig) -> PacketReason {
    let Some(flow) = CONNTRACK_SCRATCH.get_ptr_mut(0) else {
        return PacketReason::PassNotReady;
    };
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and aligned
    // for the value; the scratch slot is this CPU's, XDP runs do not nest on a CPU, and userspace
    // never touches it.
    let flow = unsafe { &mut *flow };
    flow.kind = CT_FLOW_NEW;
    flow.state = UNTRACKED;
    flow.nat = 0;
    flow.unreplied = 0;
    if config.stateful == 0 {
        return CLASSIFY;
    }
    // SAFETY: a BPF helper without arguments that only reads a clock.
    flow.now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    flow.replaced = 0;
    flow.pending_drop = CT_PENDING_NONE;
    let mut new_state = UDP_UNREPLIED;
    let (sport, dport) = match pkt.proto {
        PROTO_TCP => {
            if !tcp_flags_valid(pkt.tcp_flags) {
                flow.pending_drop = CT_PENDING_TCP_FLAGS;
                return CLASSIFY;
            }
            new_state = if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                SYN_SENT
            } else if config.loose_tcp != 0 {
                // Mid-stream: pick the connection up (a RST only passes).
                if pkt.tcp_flags & TCP_RST == 0 {
                    ESTABLISHED
                } else {
                    UNTRACKED
                }
            } else {
                TCP_INVALID
            };
            (pkt.sport, pkt.dport)
        }
        PROTO_UDP => (pkt.sport, pkt.dport),
        PROTO_ICMP | PROTO_ICMPV6 => {
            if parse::is_icmp_error(pkt) {
                return related(ctx, pkt, config, flow);
            }
            let (request, reply) = if pkt.is_v6 {
                (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)
            } else {
                (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
            };
            flow.origin_icmp_type = request;
            if pkt.icmp_type == request {
                new_state = ICMP_ECHO;
            } else if pkt.icmp_type == reply {
                // An unsolicited reply is classified, never tracked.
                new_state = UNTRACKED;
            } else {
                return CLASSIFY;
            }
            (pkt.icmp_id, pkt.icmp_id)
        }
        // Other protocols: one flow per address pair and protocol.
        _ => (0, 0),
    };
    let src_is_lo = flow.key.set_from_packet(
        pkt.is_v6, pkt.proto, pkt.vlan, &pkt.src, sport, &pkt.dst, dport,
    );
    flow.src_is_lo = src_is_lo as u8;
    let mut entry = lookup(&flow.key);
    if entry.is_none() && config.nat_bindings != 0 {
        // Perhaps a reply of a translated flow (then flow.nat = CT_NAT_REV
        // and flow.key is the flow's).
        entry = nat::reply_flow(flow, src_is_lo);
    }
    if let Some((entry, unreplied)) = entry {
        // SAFETY: the pointer comes from a successful lookup and stays valid for this run (RCU),
        // even if the entry is evicted meanwhile; another CPU may update the same flow at once, the
        // accepted race of per-flow state in BPF: at worst an increment or a timestamp is lost.
        let e = unsafe { &mut *entry };
        flow.unreplied = unreplied as u8;
        if expired(e, config, flow.now) {
            nat::own_tuple(flow);
            flow.replaced = 1;
        } else {
            let from_origin = flow.nat != CT_NAT_REV && src_is_lo == (e.origin_is_lo != 0);
            // Echo requests belong to the originator, replies to the
            // responder: the other way round is another exchange, which
            // the rules decide without disturbing this one.
            if (pkt.proto == PROTO_ICMP || pkt.proto == PROTO_ICMPV6)
                && (new_state == ICMP_ECHO) != from_origin
            {
                nat::own_tuple(flow);
                return CLASSIFY;
            }
            let next = match pkt.proto {
                PROTO_TCP => tcp_next(e.state, from_origin, pkt.tcp_flags),
                PROTO_ICMP | PROTO_ICMPV6 => e.state,
                _ if !from_origin => UDP_REPLIED,
                _ => e.state,
            };
            if next == TCP_INVALID {
                return PacketReason::DropTcpState;
            }
            if next == TCP_REOPEN {
                nat::own_tuple(flow);
                flow.state = SYN_SENT;
                flow.replaced = 1;
                return CLASSIFY;
            }
            // A translated flow's packet from its originator: rewritten by
            // the forward binding once the verdict stands.
            if e.nat != 0 && from_origin {
                flow.nat = CT_NAT_FWD;
            }
            if e.generation != config.generation {
                flow.kind = CT_FLOW_RECHECK;
                flow.state = next;
                flow.src_is_lo = from_origin as u8;
                flow.origin_ifindex = e.origin_ifindex;
                return CLASSIFY;
            }
            refresh(e, next, from_origin, packet_len(ctx), flow.now);
            if unreplied && e.answered() {
                promote(&flow.key, entry);
            }
            return PacketReason::PassEstablished;
        }
    }
    if new_state == TCP_INVALID {
        flow.pending_drop = CT_PENDING_TCP_NOT_TRACKED;
        return CLASSIFY;
    }
    flow.state = new_state;
    CLASSIFY
}

/// A drop `track` decided, due once the management failsafe has passed
/// what it passes.
#[inline(always)]
pub fn pending_drop() -> Option<PacketReason> {
    match CONNTRACK_SCRATCH.get(0)?.pending_drop {
        CT_PENDING_TCP_FLAGS => Some(PacketReason::DropTcpFlags),
        CT_PENDING_TCP_NOT_TRACKED => Some(PacketReason::DropTcpNotTracked),
        _ => None,
    }
}

/// Prepares `pkt` for classification and returns the ingress interface to
/// classify it as. A re-check classifies the originator's packet: a reply is
/// turned around in place. Everything it writes comes from the scratch map,
/// which the verifier does not track, so every path reaches the classifier
/// in the same verifier state.
#[inline(never)]
pub fn classify_as_origin(ctx: &XdpContext, pkt: &mut Packet) -> u32 {
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(flow) = CONNTRACK_SCRATCH.get(0) else {
        return ingress;
    };
    if flow.kind != CT_FLOW_RECHECK {
        return ingress;
    }
    // The rules saw the originator's packet after DNAT and before SNAT:
    // of this packet's rewrite, only the destination's applies.
    if flow.nat != 0 {
        nat::as_classified(pkt, flow);
    }
    if flow.src_is_lo == 0 {
        core::mem::swap(&mut pkt.src, &mut pkt.dst);
        core::mem::swap(&mut pkt.sport, &mut pkt.dport);
        pkt.icmp_type = flow.origin_icmp_type;
    }
    flow.origin_ifindex
}

/// An ICMP error passes as related when the flow it quotes is tracked; if
/// that flow is translated, the error is translated with it.
#[inline(always)]
fn related(
    ctx: &XdpContext,
    pkt: &Packet,
    config: &DataPathConfig,
    flow: &mut ConntrackScratch,
) -> PacketReason {
    let Some(quote_src_is_lo) = parse::icmp_quote_key(ctx, pkt, &mut flow.key) else {
        return CLASSIFY;
    };
    match get(&flow.key) {
        Some(entry) if !expired(entry, config, flow.now) => {
            if entry.nat != 0 {
                nat::error_of_flow(flow, quote_src_is_lo);
            }
            PacketReason::PassRelated
        }
        None if config.nat_bindings != 0 && nat::error_of_reply(flow, config, quote_src_is_lo) => {
            PacketReason::PassRelated
        }
        _ => CLASSIFY,
    }
}

#[inline(always)]
pub fn packet_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// Records a packet of a live flow. Counters may lose an update when both
/// directions run on two CPUs at once; they are statistics, not policy.
#[inline(always)]
fn refresh(e: &mut ConntrackEntry, state: u8, from_origin: bool, len: u64, now: u64) {
    e.state = state;
    e.last_seen_ns = now;
    // An imported flow is this NVA's own from its first packet here.
    e.flags = 0;
    let dir = if from_origin { 0 } else { 1 };
    e.packets[dir] += 1;
    e.bytes[dir] += len;
}

#[inline(always)]
fn count(stat: u32) {
    if let Some(c) = CONNTRACK_STATS.get_ptr_mut(stat) {
        // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and
        // aligned for the value; the slot is this CPU's and XDP runs do not nest on a CPU, so
        // nothing else writes it during this run (userspace only reads it, or zeroes slots not in
        // use).
        unsafe { *c += 1 };
    }
}

/// Completes the conntrack step once the rules have spoken (`reason`, and
/// `counter`, the counter index of the deciding rule or NO_RULE). Without
/// `policy.stateful`, the scratch says "do not track" and this returns
/// `reason`.
#[inline(never)]
pub fn after_classify(
    ctx: &XdpContext,
    reason: PacketReason,
    counter: u32,
    config: &DataPathConfig,
) -> PacketReason {
    let Some(flow) = CONNTRACK_SCRATCH.get_ptr_mut(0) else {
        return reason;
    };
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and aligned
    // for the value; the scratch slot is this CPU's, XDP runs do not nest on a CPU, and userspace
    // never touches it.
    let flow: &mut ConntrackScratch = unsafe { &mut *flow };
    if flow.kind == CT_FLOW_RECHECK {
        if !reason.is_pass() {
            if remove(&flow.key) {
                count(CT_STAT_REVOKED);
            }
            // The reverse binding, now dead, is reclaimed by the agent's sweep.
            let _ = NAT_BINDINGS.remove(&flow.key);
            return PacketReason::DropRevoked;
        }
        // Looked up again rather than carried across the classifier.
        if let Some((entry, unreplied)) = lookup(&flow.key) {
            // SAFETY: the pointer comes from a successful lookup and stays valid for this run
            // (RCU), even if the entry is evicted meanwhile; another CPU may update the same flow
            // at once, the accepted race of per-flow state in BPF: at worst an increment or a
            // timestamp is lost.
            let e = unsafe { &mut *entry };
            e.generation = config.generation;
            e.rule_counter = counter;
            refresh(
                e,
                flow.state,
                flow.src_is_lo != 0,
                packet_len(ctx),
                flow.now,
            );
            if unreplied && e.answered() {
                promote(&flow.key, entry);
            }
        }
        return PacketReason::PassEstablished;
    }
    if flow.state != UNTRACKED && reason.is_pass() {
        let len = packet_len(ctx);
        let e = &mut flow.new_entry;
        e.created_ns = flow.now;
        e.last_seen_ns = flow.now;
        e.generation = config.generation;
        e.packets = [1, 0];
        e.bytes = [len, 0];
        e.rule_counter = counter;
        e.origin_ifindex = ctx.ingress_ifindex() as u32;
        e.state = flow.state;
        e.origin_is_lo = flow.src_is_lo;
        e.nat = (flow.nat != 0) as u8;
        e.flags = 0;
        e._pad32 = 0;
        if flow.nat == 0 && config.nat_bindings != 0 && nat::clashes(&flow.key, config, flow.now) {
            return PacketReason::DropNatClash;
        }
        // A flow to translate is tracked once it is bound (`nat::apply`).
        if flow.nat == 0 {
            insert_new(flow);
        }
    } else {
        flow.nat = 0;
    }
    reason
}

/// Tracks the new flow built in the scratch (a translated one, once bound),
/// as unreplied.
#[inline(always)]
pub fn insert_new(flow: &ConntrackScratch) {
    if flow.replaced != 0 {
        // The entry it replaces may be an answered one: gone with it, or
        // its stale state would shadow the new flow.
        let _ = CONNTRACK.remove(&flow.key);
    }
    if CONNTRACK_UNREPLIED
        .insert(&flow.key, &flow.new_entry, 0)
        .is_ok()
    {
        count(CT_STAT_CREATED);
        if flow.replaced != 0 {
            count(CT_STAT_REPLACED);
        }
    }
}

// ---------------------------------------------------------------- the lean path

/// The lean path of an answered flow's ordinary packet, tried before the
/// full parse: an untagged IPv4 (without options) or IPv6 (without
/// extension headers) packet, not a later fragment, carrying a TCP segment
/// without SYN, FIN or RST of an established connection, or a datagram of a
/// replied UDP flow. Headers are read straight from the frame, with exactly
/// the full parser's checks for that shape; the key is built in place; one
/// lookup in the answered table, the expiry check and the flow's counters.
/// Anything else (another shape, a miss, another state, a translated or
/// imported flow, a re-check due, a malformed header) returns None, and the
/// full path decides it, with the outcome this path gives where both apply.
#[inline(never)]
pub fn lean(ctx: &XdpContext, config: &DataPathConfig) -> Option<PacketReason> {
    if config.stateful == 0 {
        return None;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut key = WordKey {
        key: ConntrackKey::default(),
        _tail: 0,
    };
    let (src, dst, l4_off) = match read_be16(ctx, 12)? {
        ETH_P_IP => {
            let ip = parse::ptr_at::<Ipv4Hdr>(ctx, 14)?;
            // SAFETY: ptr_at checked that the header lies within the frame, and Ipv4Hdr needs no
            // alignment.
            let ip = unsafe { &*ip };
            let total_len = u16::from_be_bytes(ip.tot_len) as usize;
            // IHL 5 only; the full parser's checks: whole datagram present,
            // not a later fragment.
            if ip.vihl != 0x45
                || total_len < 20
                || data + 14 + total_len > end
                || u16::from_be_bytes(ip.frags) & 0x1fff != 0
            {
                return None;
            }
            key.key.proto = ip.proto;
            key.key.family = 4;
            let (s, d) = (
                u32::from_be_bytes(ip.src_addr),
                u32::from_be_bytes(ip.dst_addr),
            );
            (((s as u64) << 32, 0), ((d as u64) << 32, 0), 34)
        }
        ETH_P_IPV6 => {
            let ip = parse::ptr_at::<Ipv6Hdr>(ctx, 14)?;
            // SAFETY: ptr_at checked that the header lies within the frame, and Ipv6Hdr needs no
            // alignment.
            let ip = unsafe { &*ip };
            let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
            if ip.vcf[0] >> 4 != 6 || data + 54 + payload_len > end {
                return None;
            }
            key.key.proto = ip.next_hdr;
            key.key.family = 6;
            let word = |a: &[u8; 16], i: usize| {
                u64::from_be_bytes([
                    a[i],
                    a[i + 1],
                    a[i + 2],
                    a[i + 3],
                    a[i + 4],
                    a[i + 5],
                    a[i + 6],
                    a[i + 7],
                ])
            };
            let (s, d) = (&ip.src_addr, &ip.dst_addr);
            ((word(s, 0), word(s, 8)), (word(d, 0), word(d, 8)), 54)
        }
        _ => return None,
    };
    let want = match key.key.proto {
        PROTO_TCP => {
            let tcp = parse::ptr_at::<TcpHdr>(ctx, l4_off)?;
            // SAFETY: ptr_at checked that the header lies within the frame, and TcpHdr needs no
            // alignment.
            let tcp = unsafe { &*tcp };
            let data_off = (tcp.doff() as usize) * 4;
            // The raw flags byte is the parser's `tcp_flags` (FIN bit 0 … CWR bit 7).
            let flags = read_u8(ctx, l4_off + 13)?;
            if data_off < TcpHdr::LEN
                || data + l4_off + data_off > end
                || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK) != TCP_ACK
            {
                return None;
            }
            ESTABLISHED
        }
        PROTO_UDP => {
            parse::ptr_at::<UdpHdr>(ctx, l4_off)?;
            UDP_REPLIED
        }
        _ => return None,
    };
    let sport = read_be16(ctx, l4_off)?;
    let dport = read_be16(ctx, l4_off + 2)?;
    let src_is_lo = key.fill(src, sport, dst, dport);
    let entry = CONNTRACK.get_ptr_mut(&key.key)?;
    // SAFETY: the pointer comes from a successful lookup and stays valid for this run (RCU), even
    // if the entry is evicted meanwhile; another CPU may update the same flow at once, the
    // accepted race of per-flow state in BPF: at worst an increment or a timestamp is lost.
    let e = unsafe { &mut *entry };
    if e.state != want || e.nat != 0 || e.flags != 0 || e.generation != config.generation {
        return None;
    }
    // SAFETY: a BPF helper without arguments that only reads a clock.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    if expired(e, config, now) {
        return None;
    }
    let dir = (src_is_lo != (e.origin_is_lo != 0)) as usize & 1;
    e.last_seen_ns = now;
    e.packets[dir] += 1;
    e.bytes[dir] += (end - data) as u64;
    Some(PacketReason::PassEstablished)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    let p = parse::ptr_at::<[u8; 2]>(ctx, off)?;
    // SAFETY: ptr_at checked that the bytes lie within the frame; a byte array needs no alignment.
    Some(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    let p = parse::ptr_at::<u8>(ctx, off)?;
    // SAFETY: ptr_at checked that the byte lies within the frame.
    Some(unsafe { *p })
}

/// A conntrack key on the stack, 8-aligned so that its addresses are
/// written as whole words.
#[repr(C, align(8))]
struct WordKey {
    key: ConntrackKey,
    _tail: u32,
}

const _: () = assert!(core::mem::offset_of!(ConntrackKey, addr_lo) == 0);
const _: () = assert!(core::mem::offset_of!(ConntrackKey, addr_hi) == 16);

impl WordKey {
    /// Completes the key of the flow from `src` to `dst` (addresses as two
    /// big-endian words each) as [`ConntrackKey::set_from_packet`] does (the
    /// smaller endpoint first, no VLAN), a word at a time; returns whether
    /// the source is the `lo` endpoint.
    #[inline(always)]
    fn fill(&mut self, src: (u64, u64), sport: u16, dst: (u64, u64), dport: u16) -> bool {
        let src_is_lo = if src.0 != dst.0 {
            src.0 < dst.0
        } else if src.1 != dst.1 {
            src.1 < dst.1
        } else {
            sport < dport
        };
        let (lo, hi, port_lo, port_hi) = if src_is_lo {
            (src, dst, sport, dport)
        } else {
            (dst, src, dport, sport)
        };
        let words = self as *mut WordKey as *mut u64;
        // SAFETY: the struct is 8-aligned and `addr_lo`, `addr_hi` are its first 32 bytes
        // (asserted above): four aligned u64 writes within it.
        unsafe {
            *words = lo.0.to_be();
            *words.add(1) = lo.1.to_be();
            *words.add(2) = hi.0.to_be();
            *words.add(3) = hi.1.to_be();
        }
        self.key.port_lo = port_lo;
        self.key.port_hi = port_hi;
        src_is_lo
    }
}
