//! Header parsers: one small, bounded function per header. Each returns the
//! drop reason of a truncated or malformed header instead of aborting.

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use network_types::tcp::TcpHdr;
use network_types::udp::UdpHdr;
use network_types::vlan::VlanHdr;
use nva_common::{
    ConntrackKey, PacketReason, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

// Header layouts come from network-types; the parsers below read them
// through bounds-checked pointers. Ipv4Hdr, Ipv6Hdr, TcpHdr and UdpHdr are
// byte arrays and bytes (alignment 1): a reference to them in the packet is
// sound at any offset. EthHdr and VlanHdr hold a u16 and are read by offset.
const ETH_HDR_LEN: usize = EthHdr::LEN;
const ETH_TYPE_OFFSET: usize = core::mem::offset_of!(EthHdr, ether_type);
const VLAN_HDR_LEN: usize = VlanHdr::LEN;
const IPV4_HDR_LEN: usize = Ipv4Hdr::LEN;
const IPV6_HDR_LEN: usize = Ipv6Hdr::LEN;
const _: () = assert!(core::mem::align_of::<Ipv4Hdr>() == 1);
const _: () = assert!(core::mem::align_of::<Ipv6Hdr>() == 1);
const _: () = assert!(core::mem::align_of::<TcpHdr>() == 1);
const _: () = assert!(core::mem::align_of::<UdpHdr>() == 1);
/// Extension headers walked at most; a longer chain is dropped, since the
/// upper-layer header (and its ports) could not be reached.
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Offsets past this are not followed (keeps the verifier's ranges small;
/// no legitimate header chain is this long).
const MAX_L4_OFFSET: usize = 1024;

/// What the classifier needs from a packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub is_v6: bool,
    /// Addresses; IPv4 uses the first 4 bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    /// True for a non-first fragment: no L4 header, ports are unknown.
    pub later_fragment: bool,
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10).
    pub tcp_flags: u8,
    /// Identifier of an ICMP echo request or reply.
    pub icmp_id: u16,
    /// VLAN ids, outer then inner (0: no tag).
    pub vlan: [u16; 2],
    /// Offset of the L4 header (where an ICMP error's quote starts + 8).
    pub l4_off: u16,
}

pub enum Parsed {
    NonIp,
    Ip(Packet),
}

/// Bounds-checked pointer to a `T` at `offset` in the packet.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The header of type `T` at `off`, writable. Fields are then reached
/// through this one pointer: pointers rebuilt from offsets lose the bounds
/// check in the verifier's eyes.
// The frame's bytes are not borrowed from `ctx` (which only locates them):
// a shared context hands out the one writable view of a header at a time.
#[allow(clippy::mut_from_ref)]
#[inline(always)]
pub fn header_mut<T>(ctx: &XdpContext, off: usize) -> Option<&mut T> {
    let p = ptr_at::<T>(ctx, off)? as *mut T;
    // SAFETY: ptr_at checked that the bytes lie within the packet (data..data_end); the types
    // used here are byte arrays or network-types headers of alignment 1; XDP owns the frame's
    // bytes during this run and nothing else references them.
    Some(unsafe { &mut *p })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    // SAFETY: ptr_at checked that these bytes lie within the packet (data..data_end), and a byte
    // array needs no alignment.
    ptr_at::<[u8; 2]>(ctx, offset).map(|p| u16::from_be_bytes(unsafe { *p }))
}

/// Ethernet and up to two VLAN tags: returns (ethertype, L3 offset).
#[inline(always)]
pub fn parse_ethernet(ctx: &XdpContext, vlan: &mut [u16; 2]) -> Result<(u16, usize), PacketReason> {
    let mut proto = read_be16(ctx, ETH_TYPE_OFFSET).ok_or(PacketReason::DropMalformedEthernet)?;
    let mut off = ETH_HDR_LEN;
    // Two tags at most (802.1ad outer, 802.1Q inner); a third is refused.
    for tag in vlan.iter_mut() {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            return Ok((proto, off));
        }
        *tag = read_be16(ctx, off).ok_or(PacketReason::DropMalformedEthernet)? & 0x0fff;
        proto = read_be16(ctx, off + 2).ok_or(PacketReason::DropMalformedEthernet)?;
        off += VLAN_HDR_LEN;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(PacketReason::DropVlanTooDeep);
    }
    Ok((proto, off))
}

