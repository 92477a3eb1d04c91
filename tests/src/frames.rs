//! Crafting Ethernet frames for BPF_PROG_TEST_RUN tests (checksums are not
//! filled in: XDP does not look at them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nva::classifier::compiler::PacketView;

pub use nva_common::{ETH_P_IP, ETH_P_IPV6};
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Ethernet header with VLAN tags (outermost first), then `payload`.
pub fn ethernet(vlans: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for &(tpid, vid) in vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header (with `options`, a multiple of 4 bytes) and payload.
/// `frag` is the flags+offset field (offset in 8-byte units).
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    options: &[u8],
    frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.len().is_multiple_of(4) && options.len() <= 40);
    let ihl = 5 + options.len() / 4;
    let total = ihl * 4 + payload.len();
    let mut h = vec![(4 << 4) | ihl as u8, 0];
    h.extend_from_slice(&(total as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// IPv6 header; `payload` starts with whatever `next` names.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![6 << 4, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

/// An 8-byte options-style extension header (hop-by-hop, routing, dest opts)
/// followed by `rest`.
pub fn ipv6_opts_ext(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
    h.extend_from_slice(rest);
    h
}

/// IPv6 fragment header (offset in 8-byte units) followed by `rest`.
pub fn ipv6_fragment_ext(next: u8, offset: u16, more: bool, rest: &[u8]) -> Vec<u8> {
    let off = (offset << 3) | more as u16;
    let mut h = vec![next, 0];
    h.extend_from_slice(&off.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 42]);
    h.extend_from_slice(rest);
    h
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        5 << 4,
        flags,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ]);
    h
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

pub fn icmp(icmp_type: u8, code: u8) -> Vec<u8> {
    vec![icmp_type, code, 0, 0, 0, 1, 0, 1]
}

/// A frame carrying the packet a classifier test describes.
pub fn frame_for(pkt: &PacketView) -> Vec<u8> {
    let l4 = match pkt.proto {
        6 => tcp(pkt.sport, pkt.dport, nva_common::TCP_SYN),
        17 => udp(pkt.sport, pkt.dport, b"nva"),
        1 | 58 => icmp(pkt.icmp_type, 0),
        _ => vec![0; 8],
    };
    match (pkt.src, pkt.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ethernet(&[], ETH_P_IP, &ipv4(s, d, pkt.proto, &[], 0, &l4))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(&[], ETH_P_IPV6, &ipv6(s, d, pkt.proto, &l4)),
        _ => panic!("mixed address families"),
    }
}

/// The Internet checksum (RFC 1071) of `data`, with `initial` (a partial
/// sum, e.g. of a pseudo-header) folded in.
pub fn internet_checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_words(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum()
}

/// Where the headers of an untagged IPv4 or IPv6 frame are: (is_v6, L3
/// offset, protocol, L4 offset, L4 length).
fn layout(frame: &[u8]) -> (bool, usize, u8, usize, usize) {
    let is_v6 = u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IPV6;
    if is_v6 {
        let plen = u16::from_be_bytes([frame[18], frame[19]]) as usize;
        (true, 14, frame[20], 54, plen)
    } else {
        let ihl = ((frame[14] & 0x0f) as usize) * 4;
        let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
        (false, 14, frame[23], 14 + ihl, total - ihl)
    }
}

/// Offset of the checksum within an L4 header of protocol `proto`.
fn l4_check_offset(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        1 | 58 => Some(2),
        _ => None,
    }
}

/// The pseudo-header sum of an IP packet at `l3` (none for ICMPv4).
fn pseudo_sum(pkt: &[u8], l3: usize, is_v6: bool, proto: u8, l4_len: usize) -> u32 {
    if proto == 1 {
        return 0;
    }
    let addrs = if is_v6 {
        &pkt[l3 + 8..l3 + 40]
    } else {
        &pkt[l3 + 12..l3 + 20]
    };
    sum_words(addrs) + proto as u32 + l4_len as u32
}

/// Computes every checksum of an untagged IPv4/IPv6 frame (IPv4 header,
/// TCP, UDP, ICMP, ICMPv6) from scratch, as a sender would.
pub fn with_checksums(mut frame: Vec<u8>) -> Vec<u8> {
    let (is_v6, l3, proto, l4, l4_len) = layout(&frame);
    if !is_v6 {
        let ihl = ((frame[l3] & 0x0f) as usize) * 4;
        frame[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = internet_checksum(0, &frame[l3..l3 + ihl]);
        frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    if let Some(off) = l4_check_offset(proto) {
        frame[l4 + off..l4 + off + 2].copy_from_slice(&[0, 0]);
        let pseudo = pseudo_sum(&frame, l3, is_v6, proto, l4_len);
        let mut c = internet_checksum(pseudo, &frame[l4..l4 + l4_len]);
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        frame[l4 + off..l4 + off + 2].copy_from_slice(&c.to_be_bytes());
    }
    frame
}

/// Checks every checksum of an untagged IPv4/IPv6 frame as a receiver
/// would; an IPv4 UDP checksum of zero means none. Err names the first
/// wrong one.
pub fn check_checksums(frame: &[u8]) -> Result<(), String> {
    let (is_v6, l3, proto, l4, l4_len) = layout(frame);
    if !is_v6 {
        let ihl = ((frame[l3] & 0x0f) as usize) * 4;
        if internet_checksum(0, &frame[l3..l3 + ihl]) != 0 {
            return Err("IPv4 header checksum".into());
        }
    }
    if l4_check_offset(proto).is_some() {
        if proto == 17 && !is_v6 && frame[l4 + 6..l4 + 8] == [0, 0] {
            return Ok(());
        }
        let pseudo = pseudo_sum(frame, l3, is_v6, proto, l4_len);
        if internet_checksum(pseudo, &frame[l4..l4 + l4_len]) != 0 {
            return Err(format!("L4 checksum (protocol {proto})"));
        }
    }
    Ok(())
}

/// Checks the checksums of the packet an ICMP error quotes (its IP header
/// and, when the quote holds the whole L4 segment, its L4 checksum).
pub fn check_quoted_checksums(frame: &[u8]) -> Result<(), String> {
    let (is_v6, _, _, l4, _) = layout(frame);
    let mut inner = frame[..14].to_vec();
    inner.extend_from_slice(&frame[l4 + 8..]);
    let (_, l3, _, _, _) = layout(&inner);
    if !is_v6 {
        let ihl = ((inner[l3] & 0x0f) as usize) * 4;
        if internet_checksum(0, &inner[l3..l3 + ihl]) != 0 {
            return Err("quoted IPv4 header checksum".into());
        }
    }
    check_checksums(&inner).map_err(|e| format!("quoted {e}"))
}
