//! Stateful NAT: DNAT decided before the rules, SNAT after them, both on a
//! flow's first packet only; the bindings that rewrite every later packet;
//! the rewriting itself with incremental checksums (RFC 1624), including
//! ICMP errors that quote a translated flow.

use aya_ebpf::maps::Array;
use aya_ebpf::programs::XdpContext;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use network_types::tcp::TcpHdr;
use network_types::udp::UdpHdr;
use nva_common::{
    ConntrackKey, ConntrackScratch, DataPathConfig, NatBinding, NatMatch, PacketReason,
    CT_FLOW_NEW, CT_NAT_DNAT, CT_NAT_ERR, CT_NAT_REV, CT_NAT_SNAT, MAX_NAT_ATOMS,
    NAT_ANY_ICMP_TYPE, NAT_PORT_TRIES, NAT_REVERSE, NAT_REWRITE_DST, NAT_REWRITE_SRC, NO_RULE,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::conntrack::{self, expired};
use crate::maps::{Tables, ACTIVE, CONFIG, CONNTRACK_SCRATCH, NAT_BINDINGS, NAT_COUNTERS};
use crate::parse::{header_mut, Packet};

/// Largest L3 offset: Ethernet and two VLAN tags.
const MAX_L3_OFFSET: usize = 22;
/// Largest L4 offset the parser accepts.
const MAX_L4_OFFSET: usize = 1024;

// ---------------------------------------------------------------- matching

#[inline(always)]
fn word(a: &[u8; 16], i: usize) -> u64 {
    // SAFETY: `i` is 0 or 1, so the 8 bytes read lie within the array; read_unaligned needs no
    // alignment (and builds the word in registers, not on the scarce stack).
    unsafe { core::ptr::read_unaligned(a.as_ptr().add(i * 8) as *const u64) }
}

#[inline(always)]
fn in_prefix(addr: &[u8; 16], net: &[u64; 2], mask: &[u64; 2]) -> bool {
    word(addr, 0) & mask[0] == net[0] && word(addr, 1) & mask[1] == net[1]
}

/// True when the atom matches the packet (as the rules would see it).
#[inline(always)]
fn atom_matches(m: &NatMatch, pkt: &Packet, ifindex: u32) -> bool {
    let family = if pkt.is_v6 { 6 } else { 4 };
    if m.family != family || (m.proto != 0 && m.proto != pkt.proto) {
        return false;
    }
    if m.ifindex != 0 && m.ifindex != ifindex {
        return false;
    }
    if pkt.sport < m.sport_lo || pkt.sport > m.sport_hi {
        return false;
    }
    if pkt.dport < m.dport_lo || pkt.dport > m.dport_hi {
        return false;
    }
    if m.icmp_type != NAT_ANY_ICMP_TYPE && m.icmp_type != pkt.icmp_type as u16 {
        return false;
    }
    in_prefix(&pkt.src, &m.src_addr, &m.src_mask) && in_prefix(&pkt.dst, &m.dst_addr, &m.dst_mask)
}

/// The scratch of a new flow that NAT may translate (tracked, first packet).
#[inline(always)]
fn new_flow_scratch() -> Option<&'static mut ConntrackScratch> {
    let flow = CONNTRACK_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and aligned
    // for the value; the scratch slot is this CPU's, XDP runs do not nest on a CPU, userspace
    // never touches it, and no other reference to it is live in the caller.
    let flow = unsafe { &mut *flow };
    (flow.kind == CT_FLOW_NEW && flow.state != 0).then_some(flow)
}

/// The first of the `count` atoms of `atoms` that matches the packet.
#[inline(always)]
fn first_match(
    atoms: &'static Array<NatMatch>,
    count: u8,
    pkt: &Packet,
    ifindex: u32,
) -> Option<&'static NatMatch> {
    for i in 0..MAX_NAT_ATOMS {
        if i >= count as u32 {
            return None;
        }
        let m = atoms.get(i)?;
        if atom_matches(m, pkt, ifindex) {
            return Some(m);
        }
    }
    None
}