/// IPv4 with options. Returns the L4 offset.
#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<usize, PacketReason> {
    let hdr = ptr_at::<Ipv4Hdr>(ctx, off).ok_or(PacketReason::DropMalformedIpv4)?;
    // SAFETY: ptr_at checked that the header lies within the packet
    // (data..data_end), and Ipv4Hdr needs no alignment.
    let hdr = unsafe { &*hdr };
    let version = hdr.vihl >> 4;
    let hdr_len = ((hdr.vihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes(hdr.tot_len) as usize;
    if version != 4 || hdr_len < IPV4_HDR_LEN || total_len < hdr_len {
        return Err(PacketReason::DropMalformedIpv4);
    }
    // The whole datagram must be present: a frame cut short is malformed.
    if ctx.data() + off + total_len > ctx.data_end() {
        return Err(PacketReason::DropMalformedIpv4);
    }
    let frag = u16::from_be_bytes(hdr.frags);
    pkt.later_fragment = frag & 0x1fff != 0;
    pkt.proto = hdr.proto;
    pkt.src[..4].copy_from_slice(&hdr.src_addr);
    pkt.dst[..4].copy_from_slice(&hdr.dst_addr);
    Ok(off + hdr_len)
}

/// IPv6 and its extension headers (hop-by-hop, routing, destination options,
/// fragment, AH). Returns the L4 offset.
#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<usize, PacketReason> {
    let hdr = ptr_at::<Ipv6Hdr>(ctx, off).ok_or(PacketReason::DropMalformedIpv6)?;
    // SAFETY: ptr_at checked that the header lies within the packet
    // (data..data_end), and Ipv6Hdr needs no alignment.
    let hdr = unsafe { &*hdr };
    if hdr.vcf[0] >> 4 != 6 {
        return Err(PacketReason::DropMalformedIpv6);
    }
    let payload_len = u16::from_be_bytes(hdr.payload_len) as usize;
    if ctx.data() + off + IPV6_HDR_LEN + payload_len > ctx.data_end() {
        return Err(PacketReason::DropMalformedIpv6);
    }
    pkt.src.copy_from_slice(&hdr.src_addr);
    pkt.dst.copy_from_slice(&hdr.dst_addr);
    let mut next = hdr.next_hdr;
    let mut off = off + IPV6_HDR_LEN;
    // One more round than headers: the last one finds the upper layer.
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        if off > MAX_L4_OFFSET {
            return Err(PacketReason::DropIpv6ExtTooDeep);
        }
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet
            // units, not counting the first 8.
            0 | 43 | 60 => {
                let ext = ptr_at::<[u8; 2]>(ctx, off).ok_or(PacketReason::DropMalformedIpv6)?;
                // SAFETY: ptr_at checked that these bytes lie within the packet (data..data_end),
                // and a byte array needs no alignment.
                let ext = unsafe { *ext };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
            }
            // Fragment: fixed 8 octets; a non-first fragment ends the walk.
            44 => {
                let ext = ptr_at::<[u8; 8]>(ctx, off).ok_or(PacketReason::DropMalformedIpv6)?;
                // SAFETY: ptr_at checked that these bytes lie within the packet (data..data_end),
                // and a byte array needs no alignment.
                let ext = unsafe { *ext };
                next = ext[0];
                off += 8;
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    pkt.later_fragment = true;
                    pkt.proto = next;
                    return Ok(off);
                }
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let ext = ptr_at::<[u8; 2]>(ctx, off).ok_or(PacketReason::DropMalformedIpv6)?;
                // SAFETY: ptr_at checked that these bytes lie within the packet (data..data_end),
                // and a byte array needs no alignment.
                let ext = unsafe { *ext };
                next = ext[0];
                off += (ext[1] as usize + 2) * 4;
            }
            _ => {
                pkt.proto = next;
                return Ok(off);
            }
        }
    }
    Err(PacketReason::DropIpv6ExtTooDeep)
}

