//! nva's XDP programs: the data path (`nva_xdp`) and the benchmark baselines.
//! The logic lives in the library (`nva_ebpf`).
// Built for the kernel (bpfel-unknown-none) without std; on the host it is
// only linted, as an ordinary binary.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{macros::xdp, programs::XdpContext};
use nva_common::{PacketReason, XDP_DROP, XDP_PASS};
use nva_ebpf::forward;
use nva_ebpf::parse::{self, Parsed};
use nva_ebpf::verdict::{count_packet, decide};

#[xdp]
pub fn nva_xdp(ctx: XdpContext) -> u32 {
    let reason = decide(&ctx);
    count_packet(reason);
    if PacketReason::code_is_pass(reason) {
        forward::route(&ctx, reason)
    } else {
        XDP_DROP
    }
}

/// Benchmark baseline, never attached: parses the same headers as
/// `nva_xdp` and passes. The cost of nva's decisions is measured against it.
#[xdp]
pub fn nva_parse_pass(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        // Uses every field it parsed (folded into one word no benchmarked
        // packet gives), so that no part of the parse is optimised away:
        // reading only the protocol let the compiler drop the extraction of
        // addresses and ports, and the baseline measured less than a parse.
        Ok(Parsed::Ip(pkt)) if pkt.fold() == 0x5a5a_5a5a_5a5a_5a5a => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// Benchmark floor, attached only by `cargo xtask bench`: parses the same
/// headers as `nva_xdp` and drops IP packets (non-IP passes, so neighbour
/// discovery keeps working). Shows what the interface's XDP path costs
/// before any rule is looked at.
#[xdp]
pub fn nva_parse_drop(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        Ok(Parsed::NonIp) => XDP_PASS,
        _ => XDP_DROP,
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this only satisfies
    // the compiler.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("this program is the XDP data path: the nva binary loads it into the kernel");
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