/// DNAT, before the rules: the first matching DNAT atom rewrites the
/// packet's destination as the rules will see it, and is remembered for
/// the flow's entry.
#[inline(never)]
pub fn dnat<T: Tables>(pkt: &mut Packet, ifindex: u32, config: &DataPathConfig) {
    if config.nat_dnat == 0 {
        return;
    }
    let Some(flow) = new_flow_scratch() else {
        return;
    };
    if let Some(m) = first_match(T::nat_dnat(), config.nat_dnat, pkt, ifindex) {
        pkt.dst = m.to_addr;
        if m.to_port != 0 && (pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP) {
            pkt.dport = m.to_port;
        }
        flow.nat |= CT_NAT_DNAT;
        flow.dnat_counter = m.counter;
    }
}

/// SNAT, after the rules allowed a new flow: the first matching SNAT atom
/// (matched against the original source and the translated destination)
/// is remembered; the port is allocated when the flow is bound.
#[inline(never)]
pub fn snat<T: Tables>(pkt: &Packet, ifindex: u32, config: &DataPathConfig) {
    if config.nat_snat == 0 {
        return;
    }
    let Some(flow) = new_flow_scratch() else {
        return;
    };
    if let Some(m) = first_match(T::nat_snat(), config.nat_snat, pkt, ifindex) {
        flow.nat |= CT_NAT_SNAT;
        flow.snat_counter = m.counter;
        flow.snat_to = m.to_addr;
        flow.snat_ports_lo = m.to_ports_lo;
        flow.snat_ports_hi = m.to_ports_hi;
    }
}

// ---------------------------------------------------------------- binding

#[inline(always)]
fn is_echo(pkt: &Packet) -> bool {
    pkt.proto == PROTO_ICMP || pkt.proto == PROTO_ICMPV6
}

#[inline(always)]
fn count(counter: u32, exhausted: bool) {
    if let Some(c) = NAT_COUNTERS.get_ptr_mut(counter) {
        // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and
        // aligned for the value; the slot is this CPU's and XDP runs do not nest on a CPU, so
        // nothing else writes it during this run (userspace only reads it, or zeroes slots not in
        // use).
        let c = unsafe { &mut *c };
        if exhausted {
            c.ports_exhausted += 1;
        } else {
            c.translations += 1;
        }
    }
}

/// Claims `port` for a new flow: with the port in its place (`how`: bit 0,
/// the `lo` endpoint's port; bit 1, both ports, for echo identifiers),
/// `flow.reverse_key` is the flow's translated tuple. It is free when no
/// live flow replies on it: no live translated flow's reverse binding and
/// no live untranslated flow hold it. A dead flow's binding is replaced.
/// On success the reverse binding in `flow.binding` is stored under it. A
/// function of its own, so that the verifier walks it once per try.
#[inline(never)]
fn claim(flow: &mut ConntrackScratch, config: &DataPathConfig, port: u16, how: u8) -> bool {
    if how & 2 != 0 {
        flow.reverse_key.port_lo = port;
        flow.reverse_key.port_hi = port;
    } else if how & 1 != 0 {
        flow.reverse_key.port_lo = port;
    } else {
        flow.reverse_key.port_hi = port;
    }
    if let Some(e) = conntrack::get(&flow.reverse_key) {
        if !expired(e, config, flow.now) {
            return false;
        }
    }
    if NAT_BINDINGS
        .insert(
            &flow.reverse_key,
            &flow.binding,
            aya_ebpf::bindings::BPF_NOEXIST as u64,
        )
        .is_ok()
    {
        return true;
    }
    // Taken: by a live flow, or by one that is gone (its binding waits for
    // the agent's sweep).
    // SAFETY: read only, during this run (RCU keeps the element allocated).
    let live = match unsafe { NAT_BINDINGS.get(&flow.reverse_key) } {
        Some(b) => match conntrack::get(&b.flow) {
            Some(e) => e.nat != 0 && !expired(e, config, flow.now),
            None => false,
        },
        None => false,
    };
    !live
        && NAT_BINDINGS
            .insert(&flow.reverse_key, &flow.binding, 0)
            .is_ok()
}

