//! nva's XDP programs: the data path (`nva_xdp`) and the benchmark baselines.
//! The logic lives in the library (`nva_ebpf`).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use nva_ebpf::parse::{self, Parsed};
use nva_ebpf::verdict::{count_packet, decide};

#[xdp]
pub fn nva_xdp(ctx: XdpContext) -> u32 {
    let reason = decide(&ctx);
    count_packet(reason);
    if reason.is_pass() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Benchmark baseline, never attached: parses the same headers as
/// `nva_xdp` and passes. The cost of nva's decisions is measured against it.
#[xdp]
pub fn nva_parse_pass(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        // Looks at the result so that the parser is not optimised away;
        // protocol 254 (experimental) is never benchmarked.
        Ok(Parsed::Ip(pkt)) if pkt.proto == 0xfe => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Benchmark floor, attached only by `cargo xtask bench`: parses the same
/// headers as `nva_xdp` and drops IP packets (non-IP passes, so neighbour
/// discovery keeps working). Shows what the interface's XDP path costs
/// before any rule is looked at.
#[xdp]
pub fn nva_parse_drop(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        Ok(Parsed::NonIp) => xdp_action::XDP_PASS,
        _ => xdp_action::XDP_DROP,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