/// TCP, UDP, ICMP, ICMPv6: reads ports or the ICMP type at `off`.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, pkt: &mut Packet) -> Result<(), PacketReason> {
    if off > MAX_L4_OFFSET {
        return Err(PacketReason::DropMalformedL4);
    }
    match pkt.proto {
        PROTO_TCP => {
            let hdr = ptr_at::<TcpHdr>(ctx, off).ok_or(PacketReason::DropMalformedL4)?;
            // SAFETY: ptr_at checked that the header lies within the packet
            // (data..data_end), and TcpHdr needs no alignment.
            let hdr = unsafe { &*hdr };
            let data_off = (hdr.doff() as usize) * 4;
            if data_off < TcpHdr::LEN || ctx.data() + off + data_off > ctx.data_end() {
                return Err(PacketReason::DropMalformedL4);
            }
            pkt.sport = u16::from_be_bytes(hdr.source);
            pkt.dport = u16::from_be_bytes(hdr.dest);
            pkt.tcp_flags = (hdr.fin()
                | hdr.syn() << 1
                | hdr.rst() << 2
                | hdr.psh() << 3
                | hdr.ack() << 4
                | hdr.urg() << 5
                | hdr.ece() << 6
                | hdr.cwr() << 7) as u8;
        }
        PROTO_UDP => {
            let hdr = ptr_at::<UdpHdr>(ctx, off).ok_or(PacketReason::DropMalformedL4)?;
            // SAFETY: ptr_at checked that the header lies within the packet
            // (data..data_end), and UdpHdr needs no alignment.
            let hdr = unsafe { &*hdr };
            pkt.sport = u16::from_be_bytes(hdr.src);
            pkt.dport = u16::from_be_bytes(hdr.dst);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            // Type, code, checksum.
            let hdr = ptr_at::<[u8; 4]>(ctx, off).ok_or(PacketReason::DropMalformedL4)?;
            // SAFETY: ptr_at checked that these bytes lie within the packet (data..data_end), and a
            // byte array needs no alignment.
            pkt.icmp_type = unsafe { (*hdr)[0] };
            // Echo identifier (in the rest-of-header word).
            if let Some(id) = read_be16(ctx, off + 4) {
                pkt.icmp_id = id;
            }
        }
        _ => {}
    }
    pkt.l4_off = off as u16;
    Ok(())
}

/// True for the ICMP/ICMPv6 errors that quote the packet that caused them:
/// destination unreachable, packet too big, time exceeded, parameter problem.
#[inline(always)]
pub fn is_icmp_error(pkt: &Packet) -> bool {
    if pkt.is_v6 {
        pkt.proto == PROTO_ICMPV6 && (1..=4).contains(&pkt.icmp_type)
    } else {
        pkt.proto == PROTO_ICMP && matches!(pkt.icmp_type, 3 | 11 | 12)
    }
}