/// Whether a new untranslated flow on tuple `key` clashes with a live
/// translated flow that leaves with that tuple (its reverse binding is
/// stored under it): let through, it would reach that flow's peer as a
/// second connection on the same addresses and ports, which the peer takes
/// for the first (a client reaching a workload both directly and through
/// DNAT can pick the same source port for both). Netfilter remaps the new
/// flow's source port; nva refuses it (`nat_clash`), and the client's next
/// try takes another port.
#[inline(never)]
pub fn clashes(key: &ConntrackKey, config: &DataPathConfig, now: u64) -> bool {
    // SAFETY: read only, during this run (RCU); bindings are never changed once inserted.
    let Some(b) = (unsafe { NAT_BINDINGS.get(key) }) else {
        return false;
    };
    if b.flags & NAT_REVERSE == 0 {
        return false;
    }
    match conntrack::get(&b.flow) {
        Some(e) => e.nat != 0 && !expired(e, config, now),
        None => false,
    }
}

/// Binds a new flow that NAT translates: builds the reverse binding,
/// picks the translated tuple (for SNAT a free source port, at most
/// `NAT_PORT_TRIES` tries from a random start) and stores the reverse
/// binding under it, then leaves the forward binding in `flow.binding`.
/// `pkt` holds the translated destination already. Returns `PassRule` or
/// the drop reason.
#[inline(never)]
fn bind(pkt: &Packet, flow: &mut ConntrackScratch, config: &DataPathConfig) -> PacketReason {
    let snat = flow.nat & CT_NAT_SNAT != 0;
    let dnat = flow.nat & CT_NAT_DNAT != 0;
    let echo = is_echo(pkt);
    let src_is_lo = flow.src_is_lo != 0;
    // The reverse binding: replies get the original tuple back (taken from
    // the flow's key: pkt.dst may be translated already).
    let b = &mut flow.binding;
    b.flags = NAT_REVERSE
        | if dnat { NAT_REWRITE_SRC } else { 0 }
        | if snat { NAT_REWRITE_DST } else { 0 };
    if src_is_lo {
        b.src = flow.key.addr_hi;
        b.sport = flow.key.port_hi;
        b.dst = flow.key.addr_lo;
        b.dport = flow.key.port_lo;
    } else {
        b.src = flow.key.addr_lo;
        b.sport = flow.key.port_lo;
        b.dst = flow.key.addr_hi;
        b.dport = flow.key.port_hi;
    }
    b._pad16 = 0;
    b.dnat_counter = if dnat { flow.dnat_counter } else { NO_RULE };
    b.snat_counter = if snat { flow.snat_counter } else { NO_RULE };
    b.flow = flow.key;
    // The translated tuple, with the original source port for now.
    let (sport, dport) = if echo {
        (pkt.icmp_id, pkt.icmp_id)
    } else {
        (pkt.sport, pkt.dport)
    };
    let new_src = if snat { &flow.snat_to } else { &pkt.src };
    let new_src_is_lo = flow.reverse_key.set_from_packet(
        pkt.is_v6, pkt.proto, pkt.vlan, new_src, sport, &pkt.dst, dport,
    );
    // Replies come from the translated destination.
    flow.binding.from_lo = (!new_src_is_lo) as u8;
    // Ports to try: SNAT of a protocol with ports walks its range (when the
    // addresses differ, the port does not change which endpoint is `lo`);
    // otherwise the one tuple there is.
    let ported = echo || pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP;
    let (lo, range, tries) =
        if snat && ported && flow.reverse_key.addr_lo != flow.reverse_key.addr_hi {
            let lo = flow.snat_ports_lo as u32;
            let range = (flow.snat_ports_hi as u32).saturating_sub(lo) + 1;
            (lo, range, NAT_PORT_TRIES)
        } else {
            (sport as u32, 1, 1)
        };
    let how = if echo { 2 } else { new_src_is_lo as u8 };
    // SAFETY: a BPF helper without arguments that returns a random number.
    let start = unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() } % range;
    let mut port = 0u16;
    let mut found = false;
    for i in 0..NAT_PORT_TRIES {
        if i >= tries {
            break;
        }
        // A range no larger than the tries is walked whole; a larger one is
        // probed at independent random places (no clustering as the range
        // fills, unlike walking on from one random place).
        let offset = if range <= NAT_PORT_TRIES {
            (start + i) % range
        } else {
            // SAFETY: a BPF helper without arguments that returns a random number.
            (unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() }) % range
        };
        port = (lo + offset) as u16;
        if claim(flow, config, port, how) {
            found = true;
            break;
        }
    }
    if !found {
        if snat {
            count(flow.snat_counter, true);
            return PacketReason::DropNatPortsExhausted;
        }
        return PacketReason::DropNatClash;
    }
    // The forward binding: the originator's packets get the new tuple.
    let b = &mut flow.binding;
    b.flags = if dnat { NAT_REWRITE_DST } else { 0 } | if snat { NAT_REWRITE_SRC } else { 0 };
    b.src = if snat { flow.snat_to } else { pkt.src };
    b.sport = port;
    b.dst = pkt.dst;
    b.dport = if echo { port } else { dport };
    b.from_lo = src_is_lo as u8;
    if dnat {
        count(flow.dnat_counter, false);
    }
    if snat {
        count(flow.snat_counter, false);
    }
    PacketReason::PassRule
}

