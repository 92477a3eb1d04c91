//! nva's XDP data path: parse, management failsafe, classify, verdict.
#![no_std]
#![no_main]

mod classify;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use nva_common::{
    ManagementKey, PacketReason, RuleCounters, ACTION_ALLOW, FRAGMENTS_ALLOW, NO_RULE, PROTO_TCP,
    PROTO_UDP,
};

use crate::maps::{Tables, ACTIVE, CONFIG, PACKET_COUNTERS, RULE_COUNTERS};
use crate::parse::{Packet, Parsed};

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

#[inline(always)]
fn decide(ctx: &XdpContext) -> PacketReason {
    let pkt = match parse::parse(ctx) {
        Ok(Parsed::Ip(pkt)) => pkt,
        Ok(Parsed::NonIp) => return PacketReason::PassNonIp,
        Err(reason) => return reason,
    };
    // One read decides the rule set for this packet: a reload flips ACTIVE
    // only once the other slot is complete.
    match ACTIVE.get(0).copied().unwrap_or(0) {
        0 => decide_with::<maps::slot0::Slot>(ctx, &pkt, 0),
        _ => decide_with::<maps::slot1::Slot>(ctx, &pkt, 1),
    }
}

#[inline(always)]
fn decide_with<T: Tables>(ctx: &XdpContext, pkt: &Packet, slot: u32) -> PacketReason {
    let Some(config) = CONFIG.get(slot) else {
        return PacketReason::PassNotReady;
    };
    if config.ready == 0 {
        return PacketReason::PassNotReady;
    }
    if pkt.later_fragment {
        return if config.fragments == FRAGMENTS_ALLOW {
            PacketReason::PassFragment
        } else {
            PacketReason::DropFragment
        };
    }
    if is_management::<T>(pkt) {
        return PacketReason::PassManagement;
    }
    let rule = classify::first_match::<T>(pkt, ctx.ingress_ifindex() as u32, config);
    if rule == NO_RULE {
        return if config.default_action == ACTION_ALLOW {
            PacketReason::PassDefault
        } else {
            PacketReason::DropDefault
        };
    }
    let Some(action) = T::rule_actions().get(rule) else {
        return PacketReason::DropRule;
    };
    count_rule(ctx, action.counter);
    if action.action == ACTION_ALLOW {
        PacketReason::PassRule
    } else {
        PacketReason::DropRule
    }
}

/// Failsafe: management ports pass before any rule.
#[inline(always)]
fn is_management<T: Tables>(pkt: &Packet) -> bool {
    if pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP {
        return false;
    }
    let key = ManagementKey {
        port: pkt.dport,
        proto: pkt.proto,
        _pad: 0,
    };
    unsafe { T::management().get(&key) }.is_some()
}

#[inline(always)]
fn count_packet(reason: PacketReason) {
    if let Some(counter) = PACKET_COUNTERS.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other CPU writes it.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
fn count_rule(ctx: &XdpContext, counter: u32) {
    if let Some(counters) = RULE_COUNTERS.get_ptr_mut(counter) {
        let counters: &mut RuleCounters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += (ctx.data_end() - ctx.data()) as u64;
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
