//! Protocol numbers and address forms of the wire, as both sides use them.

/// IP protocol numbers the classifier distinguishes. Every other protocol is
/// folded into [`PROTO_OTHER`], since rules can only say `any` for them.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_OTHER: u8 = 255;

/// IPv4 address as a v4-mapped IPv6 address (::ffff:a.b.c.d), the key form
/// of the local-address map.
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}