/// The packet as the rules classify it (re-check of a translated flow):
/// the originator's packet after DNAT, before SNAT, so of this packet's
/// rewrite only a new destination applies.
#[inline(always)]
pub fn as_classified(pkt: &mut Packet, flow: &ConntrackScratch) {
    let key = if flow.nat == CT_NAT_REV {
        &flow.reverse_key
    } else {
        &flow.key
    };
    // SAFETY: read only, during this run (RCU); bindings are never changed once inserted.
    if let Some(b) = unsafe { NAT_BINDINGS.get(key) } {
        if b.flags & NAT_REWRITE_DST != 0 {
            pkt.dst = b.dst;
            if pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP {
                pkt.dport = b.dport;
            }
        }
    }
}

/// Looks a packet without a flow of its own up as the reply of a
/// translated flow: under its tuple (in `flow.key`) a reverse binding
/// names the flow. On a hit, the packet's tuple moves to
/// `flow.reverse_key`, `flow.key` becomes the flow's and `flow.nat`
/// `CT_NAT_REV`; the flow's entry is returned.
#[inline(never)]
pub fn reply_flow(
    flow: &mut ConntrackScratch,
    src_is_lo: bool,
) -> Option<(*mut nva_common::ConntrackEntry, bool)> {
    // SAFETY: read only, during this run (RCU); bindings are written whole before they are
    // inserted and never changed.
    let b = unsafe { NAT_BINDINGS.get(&flow.key) }?;
    if b.flags & NAT_REVERSE == 0 || (b.from_lo != 0) != src_is_lo {
        return None;
    }
    let entry = conntrack::lookup(&b.flow)?;
    flow.reverse_key = flow.key;
    flow.key = b.flow;
    flow.nat = CT_NAT_REV;
    Some(entry)
}

/// Undoes [`reply_flow`]: the packet is handled on its own tuple (a new
/// flow) after all.
#[inline(always)]
pub fn own_tuple(flow: &mut ConntrackScratch) {
    if flow.nat == CT_NAT_REV {
        flow.key = flow.reverse_key;
    }
    flow.nat = 0;
}

/// An ICMP error quoting a tracked translated flow (its forward binding is
/// under the quote's tuple, `flow.key`): marks it for rewriting.
#[inline(always)]
pub fn error_of_flow(flow: &mut ConntrackScratch, quote_src_is_lo: bool) {
    flow.nat = CT_NAT_ERR;
    // The error travels towards the quote's source.
    flow.src_is_lo = (!quote_src_is_lo) as u8;
}

/// An ICMP error whose quote has no flow of its own: related if the quote
/// is a translated tuple of a live flow (a reverse binding under it).
#[inline(never)]
pub fn error_of_reply(
    flow: &mut ConntrackScratch,
    config: &DataPathConfig,
    quote_src_is_lo: bool,
) -> bool {
    // SAFETY: read only, during this run (RCU); bindings are never changed once inserted.
    let Some(b) = (unsafe { NAT_BINDINGS.get(&flow.key) }) else {
        return false;
    };
    match conntrack::get(&b.flow) {
        Some(e) if e.nat != 0 && !expired(e, config, flow.now) => {
            error_of_flow(flow, quote_src_is_lo);
            true
        }
        _ => false,
    }
}

