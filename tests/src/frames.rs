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
