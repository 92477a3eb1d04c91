//! `forward = "xdp"`: the program routes what it allowed, in the shape of
//! xdp-tools' `xdp-forward`: a FIB lookup on the packet as it leaves (after
//! NAT), the next hop's MAC addresses, TTL or hop limit one less (with an
//! incremental checksum), and a redirect through `EGRESS`, which holds only
//! the agent's interfaces. Whatever only the kernel should do goes to it
//! with `XDP_PASS`, counted by why (`ForwardPath`).
//!
//! The lookup passes no flags: the kernel's policy routing rules apply as
//! for a packet arriving on the ingress interface (`iif`, source, TOS,
//! protocol and ports), without a firewall mark (XDP has none).

use aya_ebpf::bindings::{
    bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
    BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
};
use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use nva_common::{ForwardPath, PacketReason, ETH_P_IP, ETH_P_IPV6, FORWARD_XDP};

use crate::maps::{ACTIVE, CONFIG, EGRESS, FORWARD_COUNTERS};
use crate::parse::header_mut;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// The flow label and traffic class of an IPv6 header's first word.
const IPV6_FLOWINFO_MASK: u32 = 0x0FFF_FFFF;

/// Counts an allowed packet by where it went (per CPU: one write).
#[inline(always)]
fn count(path: ForwardPath) {
    if let Some(counter) = FORWARD_COUNTERS.get_ptr_mut(path as u32) {
        // SAFETY: the pointer comes from a successful per-CPU map lookup, so it is valid and
        // aligned; the slot is this CPU's and XDP runs do not nest on a CPU, so nothing else
        // writes it during this run (userspace only reads it).
        unsafe { *counter += 1 };
    }
}

/// Where a passed packet goes: the XDP action for verdict `code` (a pass).
/// Packets of flows through the NVA are routed here when `forward = "xdp"`;
/// everything else is the kernel's.
#[inline(never)]
pub fn route(ctx: &XdpContext, code: u32) -> u32 {
    if code == PacketReason::PassFragment as u32 {
        count(ForwardPath::KernelFragment);
        return xdp_action::XDP_PASS;
    }
    let forwardable = code == PacketReason::PassEstablished as u32
        || code == PacketReason::PassRelated as u32
        || code == PacketReason::PassRule as u32
        || code == PacketReason::PassDefault as u32;
    if !forwardable {
        // Not a flow through the NVA: non-IP, management, not ready.
        return xdp_action::XDP_PASS;
    }
    let slot = ACTIVE.get(0).copied().unwrap_or(0);
    let xdp = CONFIG.get(slot).is_some_and(|c| c.forward == FORWARD_XDP);
    if !xdp {
        count(ForwardPath::KernelConfigured);
        return xdp_action::XDP_PASS;
    }
    match redirect(ctx) {
        Ok(action) => {
            count(ForwardPath::Xdp);
            action
        }
        Err(path) => {
            count(path);
            xdp_action::XDP_PASS
        }
    }
}

/// Looks the route up and redirects; `Err` says why the kernel gets it.
#[inline(always)]
fn redirect(ctx: &XdpContext) -> Result<u32, ForwardPath> {
    let eth = header_mut::<EthHdr>(ctx, 0).ok_or(ForwardPath::KernelNoRoute)?;
    let ether_type = u16::from_be(eth.ether_type);
    // SAFETY: an all-zero bpf_fib_lookup is a valid value (integers and
    // unions of integers).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    let off = EthHdr::LEN;
    if ether_type == ETH_P_IP {
        let ip = header_mut::<Ipv4Hdr>(ctx, off).ok_or(ForwardPath::KernelNoRoute)?;
        if ip.ttl <= 1 {
            return Err(ForwardPath::KernelTtl);
        }
        fib.family = AF_INET;
        fib.__bindgen_anon_2.tos = ip.tos;
        fib.l4_protocol = ip.proto;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
        fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src_addr);
        fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst_addr);
    } else if ether_type == ETH_P_IPV6 {
        let ip = header_mut::<Ipv6Hdr>(ctx, off).ok_or(ForwardPath::KernelNoRoute)?;
        if ip.hop_limit <= 1 {
            return Err(ForwardPath::KernelTtl);
        }
        fib.family = AF_INET6;
        fib.__bindgen_anon_2.flowinfo = (u32::from_be_bytes(ip.vcf) & IPV6_FLOWINFO_MASK).to_be();
        fib.l4_protocol = ip.next_hdr;
        fib.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.payload_len);
        let (mut src, mut dst) = ([0u32; 4], [0u32; 4]);
        for i in 0..4 {
            let at = i * 4;
            src[i] = u32::from_ne_bytes([
                ip.src_addr[at],
                ip.src_addr[at + 1],
                ip.src_addr[at + 2],
                ip.src_addr[at + 3],
            ]);
            dst[i] = u32::from_ne_bytes([
                ip.dst_addr[at],
                ip.dst_addr[at + 1],
                ip.dst_addr[at + 2],
                ip.dst_addr[at + 3],
            ]);
        }
        fib.__bindgen_anon_3.ipv6_src = src;
        fib.__bindgen_anon_4.ipv6_dst = dst;
    } else {
        // VLAN-tagged (the parser accepted the tags): the program does not
        // write tags on the way out.
        return Err(ForwardPath::KernelVlan);
    }
    // SAFETY: `fib` is a valid, initialised bpf_fib_lookup on this stack
    // frame and its size is passed; ctx.ctx is the program's context.
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NOT_FWDED => return Err(ForwardPath::KernelLocal),
        BPF_FIB_LKUP_RET_NO_NEIGH => return Err(ForwardPath::KernelNoNeighbour),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(ForwardPath::KernelMtu),
        _ => return Err(ForwardPath::KernelNoRoute),
    }
    if EGRESS.get_ifindex(fib.ifindex).is_none() {
        return Err(ForwardPath::KernelEgressNotConfigured);
    }
    // Headers again: the helper call ends the verifier's view of the
    // earlier pointers' bounds.
    if ether_type == ETH_P_IP {
        let ip = header_mut::<Ipv4Hdr>(ctx, off).ok_or(ForwardPath::KernelNoRoute)?;
        decrement_ttl(ip);
    } else {
        let ip = header_mut::<Ipv6Hdr>(ctx, off).ok_or(ForwardPath::KernelNoRoute)?;
        ip.hop_limit -= 1;
    }
    let eth = header_mut::<EthHdr>(ctx, 0).ok_or(ForwardPath::KernelNoRoute)?;
    eth.dst_addr = fib.dmac;
    eth.src_addr = fib.smac;
    // Fails only if the agent removed the entry since the lookup above (a
    // restart with other interfaces): the kernel then gets a frame already
    // rewritten for its next hop, which it routes again.
    EGRESS
        .redirect(fib.ifindex, 0)
        .map_err(|_| ForwardPath::KernelEgressNotConfigured)
}

/// TTL one less, and the header checksum updated for it (as the kernel's
/// `ip_decrease_ttl`: the TTL is the high byte of its 16-bit word, so the
/// one's complement sum changes by 0x0100).
#[inline(always)]
fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let check = u16::from_be_bytes(ip.check) as u32 + 0x0100;
    ip.check = ((check + (check >= 0xFFFF) as u32) as u16).to_be_bytes();
    ip.ttl -= 1;
}