/// NAT's step once the verdict stands: returns the verdict's number,
/// after [`translate`] for the verdicts that pass a tracked packet. The
/// verdict goes through map memory first: the verifier then sees one
/// unknown value instead of one state per reason, and walks `translate`
/// once rather than once per way to reach it.
#[inline(always)]
pub fn apply(ctx: &XdpContext, pkt: &Packet, reason: PacketReason) -> u32 {
    let Some(flow) = CONNTRACK_SCRATCH.get_ptr_mut(0) else {
        return reason as u32;
    };
    // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and aligned
    // for the value; the scratch slot is this CPU's and XDP runs do not nest on a CPU. Volatile,
    // so that the compiler does not carry the value past the map.
    let code = unsafe {
        core::ptr::write_volatile(&mut (*flow).verdict, reason as u32);
        core::ptr::read_volatile(&(*flow).verdict)
    };
    if code == PacketReason::PassEstablished as u32
        || code == PacketReason::PassRelated as u32
        || code == PacketReason::PassRule as u32
        || code == PacketReason::PassDefault as u32
    {
        // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and
        // aligned for the value; the scratch slot is this CPU's, XDP runs do not nest on a CPU,
        // userspace never touches it, and no other reference to it is live.
        return translate(ctx, pkt, code, unsafe { &mut *flow });
    }
    code
}

/// Rewrites a passed packet as NAT wants it: a new flow is bound (and only
/// then tracked), a packet of a translated flow or an ICMP error quoting
/// one is rewritten by its binding. Returns `code`, or the number of the
/// drop reason when the flow cannot be bound or its binding is gone.
#[inline(never)]
fn translate(ctx: &XdpContext, pkt: &Packet, code: u32, flow: &mut ConntrackScratch) -> u32 {
    let nat = flow.nat;
    if nat == 0 {
        return code;
    }
    if nat & (CT_NAT_DNAT | CT_NAT_SNAT) != 0 {
        // The settings of the rule set that decided (or of its successor,
        // if a reload switched meanwhile: only timeouts are read).
        let slot = ACTIVE.get(0).copied().unwrap_or(0);
        let Some(config) = CONFIG.get(slot) else {
            return code;
        };
        // `pkt` holds the translated destination (DNAT was applied to it).
        let bound = bind(pkt, flow, config);
        if bound != PacketReason::PassRule {
            return bound as u32;
        }
        conntrack::insert_new(flow);
        if NAT_BINDINGS.insert(&flow.key, &flow.binding, 0).is_err() {
            return PacketReason::DropNatBindingLost as u32;
        }
        return if rewrite(ctx, pkt, &flow.binding) {
            code
        } else {
            PacketReason::DropMalformedL4 as u32
        };
    }
    let key = if nat == CT_NAT_REV {
        &flow.reverse_key
    } else {
        &flow.key
    };
    // SAFETY: read only, during this run (RCU); bindings are never changed once inserted.
    let Some(b) = (unsafe { NAT_BINDINGS.get(key) }) else {
        return PacketReason::DropNatBindingLost as u32;
    };
    let ok = if nat == CT_NAT_ERR {
        // The binding rewrites the error if it rewrites packets going its
        // way (`src_is_lo`: the error's source is the key's `lo` endpoint).
        (b.from_lo != 0) != (flow.src_is_lo != 0) || rewrite_error(ctx, pkt, b)
    } else {
        rewrite(ctx, pkt, b)
    };
    if ok {
        code
    } else {
        PacketReason::DropMalformedL4 as u32
    }
}

// ---------------------------------------------------------------- rewriting

/// Adds the change of the bytes `old` to `new` (16-bit words, network
/// order) to a checksum difference, RFC 1624: ~m + m'.
#[inline(always)]
fn diff<const N: usize>(acc: &mut u32, old: &[u8; N], new: &[u8; N]) {
    let mut i = 0;
    while i + 1 < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        *acc += (!o) as u32 + n as u32;
        i += 2;
    }
}

#[inline(always)]
fn diff16(acc: &mut u32, old: u16, new: u16) {
    *acc += (!old) as u32 + new as u32;
}