/// Fills `key` with the flow quoted by an ICMP error: the IP header after
/// the 8-byte ICMP header and the first 8 bytes of its L4 header (all an
/// error must carry). IPv6 extension headers in the quote are not walked.
/// Writes into `key` (map memory) rather than the stack: stack is scarce.
/// Returns whether the quoted packet's source is the key's `lo` endpoint.
#[inline(always)]
pub fn icmp_quote_key(ctx: &XdpContext, pkt: &Packet, key: &mut ConntrackKey) -> Option<bool> {
    let off = pkt.l4_off as usize;
    if off > MAX_L4_OFFSET {
        return None;
    }
    let off = off + 8;
    let (proto, inner_l4) = if pkt.is_v6 {
        let hdr = ptr_at::<Ipv6Hdr>(ctx, off)?;
        // SAFETY: ptr_at checked that the header lies within the packet
        // (data..data_end), and Ipv6Hdr needs no alignment.
        let hdr = unsafe { &*hdr };
        if hdr.vcf[0] >> 4 != 6 {
            return None;
        }
        key.addr_lo = hdr.src_addr;
        key.addr_hi = hdr.dst_addr;
        (hdr.next_hdr, off + IPV6_HDR_LEN)
    } else {
        let hdr = ptr_at::<Ipv4Hdr>(ctx, off)?;
        // SAFETY: ptr_at checked that the header lies within the packet
        // (data..data_end), and Ipv4Hdr needs no alignment.
        let hdr = unsafe { &*hdr };
        let hdr_len = ((hdr.vihl & 0x0f) as usize) * 4;
        if hdr.vihl >> 4 != 4 || hdr_len < IPV4_HDR_LEN {
            return None;
        }
        key.addr_lo = [0; 16];
        key.addr_hi = [0; 16];
        key.addr_lo[..4].copy_from_slice(&hdr.src_addr);
        key.addr_hi[..4].copy_from_slice(&hdr.dst_addr);
        (hdr.proto, off + hdr_len)
    };
    let l4 = ptr_at::<[u8; 8]>(ctx, inner_l4)?;
    // SAFETY: ptr_at checked that these bytes lie within the packet (data..data_end), and a byte
    // array needs no alignment.
    let l4 = unsafe { &*l4 };
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        // A quoted echo request or reply: tracked by its identifier.
        PROTO_ICMP | PROTO_ICMPV6 => {
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    // The quoted source and destination sit in addr_lo and addr_hi for now;
    // order them like any key.
    key.port_lo = sport;
    key.port_hi = dport;
    Some(key.normalize(pkt.is_v6, proto, pkt.vlan))
}

/// Parses the frame up to the L4 header.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, PacketReason> {
    let mut pkt = Packet::EMPTY;
    if parse_into(ctx, &mut pkt)? {
        Ok(Parsed::Ip(pkt))
    } else {
        Ok(Parsed::NonIp)
    }
}

impl Packet {
    /// Every field folded into one word, for the parse-and-pass baseline.
    #[inline(always)]
    pub fn fold(&self) -> u64 {
        let word = |a: &[u8; 16], i: usize| {
            // SAFETY: `i` is 0 or 1, so the 8 bytes read lie within the array; read_unaligned
            // needs no alignment.
            unsafe { core::ptr::read_unaligned(a.as_ptr().add(i * 8) as *const u64) }
        };
        word(&self.src, 0)
            ^ word(&self.src, 1)
            ^ word(&self.dst, 0).rotate_left(7)
            ^ word(&self.dst, 1).rotate_left(13)
            ^ ((self.sport as u64) << 48
                | (self.dport as u64) << 32
                | (self.icmp_id as u64) << 16
                | self.l4_off as u64)
            ^ ((self.vlan[0] as u64) << 40
                | (self.vlan[1] as u64) << 24
                | (self.proto as u64) << 16
                | (self.icmp_type as u64) << 8
                | self.tcp_flags as u64)
            ^ ((self.is_v6 as u64) << 62 | (self.later_fragment as u64) << 61)
    }

    pub const EMPTY: Packet = Packet {
        is_v6: false,
        src: [0; 16],
        dst: [0; 16],
        proto: 0,
        later_fragment: false,
        sport: 0,
        dport: 0,
        icmp_type: 0,
        tcp_flags: 0,
        icmp_id: 0,
        vlan: [0; 2],
        l4_off: 0,
    };
}

/// Parses the frame up to the L4 header into `pkt` (which may be map
/// memory: the data path keeps it off its small stack). Ok(false) for a
/// frame that is not IP.
#[inline(always)]
pub fn parse_into(ctx: &XdpContext, pkt: &mut Packet) -> Result<bool, PacketReason> {
    *pkt = Packet::EMPTY;
    let (ethertype, l3_off) = parse_ethernet(ctx, &mut pkt.vlan)?;
    let l4_off = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, l3_off, pkt)?,
        ETH_P_IPV6 => {
            pkt.is_v6 = true;
            parse_ipv6(ctx, l3_off, pkt)?
        }
        _ => return Ok(false),
    };
    if !pkt.later_fragment {
        parse_l4(ctx, l4_off, pkt)?;
    }
    Ok(true)
}