/// A checksum field after the changes summed in `acc`: HC' = ~(~HC + acc).
#[inline(always)]
fn fold(check: [u8; 2], acc: u32) -> [u8; 2] {
    let mut sum = (!u16::from_be_bytes(check)) as u32 + (acc & 0xffff) + (acc >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}

/// Replaces `field` by the first bytes of `new`, summing the change.
#[inline(always)]
fn replace<const N: usize>(acc: &mut u32, field: &mut [u8; N], new: &[u8; 16]) {
    let mut n = [0u8; N];
    n.copy_from_slice(&new[..N]);
    diff(acc, field, &n);
    *field = n;
}

/// Replaces a 16-bit field, summing the change.
#[inline(always)]
fn replace16(acc: &mut u32, field: &mut [u8; 2], new: u16) {
    diff16(acc, u16::from_be_bytes(*field), new);
    *field = new.to_be_bytes();
}

/// Folds `acc` into a checksum field; returns the change of the field
/// itself (for a checksum that covers this one). A zero UDP checksum over
/// IPv4 means "none" and stays so; a computed zero is sent as 0xffff.
#[inline(always)]
fn update(field: &mut [u8; 2], acc: u32, udp_v4: bool) -> u32 {
    if udp_v4 && *field == [0, 0] {
        return 0;
    }
    let mut new = fold(*field, acc);
    if udp_v4 && new == [0, 0] {
        new = [0xff, 0xff];
    }
    let mut change = 0;
    diff16(
        &mut change,
        u16::from_be_bytes(*field),
        u16::from_be_bytes(new),
    );
    *field = new;
    change
}

/// Rewrites the addresses of the IP header at `l3`, as `src`/`dst` say,
/// into `new_src`/`new_dst`; returns the change of the pseudo-header, or
/// None if the header is not there.
#[inline(always)]
fn rewrite_ip(ctx: &XdpContext, l3: usize, is_v6: bool, b: &NatBinding) -> Option<u32> {
    let to_src = b.flags & NAT_REWRITE_SRC != 0;
    let to_dst = b.flags & NAT_REWRITE_DST != 0;
    let (new_src, new_dst) = (&b.src, &b.dst);
    let mut acc = 0u32;
    if is_v6 {
        let ip = header_mut::<Ipv6Hdr>(ctx, l3)?;
        if to_src {
            replace(&mut acc, &mut ip.src_addr, new_src);
        }
        if to_dst {
            replace(&mut acc, &mut ip.dst_addr, new_dst);
        }
    } else {
        let ip = header_mut::<Ipv4Hdr>(ctx, l3)?;
        if to_src {
            replace(&mut acc, &mut ip.src_addr, new_src);
        }
        if to_dst {
            replace(&mut acc, &mut ip.dst_addr, new_dst);
        }
        update(&mut ip.check, acc, false);
    }
    Some(acc)
}

/// The IP and L4 header offsets of the packet, bounded for the verifier.
/// The IP offset is read again rather than kept in `Packet`: a constant per
/// VLAN depth there would split the verifier's states of the whole program
/// three ways.
#[inline(always)]
fn offsets(ctx: &XdpContext, pkt: &Packet) -> Option<(usize, usize)> {
    let mut vlan = [0u16; 2];
    let (_, l3) = crate::parse::parse_ethernet(ctx, &mut vlan).ok()?;
    let l4 = pkt.l4_off as usize;
    (l3 <= MAX_L3_OFFSET && l4 <= MAX_L4_OFFSET).then_some((l3, l4))
}

/// Rewrites a packet of a translated flow as binding `b` says: addresses,
/// ports (the identifier of an ICMP echo), and every checksum they enter.
/// False when a header is not where the parser found it (never expected).
#[inline(never)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, b: &NatBinding) -> bool {
    let Some((l3, l4)) = offsets(ctx, pkt) else {
        return false;
    };
    let src = b.flags & NAT_REWRITE_SRC != 0;
    let dst = b.flags & NAT_REWRITE_DST != 0;
    let Some(pseudo) = rewrite_ip(ctx, l3, pkt.is_v6, b) else {
        return false;
    };
    let mut acc = pseudo;
    match pkt.proto {
        PROTO_TCP => {
            let Some(tcp) = header_mut::<TcpHdr>(ctx, l4) else {
                return false;
            };
            if src {
                replace16(&mut acc, &mut tcp.source, b.sport);
            }
            if dst {
                replace16(&mut acc, &mut tcp.dest, b.dport);
            }
            update(&mut tcp.check, acc, false);
        }
        PROTO_UDP => {
            let Some(udp) = header_mut::<UdpHdr>(ctx, l4) else {
                return false;
            };
            if src {
                replace16(&mut acc, &mut udp.src, b.sport);
            }
            if dst {
                replace16(&mut acc, &mut udp.dst, b.dport);
            }
            update(&mut udp.check, acc, !pkt.is_v6);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            // Type, code, checksum, identifier. ICMP's checksum has no
            // pseudo-header; ICMPv6's has.
            let Some(icmp) = header_mut::<[[u8; 2]; 3]>(ctx, l4) else {
                return false;
            };
            if pkt.proto == PROTO_ICMP {
                acc = 0;
            }
            if src {
                replace16(&mut acc, &mut icmp[2], b.sport);
            }
            if dst {
                replace16(&mut acc, &mut icmp[2], b.dport);
            }
            update(&mut icmp[1], acc, false);
        }
        _ => {}
    }
    true
}

/// Rewrites an ICMP error that quotes a packet of a translated flow, as
/// binding `b` rewrites packets travelling the error's way: the outer
/// addresses it changes, and the quoted packet mirrored (the error goes to
/// the quote's source), with the quoted IP and L4 checksums and the ICMP
/// checksum over all of it.
#[inline(never)]
fn rewrite_error(ctx: &XdpContext, pkt: &Packet, b: &NatBinding) -> bool {
    let Some((l3, l4)) = offsets(ctx, pkt) else {
        return false;
    };
    let src = b.flags & NAT_REWRITE_SRC != 0;
    let dst = b.flags & NAT_REWRITE_DST != 0;
    let quote = l4 + 8;
    let Some(outer) = rewrite_ip(ctx, l3, pkt.is_v6, b) else {
        return false;
    };
    // The ICMP checksum covers the quote; ICMPv6's also the outer addresses.
    let mut icmp = if pkt.is_v6 { outer } else { 0 };
    // The quoted IP header (for IPv4 its checksum's change is part of the
    // ICMP message too).
    let (inner_proto, inner_l4, inner) = if pkt.is_v6 {
        let Some(ip) = header_mut::<Ipv6Hdr>(ctx, quote) else {
            return false;
        };
        let next = ip.next_hdr;
        let mut acc = 0u32;
        if src {
            replace(&mut acc, &mut ip.dst_addr, &b.src);
        }
        if dst {
            replace(&mut acc, &mut ip.src_addr, &b.dst);
        }
        icmp += acc;
        (next, quote + Ipv6Hdr::LEN, acc)
    } else {
        let Some(ip) = header_mut::<Ipv4Hdr>(ctx, quote) else {
            return false;
        };
        let ihl = ((ip.vihl & 0x0f) as usize) * 4;
        if ihl < Ipv4Hdr::LEN {
            return false;
        }
        let proto = ip.proto;
        let mut acc = 0u32;
        if src {
            replace(&mut acc, &mut ip.dst_addr, &b.src);
        }
        if dst {
            replace(&mut acc, &mut ip.src_addr, &b.dst);
        }
        icmp += acc + update(&mut ip.check, acc, false);
        (proto, quote + ihl, acc)
    };
    icmp = (icmp & 0xffff) + (icmp >> 16);
    // The quoted L4 header: ports (or the echo identifier) and, when the
    // quote includes it, its checksum.
    let mut l4acc = if inner_proto == PROTO_ICMP { 0 } else { inner };
    match inner_proto {
        PROTO_TCP | PROTO_UDP => {
            // Source port, destination port, (UDP) length and checksum.
            let Some(ports) = header_mut::<[[u8; 2]; 4]>(ctx, inner_l4) else {
                return false;
            };
            let mut change = 0u32;
            if dst {
                replace16(&mut change, &mut ports[0], b.dport);
            }
            if src {
                replace16(&mut change, &mut ports[1], b.sport);
            }
            icmp += change;
            l4acc += change;
            if inner_proto == PROTO_UDP {
                icmp += update(&mut ports[3], l4acc, !pkt.is_v6);
            } else if let Some(tcp) = header_mut::<TcpHdr>(ctx, inner_l4) {
                icmp += update(&mut tcp.check, l4acc, false);
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let Some(echo) = header_mut::<[[u8; 2]; 3]>(ctx, inner_l4) else {
                return false;
            };
            let mut change = 0u32;
            if dst {
                replace16(&mut change, &mut echo[2], b.dport);
            }
            if src {
                replace16(&mut change, &mut echo[2], b.sport);
            }
            icmp += change;
            l4acc += change;
            icmp += update(&mut echo[1], l4acc, false);
        }
        _ => {}
    }
    let Some(hdr) = header_mut::<[[u8; 2]; 2]>(ctx, l4) else {
        return false;
    };
    update(&mut hdr[1], icmp, false);
    true
}
